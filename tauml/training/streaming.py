"""Training batches streamed from token shards (:mod:`tauml.data.shards`) through ``torch.utils.data``.

Memory stays flat whatever the number of jets: the shards are memory-mapped, an epoch's order is built one
*window* of shards at a time, and a batch is padded only when it is formed, to its longest sequence.

* :func:`split_parts` divides every shard into a training and a validation part (a fixed fraction of its jets,
  drawn from the seed and the shard's content digest, so the split does not depend on the order of the files).
* :class:`EpochPlan` is an epoch's order, a function of (seed, epoch) only: the parts are shuffled, grouped into
  windows of about ``window_jets`` jets, and the jets of each window are shuffled together.  Global batch ``b``
  is positions ``b * batch_size ...`` of that order, and rank ``r`` of ``w`` data-parallel ranks takes every
  ``w``-th jet of it from ``r`` on (as :func:`tauml.training.distributed.shard` does for in-memory batches), so
  the ranks together see every jet of the epoch exactly once.
* :class:`ShardBatches` is the map-style dataset of one rank's batches of an epoch; :func:`loader` wraps it in a
  ``DataLoader`` (worker processes, pinned memory on CUDA).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from tauml.data.shards import OFFSETS_FILE, ShardReader, TokenShard

#: Jets shuffled together in one window of an epoch (~16 MB of indices); the demo's pp jets fit in one window.
WINDOW_JETS = 1_000_000
#: Jets per batch when a whole set is evaluated.
EVAL_BATCH = 1024
#: Shard files are closed after this many batches (see _Opened).
RELEASE_BATCHES = 32


@dataclass(frozen=True)
class ShardPart:
    """The training or validation part of one shard: which rows, drawn from (seed, shard digest)."""

    folder: Path
    n_rows_total: int
    sha256: str
    part: str  #: "train", "val" or "all"
    val_fraction: float
    seed: int

    @property
    def n_val(self) -> int:
        return 0 if self.part == "all" else min(self.n_rows_total - 1, max(1, round(self.val_fraction * self.n_rows_total)))

    def __len__(self) -> int:
        if self.part == "all":
            return self.n_rows_total
        return self.n_val if self.part == "val" else self.n_rows_total - self.n_val

    def rows(self) -> np.ndarray:
        """The shard rows of this part, in file order."""
        if self.part == "all":
            return np.arange(self.n_rows_total)
        order = np.random.default_rng([self.seed, zlib.crc32(self.sha256.encode())]).permutation(self.n_rows_total)
        chosen = order[:self.n_val] if self.part == "val" else order[self.n_val:]
        return np.sort(chosen)

    def identity(self) -> list:
        """What names this part in a run key: the shard's content and the selection."""
        return [self.sha256, self.n_rows_total, self.part, self.val_fraction, self.seed]


def split_parts(shards: Sequence[TokenShard], val_fraction: float, seed: int) -> tuple[list[ShardPart], list[ShardPart]]:
    """(training parts, validation parts) of ``shards``: ``val_fraction`` of each shard's jets validate."""
    train, val = [], []
    for shard in shards:
        if len(shard) < 2:
            continue
        for part, out in (("train", train), ("val", val)):
            out.append(ShardPart(shard.folder, len(shard), shard.sha256, part, val_fraction, seed))
    return train, val


def whole_parts(shards: Sequence[TokenShard]) -> list[ShardPart]:
    """Every jet of every shard (e.g. a test set)."""
    return [ShardPart(s.folder, len(s), s.sha256, "all", 0.0, 0) for s in shards]


class _Opened:
    """Shard readers by folder (:class:`~tauml.data.shards.ShardReader`: positioned reads, so that resident memory
    does not grow with the jets read), opened once per process (a DataLoader worker opens its own) and closed after
    every ``RELEASE_BATCHES`` batches (:meth:`batch_done`), so that the open files stay few however many shards
    there are."""

    def __init__(self) -> None:
        self._open: dict[Path, ShardReader] = {}
        self._batches = 0

    def __call__(self, folder: Path) -> ShardReader:
        if folder not in self._open:
            self._open[folder] = ShardReader(folder)
        return self._open[folder]

    def batch_done(self) -> None:
        self._batches += 1
        if self._batches >= RELEASE_BATCHES:
            for reader in self._open.values():
                reader.close()
            self._open.clear()
            self._batches = 0


def gather(parts: Sequence[ShardPart], part_ids: np.ndarray, rows: np.ndarray, opened: _Opened
           ) -> tuple[np.ndarray, np.ndarray]:
    """Tokens (or features) and mask of the jets ``(part_ids[i], rows[i])`` (shard rows), padded to the longest, in
    this order."""
    pieces = {}
    for pid in np.unique(part_ids):
        where = np.flatnonzero(part_ids == pid)
        pieces[int(pid)] = (where, *opened(parts[int(pid)].folder).batch(rows[where]))
    width = max((t.shape[1] for _, t, _ in pieces.values()), default=0)
    first = next(iter(pieces.values()))[1] if pieces else np.zeros((0, 0), np.int64)
    values = np.zeros((len(rows), width, *first.shape[2:]), first.dtype)
    mask = np.zeros((len(rows), width), bool)
    for where, t, m in pieces.values():
        values[where, :t.shape[1]], mask[where, :m.shape[1]] = t, m
    return values, mask


class EpochPlan:
    """The order of one epoch over ``parts`` (see the module's docstring), cut into global batches."""

    def __init__(self, parts: Sequence[ShardPart], batch_size: int, seed: int, epoch: int,
                 window_jets: int = WINDOW_JETS, bucket_batches: int = 0, drop_last: bool = False) -> None:
        self.parts, self.batch_size, self.seed, self.epoch = list(parts), batch_size, seed, epoch
        self.bucket_batches, self.drop_last = bucket_batches, drop_last
        sizes = np.array([len(p) for p in self.parts], np.int64)
        order = np.random.default_rng([seed, epoch]).permutation(len(self.parts))
        self.windows: list[np.ndarray] = []  # part indices of each window, in visiting order
        current, jets = [], 0
        for i in order:
            current.append(int(i))
            jets += int(sizes[i])
            if jets >= window_jets:
                self.windows.append(np.array(current))
                current, jets = [], 0
        if current:
            self.windows.append(np.array(current))
        self.window_starts = np.concatenate([[0], np.cumsum([sizes[w].sum() for w in self.windows])]).astype(np.int64)
        self.n_jets = int(self.window_starts[-1])
        self._cached: tuple[int, np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        if self.drop_last and self.n_jets >= self.batch_size:
            return self.n_jets // self.batch_size  # the last partial batch is left out
        return -(-self.n_jets // self.batch_size)

    def _window(self, w: int) -> tuple[np.ndarray, np.ndarray]:
        """(part index, shard row) of every position of window ``w``, shuffled (and bucketed, when asked)."""
        if self._cached is None or self._cached[0] != w:
            part_ids = np.concatenate([np.full(len(self.parts[i]), i, np.int32) for i in self.windows[w]])
            rows = np.concatenate([self.parts[i].rows() for i in self.windows[w]])
            shuffle = np.random.default_rng([self.seed, self.epoch, w + 1]).permutation(len(rows))
            if self.bucket_batches:
                shuffle = shuffle[self._bucketed(w, part_ids[shuffle], rows[shuffle])]
            self._cached = (w, part_ids[shuffle], rows[shuffle])
        return self._cached[1], self._cached[2]

    def _bucketed(self, w: int, part_ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Positions of a shuffled window reordered so that batches hold jets of similar length (as
        :func:`tauml.training.common.bucketed_batches` in memory): groups of ``bucket_batches`` batches sorted by
        length and cut into batches, whose order in the window is then shuffled; a partial batch stays last."""
        lengths = np.empty(len(rows), np.int64)
        for pid in np.unique(part_ids):
            where = np.flatnonzero(part_ids == pid)
            offsets = np.load(self.parts[int(pid)].folder / OFFSETS_FILE, mmap_mode="r", allow_pickle=False)
            lengths[where] = offsets[rows[where] + 1] - offsets[rows[where]]
        group, size = self.bucket_batches * self.batch_size, self.batch_size
        full = len(rows) - len(rows) % size
        blocks = []
        for start in range(0, full, group):
            chunk = np.arange(start, min(start + group, full))
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
            blocks.extend(chunk[i:i + size] for i in range(0, len(chunk), size))
        order = np.random.default_rng([self.seed, self.epoch, w + 1, 1]).permutation(len(blocks))
        return np.concatenate([*(blocks[i] for i in order), np.arange(full, len(rows))]).astype(np.int64)

    def batch(self, b: int, rank: int = 0, world_size: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(part index, shard row) of rank ``rank``'s jets of global batch ``b``."""
        if not 0 <= b < len(self):
            raise IndexError(f"batch {b} of an epoch of {len(self)} batches")
        start, stop = b * self.batch_size, min((b + 1) * self.batch_size, self.n_jets)
        ids, rows = [], []
        w = int(np.searchsorted(self.window_starts, start, side="right")) - 1
        while start < stop:
            window_ids, window_rows = self._window(w)
            lo, hi = start - self.window_starts[w], min(stop, self.window_starts[w + 1]) - self.window_starts[w]
            ids.append(window_ids[lo:hi])
            rows.append(window_rows[lo:hi])
            start, w = int(self.window_starts[w] + hi), w + 1
        return np.concatenate(ids)[rank::world_size], np.concatenate(rows)[rank::world_size]


@dataclass
class TokenBatch:
    """One padded batch: tokens (n, L) int64 and mask (n, L) bool; ``len`` is the number of jets.  From feature
    shards ``tokens`` holds the features (n, L, n_features) float32."""

    tokens: torch.Tensor
    mask: torch.Tensor

    def __len__(self) -> int:
        return len(self.tokens)

    def pin_memory(self) -> TokenBatch:
        return TokenBatch(self.tokens.pin_memory(), self.mask.pin_memory())

    def to(self, device: torch.device) -> TokenBatch:
        non_blocking = device.type == "cuda"
        return TokenBatch(self.tokens.to(device, non_blocking=non_blocking),
                          self.mask.to(device, non_blocking=non_blocking))


class ShardBatches(Dataset):
    """Rank ``rank``'s batches of one epoch (map-style: item ``b`` is its slice of global batch ``b``)."""

    def __init__(self, plan: EpochPlan, rank: int = 0, world_size: int = 1) -> None:
        self.plan, self.rank, self.world_size = plan, rank, world_size
        self._opened = _Opened()

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, b: int) -> TokenBatch:
        ids, rows = self.plan.batch(b, self.rank, self.world_size)
        tokens, mask = gather(self.plan.parts, ids, rows, self._opened)
        self._opened.batch_done()
        return TokenBatch(torch.from_numpy(tokens), torch.from_numpy(mask))

    def __getstate__(self) -> dict:  # a worker started by spawn opens its own memory maps
        return {**self.__dict__, "_opened": _Opened()}


def loader(plan: EpochPlan, rank: int = 0, world_size: int = 1, workers: int = 0,
           pin_memory: bool = False) -> DataLoader:
    """The DataLoader of one rank's batches of ``plan``, in order (``workers`` processes prepare them)."""
    return DataLoader(ShardBatches(plan, rank, world_size), batch_size=None, shuffle=False, num_workers=workers,
                      pin_memory=pin_memory, prefetch_factor=4 if workers else None)


def iter_part_batches(parts: Sequence[ShardPart], batch_size: int) -> Iterator[TokenBatch]:
    """Every jet of ``parts`` once, in file order, ``batch_size`` at a time (for evaluation)."""
    opened = _Opened()
    for part in parts:
        rows = part.rows()
        for start in range(0, len(rows), batch_size):
            tokens, mask = opened(part.folder).batch(rows[start:start + batch_size])
            opened.batch_done()
            yield TokenBatch(torch.from_numpy(tokens), torch.from_numpy(mask))


def n_jets(parts: Sequence[ShardPart]) -> int:
    return sum(len(p) for p in parts)
