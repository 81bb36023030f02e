"""Small helpers shared across tauml."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Silence what C++ libraries (Pythia's and FastJet's banners) write to file descriptor 1."""
    try:
        saved = os.dup(1)
    except OSError:  # no real stdout (some embedded interpreters)
        yield
        return
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)


def usable_cores() -> list[int]:
    """The CPU cores this process may run on (containers often allow fewer than os.cpu_count())."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return list(range(os.cpu_count() or 1))


def memory_limit_bytes() -> int:
    """The memory this process may use: the container's cgroup limit (v2, then v1) when there is one (Binder and
    CI containers), else the machine's physical memory."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = open(path).read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:
            return int(text)
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2**62


#: Memory of one training worker process (torch, the data and the tokenizer: ~0.8 GB measured) and what the
#: parent keeps; parallel workers are used only when they fit.
WORKER_MEMORY = 1.0e9
PARENT_MEMORY = 1.5e9


def parallel_workers(jobs: int, requested: int | None = None, worker_memory: float = WORKER_MEMORY,
                     parent_memory: float = PARENT_MEMORY) -> int:
    """How many worker processes to run ``jobs`` jobs with: ``requested``, else ``$TAUML_WORKERS``, else the
    usable cores, but never more than the memory allows (a 2 GB Binder session trains in one process)."""
    if requested is None and os.environ.get("TAUML_WORKERS"):
        requested = int(os.environ["TAUML_WORKERS"])
    workers = requested or len(usable_cores())
    fits = int((memory_limit_bytes() - parent_memory) // worker_memory)
    return max(1, min(workers, jobs, fits))


def progress(iterable: Any = None, **kwargs: Any) -> Any:
    """A tqdm progress bar that renders in notebooks and terminals alike (``TAUML_PROGRESS=0`` hides it)."""
    from tqdm.auto import tqdm

    kwargs.setdefault("disable", os.environ.get("TAUML_PROGRESS", "1") == "0")
    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
