"""The fine-tuning panel of notebook 03: pick a task, a strategy and its settings, press Train, watch.

``finetune_panel(preset)`` returns an ipywidgets box.  Its controls are attributes (``task``, ``strategy``,
``unfreeze_epoch``, ``gpt_blocks``, ``train_size``, ``epochs``, ``seed``, ``train_button``), so a test can
drive it headless by setting ``.value`` and calling ``.click()``.  During training the validation and
training losses are redrawn after every epoch; afterwards the panel shows the test metrics beside the
no-learning reference and the task's plots.  Results are cached: pressing Train again with the same
settings shows them at once.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import ipywidgets as widgets
import matplotlib.pyplot as plt
from traitlets import TraitError, validate

from tauml.config import BASELINES, STRATEGIES, TASKS, FinetuneConfig, Preset, get_preset
from tauml.evaluation.metrics import confusion_matrix
from tauml.pipeline.finetuning import check_config, finetune
from tauml.plots import STRATEGY_LABELS
from tauml.plots import tau as tplots
from tauml.studies.report import markdown_table
from tauml.utils import error_sentence, is_expected_error
from tauml.widgets.common import show

TASK_LABELS = {"id": "τ identification", "reg": "visible pT regression", "dm": "decay mode"}


class UnclampedSlider(widgets.IntSlider):
    """An IntSlider that keeps a value outside its range (set from code, or left behind when its range shrinks)
    instead of clamping it silently: the panel then says on screen why the value is impossible."""

    @validate("value")
    def _validate_value(self, proposal: dict[str, Any]) -> int:
        return proposal["value"]

    @validate("max")
    def _validate_max(self, proposal: dict[str, Any]) -> int:
        if proposal["value"] < self.min:
            raise TraitError("setting max < min")
        return proposal["value"]


def error_html(err: BaseException) -> str:
    """The one sentence of an expected failure (as ``tauml <command>: error: ...`` prints it), in red."""
    return f"<span style='color:#c00'>error: {html.escape(error_sentence(err))}</span>"


class FinetunePanel(widgets.VBox):
    """Controls, a live loss curve, a metrics table and the task's plots (see the module docstring)."""

    def __init__(self, preset: str | Preset = "demo", run: Callable[..., Any] | None = None,
                 train_sizes: tuple[int, ...] | None = None) -> None:

        self.preset = get_preset(preset)
        self.run = run or finetune
        self.last_result = None
        base = self.preset.finetune
        sizes = train_sizes or tuple(sorted(set(self.preset.scan.train_sizes) | {base.train_size}))
        style = {"description_width": "initial"}
        self.task = widgets.Dropdown(options=[(TASK_LABELS[t], t) for t in TASKS], value=base.task,
                                     description="Task", style=style)
        self.strategy = widgets.Dropdown(options=[(STRATEGY_LABELS.get(s, s), s) for s in STRATEGIES + BASELINES],
                                         value=base.strategy, description="Strategy", style=style)
        self.epochs = UnclampedSlider(value=base.epochs, min=1, max=max(100, base.epochs), description="Epochs",
                                      style=style, continuous_update=False)
        self.unfreeze_epoch = UnclampedSlider(value=min(base.unfreeze_epoch, base.epochs), min=0, max=base.epochs,
                                              description="Unfreeze at epoch", style=style, continuous_update=False)
        self.gpt_blocks = UnclampedSlider(value=self.preset.gpt.n_layer, min=1, max=self.preset.gpt.n_layer,
                                          description="GPT blocks", style=style, continuous_update=False)
        self.train_size = widgets.Dropdown(options=sizes, value=base.train_size if base.train_size in sizes else sizes[0],
                                           description="Training jets", style=style)
        self.seed = widgets.IntText(value=base.seed, description="Seed", style=style,
                                    layout=widgets.Layout(width="160px"))
        self.train_button = widgets.Button(description="Train", button_style="primary", icon="play")
        self.status = widgets.HTML()
        self.loss_output = widgets.Output()
        self.metrics_output = widgets.Output()
        self.plot_output = widgets.Output()
        for control in (self.strategy, self.epochs, self.unfreeze_epoch, self.gpt_blocks, self.seed):
            control.observe(self._update_controls, names="value")
        self.train_button.on_click(self._train)
        self._update_controls()
        controls = widgets.VBox([
            widgets.HBox([self.task, self.strategy]),
            widgets.HBox([self.epochs, self.unfreeze_epoch]),
            widgets.HBox([self.gpt_blocks, self.train_size, self.seed]),
            widgets.HBox([self.train_button, self.status]),
        ])
        super().__init__([controls, widgets.HBox([self.loss_output, self.metrics_output]), self.plot_output])

    def config(self) -> FinetuneConfig:
        """The FinetuneConfig the controls describe."""
        return replace(self.preset.finetune, task=self.task.value, strategy=self.strategy.value,
                       epochs=self.epochs.value, unfreeze_epoch=self.unfreeze_epoch.value,
                       n_gpt_blocks=self.gpt_blocks.value, train_size=self.train_size.value, seed=self.seed.value)

    def _update_controls(self, _change: Any = None) -> None:
        self.unfreeze_epoch.max = max(self.epochs.value, self.unfreeze_epoch.min)
        self.unfreeze_epoch.disabled = self.strategy.value != "fine_tuning"
        self.gpt_blocks.disabled = self.strategy.value in BASELINES
        problem = self.problem()
        if problem is not None:
            self.status.value = error_html(problem)
        elif self.status.value.startswith("<span style='color:#c00'>error:"):
            self.status.value = ""

    def problem(self) -> Exception | None:
        """Why the controls' settings cannot be trained (the error :func:`check_config` raises), or None."""
        try:
            check_config(self.preset, self.config())
        except Exception as err:
            if is_expected_error(err):
                return err
            raise
        return None

    def _draw_losses(self, history: dict[str, list], unfreeze: int | None) -> None:
        fig, ax = plt.subplots(figsize=(5.5, 4.0))
        epochs = range(1, len(history["val_loss"]) + 1)
        ax.plot(epochs, history["train_loss"], label="training", color="#5790fc")
        ax.plot(epochs, history["val_loss"], label="validation", color="#e42536")
        if unfreeze is not None and 0 < unfreeze < self.epochs.value:
            ax.axvline(unfreeze + 0.5, color="grey", linestyle=":", label="backbone unfrozen")
        ax.set_xlim(0.5, max(self.epochs.value, 1) + 0.5)
        ax.set_xlabel("Epoch")
        ax.set_ylabel("Loss")
        ax.legend(fontsize="small")
        show(self.loss_output, fig)

    def _train(self, _button: Any = None) -> None:
        config = self.config()
        problem = self.problem()
        if problem is not None:  # nothing is trained with impossible settings; the status says what to change
            self.status.value = error_html(problem)
            return
        unfreeze = config.unfreeze_epoch if config.strategy == "fine_tuning" else None
        self.train_button.disabled = True
        self.status.value = f"training {config.task} with {config.strategy} …"
        for output in (self.metrics_output, self.plot_output):
            show(output)
        try:
            result = self.run(self.preset, config, progress=False,
                              callback=lambda epoch, record, history: self._draw_losses(history, unfreeze))
        except Exception as err:  # an expected failure (input, cache) as one sentence; a bug is also raised
            if is_expected_error(err):
                self.status.value = error_html(err)
                return
            self.status.value = f"<span style='color:#c00'>{type(err).__name__}: {html.escape(str(err))}</span>"
            raise
        finally:
            self.train_button.disabled = False
        self.last_result = result
        self._draw_losses(result.history, unfreeze)
        self._show_result(result)
        self.status.value = (f"done: best epoch {result.best_epoch + 1} of {config.epochs}, "
                             f"{result.n_trainable_parameters:,} trainable parameters")

    def _show_result(self, result: Any) -> None:
        from IPython.display import Markdown


        rows = [{"": "this model", **{k: round(v, 4) for k, v in result.headline.items()}}]
        ref = result.reference
        if result.config.task == "reg":
            rows.append({"": "reco-jet pT", "resolution": round(ref["resolution"], 4),
                         "median": round(ref["median"], 4), "iqr": round(ref["iqr"], 4)})
        elif result.config.task == "dm":
            rows.append({"": "counting", "weighted_auc": "—", "accuracy": round(ref["accuracy"], 4)})
        show(self.metrics_output, Markdown(markdown_table(rows)))
        p = result.predictions
        name = result.config.strategy
        if result.config.task == "id":
            fig = tplots.plot_roc({name: (p["score"], p["is_tau"])})
        elif result.config.task == "reg":
            fig = tplots.plot_response({name: p["pred_pt"] / p["vis_pt"]}, reco_response=p["reco_pt"] / p["vis_pt"])
        else:

            fig = tplots.plot_confusion(confusion_matrix(p["dm"], p["probs"].argmax(1), 6), text=name)
        show(self.plot_output, fig)


def finetune_panel(preset: str | Preset = "demo", run: Callable[..., Any] | None = None,
                   train_sizes: tuple[int, ...] | None = None) -> FinetunePanel:
    """The fine-tuning panel for ``preset`` (``run`` defaults to :func:`tauml.pipeline.finetune`)."""
    return FinetunePanel(preset, run=run, train_sizes=train_sizes)
