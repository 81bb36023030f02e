"""ParticleTransformer (weaver-core) and DeepSet baselines: shapes, padding and permutation invariance."""

from __future__ import annotations

import sys

import pytest
import torch
from helpers import as_if_trained

from tauml.config import DeepSetConfig, ParTBaselineConfig
from tauml.models.baselines import DeepSetBaseline, ParticleTransformerBaseline
from tauml.models.heads import TASK_OUTPUTS

SMALL_PART = ParTBaselineConfig(embed_dims=(16, 32, 16), pair_embed_dims=(8, 8), num_heads=2)
SMALL_DEEPSET = DeepSetConfig(width=16)


def _jets(n: int = 5, length: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random jets with 1..length constituents: features, boolean mask, 4-vectors in GeV, lifetime."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.tensor([1, 2, 4, 6, 8][:n])
    mask = torch.arange(length)[None, :] < counts[:, None]
    features = torch.randn(n, length, 10, generator=g)
    pt = torch.rand(n, length, generator=g) * 20 + 1
    eta = torch.randn(n, length, generator=g) * 0.1
    phi = torch.randn(n, length, generator=g) * 0.1
    px, py, pz = pt * torch.cos(phi), pt * torch.sin(phi), pt * torch.sinh(eta)
    energy = torch.sqrt(px**2 + py**2 + pz**2 + 0.14**2)
    p4 = torch.stack([px, py, pz, energy], dim=-1)
    lifetime = torch.randn(n, length, 4, generator=g).tanh()
    for tensor in (features, p4, lifetime):
        tensor[~mask] = 0.0
    return {"features": features, "mask": mask, "p4": p4, "lifetime": lifetime}


def _padded_more(jets: dict[str, torch.Tensor], extra: int = 4) -> dict[str, torch.Tensor]:
    out = {}
    for name, tensor in jets.items():
        pad = torch.zeros(tensor.shape[0], extra, *tensor.shape[2:], dtype=tensor.dtype)
        out[name] = torch.cat((tensor, pad), dim=1)
    return out


def _with_garbage(jets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = dict(jets)
    padded = ~jets["mask"]
    for name in ("features", "p4", "lifetime"):
        tensor = jets[name].clone()
        tensor[padded] = torch.randn(int(padded.sum()), tensor.shape[-1]) * 50 + 10
        out[name] = tensor
    return out


MODELS = [
    pytest.param(lambda task, **kw: as_if_trained(ParticleTransformerBaseline(task, SMALL_PART, **kw)), id="part"),
    pytest.param(lambda task, **kw: as_if_trained(DeepSetBaseline(task, SMALL_DEEPSET, **kw)), id="deepset"),
]


@pytest.mark.parametrize("build", [ParticleTransformerBaseline, DeepSetBaseline])
def test_untrained_baselines_predict_the_no_learning_answer(build) -> None:
    jets = _jets()
    config = SMALL_PART if build is ParticleTransformerBaseline else SMALL_DEEPSET
    out = build("reg", config).eval()(jets["features"], jets["mask"], jets["p4"])
    assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("build", MODELS)
@pytest.mark.parametrize("task", ["id", "reg", "dm"])
def test_output_shapes(build, task: str) -> None:
    jets = _jets()
    out = build(task)(jets["features"], jets["mask"], jets["p4"])
    assert out.shape == (5, TASK_OUTPUTS[task])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("build", MODELS)
def test_padded_constituents_have_no_influence(build) -> None:
    model = build("dm", seed=3)
    jets = _jets()
    model.eval()
    with torch.no_grad():
        reference = model(jets["features"], jets["mask"], jets["p4"])
        # more padded slots: weaver-core's attention must mask them as keys (bug H.3 would not)
        longer = _padded_more(jets)
        torch.testing.assert_close(model(longer["features"], longer["mask"], longer["p4"]), reference,
                                   rtol=1e-5, atol=1e-5)
        garbage = _with_garbage(jets)
        torch.testing.assert_close(model(garbage["features"], garbage["mask"], garbage["p4"]), reference,
                                   rtol=1e-5, atol=1e-5)
    # training mode: batch-norm statistics over real constituents only, same dropout draws
    model.train()
    torch.manual_seed(5)
    train_reference = model(jets["features"], jets["mask"], jets["p4"])
    torch.manual_seed(5)
    torch.testing.assert_close(model(garbage["features"], garbage["mask"], garbage["p4"]), train_reference,
                               rtol=1e-5, atol=1e-5)


def test_part_batch_norm_ignores_padding_in_training() -> None:
    """With dropout off, a training-mode forward pass must not depend on how much padding a batch has
    (weaver-core's own input BatchNorm would count the padded zeros in its batch statistics)."""
    config = ParTBaselineConfig(embed_dims=(16, 32, 16), pair_embed_dims=(8, 8), num_heads=2, dropout=0.0)
    model = as_if_trained(ParticleTransformerBaseline("id", config, seed=2)).train()
    jets = _jets()
    longer = _padded_more(jets, extra=12)
    reference = model(jets["features"], jets["mask"], jets["p4"])
    torch.testing.assert_close(model(longer["features"], longer["mask"], longer["p4"]), reference,
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("build", MODELS)
def test_constituent_order_does_not_matter(build) -> None:
    model = build("id").eval()
    jets = _jets()
    order = torch.randperm(jets["mask"].shape[1], generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference = model(jets["features"], jets["mask"], jets["p4"])
        permuted = model(jets["features"][:, order], jets["mask"][:, order], jets["p4"][:, order])
    torch.testing.assert_close(permuted, reference, rtol=1e-4, atol=1e-5)


def test_lifetime_features_and_seeds() -> None:
    jets = _jets()
    config = ParTBaselineConfig(embed_dims=(16, 16), pair_embed_dims=(8,), num_heads=2, use_lifetime=True)
    model = as_if_trained(ParticleTransformerBaseline("reg", config, seed=1)).eval()
    with torch.no_grad():
        with_life = model(**jets)
        changed = dict(jets, lifetime=jets["lifetime"] + 0.5 * jets["mask"][..., None])
        assert not torch.allclose(model(**changed), with_life)
    with pytest.raises(ValueError, match="lifetime"):
        model(jets["features"], jets["mask"], jets["p4"])
    a = DeepSetBaseline("id", SMALL_DEEPSET, seed=4)
    b = DeepSetBaseline("id", SMALL_DEEPSET, seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_bad_inputs_are_named() -> None:
    jets = _jets()
    model = DeepSetBaseline("id", SMALL_DEEPSET)
    with pytest.raises(ValueError, match="boolean"):
        model(jets["features"], jets["mask"].float(), jets["p4"])
    empty = jets["mask"].clone()
    empty[0] = False
    with pytest.raises(ValueError, match="no constituent"):
        model(jets["features"], empty, jets["p4"])


def test_missing_weaver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "weaver.nn.model.ParticleTransformer", None)
    with pytest.raises(ImportError, match=r'pip install "tauml\[baselines\]"'):
        ParticleTransformerBaseline("id")
