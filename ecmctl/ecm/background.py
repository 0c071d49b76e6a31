"""The background ratio r of supplementary eq. 24 from per-iteration fg/bg label counts: estimate, 95%
bootstrap interval over iterations, and the stopping rule of `ecmctl calibrate`. Pure numpy."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def ratio(trace: np.ndarray) -> float:
    """r = sum(background) / sum(foreground) over the observed iterations (trace rows are [fg, bg])."""
    fg, bg = trace[:, 0].sum(), trace[:, 1].sum()
    return float(bg / fg) if fg > 0 else math.inf


def bootstrap_ci(trace: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of r, resampling iterations with replacement."""
    if len(trace) < 2:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(trace), size=(n_boot, len(trace)))
    fg, bg = trace[idx, 0].sum(1), trace[idx, 1].sum(1)
    valid = fg > 0
    if not valid.any():
        return (math.nan, math.nan)
    rs = bg[valid] / fg[valid]
    lo, hi = np.percentile(rs, [2.5, 97.5])
    return float(lo), float(hi)


def converged(trace: np.ndarray, min_iters: int, rel_tol: float, n_boot: int) -> bool:
    """At least `min_iters` iterations and a 95% interval whose half-width is below rel_tol * r."""
    if len(trace) < max(min_iters, 2):
        return False
    r = ratio(trace)
    lo, hi = bootstrap_ci(trace, n_boot)
    return math.isfinite(r) and r > 0 and (hi - lo) / 2 <= rel_tol * r


def summarize(traces: Sequence[np.ndarray], n_boot: int = 1000) -> list[dict]:
    """Per-stage r, 95% CI and totals."""
    out = []
    for i, t in enumerate(traces):
        lo, hi = bootstrap_ci(t, n_boot)
        out.append({"stage": i, "r": ratio(t), "ci95": [lo, hi], "fg": int(t[:, 0].sum()),
                    "bg": int(t[:, 1].sum()), "iters": len(t), "trace": t.astype(int).tolist()})
    return out
