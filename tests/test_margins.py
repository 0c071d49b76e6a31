"""The ECM margin math (supplementary eq. 10-11, 16-20, 24-26) against its stated properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecmctl.core.schemas import BACKGROUND
from ecmctl.dataset.lvis import builtin_counts
from ecmctl.ecm.margins import compute_margins, detection_weight
from ecmctl.ecm.weights import weights_document

counts = st.lists(st.integers(1, 10**6), min_size=2, max_size=40)
bg_ratios = st.one_of(st.none(), st.floats(0.01, 50))
fast = settings(max_examples=40, deadline=None)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


@fast
@given(counts, bg_ratios)
def test_margins_sum_to_one(n, r):
    m = compute_margins(n, r)
    np.testing.assert_allclose(m.margin_pos + m.margin_neg, 1.0, rtol=0, atol=1e-12)
    assert np.all((m.margin_pos > 0) & (m.margin_pos < 1))
    np.testing.assert_allclose(np.exp(-m.log_w_pos), m.margin_pos, rtol=1e-12)
    np.testing.assert_allclose(np.exp(-m.log_w_neg), m.margin_neg, rtol=1e-12)


@fast
@given(counts, bg_ratios)
def test_closed_form_eq_10(n, r):
    """gamma+ = n-^(1/4) / (n+^(1/4) + n-^(1/4)), n- = N - n+ (eq. 10, 26)."""
    m = compute_margins(n, r)
    n_pos = np.asarray(n, float)
    if r is not None:
        n_pos = np.append(n_pos, r * n_pos.sum())
    n_neg = n_pos.sum() - n_pos
    np.testing.assert_allclose(m.n_neg, n_neg)
    np.testing.assert_allclose(m.margin_pos, n_neg**0.25 / (n_pos**0.25 + n_neg**0.25), rtol=1e-10)


@fast
@given(counts, bg_ratios)
def test_rarer_class_gets_larger_positive_margin(n, r):
    m = compute_margins(n, r)
    n_pos = m.n_pos
    i, j = np.meshgrid(np.arange(n_pos.size), np.arange(n_pos.size), indexing="ij")
    rarer = n_pos[i] < n_pos[j]
    assert np.all(m.margin_pos[i][rarer] > m.margin_pos[j][rarer])
    same = n_pos[i] == n_pos[j]
    assert np.all(m.margin_pos[i][same] == m.margin_pos[j][same])


@fast
@given(counts, bg_ratios, st.floats(1e-3, 1e6))
def test_scaling_all_counts_changes_nothing(n, r, k):
    a = compute_margins(n, r)
    b = compute_margins(np.asarray(n, float) * k, r)
    for field in ("margin_pos", "margin_neg", "log_w_pos", "log_w_neg", "det_weight"):
        np.testing.assert_allclose(getattr(b, field), getattr(a, field), rtol=1e-9, atol=1e-12)


@fast
@given(counts, bg_ratios)
def test_decision_boundary_is_at_gamma_pos(n, r):
    """At f = 1/2 (log w- - log w+) the weighted score is 1/2 (eq. 13-16), and sigma(2f) = gamma+ there
    (eq. 17-20)."""
    m = compute_margins(n, r)
    f = 0.5 * (m.log_w_neg - m.log_w_pos)
    np.testing.assert_allclose(sigmoid(2 * f), m.margin_pos, rtol=1e-12)
    w_pos, w_neg = np.exp(m.log_w_pos), np.exp(m.log_w_neg)
    s_hat = w_pos * np.exp(f) / (w_pos * np.exp(f) + w_neg * np.exp(-f))  # eq. 12
    np.testing.assert_allclose(s_hat, 0.5, rtol=1e-12)


@fast
@given(st.floats(1e-3, 1e12))
def test_detection_weight_tends_to_one(a):
    """m = a log(1 + 1/a): 1 - 1/(2a) <= m < 1, so m -> 1 as a -> inf."""
    m = float(detection_weight(np.array([1.0]), np.array([a]))[0])
    assert 1 - 1 / (2 * a) - 1e-12 <= m <= 1.0
    assert m > float(detection_weight(np.array([1.0]), np.array([a / 2]))[0])


def test_detection_weight_limit():
    a = np.logspace(0, 12, 25)
    m = detection_weight(np.ones_like(a), a)
    assert np.all(np.diff(m) > 0) and abs(1 - m[-1]) < 1e-11
    # rare classes (large a) in a real count vector get m ~ 1
    md = compute_margins([1, 10**6, 10**6]).det_weight
    assert 1 - md[0] < 1e-6 and md[0] > md[1]


@pytest.mark.parametrize("bad", [[], [5], [0, 3], [-1, 3], [np.inf, 3], [[1, 2], [3, 4]]])
def test_rejects_bad_counts(bad):
    with pytest.raises(ValueError):
        compute_margins(bad)


@pytest.mark.parametrize("r", [0.0, -1.0, float("nan"), float("inf")])
def test_rejects_bad_bg_ratio(r):
    with pytest.raises(ValueError):
        compute_margins([3, 4], r)


def test_known_lvis_v1_values():
    """The original implementation's values for LVIS v1 train with r = 6.3313 (to 4 decimals)."""
    counts = builtin_counts("lvis_v1")
    assert len(counts["categories"]) == 1203
    assert sum(c["instance_count"] for c in counts["categories"]) == 1_270_141
    doc = weights_document(counts, counts["source"]["sha256"], bg_ratio=6.3313)
    fg, bg = doc["classes"][:-1], doc["classes"][-1]
    assert len(fg) == 1203 and bg["name"] == BACKGROUND

    def span(key):
        v = np.array([c[key] for c in fg])
        return round(float(v.min()), 4), round(float(v.max()), 4)

    assert span("log_w_pos") == (0.0179, 0.2404)
    assert round(bg["log_w_pos"], 4) == 0.9502
    assert span("log_w_neg") == (1.5431, 4.0296)
    assert round(bg["log_w_neg"], 4) == 0.4888
    assert span("det_weight")[0] == 0.9973 and min(c["det_weight"] for c in fg) >= 0.99725
    assert round(bg["det_weight"], 4) == 0.3147
    # the same from the math module directly
    m = compute_margins([c["instance_count"] for c in counts["categories"]], 6.3313)
    assert round(float(m.log_w_pos[-1]), 4) == 0.9502 and m.n_pos.size == 1204
    np.testing.assert_allclose(m.n_pos[-1], 6.3313 * 1_270_141)
