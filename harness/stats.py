"""Statistics for small golden suites: every number a gate uses comes with its uncertainty.

All distributions come from scipy/statsmodels. Paired designs are used wherever two variants answered
the same cases, because pairing removes the between-case variance that makes small suites noisy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

ALPHA = 0.05
POWER = 0.8


def wilson(passed: int, n: int, alpha: float = ALPHA) -> tuple[float, float] | None:
    from statsmodels.stats.proportion import proportion_confint

    if n == 0:
        return None
    lo, hi = proportion_confint(passed, n, alpha=alpha, method="wilson")
    return float(lo), float(hi)


def mcnemar_worse(broken: int, fixed: int) -> float:
    """One-sided exact McNemar: P(at least `broken` of the discordant pairs go the bad way | no change)."""
    from scipy.stats import binomtest

    n = broken + fixed
    if n == 0:
        return 1.0
    return float(binomtest(broken, n, 0.5, alternative="greater").pvalue)


def paired_bootstrap(
    before: Sequence[float], after: Sequence[float], alpha: float = ALPHA, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of mean(after - before) resampling cases (pairs stay together)."""
    from scipy.stats import bootstrap

    diff = np.asarray(after, dtype=float) - np.asarray(before, dtype=float)
    if diff.size < 2 or np.all(diff == diff[0]):
        d = float(diff.mean()) if diff.size else 0.0
        return d, d
    res = bootstrap(
        (diff,),
        np.mean,
        confidence_level=1 - alpha,
        n_resamples=resamples,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def mde(n: int, baseline: float | None, alpha: float = ALPHA, power: float = POWER) -> float | None:
    """Smallest drop in a pass rate a one-sided test finds with the given power at this many cases.

    statsmodels solves for Cohen's h; it is turned back into percentage points at the baseline rate.
    """
    from statsmodels.stats.power import NormalIndPower

    if n < 2 or (baseline is not None and baseline <= 0):
        return None  # nothing can drop below zero
    h = float(
        NormalIndPower().solve_power(
            effect_size=None, nobs1=n, alpha=alpha, power=power, ratio=1.0, alternative="larger"
        )
    )
    p = min(max(baseline if baseline is not None else 0.5, 1e-6), 1 - 1e-6)
    lowered = math.sin(max(2 * math.asin(math.sqrt(p)) - h, 0.0) / 2) ** 2
    return round(p - lowered, 4)


def compare_paired(
    before: Sequence[float],
    after: Sequence[float],
    margin: float,
    binary: bool,
    alpha: float = ALPHA,
    resamples: int = 2000,
) -> dict[str, Any]:
    """Non-inferiority of `after` against `before` on the same cases.

    pass: the interval of the difference lies above -margin. fail: for rates, the exact McNemar test
    finds a significant drop larger than the margin would allow (or the whole interval lies below
    -margin). Anything else is inconclusive: the suite cannot tell at this size.
    """
    n = len(before)
    if n == 0:
        return {"verdict": "fail", "n": 0, "explanation": "zero cases were compared: a gate never passes on nothing"}
    b = np.asarray(before, dtype=float)
    a = np.asarray(after, dtype=float)
    delta = float(a.mean() - b.mean())
    lo, hi = paired_bootstrap(b, a, alpha, resamples)
    out: dict[str, Any] = {
        "n": n,
        "value": float(a.mean()),
        "baseline_value": float(b.mean()),
        "delta": delta,
        "delta_ci95": [lo, hi],
        "margin": margin,
    }
    p_value = None
    if binary:
        broken = int(np.sum((b >= 1) & (a < 1)))
        fixed = int(np.sum((b < 1) & (a >= 1)))
        p_value = mcnemar_worse(broken, fixed)
        out.update(
            broken=broken, fixed=fixed, p_value=p_value, test="exact McNemar (one-sided) + paired bootstrap interval"
        )
        significant_drop = p_value < alpha and delta < -margin
    else:
        out.update(p_value=None, test="paired bootstrap")
        significant_drop = False
    if lo > -margin or (margin == 0 and lo >= 0 and delta >= 0):
        verdict = "pass"
    elif significant_drop or hi < -margin:
        verdict = "fail"
    else:
        verdict = "inconclusive"
    out["verdict"] = verdict
    return out
