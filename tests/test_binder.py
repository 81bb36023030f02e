"""The Binder environment (binder/) is pinned as the Makefile and pyproject.toml pin tauml's (issue 15, point 7)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11 (tomllib)")

ROOT = Path(__file__).resolve().parents[1]


def requirement_pins(text: str) -> dict[str, str]:
    """``{name: version}`` of the ``name==version`` lines of a requirements file or a Makefile variable."""
    return {m.group(1).lower(): m.group(2) for m in re.finditer(r"^\s*(?:\w+\s*\?=\s*)?([A-Za-z0-9_.-]+)==([^\s;#]+)",
                                                                 text, re.MULTILINE)}


def test_binder_pins_torch_as_the_makefile_and_pythia_as_pyproject():
    binder = requirement_pins((ROOT / "binder" / "requirements.txt").read_text())
    makefile = requirement_pins((ROOT / "Makefile").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = dict(d.split("==") for d in project["dependencies"] if "==" in d)
    assert binder["torch"] == makefile["torch"], "binder/requirements.txt and the Makefile pin different torch"
    for name, version in pinned.items():
        assert binder.get(name.lower()) == version, f"binder/requirements.txt must pin {name}=={version} (pyproject.toml)"
    assert "download.pytorch.org/whl/cpu" in (ROOT / "binder" / "requirements.txt").read_text(), (
        "Binder has no GPU: torch must come from PyTorch's CPU index (else pip pulls GBs of CUDA wheels)")


def test_binder_python_satisfies_pyproject_and_postbuild_installs_known_extras():
    runtime = (ROOT / "binder" / "runtime.txt").read_text().strip()
    major, minor = map(int, re.fullmatch(r"python-(\d+)\.(\d+)", runtime).groups())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lowest = tuple(map(int, re.search(r">=\s*(\d+)\.(\d+)", project["requires-python"]).groups()))
    assert (major, minor) >= lowest, f"{runtime} is older than requires-python {project['requires-python']}"
    post_build = (ROOT / "binder" / "postBuild").read_text()
    extras = re.search(r'-e\s+"?\.\[([^\]]+)\]', post_build).group(1).split(",")
    assert "notebooks" in extras
    unknown = set(extras) - set(project["optional-dependencies"])
    assert not unknown, f"binder/postBuild installs extras pyproject.toml does not define: {unknown}"
    assert "tauml prepare --preset demo" in post_build, "Binder sessions must start warm (tauml prepare)"
