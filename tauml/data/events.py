"""The joint analysis's events: every selected jet of each event, its constituents, its high-level features.

:func:`read_events` turns the event samples that ``tauml generate`` writes (``events/<sample>_<NNN>.parquet``, one
row per jet with its event number; docs/joint.md) into :class:`EventArrays`:

* ``jets``: a :class:`~tauml.data.features.JetArrays` of the kept jets (the same per-constituent features as
  pretraining and notebook 03), ordered by event and, within an event, by descending pT;
* ``jet_event`` (event row of each jet), ``jet_label`` (the pretext label: a hadronic tau for ``zh_tautau``, H -> b
  bbar for ``hh4b``), ``hlf`` (per-jet high-level features, :data:`HLF_NAMES`);
* per event: ``label`` (1 = signal), ``sample``, ``event_number``, ``weight`` (cross section per selected event in
  fb, so that ``weight.sum()`` is the selected cross section).

The selection (the paper's): the leading :data:`MAX_JETS` jets in pT, events with at least :data:`MIN_JETS`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import awkward as ak
import numpy as np

from tauml.config import EE_EVENT_SAMPLES, PP_EVENT_SAMPLES, FeatureConfig
from tauml.data.features import CHARGE_INDEX, JetArrays, TruncationWarning, jet_arrays
from tauml.data.schema import DataError

#: The two use cases: their samples, which are signal, and the pretext label of their jets.
CASES: dict[str, dict[str, tuple[str, ...]]] = {
    "zh_tautau": {"signal": ("ee_zh",), "background": ("ee_z", "ee_zz", "ee_qq")},
    "hh4b": {"signal": ("hh4b_m1000", "hh4b_m2000", "hh4b_m3000"), "background": ("qcd_multijet",)},
}
#: Per-jet high-level features (the paper's pT, eta, phi, mass, soft-drop mass; for e+e- tau jets the mass of the
#: charged constituents replaces the soft-drop mass, docs/joint.md).  ln of the masses and pT, with 0 kept at 0.
HLF_NAMES: dict[str, tuple[str, ...]] = {
    "hh4b": ("ln_pt", "eta", "phi", "ln_mass", "ln_sdmass"),
    "zh_tautau": ("ln_pt", "eta", "phi", "ln_mass", "ln_charged_mass"),
}
MAX_JETS = 5
MIN_JETS = 2


def case_samples(case: str) -> tuple[str, ...]:
    """Every sample of a use case, signal first."""
    if case not in CASES:
        raise ValueError(f"case={case!r}; choose from {', '.join(CASES)}")
    return CASES[case]["signal"] + CASES[case]["background"]


@dataclass
class EventArrays:
    """The events of one use case (see the module docstring); jets are flat, ``jet_event`` names their event."""

    jets: JetArrays
    jet_event: np.ndarray
    jet_label: np.ndarray
    hlf: np.ndarray
    label: np.ndarray
    sample: np.ndarray
    event_number: np.ndarray
    weight: np.ndarray

    def __len__(self) -> int:
        return len(self.label)

    @property
    def n_jets(self) -> np.ndarray:
        """Jets per event."""
        return np.bincount(self.jet_event, minlength=len(self))

    def subset(self, index: np.ndarray) -> EventArrays:
        """The events ``index`` (an index array, in that order), with their jets."""
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        starts = np.concatenate([[0], np.cumsum(self.n_jets)])
        jet_rows = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in index]) if len(index) else \
            np.zeros(0, np.int64)
        new_event = np.repeat(np.arange(len(index)), self.n_jets[index])
        per_event = {f.name: getattr(self, f.name)[index] for f in fields(self)
                     if f.name in ("label", "sample", "event_number", "weight")}
        return EventArrays(jets=self.jets.subset(jet_rows), jet_event=new_event, jet_label=self.jet_label[jet_rows],
                           hlf=self.hlf[jet_rows], **per_event)

    @staticmethod
    def concatenate(parts: list[EventArrays]) -> EventArrays:
        offsets = np.cumsum([0] + [len(p) for p in parts[:-1]])
        return EventArrays(
            jets=JetArrays.concatenate([p.jets for p in parts]),
            jet_event=np.concatenate([p.jet_event + o for p, o in zip(parts, offsets)]),
            **{name: np.concatenate([getattr(p, name) for p in parts])
               for name in ("jet_label", "hlf", "label", "sample", "event_number", "weight")})


def _log(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, np.log(np.maximum(x, 1e-12)), 0.0)


def _hlf(case: str, jets: JetArrays, records: ak.Array) -> np.ndarray:
    p4 = jets.jet_p4
    pt = np.hypot(p4[:, 0], p4[:, 1])
    eta = np.arcsinh(p4[:, 2] / np.maximum(pt, 1e-9))
    phi = np.arctan2(p4[:, 1], p4[:, 0])
    mass = np.sqrt(np.clip(p4[:, 3] ** 2 - (p4[:, :3] ** 2).sum(1), 0.0, None))
    if case == "hh4b":
        last = ak.to_numpy(records.jet_sdmass).astype(np.float64)
    else:  # the mass of the charged constituents (of the kept slots)
        charged = (jets.features[..., CHARGE_INDEX] != 0) & jets.mask
        c = (jets.p4 * charged[..., None]).sum(1)
        last = np.sqrt(np.clip(c[:, 3] ** 2 - (c[:, :3] ** 2).sum(1), 0.0, None))
    return np.stack([_log(pt), eta, phi, _log(mass), _log(last)], axis=1).astype(np.float32)


def read_sample(files: list[Path], case: str, sample: str, sigma_fb: float, n_generated: int,
                features: FeatureConfig | None = None, max_constituents: int | None = None,
                max_jets: int = MAX_JETS, min_jets: int = MIN_JETS) -> EventArrays:
    """The selected events of one sample (its per-chunk files), weighted by ``sigma_fb / n_generated`` per event.

    Raises :class:`DataError` when no event passes the selection or a file is not an event-sample file."""
    if sample not in case_samples(case):
        raise DataError(f"sample {sample!r} is not part of the use case {case!r} ({', '.join(case_samples(case))})")
    parts = []
    for path in files:
        try:
            parts.append(ak.from_parquet(path))
        except Exception as err:  # pyarrow raises many types for damaged files
            raise DataError(f"{path} is not a readable event-sample file ({type(err).__name__}: {err}); delete it "
                            "(or the whole dataset folder) and generate it again with tauml generate") from err
    records = ak.concatenate(parts) if len(parts) > 1 else parts[0]
    if "event_number" not in records.fields:
        raise DataError(f"{files[0]} has no event_number column: it is not an event sample of tauml generate")
    event = ak.to_numpy(records.event_number).astype(np.int64)
    if sample in PP_EVENT_SAMPLES:
        pt = ak.to_numpy(records.jet_pt).astype(np.float64)
    else:
        pt = np.hypot(ak.to_numpy(records.reco_jet_p4s.x), ak.to_numpy(records.reco_jet_p4s.y))
    order = np.lexsort((-pt, event))
    event, records = event[order], records[order]
    start = np.concatenate([[0], np.flatnonzero(np.diff(event)) + 1])
    counts = np.diff(np.concatenate([start, [len(event)]]))
    rank = np.arange(len(event)) - np.repeat(start, counts)
    n_kept = np.minimum(counts, max_jets)
    good_event = n_kept >= min_jets
    keep = (rank < max_jets) & np.repeat(good_event, counts)
    if not keep.any():
        raise DataError(f"no {sample} event has {min_jets} or more selected jets in {files[0].parent}: generate more "
                        "events")
    records = records[keep]
    with warnings.catch_warnings():  # event jets (q qbar, QCD) are longer than tau jets; the leading ones are kept
        warnings.simplefilter("ignore", TruncationWarning)
        jets = jet_arrays(records, features, max_constituents=max_constituents, source=str(files[0].parent))
    if sample in PP_EVENT_SAMPLES:
        jet_label = ak.to_numpy(records.label_Hbb).astype(np.int64)
    else:
        jet_label = jets.is_tau.astype(np.int64)
    hlf = _hlf(case, jets, records)
    kept_events = event[keep]
    numbers, jet_event = np.unique(kept_events, return_inverse=True)
    is_signal = sample in CASES[case]["signal"]
    n = len(numbers)
    return EventArrays(jets=jets, jet_event=jet_event.astype(np.int64), jet_label=jet_label, hlf=hlf,
                       label=np.full(n, int(is_signal)), sample=np.full(n, sample),
                       event_number=numbers, weight=np.full(n, sigma_fb / n_generated))


def split_of(sample: str, event_number: np.ndarray, test_fraction: float, val_fraction: float) -> np.ndarray:
    """A fixed pseudo-random split by sample and event number: 0 train, 1 validation, 2 test (Knuth's hash)."""
    salt = sum(map(ord, sample)) * 7919
    hashed = ((event_number.astype(np.uint64) + np.uint64(salt)) * np.uint64(2654435761)) % np.uint64(2**32)
    u = hashed.astype(np.float64) / 2**32
    return np.where(u < test_fraction, 2, np.where(u < test_fraction + val_fraction, 1, 0))


__all__ = ["CASES", "EE_EVENT_SAMPLES", "HLF_NAMES", "MAX_JETS", "MIN_JETS", "PP_EVENT_SAMPLES", "EventArrays",
           "case_samples", "read_sample", "split_of"]
