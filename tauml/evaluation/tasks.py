"""The one registry of the three tau tasks: what each predicts, its headline metric and that metric's direction.

Every table, scan, verdict and widget reads these; nothing else defines them.

    TASK_INFO["reg"].headline        # "resolution"
    TASK_INFO["reg"].higher_is_better  # False
    METRIC_LABELS["misid_at_80"]     # a plain-text label; the plots have their LaTeX labels
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskInfo:
    """One tau task: ``name`` as in the configuration, a readable ``label``, the ``headline`` metric (the one a
    scan or a verdict ranks by), whether a larger headline is better, and the metrics a summary shows."""

    name: str
    label: str
    headline: str
    higher_is_better: bool
    summary_metrics: tuple[str, ...]


TASK_INFO: dict[str, TaskInfo] = {
    "id": TaskInfo("id", "identification", "misid_at_80", False, ("misid_at_80", "auc")),
    "reg": TaskInfo("reg", "visible-pT regression", "resolution", False, ("resolution", "median", "iqr")),
    "dm": TaskInfo("dm", "decay mode", "weighted_auc", True, ("weighted_auc", "accuracy")),
}

#: ``{task: (headline metric, higher is better)}``, the short form the studies use.
HEADLINE: dict[str, tuple[str, bool]] = {t: (i.headline, i.higher_is_better) for t, i in TASK_INFO.items()}

#: Whether a larger value of a metric is better (``median`` has its optimum at 1 and no direction).
METRIC_HIGHER_IS_BETTER: dict[str, bool] = {
    "auc": True, "weighted_auc": True, "accuracy": True, "macro_f1": True,
    "misid_at_80": False, "iqr": False, "resolution": False,
    "val_loss": False, "best_val_loss": False, "final_val_loss": False, "final_train_loss": False,
}

#: Readable plain-text names of the metrics (tables); ``tauml.plots.scans`` has the LaTeX axis labels.
METRIC_LABELS: dict[str, str] = {
    "misid_at_80": "mis-ID at 80 % τ efficiency", "auc": "AUC", "resolution": "pT resolution IQR/median",
    "median": "pT scale (median response)", "iqr": "IQR of the response", "weighted_auc": "weighted one-vs-rest AUC",
    "accuracy": "accuracy", "macro_f1": "macro F1",
}


def headline_metric(task: str) -> str:
    """The headline metric of ``task`` (id, reg, dm)."""
    return task_info(task).headline


def task_info(task: str) -> TaskInfo:
    """The registry entry of ``task``; a clear error for an unknown name."""
    if task not in TASK_INFO:
        raise ValueError(f"task={task!r}; choose from {', '.join(TASK_INFO)}")
    return TASK_INFO[task]
