"""The packed dataset (ecmctl.dataset.packed, engine/packed_dataset.py) against mmdet's own classes: every field
of the data list, the RFS repeat indices, and the cache's rules (new file, corrupt file, concurrent builders,
read-only directory), on the synthetic set, a generated LVIS-v1-shaped file and a file of corner cases."""

from __future__ import annotations

import json
import os
import pickle
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ecmctl.core.config import compose
from ecmctl.dataset import packcache, packed

ROOT = Path(__file__).resolve().parents[1]
FILTER = dict(filter_empty_gt=True, min_size=2)


def _mmdet(kind: str, ann: Path, root: Path, classes=None, test_mode=False, filter_cfg=FILTER):
    import ecmctl.engine.compat as compat

    compat.apply()
    from mmdet.datasets import CocoDataset, LVISV1Dataset

    kw = dict(data_root=str(root), ann_file=str(ann), data_prefix=dict(img="imgs/"), pipeline=[],
              test_mode=test_mode, filter_cfg=None if test_mode else filter_cfg)
    if classes is not None:
        kw["metainfo"] = dict(classes=tuple(classes))
    return (LVISV1Dataset if kind == "lvis" else CocoDataset)(**kw), kw


def _packed(kind: str, kw: dict, cache_dir):
    from ecmctl.engine.packed_dataset import PackedCocoDataset, PackedLVISV1Dataset

    return (PackedLVISV1Dataset if kind == "lvis" else PackedCocoDataset)(cache_dir=str(cache_dir), **kw)


def _assert_same(ref, ours, sample: int | None = None, rfs_thr: float | None = None) -> None:
    from mmengine.dataset import ClassBalancedDataset as MMEngineRFS

    from ecmctl.engine.packed_dataset import ClassBalancedDataset

    assert len(ours) == len(ref) > 0
    idx = range(len(ref)) if sample is None else random.Random(0).sample(range(len(ref)), sample)
    for i in idx:
        assert ours.get_data_info(i) == ref.get_data_info(i), i
        assert ours.get_cat_ids(i) == ref.get_cat_ids(i)
    if rfs_thr is not None:
        theirs, mine = MMEngineRFS(ref, rfs_thr), ClassBalancedDataset(ours, rfs_thr)
        assert mine.repeat_indices.tolist() == theirs.repeat_indices
        assert len(mine) > len(ours)


def _corner_case_file(path: Path, coco: bool = False) -> dict:
    """A small file with what the rules are about: crowd, ignore, empty images, boxes of zero, negative and
    sub-pixel size or outside the image, area 0, RLE masks, empty/odd segmentations, an annotation of an
    unknown image, images with only dropped boxes, non-sorted sparse ids, a small image."""
    rng = np.random.default_rng(3)
    cats = [{"id": cid, "name": f"c{cid}", "frequency": "r"} for cid in (7, 3, 11, 5)]
    images, anns = [], []
    for k in range(60):
        iid = 1000 - 7 * k
        h, w = (1, 50) if k == 5 else (int(rng.integers(20, 90)), int(rng.integers(20, 90)))
        im = {"id": iid, "height": h, "width": w, "coco_url": f"http://images.cocodataset.org/train2017/{iid:06d}.jpg"}
        if coco:
            im["file_name"] = f"{iid:06d}.jpg"
        images.append(im)
        if k % 9 == 4:
            continue  # no annotation at all
        for _ in range(int(rng.integers(1, 5))):
            x, y = float(np.round(rng.uniform(-10, w), 2)), float(np.round(rng.uniform(-10, h), 2))
            bw, bh = float(np.round(rng.uniform(-2, 30), 2)), float(np.round(rng.uniform(-2, 30), 2))
            if rng.random() < 0.1:
                bw = 0.5
            ann = {"id": len(anns) + 1, "image_id": iid, "category_id": int(rng.choice([7, 3, 11, 5])),
                   "bbox": [x, y, bw, bh], "area": float(np.round(max(bw, 0) * max(bh, 0), 1))}
            r = rng.random()
            if r < 0.1:
                ann["iscrowd"] = 1
                ann["segmentation"] = {"size": [h, w], "counts": [0, 5, 10]}
            elif r < 0.15:
                ann["segmentation"] = []
            elif r < 0.2:
                ann["ignore"] = True
                ann["segmentation"] = [[x, y, x + 1, y, x, y + 1]]
            elif r < 0.22:
                ann["area"] = 0
                ann["segmentation"] = [[x, y, x + 1, y, x, y + 1]]
            elif r < 0.25:
                ann["segmentation"] = [[]]
            else:
                ann["segmentation"] = [[round(float(v), 2) for v in rng.uniform(0, 60, 2 * int(rng.integers(3, 9)))]
                                       for _ in range(int(rng.integers(1, 3)))]
                ann["segmentation"][0][0] = -0.0 if r > 0.95 else 1e-3 if r > 0.9 else 12
            anns.append(ann)
    for seg in ([1.5, 2, 3, 4, 5, 6], [[[1, 2, 3, 4, 5, 6]]], [[1, 2, 3, 4, 5, 6], 7]):  # not lists of polygons
        anns.append({"id": len(anns) + 1, "image_id": images[1]["id"], "category_id": 3, "bbox": [1, 1, 5, 5],
                     "area": 25, "segmentation": seg})
    anns.append({"id": len(anns) + 1, "image_id": 5, "category_id": 7, "bbox": [1, 1, 5, 5], "area": 25,
                 "segmentation": [[1, 1, 6, 1, 6, 6]]})  # an image that is not in 'images'
    doc = {"images": images, "annotations": anns, "categories": cats}
    path.write_text(json.dumps(doc))
    return doc


@pytest.fixture()
def synth_ann(data_root) -> dict:
    cfg = compose([f"data_root={data_root}", "dataset=synth_tiny"])
    return {"train": Path(cfg.dataset.train_ann), "val": Path(cfg.dataset.val_ann), "root": Path(cfg.dataset.root)}


def test_synthetic_set_equals_mmdet_lvis(synth_ann, tmp_path):
    ref, kw = _mmdet("lvis", synth_ann["train"], synth_ann["root"])
    _assert_same(ref, _packed("lvis", kw, tmp_path), rfs_thr=0.3)
    ref, kw = _mmdet("lvis", synth_ann["val"], synth_ann["root"], test_mode=True)
    _assert_same(ref, _packed("lvis", kw, tmp_path))


@pytest.mark.parametrize("kind", ["lvis", "coco"])
def test_corner_cases_equal_mmdet(kind, tmp_path):
    ann = tmp_path / "corner.json"
    doc = _corner_case_file(ann, coco=kind == "coco")
    classes = ["c7", "c11", "c5"] if kind == "coco" else None  # CocoDataset: a subset, in the file's order
    for filter_cfg in (FILTER, dict(filter_empty_gt=False), None):
        ref, kw = _mmdet(kind, ann, tmp_path, classes, filter_cfg=filter_cfg)
        _assert_same(ref, _packed(kind, kw, tmp_path / "cache"), rfs_thr=0.9)
    ref, kw = _mmdet(kind, ann, tmp_path, classes, test_mode=True)
    ours = _packed(kind, kw, tmp_path / "cache")
    _assert_same(ref, ours)
    insts = [x for i in range(len(ours)) for x in ours.get_data_info(i)["instances"]]
    assert any(x["ignore_flag"] for x in insts) and any(isinstance(x.get("mask"), dict) for x in insts)
    assert any(x.get("mask") == [[]] for x in insts) and any("mask" not in x for x in insts)
    assert any(isinstance(x.get("mask", [[0.0]])[0][0], int) for x in insts if isinstance(x.get("mask"), list)
               and x["mask"] and isinstance(x["mask"][0], list) and x["mask"][0])  # ints stay ints, as in mmdet
    assert len(insts) < len(doc["annotations"]) - 20  # the rules dropped boxes


def test_lvis_shaped_file_equals_mmdet(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from count_bench import generate
    finally:
        sys.path.pop(0)
    ann = tmp_path / "lvis_like.json"
    generate(ann, scale=0.005, seed=1)
    ref, kw = _mmdet("lvis", ann, tmp_path)
    _assert_same(ref, _packed("lvis", kw, tmp_path / "cache"), sample=150, rfs_thr=0.01)


def test_parallel_build_is_byte_identical(tmp_path):
    """The annotations decoded by forked workers, each a part of them: the same pack, byte for byte."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from count_bench import generate
    finally:
        sys.path.pop(0)
    lvis_like, corner, coco = tmp_path / "lvis_like.json", tmp_path / "corner.json", tmp_path / "coco.json"
    generate(lvis_like, scale=0.002, seed=2)
    _corner_case_file(corner)
    _corner_case_file(coco, coco=True)
    for ann, variant, classes in ((lvis_like, "lvis", None), (corner, "lvis", None), (coco, "coco", ["c7", "c5"])):
        packs = []
        for workers in (1, 2, 3, 7):
            out = tmp_path / f"{ann.stem}.{workers}.npk"
            packed.build(ann, out, variant, classes, workers=workers)
            packs.append(out.read_bytes())
        assert all(p == packs[0] for p in packs[1:]), ann.name
        arrays, header = packed.open_pack(tmp_path / f"{ann.stem}.3.npk")
        assert header["num_instances"] == arrays["label"].size > 0


def test_a_bad_annotation_in_a_worker_s_part_is_one_line(tmp_path, monkeypatch):
    from ecmctl.core.errors import UserError

    children = []
    fork = packed._fork
    monkeypatch.setattr(packed, "_fork", lambda *a: children.append(fork(*a)) or children[-1])

    ann = tmp_path / "a.json"
    doc = _corner_case_file(ann)
    last = len(doc["annotations"]) - 1
    for field, value, message in (("bbox", [1, 2, 3], "has a bbox of 3 numbers"),
                                  ("image_id", "x", "an entry of 'annotations' among #")):
        bad = json.loads(json.dumps(doc))
        bad["annotations"][last][field] = value
        ann.write_text(json.dumps(bad))
        with pytest.raises(UserError, match=str(ann)) as e:
            packed.build(ann, tmp_path / "out.npk", "lvis", workers=3)
        assert message in str(e.value) and "\n" not in str(e.value)
        if field == "image_id":  # numbered in the whole section, not in the worker's part
            first = int(str(e.value).split("among #")[1].split("-")[0])
            assert 0 < first <= last < first + 200
    assert len(children) >= 2  # (the first part, with the images, may be empty on a small file)
    for pid, _ in children:  # each worker was reaped, none left behind
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def test_a_file_changed_while_it_is_packed_is_an_error(tmp_path, monkeypatch):
    from ecmctl.core.errors import UserError

    ann = tmp_path / "a.json"
    _corner_case_file(ann)
    read_chunks = packed.read_chunks

    def touched(path, *args):
        for chunk in read_chunks(path, *args):
            st = os.stat(path)
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # someone writes the file meanwhile
            yield chunk
    monkeypatch.setattr(packed, "read_chunks", touched)
    with pytest.raises(UserError, match="changed while it was read"):
        packcache.load(ann, "lvis", None, tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*.npk")) and not list((tmp_path / "cache").glob(".*.tmp"))


def test_a_copy_of_the_file_finds_the_pack_once_hashed(tmp_path, capfd):
    """No recorded hash: the file is hashed while it is packed, and a valid pack of that hash is used."""
    ann, cache = tmp_path / "a.json", tmp_path / "cache"
    _corner_case_file(ann)
    _, _, path = packcache.load(ann, "lvis", None, cache)
    before = path.stat()
    copy = tmp_path / "copy.json"
    copy.write_bytes(ann.read_bytes())
    arrays, _, again = packcache.load(copy, "lvis", None, cache)
    assert again == path and (path.stat().st_ino, path.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert arrays["img_id"].size == 60 and _cache_files(cache) == [path]
    assert not list(cache.glob(".*.tmp")) and "rebuilding" not in capfd.readouterr().err
    assert packcache.known_sha256(copy, cache) == packcache.known_sha256(ann, cache) is not None


@pytest.mark.parametrize("field, value, message", [
    ("area", None, "an entry of 'annotations' among #0-"), ("bbox", [1, 2, 3], "has a bbox of 3 numbers"),
    ("image_id", "x", "Expected `int`, got `str`")])
def test_bad_annotations_are_one_line(tmp_path, field, value, message):
    from ecmctl.core.errors import UserError

    ann = tmp_path / "a.json"
    doc = _corner_case_file(ann)
    if value is None:
        del doc["annotations"][3][field]
    else:
        doc["annotations"][3][field] = value
    ann.write_text(json.dumps(doc))
    with pytest.raises(UserError, match=str(ann)) as e:
        packcache.load(ann, "lvis", None, tmp_path / "cache")
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not list((tmp_path / "cache").glob("*.npk")) and not list((tmp_path / "cache").glob(".*.tmp"))


def _cache_files(d: Path) -> list[Path]:
    return sorted(d.glob("*.npk"))


def test_cache_rebuilds_changed_or_corrupt_files(tmp_path, capfd):
    ann, cache = tmp_path / "a.json", tmp_path / "cache"
    _corner_case_file(ann)
    arrays, _, path = packcache.load(ann, "lvis", None, cache)
    assert path is not None and _cache_files(cache) == [path]
    reference = {k: np.array(v) for k, v in arrays.items()}
    # a changed file: a new hash, a new pack
    doc = json.loads(ann.read_text())
    doc["annotations"][0]["bbox"][2] += 1
    ann.write_text(json.dumps(doc))
    _, _, path2 = packcache.load(ann, "lvis", None, cache)
    assert path2 != path and len(_cache_files(cache)) == 2
    # truncated, then one byte altered: detected, rebuilt
    for damage in ("truncate", "flip"):
        data = bytearray(path.read_bytes())
        if damage == "truncate":
            data = data[: len(data) // 2]
        else:
            data[200] ^= 0xFF
        path.write_bytes(bytes(data))
        with pytest.raises(packed.CorruptPack):
            packed.open_pack(path)
        ann_old = tmp_path / "old.json"
        _corner_case_file(ann_old)  # the first content again (deterministic): the damaged pack's key
        again, _, p3 = packcache.load(ann_old, "lvis", None, cache)
        assert p3 == path and all(np.array_equal(again[k], reference[k]) for k in reference)
    assert "rebuilding it" in capfd.readouterr().err


def test_concurrent_builders_make_one_valid_pack(tmp_path):
    ann, cache = tmp_path / "a.json", tmp_path / "cache"
    _corner_case_file(ann)
    code = ("import sys; from ecmctl.dataset import packcache; "
            "a, h, p = packcache.load(sys.argv[1], 'lvis', None, sys.argv[2]); print(p, a['bbox'].shape[0])")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(ann), str(cache)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}) for _ in range(3)]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs) and len({tuple(o) for o in outs}) == 1
    assert [p.name for p in _cache_files(cache)] == [Path(outs[0][0]).name]
    assert not list(cache.glob("*.tmp")) and not list(cache.glob(".*.tmp"))
    packed.open_pack(outs[0][0])  # verifies


def test_unwritable_cache_builds_privately_and_says_so_once(tmp_path, capfd):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    ann, cache = tmp_path / "a.json", tmp_path / "ro"
    _corner_case_file(ann)
    cache.mkdir()
    cache.chmod(0o555)
    try:
        for _ in range(2):
            arrays, _, path = packcache.load(ann, "lvis", None, cache / "sub")
            assert path is None and arrays["img_id"].size == 60
    finally:
        cache.chmod(0o755)
    assert capfd.readouterr().err.count("cannot be written; building a.json for this process only") == 1


def test_unwritable_cache_as_root_falls_back_too(tmp_path, capfd):
    ann, blocker = tmp_path / "a.json", tmp_path / "file"
    _corner_case_file(ann)
    blocker.write_text("not a directory")
    for _ in range(2):
        _, _, path = packcache.load(ann, "lvis", None, blocker / "cache")
        assert path is None
    assert capfd.readouterr().err.count("for this process only") == 1


def test_pickled_dataset_carries_no_arrays_and_loads_in_workers(synth_ann, tmp_path):
    import torch

    _, kw = _mmdet("lvis", synth_ann["train"], synth_ann["root"])
    ours = _packed("lvis", kw, tmp_path)
    blob = pickle.dumps(ours)
    assert len(blob) < 64_000  # the path and the index, not the data
    back = pickle.loads(blob)
    assert back.get_data_info(3) == ours.get_data_info(3)
    loader = torch.utils.data.DataLoader(ours, batch_size=4, num_workers=2, collate_fn=list,
                                         multiprocessing_context="fork")
    seen = [d["img_id"] for batch in loader for d in batch]
    assert seen == [ours.get_data_info(i)["img_id"] for i in range(len(ours))]


def test_config_uses_the_packed_dataset_unless_turned_off(overrides, tmp_path):
    """(The train runs of test_train_eval.py check that a real run trains on it.)"""
    from ecmctl.engine.builder import build_mm_config

    classes = [f"c{i}" for i in range(8)]
    cfg = compose([*overrides, "dataset.rfs_thr=0.3", "loss=bce"])
    mm = build_mm_config(cfg, classes, tmp_path / "w")
    assert mm.train_dataloader.dataset.type == "ecmctl.ClassBalancedDataset"
    inner, test = mm.train_dataloader.dataset.dataset, mm.test_dataloader.dataset
    assert inner.type == test.type == "ecmctl.PackedLVISV1Dataset"
    assert inner.cache_dir == test.cache_dir == str((tmp_path / "runs" / "cache" / "datasets").resolve())
    mm = build_mm_config(compose([*overrides, "loss=bce", "dataset.rfs_thr=0.3", "dataset.packed=false",
                                  f"dataset.cache_dir={tmp_path}/c"]), classes, tmp_path / "w")
    assert mm.train_dataloader.dataset.type == "ClassBalancedDataset"
    assert mm.train_dataloader.dataset.dataset.type == mm.test_dataloader.dataset.type == "LVISV1Dataset"
