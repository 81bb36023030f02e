"""Where tauml keeps what it builds (generated data, tokenizers, backbones, scan points), and safe writes.

The cache folder is ``$TAUML_CACHE_DIR`` when set, else the operating system's user cache
(``~/.cache/tauml`` on Linux).  Every artefact lives in a sub-folder named after the hash of the
configuration that made it (:func:`tauml.config.config_hash`), so changing a setting never reuses a
stale result, and nothing a user wrote is overwritten.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

#: Bump when the generator, detector or truth code changes what it writes for the same configuration.
DATA_FORMAT_VERSION = 1
#: Bump when a model or training change makes older cached checkpoints incompatible.
MODEL_FORMAT_VERSION = 1

ENV_CACHE_DIR = "TAUML_CACHE_DIR"


def cache_dir() -> Path:
    """The root of tauml's cache (created if missing)."""
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        root = Path(env).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = Path(base) / "tauml"
    root.mkdir(parents=True, exist_ok=True)
    return root


def cache_path(kind: str, key: str) -> Path:
    """The folder of one cached artefact, e.g. ``cache_path("data", "1a2b3c4d5e6f")``."""
    path = cache_dir() / kind / key
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; move it onto ``target`` only if the block succeeds.

    A reader never sees a half-written file, and an interrupted write leaves the old file (if any) intact.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def locked(folder: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (a ``.lock`` file in it) while building what lives there.

    Two notebooks asking for the same tokenizer or backbone at once: the second waits for the first and
    then finds the result in the cache instead of training a second copy into the same folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; building twice is slow but not wrong (atomic writes)
        yield
        return
    with open(folder / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    return json.loads(Path(path).read_text())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def plain(value: Any) -> Any:
    """JSON-ready: numpy scalars and arrays to Python numbers and lists."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value

