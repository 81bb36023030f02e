"""The joint-analysis panel of notebook 06: pick a use case, a jet representation, a strategy and a training size;
``Show`` trains the missing seeds of that point (cached in the joint scan store) and shows its numbers.

    panel = joint_panel("demo", records)      # records: tauml.studies.joint.run_study's output
    panel.representation.value = "v_hlf"; panel.strategy.value = "frozen"; panel.train_size.value = 1000
    panel.show_button.click()                 # trains only what the store lacks, then draws
"""

from __future__ import annotations

from typing import Any

import ipywidgets as widgets
import numpy as np
from IPython.display import Markdown

from tauml.config import JOINT_CASES, JOINT_REPRESENTATIONS, JOINT_STRATEGIES, ConfigError, Preset
from tauml.evaluation.verdicts import summarize
from tauml.models.joint import REPRESENTATION_LABELS
from tauml.pipeline import joint
from tauml.plots import joint as jplots
from tauml.studies import joint as study
from tauml.studies.report import markdown_table
from tauml.widgets.common import show


class JointPanel(widgets.VBox):
    """Controls ``case``, ``representation``, ``strategy``, ``train_size`` and ``show_button``; ``plot_output`` holds
    the event-score histogram, ``table_output`` the metrics (mean ± std over seeds), ``message`` what went wrong."""

    def __init__(self, preset: str | Preset, records: dict[str, list[dict[str, Any]]] | None = None,
                 seeds: tuple[int, ...] = study.NOTEBOOK_SEEDS, jet_model: str = study.NOTEBOOK_JET_MODEL,
                 **settings: Any) -> None:
        self.preset = preset
        self.records = {case: list(r) for case, r in (records or {}).items()}
        self.seeds, self.jet_model, self.settings = seeds, jet_model, settings
        cases = [c for c in JOINT_CASES if c in self.records] or list(JOINT_CASES)
        self.case = widgets.Dropdown(options=cases, value=cases[0], description="Case")
        self.representation = widgets.Dropdown(options=[(REPRESENTATION_LABELS[r], r) for r in JOINT_REPRESENTATIONS],
                                               value="s_hlf", description="Jets as")
        self.strategy = widgets.Dropdown(options=JOINT_STRATEGIES, value="frozen", description="Strategy")
        self.train_size = widgets.BoundedIntText(value=max(study.NOTEBOOK_TRAIN_SIZES), min=10, max=10_000_000,
                                                 description="Train events")
        self.show_button = widgets.Button(description="Show (train if missing)", button_style="primary")
        self.message = widgets.HTML()
        self.plot_output = widgets.Output()
        self.table_output = widgets.Output()
        self.show_button.on_click(self._show)
        super().__init__([widgets.HBox([self.case, self.representation]),
                          widgets.HBox([self.strategy, self.train_size, self.show_button]), self.message,
                          widgets.HBox([self.plot_output, self.table_output])])

    def points(self):
        return study.study_points(self.case.value, [(self.representation.value, self.strategy.value)],
                                  [self.train_size.value], self.seeds, self.jet_model, **self.settings)

    def _show(self, _button: Any = None) -> None:
        try:
            points = self.points()
            found = joint.run_points(self.preset, points, progress=False)
        except (ConfigError, ValueError) as err:
            self.message.value = f"<b>Cannot train this point:</b> {err}"
            return
        self.message.value = ""
        self.records.setdefault(self.case.value, []).extend(found)
        test = joint.test_events(self.preset, self.case.value)
        first = found[0]
        show(self.plot_output, jplots.plot_scores(np.asarray(first["test_scores"]), test.label,
                                                  title=f"{REPRESENTATION_LABELS[self.representation.value]} "
                                                        f"{self.strategy.value}, n={self.train_size.value}"))
        rows = []
        for metric in ("rejection", "auc", "sic", "max_sic", "weighted_rejection"):
            s = summarize([r["metrics"][metric] for r in found])
            rows.append({"metric": metric, "mean ± std over seeds": f"{s.mean:.4g} ± {s.std:.2g}", "seeds": s.n})
        show(self.table_output, Markdown(markdown_table(rows)))


def joint_panel(preset: str | Preset, records: dict[str, list[dict[str, Any]]] | None = None,
                **kwargs: Any) -> JointPanel:
    """The panel over ``preset``'s joint analysis (see the module docstring)."""
    return JointPanel(preset, records, **kwargs)


__all__ = ["JointPanel", "joint_panel"]
