"""Key numbers of a notebook run: shown as tables in the notebook and collected by ``tauml demo``.

``record("00_data", response_iqr=0.023)`` returns its values and, when ``$TAUML_RESULTS_DIR`` is set (``make
demo`` sets it), merges them into ``$TAUML_RESULTS_DIR/summary.json`` under the notebook's name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tauml.cache import write_json


def record(notebook: str, **values: Any) -> dict[str, Any]:
    """Keep ``values`` (numbers, strings, small lists) as the key results of ``notebook``."""
    results = os.environ.get("TAUML_RESULTS_DIR")
    if results:
        path = Path(results) / "summary.json"
        summary = json.loads(path.read_text()) if path.exists() else {}
        summary.setdefault(notebook, {}).update(values)
        write_json(path, summary)
    return values


def markdown_table(rows: Sequence[Mapping[str, Any]], digits: int = 3) -> str:
    """A Markdown table from a list of dicts with the same keys (floats rounded to ``digits`` significant)."""
    if not rows:
        return ""
    columns = list(dict.fromkeys(key for row in rows for key in row))  # every key, in order of appearance

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.{digits}g}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def generation_rows(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per generated sample: events, jets, size and speed (from a dataset's manifest)."""
    rows = []
    for sample, entry in manifest["samples"].items():
        rows.append({
            "sample": sample, "events": entry["events"], "jets": entry["jets"],
            "size [MB]": round(entry["bytes"] / 1e6, 1),
            "events/s per core": round(entry.get("events_per_cpu_second") or 0.0, 1),
            "jets/s per core": round(entry.get("jets_per_cpu_second") or 0.0, 1),
        })
    return rows
