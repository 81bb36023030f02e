"""The notebooks as a student sees them: JupyterLab in headless Chromium (issue 15, points 3 and 6).

A JupyterLab server (a free port, a random token, a temporary root holding copies of the notebooks) is driven by
Playwright (``pip install playwright``; the browser is the system's Chromium, ``apt-get install chromium``, never
downloaded at run time).  Each notebook is opened and run (Run ▸ Run All Cells); then

* no output anywhere may show error text (a traceback, an exception) and no figure may be shown twice;
* in ``03_finetuning`` the fine-tuning panel is driven through its rendered controls: the strategy (the unfreeze
  slider is enabled for fine-tuning only), an impossible combination (6 epochs, unfrozen after epoch 8: refused
  on screen with a sentence, the slider keeps the value), the unfreeze epoch, the number of GPT blocks and the
  training size; **Train** trains one short model live (6 epochs on 500 jets: 100-145 s measured on 2 cores
  shared at load ~12, less on free ones) while Stop is available and the progress bar and the loss curve move;
  then the loss curve and the metrics table (with its reference row) are shown;
* in ``04_ablations`` the scan explorer redraws when another scan and another task are chosen, and the metric
  follows the task.

Screenshots of each step go to ``$TAUML_BROWSER_RESULTS`` (default ``results/browser/``).

The notebooks read the user's tauml cache, as ``make test-notebooks`` does (not the private cache of the unit
tests): run them, or ``tauml prepare``, first, and each notebook then runs from the cache in seconds
(``make test`` runs this test after the notebooks).  The panel's training must be live every time, so the server
sees the user's cache through a temporary overlay: every cached artefact is read from the user's cache, and
what the test trains goes to the overlay and is deleted with it.

Skipped, saying why, where Playwright or a Chromium binary (``$TAUML_CHROMIUM``, ``chromium``,
``chromium-browser``) is missing.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
#: The user's cache as it was before the unit tests' session fixture replaced it by a private one.
USER_CACHE = os.environ.get("TAUML_CACHE_DIR")
RESULTS = Path(os.environ.get("TAUML_BROWSER_RESULTS", ROOT / "results" / "browser"))
#: A notebook whose results are cached runs in seconds; a cold one trains for many minutes.
RUN_ALL_TIMEOUT_S = float(os.environ.get("TAUML_BROWSER_RUN_TIMEOUT", 300))
TRAIN_TIMEOUT_S = 240.0
#: What error text in an output looks like (stderr warnings are allowed, errors are not).
ERROR_TEXT = re.compile(r"Traceback \(most recent call last\)|^\w*(Error|Exception)\b|\bError: ", re.MULTILINE)

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="no browser test: Playwright is missing (pip install 'tauml[test]')")


def chromium_binary() -> str | None:
    """The system's Chromium: ``$TAUML_CHROMIUM``, else ``chromium`` or ``chromium-browser`` on the PATH."""
    candidates = [os.environ.get("TAUML_CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser")]
    return next((c for c in candidates if c and Path(c).is_file()), None)


if chromium_binary() is None:
    pytest.skip("no browser test: no Chromium binary (apt-get install chromium, or set TAUML_CHROMIUM)",
                allow_module_level=True)
pytest.importorskip("jupyterlab", reason="no browser test: JupyterLab is missing (pip install 'tauml[notebooks]')")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def overlay_cache(user_cache: Path, overlay: Path) -> None:
    """Make ``overlay`` a tauml cache that reads every entry of ``user_cache`` (symbolic links) but keeps new
    fine-tunings to itself, so that the panel's training runs live and leaves nothing in the user's cache."""
    user_cache.mkdir(parents=True, exist_ok=True)
    overlay.mkdir(parents=True)
    for kind in user_cache.iterdir():
        if kind.name != "finetune":
            (overlay / kind.name).symlink_to(kind)
    (overlay / "finetune").mkdir()
    for entry in (user_cache / "finetune").glob("*"):
        (overlay / "finetune" / entry.name).symlink_to(entry)


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[str]:
    """A running JupyterLab on copies of the notebooks; yields its base URL (with the token as query)."""
    base = tmp_path_factory.mktemp("jupyterlab")
    root = base / "notebooks"
    root.mkdir()
    for name in ("03_finetuning.ipynb", "04_ablations.ipynb"):
        shutil.copy(ROOT / "notebooks" / name, root / name)
    user_cache = Path(USER_CACHE).expanduser() if USER_CACHE else Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tauml"
    overlay_cache(user_cache, base / "cache")
    settings = base / "settings"
    # no "official Jupyter news?" pop-up over the screenshots, no kernel choice to make (the notebook's own,
    # this environment's python3), every cell rendered (no virtual scrolling)
    for plugin, text in (("@jupyterlab/apputils-extension/notification", '{"fetchNews": "false"}'),
                         ("@jupyterlab/notebook-extension/tracker",
                          '{"windowingMode": "none", "autoStartDefaultKernel": true}')):
        (settings / plugin).parent.mkdir(parents=True, exist_ok=True)
        (settings / f"{plugin}.jupyterlab-settings").write_text(text)
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "TAUML_CACHE_DIR": str(base / "cache"), "TAUML_PROGRESS": "0",
           "JUPYTERLAB_SETTINGS_DIR": str(settings), "JUPYTERLAB_WORKSPACES_DIR": str(base / "workspaces")}
    for name in ("TAUML_RESULTS_DIR", "MPLBACKEND"):  # a student's session: figures inline, nothing saved
        env.pop(name, None)
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # CI containers run as root
        command.append("--allow-root")
    log = open(base / "jupyterlab.log", "w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"JupyterLab did not start: {(base / 'jupyterlab.log').read_text()[-2000:]}")
            time.sleep(0.5)
    try:
        yield f"{url}|{token}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=chromium_binary(),
                                              args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield chromium
        chromium.close()


def open_notebook(browser, lab: str, name: str):
    url, token = lab.split("|")
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.set_default_timeout(60_000)
    # a workspace of its own, reset: only this notebook open (no panel of another notebook on the page)
    page.goto(f"{url}/lab/workspaces/{Path(name).stem}/tree/{name}?reset&token={token}")
    page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-Cell")
    select_kernel = page.locator(".jp-Dialog button", has_text=re.compile(r"^Select$"))
    try:  # where JupyterLab still asks for the kernel: the preferred one (the notebook's python3)
        select_kernel.click(timeout=5000)
    except playwright_api.TimeoutError:
        pass
    page.wait_for_function("() => document.querySelector('.jp-Notebook-ExecutionIndicator')"
                           "?.getAttribute('data-status') === 'idle'", timeout=120_000)
    return page


def run_all(page, name: str) -> float:
    """Run ▸ Run All Cells; wait until every code cell has run (or the run stopped); return the seconds taken."""
    started = time.monotonic()
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator("li.lm-Menu-item[data-command='runmenu:run-all']").click()
    page.wait_for_timeout(1000)
    try:
        page.wait_for_function(
            """() => {
                const cells = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell')];
                const prompt = c => c.querySelector('.jp-InputPrompt')?.innerText.trim() ?? '';
                // a cell ran when its prompt shows its execution count, or, its code collapsed (the exercises'
                // solutions: no prompt shown), when it has outputs
                const ran = c => /^\\[\\d+\\]:$/.test(prompt(c))
                    || (prompt(c) === '' && !!c.querySelector('.jp-OutputArea-output'));
                const status = document.querySelector('.jp-Notebook-ExecutionIndicator')?.getAttribute('data-status');
                const failed = [...document.querySelectorAll('.jp-Notebook .jp-OutputArea-output')]
                    .some(o => o.innerText.includes('Traceback'));
                return status === 'idle' && cells.length > 0 && !cells.some(c => prompt(c).includes('*'))
                    && (failed || cells.every(ran));
            }""", timeout=RUN_ALL_TIMEOUT_S * 1000, polling=1000)
    except playwright_api.TimeoutError:
        page.screenshot(path=RESULTS / f"{name}_timeout.png", full_page=True)
        pytest.fail(f"{name}: Run All did not finish within {RUN_ALL_TIMEOUT_S:.0f} s — is the tauml cache warm? "
                    "Run the notebooks (make test-notebooks) or `tauml prepare --preset demo` first")
    return time.monotonic() - started


def cell_outputs(page) -> list[dict]:
    """Per cell: its prompt and its outputs (MIME type, text, images as sources)."""
    return page.evaluate("""() => [...document.querySelectorAll('.jp-Notebook .jp-Cell')].map((cell, index) => ({
        index,
        code: cell.classList.contains('jp-CodeCell'),
        prompt: cell.querySelector('.jp-InputPrompt')?.innerText ?? '',
        outputs: [...cell.querySelectorAll('.jp-OutputArea-output')].map(o => ({
            mime: o.getAttribute('data-mime-type') || '',
            text: o.innerText,
            // a widget's output areas nest in the cell's: each image counts for its own output only
            images: [...o.querySelectorAll('img')].filter(img => img.closest('.jp-OutputArea-output') === o)
                .map(img => img.src)})),
    }))""")


def check_what_a_student_sees(page, name: str) -> list[dict]:
    """Every code cell ran; no output shows error text; no figure or text output appears twice."""
    cells = cell_outputs(page)
    assert cells, f"{name}: no cells found in the page"
    not_run = [c["index"] for c in cells if c["code"] and not re.fullmatch(r"\[\d+\]:", c["prompt"].strip())
               and not (c["prompt"].strip() == "" and c["outputs"])]  # (code collapsed: it ran if it has outputs)
    assert not not_run, f"{name}: cells {not_run} did not run (Run All stopped early)"
    seen_images: dict[str, int] = {}
    for cell in cells:
        texts = []
        for output in cell["outputs"]:
            text = output["text"].strip()
            assert not ERROR_TEXT.search(text), f"{name}, cell {cell['index']}: error text in an output:\n{text[:1500]}"
            assert not text.startswith("<Figure size"), f"{name}, cell {cell['index']}: a figure shown as text"
            if text and not output["images"]:
                assert text not in texts, f"{name}, cell {cell['index']}: the same output twice:\n{text[:300]}"
                texts.append(text)
            for src in output["images"]:
                digest = hashlib.sha1(src.encode()).hexdigest()
                assert digest not in seen_images, (f"{name}: a figure is shown twice (cells {seen_images.get(digest)} "
                                                   f"and {cell['index']})")
                seen_images[digest] = cell["index"]
    return cells


def control(root, kind: str, label: str):
    """The rendered ipywidget of ``kind`` (``dropdown``, ``slider``) whose description is ``label``, in ``root``
    (the page, or a panel on it)."""
    page = getattr(root, "page", root)  # a Locator knows its page
    return root.locator(f".widget-{kind}", has=page.locator("label", has_text=re.compile(f"^{re.escape(label)}$")))


def set_slider(page, label: str, value: int) -> None:
    """Type ``value`` into the slider's readout (what a student does for an exact value), then Enter."""
    readout = control(page, "slider", label).locator(".widget-readout")
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type(str(value))
    page.keyboard.press("Enter")
    page.wait_for_function("([el, v]) => el.innerText.trim() === v", arg=[readout.element_handle(), str(value)])


def image_sources(locator) -> list[str]:
    return [img.get_attribute("src") or "" for img in locator.locator("img").all()]


def shot(page, name: str, locator=None) -> Path:
    path = RESULTS / f"{name}.png"
    (locator or page).screenshot(path=path)
    return path


@pytest.fixture(scope="module", autouse=True)
def _results() -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)


def test_finetuning_notebook_and_panel_in_jupyterlab(browser, lab):
    page = open_notebook(browser, lab, "03_finetuning.ipynb")
    seconds = run_all(page, "03_finetuning")
    print(f"03_finetuning: Run All took {seconds:.0f} s")
    check_what_a_student_sees(page, "03_finetuning")
    panel = page.locator(".jp-Cell", has=control(page, "slider", "GPT blocks")).locator(".widget-vbox").first
    panel.scroll_into_view_if_needed()
    shot(page, "03_panel_rendered", panel)

    strategy = control(page, "dropdown", "Strategy").locator("select")
    unfreeze = control(page, "slider", "Unfreeze at epoch")
    status = panel.locator(".widget-html-content").first
    # the strategy: the unfreeze epoch applies to fine-tuning only, and the slider follows the choice
    readout = unfreeze.locator(".widget-readout").element_handle()
    strategy.select_option(value="From scratch")
    page.wait_for_function("el => el.getAttribute('contenteditable') === 'false'", arg=readout)
    strategy.select_option(value="Fine-tuning")
    page.wait_for_function("el => el.getAttribute('contenteditable') === 'true'", arg=readout)
    # an impossible combination is refused on screen with a sentence, and the slider keeps the student's value
    # (a slider whose maximum shrank below its value would clamp it silently): 6 epochs, unfrozen after epoch 8
    set_slider(page, "Unfreeze at epoch", 8)
    set_slider(page, "Epochs", 6)
    status.locator("text=past the last epoch").wait_for()
    page.wait_for_timeout(3000)  # it stays (nothing on the page undoes it)
    refused = status.inner_text()
    assert "unfreeze_epoch=8 is past the last epoch" in refused and "Traceback" not in refused, refused
    assert unfreeze.locator(".widget-readout").inner_text().strip() == "8"
    shot(page, "03_panel_refused", panel)
    # the settings of the live training, short (~100 s on 2 heavily shared cores): fine-tuning, 6 epochs, 500 jets,
    # the backbone unfrozen after epoch 3, its first 2 GPT blocks
    set_slider(page, "Unfreeze at epoch", 3)
    set_slider(page, "GPT blocks", 2)
    control(page, "dropdown", "Training jets").locator("select").select_option(value="500")
    page.wait_for_timeout(500)
    assert "error" not in status.inner_text(), status.inner_text()
    shot(page, "03_panel_settings", panel)

    loss_before = image_sources(panel.locator(".widget-output").nth(0))
    metrics_before = panel.locator(".widget-output").nth(1).inner_text()
    started = time.monotonic()
    panel.locator("button", has_text="Train").click()
    progress = panel.locator(".widget-hprogress .progress-bar")
    # live: the progress bar and the loss curve move epoch by epoch while the training runs
    page.wait_for_function("el => parseFloat(el.style.width || '0') > 0", arg=progress.element_handle(),
                           timeout=TRAIN_TIMEOUT_S * 1000)
    stop = panel.locator("button", has_text="Stop")
    assert stop.is_enabled(), "Stop is not available during the training"
    panel.locator(".widget-output").nth(0).locator("img").first.wait_for(timeout=TRAIN_TIMEOUT_S * 1000)
    shot(page, "03_panel_training", panel)
    status.locator("text=done").wait_for(timeout=TRAIN_TIMEOUT_S * 1000)
    trained = time.monotonic() - started
    print(f"03_finetuning: Train took {trained:.0f} s")
    loss_after = image_sources(panel.locator(".widget-output").nth(0))
    metrics_after = panel.locator(".widget-output").nth(1).inner_text()
    assert loss_after and loss_after != loss_before, "the loss curve did not update"
    assert metrics_after != metrics_before and "this model" in metrics_after, metrics_after
    assert "random guessing" in metrics_after, f"no reference row for identification:\n{metrics_after}"
    assert "done: best epoch" in status.inner_text()
    assert not stop.is_enabled() and panel.locator("button", has_text="Train").is_enabled()
    panel.scroll_into_view_if_needed()
    shot(page, "03_panel_trained", panel)
    page.screenshot(path=RESULTS / "03_finetuning_full.png", full_page=True)
    check_what_a_student_sees(page, "03_finetuning (after Train)")
    page.close()


def test_ablations_notebook_and_explorer_in_jupyterlab(browser, lab):
    page = open_notebook(browser, lab, "04_ablations.ipynb")
    seconds = run_all(page, "04_ablations")
    print(f"04_ablations: Run All took {seconds:.0f} s")
    check_what_a_student_sees(page, "04_ablations")
    explorer = page.locator(".jp-Cell", has=control(page, "dropdown", "Scan")).locator(".widget-vbox").first
    explorer.scroll_into_view_if_needed()
    shot(page, "04_explorer_rendered", explorer)
    figure = explorer.locator(".widget-output").first
    before = image_sources(figure)
    assert before, "the scan explorer shows no figure"
    control(explorer, "dropdown", "Scan").locator("select").select_option(label="number of GPT blocks")
    page.wait_for_function("([el, old]) => [...el.querySelectorAll('img')].map(i => i.src).join() !== old",
                           arg=[figure.element_handle(), ",".join(before)])
    shot(page, "04_explorer_blocks", explorer)
    blocks = ",".join(image_sources(figure))
    control(explorer, "dropdown", "Task").locator("select").select_option("dm")
    page.wait_for_function("([el, old]) => [...el.querySelectorAll('img')].map(i => i.src).join() !== old",
                           arg=[figure.element_handle(), blocks])
    metric = control(explorer, "dropdown", "Metric").locator("select").input_value()
    assert metric == "weighted_auc", f"the metric did not follow the task: {metric!r}"
    table = explorer.locator(".widget-output").nth(1).inner_text()
    assert "mean" in table, table
    shot(page, "04_explorer_dm", explorer)
    check_what_a_student_sees(page, "04_ablations (after the explorer)")
    page.close()

