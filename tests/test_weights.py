"""`ecmctl weights`: the weights file from a counts file (or the built-in LVIS v1 counts), and its errors."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ecmctl.cli import app
from ecmctl.core.schemas import BACKGROUND, WEIGHTS_SCHEMA
from ecmctl.dataset.counting import write_counts
from ecmctl.ecm.weights import load_weights

runner = CliRunner()
FIELDS = {"id", "name", "n_pos", "n_neg", "margin_pos", "margin_neg", "log_w_pos", "log_w_neg", "det_weight"}


def annotations(tmp_path: Path, zero: bool = False) -> Path:
    cats = [{"id": 3, "name": "rare"}, {"id": 1, "name": "common"}, {"id": 2, "name": "frequent"}]
    per_cat = {3: 1, 1: 4, 2: 9}
    if zero:
        cats.append({"id": 8, "name": "never_seen"})
    anns, k = [], 0
    for cid, n in per_cat.items():
        for i in range(n):
            k += 1
            anns.append({"id": k, "image_id": i % 3, "category_id": cid, "bbox": [0, 0, 1, 1]})
    path = tmp_path / "ann.json"
    images = [{"id": i} for i in range(3)]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def counts_file(tmp_path: Path, zero: bool = False) -> Path:
    out = tmp_path / "counts.json"
    write_counts(annotations(tmp_path, zero), out, progress=False)
    return out


def test_weights_file_with_background(tmp_path):
    counts = counts_file(tmp_path)
    out = tmp_path / "weights.json"
    result = runner.invoke(app, ["weights", str(counts), "--bg-ratio", "6.3313", "-o", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["schema"] == WEIGHTS_SCHEMA == "ecmctl/weights@1"
    assert doc["bg_ratio"] == 6.3313
    assert doc["counts_sha256"] == hashlib.sha256(counts.read_bytes()).hexdigest()
    classes = doc["classes"]
    assert [c["id"] for c in classes] == [3, 1, 2, None]  # counts (= annotation file) order, background last
    assert [c["name"] for c in classes] == ["rare", "common", "frequent", BACKGROUND]
    for c in classes:
        assert set(c) >= FIELDS
        assert all(math.isfinite(c[k]) for k in FIELDS - {"id", "name"})
        assert c["margin_pos"] + c["margin_neg"] == pytest.approx(1.0)
    assert [c["n_pos"] for c in classes[:3]] == [1, 4, 9]
    assert classes[-1]["n_pos"] == pytest.approx(6.3313 * 14)
    assert classes[0]["margin_pos"] > classes[1]["margin_pos"] > classes[2]["margin_pos"]
    w = load_weights(out)
    assert w.has_background and w.num_foreground == 3 and w.log_w_pos.shape == (4,)


def test_weights_file_without_background(tmp_path):
    counts = counts_file(tmp_path)
    out = tmp_path / "weights.json"
    result = runner.invoke(app, ["weights", str(counts), "-o", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["bg_ratio"] is None
    assert [c["name"] for c in doc["classes"]] == ["rare", "common", "frequent"]
    assert all(c["id"] is not None for c in doc["classes"])
    assert not load_weights(out).has_background


def test_builtin_lvis_v1(tmp_path):
    out = tmp_path / "w.json"
    result = runner.invoke(app, ["weights", "lvis_v1", "--bg-ratio", "6.3313", "-o", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert len(doc["classes"]) == 1204 and doc["classes"][-1]["name"] == BACKGROUND
    assert doc["classes"][-1]["id"] is None
    assert round(doc["classes"][-1]["log_w_pos"], 4) == 0.9502
    assert len(doc["counts_sha256"]) == 64
    assert "wrote" in result.stdout


def test_min_count_floors_zero_instance_classes(tmp_path):
    counts = counts_file(tmp_path, zero=True)
    out = tmp_path / "weights.json"
    result = runner.invoke(app, ["weights", str(counts), "--min-count", "1", "-o", str(out)])
    assert result.exit_code == 0, result.output
    classes = json.loads(out.read_text())["classes"]
    assert classes[-1]["name"] == "never_seen" and classes[-1]["n_pos"] == 1


def bad_schema(tmp_path: Path) -> list[str]:
    counts = counts_file(tmp_path)
    weights = tmp_path / "w0.json"
    assert runner.invoke(app, ["weights", str(counts), "-o", str(weights)]).exit_code == 0
    return [str(weights)]


BAD = [
    ("zero instances", lambda t: [str(counts_file(t, zero=True))], "never_seen", "--min-count"),
    ("negative bg ratio", lambda t: [str(counts_file(t)), "--bg-ratio=-1"], "--bg-ratio", "finite number"),
    ("zero bg ratio", lambda t: [str(counts_file(t)), "--bg-ratio", "0"], "--bg-ratio", "> 0"),
    ("nan bg ratio", lambda t: [str(counts_file(t)), "--bg-ratio", "nan"], "--bg-ratio", "nan"),
    ("inf bg ratio", lambda t: [str(counts_file(t)), "--bg-ratio", "inf"], "--bg-ratio", "inf"),
    ("min count 0", lambda t: [str(counts_file(t, zero=True)), "--min-count", "0"], "--min-count", ">= 1"),
    ("other schema", bad_schema, "ecmctl/weights@1", "expected 'ecmctl/counts@1'"),
    ("not a counts file", lambda t: [str(annotations(t))], "schema", "ecmctl/counts@1"),
    ("missing file", lambda t: [str(t / "nope.json")], "nope.json", "no such file"),
    ("unknown builtin", lambda t: ["lvis_v2"], "lvis_v2", "no such file"),
]


@pytest.mark.parametrize("case, args, msg1, msg2", BAD, ids=[b[0] for b in BAD])
def test_weights_bad_input(tmp_path, case, args, msg1, msg2):
    argv = args(tmp_path)
    before = set(tmp_path.iterdir())
    out = tmp_path / "weights.json"
    result = runner.invoke(app, ["weights", *argv, "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert msg1 in result.output and msg2 in result.output
    assert result.output.count("error:") == 1 and "Traceback" not in result.output
    assert not out.exists()
    assert set(tmp_path.iterdir()) == before  # nothing written, no temp file


def test_weights_missing_output_directory(tmp_path):
    out = tmp_path / "missing" / "weights.json"
    result = runner.invoke(app, ["weights", "lvis_v1", "-o", str(out)])
    assert result.exit_code == 2 and "does not exist" in result.output and not out.exists()
