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


BOOT_CHUNK_ELEMENTS = 1 << 18  # resampled iterations held at once: memory bounded whatever the trace's length


def bootstrap_ci(trace: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of r, resampling iterations with replacement.

    The resamples are drawn in blocks of rows from one generator, which gives the numbers of a single
    (n_boot, n) draw (numpy's bounded integers are drawn one after another) in O(BOOT_CHUNK_ELEMENTS) memory:
    at 20,000 iterations a single draw held 361 MB."""
    n = len(trace)
    if n < 2:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    fg, bg = np.empty(n_boot), np.empty(n_boot)
    rows = max(1, BOOT_CHUNK_ELEMENTS // n)
    for start in range(0, n_boot, rows):
        idx = rng.integers(0, n, size=(min(rows, n_boot - start), n))
        fg[start:start + len(idx)] = trace[idx, 0].sum(1)
        bg[start:start + len(idx)] = trace[idx, 1].sum(1)
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


CHECK_GROWTH = 1 / 16  # the stopping rule is evaluated when the trace has grown by this fraction since the last time


class StoppingRule:
    """`ecmctl calibrate`'s stopping rule over a growing trace per stage, at a cost per iteration that does not
    grow with the iteration count.

    Bootstrapping the whole trace every iteration cost O(n_boot x n) at iteration n, quadratic over a run (6.6 s of
    hook time at 20,000 iterations). The rule is `precise_enough` as before, evaluated on a geometric schedule: at
    min_iters, then whenever the trace is CHECK_GROWTH longer than at the last evaluation, so the resampling over a
    run of N iterations totals about n_boot x N x (1 + 1/CHECK_GROWTH), a constant per iteration. A run stops at
    the first evaluation where every stage is precise enough: at most CHECK_GROWTH x n iterations after the
    iteration the every-iteration rule would have stopped at, with r and its interval still `summarize`'s over
    the whole trace (ratio(), bootstrap_ci(): unchanged). r itself is kept up to date every iteration from running
    sums (the progress bar); the interval is the last evaluation's."""

    def __init__(self, stages: int, min_iters: int, rel_tol: float, n_boot: int) -> None:
        self.min_iters, self.rel_tol, self.n_boot = max(min_iters, 2), rel_tol, n_boot
        self.traces: list[list[tuple[int, int]]] = [[] for _ in range(stages)]
        self.sums = np.zeros((stages, 2))
        self.next_check = self.min_iters
        self.interval: tuple[float, float] = (math.nan, math.nan)  # stage 0's, at the last evaluation
        self.resampled = 0  # iterations resampled by every bootstrap so far: the rule's work

    @property
    def iters(self) -> int:
        return len(self.traces[0]) if self.traces else 0

    def r(self, stage: int = 0) -> float:
        fg, bg = self.sums[stage]
        return float(bg / fg) if fg > 0 else math.inf

    def add(self, rows: Sequence[tuple[int, int]]) -> bool:
        """Record one iteration's (fg, bg) per stage; True once training may stop."""
        for trace, row in zip(self.traces, rows):
            trace.append((int(row[0]), int(row[1])))
        self.sums += np.asarray(rows, dtype=np.float64).reshape(-1, 2)
        n = self.iters
        if not self.traces or n < self.next_check:
            return False
        self.next_check = max(n + 1, math.ceil(n * (1 + CHECK_GROWTH)))
        done = True
        for i, trace in enumerate(self.traces):
            est = estimate(np.asarray(trace, dtype=np.float64), self.n_boot)
            self.resampled += self.n_boot * n
            if i == 0:
                self.interval = est[1:]
            done = done and precise_enough(est, n, self.min_iters, self.rel_tol)
            if not done:
                break
        return done
