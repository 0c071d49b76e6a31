"""The synthetic dataset must be deterministic, true LVIS v1, long-tailed by LVIS's rule, and loadable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ecmctl.cli.render import synth_table
from ecmctl.core.errors import UserError
from ecmctl.dataset.lvis import frequency_group as lvis_frequency
from ecmctl.dataset.synth import make_dataset

SMALL = dict(num_classes=8, train_images=60, val_images=20, image_size=64)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _load(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict:
    return make_dataset(tmp_path_factory.mktemp("small") / "ds", seed=1, **SMALL)


@pytest.fixture(scope="module")
def default(tmp_path_factory) -> dict:
    return make_dataset(tmp_path_factory.mktemp("default") / "ds")


def test_same_seed_gives_identical_bytes_other_seed_differs(tmp_path, small):
    again = make_dataset(tmp_path / "again", seed=1, **SMALL)
    other = make_dataset(tmp_path / "other", seed=2, **SMALL)
    a, b = _tree_bytes(Path(small["out_dir"])), _tree_bytes(Path(again["out_dir"]))
    assert a.keys() == b.keys() and len(a) == 2 + 60 + 20
    assert a == b
    assert Path(other["train_json"]).read_bytes() != Path(small["train_json"]).read_bytes()


def test_lvis_v1_fields(small):
    train, val = _load(small["train_json"]), _load(small["val_json"])
    for split, d in (("train", train), ("val", val)):
        assert list(d) == ["info", "licenses", "images", "annotations", "categories"]
        cat_ids = [c["id"] for c in d["categories"]]
        assert cat_ids == list(range(1, 9))
        for img in d["images"]:
            assert {"id", "width", "height", "file_name", "coco_url", "neg_category_ids",
                    "not_exhaustive_category_ids", "license", "flickr_url", "date_captured"} <= img.keys()
            assert img["coco_url"] == f"http://images.cocodataset.org/{split}/{img['file_name']}"
            assert (Path(small["out_dir"]) / split / img["file_name"]).is_file()
        for ann in d["annotations"]:
            assert {"id", "image_id", "category_id", "bbox", "area", "segmentation"} <= ann.keys()
        for cat in d["categories"]:
            assert {"id", "name", "synset", "synonyms", "def", "frequency", "image_count",
                    "instance_count"} <= cat.keys()
            assert cat["synset"] == f"{cat['name']}.n.01"
    assert train["categories"] == val["categories"]  # counts come from train in both files, as in LVIS
    ids = [a["id"] for d in (train, val) for a in d["annotations"]]
    assert len(ids) == len(set(ids))
    assert not {i["id"] for i in train["images"]} & {i["id"] for i in val["images"]}


def test_neg_categories_are_absent_from_their_image(small):
    for path in (small["train_json"], small["val_json"]):
        d = _load(path)
        present: dict[int, set[int]] = {}
        for a in d["annotations"]:
            present.setdefault(a["image_id"], set()).add(a["category_id"])
        assert all(present.get(i["id"]) for i in d["images"])  # no empty image
        assert any(i["neg_category_ids"] for i in d["images"])
        for img in d["images"]:
            assert not set(img["neg_category_ids"]) & present[img["id"]]


def test_loads_with_lvis_api_and_mmdet(small):
    from lvis import LVIS

    lv = LVIS(small["val_json"])
    assert len(lv.get_img_ids()) == 20 and len(lv.get_cat_ids()) == 8

    from mmdet.datasets import LVISV1Dataset
    from mmdet.utils import register_all_modules

    register_all_modules()
    names = tuple(c["name"] for c in small["classes"])
    for split, n in (("train", 60), ("val", 20)):
        ds = LVISV1Dataset(ann_file=small[f"{split}_json"], data_root=small["out_dir"],
                           data_prefix=dict(img=""), metainfo=dict(classes=names), pipeline=[],
                           test_mode=False)
        assert len(ds) == n
        for i in range(len(ds)):
            info = ds.get_data_info(i)
            assert Path(info["img_path"]).is_file()
            assert info["instances"] and all(0 <= x["bbox_label"] < 8 for x in info["instances"])


def test_default_frequency_groups_follow_lvis_rule(default):
    train, val = _load(default["train_json"]), _load(default["val_json"])
    img_sets: dict[int, set[int]] = {}
    inst: dict[int, int] = {}
    for a in train["annotations"]:
        img_sets.setdefault(a["category_id"], set()).add(a["image_id"])
        inst[a["category_id"]] = inst.get(a["category_id"], 0) + 1
    for cat in train["categories"]:
        n = len(img_sets[cat["id"]])
        assert cat["image_count"] == n and cat["instance_count"] == inst[cat["id"]]
        assert cat["frequency"] == ("r" if n <= 10 else "c" if n <= 100 else "f")
    groups = {g: len(v) for g, v in default["groups"].items()}
    assert sum(groups.values()) == 24 and min(groups.values()) >= 6, groups
    assert {a["category_id"] for a in val["annotations"]} == set(range(1, 25))
    val_imgs = {c["id"]: c["val_images"] for c in default["classes"]}
    rare = [c for c in default["classes"] if c["frequency"] == "r"]
    assert all(val_imgs[c["id"]] >= 3 for c in rare)  # APr needs val instances of rare classes
    assert default["splits"] == {"train": {"images": 400, "annotations": len(train["annotations"])},
                                 "val": {"images": 120, "annotations": len(val["annotations"])}}


def test_boxes_inside_image_and_match_segmentation(small):
    import pycocotools.mask as mask_utils

    for path in (small["train_json"], small["val_json"]):
        d = _load(path)
        for a in d["annotations"]:
            x, y, w, h = a["bbox"]
            assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= 64 + 1e-6 and y + h <= 64 + 1e-6
            poly = np.asarray(a["segmentation"][0]).reshape(-1, 2)
            assert np.allclose([x, y, x + w, y + h], [*poly.min(0), *poly.max(0)], atol=0.011)
            rle = mask_utils.merge(mask_utils.frPyObjects(a["segmentation"], 64, 64))
            assert abs(float(mask_utils.area(rle)) - a["area"]) <= 0.15 * a["area"] + 2


def test_summary_and_table(small):
    grouped = [n for g in ("r", "c", "f") for n in small["groups"][g]]
    assert sorted(grouped) == sorted(c["name"] for c in small["classes"])
    for c in small["classes"]:
        assert c["frequency"] == lvis_frequency(c["train_images"])
        assert c["train_instances"] >= c["train_images"] >= 1 and c["val_images"] >= 1
    table = synth_table(small)
    assert table.row_count == 3


@pytest.mark.parametrize(("kwargs", "option"), [
    (dict(num_classes=2), "--classes"),
    (dict(num_classes=97), "--classes"),
    (dict(train_images=0), "--train-images"),
    (dict(val_images=0), "--val-images"),
    (dict(num_classes=24, val_images=3), "--val-images"),
    (dict(image_size=16), "--image-size"),
    (dict(image_height=16), "--image-height"),
    (dict(seed=-1), "--seed"),
])
def test_bad_arguments_raise_user_error(tmp_path, kwargs, option):
    with pytest.raises(UserError, match=option):
        make_dataset(tmp_path / "ds", **{**SMALL, **kwargs})
    assert not (tmp_path / "ds").exists()  # nothing written before the check


def test_repeat_looks_and_height_give_lvis_size_speed_sets(tmp_path):
    """More classes than looks (LVIS's 1203, for speed tests) and non-square images (1333 x 800 inputs)."""
    import cv2

    from ecmctl.dataset.synth import MAX_CLASSES, class_specs

    names = [c.name for c in class_specs(1203)]
    assert len(set(names)) == 1203 and names[:MAX_CLASSES] == [c.name for c in class_specs(MAX_CLASSES)]
    s = make_dataset(tmp_path / "ds", num_classes=100, train_images=17, val_images=17, image_size=56,
                     image_height=32, repeat_looks=True)
    d = _load(s["val_json"])
    assert len(d["categories"]) == 100 and s["image_height"] == 32
    assert {(i["width"], i["height"]) for i in d["images"]} == {(56, 32)}
    assert cv2.imread(str(tmp_path / "ds" / "val" / d["images"][0]["file_name"])).shape == (32, 56, 3)
    for a in d["annotations"]:
        x, y, w, h = a["bbox"]
        assert x >= 0 and y >= 0 and x + w <= 56 + 1e-6 and y + h <= 32 + 1e-6


def test_config_keys_reach_the_generator(tmp_path):
    from ecmctl.core.config import compose
    from ecmctl.pipeline.prepare import ensure_dataset

    cfg = compose([f"data_root={tmp_path}", "dataset.synth.classes=97", "dataset.synth.repeat_looks=true",
                   "dataset.synth.train_images=17", "dataset.synth.val_images=17", "dataset.synth.image_size=48",
                   "dataset.synth.image_height=32"])
    ensure_dataset(cfg)
    d = _load(tmp_path / "synth" / "val.json")
    assert len(d["categories"]) == 97 and {(i["width"], i["height"]) for i in d["images"]} == {(48, 32)}


def test_out_dir_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UserError, match="not a directory"):
        make_dataset(f, **SMALL)


def test_cli_synth_writes_dataset(tmp_path):
    from typer.testing import CliRunner

    from ecmctl.cli import app

    out = tmp_path / "cli"
    res = CliRunner().invoke(app, ["synth", str(out), "--classes", "4", "--train-images", "6",
                                   "--val-images", "3", "--image-size", "32", "--seed", "5"])
    assert res.exit_code == 0, res.output
    assert (out / "train.json").is_file() and len(list((out / "val").glob("*.png"))) == 3
    res = CliRunner().invoke(app, ["synth", str(out), "--classes", "2"])
    assert res.exit_code == 2 and "--classes" in res.output
