"""Readers for the real datasets: Fu(tau)ure per-jet parquet files and JetClass / JetClass-II jets.

* :func:`read_fuure` / :func:`iter_fuure` read the Fu(tau)ure merged files (``z_train.parquet`` ...), or files
  ``tauml generate`` wrote in the same schema, whole or one row group (1024 jets) at a time.  4-vectors come
  back as stored: ``{x, y, z, tau}`` (tau = mass) or ``{x, y, z, t}`` (t = energy); both are accepted by
  :func:`tauml.data.features.jet_arrays`.
* :func:`read_jetclass` reads one JetClass file: ROOT (TTree ``tree``, the JetClass release) or parquet (the
  JetClass-II distribution format) into the same record structure and dtypes; :func:`read_jetclass_dir` reads
  a folder of ``<Sample>_<NNN>.root`` files and adds the sample name from the file prefix.

Every failure raises :class:`~tauml.data.schema.DataError` naming the file, the problem and the fix.
Momenta and energies in GeV, impact parameters in mm.  See ``docs/data.md``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import awkward as ak
import numpy as np
import pyarrow
import pyarrow.parquet as pq

from tauml.data.schema import (
    JETCLASS_JET_BRANCHES,
    JETCLASS_LABELS,
    JETCLASS_PARTICLE_BRANCHES,
    JETCLASS_REQUIRED,
    JETCLASS_SAMPLE_LABELS,
    JETCLASS_TREE,
    DataError,
    require_numeric,
    validate_fuure,
    validate_jetclass,
)

PathLike = str | os.PathLike[str]

#: The 4-vector columns of a Fu(tau)ure file (each a record {x, y, z, tau} or {x, y, z, t}).
FUURE_P4_COLUMNS: tuple[str, ...] = ("reco_cand_p4s", "reco_jet_p4s", "gen_jet_p4s", "gen_jet_tau_p4s",
                                     "gen_jet_full_tau_p4s")

_MISSING_HINT = ("Create it with `tauml generate`, or download the real file with `tauml fetch <name>` "
                 "(names in data_manifest.yaml, see docs/data.md).")


# ---------------------------------------------------------------------------------------------------------
# Fu(tau)ure
# ---------------------------------------------------------------------------------------------------------


def _existing_file(path: PathLike, what: str) -> Path:
    path = Path(path).expanduser()
    if path.is_dir():
        raise DataError(f"{what} path {path} is a folder; give the file itself")
    if not path.exists():
        raise DataError(f"{what} file {path} does not exist. {_MISSING_HINT}")
    return path


def _parquet_file(path: PathLike, what: str) -> tuple[Path, pq.ParquetFile]:
    path = _existing_file(path, what)
    try:
        return path, pq.ParquetFile(path)
    except (pyarrow.ArrowException, OSError) as error:
        raise DataError(
            f"{what} file {path} is not a readable parquet file ({error}); it may be truncated by an interrupted "
            "download or not be parquet at all. Delete it and fetch or generate it again."
        ) from error


def fuure_num_row_groups(path: PathLike) -> int:
    """Number of row groups (1024 jets each in the released files) in a Fu(tau)ure parquet file."""
    return _parquet_file(path, "Fu(tau)ure")[1].metadata.num_row_groups


def _check_columns(path: Path, parquet: pq.ParquetFile, columns: Sequence[str] | None) -> list[str] | None:
    if columns is None:
        return None
    if isinstance(columns, str):
        columns = [columns]
    available = list(parquet.schema_arrow.names)
    unknown = [c for c in columns if c not in available]
    if unknown:
        raise DataError(
            f"{path} has no column(s) {', '.join(unknown)}; its columns are {', '.join(available)}"
        )
    return list(columns)


def _check_p4(array: ak.Array, source: str) -> None:
    for column in FUURE_P4_COLUMNS:
        if column not in array.fields:
            continue
        fields = set(array[column].fields)
        if not ({"x", "y", "z"} <= fields and fields & {"tau", "t"}):
            raise DataError(
                f"column {column} of {source} has fields {sorted(fields)}; a Fu(tau)ure 4-vector needs x, y, z "
                "and tau (mass) or t (energy)"
            )


def _validate(array: ak.Array, columns: list[str] | None, source: str) -> None:
    if columns is None:
        validate_fuure(array, source)
    _check_p4(array, source)


def _read_row_groups(path: Path, columns: list[str] | None, row_groups: Sequence[int]) -> ak.Array:
    try:
        return ak.from_parquet(path, columns=columns, row_groups=list(row_groups))
    except (pyarrow.ArrowException, OSError, ValueError) as error:
        raise DataError(
            f"could not read row groups {list(row_groups)[:5]}{'...' if len(row_groups) > 5 else ''} of {path} "
            f"({type(error).__name__}: {error}); the file is probably corrupt. Delete it and fetch or generate it "
            "again."
        ) from error


def read_fuure(
    path: PathLike,
    columns: Sequence[str] | None = None,
    row_groups: Sequence[int] | None = None,
    max_jets: int | None = None,
) -> ak.Array:
    """Read jets from a Fu(tau)ure parquet file (one row per jet).

    ``columns``: the columns to read (default: all; then the file must hold every column tauml needs,
    :data:`~tauml.data.schema.FUURE_REQUIRED`).  ``row_groups``: indices of the row groups to read (default:
    all).  ``max_jets``: stop after this many jets (reads only the row groups it needs).
    """
    path, parquet = _parquet_file(path, "Fu(tau)ure")
    columns = _check_columns(path, parquet, columns)
    n_groups = parquet.metadata.num_row_groups
    if row_groups is None:
        row_groups = list(range(n_groups))
    else:
        row_groups = [int(i) for i in row_groups]
        bad = [i for i in row_groups if not 0 <= i < n_groups]
        if bad:
            raise DataError(f"{path} has {n_groups} row groups (0..{n_groups - 1}); row_groups {bad} do not exist")
    if max_jets is not None:
        if max_jets < 0:
            raise DataError(f"max_jets={max_jets} must not be negative")
        sizes = [parquet.metadata.row_group(i).num_rows for i in row_groups]
        needed = int(np.searchsorted(np.cumsum(sizes), max_jets)) + 1 if sizes else 0
        row_groups = row_groups[:needed]
    if not row_groups:
        # an empty selection: read the schema only, from the first row group, and return no rows
        array = _read_row_groups(path, columns, [0])[:0] if n_groups else ak.from_parquet(path, columns=columns)
    else:
        array = _read_row_groups(path, columns, row_groups)
    if max_jets is not None:
        array = array[:max_jets]
    _validate(array, columns, str(path))
    return array


def iter_fuure(
    path: PathLike, columns: Sequence[str] | None = None, batch_row_groups: int = 1
) -> Iterator[ak.Array]:
    """Stream a Fu(tau)ure parquet file, ``batch_row_groups`` row groups (1024 jets each) at a time."""
    if batch_row_groups < 1:
        raise DataError(f"batch_row_groups={batch_row_groups} must be at least 1")
    path, parquet = _parquet_file(path, "Fu(tau)ure")
    columns = _check_columns(path, parquet, columns)
    n_groups = parquet.metadata.num_row_groups
    for start in range(0, n_groups, batch_row_groups):
        batch = _read_row_groups(path, columns, range(start, min(start + batch_row_groups, n_groups)))
        if start == 0:
            _validate(batch, columns, str(path))
        yield batch


# ---------------------------------------------------------------------------------------------------------
# JetClass
# ---------------------------------------------------------------------------------------------------------

#: Particle flags, cast to bool (JetClass v1 stores int32, JetClass-II bool).
JETCLASS_FLAG_BRANCHES: tuple[str, ...] = tuple(b for b in JETCLASS_PARTICLE_BRANCHES if b.startswith("part_is"))
#: Optional JetClass-II per-jet class index (188 classes); JetClass v1 has the one-hot ``label_*`` instead.
JETCLASS2_LABEL = "jet_label"
#: What ``read_jetclass(branches=None)`` reads: the particle and jet branches and whichever labels exist.
JETCLASS_DEFAULT_BRANCHES: tuple[str, ...] = (
    JETCLASS_PARTICLE_BRANCHES + JETCLASS_JET_BRANCHES + JETCLASS_LABELS + (JETCLASS2_LABEL,)
)
_JETCLASS_FILE = re.compile(r"^(?P<sample>[A-Za-z0-9]+)_(?P<number>\d+)\.(?P<ext>root|parquet)$")


def _jetclass_dtype(name: str) -> type | None:
    """The dtype every reader returns for a JetClass branch (None = leave as stored)."""
    if name in JETCLASS_FLAG_BRANCHES:
        return np.bool_
    if name in JETCLASS_LABELS or name in (JETCLASS2_LABEL, "jet_nparticles"):
        return np.int32
    if name in JETCLASS_PARTICLE_BRANCHES or name in JETCLASS_JET_BRANCHES:  # part_charge included
        return np.float32
    return None


def _normalise_jetclass(array: ak.Array, source: str = "") -> ak.Array:
    out = {}
    for name in array.fields:
        dtype = _jetclass_dtype(name)
        column = array[name]
        if dtype is not None:
            require_numeric(array, [name], source)
            column = ak.values_astype(column, dtype)
        out[name] = column
    return ak.zip(out, depth_limit=1) if out else array


def _select_branches(available: list[str], branches: Sequence[str] | None, path: Path) -> list[str]:
    if branches is None:
        selected = [b for b in JETCLASS_DEFAULT_BRANCHES if b in available]
        missing = [b for b in JETCLASS_REQUIRED if b not in available]
        if missing:
            raise DataError(
                f"JetClass file {path} lacks the branch(es) {', '.join(missing)} tauml needs; it has "
                f"{', '.join(available[:30])}{' ...' if len(available) > 30 else ''}. Is it a JetClass file?"
            )
        return selected
    if isinstance(branches, str):
        branches = [branches]
    unknown = [b for b in branches if b not in available]
    if unknown:
        raise DataError(
            f"JetClass file {path} has no branch(es) {', '.join(unknown)}; it has "
            f"{', '.join(available[:30])}{' ...' if len(available) > 30 else ''}"
        )
    return list(branches)


def _root_jetclass(path: Path, branches: Sequence[str] | None, max_jets: int | None) -> ak.Array:
    import uproot  # (local: start-up speed of the readers' import)

    try:
        with uproot.open(path) as file:
            if JETCLASS_TREE not in file:
                raise DataError(
                    f"{path} has no TTree '{JETCLASS_TREE}' (it holds {', '.join(file.keys()) or 'nothing'}); "
                    "is it a JetClass file?"
                )
            tree = file[JETCLASS_TREE]
            names = list(tree.keys(recursive=False))
            # uproot's counter branches (e.g. `npart` for `part_px[npart]` leaves) are not data: skip them
            counters = {tree[b].count_branch.name for b in names
                        if getattr(tree[b], "count_branch", None) is not None}
            available = [b for b in names if b not in counters]
            selected = _select_branches(available, branches, path)
            return tree.arrays(selected, entry_stop=max_jets, library="ak")
    except DataError:
        raise
    except Exception as error:  # uproot raises many types (OSError, ValueError, KeyError ...) for damaged files
        raise DataError(
            f"JetClass file {path} is not a readable ROOT file ({type(error).__name__}: {error}); it may be "
            "truncated by an interrupted download. Delete it and download it again."
        ) from error


def _parquet_jetclass(path: Path, branches: Sequence[str] | None, max_jets: int | None) -> ak.Array:
    path, parquet = _parquet_file(path, "JetClass")
    available = list(parquet.schema_arrow.names)
    selected = _select_branches(available, branches, path)
    n_groups = parquet.metadata.num_row_groups
    groups = list(range(n_groups))
    if max_jets is not None:
        sizes = [parquet.metadata.row_group(i).num_rows for i in groups]
        groups = groups[: int(np.searchsorted(np.cumsum(sizes), max_jets)) + 1]
    try:
        array = ak.from_parquet(path, columns=selected, row_groups=groups)
    except (pyarrow.ArrowException, OSError, ValueError) as error:
        raise DataError(
            f"could not read {path} ({type(error).__name__}: {error}); the file is probably corrupt. Delete it "
            "and download it again."
        ) from error
    array = array[selected]  # the requested order, as the ROOT reader
    return array if max_jets is None else array[:max_jets]


def read_jetclass(path: PathLike, branches: Sequence[str] | None = None, max_jets: int | None = None) -> ak.Array:
    """Read jets from one JetClass-schema file, ROOT (TTree ``tree``) or parquet (JetClass-II).

    ``branches``: branches to read; default :data:`JETCLASS_DEFAULT_BRANCHES` that the file has (the particle
    branches of :data:`~tauml.data.schema.JETCLASS_REQUIRED` must be there).  ``max_jets``: read at most this
    many jets.  Dtypes are the same whatever the format: ``part_is*`` flags bool, ``part_charge`` and the other
    particle and jet kinematics float32, ``label_*`` (JetClass v1 one-hot), ``jet_label`` (JetClass-II class
    index) and ``jet_nparticles`` int32; other branches as stored.
    """
    if max_jets is not None and max_jets < 0:
        raise DataError(f"max_jets={max_jets} must not be negative")
    path = _existing_file(path, "JetClass")
    if path.suffix == ".parquet":
        array = _parquet_jetclass(path, branches, max_jets)
    else:
        array = _root_jetclass(path, branches, max_jets)
    array = _normalise_jetclass(array, str(path))
    if branches is None:
        validate_jetclass(array, str(path))
    return array


def jetclass_files(directory: PathLike, samples: Sequence[str] | None = None) -> dict[str, list[Path]]:
    """The ``<Sample>_<NNN>.root`` (or ``.parquet``) files of a JetClass folder, by sample, in number order."""
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise DataError(
            f"JetClass folder {directory} does not exist. Download and unpack the archives with "
            "`tauml fetch JetClass_Pythia_val_5M.tar` (see docs/data.md), or generate jets with `tauml generate`."
        )
    if samples is not None:
        unknown = [s for s in samples if s not in JETCLASS_SAMPLE_LABELS]
        if unknown:
            raise DataError(f"unknown JetClass sample(s) {unknown}; choose from {', '.join(JETCLASS_SAMPLE_LABELS)}")
    found: dict[str, list[tuple[int, Path]]] = {}
    for file in directory.iterdir():
        match = _JETCLASS_FILE.match(file.name)
        if match and match["sample"] in JETCLASS_SAMPLE_LABELS:
            if samples is None or match["sample"] in samples:
                found.setdefault(match["sample"], []).append((int(match["number"]), file))
    if not found:
        wanted = ", ".join(samples) if samples else "any of " + ", ".join(JETCLASS_SAMPLE_LABELS)
        raise DataError(f"no JetClass files <Sample>_<NNN>.root for {wanted} in {directory}")
    order = list(JETCLASS_SAMPLE_LABELS)
    return {s: [f for _, f in sorted(found[s])] for s in sorted(found, key=order.index)}


def read_jetclass_dir(
    directory: PathLike,
    samples: Sequence[str] | None = None,
    max_jets_per_sample: int | None = None,
    branches: Sequence[str] | None = None,
) -> ak.Array:
    """Read the JetClass files ``<Sample>_<NNN>.root`` of a folder, adding a string field ``sample``.

    ``samples``: file prefixes to read (keys of :data:`~tauml.data.schema.JETCLASS_SAMPLE_LABELS`; default all
    present).  ``max_jets_per_sample``: stop reading a sample's files after this many jets.  Samples come in
    the order of ``JETCLASS_SAMPLE_LABELS``, files in number order.
    """
    parts = []
    for sample, files in jetclass_files(directory, samples).items():
        taken = 0
        for file in files:
            if max_jets_per_sample is not None and taken >= max_jets_per_sample:
                break
            left = None if max_jets_per_sample is None else max_jets_per_sample - taken
            jets = read_jetclass(file, branches=branches, max_jets=left)
            taken += len(jets)
            parts.append(ak.with_field(jets, np.full(len(jets), sample).astype(str), "sample"))
    return ak.concatenate(parts) if len(parts) > 1 else parts[0]
