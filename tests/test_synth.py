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
    (dict(num_classes=193), "--classes"),
    (dict(profile="lvis"), "--train-images"),  # 60 images cannot hold a frequent class (> 100 images)
    (dict(profile="huge"), "--profile"),
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

    cfg = compose([f"data_root={tmp_path}", "dataset.synth.profile=small", "dataset.synth.classes=200",
                   "dataset.synth.repeat_looks=true", "dataset.synth.train_images=40", "dataset.synth.val_images=40",
                   "dataset.synth.image_size=48", "dataset.synth.image_height=32"])
    ensure_dataset(cfg)
    d = _load(tmp_path / "synth" / "val.json")
    assert len(d["categories"]) == 200 and {(i["width"], i["height"]) for i in d["images"]} == {(48, 32)}
    names = [c["name"] for c in d["categories"]]
    assert len(set(names)) == 200 and names[192] == names[0] + "_1"  # looks repeat beyond 192, named apart


def test_out_dir_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UserError, match="not a directory"):
        make_dataset(f, **SMALL)


def test_cli_synth_writes_dataset(tmp_path):
    from typer.testing import CliRunner

    from ecmctl.cli import app

    out = tmp_path / "cli"
    res = CliRunner().invoke(app, ["synth", str(out), "--profile", "small", "--classes", "4", "--train-images", "6",
                                   "--val-images", "3", "--image-size", "32", "--seed", "5"])
    assert res.exit_code == 0, res.output
    assert (out / "train.json").is_file() and len(list((out / "val").glob("*.png"))) == 3
    res = CliRunner().invoke(app, ["synth", str(out), "--classes", "2"])
    assert res.exit_code == 2 and "--classes" in res.output


# ---------------------------------------------------------------- the LVIS-like profile

LVIS_SHARES = {"r": 337 / 1203, "c": 461 / 1203, "f": 405 / 1203}


def _gini(x) -> float:
    x = np.sort(np.asarray(x, dtype=float))
    n = len(x)
    return float((2 * np.arange(1, n + 1) - n - 1) @ x / (n * x.sum()))


@pytest.mark.parametrize("classes", [12, 24, 96, 120, 192])
def test_lvis_group_sizes_follow_lvis_shares(classes):
    from ecmctl.dataset.synth import lvis_group_sizes

    sizes = dict(zip("rcf", lvis_group_sizes(classes), strict=True))
    assert sum(sizes.values()) == classes and min(sizes.values()) >= 1
    for g, share in LVIS_SHARES.items():
        assert abs(sizes[g] / classes - share) <= max(0.03, 0.6 / classes), (g, sizes)


def test_lvis_default_design_is_a_scaled_down_lvis():
    from ecmctl.dataset.lvis import builtin_counts
    from ecmctl.dataset.synth import (
        LVIS_CATEGORIES_PER_IMAGE,
        PROFILES,
        design_counts,
        lvis_group_sizes,
        lvis_train_targets,
    )

    d = PROFILES["lvis"]
    counts, design = design_counts("lvis", d["classes"], d["train_images"])
    targets, alpha = lvis_train_targets(d["classes"], d["train_images"])
    assert (counts == targets).all()  # feasible as designed: nothing was clipped
    groups = [lvis_frequency(int(n)) for n in counts]
    assert tuple(groups.count(g) for g in "rcf") == lvis_group_sizes(d["classes"]) == (27, 37, 32)
    for g, share in LVIS_SHARES.items():  # LVIS v1: 28 / 38 / 34 % of the classes
        assert abs(groups.count(g) / len(groups) - share) < 0.02
    # rare and common counts are real LVIS v1 counts at the group's mid-quantiles: same medians, same range
    lvis = builtin_counts("lvis_v1")["categories"]
    for g in ("r", "c"):
        real = np.array([c["image_count"] for c in lvis if c["frequency"] == g])
        ours = counts[np.array(groups) == g]
        assert set(ours.tolist()) <= set(real.tolist())
        assert abs(np.median(ours) - np.median(real)) <= 0.1 * np.median(real) + 1
        assert np.percentile(ours, 90) == pytest.approx(np.percentile(real, 90), rel=0.15)
    # frequent: LVIS's 101..1977 compressed in log space, just enough for LVIS's 3.6 categories per image
    freq = counts[np.array(groups) == "f"]
    assert 0 < alpha < 1 and freq.min() >= 101 and freq.max() <= round(101 * (1977 / 101) ** alpha) + 1
    assert counts.sum() / d["train_images"] == pytest.approx(LVIS_CATEGORIES_PER_IMAGE, abs=0.01)
    assert design == {"profile": "lvis", "frequent_alpha": round(alpha, 4),
                      "categories_per_image": round(counts.sum() / d["train_images"], 3)}
    # a heavy tail: the top tenth of the classes hold a fifth of the images, the bottom half under a tenth
    order = np.sort(counts)[::-1]
    assert order[: len(order) // 10].sum() / order.sum() > 0.2
    assert order[len(order) // 2:].sum() / order.sum() < 0.10
    assert 0.45 < _gini(counts) < 0.9  # LVIS v1 image counts: 0.77 (uncompressed frequent group)


def test_lvis_compression_relaxes_with_more_images():
    from ecmctl.dataset.synth import lvis_min_train_images, lvis_quantiles, lvis_train_targets

    alphas = [lvis_train_targets(96, n)[1] for n in (lvis_min_train_images(96), 1600, 2400, 60_000)]
    assert alphas[0] < 0.01 and alphas == sorted(alphas) and alphas[-1] == 1.0
    targets, _ = lvis_train_targets(96, 60_000)  # no compression: LVIS's own frequent quantiles
    from ecmctl.dataset.synth import lvis_image_counts

    assert (targets[:32] == np.rint(lvis_quantiles(lvis_image_counts()["f"], 32))).all()


@pytest.fixture(scope="module")
def tiny_lvis(tmp_path_factory) -> dict:
    # the smallest LVIS-profile set with every group: 12 classes (3 r, 5 c, 4 f)
    from ecmctl.dataset.synth import lvis_min_train_images

    n = lvis_min_train_images(12)
    return make_dataset(tmp_path_factory.mktemp("lvis") / "ds", num_classes=12, train_images=n, val_images=24,
                        image_size=48, seed=3, profile="lvis")


def test_lvis_profile_dataset_is_deterministic_and_follows_its_design(tiny_lvis, tmp_path):
    from ecmctl.dataset.synth import design_counts

    again = make_dataset(tmp_path / "again", num_classes=12, train_images=tiny_lvis["splits"]["train"]["images"],
                         val_images=24, image_size=48, seed=3, profile="lvis")
    assert _tree_bytes(Path(again["out_dir"])) == _tree_bytes(Path(tiny_lvis["out_dir"]))
    train = _load(tiny_lvis["train_json"])
    assert train["info"]["description"] == "ecmctl synthetic long-tailed dataset (train, seed 3, profile lvis)"
    counts, _ = design_counts("lvis", 12, len(train["images"]))
    assert sorted(c["image_count"] for c in train["categories"]) == sorted(counts.tolist())
    assert {g: len(v) for g, v in tiny_lvis["groups"].items()} == {"r": 3, "c": 5, "f": 4}
    assert tiny_lvis["profile"] == "lvis" and tiny_lvis["design"]["frequent_alpha"] < 0.05  # the fewest images
    assert {a["category_id"] for a in _load(tiny_lvis["val_json"])["annotations"]} == set(range(1, 13))


def test_vocabulary_extends_past_96_classes_and_keeps_the_first_96(tmp_path):
    from ecmctl.dataset.synth import COLOURS, MAX_CLASSES, SHAPES, class_specs

    specs = class_specs(MAX_CLASSES)
    assert MAX_CLASSES == 192 == len(set(specs)) == len({s.name for s in specs})
    assert [s.name for s in specs[:3]] == ["red_circle", "green_square", "blue_triangle"]
    assert specs[48].name == "striped_red_circle"
    assert all(s.shape in SHAPES[:8] and s.colour in list(COLOURS)[:6] for s in specs[:96])
    assert all(s.shape in SHAPES[8:] or s.colour in list(COLOURS)[6:] for s in specs[96:])
    ds = make_dataset(tmp_path / "all", num_classes=192, train_images=40, val_images=40, image_size=64)
    train = _load(ds["train_json"])
    assert {a["category_id"] for a in train["annotations"]} == set(range(1, 193))
    for a in train["annotations"]:
        x, y, w, h = a["bbox"]
        assert x >= 0 and y >= 0 and x + w <= 64 + 1e-6 and y + h <= 64 + 1e-6 and a["area"] > 0


def test_a_different_synthetic_set_on_disk_is_refused(tmp_path, small):
    import shutil

    from ecmctl.core.config import compose
    from ecmctl.pipeline.prepare import ensure_dataset

    shutil.copytree(small["out_dir"], tmp_path / "synth_small")
    same = [f"data_root={tmp_path}", "dataset=synth_small", "dataset.synth.classes=8",
            "dataset.synth.train_images=60", "dataset.synth.val_images=20", "dataset.synth.image_size=64",
            "dataset.synth.seed=1"]
    ensure_dataset(compose(same))  # the configured set: accepted as it is
    for change, what in (("dataset.synth.classes=24", "classes 8"), ("dataset.synth.seed=0", "seed 1"),
                         ("dataset.synth.profile=lvis", "description")):
        with pytest.raises(UserError, match=f"holds a different synthetic set: .*{what}"):
            ensure_dataset(compose([*same, change]))


def test_cli_synth_profiles(tmp_path):
    from typer.testing import CliRunner

    from ecmctl.cli import app

    res = CliRunner().invoke(app, ["synth", "--help"])
    assert res.exit_code == 0 and "--profile" in res.output and "lvis" in res.output
    out = tmp_path / "lvis"
    res = CliRunner().invoke(app, ["synth", str(out), "--profile", "lvis", "--classes", "12", "--train-images",
                                   "170", "--val-images", "12", "--image-size", "32"])
    assert res.exit_code == 0, res.output
    assert "profile lvis" in _load(out / "train.json")["info"]["description"] and "compressed" in res.output
    res = CliRunner().invoke(app, ["synth", str(tmp_path / "x"), "--profile", "lvis", "--train-images", "100"])
    assert res.exit_code == 2 and "--train-images" in res.output
