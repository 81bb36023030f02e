"""Shards: the token sequences (or the constituent features) of many jets on disk, without padding, memory-mapped.

A **token shard** is a folder (one per input file, in tauml's cache) holding

* ``tokens.npy``: every jet's sequence ``[START, c1+3, ..., cn+3, STOP]`` one after another (uint16 when the
  vocabulary fits, else int32), no padding stored,
* ``offsets.npy``: int64 ``(n_jets + 1,)``, jet ``i`` is ``tokens[offsets[i]:offsets[i + 1]]``,
* ``done.json``: the verified cache entry (:func:`tauml.cache.write_entry`: sizes, modification times and
  SHA-256 of both files, what the tokens were built from, the number of jets and slots).

A **feature shard** is the same with ``features.npy`` instead of ``tokens.npy``: the float32 constituent features
``(n_constituents, 10)`` of every jet one after another (what the tokenizer trains on, streamed:
:func:`tauml.training.tokenizer.train_tokenizer_streaming`).

Plain ``.npy`` (read without ``allow_pickle``), written atomically; :func:`open_shard` verifies the entry and the
structure before a shard is believed, and names the folder to delete otherwise.  A batch is padded only when it is
formed (:meth:`TokenShard.batch`), to its longest sequence.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tauml.cache import ENTRY_FILE, CacheError, atomic_path, entry_problem, read_entry, write_entry

#: Bump when what a shard holds changes for the same inputs.
SHARD_FORMAT = 1
TOKENS_FILE = "tokens.npy"
FEATURES_FILE = "features.npy"
OFFSETS_FILE = "offsets.npy"
#: The token ids of the one convention (docs/conventions.md), repeated here so that the data layer does not
#: import the models; tests assert they equal tauml.models.vqvae's.
PAD, START, STOP = 0, 1, 2


class ShardError(CacheError):
    """A token shard is missing, truncated or inconsistent; the message names the folder to delete."""


def write_shard(folder: str | Path, sequences: Iterable[tuple[np.ndarray, np.ndarray]], vocab_size: int,
                slots: int, built_from: dict[str, Any] | None = None, **info: Any) -> dict[str, Any]:
    """Write a token shard into ``folder`` from chunks ``(tokens (n, L) int, mask (n, L) bool)`` (padded, as
    :meth:`~tauml.models.vqvae.Tokenizer.tokenize` returns them); the padding is dropped.  ``slots`` is the padded
    width of the sequences (max constituents + 2).  The entry is written last: a shard without it is unfinished."""
    dtype = np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32
    return _write(folder, TOKENS_FILE, dtype, sequences, slots, built_from, vocab_size=int(vocab_size), **info)


def write_feature_shard(folder: str | Path, chunks: Iterable[tuple[np.ndarray, np.ndarray]], slots: int,
                        built_from: dict[str, Any] | None = None, **info: Any) -> dict[str, Any]:
    """Write a feature shard into ``folder`` from chunks ``(features (n, P, F), mask (n, P) bool)`` (the padded
    layout of :class:`~tauml.data.features.JetArrays`), stored as float32 without the padding.  ``slots`` is ``P``
    (the most constituents a jet may have)."""
    return _write(folder, FEATURES_FILE, np.float32, chunks, slots, built_from, **info)


def _write(folder: str | Path, values_file: str, dtype: Any, chunks: Iterable[tuple[np.ndarray, np.ndarray]],
           slots: int, built_from: dict[str, Any] | None, **info: Any) -> dict[str, Any]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    flat, lengths, trailing = [], [], None
    for values, mask in chunks:
        values, mask = np.asarray(values), np.asarray(mask, dtype=bool)
        flat.append(values[mask].astype(dtype))
        lengths.append(mask.sum(axis=1))
        trailing = values.shape[2:]
    values = np.concatenate(flat) if flat else np.zeros((0, *(trailing or ())), dtype)
    offsets = np.zeros(sum(len(n) for n in lengths) + 1, np.int64)
    np.cumsum(np.concatenate(lengths) if lengths else np.zeros(0, np.int64), out=offsets[1:])
    for name, array in ((values_file, values), (OFFSETS_FILE, offsets)):
        with atomic_path(folder / name) as tmp, open(tmp, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
    return write_entry(folder / ENTRY_FILE, [values_file, OFFSETS_FILE], built_from=built_from,
                       format=SHARD_FORMAT, n_jets=len(offsets) - 1, n_tokens=int(offsets[-1]), slots=int(slots),
                       **info)


@dataclass
class TokenShard:
    """One verified shard, memory-mapped: nothing is read into memory until rows are asked for (a feature shard
    holds features in ``tokens``, ``(n_constituents, n_features)`` float32, and has ``vocab_size`` 0)."""

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
        """Tokens (int64) and boolean mask of ``rows``, padded with PAD to the longest of them (or ``width``); for a
        feature shard float32 features ``(n, width, n_features)``, padded with zeros."""
        rows = np.asarray(rows, dtype=np.int64)
        starts, ends = self.offsets[rows], self.offsets[rows + 1]
        lengths = np.asarray(ends - starts)
        width = int(lengths.max(initial=0)) if width is None else width
        mask = np.arange(width)[None, :] < lengths[:, None]
        trailing = self.tokens.shape[1:]  # () for tokens, (n_features,) for a feature shard
        values = np.zeros((len(rows), width, *trailing), np.int64 if not trailing else np.float32)  # PAD = 0
        if len(rows):
            take = np.repeat(starts - np.cumsum(np.concatenate([[0], lengths[:-1]])), lengths) + np.arange(
                int(lengths.sum()))
            values[mask] = self.tokens[take]
        return values, mask

    def padded(self) -> tuple[np.ndarray, np.ndarray]:
        """All sequences padded to ``slots`` (the layout of ``Tokenizer.tokenize``); for small shards only."""
        return self.batch(np.arange(len(self)), self.slots)


class _NpyFile:
    """A plain ``.npy`` file read by positioned reads (``os.pread``) of byte ranges: unlike a memory map, what is
    read does not stay mapped into this process (it stays in the operating system's file cache)."""

    def __init__(self, path: Path) -> None:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            shape, _, self.dtype = (np.lib.format.read_array_header_1_0(handle) if version == (1, 0)
                                    else np.lib.format.read_array_header_2_0(handle))
            self.header = handle.tell()
        self.row_shape = tuple(shape[1:])
        self.row_bytes = self.dtype.itemsize * int(np.prod(self.row_shape, dtype=np.int64))
        self.fd = os.open(path, os.O_RDONLY)

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` (a copy)."""
        data = os.pread(self.fd, (stop - start) * self.row_bytes, self.header + start * self.row_bytes)
        return np.frombuffer(data, self.dtype).reshape(-1, *self.row_shape)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        self.close()


class ShardReader:
    """Rows of one (verified) shard read by positioned reads: what :class:`TokenShard.batch` gives, while this
    process's resident memory does not grow with the rows read (a memory map's faults map whole neighbourhoods of
    pages into the process: for random jets of large feature shards, tens of KB a jet).  For streamed batches."""

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        self.values = _NpyFile(folder / (TOKENS_FILE if (folder / TOKENS_FILE).exists() else FEATURES_FILE))
        self.offsets = _NpyFile(folder / OFFSETS_FILE)

    def batch(self, rows: np.ndarray, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`TokenShard.batch`."""
        rows = np.asarray(rows, dtype=np.int64)
        bounds = [self.offsets.rows(int(r), int(r) + 2) for r in rows]
        lengths = np.array([int(b[1] - b[0]) for b in bounds], np.int64)
        width = int(lengths.max(initial=0)) if width is None else width
        mask = np.arange(width)[None, :] < lengths[:, None]
        values = np.zeros((len(rows), width, *self.values.row_shape),
                          np.float32 if self.values.row_shape else np.int64)  # PAD = 0
        for i, b in enumerate(bounds):
            values[i, :lengths[i]] = self.values.rows(int(b[0]), int(b[1]))
        return values, mask

    def close(self) -> None:
        self.values.close()
        self.offsets.close()


def shard_problem(folder: str | Path, built_from: dict[str, Any] | None = None) -> str | None:
    """Why the shard in ``folder`` cannot be used (None when it can): its entry (:func:`tauml.cache.entry_problem`)
    and its structure (offsets rising from 0 to the number of values; for tokens START and STOP where they belong)."""
    folder = Path(folder)
    problem = entry_problem(folder / ENTRY_FILE, built_from)
    if problem is not None:
        return problem
    entry = read_entry(folder / ENTRY_FILE) or {}
    values_file = _values_file(entry)
    if entry.get("format") != SHARD_FORMAT or values_file is None:
        return f"it is not a shard of format {SHARD_FORMAT}"
    try:
        values = np.load(folder / values_file, mmap_mode="r", allow_pickle=False)
        offsets = np.load(folder / OFFSETS_FILE, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        return f"its arrays are unreadable ({err})"
    tokens = values_file == TOKENS_FILE
    if offsets.ndim != 1 or len(offsets) != entry.get("n_jets", -2) + 1 or offsets[0] != 0 \
            or offsets[-1] != len(values) or values.ndim != (1 if tokens else 2):
        return f"its offsets do not match its {values_file}"
    if len(offsets) > 1:
        lengths = np.diff(offsets)
        shortest = 2 if tokens else 1  # a token sequence has START and STOP, a jet at least one constituent
        if lengths.min() < shortest or lengths.max() > entry["slots"]:
            return f"it holds jets of {lengths.min()}..{lengths.max()} values, outside {shortest}..{entry['slots']}"
        if tokens and (np.any(values[offsets[:-1]] != START) or np.any(values[offsets[1:] - 1] != STOP)):
            return "its sequences do not all run from START to STOP"
    return None


def _values_file(entry: dict[str, Any]) -> str | None:
    """``tokens.npy`` or ``features.npy``: which kind of shard an entry describes (None: neither)."""
    files = set(entry.get("files", {}))
    for name in (TOKENS_FILE, FEATURES_FILE):
        if files == {name, OFFSETS_FILE}:
            return name
    return None


def open_shard(folder: str | Path, built_from: dict[str, Any] | None = None) -> TokenShard:
    """The verified shard in ``folder``; :class:`ShardError` naming the folder to delete when it is damaged."""
    folder = Path(folder)
    problem = shard_problem(folder, built_from)
    if problem is not None:
        raise ShardError(f"the shard {folder} cannot be used: {problem}. Delete {folder} and it is built "
                         "again from its input file")
    entry = read_entry(folder / ENTRY_FILE) or {}
    values_file = _values_file(entry)
    return TokenShard(folder, np.load(folder / values_file, mmap_mode="r", allow_pickle=False),
                      np.load(folder / OFFSETS_FILE, mmap_mode="r", allow_pickle=False), int(entry["slots"]),
                      int(entry.get("vocab_size", 0)), entry["files"][values_file]["sha256"])
