"""The study's statistics (`llm_runs.experiment.study`): running means, means with 95 % t intervals, proportions
with 95 % Wilson intervals, and the correlation of two series' fluctuations once their shared trend is removed."""

from __future__ import annotations

import math
import warnings

import numpy as np

COUPLING_WIDTH = 21  # steps of the centred running mean taken off ρ_t and I_t before correlating them


def running_mean(values: list, width: int) -> np.ndarray:
    """(steps,) values → (steps − width + 1,) means of `width` consecutive ones (a run shorter: its mean)."""
    x = np.asarray([np.nan if v is None else v for v in values], dtype=float)
    width = max(1, min(width, len(x)))
    return np.convolve(x, np.ones(width) / width, mode="valid")


def fluctuation_correlation(x, y, width: int = COUPLING_WIDTH) -> float | None:
    """Pearson correlation of (steps,) x and y's fluctuations, each minus its centred running mean over `width`
    steps (the trend both share, as I falls over training, is removed); None where either is flat or undefined."""
    x, y = (np.asarray([np.nan if v is None else v for v in z], dtype=float) for z in (x, y))
    if len(x) < width + 2 or not (np.isfinite(x).all() and np.isfinite(y).all()):
        return None
    half = width // 2
    dx, dy = (z[half:len(z) - half] - running_mean(z, width) for z in (x, y))
    if dx.std() < 1e-12 or dy.std() < 1e-12:
        return None
    return float(np.corrcoef(dx, dy)[0, 1])


def t_interval(values) -> dict:
    """Mean and its 95 % t interval ((n,) values); no interval from fewer than two."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    out = {"n": int(len(x)), "mean": float(x.mean()) if len(x) else None, "low": None, "high": None}
    if len(x) > 1 and np.ptp(x) > 0:
        with warnings.catch_warnings():  # values equal but for rounding (a mean ρ of 1.0 ± 1e-16): a correct,
            warnings.filterwarnings("ignore", "Precision loss", RuntimeWarning)  # near-empty interval, no alarm
            low, high = stats.ttest_1samp(x, 0.0).confidence_interval(0.95)
        out.update(low=float(low), high=float(high))
    elif len(x) > 1:
        out.update(low=float(x[0]), high=float(x[0]))  # all equal: no spread
    return out


def wilson(k: int, n: int) -> dict:
    """A proportion k/n with its 95 % Wilson interval (a t interval is wrong for 0 or n of n)."""
    if n == 0:
        return {"k": 0, "n": 0, "rate": None, "low": None, "high": None}
    z, p = 1.959963984540054, k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # at 0 or n of n the bound is exactly 0 or 1 (the formula gives it up to rounding)
    return {"k": k, "n": n, "rate": p, "low": 0.0 if k == 0 else max(0.0, centre - half),
            "high": 1.0 if k == n else min(1.0, centre + half)}
