"""Small helpers shared across tauml."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import gc
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar


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


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (macOS, musl, Windows)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def release_memory() -> None:
    """Give memory that Python and torch have freed back to the operating system: a garbage collection, then
    glibc's ``malloc_trim(0)``.

    glibc keeps freed heap pages for reuse, so a long-lived process (a notebook kernel) that trained a tokenizer and
    a backbone keeps their high-water mark although the objects are gone: measured, 1.18 GB of RSS after a demo
    tokenizer and backbone, 0.77 GB after ``malloc_trim``.  In a 2 GB Binder session that difference decides whether
    the next training fits.  Called after every training (:func:`releases_memory`).  Nothing happens where the C
    library has no ``malloc_trim``."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


Function = TypeVar("Function", bound=Callable[..., Any])


def releases_memory(function: Function) -> Function:
    """Decorate a function that trains or generates: :func:`release_memory` runs when it returns (or raises), once
    its local arrays, models and optimiser states are gone; only what it returns stays."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        finally:
            release_memory()

    return wrapper  # type: ignore[return-value]


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
    from tqdm.auto import tqdm  # (local: utils stays import-light)

    kwargs.setdefault("disable", os.environ.get("TAUML_PROGRESS", "1") == "0")
    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)


def die_with_parent() -> None:
    """Make this (worker) process end when its parent does, even when the parent is killed with SIGKILL.

    Called in the initializer of every worker pool (data generation, fine-tunings): a killed ``tauml generate``
    or a restarted notebook kernel must not leave ~0.5 GB workers running for ever.  On Linux the kernel
    sends SIGTERM (``prctl(PR_SET_PDEATHSIG)``; it fires when the parent *thread* that started the worker
    ends, and tauml starts its pools from the calling thread, which outlives them); elsewhere a daemon thread
    polls the parent's pid every second (``TAUML_PARENT_WATCH=poll`` uses the thread on Linux too, for tests).
    """

    started_by = multiprocessing.parent_process()  # the pool's process, even if it died before this ran
    parent = started_by.pid if started_by is not None and started_by.pid else os.getppid()
    armed = False
    if sys.platform.startswith("linux") and os.environ.get("TAUML_PARENT_WATCH") != "poll":
        try:
            import ctypes  # (local: Linux only)

            libc = ctypes.CDLL(None, use_errno=True)
            pr_set_pdeathsig = 1
            armed = libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
    if armed:
        return

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="tauml-parent-watch", daemon=True).start()


#: What to do about each kind of expected failure, by exception class name (the classes live in higher layers:
#: ConfigError in tauml.config, DataError in tauml.data.schema, CheckpointError in tauml.models, CacheError here).
ERROR_HINTS: dict[str, str] = {
    "ConfigError": "change the setting and run again",
    "DataError": "fix or regenerate the input file (tauml generate, tauml fetch; see docs/data.md)",
    "CheckpointError": "delete the file named above and run again to rebuild it",
    "CacheError": "delete the file or folder named above and run again",
    "FileNotFoundError": "check the path",
    "FileExistsError": "choose another path",
    "NotADirectoryError": "give a folder",
    "IsADirectoryError": "give a file, not a folder",
    "PermissionError": "choose a path you may write to, or fix its permissions",
    "MissingDependencyError": "install what the message names, or run without the option that needs it",
}


class MissingDependencyError(ImportError):
    """An optional package a chosen option needs is not installed; the message names the package and the extra."""


def is_expected_error(err: BaseException) -> bool:
    """Whether ``err`` is a failure tauml expects and explains (bad input, configuration or cache), as opposed
    to a bug."""
    return any(cls.__name__ in ERROR_HINTS for cls in type(err).__mro__)


def error_sentence(err: BaseException) -> str:
    """``<what> — <what to do>``: the one sentence the command line and the widgets show for an expected
    failure.  Messages that already say what to do (with " — ") are kept; others get their kind's hint."""
    text = str(err).strip()
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        text = f"{err.filename}: {err.strerror}"
    if " — " in text:
        return text
    hint = next((ERROR_HINTS[cls.__name__] for cls in type(err).__mro__ if cls.__name__ in ERROR_HINTS),
                "see the message above")
    return f"{text} — {hint}"


#: The dask scheduler that builds shards and generates events when no ``scheduler`` is given (see
#: :func:`dask_client`); unset: in this process (shards) or a local process pool (generation).
ENV_SCHEDULER = "TAUML_DASK_SCHEDULER"


def dask_scheduler(scheduler: str | None) -> str | None:
    """``scheduler`` if given, else ``$TAUML_DASK_SCHEDULER``, else None (no dask); a local form that
    :func:`dask_client` cannot read is refused here, before any work starts."""
    chosen = scheduler if scheduler is not None else os.environ.get(ENV_SCHEDULER) or None
    if chosen is not None:
        _local_workers(chosen)
    return chosen


def _local_workers(scheduler: str) -> tuple[int, bool] | None:
    """``(workers, processes)`` of a ``"local"``, ``"local:N"`` or ``"local:N:threads"`` scheduler; None for an
    address.  Anything else that starts with ``local`` is a ValueError saying what is accepted."""
    if scheduler != "local" and not scheduler.startswith("local:"):
        return None
    parts = scheduler.split(":")
    usage = ("use 'local' (one worker process per core), 'local:N' (N worker processes), 'local:N:threads' "
             "(N threads in this process) or a scheduler address such as 'tcp://host:8786'")
    if len(parts) == 1:
        return len(usable_cores()), True
    if len(parts) > 3 or not parts[1].isdigit() or int(parts[1]) < 1 or (len(parts) == 3 and parts[2] != "threads"):
        source = f" (from ${ENV_SCHEDULER})" if os.environ.get(ENV_SCHEDULER) == scheduler else ""
        raise ValueError(f"dask scheduler {scheduler!r}{source} is not understood: {usage}")
    return int(parts[1]), len(parts) == 2


@contextlib.contextmanager
def dask_client(scheduler: str) -> Iterator[Any]:
    """A ``dask.distributed.Client`` for ``scheduler``, closed (with its cluster) on leaving:

    * ``"local"``: a ``LocalCluster`` with one single-threaded worker process per usable core,
    * ``"local:N"``: N worker processes (``"local:N:threads"``: N threads in this process),
    * an address such as ``"tcp://host:8786"``: that scheduler, e.g. an HTCondor or Slurm dask deployment (its
      workers must see the input files and tauml's cache folder).
    """
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as err:
        raise MissingDependencyError(f"scheduler={scheduler!r} needs dask.distributed: pip install 'tauml[scale]' (or "
                                     "'dask[distributed]'), or run without a scheduler") from err
    cluster = None
    local = _local_workers(scheduler)
    if local is not None:
        workers, processes = local
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=None, processes=processes)
        client = Client(cluster)
    else:
        client = Client(scheduler)
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
