"""``tauml demo``: generate a preset's data and run the notebook series headless into a results folder.

Each notebook is executed in order with ``TAUML_PRESET`` and ``TAUML_RESULTS_DIR`` set, so its configuration
cell picks the preset and its figures and key numbers land in the results folder:

    results/
      notebooks/00_data.ipynb ...   executed notebooks, with their outputs
      figures/*.png                 every figure the notebooks saved
      summary.json                  the key numbers each notebook recorded
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tauml import pipeline
from tauml.config import with_data

#: The notebook series, in order.  A notebook that does not exist (yet) is skipped with a note.
SERIES: tuple[str, ...] = ("00_data", "01_tokenization", "02_pretraining", "03_finetuning", "04_ablations",
                           "05_embeddings", "06_joint_analysis", "07_beyond_tokens")


def notebooks_dir() -> Path:
    """The repository's notebooks folder (tauml is installed from a checkout)."""
    here = Path(__file__).resolve().parents[1] / "notebooks"
    if here.is_dir():
        return here
    cwd = Path.cwd() / "notebooks"
    if cwd.is_dir():
        return cwd
    raise FileNotFoundError("no notebooks folder found: run `tauml demo` from the tauml repository checkout")


def run_series(preset: str, results: str | os.PathLike[str], notebooks: list[str] | None = None,
               source: Path | None = None, timeout: int | None = None, data: str | None = None) -> dict:
    """Execute the notebooks of ``SERIES`` (or ``notebooks``) for ``preset``; return the summary.  ``data``: the
    data source the notebooks read (``TAUML_DATA``, their ``DATA`` setting; None: the preset's own)."""
    import nbformat  # (local: the optional 'notebooks' extra)
    from nbclient import NotebookClient


    source = source or notebooks_dir()
    results = Path(results).resolve()
    (results / "notebooks").mkdir(parents=True, exist_ok=True)
    os.environ["TAUML_PRESET"] = preset
    os.environ["TAUML_RESULTS_DIR"] = str(results)
    if data is not None:
        os.environ["TAUML_DATA"] = str(data)
    else:
        os.environ.pop("TAUML_DATA", None)
    print(f"tauml demo: preset {preset!r}{'' if data is None else f', data {data!r}'}, results in {results}")
    ready = pipeline.dataset(with_data(preset, data))
    print(f"data ready in {ready.root}")
    timings = {}
    for name in notebooks or SERIES:
        path = source / f"{name}.ipynb"
        if not path.exists():
            if notebooks:
                raise FileNotFoundError(f"{path} does not exist; the series is {', '.join(SERIES)}")
            continue
        started = time.perf_counter()
        print(f"running {name} ...", flush=True)
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(source)}})
        try:
            client.execute()
        finally:
            nbformat.write(nb, results / "notebooks" / f"{name}.ipynb")
        timings[name] = time.perf_counter() - started
        print(f"  {name} done in {timings[name]:.0f} s")
    summary_path = results / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary["_timings_s"] = timings
    summary_path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def print_summary(summary: dict) -> None:
    """The key numbers of the run, one notebook per block."""
    for notebook, values in summary.items():
        if notebook.startswith("_"):
            continue
        print(f"\n{notebook}")
        for key, value in values.items():
            shown = f"{value:.4g}" if isinstance(value, float) else value
            print(f"  {key:45s} {shown}")
    timings = summary.get("_timings_s", {})
    if timings:
        print("\ntime per notebook: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
