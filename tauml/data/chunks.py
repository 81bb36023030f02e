"""Jets read and turned into features one chunk at a time, so that memory does not grow with the file.

:func:`iter_jet_chunks` reads a JetClass file (ROOT through ``uproot.iterate``, JetClass-II parquet one row group
batch at a time) or a Fu(tau)ure parquet file (:func:`tauml.data.readers.iter_fuure`) in chunks of about
``chunk_jets`` jets and yields the :class:`~tauml.data.features.JetArrays` of each chunk: float32 features of
``max_constituents`` slots for those jets only.  The features are exactly those of
:func:`~tauml.data.features.jet_arrays` on the whole file (each jet's features depend on that jet alone).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq

from tauml.config import FeatureConfig
from tauml.data.features import JetArrays, TruncationWarning, jet_arrays
from tauml.data.readers import (
    _existing_file,
    _normalise_jetclass,
    _parquet_file,
    _select_branches,
    iter_fuure,
)
from tauml.data.schema import JETCLASS_TREE, DataError, validate_jetclass

#: Jets per chunk by default: ~1 MB of float32 features at 128 slots per thousand jets.
CHUNK_JETS = 4096


def _root_chunks(path: Path, chunk_jets: int) -> Iterator:
    import uproot  # (local: start-up speed)

    try:
        with uproot.open(path) as file:
            if JETCLASS_TREE not in file:
                raise DataError(f"{path} has no TTree '{JETCLASS_TREE}' (it holds "
                                f"{', '.join(file.keys()) or 'nothing'}); is it a JetClass file?")
            tree = file[JETCLASS_TREE]
            names = list(tree.keys(recursive=False))
            counters = {tree[b].count_branch.name for b in names
                        if getattr(tree[b], "count_branch", None) is not None}
            selected = _select_branches([b for b in names if b not in counters], None, path)
            yield from tree.iterate(selected, step_size=chunk_jets, library="ak")
    except DataError:
        raise
    except Exception as error:  # uproot raises many types for damaged files
        raise DataError(f"JetClass file {path} is not a readable ROOT file ({type(error).__name__}: {error}); it "
                        "may be truncated by an interrupted download. Delete it and download it again.") from error


def _parquet_jetclass_chunks(path: Path, chunk_jets: int) -> Iterator:
    import awkward as ak

    path, parquet = _parquet_file(path, "JetClass")
    selected = _select_branches(list(parquet.schema_arrow.names), None, path)
    groups, rows = [], 0
    for i in range(parquet.metadata.num_row_groups):
        groups.append(i)
        rows += parquet.metadata.row_group(i).num_rows
        if rows >= chunk_jets or i == parquet.metadata.num_row_groups - 1:
            yield ak.from_arrow(pq.ParquetFile(path).read_row_groups(groups, columns=selected))[selected]
            groups, rows = [], 0


def iter_jet_chunks(path: str | Path, max_constituents: int, chunk_jets: int = CHUNK_JETS,
                    features: FeatureConfig | None = None, lifetime: bool = False) -> Iterator[JetArrays]:
    """The :class:`JetArrays` of successive chunks of about ``chunk_jets`` jets of one file, in file order.

    JetClass files (``.root``, or parquet with ``part_px``) and Fu(tau)ure parquet files are recognised.  Jets with
    more than ``max_constituents`` constituents keep their hardest ones; one :class:`TruncationWarning` per file
    says how many (not one per chunk).
    """
    if chunk_jets < 1:
        raise DataError(f"chunk_jets={chunk_jets} must be at least 1")
    path = _existing_file(path, "jet")
    if path.suffix == ".root":
        raw = (_normalise_jetclass(chunk, str(path)) for chunk in _root_chunks(path, chunk_jets))
    elif "part_px" in _parquet_file(path, "jet")[1].schema_arrow.names:
        raw = (_normalise_jetclass(chunk, str(path)) for chunk in _parquet_jetclass_chunks(path, chunk_jets))
    else:
        raw = iter_fuure(path, batch_row_groups=max(1, chunk_jets // 1024))
    truncated = largest = n_jets = 0
    for chunk in raw:
        if "part_px" in chunk.fields:
            validate_jetclass(chunk, str(path))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TruncationWarning)
            arrays = jet_arrays(chunk, config=features, max_constituents=max_constituents, source=str(path),
                                lifetime=lifetime)
        for w in caught:
            if isinstance(w.message, TruncationWarning):
                truncated, largest = truncated + w.message.n_truncated, max(largest, w.message.largest)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        n_jets += len(arrays)
        yield arrays
    if truncated:
        warnings.warn(TruncationWarning(
            f"{truncated} of {n_jets} jets in {path} have more than {max_constituents} constituents (up to "
            f"{largest}); the {max_constituents} of highest pT are kept", n_truncated=truncated, n_jets=n_jets,
            largest=largest), stacklevel=2)
