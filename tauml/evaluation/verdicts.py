"""Verdicts that the numbers support: is model A better than model B, beyond the run-to-run noise?

Training is not bit-reproducible across machines (CPU kernels differ, and small differences grow through
training), so a finding must hold beyond the spread over seeds, not only in one run.  The rule:

* each model is trained with several seeds; its value is the mean over seeds, its uncertainty the standard
  error of that mean, ``s / sqrt(n)`` with ``s`` the sample standard deviation (``ddof=1``);
* where the metric is also a count on a finite test set (the mis-ID rate: Poisson, ``sqrt(k) / n``), that
  counting error is added in quadrature (the seeds share one test set, so it does not shrink with more seeds);
* the difference ``d = A - B`` (signed so that positive means A is better) has the uncertainty
  ``sigma = sqrt(se_A^2 + se_B^2 + stat_A^2 + stat_B^2)``;
* the verdict is **better** when ``d > k sigma``, **worse** when ``d < -k sigma``, and otherwise **no
  significant difference**, with ``k`` the two-sided quantile of Student's t distribution for the
  Welch-Satterthwaite degrees of freedom ``nu = sigma^4 / sum(se_i^4 / (n_i - 1))`` (the counting errors have
  infinitely many): Welch's t-test.  Three seeds per model give ``nu`` between 2 and 4: a standard error from
  three numbers is itself uncertain, and a fixed ``k = 2`` let verdicts flip between two runs that differed only
  in their CPU thread count (docs/studies.md);
* **a table of verdicts is one family of tests** (``comparisons=m``, Bonferroni): each of its ``m``
  comparisons is tested at ``1 - 0.05 / m``, so that the chance of *any* false "better" or "worse" in the
  table stays at 5 %.  At 95 % each, a table of twelve comparisons with no real difference shows at least one
  false finding in about half of the runs, and another machine then shows a different one;
* with fewer than two seeds and no counting error there is no uncertainty to compare with: the verdict is
  **undetermined** and the text says so.

    compare([0.021, 0.019, 0.020], [0.030, 0.026, 0.034], higher_is_better=False)
    # Comparison(verdict='better', difference=0.0100, uncertainty=0.0024, threshold=3.7, ...)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

#: The two-sided confidence level of a family of tests (the rule above): of one comparison alone, or of all the
#: comparisons of one table together (Bonferroni).
CONFIDENCE = 0.95
BETTER, WORSE, NO_DIFFERENCE, UNDETERMINED = "better", "worse", "no significant difference", "undetermined"


@dataclass(frozen=True)
class Summary:
    """A model's metric over seeds: ``mean``, sample standard deviation ``std`` (ddof=1; 0 for one seed),
    standard error of the mean ``sem``, the number of seeds ``n`` and the counting error ``stat`` (0 if none)."""

    mean: float
    std: float
    sem: float
    n: int
    stat: float = 0.0

    def text(self, digits: int = 3) -> str:
        """``mean ± std`` over seeds (and ``± stat`` counting error), e.g. ``0.0213 ± 0.0021 (3 seeds)``."""
        out = f"{self.mean:.{digits}g}"
        if self.n > 1:
            out += f" ± {self.std:.2g} ({self.n} seeds)"
        else:
            out += " (1 seed)"
        if self.stat > 0:
            out += f" ± {self.stat:.2g} (stat.)"
        return out


def summarize(values: Sequence[float], stat: float = 0.0) -> Summary:
    """Mean, spread and standard error of one model's metric over seeds (NaN values are refused)."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or len(array) == 0:
        raise ValueError(f"give the metric of each seed as a flat list of numbers, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"the metric values {array.tolist()} contain NaN or infinity; a training diverged")
    n = len(array)
    std = float(array.std(ddof=1)) if n > 1 else 0.0
    return Summary(mean=float(array.mean()), std=std, sem=std / math.sqrt(n) if n > 1 else 0.0, n=n,
                   stat=float(stat))


@dataclass(frozen=True)
class Comparison:
    """A against B on one metric: the summaries, the signed difference (positive = A better), its uncertainty,
    the relative change of A over B (positive = better) and the verdict (:data:`BETTER`, :data:`WORSE`,
    :data:`NO_DIFFERENCE` or :data:`UNDETERMINED`)."""

    a: Summary
    b: Summary
    higher_is_better: bool
    difference: float
    uncertainty: float
    relative: float
    verdict: str
    threshold: float = 1.96  # k: how many uncertainties the difference must exceed
    dof: float = math.inf  # Welch-Satterthwaite degrees of freedom of the uncertainty
    comparisons: int = 1  # the size of the family this comparison was tested in (Bonferroni)

    @property
    def relative_uncertainty(self) -> float:
        """The uncertainty relative to B's mean, the scale of :attr:`relative` (infinite when B's mean is 0)."""
        return self.uncertainty / abs(self.b.mean) if self.b.mean else math.inf

    @property
    def significance(self) -> float:
        """``difference / uncertainty`` (infinite when the uncertainty is zero and the difference is not)."""
        if self.uncertainty > 0:
            return self.difference / self.uncertainty
        return math.copysign(math.inf, self.difference) if self.difference else 0.0

    def text(self) -> str:
        """The verdict with its evidence, e.g. ``better (+38 % ± 9 %, 4.2σ, needs 3.9σ)``, or ``... needs 9.5σ as
        1 of 12 tests)`` in a family."""
        if self.verdict == UNDETERMINED:
            return f"undetermined ({self.relative:+.0%} from one seed; no spread to compare with)"
        family = f" as 1 of {self.comparisons} tests" if self.comparisons > 1 else ""
        return (f"{self.verdict} ({self.relative:+.0%} ± {self.relative_uncertainty:.0%}, "
                f"{self.significance:+.1f}σ, needs {self.threshold:.1f}σ{family})")


def bonferroni_confidence(comparisons: int = 1) -> float:
    """The confidence level at which each of ``comparisons`` tests of one family is made (Bonferroni): the
    family's :data:`CONFIDENCE` for one test, ``1 - 0.05 / m`` for ``m`` (e.g. 0.9958 for 12)."""
    if int(comparisons) != comparisons or comparisons < 1:
        raise ValueError(f"comparisons={comparisons!r}: give the number of comparisons of the family, at least 1")
    return 1.0 - (1.0 - CONFIDENCE) / comparisons


def _quantile(confidence: float, dof: float) -> float:
    """The two-sided Student-t (normal for infinite ``dof``) quantile of ``confidence``."""
    upper = 0.5 + confidence / 2
    return float(stats.t.ppf(upper, dof)) if math.isfinite(dof) else float(stats.norm.ppf(upper))


def threshold(sems: Sequence[float], seeds: Sequence[int], stats_: Sequence[float] = (),
              comparisons: int = 1) -> tuple[float, float]:
    """``(k, nu)``: the Student-t quantile the difference must exceed, in units of its uncertainty, and the
    Welch-Satterthwaite degrees of freedom of ``sqrt(sum(sems^2) + sum(stats_^2))`` (a standard error from
    ``n`` seeds has ``n - 1`` degrees of freedom; a counting error infinitely many), for one test of a family of
    ``comparisons`` (:func:`bonferroni_confidence`)."""
    variance = sum(s**2 for s in sems) + sum(s**2 for s in stats_)
    denominator = sum(s**4 / (n - 1) for s, n in zip(sems, seeds, strict=True) if n > 1 and s > 0)
    dof = variance**2 / denominator if denominator > 0 else math.inf
    return _quantile(bonferroni_confidence(comparisons), dof), dof


def verdict_of(difference: float, uncertainty: float, k: float) -> str:
    """The rule itself: :data:`BETTER` when ``difference`` (positive = better) exceeds ``k`` times its
    ``uncertainty``, :data:`WORSE` below minus that, :data:`NO_DIFFERENCE` between."""
    if difference > k * uncertainty:
        return BETTER
    if difference < -k * uncertainty:
        return WORSE
    return NO_DIFFERENCE


def compare(a: Sequence[float] | Summary, b: Sequence[float] | Summary, higher_is_better: bool,
            stat_a: float = 0.0, stat_b: float = 0.0, k: float | None = None, comparisons: int = 1) -> Comparison:
    """The verdict of A against B (see the module's rule).  ``a``/``b`` are the metric per seed (or a
    :class:`Summary`); ``stat_*`` their counting errors; ``comparisons`` the number of comparisons of the table
    this one belongs to (Bonferroni); ``k`` overrides the Welch threshold."""
    sa = a if isinstance(a, Summary) else summarize(a, stat_a)
    sb = b if isinstance(b, Summary) else summarize(b, stat_b)
    sign = 1.0 if higher_is_better else -1.0
    difference = sign * (sa.mean - sb.mean)
    uncertainty = math.sqrt(sa.sem**2 + sb.sem**2 + sa.stat**2 + sb.stat**2)
    relative = difference / abs(sb.mean) if sb.mean else math.copysign(math.inf, difference) if difference else 0.0
    welch_k, dof = threshold((sa.sem, sb.sem), (sa.n, sb.n), (sa.stat, sb.stat), comparisons=comparisons)
    k = welch_k if k is None else k
    if uncertainty == 0.0 and (sa.n < 2 or sb.n < 2):
        verdict = UNDETERMINED
    else:
        verdict = verdict_of(difference, uncertainty, k)
    return Comparison(a=sa, b=sb, higher_is_better=higher_is_better, difference=difference,
                      uncertainty=uncertainty, relative=relative, verdict=verdict, threshold=k, dof=dof,
                      comparisons=comparisons)


def consistent(a: Comparison | tuple[float, float, float], b: Comparison | tuple[float, float, float]) -> bool:
    """Do two runs measure the same difference?  ``a`` and ``b`` are two runs' results of one comparison: each a
    :class:`Comparison` or ``(difference, uncertainty, dof)``.  True when the two differences agree within
    Welch's 95 % interval of their combined uncertainty (``sqrt(u_a^2 + u_b^2)``, the degrees of freedom
    combined by Welch-Satterthwaite), the same rule as :func:`compare`.

    Two runs of a borderline claim can disagree on the verdict while measuring the same difference: this says
    whether the measurements themselves disagree (``benchmarks/verdict_stability.py``)."""
    (da, ua, na), (db, ub, nb) = ((c.difference, c.uncertainty, c.dof) if isinstance(c, Comparison) else c
                                  for c in (a, b))
    for value in (da, ua, db, ub):
        if not math.isfinite(value):
            raise ValueError(f"differences and uncertainties must be finite numbers, got {a} and {b}")
    if na < 1 or nb < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {na} and {nb}")
    variance = ua**2 + ub**2
    if variance == 0.0:
        return da == db
    parts = [u**4 / n for u, n in ((ua, na), (ub, nb)) if math.isfinite(n) and u > 0]
    dof = variance**2 / sum(parts) if parts else math.inf
    return abs(da - db) <= _quantile(CONFIDENCE, dof) * math.sqrt(variance)


def best_of(values: dict[object, Sequence[float]], higher_is_better: bool,
            k: float | None = None, comparisons: int | None = None) -> tuple[object, list[object]]:
    """The option with the best mean, and every option not significantly worse than it (the "tied for best"
    set, the best included), by the rule of :func:`compare`; the family is the comparisons with the best
    (``len(values) - 1``) unless ``comparisons`` says otherwise."""
    if not values:
        raise ValueError("no options to rank")
    summaries = {key: summarize(v) for key, v in values.items()}
    best = (max if higher_is_better else min)(summaries, key=lambda key: summaries[key].mean)
    tied = [key for key in summaries
            if key == best or compare(summaries[key], summaries[best], higher_is_better, k=k,
                                      comparisons=comparisons or max(len(values) - 1, 1)).verdict != WORSE]
    return best, tied
