# Two commands from a fresh clone:   make demo   and   make test
# Both create .venv, install torch first (pinned here, never resolved by pip), then tauml with its extras.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Override for a GPU machine, e.g.  make install TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
TORCH  ?= torch==2.13.0
RESULTS ?= results

.PHONY: install demo test test-unit test-notebooks test-browser lint format clean-results

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[all]"
	touch $@

install: $(VENV)/.installed

## make demo: generate the demo data and run the notebook series headless into $(RESULTS)/
demo: install
	$(BIN)/tauml demo --preset demo --results $(RESULTS)

## make test: lint, unit tests, every notebook under nbval (key numbers are asserted in cells), then the browser test
test: install lint test-unit test-notebooks test-browser

## make lint: ruff, the import contract (layers import downward only, pyproject.toml), notebooks stripped of outputs
lint: install
	$(BIN)/ruff check tauml tests benchmarks notebooks
	$(BIN)/lint-imports
	$(BIN)/nbstripout --verify --keep-id notebooks/*.ipynb || (echo "notebooks carry outputs: run  $(BIN)/nbstripout --keep-id notebooks/*.ipynb" && false)

test-unit: install
	$(BIN)/python -m pytest tests -m "not browser"

## then 01-05 again on the demo's data as a folder of files in the released layouts (the one DATA setting of their
## configuration cells): a folder `tauml generate` wrote is that generated dataset, so the trainings come from the cache
test-notebooks: install
	TAUML_PROGRESS=0 $(BIN)/python -m pytest --nbval-lax --nbval-current-env notebooks
	$(BIN)/tauml generate --preset demo --out $(abspath $(RESULTS))/demo-files --quiet
	TAUML_PROGRESS=0 TAUML_DATA=$(abspath $(RESULTS))/demo-files $(BIN)/python -m pytest --nbval-lax \
		--nbval-current-env notebooks/01_*.ipynb notebooks/02_*.ipynb notebooks/03_*.ipynb notebooks/04_*.ipynb \
		notebooks/05_*.ipynb

## make test-browser: 03 and 04 in JupyterLab in headless Chromium, driven like a student (after test-notebooks,
## whose cache it reads); screenshots in $(RESULTS)/browser; skipped with a message where no Chromium is installed
test-browser: install
	TAUML_BROWSER_RESULTS=$(abspath $(RESULTS))/browser $(BIN)/python -m pytest -m browser tests/browser

format: install
	$(BIN)/ruff check --fix tauml tests benchmarks notebooks

clean-results:
	rm -rf $(RESULTS)
