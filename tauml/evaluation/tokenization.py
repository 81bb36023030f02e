"""How well jets survive the trip to tokens and back: resolutions, accuracies, confusion, codebook use.

:func:`tokenization_metrics` is the measurement (arrays in, numbers out); :func:`resolution_rows` and
:func:`summary_row` turn its output into table rows.  See docs/tokenizer.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tauml.data.features import JetArrays, constituent_arrays, inverse_transform
from tauml.models.vqvae import CODE_OFFSET, Tokenizer, perplexity, utilisation

JetsLike = JetArrays | tuple[np.ndarray, np.ndarray]
Metrics = Mapping[str, Any]

#: The residuals the tables and figures show, and their plain-text names.
RESIDUALS: tuple[str, ...] = ("pt_relative", "mass", "deta", "dphi")
RESIDUAL_NAMES: dict[str, str] = {"pt_relative": "pT_reco/pT - 1", "pt": "pT_reco - pT [GeV]",
                                  "mass": "mass [GeV]", "deta": "Δη", "dphi": "Δφ [rad]"}


def tokenization_metrics(tokenizer: Tokenizer, jets: JetsLike, batch_size: int = 2048) -> dict[str, Any]:
    """How well jets survive the trip to tokens and back (``tokenize`` then ``reconstruct``).

    Returns, over real constituents:

    * ``resolution``: for ``pt`` [GeV], ``pt_relative`` (reco / input - 1), ``mass`` [GeV], ``deta``, ``dphi``
      [rad]: ``mean``, ``std``, ``iqr`` (75th - 25th percentile) of reconstructed minus input,
    * ``residuals``: those differences as arrays, ``input`` / ``reconstructed``: the physical values,
    * ``charge_accuracy``, ``charge_confusion`` (3 x 3 counts, rows = input charge -1, 0, +1, columns =
      reconstructed), ``pid_accuracy``, ``pid_confusion`` (5 x 5, order of ``PID_NAMES``),
    * ``utilisation``, ``perplexity`` and ``token_frequency`` (counts per code, length codebook_size).
    """
    x, mask = constituent_arrays(jets, "jets")
    tokens, token_mask = tokenizer.tokenize(x, mask, batch_size=batch_size)
    decoded, decoded_mask = tokenizer.reconstruct(tokens, token_mask, batch_size=batch_size)
    decoded = decoded.numpy()
    inner, inner_mask = tokens[:, 1:-1], token_mask[:, 1:-1]
    codes = inner[inner_mask & (inner >= CODE_OFFSET)] - CODE_OFFSET
    counts = np.bincount(codes.numpy(), minlength=tokenizer.codebook_size)
    source = inverse_transform(x[mask], tokenizer.feature_config)
    result = inverse_transform(decoded[decoded_mask.numpy()], tokenizer.feature_config)
    source["pt_relative"], result["pt_relative"] = np.ones_like(source["pt"]), result["pt"] / source["pt"]
    residuals, resolution = {}, {}
    for name in ("pt", "pt_relative", "mass", "deta", "dphi"):
        diff = (result[name] - source[name]).astype(np.float64)
        q25, q75 = np.percentile(diff, [25, 75])
        residuals[name] = diff
        resolution[name] = {"mean": float(diff.mean()), "std": float(diff.std()), "iqr": float(q75 - q25)}
    charge_in = source["charge"].round().astype(np.int64) + 1
    charge_out = result["charge"].round().astype(np.int64) + 1
    charge_confusion = np.bincount(charge_in * 3 + charge_out, minlength=9).reshape(3, 3)
    pid_confusion = np.bincount(source["pid"] * 5 + result["pid"], minlength=25).reshape(5, 5)
    return {
        "resolution": resolution, "residuals": residuals,
        "input": {k: source[k] for k in ("pt", "mass", "deta", "dphi", "charge", "pid")},
        "reconstructed": {k: result[k] for k in ("pt", "mass", "deta", "dphi", "charge", "pid")},
        "charge_accuracy": float(np.trace(charge_confusion) / charge_confusion.sum()),
        "charge_confusion": charge_confusion,
        "pid_accuracy": float(np.trace(pid_confusion) / pid_confusion.sum()),
        "pid_confusion": pid_confusion,
        "utilisation": utilisation(counts), "perplexity": perplexity(counts), "token_frequency": counts,
        "n_constituents": int(mask.sum()),
    }


def codes_for_fraction(counts: np.ndarray, fraction: float = 0.9) -> int:
    """The smallest number of codes that together carry ``fraction`` of the constituents (0 if none)."""
    counts = np.sort(np.asarray(counts, dtype=np.float64))[::-1]
    total = counts.sum()
    if total <= 0:
        return 0
    return int(np.searchsorted(np.cumsum(counts) / total, fraction - 1e-12) + 1)


def resolution_rows(metrics: Mapping[str, Metrics], quantities: Sequence[str] = RESIDUALS) -> list[dict[str, Any]]:
    """One row per dataset and quantity: mean, std and IQR of reconstructed - input (physical units).

    For the angles the row also gives the IQR relative to the IQR of the input values: tau jets are narrow,
    so a small absolute angular residual can still be a coarse one relative to the jet's own size.
    """
    rows = []
    for name, m in metrics.items():
        for quantity in quantities:
            r = m["resolution"][quantity]
            row = {"dataset": name, "quantity": RESIDUAL_NAMES[quantity], "mean": r["mean"], "std": r["std"],
                   "IQR": r["iqr"], "IQR / input IQR": "–"}
            if quantity in ("deta", "dphi"):
                q25, q75 = np.percentile(m["input"][quantity], [25, 75])
                row["IQR / input IQR"] = float(r["iqr"] / (q75 - q25)) if q75 > q25 else float("nan")
            rows.append(row)
    return rows


def summary_row(name: str, m: Metrics) -> dict[str, Any]:
    """The key numbers of one evaluation in a flat row: accuracies, codebook use, IQRs of the residuals."""
    return {"": name, "constituents": m["n_constituents"], "PID accuracy": m["pid_accuracy"],
            "charge accuracy": m["charge_accuracy"], "utilisation": m["utilisation"], "perplexity": m["perplexity"],
            "codes for 90 %": codes_for_fraction(m["token_frequency"]),
            **{f"IQR {RESIDUAL_NAMES[q]}": m["resolution"][q]["iqr"] for q in RESIDUALS}}
