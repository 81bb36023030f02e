"""From a classifier's output to physics: a binned likelihood fit with pyhf (``pip install "tauml[stats]"``).

:func:`binned_templates` histograms the signal and background outputs, weighted to ``luminosity`` (fb^-1) with
their cross sections (fb per event), in bins of equal *signal* efficiency (so that every bin holds signal and
the last bins are the purest).  :func:`expected_sensitivity` fits them with pyhf's ``uncorrelated_background``
model (one signal strength mu; the background's statistical uncertainty from its simulated events, sqrt(sum w^2),
per bin as a constrained nuisance parameter) on the Asimov data set and gives

* the expected discovery significance Z0 of the signal (the q0 test on Asimov signal + background), and
* the expected 95 % CL (CLs) upper limit on mu from Asimov background-only data.

A bin without any simulated background event gets the weight of one background event, with a 100 % uncertainty:
a finite simulated sample never proves a bin empty (docs/joint.md).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

N_BINS = 8


def binned_templates(signal_scores: np.ndarray, signal_weights: np.ndarray, background_scores: np.ndarray,
                     background_weights: np.ndarray, luminosity: float, n_bins: int = N_BINS) -> dict[str, Any]:
    """Expected events per bin for signal and background at ``luminosity`` (fb^-1) and the background's MC error."""
    if luminosity <= 0:
        raise ValueError(f"luminosity={luminosity} fb^-1 must be positive")
    if len(signal_scores) < n_bins or len(background_scores) == 0:
        raise ValueError(f"need at least {n_bins} signal and one background event to fill {n_bins} bins")
    edges = np.quantile(signal_scores, np.linspace(0.0, 1.0, n_bins + 1))
    edges[0], edges[-1] = -np.inf, np.inf
    edges = np.unique(edges)

    def hist(scores, weights):
        w = np.asarray(weights, float) * luminosity
        return (np.histogram(scores, edges, weights=w)[0], np.sqrt(np.histogram(scores, edges, weights=w**2)[0]))

    signal, _ = hist(signal_scores, signal_weights)
    background, background_error = hist(background_scores, background_weights)
    one_event = float(np.min(background_weights)) * luminosity
    empty = background <= 0
    background = np.where(empty, one_event, background)
    background_error = np.where(empty, one_event, background_error)
    return {"edges": edges, "signal": signal, "background": background, "background_error": background_error,
            "luminosity": luminosity, "empty_background_bins": int(empty.sum())}


def expected_sensitivity(templates: dict[str, Any]) -> dict[str, float]:
    """Expected discovery significance ``z0`` and 95 % CL upper limit ``mu_95`` (see the module docstring)."""
    import pyhf  # (local: optional 'stats' extra)

    logging.getLogger("pyhf").setLevel(logging.CRITICAL)  # a non-converging fit far from the limit is skipped below

    signal = [float(x) for x in templates["signal"]]
    background = [float(x) for x in templates["background"]]
    model = pyhf.simplemodels.uncorrelated_background(signal=signal, bkg=background,
                                                      bkg_uncertainty=[float(x) for x in templates["background_error"]])
    aux = model.config.auxdata
    init = model.config.suggested_init()
    init[model.config.poi_index] = 1.0
    asimov_sb = list(np.asarray(model.expected_actualdata(init))) + aux
    p0 = float(pyhf.infer.hypotest(0.0, asimov_sb, model, test_stat="q0", par_bounds=_bounds(model, 100.0)))
    z0 = _z_from_p(p0)
    init[model.config.poi_index] = 0.0
    asimov_b = list(np.asarray(model.expected_actualdata(init))) + aux
    # the expected CLs against mu on a grid reaching well past the limit; the limit where it crosses 0.05
    signal_total = max(sum(signal), 1e-12)
    top = max(2.0, 8.0 * np.sqrt(sum(background)) / signal_total + 4.0 / signal_total)
    mu_95 = float("nan")
    for _ in range(4):  # a grid that does not reach the limit is moved ten times further up
        mus, cls = [], []
        for mu in np.geomspace(top / 300.0, top, 13):
            try:
                _, expected = pyhf.infer.hypotest(float(mu), asimov_b, model, test_stat="qtilde",
                                                  return_expected=True, par_bounds=_bounds(model, 2.0 * top))
            except pyhf.exceptions.FailedMinimization:  # a fit far from the limit that did not converge: skip it
                continue
            mus.append(float(mu))
            cls.append(float(expected))
        mu_95 = _crossing(np.array(mus), np.array(cls), 0.05)
        if np.isfinite(mu_95):
            break
        top *= 10.0
    return {"z0": z0, "mu_95": mu_95, "signal_events": float(sum(signal)),
            "background_events": float(sum(background))}


def _bounds(model: Any, poi_max: float) -> list[tuple[float, float]]:
    bounds = list(model.config.suggested_bounds())
    bounds[model.config.poi_index] = (0.0, poi_max)
    return bounds


def _crossing(mus: np.ndarray, cls: np.ndarray, level: float) -> float:
    """The mu where CLs(mu), decreasing, first falls to ``level`` (log-linear interpolation); NaN if never."""
    below = np.flatnonzero(cls <= level)
    if len(mus) == 0 or len(below) == 0:
        return float("nan")
    i = below[0]
    if i == 0:
        return float(mus[0])
    t = (np.log(cls[i - 1]) - np.log(level)) / (np.log(cls[i - 1]) - np.log(cls[i]))
    return float(np.exp(np.log(mus[i - 1]) + t * (np.log(mus[i]) - np.log(mus[i - 1]))))


def _z_from_p(p: float) -> float:
    from scipy.stats import norm  # (local: scipy comes with pyhf)

    return float(norm.isf(max(p, 1e-300)))


__all__ = ["N_BINS", "binned_templates", "expected_sensitivity"]
