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


def estimate(trace: np.ndarray, n_boot: int = 1000) -> tuple[float, float, float]:
    """(r, lo, hi): r and its 95% bootstrap interval."""
    return (ratio(trace), *bootstrap_ci(trace, n_boot))


def precise_enough(est: tuple[float, float, float], iters: int, min_iters: int, rel_tol: float) -> bool:
    """The stopping rule: at least `min_iters` iterations and a 95% interval whose half-width is below
    rel_tol * r (`est` from `estimate`, computed once per iteration for the progress bar and this rule)."""
    r, lo, hi = est
    return iters >= max(min_iters, 2) and math.isfinite(r) and r > 0 and (hi - lo) / 2 <= rel_tol * r


def converged(trace: np.ndarray, min_iters: int, rel_tol: float, n_boot: int) -> bool:
    """`precise_enough` for a trace (no bootstrap before `min_iters` iterations)."""
    if len(trace) < max(min_iters, 2):
        return False
    return precise_enough(estimate(trace, n_boot), len(trace), min_iters, rel_tol)


def summarize(traces: Sequence[np.ndarray], n_boot: int = 1000) -> list[dict]:
    """Per-stage r, 95% CI and totals."""
    out = []
    for i, t in enumerate(traces):
        lo, hi = bootstrap_ci(t, n_boot)
        out.append({"stage": i, "r": ratio(t), "ci95": [lo, hi], "fg": int(t[:, 0].sum()),
                    "bg": int(t[:, 1].sum()), "iters": len(t), "trace": t.astype(int).tolist()})
    return out
