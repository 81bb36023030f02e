"""EDM4hep (key4hep, FCC-ee) events -> Fu(tau)ure-schema per-jet records, as the Fu(tau)ure ntupelizer builds them.

:func:`read_edm4hep_taus` reads reconstructed particles and the MC record of an EDM4hep ROOT file, clusters
jets (ee generalised kT, p = -1, R = 0.4) from the reconstructed particles and from the stable visible
generator particles, labels generator jets with the hadronic tau they contain and returns one row per
reconstructed jet matched to a generator jet, in the columns of :data:`~tauml.data.schema.FUURE_COLUMNS`
plus :data:`~tauml.data.schema.FUURE_EXTRA_COLUMNS` and ``reco_cand_index``.

Two podio layouts are read (``layout="auto"`` detects them from the branch names):

* ``"pre-edm4hep1"`` (older podio, EDM4hep < 1.0): relations are ``<Coll>#<n>`` branches numbered in
  declaration order (ReconstructedParticle: clusters #0, tracks #1, particles #2, particleIDs #3;
  MCParticle: parents #0, daughters #1), vector members ``<Coll>_<n>`` (Track: trackStates is ``_1``),
  collection ids in the ``metadata`` tree.  The particle type is the member ``type`` (0 in Delphes files).
* ``"edm4hep1"`` (EDM4hep >= 1.0): relations and vector members are ``_<Coll>_<name>`` branches, the type is
  ``PDG``, and a collection id is podio's 32-bit MurmurHash3 of the collection name.

The file is read with uproot, only the ~25 branches needed, ``chunk_events`` events at a time, rather than
through coffea's NanoEvents (``FCC.get_schema("pre-edm4hep1")`` / ``FCC.get_schema("latest")``): coffea's
EDM4hep-1 schema attaches a relation to every collection of the target type without looking at the
collection id (EFlowPhoton and EFlowNeutralHadron clusters look the same), the field names it generates
differ between the two layouts, and an eager read builds every collection of the
file, calorimeter and tracker hits included.  The tests check the candidates, track parameters and tau
decays decoded here against coffea's decoding of the same files.  All choices are in ``docs/data.md``.
Momenta and energies in GeV, lengths in mm.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import awkward as ak
import numpy as np

from tauml.data.jets import EE_JET_P, EE_JET_R, cluster, eta_phi, match
from tauml.data.schema import DataError, validate_fuure
from tauml.data.truth import (
    DM_LEPTONIC,
    DM_NONE,
    NEUTRINOS,
    decay_mode_from_products,
    last_copy_taus,
    tau_decay_products,
)

LAYOUTS: tuple[str, ...] = ("auto", "edm4hep1", "pre-edm4hep1")
#: Collection names tried, in order, when none is given (FCC Delphes, CLIC/CLD full simulation).
RECO_COLLECTIONS: tuple[str, ...] = ("ReconstructedParticles", "MergedRecoParticles", "PandoraPFOs",
                                     "TightSelectedPandoraPFOs")
MC_COLLECTIONS: tuple[str, ...] = ("Particle", "MCParticles", "MCParticle")
#: Relation numbers of the pre-1.0 layout (OneToMany relations in declaration order).
_PRE_RECO_RELATIONS = {"clusters": 0, "tracks": 1}
_PRE_MC_RELATIONS = {"parents": 0, "daughters": 1}
_PRE_TRACK_VECTOR_MEMBERS = {"trackStates": 1}  # subDetectorHitNumbers is _0
#: EDM4hep TrackState.location of the state at the interaction point.
TRACK_STATE_AT_IP = 1
#: Matching radii (Fu(tau)ure ntupelizer): visible tau -> gen jet, gen jet -> reco jet.
TAU_GEN_JET_DR = 0.4
GEN_RECO_JET_DR = 0.3
#: Internal decay-mode code of a tau whose decay chain could not be followed (its gen jet is dropped).
DM_UNRESOLVED = -2
#: Mass hypotheses (GeV) that identify electrons and muons among charged candidates typed 0 (Delphes files).
ELECTRON_MASS_MAX = 0.01
MUON_MASS = 0.1057
MUON_MASS_TOLERANCE = 0.005


# ---------------------------------------------------------------------------------------------------------
# Candidate types
# ---------------------------------------------------------------------------------------------------------


def candidate_pdg(
    pdg: np.ndarray | Sequence[int],
    charge: np.ndarray | Sequence[float],
    mass: np.ndarray | Sequence[float] | None = None,
    photon_cluster: np.ndarray | Sequence[bool] | None = None,
) -> np.ndarray:
    """Particle-flow candidate type in {11, 13, 22, 211, 130} (int32) from the stored type and charge.

    * |pdg| 11, 13, 22 keep their type; any other non-zero code becomes 211 if charged, 130 if neutral.
    * ``pdg == 0`` (Delphes-based files leave tracks and, before EDM4hep 1.0, every candidate untyped):
      a charged candidate is an electron if its ``mass`` hypothesis is below 0.01 GeV, a muon if it is within
      5 MeV of 0.1057 GeV, else a charged hadron (211; also when no mass is given); a neutral candidate is a
      photon where ``photon_cluster`` is True (its cluster is in a photon collection), else a neutral hadron.
    """
    pdg = np.abs(np.asarray(pdg, dtype=np.int64))
    charged = np.asarray(charge, dtype=np.float64) != 0
    out = np.where(charged, 211, 130)
    out = np.where(np.isin(pdg, (11, 13, 22)), pdg, out)
    untyped = pdg == 0
    if mass is not None:
        mass = np.asarray(mass, dtype=np.float64)
        out = np.where(untyped & charged & (mass < ELECTRON_MASS_MAX), 11, out)
        out = np.where(untyped & charged & (np.abs(mass - MUON_MASS) < MUON_MASS_TOLERANCE), 13, out)
    if photon_cluster is not None:
        out = np.where(untyped & ~charged & np.asarray(photon_cluster, dtype=bool), 22, out)
    return out.astype(np.int32)


# ---------------------------------------------------------------------------------------------------------
# Layout, collection ids and branch access
# ---------------------------------------------------------------------------------------------------------


def podio_collection_id(name: str) -> int:
    """podio's collection id of a collection called ``name`` (EDM4hep >= 1.0): MurmurHash3_x86_32, seed 0."""
    data = name.encode()
    c1, c2, mask = 0xCC9E2D51, 0x1B873593, 0xFFFFFFFF
    h = 0
    n_blocks = len(data) // 4
    for i in range(n_blocks + 1):
        block = data[4 * i: 4 * i + 4]
        if i == n_blocks and not block:
            break
        k = int.from_bytes(block, "little")
        k = (k * c1) & mask
        k = ((k << 15) | (k >> 17)) & mask
        k = (k * c2) & mask
        h ^= k
        if len(block) == 4:
            h = ((h << 13) | (h >> 19)) & mask
            h = (h * 5 + 0xE6546B64) & mask
    h ^= len(data)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & mask
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & mask
    h ^= h >> 16
    return h


def detect_layout(tree) -> str:
    """``"pre-edm4hep1"`` if the tree has ``<Coll>#<n>`` relation branches, ``"edm4hep1"`` if it has
    ``_<Coll>_<relation>`` branches; :class:`DataError` otherwise."""
    names = tree.keys(recursive=False)
    if any("#" in n for n in names):
        return "pre-edm4hep1"
    if any(n.startswith("_") for n in names):
        return "edm4hep1"
    raise DataError(
        f"cannot tell the podio layout of {tree.file.file_path}: no '<Coll>#<n>' (EDM4hep < 1.0) and no "
        "'_<Coll>_<relation>' (EDM4hep >= 1.0) relation branches. Is it an EDM4hep events tree?"
    )


@dataclass
class _Layout:
    """Branch names of one file (see the module docstring)."""

    name: str
    reco: str
    mc: str
    typenames: dict[str, str]
    ids: dict[int, str]

    def member(self, collection: str, member: str) -> str:
        return f"{collection}/{collection}.{member}"

    def relation(self, collection: str, relation: str, field: str) -> str:
        if self.name == "pre-edm4hep1":
            numbers = _PRE_RECO_RELATIONS if collection == self.reco else _PRE_MC_RELATIONS
            branch = f"{collection}#{numbers[relation]}"
        else:
            branch = f"_{collection}_{relation}"
        return f"{branch}/{branch}.{field}"

    def track_states(self, tracks: str, member: str) -> str:
        if self.name == "pre-edm4hep1":
            branch = f"{tracks}_{_PRE_TRACK_VECTOR_MEMBERS['trackStates']}"
        else:
            branch = f"_{tracks}_trackStates"
        return f"{branch}/{branch}.{member}"


def _collections_of_type(typenames: dict[str, str], datatype: str) -> list[str]:
    return [name for name, typename in typenames.items() if typename.replace(" ", "") in
            (f"vector<edm4hep::{datatype}>", f"std::vector<edm4hep::{datatype}>")]


def _pick(typenames: dict[str, str], given: str | None, candidates: Sequence[str], datatype: str, path: Path) -> str:
    if given is not None:
        if given not in typenames:
            raise DataError(f"{path} has no collection {given!r}; it has {', '.join(sorted(typenames))}")
        return given
    for name in candidates:
        if name in typenames:
            return name
    of_type = _collections_of_type(typenames, datatype)
    if len(of_type) == 1:
        return of_type[0]
    raise DataError(
        f"{path} has none of the collections {', '.join(candidates)}"
        + (f" and several {datatype} collections ({', '.join(of_type)})" if of_type else f" and no {datatype}")
        + f"; name the one to read (reco_collection= / mc_collection=). Collections: {', '.join(sorted(typenames))}"
    )


def _collection_ids(file, typenames: dict[str, str], layout: str) -> dict[int, str]:
    if layout == "edm4hep1":
        return {podio_collection_id(name): name for name in typenames}
    if "metadata" in file:  # pre-1.0: podio::CollectionIDTable in the `metadata` tree
        try:
            table = file["metadata"]["CollectionIDs"].array(library="ak")[0]
            return dict(zip(table["m_collectionIDs"].tolist(), table["m_names"].tolist()))
        except Exception:  # an unreadable table: fall back to collection types
            return {}
    return {}


def _open_layout(file, path: Path, layout: str, reco: str | None, mc: str | None) -> tuple[object, _Layout]:
    if "events" not in file:
        raise DataError(f"{path} has no 'events' tree (it holds {', '.join(file.keys())}); is it an EDM4hep file?")
    tree = file["events"]
    detected = detect_layout(tree)
    if layout == "auto":
        layout = detected
    elif layout != detected:
        raise DataError(f"{path} is in the {detected} layout, not {layout}; use layout='auto' or '{detected}'")
    typenames = {name: tree[name].typename for name in tree.keys(recursive=False)
                 if not name.startswith("_") and "#" not in name}
    reco = _pick(typenames, reco, RECO_COLLECTIONS, "ReconstructedParticleData", path)
    mc = _pick(typenames, mc, MC_COLLECTIONS, "MCParticleData", path)
    return tree, _Layout(layout, reco, mc, typenames, _collection_ids(file, typenames, layout))


class _Reader:
    """Reads branches of one events-tree chunk by full name, with a DataError naming missing ones."""

    def __init__(self, tree, path: Path, start: int, stop: int):
        self.tree, self.path, self.start, self.stop = tree, path, start, stop
        self.names = set(tree.keys(recursive=True))

    def has(self, name: str) -> bool:
        return name in self.names

    def __call__(self, *candidates: str) -> ak.Array:
        for name in candidates:
            if name in self.names:
                try:
                    return self.tree[name].array(entry_start=self.start, entry_stop=self.stop, library="ak")
                except Exception as error:  # uproot raises many types for damaged baskets
                    raise DataError(
                        f"could not read {name} of {self.path}, entries {self.start}..{self.stop} "
                        f"({type(error).__name__}: {error}); the file is probably corrupt"
                    ) from error
        raise DataError(f"{self.path} lacks the branch {' or '.join(candidates)} needed to read EDM4hep taus")


# ---------------------------------------------------------------------------------------------------------
# Relations (flattened numpy)
# ---------------------------------------------------------------------------------------------------------


def _offsets(array: ak.Array) -> np.ndarray:
    counts = ak.to_numpy(ak.num(array, axis=1)).astype(np.int64)
    return np.concatenate([[0], np.cumsum(counts)])


def _flat(array: ak.Array, dtype: type = np.float64) -> np.ndarray:
    return ak.to_numpy(ak.flatten(array, axis=1)).astype(dtype)


def _first_related(begin: ak.Array, end: ak.Array, target: ak.Array) -> tuple[np.ndarray, np.ndarray]:
    """For each element (flattened over events): position of its first related entry in the flattened
    relation branch ``target``, and whether it has one."""
    owner_event = np.repeat(np.arange(len(begin)), ak.to_numpy(ak.num(begin, axis=1)))
    start = _offsets(target)[owner_event]
    b, e = _flat(begin, np.int64), _flat(end, np.int64)
    return start + b, e > b


def _relation_ids(ids: np.ndarray, names: dict[int, str]) -> set[str]:
    return {names.get(int(i), f"<unknown id {int(i)}>") for i in np.unique(ids) if i >= 0}


# ---------------------------------------------------------------------------------------------------------
# Loading one chunk of events into flat arrays
# ---------------------------------------------------------------------------------------------------------


def _reco_candidates(read: _Reader, lay: _Layout) -> dict[str, ak.Array]:
    """Reconstructed particles: momentum, mass hypothesis, charge, type and track impact parameters."""
    reco = lay.reco
    px, py, pz = (read(lay.member(reco, f"momentum.{c}")) for c in "xyz")
    counts = ak.num(px, axis=1)
    mass = np.clip(_flat(read(lay.member(reco, "mass"))), 0.0, None)  # Delphes photons carry |m| < 0.02 GeV noise
    charge = _flat(read(lay.member(reco, "charge")))
    stored_type = _flat(read(lay.member(reco, "PDG"), lay.member(reco, "type")), np.int64)

    # neutral candidates typed 0: is the (first) cluster in a photon collection?
    photon = None
    if np.any(stored_type == 0):
        position, has = _first_related(read(lay.member(reco, "clusters_begin")),
                                       read(lay.member(reco, "clusters_end")),
                                       read(lay.relation(reco, "clusters", "index")))
        cluster_ids = _flat(read(lay.relation(reco, "clusters", "collectionID")), np.int64)
        if len(cluster_ids) and lay.ids:
            names = np.array([lay.ids.get(int(i), "") for i in cluster_ids])
            photon = np.zeros(len(charge), bool)
            photon[has] = np.char.find(names[position[has]].astype(str), "Photon") >= 0
    pdg = candidate_pdg(stored_type, charge, mass, photon)

    dxy, dz, dxy_err, dz_err = _impact_parameters(read, lay, ak.to_numpy(counts))
    energy = np.sqrt(_flat(px) ** 2 + _flat(py) ** 2 + _flat(pz) ** 2 + mass**2)
    columns = {"px": _flat(px), "py": _flat(py), "pz": _flat(pz), "E": energy, "mass": mass,
               "charge": np.rint(charge).astype(np.int32), "pdg": pdg,
               "dxy": dxy, "dz": dz, "dxy_err": dxy_err, "dz_err": dz_err}
    return {k: ak.unflatten(v, counts) for k, v in columns.items()}


def _impact_parameters(read: _Reader, lay: _Layout, counts: np.ndarray) -> tuple[np.ndarray, ...]:
    """D0, Z0 (mm) and their errors from the track state at the IP (else the first) of each candidate's first
    track; 0 with error 0 for candidates without a track."""
    n = int(counts.sum())
    zeros = tuple(np.zeros(n, np.float32) for _ in range(4))
    reco = lay.reco
    if not read.has(lay.relation(reco, "tracks", "index")):
        return zeros
    position, has = _first_related(read(lay.member(reco, "tracks_begin")), read(lay.member(reco, "tracks_end")),
                                   read(lay.relation(reco, "tracks", "index")))
    if not np.any(has):
        return zeros
    track_index = _flat(read(lay.relation(reco, "tracks", "index")), np.int64)
    track_ids = _flat(read(lay.relation(reco, "tracks", "collectionID")), np.int64)
    targets = _relation_ids(track_ids, lay.ids) if lay.ids else set()
    track_collections = _collections_of_type(lay.typenames, "TrackData")
    if len(targets) == 1 and next(iter(targets)) in lay.typenames:
        tracks = next(iter(targets))
    elif not targets and len(track_collections) == 1:
        tracks = track_collections[0]
    else:
        raise DataError(
            f"{read.path}: the tracks of {reco} point to {sorted(targets) or 'unnamed collections'}; expected one "
            f"track collection of {track_collections}"
        )
    # the candidate's track, as a position in the flattened track collection
    reco_event = np.repeat(np.arange(len(counts)), counts)
    states_begin = read(lay.member(tracks, "trackStates_begin"))
    track_offsets = _offsets(states_begin)
    track_flat = np.where(has, track_offsets[reco_event] + track_index[np.where(has, position, 0)], -1)

    # the state of each track: AtIP if it has one, else its first
    state_offsets = _offsets(read(lay.track_states(tracks, "D0")))
    track_event = np.repeat(np.arange(len(track_offsets) - 1), np.diff(track_offsets))
    first = state_offsets[track_event] + _flat(states_begin, np.int64)
    last = state_offsets[track_event] + _flat(read(lay.member(tracks, "trackStates_end")), np.int64)
    at_ip = _flat(read(lay.track_states(tracks, "location")), np.int64) == TRACK_STATE_AT_IP
    cumulative = np.concatenate([[0], np.cumsum(at_ip)])
    has_ip = cumulative[last] > cumulative[first]
    state = np.where(has_ip, np.searchsorted(cumulative, cumulative[first] + 1, side="left") - 1, first)
    track_has_state = last > first

    d0 = _flat(read(lay.track_states(tracks, "D0")))
    z0 = _flat(read(lay.track_states(tracks, "Z0")))
    cov = ak.to_numpy(ak.flatten(read(lay.track_states(tracks, "covMatrix[15]"),
                                      lay.track_states(tracks, "covMatrix.values[21]")), axis=1))
    # lower-triangular covariance of (d0, phi, omega, z0, tanLambda[, time]): (d0, d0) = 0, (z0, z0) = 9
    d0_err, z0_err = np.sqrt(np.clip(cov[:, 0], 0, None)), np.sqrt(np.clip(cov[:, 9], 0, None))

    valid = has & (track_flat >= 0)
    valid[valid] &= track_has_state[track_flat[valid]]
    chosen = state[track_flat[valid]]
    out = [np.zeros(n, np.float32) for _ in range(4)]
    for target, values in zip(out, (d0, z0, d0_err, z0_err)):
        target[valid] = values[chosen]
    return tuple(out)


def _mc_particles(read: _Reader, lay: _Layout) -> dict[str, object]:
    mc = lay.mc
    columns = {
        "pdg": read(lay.member(mc, "PDG")),
        "status": read(lay.member(mc, "generatorStatus")),
        "px": read(lay.member(mc, "momentum.x")),
        "py": read(lay.member(mc, "momentum.y")),
        "pz": read(lay.member(mc, "momentum.z")),
        "mass": read(lay.member(mc, "mass")),
        "charge": read(lay.member(mc, "charge")),
        "vx": read(lay.member(mc, "vertex.x")),
        "vy": read(lay.member(mc, "vertex.y")),
        "vz": read(lay.member(mc, "vertex.z")),
        "daughters_begin": read(lay.member(mc, "daughters_begin")),
        "daughters_end": read(lay.member(mc, "daughters_end")),
        "daughters": read(lay.relation(mc, "daughters", "index")),
    }
    columns["E"] = np.sqrt(columns["px"] ** 2 + columns["py"] ** 2 + columns["pz"] ** 2 + columns["mass"] ** 2)
    return columns


# ---------------------------------------------------------------------------------------------------------
# Generator-level taus
# ---------------------------------------------------------------------------------------------------------


@dataclass
class _Tau:
    p4: np.ndarray  # full tau (px, py, pz, E)
    vis: np.ndarray  # visible (px, py, pz, E)
    decay_mode: int
    charge: int
    vertex: np.ndarray  # decay vertex (mm)


def _pythia_ranges(begin: np.ndarray, end: np.ndarray, daughters: np.ndarray) -> tuple[np.ndarray, ...]:
    """EDM4hep daughter lists as Pythia-style (daughter1, daughter2) ranges, indices shifted by +1 (index 0 is
    a placeholder, as Pythia's event-record system entry).  A list that is not one contiguous range (in the
    files seen: only shower branchings of the beams) gets the range that covers it and is flagged in the
    returned ``irregular``."""
    n = len(begin)
    d1, d2 = np.zeros(n + 1, np.int64), np.zeros(n + 1, np.int64)
    irregular = np.zeros(n + 1, bool)
    for i in range(n):
        children = daughters[begin[i]:end[i]]
        if len(children) == 0:
            continue
        lo, hi = int(children.min()), int(children.max())
        d1[i + 1], d2[i + 1] = lo + 1, hi + 1  # for an irregular list: the range that covers it
        irregular[i + 1] = hi - lo + 1 != len(children) or len(np.unique(children)) != len(children)
    return d1, d2, irregular


def _event_taus(mc: dict[str, np.ndarray]) -> tuple[list[_Tau], int]:
    """The last-copy taus of one event, and how many of them have an irregular daughter list among their
    descendants (their decay mode is :data:`DM_UNRESOLVED`; the gen jets they match are dropped)."""
    pdg = np.concatenate([[90], mc["pdg"]])
    d1, d2, irregular = _pythia_ranges(mc["daughters_begin"], mc["daughters_end"], mc["daughters"])
    p4 = np.stack([mc[k] for k in ("px", "py", "pz", "E")], axis=1)
    taus, unresolved = [], 0
    for index in last_copy_taus(pdg, d1, d2):
        products = tau_decay_products(index, pdg, d1, d2, rule="descendants")
        resolved = not _touches_irregular(index, d1, d2, irregular)
        unresolved += not resolved
        visible = [p for p in products if abs(int(pdg[p])) not in NEUTRINOS]
        first_child = int(d1[index]) - 1
        taus.append(_Tau(
            p4=p4[index - 1],
            vis=p4[[p - 1 for p in visible]].sum(axis=0) if visible else np.zeros(4),
            decay_mode=decay_mode_from_products(pdg[products]) if resolved else DM_UNRESOLVED,
            charge=-1 if pdg[index] > 0 else 1,
            vertex=np.array([mc["vx"][first_child], mc["vy"][first_child], mc["vz"][first_child]]),
        ))
    return taus, unresolved


def _touches_irregular(index: int, d1: np.ndarray, d2: np.ndarray, irregular: np.ndarray) -> bool:
    stack, seen = [index], set()
    while stack:
        i = stack.pop()
        if i in seen:
            continue
        seen.add(i)
        if irregular[i]:
            return True
        if d1[i] > 0:
            stack.extend(range(int(d1[i]), int(max(d1[i], d2[i])) + 1))
    return False


# ---------------------------------------------------------------------------------------------------------
# Jets
# ---------------------------------------------------------------------------------------------------------


def _eta_phi(px: ak.Array, py: ak.Array, pz: ak.Array) -> tuple[ak.Array, ak.Array]:
    """:func:`tauml.data.jets.eta_phi` for events x var arrays (it works on flat arrays)."""
    counts = ak.num(px, axis=1)
    eta, phi = eta_phi(*(_flat(v) for v in (px, py, pz)))
    return ak.unflatten(eta, counts), ak.unflatten(phi, counts)


def _p4_record(px, py, pz, energy) -> ak.Array:
    mass = np.sqrt(np.maximum(energy**2 - px**2 - py**2 - pz**2, 0.0))
    return ak.zip({"x": px, "y": py, "z": pz, "tau": mass}, with_name="Momentum4D")


def _take(values: ak.Array, index: ak.Array, event_of_jet: np.ndarray) -> ak.Array:
    """values (events x var) at the per-jet lists ``index`` (jets x var, local to each jet's event)."""
    global_index = _flat(index, np.int64) + np.repeat(_offsets(values)[event_of_jet], ak.to_numpy(ak.num(index)))
    return ak.unflatten(ak.to_numpy(ak.flatten(values, axis=1))[global_index], ak.num(index))


def _chunk_jets(read: _Reader, lay: _Layout, first_event: int) -> tuple[ak.Array, int]:
    cands = _reco_candidates(read, lay)
    mc = _mc_particles(read, lay)
    n_events = len(cands["px"])

    # generator level: stable visible particles -> gen jets; taus from the full record
    abs_pdg = abs(mc["pdg"])
    visible = mc["status"] == 1
    for neutrino in NEUTRINOS:
        visible = visible & (abs_pdg != neutrino)
    gen = {k: mc[k][visible] for k in ("px", "py", "pz", "E", "pdg")}
    gen_jets, gen_constituents = cluster(ak.zip({k: gen[k] for k in ("px", "py", "pz", "E")}), "ee_genkt",
                                         EE_JET_R, EE_JET_P)
    reco_jets, reco_constituents = cluster(ak.zip({k: cands[k] for k in ("px", "py", "pz", "E")}), "ee_genkt",
                                           EE_JET_R, EE_JET_P)

    taus_per_event: list[list[_Tau]] = []
    unresolved = 0
    has_tau = ak.to_numpy(ak.any(abs(mc["pdg"]) == 15, axis=1))
    for event in range(n_events):
        if not has_tau[event]:
            taus_per_event.append([])
            continue
        record = {k: ak.to_numpy(mc[k][event]) for k in ("pdg", "px", "py", "pz", "E", "vx", "vy", "vz",
                                                          "daughters_begin", "daughters_end", "daughters")}
        taus, n_unresolved = _event_taus(record)
        taus_per_event.append(taus)
        unresolved += n_unresolved

    # taus (visible direction) -> gen jets, then per gen jet the tau it holds
    tau_px, tau_py, tau_pz = (
        ak.values_astype(ak.Array([[float(t.vis[i]) for t in taus] for taus in taus_per_event]), np.float64)
        for i in range(3)
    )
    tau_eta, tau_phi = _eta_phi(tau_px, tau_py, tau_pz)
    gen_eta, gen_phi = _eta_phi(gen_jets.px, gen_jets.py, gen_jets.pz)
    tau_to_gen = match(tau_eta, tau_phi, gen_eta, gen_phi, TAU_GEN_JET_DR).tolist()

    # drop gen jets with a generator-level electron or muon constituent, and gen jets of leptonic or unresolved taus
    jets_per_event = ak.to_numpy(ak.num(gen_constituents, axis=1))
    gen_pdg_in_jet = _take(abs(gen["pdg"]), ak.flatten(gen_constituents, axis=1),
                           np.repeat(np.arange(n_events), jets_per_event))
    has_lepton = ak.unflatten(ak.to_numpy(ak.any((gen_pdg_in_jet == 11) | (gen_pdg_in_jet == 13), axis=1)),
                              jets_per_event)
    gen_tau: list[list[int]] = []
    keep_gen: list[list[bool]] = []
    for event in range(n_events):
        n_gen = len(gen_eta[event])
        holder = [-1] * n_gen
        for t, g in enumerate(tau_to_gen[event]):
            if g >= 0:
                holder[g] = t
        lepton = has_lepton[event].tolist()
        gen_tau.append(holder)
        keep_gen.append([not lepton[g] and not (holder[g] >= 0 and taus_per_event[event][holder[g]].decay_mode
                                                 in (DM_LEPTONIC, DM_UNRESOLVED))
                         for g in range(n_gen)])
    keep_gen_arr = ak.Array(keep_gen)
    kept_gen_index = ak.local_index(gen_eta)[keep_gen_arr]

    # kept gen jets -> reco jets
    reco_eta, reco_phi = _eta_phi(reco_jets.px, reco_jets.py, reco_jets.pz)
    gen_to_reco = match(gen_eta[keep_gen_arr], gen_phi[keep_gen_arr], reco_eta, reco_phi, GEN_RECO_JET_DR).tolist()
    kept_gen_index = kept_gen_index.tolist()

    rows: dict[str, list] = {k: [] for k in ("event", "reco_jet", "gen_jet", "tau")}
    for event in range(n_events):
        pairs = sorted((r, kept_gen_index[event][k]) for k, r in enumerate(gen_to_reco[event]) if r >= 0)
        for reco_jet, gen_jet in pairs:
            rows["event"].append(event)
            rows["reco_jet"].append(reco_jet)
            rows["gen_jet"].append(gen_jet)
            rows["tau"].append(gen_tau[event][gen_jet])
    return _assemble(rows, cands, reco_jets, reco_constituents, gen_jets, taus_per_event, first_event), unresolved


def _assemble(rows, cands, reco_jets, reco_constituents, gen_jets, taus_per_event, first_event) -> ak.Array:
    event = np.asarray(rows["event"], np.int64)
    reco_jet = np.asarray(rows["reco_jet"], np.int64)
    gen_jet = np.asarray(rows["gen_jet"], np.int64)
    # each selected jet's constituent list (local candidate indices), ordered by candidate pT, descending
    constituents = ak.flatten(reco_constituents, axis=1)[_offsets(reco_constituents)[event] + reco_jet]
    pt = _take(np.hypot(cands["px"], cands["py"]), constituents, event)
    constituents = constituents[ak.argsort(pt, axis=1, ascending=False)]
    take = {k: _take(cands[k], constituents, event) for k in cands}

    def jet_component(jets, index, name):
        return _flat(jets[name])[_offsets(jets[name])[event] + index]

    def tau_columns(getter, width: int) -> list[np.ndarray]:
        """Per row, ``getter(tau)`` (``width`` numbers) for rows with a tau, zeros otherwise: contiguous columns."""
        values = np.zeros((len(event), width))
        for row, (e, t) in enumerate(zip(rows["event"], rows["tau"])):
            if t >= 0:
                values[row] = getter(taus_per_event[e][t])
        return [np.ascontiguousarray(values[:, i]) for i in range(width)]

    vis = tau_columns(lambda t: t.vis, 4)
    full = tau_columns(lambda t: t.p4, 4)
    vertex = tau_columns(lambda t: t.vertex, 3)
    decay_mode, charge = (np.asarray(c, np.int32) for c in tau_columns(lambda t: (t.decay_mode, t.charge), 2))
    decay_mode[np.asarray(rows["tau"], np.int64) < 0] = DM_NONE
    columns = {
        "reco_cand_p4s": _p4_record(take["px"], take["py"], take["pz"], take["E"]),
        "reco_cand_charge": ak.values_astype(take["charge"], np.int32),
        "reco_cand_pdg": ak.values_astype(take["pdg"], np.int32),
        "reco_cand_dxy": ak.values_astype(take["dxy"], np.float32),
        "reco_cand_dz": ak.values_astype(take["dz"], np.float32),
        "reco_cand_dxy_err": ak.values_astype(take["dxy_err"], np.float32),
        "reco_cand_dz_err": ak.values_astype(take["dz_err"], np.float32),
        "reco_jet_p4s": _p4_record(*(jet_component(reco_jets, reco_jet, k) for k in ("px", "py", "pz", "E"))),
        "gen_jet_p4s": _p4_record(*(jet_component(gen_jets, gen_jet, k) for k in ("px", "py", "pz", "E"))),
        "gen_jet_tau_p4s": _p4_record(*vis),
        "gen_jet_tau_decaymode": decay_mode,
        "event_number": event + first_event,
        "reco_jet_index": reco_jet.astype(np.int32),
        "gen_jet_tau_vis_energy": vis[3].astype(np.float32),
        "gen_jet_tau_charge": charge,
        "gen_jet_full_tau_p4s": _p4_record(*full),
        "gen_jet_tau_decay_vertex_x": vertex[0].astype(np.float32),
        "gen_jet_tau_decay_vertex_y": vertex[1].astype(np.float32),
        "gen_jet_tau_decay_vertex_z": vertex[2].astype(np.float32),
        "reco_cand_index": ak.values_astype(constituents, np.int32),
    }
    return ak.zip(columns, depth_limit=1)


# ---------------------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------------------


def read_edm4hep_taus(
    path: str | os.PathLike[str],
    layout: str = "auto",
    max_events: int | None = None,
    reco_collection: str | None = None,
    mc_collection: str | None = None,
    chunk_events: int = 2000,
) -> ak.Array:
    """Fu(tau)ure-schema jets (one row per reco jet matched to a gen jet) from an EDM4hep ROOT file.

    ``layout``: ``"auto"``, ``"edm4hep1"`` or ``"pre-edm4hep1"``.  ``max_events``: read at most this many
    events.  ``reco_collection`` / ``mc_collection``: collection names (default: the first present of
    :data:`RECO_COLLECTIONS` / :data:`MC_COLLECTIONS`).  Events are processed ``chunk_events`` at a time.
    ``event_number`` is the entry number in the file.  See ``docs/data.md`` for every mapping choice.
    """
    import uproot  # (local: start-up speed of the readers' import)

    if layout not in LAYOUTS:
        raise DataError(f"layout={layout!r}; choose from {', '.join(LAYOUTS)}")
    if max_events is not None and max_events < 0:
        raise DataError(f"max_events={max_events} must not be negative")
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"EDM4hep file {path} does not exist")
    try:
        file = uproot.open(path)
    except Exception as error:
        raise DataError(f"{path} is not a readable ROOT file ({type(error).__name__}: {error})") from error
    with file:
        tree, lay = _open_layout(file, path, layout, reco_collection, mc_collection)
        n_events = tree.num_entries if max_events is None else min(max_events, tree.num_entries)
        parts, unresolved = [], 0
        for start in range(0, n_events, chunk_events):
            read = _Reader(tree, path, start, min(start + chunk_events, n_events))
            jets, n_unresolved = _chunk_jets(read, lay, start)
            parts.append(jets)
            unresolved += n_unresolved
    if unresolved:
        warnings.warn(f"{unresolved} taus in {path} have a particle with a daughter list that is not one contiguous "
                      "range among their descendants; the jets they match were dropped", stacklevel=2)
    if not parts:
        raise DataError(f"{path} has no events to read (max_events={max_events})")
    jets = ak.concatenate(parts) if len(parts) > 1 else parts[0]
    validate_fuure(jets, str(path))
    return jets
