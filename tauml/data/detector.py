"""Parametric detector response: generator particles in, particle-flow candidates out.

Two models, each deterministic for a given ``numpy.random.Generator`` state:

* :func:`simulate_ee` -- CLIC-like (CLICdet) for e+e- at 380 GeV, with the particle-flow imperfections
  that make the tau tasks non-trivial: merged pi0 photons, photon conversions, fake neutral fragments of
  hadron showers, neutral hadrons absorbed into charged clusters, lost tracks and mismeasured track
  tails, lepton mis-identification, and thresholds.
* :func:`simulate_pp` -- Delphes-CMS-like for pp at 13 TeV: tracks, and calorimeter towers whose deposits
  become photon (ECAL) and neutral-hadron (HCAL) candidates, as Delphes' energy-flow objects.

Every number is a field of :class:`tauml.config.EEDetectorConfig` or :class:`~tauml.config.PPDetectorConfig`;
``docs/detector.md`` says where each comes from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from tauml.config import EEDetectorConfig, PPDetectorConfig
from tauml.data.pythia import GenEvents

ELECTRON_MASS = 0.000511  # GeV
MUON_MASS = 0.105658
PION_MASS = 0.139570
K0L_MASS = 0.497611

NEUTRINOS = (12, 14, 16)
#: Candidate types (absolute PDG codes) and the mass hypothesis particle flow assigns them in e+e-.
EE_CANDIDATE_MASS = {11: ELECTRON_MASS, 13: MUON_MASS, 22: 0.0, 211: PION_MASS, 130: K0L_MASS}
#: In pp (Delphes energy flow) neutral candidates are massless towers and tracks keep the pion mass.
PP_CANDIDATE_MASS = {11: ELECTRON_MASS, 13: MUON_MASS, 22: 0.0, 211: PION_MASS, 130: 0.0}


@dataclass
class Candidates:
    """Reconstructed particle-flow candidates of a batch of events, flat and grouped by event.

    ``offsets[i]:offsets[i+1]`` are the candidates of event i.  GeV and mm.  ``pdg`` is the absolute
    candidate type (11, 13, 22, 211, 130); impact parameters are 0 for neutral candidates.
    """

    offsets: np.ndarray
    px: np.ndarray
    py: np.ndarray
    pz: np.ndarray
    e: np.ndarray
    pdg: np.ndarray
    charge: np.ndarray
    dxy: np.ndarray
    dz: np.ndarray
    dxy_err: np.ndarray
    dz_err: np.ndarray

    @property
    def n_events(self) -> int:
        return len(self.offsets) - 1


class _Builder:
    """Collects candidates from several sources, then sorts them by event (stable, so the order is fixed)."""

    def __init__(self) -> None:
        self.parts: list[dict[str, np.ndarray]] = []

    def add(self, event: np.ndarray, px, py, pz, e, pdg, charge, dxy=None, dz=None, dxy_err=None, dz_err=None):
        n = len(event)
        zeros = np.zeros(n)
        self.parts.append({
            "event": event.astype(np.int64), "px": px, "py": py, "pz": pz, "e": e,
            "pdg": np.broadcast_to(pdg, n).astype(np.int64), "charge": np.broadcast_to(charge, n).astype(np.float64),
            "dxy": zeros if dxy is None else dxy, "dz": zeros if dz is None else dz,
            "dxy_err": zeros if dxy_err is None else dxy_err, "dz_err": zeros if dz_err is None else dz_err,
        })

    def build(self, n_events: int) -> Candidates:
        keys = ("event", "px", "py", "pz", "e", "pdg", "charge", "dxy", "dz", "dxy_err", "dz_err")
        cols = {k: np.concatenate([p[k] for p in self.parts]) if self.parts else np.zeros(0) for k in keys}
        order = np.argsort(cols["event"], kind="stable")
        cols = {k: v[order] for k, v in cols.items()}
        counts = np.bincount(cols["event"].astype(np.int64), minlength=n_events)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return Candidates(offsets=offsets, **{k: cols[k] for k in keys if k != "event"})


def _event_index(offsets: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))


def _visible_final_state(gen: GenEvents) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the stable generator particles a detector can see (all but neutrinos), and their events."""
    index = np.flatnonzero((gen.status > 0) & ~np.isin(np.abs(gen.pdg), NEUTRINOS))
    return index, _event_index(gen.offsets)[index]


def _with_mass(p_dir: tuple[np.ndarray, np.ndarray, np.ndarray], p_abs: np.ndarray, mass: np.ndarray | float):
    """4-vector from a unit direction, a momentum magnitude and a mass hypothesis."""
    ux, uy, uz = p_dir
    return ux * p_abs, uy * p_abs, uz * p_abs, np.sqrt(p_abs**2 + np.asarray(mass) ** 2)


def _smear_direction(ux, uy, uz, sigma: float, rng: np.random.Generator):
    """Gaussian smearing of a direction by ``sigma`` radians in theta and in phi (times sin theta)."""
    theta = np.arccos(np.clip(uz, -1, 1)) + rng.normal(0.0, sigma, len(ux))
    phi = np.arctan2(uy, ux) + rng.normal(0.0, sigma, len(ux)) / np.maximum(np.sin(theta), 1e-3)
    theta = np.clip(np.abs(theta), 1e-6, np.pi - 1e-6)
    return np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)


def impact_parameters(vx, vy, vz, px, py, pz):
    """Transverse (d0) and longitudinal (z0) impact parameters in mm of a straight track from (vx, vy, vz)
    with momentum (px, py, pz) with respect to the beam line at the origin.

    d0 = (x py - y px) / pT, z0 = z - (x px + y py) / pT * pz / pT.  Curvature is neglected: tau decay
    lengths (mm) are tiny compared with the radius of curvature of a 1 GeV track in 4 T (0.8 m).
    """
    pt = np.maximum(np.hypot(px, py), 1e-9)
    d0 = (vx * py - vy * px) / pt
    z0 = vz - (vx * px + vy * py) / pt * pz / pt
    return d0, z0


# -------------------------------------------------------------------------------------------------------
# e+e-: CLIC-like
# -------------------------------------------------------------------------------------------------------


def simulate_ee(gen: GenEvents, config: EEDetectorConfig, rng: np.random.Generator) -> Candidates:
    """Particle-flow candidates of a CLIC-like detector for the final-state particles of ``gen``."""
    real = config.realistic
    idx, event = _visible_final_state(gen)
    pdg, charge = gen.pdg[idx], gen.charge[idx]
    px, py, pz, e = gen.px[idx], gen.py[idx], gen.pz[idx], gen.e[idx]
    vx, vy, vz = gen.vx[idx], gen.vy[idx], gen.vz[idx]
    p = np.sqrt(px**2 + py**2 + pz**2)
    cos_theta = pz / np.maximum(p, 1e-12)
    accepted = np.abs(cos_theta) < config.cos_theta_max
    apdg = np.abs(pdg)

    # --- photons: conversions in the tracker material turn some into e+e- pairs -----------------------
    photon = accepted & (apdg == 22)
    convert = np.zeros(len(idx), bool)
    if real and config.conversions_on:
        sin_theta = np.sqrt(np.clip(1 - cos_theta**2, 1e-6, 1))
        probability = np.minimum(config.conversion_probability / sin_theta, 0.5)
        convert = photon & (rng.random(len(idx)) < probability)
    conv = np.flatnonzero(convert)
    share = rng.random(len(conv))
    radius = rng.random(len(conv)) * config.conversion_radius_max
    ux, uy, uz = px[conv] / p[conv], py[conv] / p[conv], pz[conv] / p[conv]
    ut = np.maximum(np.hypot(ux, uy), 1e-9)
    conv_v = (vx[conv] + radius * ux / ut, vy[conv] + radius * uy / ut, vz[conv] + radius * uz / ut)
    legs_e = np.concatenate([e[conv] * share, e[conv] * (1 - share)])
    legs = {
        "event": np.concatenate([event[conv], event[conv]]),
        "pdg": np.concatenate([np.full(len(conv), 11), np.full(len(conv), -11)]),
        "charge": np.concatenate([np.full(len(conv), -1.0), np.full(len(conv), 1.0)]),
        "px": np.concatenate([ux, ux]) * legs_e, "py": np.concatenate([uy, uy]) * legs_e,
        "pz": np.concatenate([uz, uz]) * legs_e, "e": legs_e,
        "vx": np.concatenate([conv_v[0], conv_v[0]]), "vy": np.concatenate([conv_v[1], conv_v[1]]),
        "vz": np.concatenate([conv_v[2], conv_v[2]]),
    }

    # --- charged particles (including conversion legs): tracking ------------------------------------
    charged = accepted & (charge != 0)
    ci = np.flatnonzero(charged)
    ch = {
        "event": np.concatenate([event[ci], legs["event"]]),
        "pdg": np.concatenate([pdg[ci], legs["pdg"]]),
        "charge": np.concatenate([charge[ci], legs["charge"]]),
        "px": np.concatenate([px[ci], legs["px"]]), "py": np.concatenate([py[ci], legs["py"]]),
        "pz": np.concatenate([pz[ci], legs["pz"]]), "e": np.concatenate([e[ci], legs["e"]]),
        "vx": np.concatenate([vx[ci], legs["vx"]]), "vy": np.concatenate([vy[ci], legs["vy"]]),
        "vz": np.concatenate([vz[ci], legs["vz"]]),
    }
    n_ch = len(ch["event"])
    ch_pt = np.hypot(ch["px"], ch["py"])
    ch_p = np.sqrt(ch_pt**2 + ch["pz"] ** 2)
    ch_sin = np.maximum(ch_pt / np.maximum(ch_p, 1e-12), 1e-3)
    trackable = (ch_pt > config.track_pt_min) & (np.hypot(ch["vx"], ch["vy"]) < config.track_max_production_radius)
    efficiency = config.track_efficiency if real else 1.0
    tracked = trackable & (rng.random(n_ch) < efficiency)
    sigma = np.sqrt((config.track_pt_res_a * ch_pt) ** 2 + (config.track_pt_res_b / ch_sin) ** 2)
    if real:
        sigma = np.where(rng.random(n_ch) < config.track_tail_fraction, sigma * config.track_tail_scale, sigma)
    scale = np.abs(1.0 + sigma * rng.normal(size=n_ch))
    d0, z0 = impact_parameters(ch["vx"], ch["vy"], ch["vz"], ch["px"], ch["py"], ch["pz"])
    d0_err = np.hypot(config.d0_res_a, config.d0_res_b / (np.maximum(ch_p, 1e-3) * ch_sin**1.5))
    z0_err = np.hypot(config.z0_res_a, config.z0_res_b / (np.maximum(ch_p, 1e-3) * ch_sin**1.5))
    d0 = d0 + d0_err * rng.normal(size=n_ch)
    z0 = z0 + z0_err * rng.normal(size=n_ch)

    ach = np.abs(ch["pdg"])
    candidate_type = np.full(n_ch, 211)
    u = rng.random(n_ch)
    if real and config.lepton_id_on:
        candidate_type[(ach == 11) & (u < config.electron_id_efficiency)] = 11
        muon_ok = (ach == 13) & (ch_p > config.muon_p_min) & (u < config.muon_id_efficiency)
        candidate_type[muon_ok] = 13
        hadron = (ach != 11) & (ach != 13)
        candidate_type[hadron & (u < config.pion_to_electron_rate)] = 11
        fake_mu = hadron & (ch_p > config.muon_p_min) & (u >= config.pion_to_electron_rate) & (
            u < config.pion_to_electron_rate + config.pion_to_muon_rate)
        candidate_type[fake_mu] = 13
    else:
        candidate_type[ach == 11] = 11
        candidate_type[(ach == 13) & (ch_p > config.muon_p_min)] = 13
    t = np.flatnonzero(tracked)
    t_dir = (ch["px"][t] / ch_p[t], ch["py"][t] / ch_p[t], ch["pz"][t] / ch_p[t])
    t_mass = np.vectorize(EE_CANDIDATE_MASS.get)(candidate_type[t]) if len(t) else np.zeros(0)
    tpx, tpy, tpz, te = _with_mass(t_dir, ch_p[t] * scale[t], t_mass)

    builder = _Builder()
    builder.add(ch["event"][t], tpx, tpy, tpz, te, candidate_type[t], ch["charge"][t],
                d0[t], z0[t], d0_err[t], z0_err[t])

    # --- calorimeter objects: photons, untracked electrons (ECAL), neutral and untracked hadrons (HCAL) --
    untracked = ~tracked & (ach != 13)
    ecal_from_charged = np.flatnonzero(untracked & (ach == 11))
    hcal_from_charged = np.flatnonzero(untracked & (ach != 11))
    unconverted = np.flatnonzero(photon & ~convert)
    neutral_hadron = np.flatnonzero(accepted & (charge == 0) & (apdg != 22))

    ecal = {
        "event": np.concatenate([event[unconverted], ch["event"][ecal_from_charged]]),
        "e": np.concatenate([e[unconverted], ch["e"][ecal_from_charged]]),
        "px": np.concatenate([px[unconverted], ch["px"][ecal_from_charged]]),
        "py": np.concatenate([py[unconverted], ch["py"][ecal_from_charged]]),
        "pz": np.concatenate([pz[unconverted], ch["pz"][ecal_from_charged]]),
    }
    hcal = {
        "event": np.concatenate([event[neutral_hadron], ch["event"][hcal_from_charged]]),
        "e": np.concatenate([e[neutral_hadron], ch["e"][hcal_from_charged]]),
        "px": np.concatenate([px[neutral_hadron], ch["px"][hcal_from_charged]]),
        "py": np.concatenate([py[neutral_hadron], ch["py"][hcal_from_charged]]),
        "pz": np.concatenate([pz[neutral_hadron], ch["pz"][hcal_from_charged]]),
        "is_neutral": np.concatenate([np.ones(len(neutral_hadron), bool), np.zeros(len(hcal_from_charged), bool)]),
    }

    # fake neutral fragments split off the showers of tracked charged hadrons
    if real and config.fake_neutrals_on:
        th = t[(candidate_type[t] == 211) & (te > config.fake_neutral_e_min)]
        th = th[rng.random(len(th)) < config.fake_neutral_probability]
        fraction = rng.uniform(0.05, config.fake_neutral_fraction_max, len(th))
        fx, fy, fz = _smear_direction(ch["px"][th] / ch_p[th], ch["py"][th] / ch_p[th], ch["pz"][th] / ch_p[th],
                                      0.02, rng)
        fe = ch["e"][th] * fraction
        as_photon = rng.random(len(th)) < config.fake_photon_fraction
        for key, values in (("event", ch["event"][th]), ("e", fe), ("px", fx * fe), ("py", fy * fe), ("pz", fz * fe)):
            ecal[key] = np.concatenate([ecal[key], values[as_photon]])
            hcal[key] = np.concatenate([hcal[key], values[~as_photon]])
        hcal["is_neutral"] = np.concatenate([hcal["is_neutral"], np.zeros((~as_photon).sum(), bool)])

    # neutral hadrons next to a charged track are partly absorbed into its cluster
    keep_h = np.ones(len(hcal["event"]), bool)
    if real and config.neutral_confusion_on and len(t):
        close = _near_track(
            hcal["event"], *_unit(hcal["px"], hcal["py"], hcal["pz"]),
            ch["event"][t], *t_dir, gen.n_events, config.neutral_confusion_angle,
        )
        keep_h &= ~(close & hcal["is_neutral"] & (rng.random(len(keep_h)) < config.neutral_confusion_probability))

    # ECAL: energy resolution, position resolution, merging of nearby showers, threshold
    n_e = len(ecal["e"])
    ecal_e = ecal["e"] * np.abs(1 + rng.normal(size=n_e) * np.sqrt(
        config.ecal_stochastic**2 / np.maximum(ecal["e"], 1e-6) + config.ecal_constant**2))
    ex, ey, ez = _smear_direction(*_unit(ecal["px"], ecal["py"], ecal["pz"]), config.ecal_angular_res, rng)
    if real and config.photon_merging_on and n_e:
        ecal_event, ecal_e, ex, ey, ez = _merge_showers(
            ecal["event"], ecal_e, ex, ey, ez, config.photon_merge_distance / config.ecal_inner_radius)
    else:
        ecal_event = ecal["event"]
    keep_e = ecal_e > config.photon_e_min
    builder.add(ecal_event[keep_e], ex[keep_e] * ecal_e[keep_e], ey[keep_e] * ecal_e[keep_e],
                ez[keep_e] * ecal_e[keep_e], ecal_e[keep_e], 22, 0.0)

    # HCAL: energy and position resolution, threshold, K0L mass hypothesis
    n_h = len(hcal["e"])
    hcal_e = hcal["e"] * np.abs(1 + rng.normal(size=n_h) * np.sqrt(
        config.hcal_stochastic**2 / np.maximum(hcal["e"], 1e-6) + config.hcal_constant**2))
    hx, hy, hz = _smear_direction(*_unit(hcal["px"], hcal["py"], hcal["pz"]), config.hcal_angular_res, rng)
    keep_h &= hcal_e > max(config.neutral_hadron_e_min, K0L_MASS)
    h_p = np.sqrt(np.clip(hcal_e**2 - K0L_MASS**2, 0, None))
    builder.add(hcal["event"][keep_h], hx[keep_h] * h_p[keep_h], hy[keep_h] * h_p[keep_h],
                hz[keep_h] * h_p[keep_h], hcal_e[keep_h], 130, 0.0)
    return builder.build(gen.n_events)


def _unit(px, py, pz):
    p = np.maximum(np.sqrt(px**2 + py**2 + pz**2), 1e-12)
    return px / p, py / p, pz / p


def _near_track(event, ux, uy, uz, t_event, tx, ty, tz, n_events, max_angle):
    order = np.argsort(t_event, kind="stable")
    counts = np.bincount(t_event, minlength=n_events)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    return _near_track_kernel(event, ux, uy, uz, offsets, tx[order], ty[order], tz[order], np.cos(max_angle))


@numba.njit(cache=True)
def _near_track_kernel(event, ux, uy, uz, offsets, tx, ty, tz, cos_max):  # pragma: no cover - compiled
    out = np.zeros(len(event), dtype=np.bool_)
    for i in range(len(event)):
        ev = event[i]
        for j in range(offsets[ev], offsets[ev + 1]):
            if ux[i] * tx[j] + uy[i] * ty[j] + uz[i] * tz[j] > cos_max:
                out[i] = True
                break
    return out


def _merge_showers(event, energy, ux, uy, uz, max_angle):
    order = np.lexsort((-energy, event))
    cluster = _merge_kernel(event[order], energy[order], ux[order], uy[order], uz[order], max_angle)
    n_clusters = cluster.max() + 1 if len(cluster) else 0
    e_sum = np.bincount(cluster, weights=energy[order], minlength=n_clusters)
    vx = np.bincount(cluster, weights=(energy * ux)[order], minlength=n_clusters)
    vy = np.bincount(cluster, weights=(energy * uy)[order], minlength=n_clusters)
    vz = np.bincount(cluster, weights=(energy * uz)[order], minlength=n_clusters)
    first = np.unique(cluster, return_index=True)[1]
    cx, cy, cz = _unit(vx, vy, vz)
    return event[order][first], e_sum, cx, cy, cz


@numba.njit(cache=True)
def _merge_kernel(event, energy, ux, uy, uz, max_angle):  # pragma: no cover - compiled
    """Greedy clustering in order of decreasing energy: a shower joins the first existing cluster of its
    event whose (energy-weighted) axis is closer than ``max_angle``; cluster ids are global."""
    n = len(event)
    cluster = np.empty(n, dtype=np.int64)
    cos_max = np.cos(max_angle)
    ax = np.zeros(n)
    ay = np.zeros(n)
    az = np.zeros(n)
    n_clusters = 0
    first_in_event = 0
    for i in range(n):
        if i > 0 and event[i] != event[i - 1]:
            first_in_event = n_clusters
        best = -1
        best_cos = cos_max
        for c in range(first_in_event, n_clusters):
            norm = np.sqrt(ax[c] ** 2 + ay[c] ** 2 + az[c] ** 2)
            cosine = (ax[c] * ux[i] + ay[c] * uy[i] + az[c] * uz[i]) / norm
            if cosine > best_cos:
                best_cos = cosine
                best = c
        if best < 0:
            best = n_clusters
            n_clusters += 1
        cluster[i] = best
        ax[best] += energy[i] * ux[i]
        ay[best] += energy[i] * uy[i]
        az[best] += energy[i] * uz[i]
    return cluster


# -------------------------------------------------------------------------------------------------------
# pp: Delphes-CMS-like
# -------------------------------------------------------------------------------------------------------


def simulate_pp(gen: GenEvents, config: PPDetectorConfig, rng: np.random.Generator) -> Candidates:
    """Energy-flow candidates of a Delphes-CMS-like detector: smeared tracks plus ECAL and HCAL towers."""
    real = config.realistic
    idx, event = _visible_final_state(gen)
    pdg, charge = gen.pdg[idx], gen.charge[idx]
    px, py, pz, e = gen.px[idx], gen.py[idx], gen.pz[idx], gen.e[idx]
    pt = np.hypot(px, py)
    p = np.sqrt(pt**2 + pz**2)
    eta = np.arcsinh(pz / np.maximum(pt, 1e-9))
    phi = np.arctan2(py, px)
    apdg = np.abs(pdg)
    n = len(idx)

    charged = charge != 0
    in_tracker = charged & (np.abs(eta) < config.eta_max_tracker) & (pt > config.track_pt_min)
    if real:
        efficiency = np.where(pt < 1.0, config.track_efficiency_low,
                              np.where(np.abs(eta) < 1.5, config.track_efficiency_high,
                                       config.track_efficiency_forward))
        tracked = in_tracker & (rng.random(n) < efficiency)
    else:
        tracked = in_tracker
    sigma = np.hypot(config.track_pt_res_a, config.track_pt_res_b * pt)
    scale = np.abs(1 + sigma * rng.normal(size=n))
    d0, z0 = impact_parameters(gen.vx[idx], gen.vy[idx], gen.vz[idx], px, py, pz)
    d0 = d0 + config.d0_res * rng.normal(size=n)
    z0 = z0 + config.z0_res * rng.normal(size=n)
    u = rng.random(n)
    candidate_type = np.full(n, 211)
    candidate_type[(apdg == 11) & (u < (config.electron_id_efficiency if real else 1.0))] = 11
    candidate_type[(apdg == 13) & (u < (config.muon_id_efficiency if real else 1.0))] = 13

    builder = _Builder()
    t = np.flatnonzero(tracked)
    mass = np.vectorize(PP_CANDIDATE_MASS.get)(candidate_type[t]) if len(t) else np.zeros(0)
    tpx, tpy, tpz, te = _with_mass((px[t] / p[t], py[t] / p[t], pz[t] / p[t]), p[t] * scale[t], mass)
    builder.add(event[t], tpx, tpy, tpz, te, candidate_type[t], charge[t], d0[t], z0[t],
                np.full(len(t), config.d0_res), np.full(len(t), config.z0_res))

    in_calo = np.abs(eta) < config.eta_max_calo
    to_ecal = in_calo & ~tracked & ((apdg == 22) | (apdg == 11))
    to_hcal = in_calo & ~tracked & ~to_ecal & (apdg != 13)
    for selected, cell, (a, b, c), threshold, code in (
        (to_ecal, config.ecal_cell, (config.ecal_a, config.ecal_b, config.ecal_c), config.ecal_e_min, 22),
        (to_hcal, config.hcal_cell, (config.hcal_a, config.hcal_b, 0.0), config.hcal_e_min, 130),
    ):
        tower_event, tower_eta, tower_phi, tower_e = _towers(event[selected], eta[selected], phi[selected],
                                                             e[selected], cell, config.eta_max_calo)
        sigma_e = np.sqrt((a * tower_e) ** 2 + b**2 * tower_e + c**2)
        tower_e = np.abs(tower_e + sigma_e * rng.normal(size=len(tower_e)))
        keep = tower_e > threshold
        tower_e, tower_eta, tower_phi = tower_e[keep], tower_eta[keep], tower_phi[keep]
        tower_pt = tower_e / np.cosh(tower_eta)
        builder.add(tower_event[keep], tower_pt * np.cos(tower_phi), tower_pt * np.sin(tower_phi),
                    tower_pt * np.sinh(tower_eta), tower_e, code, 0.0)
    return builder.build(gen.n_events)


def _towers(event, eta, phi, energy, cell, eta_max):
    """Sum energies in (eta, phi) towers of size ``cell``; return tower centres and energies per event."""
    n_phi = round(2 * np.pi / cell)
    phi_cell = 2 * np.pi / n_phi
    ieta = np.floor((eta + eta_max) / cell).astype(np.int64)
    iphi = np.floor((phi + np.pi) / phi_cell).astype(np.int64) % n_phi
    n_eta = int(np.ceil(2 * eta_max / cell)) + 1
    key = (event * n_eta + ieta) * n_phi + iphi
    unique, inverse = np.unique(key, return_inverse=True)
    tower_e = np.bincount(inverse, weights=energy, minlength=len(unique))
    tower_event = unique // (n_eta * n_phi)
    tower_ieta = (unique // n_phi) % n_eta
    tower_iphi = unique % n_phi
    return tower_event, (tower_ieta + 0.5) * cell - eta_max, (tower_iphi + 0.5) * phi_cell - np.pi, tower_e
