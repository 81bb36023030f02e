"""The lifetime (impact-parameter) features reach the baselines through the cached fine-tuning (issue 11, part 4)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def lifetime_preset(tiny_preset):
    return replace(tiny_preset, deepset=replace(tiny_preset.deepset, use_lifetime=True))


def test_deepset_with_lifetime_trains_evaluates_and_reads_the_impact_parameters(tiny_dataset, tiny_preset,
                                                                                 lifetime_preset) -> None:
    from tauml import pipeline
    from tauml.pipeline.finetuning import build_model, finetune, load_model_state, resolve, uses_lifetime
    from tauml.training.finetune import forward, tau_inputs

    config = replace(lifetime_preset.finetune, task="dm", strategy="deepset", seed=1)
    assert uses_lifetime(lifetime_preset, "deepset") and not uses_lifetime(tiny_preset, "deepset")
    assert not uses_lifetime(lifetime_preset, "part") and not uses_lifetime(lifetime_preset, "fine_tuning")
    # another model, another cache folder: a training without the lifetime inputs is never reused
    with_lifetime = pipeline.finetune_dir(lifetime_preset, resolve(lifetime_preset, config))
    assert with_lifetime != pipeline.finetune_dir(tiny_preset, resolve(tiny_preset, config))

    result = finetune(lifetime_preset, config, progress=False)
    assert result.folder == with_lifetime
    assert len(result.history["val_loss"]) == config.epochs and np.isfinite(result.history["val_loss"]).all()
    assert 0.0 <= result.metrics["accuracy"] <= 1.0 and len(result.predictions["dm"]) > 0

    # the trained model reads the lifetime features: zeroing them changes its outputs
    model = build_model(lifetime_preset, resolve(lifetime_preset, config))
    model.load_state_dict(load_model_state(result.folder))
    model.eval()
    test = pipeline.tau_jets(lifetime_preset, "dm", "test", lifetime=True)
    charged = test.mask & (test.features[..., 4] != 0)
    assert np.abs(test.lifetime[charged]).sum() > 0  # charged candidates carry impact parameters
    assert (test.lifetime[~test.mask] == 0).all()
    inputs = tau_inputs(test, lifetime=True).tensors
    with torch.no_grad():
        outputs = forward(model, inputs)
        zeroed = forward(model, dict(inputs, lifetime=torch.zeros_like(inputs["lifetime"])))
    assert outputs.shape == zeroed.shape and not torch.allclose(outputs, zeroed)


def test_lifetime_inputs_need_jets_built_with_them(tiny_dataset, tiny_preset) -> None:
    from tauml import pipeline
    from tauml.training.finetune import tau_inputs

    jets = pipeline.tau_jets(tiny_preset, "dm", "test")
    assert jets.lifetime is None
    with pytest.raises(ValueError, match="lifetime=True"):
        tau_inputs(jets, lifetime=True)
    assert "lifetime" not in tau_inputs(jets).tensors
