"""tauml.utils: giving freed memory back to the operating system, and reading the dask scheduler option."""

from __future__ import annotations

import gc

import psutil
import pytest

from tauml.utils import _malloc_trim, release_memory, releases_memory

MB = 1024**2


@pytest.mark.skipif(_malloc_trim() is None, reason="the C library has no malloc_trim (not glibc)")
def test_release_memory_returns_freed_heap_pages():
    process = psutil.Process()
    gc.collect()
    before = process.memory_info().rss
    # 300,000 blocks of 1 kB (malloc, not Python's small-object allocator), then one block after them that stays,
    # so glibc cannot shrink the heap from its top: freeing the blocks alone keeps their pages
    blocks = [bytearray(1000) for _ in range(300_000)]
    keep = bytearray(1000)
    del blocks
    gc.collect()
    held = process.memory_info().rss
    release_memory()
    after = process.memory_info().rss
    assert held - before > 150 * MB, "the freed blocks should still be held before the release"
    assert held - after > 100 * MB, f"release_memory gave back only {(held - after) / MB:.0f} MB"
    assert len(keep) == 1000


def test_releases_memory_keeps_the_return_value_and_the_exception():
    calls = []

    @releases_memory
    def build(n: int) -> list[int]:
        """Docstring kept."""
        calls.append(n)
        return list(range(n))

    @releases_memory
    def fail() -> None:
        raise ValueError("the original error")

    assert build(3) == [0, 1, 2] and calls == [3]
    assert build.__doc__ == "Docstring kept." and build.__name__ == "build"
    with pytest.raises(ValueError, match="the original error"):
        fail()


def test_a_scheduler_that_cannot_be_read_is_refused_before_any_work(monkeypatch):
    from tauml.utils import ENV_SCHEDULER, dask_scheduler

    monkeypatch.delenv(ENV_SCHEDULER, raising=False)
    assert dask_scheduler(None) is None
    for good in ("local", "local:2", "local:1:threads", "tcp://10.0.0.1:8786"):
        assert dask_scheduler(good) == good
    for bad in ("local:abc", "local:0", "local:2:gpus", "local:1:threads:x", "local:"):
        with pytest.raises(ValueError, match="is not understood: use 'local'"):
            dask_scheduler(bad)
    monkeypatch.setenv(ENV_SCHEDULER, "local:two")
    with pytest.raises(ValueError, match=r"from \$TAUML_DASK_SCHEDULER"):
        dask_scheduler(None)
