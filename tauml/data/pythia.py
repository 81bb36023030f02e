"""Pythia 8 settings of the generated samples and a batch interface returning flat numpy arrays.

e+e- at sqrt(s) = 380 GeV (the Fu(tau)ure samples; Zenodo 10.5281/zenodo.12664634):

* ``z``   Z/gamma* -> tau tau (signal),
* ``zh``  ZH with H -> tau tau and the Z decaying inclusively (signal),
* ``qq``  Z/gamma* -> q qbar, q = u, d, s, c, b (background).

pp at 13 TeV (the JetClass pretraining samples; Zenodo 10.5281/zenodo.6619768):

* ``ZJetsToNuNu``  Z -> nu nu recoiling against a hard quark or gluon,
* ``TTBar``        t tbar with both W -> q q' (all-hadronic).

Initial-state QED radiation of the e+e- beams is on (Pythia's default lepton PDF), so part of the ``z``
sample returns to the Z pole.  Taus decay inside Pythia with their spin correlations.
"""

from __future__ import annotations

from dataclasses import dataclass

import awkward as ak
import numpy as np

from tauml.config import EE_EVENT_SAMPLES, EE_SAMPLES, EVENT_SAMPLES, PP_EVENT_SAMPLES, PP_SAMPLES
from tauml.utils import quiet_stdout

_COMMON = (
    "Next:numberCount = 0",
    "Next:numberShowEvent = 0",
    "Next:numberShowProcess = 0",
    "Next:numberShowInfo = 0",
    "Init:showChangedSettings = off",
    "Init:showProcesses = off",
    "Init:showChangedParticleData = off",
    "Init:showMultipartonInteractions = off",
    "Print:quiet = on",
)

#: Process settings per sample (Pythia 8 setting strings).
SAMPLE_SETTINGS: dict[str, tuple[str, ...]] = {
    "z": (
        "WeakSingleBoson:ffbar2gmZ = on",
        "23:onMode = off",
        "23:onIfAny = 15",
    ),
    "zh": (
        "HiggsSM:ffbar2HZ = on",
        "25:onMode = off",
        "25:onIfAny = 15",
    ),
    "qq": (
        "WeakSingleBoson:ffbar2gmZ = on",
        "23:onMode = off",
        "23:onIfAny = 1 2 3 4 5",
    ),
    "ZJetsToNuNu": (
        "WeakBosonAndParton:qqbar2gmZg = on",
        "WeakBosonAndParton:qg2gmZq = on",
        "WeakZ0:gmZmode = 2",
        "23:onMode = off",
        "23:onIfAny = 12 14 16",
        "PhaseSpace:pTHatMin = 450.",
        "PhaseSpace:pTHatMax = 1100.",
    ),
    "TTBar": (
        "Top:gg2ttbar = on",
        "Top:qqbar2ttbar = on",
        "24:onMode = off",
        "24:onIfAny = 1 2 3 4 5",
        "PhaseSpace:pTHatMin = 400.",
        "PhaseSpace:pTHatMax = 1100.",
    ),
}

#: The joint analysis's event samples (docs/joint.md).  e+e-: the ``zh``, ``z`` and ``qq`` processes above plus
#: inclusive ZZ.  pp: the heavy CP-even scalar H2 of Pythia's BSM Higgs sector with a forced narrow width (1 % of
#: its mass) decaying to h h, h -> b bbar, stands in for the paper's bulk graviton (spin 0 instead of 2); QCD 2 -> 2
#: above pT-hat 300 GeV for the multijet background.
SAMPLE_SETTINGS.update({
    "ee_zh": SAMPLE_SETTINGS["zh"],
    "ee_z": SAMPLE_SETTINGS["z"],
    "ee_zz": ("WeakDoubleBoson:ffbar2gmZgmZ = on", "WeakZ0:gmZmode = 2"),
    "ee_qq": SAMPLE_SETTINGS["qq"],
    **{f"hh4b_m{mass}": (
        "Higgs:useBSM = on", "HiggsBSM:gg2H2 = on", f"35:m0 = {mass}.", "35:doForceWidth = on",
        f"35:mWidth = {mass / 100:.1f}", "35:onMode = off", "35:onIfMatch = 25 25", "25:onMode = off",
        "25:onIfMatch = 5 -5",
    ) for mass in (1000, 2000, 3000)},
    "qcd_multijet": ("HardQCD:all = on", "PhaseSpace:pTHatMin = 300."),
})

# appended, never reordered: the index seeds every chunk, so the existing samples keep their events
SAMPLE_INDEX = {name: i for i, name in enumerate(EE_SAMPLES + PP_SAMPLES + EVENT_SAMPLES)}


#: Pythia reports cross sections in mb; 1 mb = 1e12 fb.
MB_TO_FB = 1e12


def pythia_seed(seed: int, sample: str, chunk: int) -> int:
    """Pythia's seed for one chunk of one sample: distinct per (seed, sample, chunk), within 1..900,000,000."""
    return 1 + (seed * 1_000_003 + SAMPLE_INDEX[sample] * 10_007 + chunk * 7_919) % 899_999_999


def pythia_settings(sample: str, seed: int, ee_sqrt_s: float = 380.0, pp_sqrt_s: float = 13000.0) -> list[str]:
    """All setting strings for ``sample`` with Pythia seed ``seed``."""
    if sample in EE_SAMPLES or sample in EE_EVENT_SAMPLES:
        beams = ["Beams:idA = 11", "Beams:idB = -11", f"Beams:eCM = {ee_sqrt_s}"]
    elif sample in PP_SAMPLES or sample in PP_EVENT_SAMPLES:
        beams = ["Beams:idA = 2212", "Beams:idB = 2212", f"Beams:eCM = {pp_sqrt_s}"]
    else:
        raise ValueError(f"unknown sample {sample!r}; choose from {', '.join(SAMPLE_SETTINGS)}")
    return [*_COMMON, *beams, *SAMPLE_SETTINGS[sample], "Random:setSeed = on", f"Random:seed = {seed}"]


@dataclass
class GenEvents:
    """Generator-level event records of a batch, flattened: one entry per particle, ``offsets`` per event.

    Momenta in GeV, production vertices in mm.  ``daughter1``/``daughter2``/``mother1`` are indices within
    the event (Pythia convention).
    """

    offsets: np.ndarray
    pdg: np.ndarray
    status: np.ndarray
    mother1: np.ndarray
    daughter1: np.ndarray
    daughter2: np.ndarray
    px: np.ndarray
    py: np.ndarray
    pz: np.ndarray
    e: np.ndarray
    m: np.ndarray
    vx: np.ndarray
    vy: np.ndarray
    vz: np.ndarray
    charge: np.ndarray
    #: Pythia's estimate of the generated cross section of the batch (``Info::sigmaGen``, converted to fb) and its
    #: statistical error; decays switched off with ``onMode`` are already divided out by Pythia.
    sigma_fb: float = float("nan")
    sigma_error_fb: float = float("nan")

    @property
    def n_events(self) -> int:
        return len(self.offsets) - 1

    def event(self, i: int) -> slice:
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))


def generate_batch(sample: str, n_events: int, seed: int, ee_sqrt_s: float = 380.0,
                   pp_sqrt_s: float = 13000.0) -> GenEvents:
    """Generate ``n_events`` events of ``sample`` with Pythia seed ``seed``."""
    import pythia8mc  # (local: heavy, only for generation)

    with quiet_stdout():
        pythia = pythia8mc.Pythia("", False)
        for setting in pythia_settings(sample, seed, ee_sqrt_s, pp_sqrt_s):
            if not pythia.readString(setting):
                raise RuntimeError(f"Pythia refused the setting {setting!r}")
        if not pythia.init():
            raise RuntimeError(f"Pythia failed to initialise for sample {sample!r}")
        batch = pythia.nextBatch(n_events)
        data = pythia.particleData
        prt = batch.prt
        counts = ak.to_numpy(ak.num(prt, axis=1))
        pdg = ak.to_numpy(ak.flatten(prt.id)).astype(np.int64)
        unique_pdg, inverse = np.unique(pdg, return_inverse=True)
        charge = np.array([data.charge(int(i)) for i in unique_pdg], dtype=np.float64)[inverse]
        info = pythia.infoPython()
        sigma_fb, sigma_error_fb = info.sigmaGen() * MB_TO_FB, info.sigmaErr() * MB_TO_FB
    vprod = ak.flatten(prt.vProd)
    p = ak.flatten(prt.p)
    flat = lambda x: ak.to_numpy(ak.flatten(x))  # noqa: E731
    vertex = lambda f: ak.to_numpy(ak.fill_none(vprod[f], 0.0)).astype(np.float64)  # noqa: E731
    return GenEvents(
        offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        pdg=pdg,
        status=flat(prt.status).astype(np.int64),
        mother1=flat(prt.mother1).astype(np.int64),
        daughter1=flat(prt.daughter1).astype(np.int64),
        daughter2=flat(prt.daughter2).astype(np.int64),
        px=ak.to_numpy(p.px).astype(np.float64),
        py=ak.to_numpy(p.py).astype(np.float64),
        pz=ak.to_numpy(p.pz).astype(np.float64),
        e=ak.to_numpy(p.e).astype(np.float64),
        m=flat(prt.m).astype(np.float64),
        vx=vertex("px"),
        vy=vertex("py"),
        vz=vertex("pz"),
        charge=charge,
        sigma_fb=float(sigma_fb),
        sigma_error_fb=float(sigma_error_fb),
    )
