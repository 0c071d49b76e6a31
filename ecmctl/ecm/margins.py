"""Effective class-margins: the pure math of the ECM paper (supplementary eq. 10-11, 12, 24-26).

One implementation, used by `ecmctl weights`, by `calibrate` and by the losses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Margins:
    """Per-class quantities, in class order (background last when present)."""

    n_pos: np.ndarray
    n_neg: np.ndarray
    margin_pos: np.ndarray  # gamma+
    margin_neg: np.ndarray  # gamma-
    log_w_pos: np.ndarray  # -log gamma+
    log_w_neg: np.ndarray  # -log gamma-
    det_weight: np.ndarray  # m = a log(1 + 1/a), a = n-/n+


def background_count(n_pos: np.ndarray, bg_ratio: float) -> float:
    """Eq. 24: the dataset-level background count from the measured fg:bg ratio r."""
    return float(bg_ratio) * float(np.sum(n_pos))


def log_margins(n_pos: np.ndarray, n_neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log gamma+, log gamma- of eq. 10-11 in log-sigmoid form (no overflow, no 0/0).

    gamma+ = n-^1/4 / (n+^1/4 + n-^1/4) = sigmoid(t), t = (log n- - log n+) / 4.
    """
    t = 0.25 * (np.log(n_neg) - np.log(n_pos))
    return -np.logaddexp(0.0, -t), -np.logaddexp(0.0, t)


def detection_weight(n_pos: np.ndarray, n_neg: np.ndarray) -> np.ndarray:
    """m = a log(1 + 1/a) with a = n-/n+; tends to 1 for rare classes (a -> inf)."""
    a = np.asarray(n_neg, dtype=np.float64) / np.asarray(n_pos, dtype=np.float64)
    return a * np.log1p(1.0 / a)


def compute_margins(instance_counts, bg_ratio: float | None = None) -> Margins:
    """Margins, weights and detection weights for every class (eq. 10-11, 24-26).

    With `bg_ratio` a background class is appended last, n_bg = r * sum(n+) (two-stage heads);
    without it only foreground classes are counted (one-stage heads, supplementary section 6).
    """
    n_pos = np.asarray(instance_counts, dtype=np.float64)
    if n_pos.ndim != 1 or n_pos.size == 0:
        raise ValueError("instance_counts must be a non-empty 1-d sequence")
    if np.any(~np.isfinite(n_pos)) or np.any(n_pos <= 0):
        raise ValueError("every instance count must be finite and > 0")
    if bg_ratio is not None:
        if not np.isfinite(bg_ratio) or bg_ratio <= 0:
            raise ValueError(f"bg_ratio must be finite and > 0, got {bg_ratio}")
        n_pos = np.append(n_pos, background_count(n_pos, bg_ratio))
    n_neg = n_pos.sum() - n_pos  # eq. 26
    if np.any(n_neg <= 0):
        raise ValueError("need at least two classes with instances (n- would be 0)")
    log_gp, log_gn = log_margins(n_pos, n_neg)
    return Margins(
        n_pos=n_pos,
        n_neg=n_neg,
        margin_pos=np.exp(log_gp),
        margin_neg=np.exp(log_gn),
        log_w_pos=-log_gp,
        log_w_neg=-log_gn,
        det_weight=detection_weight(n_pos, n_neg),
    )
