"""The scan explorer of notebook 04: pick a scan, a task and a metric; see mean ± std over seeds.

``scan_explorer(records)`` takes ``{kind: {task: [record, ...]}}`` as :func:`tauml.studies.run_ablations`
returns it and draws the chosen scan's figure from the stored points (nothing is trained here).
"""

from __future__ import annotations

from typing import Any

import ipywidgets as widgets
from IPython.display import Markdown

from tauml.pipeline.scan import reference_value, summarize
from tauml.plots import scans as splots
from tauml.studies.ablations import SCAN_AXIS
from tauml.studies.report import markdown_table
from tauml.widgets.common import show

SCAN_LABELS = {"unfreeze": "unfreeze epoch", "blocks": "number of GPT blocks", "train_size": "training-set size"}
TASK_METRICS = {"id": ("misid_at_80", "auc"), "reg": ("resolution", "median", "iqr"),
                "dm": ("weighted_auc", "accuracy", "macro_f1")}


class ScanExplorer(widgets.VBox):
    """Dropdowns ``kind``, ``task``, ``metric``; an ``output`` with the figure and the summary table."""

    def __init__(self, records: dict[str, dict[str, list[dict[str, Any]]]], epochs: int | None = None) -> None:
        if not records:
            raise ValueError("no scan records: run tauml.studies.run_ablations first")
        self.records = records
        self.epochs = epochs
        kinds = [k for k in SCAN_LABELS if k in records]
        self.kind = widgets.Dropdown(options=[(SCAN_LABELS[k], k) for k in kinds], value=kinds[0], description="Scan")
        tasks = list(records[kinds[0]])
        self.task = widgets.Dropdown(options=tasks, value=tasks[0], description="Task")
        self.metric = widgets.Dropdown(options=TASK_METRICS[tasks[0]], description="Metric")
        self.output = widgets.Output()
        self.table = widgets.Output()
        self.task.observe(self._task_changed, names="value")
        for control in (self.kind, self.metric):
            control.observe(self._draw, names="value")
        super().__init__([widgets.HBox([self.kind, self.task, self.metric]),
                          widgets.HBox([self.output, self.table])])
        self._draw()

    def _task_changed(self, _change: Any = None) -> None:
        # new options select their first (the task's headline metric); not inside hold_trait_notifications, which
        # validates the old metric against the new options and raises (the explorer then stopped redrawing)
        self.metric.unobserve(self._draw, names="value")
        try:
            self.metric.options = TASK_METRICS[self.task.value]
            self.metric.value = TASK_METRICS[self.task.value][0]
        finally:
            self.metric.observe(self._draw, names="value")
        self._draw()

    def summary_rows(self) -> list[dict[str, Any]]:

        records = self.records[self.kind.value][self.task.value]
        return summarize(records, by=SCAN_AXIS[self.kind.value], metric=self.metric.value)

    def _draw(self, _change: Any = None) -> None:

        rows = self.summary_rows()
        kind = self.kind.value
        if kind == "unfreeze":
            fig = splots.plot_unfreeze_scan(rows, epochs=self.epochs, text=self.task.value)
        elif kind == "blocks":
            fig = splots.plot_block_scan(rows, text=self.task.value)
        else:
            ref = reference_value(self.records[kind][self.task.value], self.metric.value)
            fig = splots.plot_train_size_scan(rows, reference_value=ref, text=self.task.value)
        show(self.output, fig)
        table = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()
                  if k not in ("values", "seeds", "metric", "task")} for r in rows]
        show(self.table, Markdown(markdown_table(table)))


def scan_explorer(records: dict[str, dict[str, list[dict[str, Any]]]], epochs: int | None = None) -> ScanExplorer:
    """The explorer over the records of :func:`tauml.studies.run_ablations`."""
    return ScanExplorer(records, epochs=epochs)
