"""The fine-tuning panel of notebook 03: pick a task, a strategy and its settings, press Train, watch.

``finetune_panel(preset)`` returns an ipywidgets box.  Its controls are attributes (``task``, ``strategy``,
``unfreeze_epoch``, ``gpt_blocks``, ``train_size``, ``epochs``, ``seed``, ``train_button``, ``stop_button``,
``progress``), so a test can drive it headless by setting ``.value`` and calling ``.click()``.

In a Jupyter kernel the training runs in a background thread: the notebook stays usable, the progress bar and
the validation and training losses are redrawn after every epoch, and **Stop** ends the training after the epoch
under way.  What was trained is kept (the training engine saves its state after every epoch): pressing Train again
with the same settings continues from there and ends with the same model as an uninterrupted training.  Outside a
kernel (scripts, tests) Train trains before it returns; ``FinetunePanel(background=...)`` and
``panel.train(background=...)`` choose either way, and ``panel.wait(timeout)`` waits for a background training.
Afterwards the panel shows the test metrics beside the no-learning reference and the task's plot.  Results are
cached: pressing Train again with settings trained before shows them at once.  Settings that cannot be trained
(an unfreeze epoch past the last epoch, more GPT blocks than the backbone has, ...) are refused with a sentence
on screen, and nothing starts.
"""

from __future__ import annotations

import html
import threading
import traceback
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import ipywidgets as widgets
from matplotlib.figure import Figure
from traitlets import TraitError, validate

from tauml.config import BASELINES, STRATEGIES, TASKS, FinetuneConfig, Preset, get_preset
from tauml.evaluation.metrics import confusion_matrix
from tauml.evaluation.references import NO_ID_REFERENCE, RANDOM_GUESSING_ID
from tauml.pipeline.finetuning import check_config, finetune
from tauml.plots import STRATEGY_LABELS
from tauml.plots import tau as tplots
from tauml.studies.report import markdown_table
from tauml.utils import error_sentence, is_expected_error
from tauml.widgets.common import in_kernel, show

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


class TrainingStopped(Exception):
    """Raised by the panel's epoch callback once Stop was pressed: the training ends after the epoch whose state
    was just saved (``epoch`` epochs done), and continues from there the next time it is started."""

    def __init__(self, epoch: int) -> None:
        super().__init__(f"stopped after epoch {epoch}")
        self.epoch = epoch


class FinetunePanel(widgets.VBox):
    """Controls, a live loss curve, a metrics table and the task's plots (see the module docstring)."""

    def __init__(self, preset: str | Preset = "demo", run: Callable[..., Any] | None = None,
                 train_sizes: tuple[int, ...] | None = None, background: bool | None = None) -> None:

        self.preset = get_preset(preset)
        self.run = run or finetune
        #: Train in a background thread (default: in a Jupyter kernel yes, elsewhere no).
        self.background = in_kernel() if background is None else background
        self.last_result = None
        #: The unexpected exception of the last background training (shown on screen; a thread cannot raise it).
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
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
        self.stop_button = widgets.Button(description="Stop", icon="stop", disabled=True,
                                          tooltip="stop after the epoch under way; Train continues from there")
        self.progress = widgets.IntProgress(value=0, min=0, max=base.epochs, description="Epochs", style=style)
        self.status = widgets.HTML()
        self.loss_output = widgets.Output()
        self.metrics_output = widgets.Output()
        self.plot_output = widgets.Output()
        for control in (self.strategy, self.epochs, self.unfreeze_epoch, self.gpt_blocks, self.seed):
            control.observe(self._update_controls, names="value")
        self.train_button.on_click(lambda _button: self.train())
        self.stop_button.on_click(lambda _button: self.stop())
        self._update_controls()
        controls = widgets.VBox([
            widgets.HBox([self.task, self.strategy]),
            widgets.HBox([self.epochs, self.unfreeze_epoch]),
            widgets.HBox([self.gpt_blocks, self.train_size, self.seed]),
            widgets.HBox([self.train_button, self.stop_button, self.progress]),
            self.status,
        ])
        super().__init__([controls, widgets.HBox([self.loss_output, self.metrics_output]), self.plot_output])

    def config(self) -> FinetuneConfig:
        """The FinetuneConfig the controls describe."""
        return replace(self.preset.finetune, task=self.task.value, strategy=self.strategy.value,
                       epochs=self.epochs.value, unfreeze_epoch=self.unfreeze_epoch.value,
                       n_gpt_blocks=self.gpt_blocks.value, train_size=self.train_size.value, seed=self.seed.value)

    def _update_controls(self, _change: Any = None) -> None:
        # never below the current value: a browser's slider would clamp it to the new maximum and send that back,
        # silently turning the student's fine-tuning into the fixed backbone; the status says what to change instead
        self.unfreeze_epoch.max = max(self.epochs.value, self.unfreeze_epoch.value, self.unfreeze_epoch.min)
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

    @property
    def training(self) -> bool:
        """Whether a background training is running."""
        return self._thread is not None and self._thread.is_alive()

    def train(self, background: bool | None = None) -> threading.Thread | None:
        """Train the model the controls describe (what Train does): in a background thread, returned, when
        ``background`` (default: the panel's ``background``), else here, before returning None.  Impossible
        settings start nothing: the status says what to change."""
        if self.training:  # Train is disabled meanwhile; a call from code changes nothing either
            return self._thread
        config = self.config()
        problem = self.problem()
        if problem is not None:  # nothing is trained with impossible settings; the status says what to change
            self.status.value = error_html(problem)
            return None
        background = self.background if background is None else background
        self._stop.clear()
        self.error = None
        self.train_button.disabled, self.stop_button.disabled = True, False
        self.progress.max, self.progress.value, self.progress.bar_style = config.epochs, 0, ""
        self.status.value = f"training {config.task} with {config.strategy} …"
        for output in (self.metrics_output, self.plot_output):
            show(output)
        if not background:
            self._train(config, background=False)
            return None
        self._thread = threading.Thread(target=self._train, args=(config, True), daemon=True,
                                        name=f"tauml fine-tuning {config.task} {config.strategy}")
        self._thread.start()
        return self._thread

    def stop(self) -> None:
        """Stop the training under way after its current epoch (what Stop does); what was trained is kept."""
        if self.stop_button.disabled and not self.training:
            return
        self._stop.set()
        self.stop_button.disabled = True
        self.status.value = "stopping after the epoch under way …"

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds (None: as long as it takes) for a background training to end; True when
        none is running any more."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.training

    def _draw_losses(self, history: dict[str, list], unfreeze: int | None, epochs: int) -> None:
        fig = Figure(figsize=(5.5, 4.0))  # not pyplot: drawn from the training thread, never shown by Jupyter itself
        ax = fig.subplots()
        done = range(1, len(history["val_loss"]) + 1)
        ax.plot(done, history["train_loss"], label="training", color="#5790fc")
        ax.plot(done, history["val_loss"], label="validation", color="#e42536")
        if unfreeze is not None and 0 < unfreeze < epochs:
            ax.axvline(unfreeze + 0.5, color="grey", linestyle=":", label="backbone unfrozen")
        ax.set_xlim(0.5, max(epochs, 1) + 0.5)
        ax.set_xlabel("Epoch")
        ax.set_ylabel("Loss")
        ax.legend(fontsize="small")
        show(self.loss_output, fig)

    def _epoch_done(self, config: FinetuneConfig, unfreeze: int | None, epoch: int, history: dict[str, list]) -> None:
        """After every epoch (its state saved): the progress bar and the loss curve; then Stop takes effect."""
        self.progress.value = epoch + 1
        self._draw_losses(history, unfreeze, config.epochs)
        if self._stop.is_set():
            raise TrainingStopped(epoch + 1)

    def _train(self, config: FinetuneConfig, background: bool) -> None:
        unfreeze = config.unfreeze_epoch if config.strategy == "fine_tuning" else None
        try:
            result = self.run(self.preset, config, progress=False,
                              callback=lambda epoch, record, history: self._epoch_done(config, unfreeze, epoch, history))
        except TrainingStopped as stopped:
            self.progress.bar_style = "warning"
            self.status.value = (f"stopped after epoch {stopped.epoch} of {config.epochs} — press Train to "
                                 "continue")
            return
        except Exception as err:  # an expected failure (input, cache) as one sentence; a bug is also raised
            self.progress.bar_style = "danger"
            if is_expected_error(err):
                self.status.value = error_html(err)
                return
            self.status.value = f"<span style='color:#c00'>{type(err).__name__}: {html.escape(str(err))}</span>"
            if not background:
                raise
            self.error = err  # a thread cannot raise into the notebook: the traceback goes on screen
            show(self.plot_output, "".join(traceback.format_exception(type(err), err, err.__traceback__)))
            return
        finally:
            self.train_button.disabled, self.stop_button.disabled = False, True
        self.last_result = result
        self.progress.value, self.progress.bar_style = len(result.history["val_loss"]), "success"
        self._draw_losses(result.history, unfreeze, config.epochs)
        self._show_result(result)
        self.status.value = (f"done: best epoch {result.best_epoch + 1} of {config.epochs}, "
                             f"{result.n_trainable_parameters:,} trainable parameters")

    def _show_result(self, result: Any) -> None:
        from IPython.display import Markdown  # (local: optional, the 'notebooks' extra)

        rows = [{"": "this model", **{k: round(v, 4) for k, v in result.headline.items()}}]
        ref = result.reference
        note = ""
        if result.config.task == "reg":
            rows.append({"": "reco-jet pT (no learning)", "resolution": round(ref["resolution"], 4),
                         "median": round(ref["median"], 4), "iqr": round(ref["iqr"], 4)})
        elif result.config.task == "dm":
            rows.append({"": "counting (no learning)", "weighted_auc": "—", "accuracy": round(ref["accuracy"], 4)})
        else:  # identification has no no-learning reference: the row says so and gives random guessing
            rows.append({"": "random guessing (no reference)", **RANDOM_GUESSING_ID})
            note = f"\n\n{NO_ID_REFERENCE[0].upper()}{NO_ID_REFERENCE[1:]}."
        show(self.metrics_output, Markdown(markdown_table(rows) + note))
        p = result.predictions
        name = result.config.strategy
        # not pyplot: this may run in the training thread
        if result.config.task == "id":
            fig = tplots.plot_roc({name: (p["score"], p["is_tau"])}, ax=Figure(figsize=(7.0, 5.5)).subplots())
        elif result.config.task == "reg":
            fig = tplots.plot_response({name: p["pred_pt"] / p["vis_pt"]}, reco_response=p["reco_pt"] / p["vis_pt"],
                                       ax=Figure(figsize=(7.0, 5.5)).subplots())
        else:
            fig = tplots.plot_confusion(confusion_matrix(p["dm"], p["probs"].argmax(1), 6), text=name,
                                        ax=Figure(figsize=(7.5, 6.5)).subplots())
        show(self.plot_output, fig)


def finetune_panel(preset: str | Preset = "demo", run: Callable[..., Any] | None = None,
                   train_sizes: tuple[int, ...] | None = None, background: bool | None = None) -> FinetunePanel:
    """The fine-tuning panel for ``preset`` (``run`` defaults to :func:`tauml.pipeline.finetune`; ``background``
    defaults to training in a background thread in a Jupyter kernel and before returning elsewhere)."""
    return FinetunePanel(preset, run=run, train_sizes=train_sizes, background=background)
