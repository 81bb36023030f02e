"""The backbone panel of notebook 07: pick what the backbone reads and how it is pretrained, pretrain, fine-tune.

``backbone_panel(preset)`` returns an ipywidgets box.  Its controls are attributes (``inputs``, ``objective``,
``mpm_weight``, ``pretrain_epochs``, ``pretrain_button``, ``status``, ``summary_output``) so that a test drives
it headless by setting ``.value`` and calling ``.click()``.  **Pretrain** builds (or reads from the cache) the
backbone of the chosen variant (:func:`tauml.studies.beyond_tokens.variant_preset`), shows its validation
numbers, and puts the fine-tuning panel of notebook 03 (:class:`~tauml.widgets.finetuning.FinetunePanel`) for that
variant underneath (``finetune``): the same three tasks, three strategies, unfreeze epoch and GPT blocks, fed the
kind of input the backbone was pretrained on.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets
from IPython.display import Markdown

from tauml import pipeline
from tauml.config import BACKBONE_INPUTS, Preset, get_preset
from tauml.studies.beyond_tokens import NOTEBOOK_PRETRAIN_EPOCHS, variant_preset
from tauml.studies.report import markdown_table
from tauml.utils import error_sentence, is_expected_error
from tauml.widgets.common import show
from tauml.widgets.finetuning import FinetunePanel

#: The objectives the panel offers: label -> (next-token weight, masked-particle weight of 1 x the slider).
OBJECTIVES: dict[str, tuple[float, bool]] = {
    "next-token prediction": (1.0, False),
    "masked particle modelling": (0.0, True),
    "next-token + masked particle": (1.0, True),
}


class BackbonePanel(widgets.VBox):
    """Input and objective controls, a Pretrain button, the backbone's numbers, then a fine-tuning panel."""

    def __init__(self, preset: str | Preset = "demo", finetune_run: Callable[..., Any] | None = None) -> None:
        self.preset = get_preset(preset)
        self.finetune_run = finetune_run
        self.variant: Preset | None = None
        self.finetune: FinetunePanel | None = None
        style = {"description_width": "initial"}
        self.inputs = widgets.Dropdown(options=[("token ids (OmniJet-α)", "tokens"),
                                                ("continuous features (hybrid)", "continuous")],
                                       value=self.preset.gpt.inputs, description="Backbone reads", style=style)
        self.objective = widgets.Dropdown(options=list(OBJECTIVES), value="next-token prediction",
                                          description="Pretraining objective", style=style)
        self.mpm_weight = widgets.FloatSlider(value=1.0, min=0.1, max=2.0, step=0.1, description="MPM weight",
                                              style=style, continuous_update=False)
        self.pretrain_epochs = widgets.IntSlider(value=NOTEBOOK_PRETRAIN_EPOCHS, min=1,
                                                 max=max(20, self.preset.pretrain.epochs),
                                                 description="Pretraining epochs", style=style,
                                                 continuous_update=False)
        self.pretrain_button = widgets.Button(description="Pretrain", button_style="primary", icon="play")
        self.status = widgets.HTML()
        self.summary_output = widgets.Output()
        self.finetune_box = widgets.VBox()
        self.objective.observe(self._update_controls, names="value")
        self.pretrain_button.on_click(lambda _button: self.pretrain())
        self._update_controls()
        super().__init__([widgets.HBox([self.inputs, self.objective]),
                          widgets.HBox([self.mpm_weight, self.pretrain_epochs, self.pretrain_button]),
                          self.status, self.summary_output, self.finetune_box])

    def _update_controls(self, _change: Any = None) -> None:
        self.mpm_weight.disabled = not OBJECTIVES[self.objective.value][1]

    def variant_preset(self) -> Preset:
        """The preset of the chosen inputs, objective and pretraining epochs."""
        if self.inputs.value not in BACKBONE_INPUTS:
            raise ValueError(f"inputs={self.inputs.value!r}; choose from {', '.join(BACKBONE_INPUTS)}")
        ntp, uses_mpm = OBJECTIVES[self.objective.value]
        return variant_preset(self.preset, self.inputs.value, ntp, self.mpm_weight.value if uses_mpm else 0.0,
                              self.pretrain_epochs.value)

    def pretrain(self) -> Preset | None:
        """Pretrain (or read from the cache) the chosen backbone, show its numbers, build its fine-tuning panel."""
        try:
            variant = self.variant_preset()
            self.status.value = "pretraining ... (cached backbones load at once)"
            pipeline.backbone_checkpoint(variant, progress=False)
            history = pipeline.backbone_history(variant)
        except Exception as err:
            if not is_expected_error(err):
                raise
            self.status.value = f"<span style='color:#c00'>error: {html.escape(error_sentence(err))}</span>"
            return None
        last = history["epochs"][-1]
        row = {"inputs": variant.gpt.inputs, "objective": self.objective.value,
               "epochs": len(history["epochs"]), "val perplexity": last.get("val_perplexity", "—"),
               "unigram perplexity": history["unigram_perplexity"],
               "masked-particle accuracy": last.get("val_mpm_accuracy", "—")}
        generative = variant.pretrain.ntp_weight > 0
        note = "" if generative else "\n\nNo next-token term: this backbone cannot generate jets."
        show(self.summary_output, Markdown(markdown_table([row]) + note))
        self.variant = variant
        self.finetune = FinetunePanel(variant, run=self.finetune_run) if self.finetune_run else FinetunePanel(variant)
        self.finetune_box.children = (self.finetune,)
        self.status.value = f"backbone ready ({variant.gpt.inputs} inputs): fine-tune it below"
        return variant


def backbone_panel(preset: str | Preset = "demo", finetune_run: Callable[..., Any] | None = None) -> BackbonePanel:
    """The backbone panel of notebook 07 (see the module docstring)."""
    return BackbonePanel(preset, finetune_run=finetune_run)
