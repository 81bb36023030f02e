"""Per-constituent features and per-jet targets, the same for pretraining and fine-tuning.

:func:`jet_arrays` turns jets read from a Fu(tau)ure-schema or a JetClass-schema file into fixed-size
numpy arrays (see ``docs/conventions.md`` and ``docs/features.md``):

* ``features`` ``(n_jets, max_constituents, 10)``: the core paper's Table 2, transformed,
* ``mask`` ``(n_jets, max_constituents)``: boolean, True where a constituent exists,
* ``p4`` ``(n_jets, max_constituents, 4)``: (px, py, pz, E) in GeV, for pair features and plots,
* ``lifetime`` (optional) ``(n_jets, max_constituents, 4)``: tanh(dxy), tanh(dz), clipped errors,
* per-jet targets ``is_tau``, ``log_pt_ratio`` = ln(pT_vis / pT_jet) and the reduced decay mode ``dm``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, fields

import awkward as ak
import numpy as np

from tauml.config import FeatureConfig
from tauml.data.schema import CANDIDATE_PDG_CODES, DataError, validate_fuure, validate_jetclass
from tauml.data.truth import DM_LEPTONIC, reduce_decay_mode

FEATURE_NAMES: tuple[str, ...] = (
    "log_pt",
    "mass",
    "deta",
    "dphi",
    "charge",
    "is_electron",
    "is_muon",
    "is_photon",
    "is_charged_hadron",
    "is_neutral_hadron",
)
#: Axis labels for plots, with units (features are shown before the transform).
FEATURE_LABELS: dict[str, str] = {
    "log_pt": r"$\ln(p_T\,/\,\mathrm{GeV}) - 1.8$",
    "mass": r"$5\,m\,/\,\mathrm{GeV}$",
    "deta": r"$3\,\Delta\eta$",
    "dphi": r"$3\,\Delta\phi$",
    "charge": "charge [e]",
}
CONTINUOUS_FEATURES = slice(0, 4)
CHARGE_INDEX = 4
PID_FEATURES = slice(5, 10)
N_FEATURES = len(FEATURE_NAMES)
PID_NAMES: tuple[str, ...] = ("electron", "muon", "photon", "charged hadron", "neutral hadron")
LIFETIME_FEATURE_NAMES: tuple[str, ...] = ("tanh_dxy", "tanh_dz", "dxy_err", "dz_err")


class TruncationWarning(UserWarning):
    """Jets with more constituents than slots were cut to their highest-pT constituents (said once per file, or
    once for a whole dataset by its caller): ``n_truncated`` of ``n_jets`` jets, the largest having ``largest``."""

    def __init__(self, message: str, n_truncated: int = 0, n_jets: int = 0, largest: int = 0) -> None:
        super().__init__(message)
        self.n_truncated, self.n_jets, self.largest = n_truncated, n_jets, largest


@dataclass
class JetArrays:
    """Fixed-size arrays for a set of jets (numpy, first axis = jet)."""

    features: np.ndarray
    mask: np.ndarray
    p4: np.ndarray
    jet_p4: np.ndarray
    is_tau: np.ndarray
    log_pt_ratio: np.ndarray
    dm: np.ndarray
    lifetime: np.ndarray | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.mask)

    @property
    def jet_pt(self) -> np.ndarray:
        """Reco-jet transverse momentum in GeV."""
        return np.hypot(self.jet_p4[:, 0], self.jet_p4[:, 1])

    @property
    def gen_vis_pt(self) -> np.ndarray:
        """Visible generator-level tau pT in GeV (NaN for background jets)."""
        return np.exp(self.log_pt_ratio) * self.jet_pt

    @property
    def n_constituents(self) -> np.ndarray:
        return self.mask.sum(axis=1)

    def subset(self, index: np.ndarray | slice) -> JetArrays:
        """The jets at ``index`` (a boolean mask, an index array or a slice)."""
        values = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "extra":
                values[f.name] = {k: v[index] for k, v in value.items()}
            else:
                values[f.name] = None if value is None else value[index]
        return JetArrays(**values)

    @staticmethod
    def concatenate(parts: list[JetArrays]) -> JetArrays:
        if not parts:
            raise ValueError("nothing to concatenate")
        values = {}
        for f in fields(JetArrays):
            items = [getattr(p, f.name) for p in parts]
            if f.name == "extra":
                keys = set.intersection(*(set(i) for i in items))
                values[f.name] = {k: np.concatenate([i[k] for i in items]) for k in keys}
            elif any(i is None for i in items):
                values[f.name] = None
            else:
                values[f.name] = np.concatenate(items)
        return JetArrays(**values)


def jet_arrays(
    jets: ak.Array,
    config: FeatureConfig | None = None,
    max_constituents: int | None = None,
    lifetime: bool = False,
    source: str = "",
) -> JetArrays:
    """Features, mask and targets for jets in the Fu(tau)ure or the JetClass schema (detected from the fields).

    ``max_constituents`` defaults to 16 for Fu(tau)ure jets and 128 for JetClass jets.
    Raises :class:`DataError` on NaN or infinite inputs, empty jets and unknown particle types.
    """
    config = config or FeatureConfig()
    if len(jets) == 0:
        raise DataError(f"no jets{' in ' + source if source else ''}: nothing to build features from")
    if "reco_cand_p4s" in jets.fields:
        validate_fuure(jets, source)
        constituents, jet_p4 = _fuure_constituents(jets, source)
        max_constituents = max_constituents or config.max_constituents_tau
        names = FUURE_NAMES
        _check_inputs(constituents, jet_p4, max_constituents, lifetime, source, names)
        targets = _fuure_targets(jets, jet_p4, source)
    elif "part_px" in jets.fields:
        validate_jetclass(jets, source)
        constituents, jet_p4 = _jetclass_constituents(jets, source)
        _check_inputs(constituents, jet_p4, max_constituents or config.max_constituents_jetclass, lifetime, source,
                      JETCLASS_NAMES)
        n = len(jets)
        targets = {"is_tau": np.zeros(n, np.int64), "log_pt_ratio": np.full(n, np.nan, np.float32),
                   "dm": np.full(n, -1, np.int64)}
        max_constituents = max_constituents or config.max_constituents_jetclass
        names = JETCLASS_NAMES
    else:
        raise DataError(
            f"jets{' in ' + source if source else ''} are neither Fu(tau)ure (reco_cand_p4s) nor JetClass (part_px) "
            f"records; their fields are {', '.join(jets.fields)}"
        )
    return _build(constituents, jet_p4, targets, config, max_constituents, lifetime, source)


#: The file columns behind each constituent quantity, to name them in errors.
FUURE_NAMES: dict[str, str] = {
    "px": "reco_cand_p4s.x", "py": "reco_cand_p4s.y", "pz": "reco_cand_p4s.z", "energy": "reco_cand_p4s (energy)",
    "charge": "reco_cand_charge", "pdg": "reco_cand_pdg", "dxy": "reco_cand_dxy", "dz": "reco_cand_dz",
    "dxy_err": "reco_cand_dxy_err", "dz_err": "reco_cand_dz_err", "jet": "reco_jet_p4s",
}
JETCLASS_NAMES: dict[str, str] = {
    "px": "part_px", "py": "part_py", "pz": "part_pz", "energy": "part_energy", "charge": "part_charge",
    "pdg": "part_is* flags", "dxy": "part_d0val", "dz": "part_dzval", "dxy_err": "part_d0err", "dz_err": "part_dzerr",
    "jet": "the sum of the particles (jet 4-vector)",
}


def _first_row(bad: ak.Array | np.ndarray) -> tuple[int, int]:
    """(number of jets with a True, index of the first) for a per-jet or per-constituent boolean array."""
    per_jet = ak.to_numpy(ak.any(bad, axis=1)) if isinstance(bad, ak.Array) and bad.ndim > 1 else np.asarray(bad)
    rows = np.flatnonzero(per_jet)
    return len(rows), int(rows[0]) if len(rows) else -1


def _bad_rows(what: str, bad: ak.Array | np.ndarray, source: str, fix: str) -> None:
    n, row = _first_row(bad)
    if n:
        where = f" in {source}" if source else ""
        raise DataError(f"{what}{where}, in {n} jet(s), first in row {row} — {fix}")


def _p4_from_fuure(p4: ak.Array) -> tuple[ak.Array, ak.Array, ak.Array, ak.Array]:
    px, py, pz = p4.x, p4.y, p4.z
    if "tau" in p4.fields:
        mass = p4.tau
        energy = np.sqrt(px**2 + py**2 + pz**2 + mass**2)
    else:
        energy = p4.t
    return px, py, pz, energy


def _fuure_constituents(jets: ak.Array, source: str) -> tuple[dict[str, ak.Array], np.ndarray]:
    px, py, pz, energy = _p4_from_fuure(jets.reco_cand_p4s)
    pdg = abs(ak.values_astype(jets.reco_cand_pdg, np.int64))
    known = np.isin(ak.to_numpy(ak.flatten(pdg)), CANDIDATE_PDG_CODES)
    if not np.all(known):
        bad = np.unique(ak.to_numpy(ak.flatten(pdg))[~known])
        unknown = ak.unflatten(~known, ak.num(pdg, axis=1))
        _bad_rows(f"reco_cand_pdg holds codes {bad.tolist()[:10]} (Fu(tau)ure candidates are typed "
                  f"{CANDIDATE_PDG_CODES})", unknown, source, "map them first (tauml.data.edm4hep.candidate_pdg)")
    fill = ak.zeros_like(px)
    constituents = {
        "px": px, "py": py, "pz": pz, "energy": energy,
        "charge": jets.reco_cand_charge, "pdg": pdg,
        "dxy": jets.reco_cand_dxy if "reco_cand_dxy" in jets.fields else fill,
        "dz": jets.reco_cand_dz if "reco_cand_dz" in jets.fields else fill,
        "dxy_err": jets.reco_cand_dxy_err if "reco_cand_dxy_err" in jets.fields else fill,
        "dz_err": jets.reco_cand_dz_err if "reco_cand_dz_err" in jets.fields else fill,
    }
    jpx, jpy, jpz, je = _p4_from_fuure(jets.reco_jet_p4s)
    jet_p4 = np.stack([ak.to_numpy(v).astype(np.float64) for v in (jpx, jpy, jpz, je)], axis=1)
    return constituents, jet_p4


def _jetclass_constituents(jets: ak.Array, source: str) -> tuple[dict[str, ak.Array], np.ndarray]:
    flags = [ak.values_astype(jets[f"part_is{name}"], np.int64)
             for name in ("Electron", "Muon", "Photon", "ChargedHadron", "NeutralHadron")]
    n_flags = sum(flags)
    bad = ak.to_numpy(ak.flatten(n_flags)) != 1
    if np.any(bad):
        raise DataError(
            f"{int(bad.sum())} JetClass particles{' in ' + source if source else ''} do not have exactly one of "
            "part_isElectron/isMuon/isPhoton/isChargedHadron/isNeutralHadron set"
        )
    pdg = sum(flag * code for flag, code in zip(flags, CANDIDATE_PDG_CODES))
    fill = ak.zeros_like(jets.part_px)
    constituents = {
        "px": jets.part_px, "py": jets.part_py, "pz": jets.part_pz, "energy": jets.part_energy,
        "charge": jets.part_charge, "pdg": pdg,
        "dxy": jets.part_d0val if "part_d0val" in jets.fields else fill,
        "dz": jets.part_dzval if "part_dzval" in jets.fields else fill,
        "dxy_err": jets.part_d0err if "part_d0err" in jets.fields else fill,
        "dz_err": jets.part_dzerr if "part_dzerr" in jets.fields else fill,
    }
    jet_p4 = np.stack([ak.to_numpy(ak.sum(constituents[k], axis=1)).astype(np.float64)
                       for k in ("px", "py", "pz", "energy")], axis=1)
    return constituents, jet_p4


def _fuure_targets(jets: ak.Array, jet_p4: np.ndarray, source: str = "") -> dict[str, np.ndarray]:
    """The per-jet targets, checked now rather than after a training: decay-mode codes in -1..15 and, for every
    tau jet, a finite regression target ln(pT_vis / pT_jet)."""
    code = ak.to_numpy(jets.gen_jet_tau_decaymode).astype(np.int64)
    _bad_rows("gen_jet_tau_decaymode is 16 (a leptonic tau decay)", code == DM_LEPTONIC, source,
              "remove the jets with leptonic tau decays first")
    _bad_rows(f"gen_jet_tau_decaymode holds codes outside -1..15 ({sorted(set(code[(code < -1) | (code > 15)]))[:5]})",
              (code < -1) | (code > 15), source, "decay modes are -1 (no tau) or 0..15: fix the column")
    is_tau = (code >= 0).astype(np.int64)
    tau_px, tau_py = (ak.to_numpy(v).astype(np.float64) for v in (jets.gen_jet_tau_p4s.x, jets.gen_jet_tau_p4s.y))
    vis_pt = np.hypot(tau_px, tau_py)
    jet_pt = np.hypot(jet_p4[:, 0], jet_p4[:, 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(is_tau == 1, np.log(vis_pt / jet_pt), np.nan)
    _bad_rows("reco_jet_p4s gives a tau jet zero pT (the regression target ln(pT_vis/pT_jet) is not finite)",
              (is_tau == 1) & ~(jet_pt > 0), source, "drop those jets or fix the column")
    _bad_rows("gen_jet_tau_p4s gives a tau jet a visible pT that is zero, NaN or infinite (the regression target "
              "ln(pT_vis/pT_jet) is not finite)", (is_tau == 1) & ~np.isfinite(ratio), source,
              "drop those jets or fix the column")
    return {"is_tau": is_tau, "log_pt_ratio": ratio.astype(np.float32), "dm": reduce_decay_mode(code)}


def _pad(array: ak.Array, length: int, dtype: type = np.float64) -> np.ndarray:
    return ak.to_numpy(ak.fill_none(ak.pad_none(array, length, clip=True, axis=1), 0)).astype(dtype)


def _check_inputs(c: dict[str, ak.Array], jet_p4: np.ndarray, max_constituents: int, lifetime: bool, source: str,
                  names: dict[str, str]) -> None:
    """Refuse what would give non-finite features (NaN or infinite momenta, candidates of zero pT), charges
    outside -1, 0, +1, and jets without constituents, naming the file, the column and the first bad row; say
    once how many jets have more constituents than ``max_constituents`` (the hardest are kept)."""
    where = f" in {source}" if source else ""
    counts = ak.to_numpy(ak.num(c["px"], axis=1))
    if np.any(counts == 0):
        raise DataError(
            f"{int((counts == 0).sum())} jets{where} have no constituents, first in row "
            f"{int(np.flatnonzero(counts == 0)[0])} — drop them before building features "
            "(e.g. jets[ak.num(jets.reco_cand_p4s) > 0])"
        )
    for name in ("px", "py", "pz", "energy", "charge", *(("dxy", "dz", "dxy_err", "dz_err") if lifetime else ())):
        _bad_rows(f"{names[name]} is NaN or infinite", ~np.isfinite(ak.values_astype(c[name], np.float64)), source,
                  "fix or drop those jets")
    _bad_rows(f"{names['jet']} is NaN or infinite", ~np.all(np.isfinite(jet_p4), axis=1), source,
              "fix or drop those jets")
    _bad_rows(f"{names['px']}/{names['py']} give a candidate zero transverse momentum (its log_pt feature would be "
              "-inf)", (c["px"] == 0) & (c["py"] == 0), source, "drop the candidates with pT = 0")
    _bad_rows(f"{names['charge']} holds charges other than -1, 0, +1", ~((c["charge"] == -1) | (c["charge"] == 0)
                                                                          | (c["charge"] == 1)), source,
              "candidate charges must be -1, 0 or +1: fix the column")
    too_many = counts > max_constituents
    if np.any(too_many):
        warnings.warn(TruncationWarning(
            f"{int(too_many.sum())} of {len(counts)} jets{where} have more than {max_constituents} constituents "
            f"(up to {int(counts.max())}); the {max_constituents} of highest pT are kept",
            n_truncated=int(too_many.sum()), n_jets=len(counts), largest=int(counts.max())), stacklevel=3)


def _build(
    c: dict[str, ak.Array],
    jet_p4: np.ndarray,
    targets: dict[str, np.ndarray],
    config: FeatureConfig,
    max_constituents: int,
    lifetime: bool,
    source: str,
) -> JetArrays:
    where = f" in {source}" if source else ""
    counts = ak.to_numpy(ak.num(c["px"], axis=1))

    # order constituents by pT, descending, before truncation
    pt = np.hypot(c["px"], c["py"])
    order = ak.argsort(pt, axis=1, ascending=False)
    c = {k: v[order] for k, v in c.items()}

    px, py, pz, energy = (_pad(c[k], max_constituents) for k in ("px", "py", "pz", "energy"))
    mask = np.arange(max_constituents)[None, :] < counts[:, None]
    pt = np.hypot(px, py)
    safe_pt = np.where(mask, pt, 1.0)
    eta = np.arcsinh(pz / safe_pt)
    phi = np.arctan2(py, px)
    jet_pt = np.hypot(jet_p4[:, 0], jet_p4[:, 1])
    jet_eta = np.arcsinh(jet_p4[:, 2] / np.where(jet_pt > 0, jet_pt, 1.0))
    jet_phi = np.arctan2(jet_p4[:, 1], jet_p4[:, 0])
    deta = eta - jet_eta[:, None]
    dphi = (phi - jet_phi[:, None] + np.pi) % (2 * np.pi) - np.pi
    mass = np.sqrt(np.clip(energy**2 - px**2 - py**2 - pz**2, 0.0, None))
    pdg = _pad(c["pdg"], max_constituents, np.int64)
    charge = _pad(c["charge"], max_constituents)

    feats = np.zeros((len(mask), max_constituents, N_FEATURES), dtype=np.float32)
    with np.errstate(over="ignore"):  # a value beyond float32 becomes inf, refused below with its row
        feats[..., 0] = np.log(safe_pt) - config.log_pt_shift
        feats[..., 1] = mass * config.mass_scale
    feats[..., 2] = np.clip(deta * config.angle_scale, -config.angle_clip, config.angle_clip)
    feats[..., 3] = np.clip(dphi * config.angle_scale, -config.angle_clip, config.angle_clip)
    feats[..., 4] = charge
    for i, code in enumerate(CANDIDATE_PDG_CODES):
        feats[..., 5 + i] = pdg == code
    feats[~mask] = 0.0
    bad = ~np.isfinite(feats)
    if bad.any():
        jet, _, feature = (int(i[0]) for i in np.nonzero(bad))
        raise DataError(f"the feature {FEATURE_NAMES[feature]} is NaN or infinite{where} in "
                        f"{int(bad.any(axis=(1, 2)).sum())} jet(s), first in row {jet} — check that jet's "
                        "candidates and jet 4-vector")

    p4 = np.stack([px, py, pz, energy], axis=-1).astype(np.float32)
    p4[~mask] = 0.0
    life = None
    if lifetime:
        life = np.stack([
            np.tanh(_pad(c["dxy"], max_constituents)),
            np.tanh(_pad(c["dz"], max_constituents)),
            np.clip(_pad(c["dxy_err"], max_constituents), 0.0, 1.0),
            np.clip(_pad(c["dz_err"], max_constituents), 0.0, 1.0),
        ], axis=-1).astype(np.float32)
        life[~mask] = 0.0
    return JetArrays(
        features=feats, mask=mask, p4=p4, jet_p4=jet_p4.astype(np.float32),
        is_tau=targets["is_tau"], log_pt_ratio=targets["log_pt_ratio"], dm=np.asarray(targets["dm"], np.int64),
        lifetime=life,
    )


def inverse_transform(features: np.ndarray, config: FeatureConfig | None = None) -> dict[str, np.ndarray]:
    """Physical values from transformed features: pt [GeV], mass [GeV], deta, dphi, charge, pid index 0..4."""
    config = config or FeatureConfig()
    return {
        "pt": np.exp(features[..., 0] + config.log_pt_shift),
        "mass": features[..., 1] / config.mass_scale,
        "deta": features[..., 2] / config.angle_scale,
        "dphi": features[..., 3] / config.angle_scale,
        "charge": features[..., 4],
        "pid": np.argmax(features[..., PID_FEATURES], axis=-1),
    }


def constituent_arrays(data: JetArrays | tuple[np.ndarray, np.ndarray], name: str) -> tuple[np.ndarray, np.ndarray]:
    """(features float32, mask bool) from JetArrays or a ``(features, mask)`` tuple, checked: shapes, a boolean mask,
    finite features, charges in {-1, 0, +1} and one-hot particle-type flags in every real constituent (what the
    tokenizer needs).  ``name`` says which input in the error."""
    if isinstance(data, JetArrays):
        x, mask = data.features, data.mask
    elif isinstance(data, tuple) and len(data) == 2:
        x, mask = data
    else:
        raise DataError(f"{name} must be JetArrays or a (features, mask) tuple, got {type(data).__name__}")
    x, mask = np.asarray(x, dtype=np.float32), np.asarray(mask)
    if mask.dtype != np.bool_:
        raise DataError(f"{name} mask must be boolean (True = real constituent), got {mask.dtype}")
    if x.ndim != 3 or x.shape[-1] != N_FEATURES or x.shape[:2] != mask.shape:
        raise DataError(f"{name} features {x.shape} must be (n_jets, max_constituents, {N_FEATURES}) matching "
                        f"mask {mask.shape}")
    if len(x) == 0 or not mask.any():
        raise DataError(f"{name} holds no real constituents: nothing to train or validate on")
    real = x[mask]
    if not np.all(np.isfinite(real)):
        raise DataError(f"{name} has NaN or infinite features in real constituents")
    if not np.all(np.isin(real[:, CHARGE_INDEX], (-1.0, 0.0, 1.0))):
        raise DataError(f"{name} has charges other than -1, 0, +1 (feature {CHARGE_INDEX}); the tokenizer's charge "
                        "classes are exactly these")
    flags = real[:, PID_FEATURES]
    if not (np.all(np.isin(flags, (0.0, 1.0))) and np.all(flags.sum(1) == 1)):
        raise DataError(f"{name} particle-type flags (features 5-9) are not one-hot in every real constituent")
    return x, mask
