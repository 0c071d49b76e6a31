"""Statistics over seeds, for comparing two methods run with the same seeds (the demo: ECM vs BCE).

Pure functions on plain floats. A method's value per seed is summarised by its mean and sample standard
deviation; the comparison uses the differences paired by seed (ECM − BCE of the same seed), their mean and
a two-sided Student t-interval with n − 1 degrees of freedom. Pairing removes what the seed does to both
methods alike (the same initial weights, data order and augmentation), so it is the honest interval for
few seeds; with 3 seeds t(0.975, 2) = 4.303, so the interval is wide unless the differences agree.
Undefined values (None, NaN or negative metrics: -1 marks an undefined LVIS metric) are left out, and a
seed where either method is undefined has no difference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

LEVEL = 0.95
INTERVAL = "paired t-interval (95%, df = n - 1) of the per-seed differences"

# two-sided 95% Student t quantiles t(0.975, df) for df = 1..30 (used when scipy is not installed)
T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010, 2.1788,
        2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687, 2.0639,
        2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)
Z975 = 1.959964


def defined(v) -> bool:
    """A metric value that exists: a finite, non-negative number (LVIS writes -1 for undefined)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def metric_value(doc: dict, iou: str, key: str) -> float | None:
    """metrics.json's `doc[iou][key]`, or None when absent or undefined (-1, NaN)."""
    v = (doc.get(iou) or {}).get(key)
    return float(v) if defined(v) else None


def mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def sd(xs: Sequence[float]) -> float | None:
    """Sample standard deviation (n − 1 in the denominator); None for fewer than 2 values."""
    if len(xs) < 2:
        return None
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def paired_differences(a: Sequence, b: Sequence) -> list[float | None]:
    """b[i] − a[i] per seed (the same position is the same seed); None where either is undefined."""
    if len(a) != len(b):
        raise ValueError(f"paired values need the same seeds: {len(a)} against {len(b)} values")
    return [y - x if defined(x) and defined(y) else None for x, y in zip(a, b, strict=True)]


def t_quantile(df: int, level: float = LEVEL) -> float:
    """The two-sided Student t quantile t((1 + level) / 2, df): scipy's when installed, else a table (95%)."""
    if df < 1:
        raise ValueError(f"a t quantile needs df >= 1, got {df}")
    try:
        from scipy.stats import t
    except ImportError:
        if abs(level - 0.95) > 1e-12:
            raise ValueError(f"without scipy only the 95% level is tabulated, got {level}") from None
        if df <= len(T975):
            return T975[df - 1]
        z = Z975  # Cornish-Fisher expansion in 1/df: within 1e-4 of the exact value for df > 30
        return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
    return float(t.ppf((1 + level) / 2, df))


def t_interval(xs: Sequence[float], level: float = LEVEL) -> tuple[float, float] | None:
    """mean ± t((1 + level) / 2, n − 1) · sd / sqrt(n); None for fewer than 2 values."""
    if len(xs) < 2:
        return None
    m, s = mean(xs), sd(xs)
    half = t_quantile(len(xs) - 1, level) * s / math.sqrt(len(xs))
    return m - half, m + half


def summarize(values: Sequence) -> dict:
    """One method over seeds: {"values" (per seed, None = undefined), "n", "mean", "sd"}."""
    vals = [float(v) if defined(v) else None for v in values]
    ok = [v for v in vals if v is not None]
    return {"values": vals, "n": len(ok), "mean": mean(ok), "sd": sd(ok)}


def compare(base: Sequence, other: Sequence, level: float = LEVEL) -> dict:
    """`other` against `base`, paired by seed: each summarised, and the differences other − base with
    {"values", "n", "mean", "sd", "df", "t", "ci"} (ci: [lo, hi] of the t-interval, None for n < 2)."""
    diffs = paired_differences(base, other)
    ok = [d for d in diffs if d is not None]
    ci = t_interval(ok, level)
    return {"base": summarize(base), "other": summarize(other),
            "diff": {"values": diffs, "n": len(ok), "mean": mean(ok), "sd": sd(ok),
                     "df": len(ok) - 1 if len(ok) >= 2 else None,
                     "t": t_quantile(len(ok) - 1, level) if len(ok) >= 2 else None,
                     "ci": list(ci) if ci is not None else None, "level": level}}
