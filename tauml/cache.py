"""Where tauml keeps what it builds (generated data, tokenizers, backbones, scan points), and safe writes.

The cache folder is ``$TAUML_CACHE_DIR`` when set, else the operating system's user cache
(``~/.cache/tauml`` on Linux).  Every artefact lives in a sub-folder named after the hash of the
configuration that made it (:func:`tauml.config.config_hash`), so changing a setting never reuses a
stale result, and nothing a user wrote is overwritten.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
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
#: The file in a cache entry that vouches for it (see :func:`write_entry`).
ENTRY_FILE = "done.json"


class CacheError(ValueError):
    """A cached file is corrupt or does not match what its entry vouches for; the message names what to delete."""


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


def cache_path(kind: str, key: str, create: bool = True) -> Path:
    """The folder of one cached artefact, e.g. ``cache_path("data", "1a2b3c4d5e6f")``.

    ``create=False`` only names the folder (a look-up never leaves an empty folder behind).
    """
    path = cache_dir() / kind / key
    if create:
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
        # mkstemp makes the file 0600; give it the mode an ordinary open() would (0666 less the umask), so that
        # a cache shared by a group stays readable by the group
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_umask())
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
        import fcntl  # (local: POSIX only)
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
    """Read a JSON file; a damaged one raises :class:`CacheError` naming it (a missing one FileNotFoundError)."""
    path = Path(path)
    text = path.read_bytes()
    try:
        return json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CacheError(f"{path} is corrupt ({err}) — delete it (and, in tauml's cache, its folder "
                         f"{path.parent}) so that it is built again") from err


def _umask() -> int:
    """The process's umask, read without changing it where Linux allows (os.umask() sets it, racing threads)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# -----------------------------------------------------------------------------------------------------------
# Verified cache entries
# -----------------------------------------------------------------------------------------------------------
#
# A cache entry is a folder whose ``done.json`` vouches for it: the size, modification time and SHA-256 of
# each file it holds, and ``built_from``, the keys and digests of what it was built from (the tokenizer a
# backbone was pretrained on, the backbone a fine-tuning started from).  Reuse verifies the entry: sizes
# always; the hash only when a file's modification time differs from the recorded one (a copy, a restore, a
# swap), so that reusing a paper-scale entry costs a stat() per file rather than reading gigabytes.  An
# in-place change that keeps the size and the modification time is not detected (see docs/reliability.md).


def file_digest(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """The SHA-256 of a file, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What an entry records about one of its files: size, modification time (ns) and SHA-256."""
    stat = os.stat(path)
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": file_digest(path)}


def write_entry(done: str | os.PathLike[str], files: list[str], built_from: dict[str, Any] | None = None,
                **info: Any) -> dict[str, Any]:
    """Write the entry file ``done`` (e.g. ``<folder>/done.json``) vouching for ``files`` (names relative to its
    folder), built from ``built_from``; ``info`` is stored beside.  Written last and atomically: an entry
    without it is unfinished."""
    done = Path(done)
    entry = {**info, "files": {name: file_record(done.parent / name) for name in files},
             "built_from": dict(built_from or {})}
    write_json(done, entry)
    return entry


def entry_problem(done: str | os.PathLike[str], built_from: dict[str, Any] | None = None) -> str | None:
    """Why the entry ``done`` cannot be reused (None when it can): missing, unreadable, a file missing, of
    another size or content, or built from something other than ``built_from`` (only the keys given are
    compared).  Files whose size and modification time match the record are not hashed again."""
    done = Path(done)
    if not done.is_file():
        return f"{done.name} is missing"
    try:
        entry = read_json(done)
    except (CacheError, OSError) as err:
        return f"{done.name} is unreadable ({err})"
    if not isinstance(entry, dict):
        return f"{done.name} is not an entry"
    for name, record in entry.get("files", {}).items():
        path = done.parent / name
        try:
            stat = path.stat()
        except OSError:
            return f"{name} is missing"
        if stat.st_size != record.get("size"):
            return f"{name} has {stat.st_size} bytes, {record.get('size')} were written"
        if stat.st_mtime_ns != record.get("mtime_ns") and file_digest(path) != record.get("sha256"):
            return f"{name} differs from the file that was written (SHA-256)"
    recorded = entry.get("built_from", {})
    for key, value in (built_from or {}).items():
        if value is not None and recorded.get(key) not in (None, value):
            return f"it was built from another {key} ({recorded.get(key)!s:.16} instead of {value!s:.16})"
    return None


def read_entry(done: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The entry ``done`` as written, or None where it is missing or unreadable."""
    try:
        entry = read_json(done)
    except (CacheError, OSError):
        return None
    return entry if isinstance(entry, dict) else None


def entry_digest(done: str | os.PathLike[str], name: str) -> str | None:
    """The recorded SHA-256 of file ``name`` of the entry ``done`` (None when there is no such entry)."""
    entry = read_entry(done)
    record = (entry or {}).get("files", {}).get(name)
    return record.get("sha256") if isinstance(record, dict) else None


def clear_entry(folder: str | os.PathLike[str], reason: str, keep: tuple[str, ...] = (".lock",)) -> None:
    """Delete everything in a cache entry's ``folder`` but ``keep`` (its lock), saying once why it is rebuilt."""
    folder = Path(folder)
    print(f"tauml: rebuilding {folder}: {reason}", flush=True)
    for item in folder.iterdir() if folder.is_dir() else ():
        if item.name in keep:
            continue
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item)
        else:
            item.unlink(missing_ok=True)


@contextlib.contextmanager
def building(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Lock a cache entry's ``folder`` (created if needed) while it is read or built; if the block fails and
    the folder holds nothing but its lock, remove it, so that a failed run never leaves empty cache folders."""
    folder = Path(folder)
    existed = folder.exists()
    try:
        with locked(folder):
            yield folder
    except BaseException:
        if not existed:
            with contextlib.suppress(OSError):
                if {p.name for p in folder.iterdir()} <= {".lock"}:
                    shutil.rmtree(folder)
        raise


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

