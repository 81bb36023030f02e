"""Token shards: the token sequences of many jets on disk, without padding, read memory-mapped.

A shard is a folder (one per input file, in tauml's cache) holding

* ``tokens.npy``: every jet's sequence ``[START, c1+3, ..., cn+3, STOP]`` one after another (uint16 when the
  vocabulary fits, else int32), no padding stored,
* ``offsets.npy``: int64 ``(n_jets + 1,)``, jet ``i`` is ``tokens[offsets[i]:offsets[i + 1]]``,
* ``done.json``: the verified cache entry (:func:`tauml.cache.write_entry`: sizes, modification times and
  SHA-256 of both files, what the tokens were built from, the number of jets and slots).

Plain ``.npy`` (read without ``allow_pickle``), written atomically; :func:`open_shard` verifies the entry and the
structure before a shard is believed, and names the folder to delete otherwise.  A batch is padded only when it is
formed (:meth:`TokenShard.batch`), to its longest sequence.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tauml.cache import ENTRY_FILE, CacheError, atomic_path, entry_problem, read_entry, write_entry

#: Bump when what a shard holds changes for the same inputs.
SHARD_FORMAT = 1
TOKENS_FILE = "tokens.npy"
OFFSETS_FILE = "offsets.npy"
#: The token ids of the one convention (docs/conventions.md), repeated here so that the data layer does not
#: import the models; tests assert they equal tauml.models.vqvae's.
PAD, START, STOP = 0, 1, 2


class ShardError(CacheError):
    """A token shard is missing, truncated or inconsistent; the message names the folder to delete."""


def write_shard(folder: str | Path, sequences: Iterable[tuple[np.ndarray, np.ndarray]], vocab_size: int,
                slots: int, built_from: dict[str, Any] | None = None, **info: Any) -> dict[str, Any]:
    """Write a shard into ``folder`` from chunks ``(tokens (n, L) int, mask (n, L) bool)`` (padded, as
    :meth:`~tauml.models.vqvae.Tokenizer.tokenize` returns them); the padding is dropped.  ``slots`` is the padded
    width of the sequences (max constituents + 2).  The entry is written last: a shard without it is unfinished."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dtype = np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32
    flat, lengths = [], []
    for tokens, mask in sequences:
        tokens, mask = np.asarray(tokens), np.asarray(mask, dtype=bool)
        flat.append(tokens[mask].astype(dtype))
        lengths.append(mask.sum(axis=1))
    values = np.concatenate(flat) if flat else np.zeros(0, dtype)
    offsets = np.zeros(sum(len(n) for n in lengths) + 1, np.int64)
    np.cumsum(np.concatenate(lengths) if lengths else np.zeros(0, np.int64), out=offsets[1:])
    for name, array in ((TOKENS_FILE, values), (OFFSETS_FILE, offsets)):
        with atomic_path(folder / name) as tmp, open(tmp, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
    return write_entry(folder / ENTRY_FILE, [TOKENS_FILE, OFFSETS_FILE], built_from=built_from,
                       format=SHARD_FORMAT, n_jets=len(offsets) - 1, n_tokens=int(offsets[-1]), slots=int(slots),
                       vocab_size=int(vocab_size), **info)


@dataclass
class TokenShard:
    """One verified shard, memory-mapped: nothing is read into memory until rows are asked for."""

    folder: Path
    tokens: np.ndarray  #: flat, memory-mapped
    offsets: np.ndarray  #: (n_jets + 1,), memory-mapped
    slots: int  #: the padded width of a sequence (max constituents + 2)
    vocab_size: int
    sha256: str  #: of tokens.npy, as the entry records it

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self, rows: np.ndarray | slice | None = None) -> np.ndarray:
        """Sequence lengths (real tokens, START and STOP included) of ``rows`` (default all)."""
        ends = self.offsets[1:] if rows is None else self.offsets[1:][rows]
        starts = self.offsets[:-1] if rows is None else self.offsets[:-1][rows]
        return np.asarray(ends - starts)

    def batch(self, rows: np.ndarray, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Tokens (int64) and boolean mask of ``rows``, padded with PAD to the longest of them (or ``width``)."""
        rows = np.asarray(rows, dtype=np.int64)
        starts, ends = self.offsets[rows], self.offsets[rows + 1]
        lengths = np.asarray(ends - starts)
        width = int(lengths.max(initial=0)) if width is None else width
        mask = np.arange(width)[None, :] < lengths[:, None]
        tokens = np.full((len(rows), width), PAD, np.int64)
        if len(rows):
            take = np.repeat(starts - np.cumsum(np.concatenate([[0], lengths[:-1]])), lengths) + np.arange(
                int(lengths.sum()))
            tokens[mask] = self.tokens[take]
        return tokens, mask

    def padded(self) -> tuple[np.ndarray, np.ndarray]:
        """All sequences padded to ``slots`` (the layout of ``Tokenizer.tokenize``); for small shards only."""
        return self.batch(np.arange(len(self)), self.slots)


def shard_problem(folder: str | Path, built_from: dict[str, Any] | None = None) -> str | None:
    """Why the shard in ``folder`` cannot be used (None when it can): its entry (:func:`tauml.cache.entry_problem`)
    and its structure (offsets rising from 0 to the number of tokens, START and STOP where they belong)."""
    folder = Path(folder)
    problem = entry_problem(folder / ENTRY_FILE, built_from)
    if problem is not None:
        return problem
    entry = read_entry(folder / ENTRY_FILE) or {}
    if entry.get("format") != SHARD_FORMAT or set(entry.get("files", {})) != {TOKENS_FILE, OFFSETS_FILE}:
        return f"it is not a token shard of format {SHARD_FORMAT}"
    try:
        tokens = np.load(folder / TOKENS_FILE, mmap_mode="r", allow_pickle=False)
        offsets = np.load(folder / OFFSETS_FILE, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        return f"its arrays are unreadable ({err})"
    if offsets.ndim != 1 or len(offsets) != entry.get("n_jets", -2) + 1 or offsets[0] != 0 \
            or offsets[-1] != len(tokens) or tokens.ndim != 1:
        return "its offsets do not match its tokens"
    if len(offsets) > 1:
        lengths = np.diff(offsets)
        if lengths.min() < 2 or lengths.max() > entry["slots"]:
            return f"it holds sequences of {lengths.min()}..{lengths.max()} tokens, outside 2..{entry['slots']}"
        if np.any(tokens[offsets[:-1]] != START) or np.any(tokens[offsets[1:] - 1] != STOP):
            return "its sequences do not all run from START to STOP"
    return None


def open_shard(folder: str | Path, built_from: dict[str, Any] | None = None) -> TokenShard:
    """The verified shard in ``folder``; :class:`ShardError` naming the folder to delete when it is damaged."""
    folder = Path(folder)
    problem = shard_problem(folder, built_from)
    if problem is not None:
        raise ShardError(f"the token shard {folder} cannot be used: {problem}. Delete {folder} and it is built "
                         "again from its input file")
    entry = read_entry(folder / ENTRY_FILE) or {}
    return TokenShard(folder, np.load(folder / TOKENS_FILE, mmap_mode="r", allow_pickle=False),
                      np.load(folder / OFFSETS_FILE, mmap_mode="r", allow_pickle=False), int(entry["slots"]),
                      int(entry["vocab_size"]), entry["files"][TOKENS_FILE]["sha256"])
