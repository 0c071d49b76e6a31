"""`ecmctl count`: the streaming scanner against json.load-based counting, and every bad input."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console
from typer.testing import CliRunner

from ecmctl.cli import app
from ecmctl.cli.render import counts_tables as summary_tables
from ecmctl.core.errors import UserError
from ecmctl.dataset import counting
from ecmctl.dataset.counting import (
    COUNTS_SCHEMA,
    _counts_document,
    count_annotations,
    frequency_group,
    write_counts,
)
from ecmctl.dataset.jsonscan import Scanner as _Scanner

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


# -- a JSON writer with random layout ----------------------------------------------------------------
WHITESPACE = ["", "", " ", "  ", "\n", "\t", "\r\n", "\n    "]


def dump(obj, rnd: random.Random, ensure_ascii: bool = True, escape_keys: bool = False) -> str:
    """JSON text of obj with random whitespace between tokens and random key order (still valid JSON)."""

    def ws() -> str:
        return rnd.choice(WHITESPACE)

    def key(k: str) -> str:
        if escape_keys and rnd.random() < 0.3:
            return '"' + "".join(f"\\u{ord(ch):04x}" for ch in k) + '"'
        return json.dumps(k, ensure_ascii=ensure_ascii)

    def enc(x) -> str:
        if isinstance(x, dict):
            items = list(x.items())
            rnd.shuffle(items)
            body = ",".join(f"{ws()}{key(k)}{ws()}:{ws()}{enc(v)}{ws()}" for k, v in items)
            return "{" + (body or ws()) + "}"
        if isinstance(x, list):
            return "[" + (",".join(f"{ws()}{enc(v)}{ws()}" for v in x) or ws()) + "]"
        return json.dumps(x, ensure_ascii=ensure_ascii)

    return ws() + enc(obj) + ws()


def reference_counts(path: Path) -> list[tuple]:
    """What lvis.LVIS-style counting over json.load gives: (id, name, instances, images) per category."""
    data = json.loads(path.read_bytes())
    out = []
    for c in data["categories"]:
        anns = [a for a in data["annotations"] if a["category_id"] == c["id"]]
        out.append((c["id"], c["name"], len(anns), len({a["image_id"] for a in anns})))
    return out


def got_counts(doc: dict) -> list[tuple]:
    return [(c["id"], c["name"], c["instance_count"], c["image_count"]) for c in doc["categories"]]


# -- hypothesis: random annotation files ------------------------------------------------------------
texts = st.text(
    alphabet=st.one_of(st.characters(exclude_categories=("Cs",)), st.sampled_from('[]{}"\\:,_Yy')),
    max_size=8,
)
floats = st.floats(allow_nan=False, allow_infinity=False, width=32)
ids = st.integers(-(10**6), 10**17)


@st.composite
def annotation_files(draw) -> dict:
    cat_ids = draw(st.lists(ids, min_size=1, max_size=5, unique=True))
    names = draw(st.lists(texts, min_size=len(cat_ids), max_size=len(cat_ids), unique=True))  # unique (issue 20)
    cats = []
    for cid, name in zip(cat_ids, names):
        c = {"id": cid, "name": name}
        if draw(st.booleans()):
            c["frequency"] = draw(st.sampled_from("rcf"))
        if draw(st.booleans()):
            c["synonyms"] = draw(st.lists(texts, max_size=2))
            c["def"] = draw(texts)
        cats.append(c)
    img_ids = draw(st.lists(st.integers(0, 10**12), max_size=6, unique=True))
    images = [{"id": i, "file_name": draw(texts), "height": 480,
               "neg_category_ids": draw(st.lists(ids, max_size=2))} for i in img_ids]
    anns = []
    ann_ids = draw(st.lists(ids, max_size=12, unique=True)) if img_ids else []  # unique (issue 20)
    for ann_id in ann_ids:
        a = {"id": ann_id, "category_id": draw(st.sampled_from(cat_ids)),
             "image_id": draw(st.sampled_from(img_ids))}
        if draw(st.booleans()) and abs(a["category_id"]) < 2**53:
            a["category_id"] = float(a["category_id"])  # 5.0 is the same id to json.load-based counting
        extras = draw(st.sets(st.sampled_from(["poly", "rle", "bbox", "crowd", "decoy", "note", "caption"])))
        if "poly" in extras:
            a["segmentation"] = draw(st.lists(st.lists(floats, max_size=6), max_size=2))
        elif "rle" in extras:
            a["segmentation"] = {"counts": draw(st.one_of(texts, st.lists(st.integers(0, 999), max_size=4))),
                                 "size": [480, 640]}
        if "bbox" in extras:
            a["bbox"] = draw(st.lists(floats, min_size=4, max_size=4))
            a["area"] = draw(floats)
        if "crowd" in extras:
            a["iscrowd"] = draw(st.integers(0, 1))
        if "decoy" in extras:  # the same keys one level deeper must not count
            a["attributes"] = {"category_id": 424242, "image_id": -7, "id": "x", "list": [{"category_id": 1}]}
        if "note" in extras:  # a string value that spells a key
            a["note"] = draw(st.sampled_from(["id", "image_id", "category_id"]))
        if "caption" in extras:
            a["caption"] = draw(texts)
        anns.append(a)
    doc = {"images": images, "annotations": anns, "categories": cats}
    if draw(st.booleans()):
        doc["info"] = {"description": draw(texts), "version": "1.0", "category_id": 3}
        doc["licenses"] = [{"id": 1, "name": draw(texts)}]
    if draw(st.booleans()):
        doc["version"] = draw(texts)  # a top-level string value
    return doc


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(doc=annotation_files(), rnd=st.randoms(use_true_random=False), ensure_ascii=st.booleans(),
       escape_keys=st.booleans(),
       chunk_size=st.one_of(st.integers(1, 48), st.sampled_from([100, 4096, 1 << 20])))
def test_matches_json_load_counting(tmp_path, doc, rnd, ensure_ascii, escape_keys, chunk_size):
    path = tmp_path / "ann.json"
    path.write_text(dump(doc, rnd, ensure_ascii, escape_keys), encoding="utf-8")
    got = count_annotations(path, progress=False, chunk_size=chunk_size)
    assert got_counts(got) == reference_counts(path)
    assert got["source"]["num_images"] == len(doc["images"])
    assert got["source"]["num_annotations"] == len(doc["annotations"])
    for c, entry in zip(doc["categories"], got["categories"], strict=True):
        assert entry["frequency"] == frequency_group(entry["image_count"])
        assert entry.get("file_frequency") == c.get("frequency")


@settings(max_examples=25, deadline=None)
@given(doc=annotation_files(), rnd=st.randoms(use_true_random=False),
       cuts=st.lists(st.floats(0, 1), max_size=12))
def test_chunk_boundaries_anywhere(doc, rnd, cuts):
    """Arbitrary split points (not a fixed chunk size) give the same counts."""
    data = dump(doc, rnd).encode()
    points = sorted({int(c * len(data)) for c in cuts} | {0, len(data)})
    pieces = [data[a:b] for a, b in zip(points, points[1:], strict=False)] or [b""]
    scanner = _Scanner("mem.json")
    scanner.run([(p, i == len(pieces) - 1) for i, p in enumerate(pieces)])
    scanner.finish()
    got = _counts_document("mem.json", scanner, "0" * 64)
    expected = []
    for c in doc["categories"]:
        anns = [a for a in doc["annotations"] if a["category_id"] == c["id"]]
        expected.append((c["id"], c["name"], len(anns), len({a["image_id"] for a in anns})))
    assert got_counts(got) == expected


# -- fixed files -------------------------------------------------------------------------------------
def small_doc() -> dict:
    return {
        "info": {"description": "tiny"},
        "images": [{"id": 1}, {"id": 2}, {"id": 3}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 5, "segmentation": [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]]},
            {"id": 11, "image_id": 1, "category_id": 5, "bbox": [0, 0, 1, 1]},
            {"id": 12, "image_id": 2, "category_id": 5, "iscrowd": 1,
             "segmentation": {"counts": "a[]{}\"b", "size": [2, 2]}},
            {"id": 13, "image_id": 3, "category_id": 7},
        ],
        "categories": [{"id": 7, "name": "cat [7]", "frequency": "r"},
                       {"id": 5, "name": 'dog "5"', "frequency": "c"},
                       {"id": 9, "name": "zero", "frequency": "r"}],
    }


def write(tmp_path: Path, obj, name: str = "ann.json") -> Path:
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def test_document_fields_and_order(tmp_path):
    path = write(tmp_path, small_doc())
    doc = count_annotations(path, progress=False)
    assert doc["schema"] == COUNTS_SCHEMA == "ecmctl/counts@1"
    assert set(doc["source"]) >= {"path", "sha256", "num_images", "num_annotations"}
    assert doc["source"]["num_images"] == 3 and doc["source"]["num_annotations"] == 4
    import hashlib

    assert doc["source"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [c["id"] for c in doc["categories"]] == [7, 5, 9]  # the file's order, not sorted
    assert got_counts(doc) == [(7, "cat [7]", 1, 1), (5, 'dog "5"', 3, 2), (9, "zero", 0, 0)]
    assert [c["frequency"] for c in doc["categories"]] == ["r", "r", "r"]
    assert doc["frequency_disagreements"] == 1  # 'dog' says c
    for c in doc["categories"]:
        assert {"id", "name", "frequency", "instance_count", "image_count", "file_frequency"} <= set(c)


def test_frequency_rule():
    assert [frequency_group(n) for n in (0, 1, 10, 11, 100, 101, 5000)] == ["r", "r", "r", "c", "c", "f", "f"]


def test_cli_count_writes_file_and_warns(tmp_path):
    path = write(tmp_path, small_doc())
    out = tmp_path / "counts.json"
    result = runner.invoke(app, ["count", str(path), "-o", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["schema"] == COUNTS_SCHEMA and got_counts(doc)[1] == (5, 'dog "5"', 3, 2)
    assert "warning" in result.stderr and "frequency" in result.stderr and "dog" in result.stderr
    assert "rarest" in result.stdout and "zero instances" in result.stdout and "min-count" in result.stdout


def test_summary_tables_render(tmp_path):
    doc = count_annotations(write(tmp_path, small_doc()), progress=False)
    console = Console(record=True, width=200)
    tables = summary_tables(doc)
    assert len(tables) == 4
    for t in tables:
        console.print(t)
    text = console.export_text()
    for needle in ("annotations", "classes per frequency group", "rarest", "most frequent", "zero instances",
                   "zero", "dog"):
        assert needle in text


def test_progress_bar_goes_to_stderr(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(counting, "PROGRESS_MIN_BYTES", 0)
    doc = count_annotations(write(tmp_path, small_doc()), progress=True)
    assert doc["source"]["num_annotations"] == 4
    assert capsys.readouterr().out == ""


def test_generated_lvis_like_file(tmp_path):
    """The benchmark's generator at scale 0.002: counts reproduce its per-category counts exactly,
    with the threaded pooled reader (64 KiB chunks) and with one big chunk."""
    spec = importlib.util.spec_from_file_location("count_bench", ROOT / "benchmarks" / "count_bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    path = tmp_path / "lvis_like.json"
    meta = bench.generate(path, scale=0.002, seed=1)
    expected = [(c["id"], c["instance_count"], c["image_count"]) for c in meta["categories"]]
    assert len(expected) == 1203 and all(n >= m >= 1 for _, n, m in expected)
    for chunk in (64 << 10, 1 << 24):
        doc = count_annotations(path, progress=False, chunk_size=chunk)
        assert [(c["id"], c["instance_count"], c["image_count"]) for c in doc["categories"]] == expected
        assert doc["source"]["num_annotations"] == meta["num_annotations"]
        assert doc["source"]["num_images"] == meta["num_images"]
        assert doc["frequency_disagreements"] == 0


def test_long_gaps_between_brackets(tmp_path):
    """Strings much longer than a chunk (carried tails larger than the pooled reader's head room)."""
    doc = small_doc()
    for i, a in enumerate(doc["annotations"]):
        a["caption"] = ("x" * 90_000 + "]}\"[") * (i % 2) + "y" * (i * 1000)
    doc["images"].extend({"id": 100 + i, "file_name": "z" * 5000} for i in range(60))
    path = write(tmp_path, doc)
    assert path.stat().st_size > 4 * (64 << 10)
    for chunk in (64 << 10, 3000):
        assert got_counts(count_annotations(path, progress=False, chunk_size=chunk)) == reference_counts(path)


def test_pretty_printed_and_unusual_layouts(tmp_path):
    doc = small_doc()
    for text in (json.dumps(doc, indent=4), json.dumps(doc, separators=(",", ":")),
                 json.dumps(doc, indent="\t").replace(": ", " :  "),
                 json.dumps(doc).replace('"category_id": 5', '"category_id": 5.0'),
                 json.dumps(doc).replace('"category_id": 7', '"category_id":    \n\n 7e0')):
        path = write(tmp_path, text)
        for chunk in (1, 7, 1 << 20):
            got = count_annotations(path, progress=False, chunk_size=chunk)
            assert got_counts(got) == reference_counts(path)


# -- bad input: one clear line, exit 2, no output file ------------------------------------------------
def truncated(tmp_path: Path) -> str:
    return json.dumps(small_doc())[:150]


def edit(old: str, new: str, count: int = -1):
    """A bad input made from small_doc() by one text replacement."""
    def make(tmp_path: Path) -> str:
        text = json.dumps(small_doc())
        assert old in text
        return text.replace(old, new, count)
    return make


def without(section: str):
    return lambda t: json.dumps({k: v for k, v in small_doc().items() if k != section})


BAD_COUNT_INPUTS = [
    ("plain text", lambda t: "hello world", "not valid JSON"),
    ("empty", lambda t: "", "empty"),
    ("binary", lambda t: "\x89PNG\r\n\x1a\n", "not valid JSON"),
    ("top-level list", lambda t: "[1, 2]", "top-level JSON value is a list"),
    ("truncated", truncated, "truncated"),
    ("truncated in a string", lambda t: json.dumps(small_doc())[:-40].rsplit('"', 1)[0] + '"abc',
     "truncated"),
    ("mismatched brackets", edit("[1.0, 2.0", "{1.0, 2.0", 1), "mismatched"),
    ("unbalanced", lambda t: json.dumps(small_doc()) + "]", "not valid JSON"),
    ("extra data", lambda t: json.dumps(small_doc()) + ' {"a": 1}', "extra data"),
    ("missing categories", without("categories"), "no top-level 'categories'"),
    ("missing annotations", without("annotations"), "no top-level 'annotations'"),
    ("missing images", without("images"), "no top-level 'images'"),
    ("unknown category_id", edit('"image_id": 3, "category_id": 7', '"image_id": 3, "category_id": 8'),
     "annotation id 13 has category_id 8, which is not an id in 'categories'"),
    ("unknown image_id", edit('"id": 11, "image_id": 1', '"id": 11, "image_id": 99'),
     "annotation id 11 has image_id 99, which is not an id in 'images'"),
    ("duplicate category ids", edit('"id": 9, "name": "zero"', '"id": 5, "name": "zero"'),
     "category id 5 appears 2 times"),
    ("missing category_id", edit(', "category_id": 7}', "}"), "annotation id 13 has no 'category_id'"),
    ("string category_id", edit('"category_id": 7}', '"category_id": "7"}'),
     "annotation id 13 has category_id '\"7\"', expected an integer"),
    ("duplicate section", lambda t: json.dumps(small_doc())[:-1] + ', "images": []}',
     "'images' appears twice"),
    ("annotations not a list", lambda t: json.dumps({**small_doc(), "annotations": {"a": 1}}),
     "'annotations' is not a list"),
]


@pytest.mark.parametrize("case, make, message", BAD_COUNT_INPUTS, ids=[c[0] for c in BAD_COUNT_INPUTS])
def test_cli_count_bad_input(tmp_path, case, make, message):
    path = write(tmp_path, make(tmp_path))
    out = tmp_path / "counts.json"
    result = runner.invoke(app, ["count", str(path), "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert str(path) in result.output
    assert result.output.count("error:") == 1 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ann.json"]  # no temp file left either


def test_cli_count_missing_output_directory_checked_first(tmp_path, monkeypatch):
    path = write(tmp_path, small_doc())
    out = tmp_path / "no" / "such" / "counts.json"
    monkeypatch.setattr(counting, "count_annotations",
                        lambda *a, **k: pytest.fail("counted before checking the output directory"))
    result = runner.invoke(app, ["count", str(path), "-o", str(out)])
    assert result.exit_code == 2
    assert "output directory" in result.output and "does not exist" in result.output
    assert not out.parent.exists()


def test_cli_count_missing_input(tmp_path):
    out = tmp_path / "counts.json"
    result = runner.invoke(app, ["count", str(tmp_path / "nope.json"), "-o", str(out)])
    assert result.exit_code == 2 and "no such file" in result.output and not out.exists()


def test_write_counts_leaves_nothing_on_error(tmp_path):
    path = write(tmp_path, truncated(tmp_path))
    with pytest.raises(UserError, match="truncated"):
        write_counts(path, tmp_path / "out.json", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ann.json"]


def test_nested_list_entries_rejected(tmp_path):
    path = write(tmp_path, json.dumps({**small_doc(), "annotations": [[1, 2]]}))
    with pytest.raises(UserError, match="is a list, expected an object"):
        count_annotations(path, progress=False)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=annotation_files(), rnd=st.randoms(use_true_random=False), where=st.floats(0, 1),
       junk=st.sampled_from(list('[]{}",:\\x0 -')), mode=st.sampled_from(["truncate", "replace", "insert"]),
       chunk_size=st.sampled_from([1, 5, 64, 1 << 20]))
def test_corrupted_files_fail_cleanly(tmp_path, doc, rnd, where, junk, mode, chunk_size):
    """A damaged file gives a UserError or, if it still parses, json.load's counts; never another error."""
    data = dump(doc, rnd).strip().encode()
    k = min(int(where * len(data)), len(data) - 1)
    if mode == "truncate":
        data = data[:k]
    elif mode == "replace":
        data = data[:k] + junk.encode() + data[k + 1:]
    else:
        data = data[:k] + junk.encode() + data[k:]
    path = tmp_path / "bad.json"
    path.write_bytes(data)
    try:
        got = count_annotations(path, progress=False, chunk_size=chunk_size)
    except UserError as e:
        assert str(path) in str(e) and "\n" not in str(e)
        return
    assert mode != "truncate", "a truncated file was accepted"
    try:
        expected = reference_counts(path)
    except Exception:  # still parsed by the scanner, which does not validate number tokens
        return
    assert got_counts(got) == expected
