"""ecmctl.pipeline.seeds: mean, sd, paired differences and the t-interval, on known values."""

from __future__ import annotations

import math
import sys

import pytest

from ecmctl.pipeline import seeds
from ecmctl.pipeline.seeds import compare, mean, paired_differences, sd, summarize, t_interval, t_quantile


def test_mean_and_sample_sd():
    assert mean([1.0, 2.0, 6.0]) == 3.0
    assert sd([1.0, 2.0, 6.0]) == pytest.approx(math.sqrt(7.0))  # ((4 + 1 + 9) / (3 - 1)) ** 0.5
    assert mean([]) is None and sd([]) is None and sd([5.0]) is None
    assert sd([2.0, 2.0]) == 0.0


@pytest.mark.parametrize(("df", "t"), [(1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (10, 2.2281),
                                       (30, 2.0423), (60, 2.0003), (1000, 1.9623)])
def test_t_quantile_known_values(df, t):
    assert t_quantile(df) == pytest.approx(t, abs=2e-4)


def test_t_quantile_table_agrees_with_scipy(monkeypatch):
    scipy_stats = pytest.importorskip("scipy.stats")
    monkeypatch.setitem(sys.modules, "scipy.stats", None)  # `from scipy.stats import t` -> ImportError
    for df in (*range(1, 41), 60, 120, 1000):
        assert t_quantile(df) == pytest.approx(float(scipy_stats.t.ppf(0.975, df)), abs=1e-4), df
    with pytest.raises(ValueError, match="95%"):
        t_quantile(2, level=0.9)
    with pytest.raises(ValueError, match="df >= 1"):
        t_quantile(0)


def test_t_interval_known_values():
    # differences 1, 2, 6: mean 3, sd sqrt(7), half-width 4.3027 * sqrt(7) / sqrt(3)
    lo, hi = t_interval([1.0, 2.0, 6.0])
    half = 4.302653 * math.sqrt(7.0) / math.sqrt(3.0)
    assert (lo, hi) == (pytest.approx(3.0 - half, abs=1e-4), pytest.approx(3.0 + half, abs=1e-4))
    lo, hi = t_interval([0.1, 0.3])  # n = 2: df 1, t = 12.706, sd = 0.1414
    assert (lo + hi) / 2 == pytest.approx(0.2) and hi - lo == pytest.approx(2 * 12.7062 * 0.1, abs=1e-3)
    assert t_interval([0.5]) is None and t_interval([]) is None


def test_paired_differences_pair_by_seed_and_skip_undefined():
    assert paired_differences([0.5, 0.6, 0.7], [0.6, 0.6, 0.9]) == pytest.approx([0.1, 0.0, 0.2])
    assert paired_differences([0.5, -1.0, None, float("nan")], [0.6, 0.7, 0.8, 0.9])[1:] == [None, None, None]
    with pytest.raises(ValueError, match="same seeds"):
        paired_differences([0.5], [0.6, 0.7])


def test_paired_interval_is_not_the_unpaired_one():
    # seeds shift both methods alike (0.2, 0.5, 0.8) and ECM adds +0.02, +0.03, +0.04: the paired interval
    # excludes 0, the means alone (unpaired, Welch) could not tell the methods apart
    bce = [0.20, 0.50, 0.80]
    ecm = [0.22, 0.53, 0.84]
    c = compare(bce, ecm)
    d = c["diff"]
    assert d["values"] == pytest.approx([0.02, 0.03, 0.04]) and d["mean"] == pytest.approx(0.03)
    assert d["sd"] == pytest.approx(0.01) and d["n"] == 3 and d["df"] == 2 and d["t"] == pytest.approx(4.3027, 1e-4)
    assert d["ci"] == pytest.approx([0.03 - 4.302653 * 0.01 / math.sqrt(3), 0.03 + 4.302653 * 0.01 / math.sqrt(3)],
                                    abs=1e-6)
    assert d["ci"][0] > 0
    welch_se = math.sqrt(c["base"]["sd"] ** 2 / 3 + c["other"]["sd"] ** 2 / 3)
    assert d["mean"] - 2.776 * welch_se < 0  # unpaired: the interval would contain 0 (t(0.975, ~4) = 2.78)
    # the pairing follows the seed order: shuffling one side changes the differences, not the means
    shuffled = compare(bce, [ecm[2], ecm[0], ecm[1]])
    assert shuffled["other"]["mean"] == pytest.approx(c["other"]["mean"]) and shuffled["diff"]["sd"] > 0.1


def test_compare_with_one_and_two_seeds_and_undefined_values():
    one = compare([0.40], [0.45])
    assert one["diff"]["values"] == pytest.approx([0.05]) and one["diff"]["mean"] == pytest.approx(0.05)
    assert one["diff"]["sd"] is None and one["diff"]["ci"] is None and one["diff"]["df"] is None
    assert one["base"] == {"values": [0.40], "n": 1, "mean": 0.40, "sd": None}
    two = compare([0.40, 0.50], [0.45, 0.52])
    assert two["diff"]["df"] == 1 and two["diff"]["t"] == pytest.approx(12.7062, abs=1e-4)
    assert two["diff"]["ci"][0] < two["diff"]["mean"] < two["diff"]["ci"][1]
    # APf undefined (-1) on one seed: that seed has no difference; the means use the defined values
    c = compare([0.3, -1.0, 0.5], [0.4, 0.6, 0.5])
    assert c["diff"]["values"][1] is None and c["diff"]["n"] == 2
    assert c["base"] == {"values": [0.3, None, 0.5], "n": 2, "mean": pytest.approx(0.4),
                         "sd": pytest.approx(0.1414, 1e-3)}
    assert summarize([None, -1]) == {"values": [None, None], "n": 0, "mean": None, "sd": None}
    assert seeds.defined(0.0) and not seeds.defined(True) and not seeds.defined(float("inf"))


def _demo_summary(bce: list[dict], ecm: list[dict], seeds_: list[int], keys=("AP", "APr", "APc", "APf")) -> dict:
    from ecmctl.pipeline.compare import by_name, comparison

    doc = comparison({"bce": bce, "ecm": ecm}, seeds_, baseline="bce", keys=keys)  # what the demo does
    return {"r": 3.2, "ci95": [3.1, 3.3], "seeds": seeds_, "metrics": list(keys),
            "dataset": {"name": "synth", "classes": 96, "groups": {"r": 27, "c": 37, "f": 32}},
            "stats": by_name(doc), "compare": doc, "stage_seconds": {"calibrate": 40.0, "train ecm": 200.0}}


def _rows(table) -> dict[str, list[str]]:
    cols = [list(c.cells) for c in table.columns]
    return {row[0]: list(row[1:]) for row in zip(*cols, strict=True)}


def test_demo_table_shows_mean_sd_paired_delta_interval_and_seeds():
    from ecmctl.cli.render import demo_table

    box = lambda ap, apr, apc, apf: {"bbox": {"AP": ap, "APr": apr, "APc": apc, "APf": apf}}  # noqa: E731
    bce = [box(0.30, 0.10, 0.25, 0.45), box(0.31, 0.12, 0.26, 0.44), box(0.29, 0.09, 0.27, 0.46)]
    ecm = [box(0.31, 0.15, 0.25, 0.44), box(0.33, 0.14, 0.27, 0.45), box(0.30, 0.13, 0.26, -1.0)]
    table = demo_table(_demo_summary(bce, ecm, [0, 1, 2]))
    rows = _rows(table)
    assert rows["bbox AP"][:2] == ["30.0 ± 1.0", "31.3 ± 1.5"]
    # APr: differences +5, +2, +4 -> mean 3.67, sd 1.53, half-width 4.303 * 1.53 / sqrt(3) = 3.79
    assert rows["bbox APr"][2:] == ["+3.7 [-0.1, +7.5]", "+5.0 +2.0 +4.0"]
    assert rows["bbox APf"][1:] == ["44.5 ± 0.7", "+0.0 [-12.7, +12.7]", "-1.0 +1.0 -"]  # seed 2: undefined
    assert "df = n − 1 = 2" in table.caption and "total 240" in table.caption
    assert "synth (96 classes: 27 r, 37 c, 32 f)" in str(table.title)
    one = demo_table(_demo_summary(bce[:1], ecm[:1], [0]))
    assert _rows(one)["bbox APr"] == ["10.0", "15.0", "+5.0", "+5.0"] and "no interval (one seed)" in one.caption


def test_a_new_metric_is_one_more_key():
    from ecmctl.cli.render import demo_table

    bce = [{"bbox": {"AP": 0.3, "APfixed": 0.32}}, {"bbox": {"AP": 0.31, "APfixed": 0.34}}]
    ecm = [{"bbox": {"AP": 0.32, "APfixed": 0.35}}, {"bbox": {"AP": 0.30, "APfixed": 0.35}}]
    rows = _rows(demo_table(_demo_summary(bce, ecm, [0, 1], keys=("AP", "APfixed"))))
    assert list(rows) == ["bbox AP", "bbox APfixed"] and rows["bbox APfixed"][3] == "+3.0 +1.0"
