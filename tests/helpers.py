"""Helpers shared by the tests (import as ``from helpers import ...``; pytest puts tests/ on the path)."""

from __future__ import annotations

from pathlib import Path

import pytest

#: Small real files written by others (JetClass-II, FCC-ee EDM4hep); present only on the team's machines.
REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


def real_file(name: str | Path) -> Path:
    """The path of a third-party file in ``../shared/data/real``, or skip the test where it is absent."""
    path = name if isinstance(name, Path) else REAL_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared/data/real is only on the team's machines)")
    return path


def as_if_trained(model):
    """Give the zero-initialised output layer (``zero_output_layer``) values, as training would, so that the
    outputs depend on the inputs and invariance tests can fail.  Returns ``model``."""
    import torch

    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        last.weight.copy_(torch.randn(last.weight.shape, generator=g))
        last.bias.copy_(torch.randn(last.bias.shape, generator=g))
    return model
