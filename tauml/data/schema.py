"""The file schemas tauml reads and writes: the Fu(tau)ure per-jet parquet and the JetClass ROOT tree.

The generated data are written in these schemas so that the same readers serve the real downloads.
Column meanings are in ``docs/data.md``; the reference is ``ml-tau-en-reg`` (Fu(tau)ure) and the
JetClass release (Zenodo 10.5281/zenodo.6619768).
"""

from __future__ import annotations

from collections.abc import Iterable

import awkward as ak
import numpy as np


class DataError(ValueError):
    """Input data are missing, corrupt or not in the expected schema; the message says what to do."""


# ---------------------------------------------------------------------------------------------------------
# Fu(tau)ure: one row per jet, written by awkward to parquet in row groups of 1024
# ---------------------------------------------------------------------------------------------------------

#: Fields of a Fu(tau)ure 4-vector record.  ``tau`` is the mass (vector's Momentum4D naming); some
#: releases store ``t`` (the energy) instead, which the reader accepts too.
FUURE_P4_FIELDS: tuple[str, ...] = ("x", "y", "z", "tau")
FUURE_ROW_GROUP_SIZE = 1024

#: The columns of the released Fu(tau)ure merged files (``ml-tau-en-reg`` data_intro notebook).
FUURE_COLUMNS: tuple[str, ...] = (
    "reco_cand_p4s",
    "reco_cand_charge",
    "reco_cand_pdg",
    "reco_cand_dxy",
    "reco_cand_dz",
    "reco_cand_dxy_err",
    "reco_cand_dz_err",
    "reco_jet_p4s",
    "gen_jet_p4s",
    "gen_jet_tau_p4s",
    "gen_jet_tau_decaymode",
)
#: Columns tauml needs to build features and targets (a subset of the above).
FUURE_REQUIRED: tuple[str, ...] = (
    "reco_cand_p4s",
    "reco_cand_charge",
    "reco_cand_pdg",
    "reco_jet_p4s",
    "gen_jet_tau_p4s",
    "gen_jet_tau_decaymode",
)
#: Extra columns of the generated files: event bookkeeping for event-level analyses and more tau truth.
FUURE_EXTRA_COLUMNS: tuple[str, ...] = (
    "event_number",  # int64, unique within a sample and seed
    "reco_jet_index",  # int32, index of this jet among the event's reco jets (pT-descending)
    "gen_jet_tau_vis_energy",  # float32 GeV
    "gen_jet_tau_charge",  # int32
    "gen_jet_full_tau_p4s",  # {x,y,z,tau} of the tau itself (neutrinos included)
    "gen_jet_tau_decay_vertex_x",  # float32 mm
    "gen_jet_tau_decay_vertex_y",
    "gen_jet_tau_decay_vertex_z",
)
#: Particle-flow candidate types in ``reco_cand_pdg`` (absolute PDG codes), in feature order.
CANDIDATE_PDG_CODES: tuple[int, ...] = (11, 13, 22, 211, 130)

# ---------------------------------------------------------------------------------------------------------
# JetClass: TTree "tree", one entry per jet, files <Sample>_<NNN>.root with 100k jets each
# ---------------------------------------------------------------------------------------------------------

JETCLASS_TREE = "tree"
JETCLASS_PARTICLE_BRANCHES: tuple[str, ...] = (
    "part_px",
    "part_py",
    "part_pz",
    "part_energy",
    "part_deta",
    "part_dphi",
    "part_d0val",
    "part_d0err",
    "part_dzval",
    "part_dzerr",
    "part_charge",
    "part_isChargedHadron",
    "part_isNeutralHadron",
    "part_isPhoton",
    "part_isElectron",
    "part_isMuon",
)
JETCLASS_JET_BRANCHES: tuple[str, ...] = (
    "jet_pt",
    "jet_eta",
    "jet_phi",
    "jet_energy",
    "jet_nparticles",
    "jet_sdmass",
    "jet_tau1",
    "jet_tau2",
    "jet_tau3",
    "jet_tau4",
)
JETCLASS_LABELS: tuple[str, ...] = (
    "label_QCD",
    "label_Hbb",
    "label_Hcc",
    "label_Hgg",
    "label_H4q",
    "label_Hqql",
    "label_Zqq",
    "label_Wqq",
    "label_Tbqq",
    "label_Tbl",
)
#: JetClass file-name prefix -> label branch (the 10 JetClass classes).
JETCLASS_SAMPLE_LABELS: dict[str, str] = {
    "ZJetsToNuNu": "label_QCD",
    "HToBB": "label_Hbb",
    "HToCC": "label_Hcc",
    "HToGG": "label_Hgg",
    "HToWW4Q": "label_H4q",
    "HToWW2Q1L": "label_Hqql",
    "ZToQQ": "label_Zqq",
    "WToQQ": "label_Wqq",
    "TTBar": "label_Tbqq",
    "TTBarLep": "label_Tbl",
}
#: Branches tauml needs from a JetClass-schema file (labels are optional: JetClass-II has none).
JETCLASS_REQUIRED: tuple[str, ...] = (
    "part_px",
    "part_py",
    "part_pz",
    "part_energy",
    "part_charge",
    "part_isChargedHadron",
    "part_isNeutralHadron",
    "part_isPhoton",
    "part_isElectron",
    "part_isMuon",
)


def require_fields(array: ak.Array, fields: Iterable[str], what: str, source: str = "") -> None:
    """Raise :class:`DataError` naming every field of ``fields`` that ``array`` lacks."""
    missing = [f for f in fields if f not in array.fields]
    if missing:
        where = f" in {source}" if source else ""
        raise DataError(
            f"{what}{where} lacks the column(s) {', '.join(missing)}; found {', '.join(array.fields) or 'none'}. "
            f"Is this a {what} file? Regenerate it with `tauml generate` or fetch the original with `tauml fetch`."
        )


def column_kind(column: ak.Array) -> tuple[str, bool]:
    """The innermost type of a (jagged) column, ``"int64"``, ``"float32"``, ``"bool"``, ``"string"`` ..., and
    whether it may hold missing values (an option type)."""
    kind = column.type.content if hasattr(column.type, "content") else column.type
    optional = False
    while True:
        if getattr(kind, "parameters", {}).get("__array__") in ("string", "bytestring"):
            return "string", optional
        if type(kind).__name__ == "UnionType":  # rows of different types, e.g. numbers in some and strings in others
            kinds = sorted({_type_name(content) for content in kind.contents})
            return ("string" if "string" in kinds else "mixed " + "/".join(kinds)), optional
        if type(kind).__name__ in ("OptionType", "UnknownType"):
            optional = True
        if hasattr(kind, "content"):
            kind = kind.content
            continue
        return str(getattr(kind, "primitive", type(kind).__name__)), optional


def _type_name(kind) -> str:
    while True:
        if getattr(kind, "parameters", {}).get("__array__") in ("string", "bytestring"):
            return "string"
        if not hasattr(kind, "content"):
            return str(getattr(kind, "primitive", type(kind).__name__))
        kind = kind.content


def require_numeric(array: ak.Array, columns: Iterable[str], source: str = "", integer: Iterable[str] = ()) -> None:
    """Raise :class:`DataError` naming the file and the column when a column (or a field ``column.field``) is not
    numbers (strings, records), holds missing values, or, for the columns in ``integer``, is not integers."""
    integer = set(integer)
    where = f" in {source}" if source else ""
    for name in columns:
        column = array
        for part in name.split("."):
            column = column[part]
        kind, optional = column_kind(column)
        numeric = kind.startswith(("int", "uint", "float")) or kind == "bool"
        if not numeric:
            raise DataError(f"column {name}{where} holds {kind} values, not numbers — write it as "
                            f"{'integers' if name in integer else 'numbers'} (e.g. int32/float32)")
        if optional and ak.any(ak.is_none(column, axis=-1)):
            raise DataError(f"column {name}{where} has missing (null) values — fill or drop them before using the file")
        if name in integer and kind.startswith("float"):
            values = ak.to_numpy(ak.flatten(column, axis=None)) if column.ndim > 1 else ak.to_numpy(column)
            if not np.all(np.isfinite(values) & (values == np.round(values))):
                raise DataError(f"column {name}{where} holds non-integer {kind} values — write it as integers")


def validate_fuure(array: ak.Array, source: str = "") -> None:
    """Check that ``array`` holds Fu(tau)ure per-jet records tauml can use: the columns, the 4-vector fields and
    their types (numbers; PDG codes and decay modes integers)."""
    require_fields(array, FUURE_REQUIRED, "Fu(tau)ure", source)
    for column in ("reco_cand_p4s", "reco_jet_p4s", "gen_jet_tau_p4s"):
        fields = set(array[column].fields)
        if not ({"x", "y", "z"} <= fields and ({"tau"} & fields or {"t"} & fields)):
            raise DataError(
                f"column {column}{' of ' + source if source else ''} has fields {sorted(fields)}; a Fu(tau)ure "
                "4-vector needs x, y, z and tau (mass) or t (energy)"
            )
    p4_fields = [f"{column}.{f}" for column in ("reco_cand_p4s", "reco_jet_p4s", "gen_jet_tau_p4s")
                 for f in array[column].fields if f in ("x", "y", "z", "tau", "t")]
    require_numeric(array, ["reco_cand_pdg", "reco_cand_charge", "gen_jet_tau_decaymode", *p4_fields], source,
                    integer=("reco_cand_pdg", "gen_jet_tau_decaymode"))


def validate_jetclass(array: ak.Array, source: str = "") -> None:
    """Check that ``array`` holds JetClass-schema jets tauml can use (the branches, as numbers)."""
    require_fields(array, JETCLASS_REQUIRED, "JetClass", source)
    require_numeric(array, JETCLASS_REQUIRED, source)
