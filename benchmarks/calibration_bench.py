"""The calibration hook's cost against the run's length: the hook as it is, and the previous algorithm, in one run.

Both are driven through N iterations of synthetic per-iteration (fg, bg) RoI label counts (fg ~ Poisson(32),
bg ~ Poisson(6.3 fg), one RoI stage, the default 1000 bootstrap resamples, rel_tol=0 so that neither stops early):

- `hook`: ecmctl's CalibrationHook.after_train_iter (running sums every iteration, the bootstrap on a geometric
  schedule, ecm.background.StoppingRule);
- `previous`: what the hook did before at iteration N: rebuild the trace array and bootstrap the whole trace
  (one (n_boot, N) resample draw, the previous bootstrap_ci, kept here verbatim). Timed at iteration N only: a
  whole previous run costs about N/2 times that (quadratic; hours at 20,000 on a busy CPU).

Printed: times, peak traced memory (tracemalloc: numpy's buffers included) and the ratios, at 200, 2,000 and
20,000 iterations. The final interval (`summarize`) is checked equal to the previous bootstrap_ci's.

    python benchmarks/calibration_bench.py            # 200, 2,000, 20,000 iterations
    python benchmarks/calibration_bench.py --iters 200 2000
"""

from __future__ import annotations

import argparse
import math
import time
import tracemalloc
from types import SimpleNamespace

import numpy as np

from ecmctl.ecm.background import StoppingRule, ratio, summarize
from ecmctl.engine.hooks.calibration import CalibrationHook, LabelCounter


def previous_bootstrap_ci(trace: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """bootstrap_ci before the change: the whole (n_boot, n) draw at once."""
    if len(trace) < 2:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(trace), size=(n_boot, len(trace)))
    fg, bg = trace[idx, 0].sum(1), trace[idx, 1].sum(1)
    valid = fg > 0
    if not valid.any():
        return (math.nan, math.nan)
    lo, hi = np.percentile(bg[valid] / fg[valid], [2.5, 97.5])
    return float(lo), float(hi)


def counts(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    fg = rng.poisson(32, n)
    return np.stack([fg, rng.poisson(6.3 * fg)], axis=1)


def run_hook(rows: np.ndarray, n_boot: int) -> tuple[float, int, tuple]:
    """CalibrationHook.after_train_iter N times (its label counters fed the synthetic counts)."""
    hook = CalibrationHook(min_iters=20, rel_tol=0.0, bootstrap=n_boot, progress=False)
    hook.counters = [LabelCounter(1)]
    hook.rule = StoppingRule(1, hook.min_iters, hook.rel_tol, n_boot)
    runner = SimpleNamespace(train_loop=SimpleNamespace(stop_training=False), rank=0)
    tracemalloc.start()
    t0 = time.perf_counter()
    for fg, bg in rows:
        hook.counters[0].fg, hook.counters[0].bg = int(fg), int(bg)
        hook.after_train_iter(runner, 0)
    dt = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return dt, peak, hook.rule.traces[0]


def previous_iteration(trace: np.ndarray, n_boot: int, repeat: int = 3) -> tuple[float, int]:
    """The previous hook's work at iteration len(trace) (the trace as an array, r, a whole-trace bootstrap):
    the best of `repeat` times, and its peak memory."""
    rows = [tuple(map(int, r)) for r in trace]
    best, peak = math.inf, 0
    for _ in range(repeat):
        tracemalloc.start()
        t0 = time.perf_counter()
        arr = np.asarray(rows, dtype=np.float64).reshape(-1, 2)
        ratio(arr), previous_bootstrap_ci(arr, n_boot)
        best = min(best, time.perf_counter() - t0)
        peak = max(peak, tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    return best, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, nargs="+", default=[200, 2000, 20000])
    ap.add_argument("--bootstrap", type=int, default=1000)
    args = ap.parse_args()
    print("per iteration: the previous hook's cost at iteration N (it grows with N: a run costs about N/2 times "
          "it); the hook's mean over a whole run of N")
    print(f"{'N':>7} | {'previous: iter N':>16} {'run (~N/2 x)':>12} {'peak MB':>8} | {'hook: run':>9} "
          f"{'per iter':>9} {'peak MB':>8} | {'per-iter ratio':>14} {'memory ratio':>12}")
    for n in args.iters:
        rows = counts(n)
        new_t, new_m, new_trace = run_hook(rows, args.bootstrap)
        old_t, old_m = previous_iteration(rows, args.bootstrap)
        trace = np.asarray(new_trace, dtype=np.float64)
        got = summarize([trace], args.bootstrap)[0]
        assert got["ci95"] == list(previous_bootstrap_ci(trace, args.bootstrap)), "the summary changed"
        print(f"{n:>7,} | {old_t * 1e3:>13.1f} ms {old_t * n / 2:>10.1f} s {old_m / 2**20:>8.1f} | "
              f"{new_t:>7.2f} s {new_t / n * 1e3:>6.3f} ms {new_m / 2**20:>8.1f} | "
              f"{old_t / (new_t / n):>13.1f}x {old_m / new_m:>11.1f}x")


if __name__ == "__main__":
    main()
