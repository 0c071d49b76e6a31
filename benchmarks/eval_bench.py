"""Benchmark ecmctl's streaming LVIS evaluator against lvis-api and faster-coco-eval, end to end.

Generated once (seeded, cached under benchmarks/.cache/): an LVIS-v1-val-shaped ground truth, with the
real per-category frequencies (ecmctl/data/lvis_v1_categories.tsv: categories drawn per image in
proportion to their image counts, instances per image from their instance/image ratio; ~12.3 boxes and
~8 negative categories per image, like LVIS val's 244k boxes on 19,809 images), polygons on every
annotation, and 300 detections per image as mmdet writes them (float32 model outputs; near-copies of
the ground truth of the right and of wrong classes, the rest background), with RLE masks for segm.

Each evaluator runs in its own subprocess (load ground truth + results, evaluate, summarise): wall time
measured inside the child, CPU time (user + system) from that child's own rusage (os.wait4), peak RSS from
the child's own VmHWM.
CPU time is the steadier figure on a shared machine; ecmctl, being quick, runs `--repeat` times (median).
The metrics of every evaluator are compared with lvis-api's.

    python benchmarks/eval_bench.py --images 5000 --iou bbox
    python benchmarks/eval_bench.py --images 19809 --iou segm --only ecmctl
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import numpy as np
import pycocotools.mask as mask_utils
from count_bench import reference_categories
from peak_rss import peak_rss_bytes  # benchmarks/ is on sys.path: run as a script

from ecmctl.evaluation.overlap import mask_area

GEN_VERSION = "lvis-val-like/1"
CACHE = Path(__file__).resolve().parent / ".cache"
LVIS_VAL_IMAGES = 19_809
LVIS_TRAIN_IMAGES = 100_170
SIZES = np.array([(480, 640), (427, 640), (640, 480), (640, 427), (375, 500), (512, 640), (640, 640)])
METHODS = ("ecmctl", "lvis", "fce")


# -- data -------------------------------------------------------------------------------------------
def _ellipse(x: np.ndarray, y: np.ndarray, w: np.ndarray, h: np.ndarray, rng: np.random.Generator,
             points: int) -> np.ndarray:
    """(n, 2 * points) polygons inscribed in the boxes, a little irregular, rounded like LVIS."""
    ang = np.linspace(0, 2 * np.pi, points, endpoint=False)[None, :]
    rad = rng.uniform(0.75, 1.0, (x.size, points))
    px = x[:, None] + w[:, None] / 2 * (1 + rad * np.cos(ang))
    py = y[:, None] + h[:, None] / 2 * (1 + rad * np.sin(ang))
    out = np.empty((x.size, 2 * points))
    out[:, 0::2], out[:, 1::2] = px, py
    return np.round(out, 2)


def _random_boxes(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    area = np.exp(rng.uniform(np.log(16), np.log(0.5 * h * w), n))
    ratio = np.exp(rng.uniform(np.log(1 / 3), np.log(3), n))
    bw = np.minimum(np.sqrt(area * ratio), w - 1)
    bh = np.minimum(np.sqrt(area / ratio), h - 1)
    return np.stack([rng.uniform(0, w - bw), rng.uniform(0, h - bh), bw, bh], 1)


def _image(rng, img_id: int, cats: list[dict], p_img: np.ndarray, ratio: np.ndarray, ann_id: int, segm: bool):
    """(image dict, annotation dicts, detection dicts) of one image."""
    h, w = (int(v) for v in SIZES[rng.integers(len(SIZES))])
    k = len(cats)
    pos = np.unique(rng.choice(k, 1 + rng.poisson(2.6), p=p_img))
    counts = 1 + rng.poisson(np.maximum(ratio[pos] - 1, 0) * 0.8)
    gt_cat = np.repeat(pos, counts)
    gt_box = _random_boxes(rng, gt_cat.size, h, w)
    polys = _ellipse(*gt_box.T, rng, 48)  # LVIS val polygons: ~190 MB for 244k annotations
    gt_area = mask_area(mask_utils.frPyObjects(polys.tolist(), h, w))
    neg = np.setdiff1d(np.unique(rng.choice(k, rng.poisson(8), p=p_img)), pos)
    nel = pos[rng.random(pos.size) < 0.1]
    image = {"id": img_id, "height": h, "width": w, "neg_category_ids": [cats[c]["id"] for c in neg],
             "not_exhaustive_category_ids": [cats[c]["id"] for c in nel],
             "coco_url": f"http://images.cocodataset.org/val2017/{img_id:012d}.jpg"}
    anns = [{"area": float(a), "id": ann_id + i, "segmentation": [p], "image_id": img_id,
             "bbox": [round(float(v), 2) for v in b], "category_id": cats[c]["id"]}
            for i, (a, p, b, c) in enumerate(zip(gt_area, polys.tolist(), gt_box, gt_cat))]

    # detections: near-copies of each gt (right class, sometimes a wrong one), then background
    reps = 1 + rng.poisson(1.5, gt_cat.size)
    src = np.repeat(np.arange(gt_cat.size), reps)
    near = gt_box[src] + rng.normal(0, 1, (src.size, 4)) * np.c_[gt_box[src, 2:], gt_box[src, 2:]] * \
        rng.choice([0.03, 0.08, 0.2], (src.size, 1))
    near[:, 2:] = np.maximum(near[:, 2:], 1)
    near_cat = np.where(rng.random(src.size) < 0.8, gt_cat[src], rng.choice(k, src.size, p=p_img))
    near_score = rng.beta(4, 2, src.size)
    n_bg = max(0, 300 - src.size)
    box = np.concatenate([near, _random_boxes(rng, n_bg, h, w)])[:300]
    cat = np.concatenate([near_cat, rng.choice(k, n_bg, p=p_img)])[:300]
    score = np.concatenate([near_score, rng.beta(0.6, 12, n_bg)])[:300].astype(np.float32)
    xyxy = np.c_[box[:, :2], box[:, :2] + box[:, 2:]].astype(np.float32).astype(np.float64)
    order = np.argsort(-score, kind="stable")  # mmdet outputs are score-sorted
    dets = [{"image_id": img_id, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": float(s),
             "category_id": cats[c]["id"]}
            for b, s, c in zip(xyxy[order].tolist(), score[order], cat[order])]
    if segm:
        rles = mask_utils.frPyObjects(_ellipse(*box[order].T, rng, 12).tolist(), h, w)
        for d, r in zip(dets, rles):
            d["segmentation"] = {"size": r["size"], "counts": r["counts"].decode()}
    return image, anns, dets


def generate(num_images: int, seed: int = 0) -> tuple[Path, Path, Path]:
    """(ground truth, bbox results, segm results) paths, generated once."""
    out = CACHE / f"{GEN_VERSION.replace('/', '-')}-{num_images}-s{seed}"
    paths = out / "gt.json", out / "results.bbox.json", out / "results.segm.json"
    if all(p.is_file() for p in paths):
        return paths
    out.mkdir(parents=True, exist_ok=True)
    cats = reference_categories()
    counts = np.array([c["image_count"] for c in cats], np.float64)
    p_img = counts / counts.sum()
    ratio = np.array([c["instance_count"] / max(c["image_count"], 1) for c in cats])
    rng = np.random.default_rng(seed)
    img_ids = np.sort(rng.choice(np.arange(1, 600_000), num_images, replace=False))
    enc = msgspec.json.Encoder()
    images, anns = [], []
    tmp = [p.with_suffix(".tmp") for p in paths[1:]]
    with open(tmp[0], "wb") as fb, open(tmp[1], "wb") as fs:
        fb.write(b"[")
        fs.write(b"[")
        for i, img_id in enumerate(img_ids.tolist()):
            image, a, dets = _image(rng, img_id, cats, p_img, ratio, len(anns) + 1, segm=True)
            images.append(image)
            anns.extend(a)
            sep = b"," if i else b""
            fs.write(sep + enc.encode(dets)[1:-1])
            fb.write(sep + enc.encode([{k: v for k, v in d.items() if k != "segmentation"} for d in dets])[1:-1])
        fb.write(b"]")
        fs.write(b"]")
    gt = {"info": {"description": f"{GEN_VERSION} seed {seed}"}, "images": images, "annotations": anns,
          "categories": [{"id": c["id"], "name": c["name"], "frequency": c["frequency"],
                          "image_count": c["image_count"], "instance_count": c["instance_count"],
                          "synset": c["name"], "synonyms": [c["name"]], "def": "-"} for c in cats]}
    paths[0].with_suffix(".tmp").write_bytes(enc.encode(gt))
    paths[0].with_suffix(".tmp").rename(paths[0])
    for t, p in zip(tmp, paths[1:]):
        t.rename(p)
    return paths


# -- evaluators (each runs in a child process) ------------------------------------------------------
def run_ecmctl(gt: str, results: str, iou: str) -> dict:
    from ecmctl.evaluation import evaluate_files

    m = evaluate_files(gt, results, iou)
    return {**{k: v for k, v in m.items() if k != "per_class"}, "per_class": m["per_class"]}


def run_lvis(gt: str, results: str, iou: str) -> dict:
    import lvis.eval
    from lvis import LVIS, LVISEval, LVISResults

    class NumpyWithFloat:  # lvis 0.5.3 uses np.float (ecmctl.engine.compat would import torch into this process)
        float = float

        def __getattr__(self, name):
            return getattr(np, name)

    lvis.eval.np = NumpyWithFloat()
    g = LVIS(gt)
    ev = LVISEval(g, LVISResults(g, results, max_dets=300), iou)
    ev.run()
    prec = ev.eval["precision"]
    per_class = {}
    for k, cid in enumerate(ev.params.cat_ids):
        p = prec[:, :, k, 0]
        p = p[p > -1]
        per_class[g.cats[cid]["name"]] = float(np.mean(p)) if p.size else -1.0
    return {**{k: float(v) for k, v in ev.results.items()}, "per_class": per_class}


def run_fce(gt: str, results: str, iou: str) -> dict:
    from faster_coco_eval import COCO, COCOeval_faster

    g = COCO(gt)
    ev = COCOeval_faster(g, g.loadRes(results), iou, lvis_style=True, print_function=lambda *a, **k: None)
    ev.params.maxDets = [300]
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    names = {"AP_all": "AP", "AP_50": "AP50", "AP_75": "AP75", "AP_small": "APs", "AP_medium": "APm",
             "AP_large": "APl", "APr": "APr", "APc": "APc", "APf": "APf", "AR_300": "AR@300",
             "AR_small": "ARs@300", "AR_medium": "ARm@300", "AR_large": "ARl@300"}
    return {names[k]: float(v) for k, v in ev.stats_as_dict.items() if k in names}


def child(method: str, gt: str, results: str, iou: str, out: str) -> None:
    run = {"ecmctl": run_ecmctl, "lvis": run_lvis, "fce": run_fce}[method]
    t0 = time.perf_counter()
    metrics = run(gt, results, iou)
    seconds = time.perf_counter() - t0
    Path(out).write_text(json.dumps({"seconds": seconds, "metrics": metrics, "rss_mb": peak_rss_bytes() / 2**20}))


def measure(method: str, gt: Path, results: Path, iou: str, tmp: Path) -> dict:
    out = tmp / f"{method}-{iou}.json"
    cmd = [sys.executable, __file__, "--child", method, "--gt", str(gt), "--results", str(results), "--iou", iou,
           "--out", str(out)]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{method} failed (status {status})")
    res = json.loads(out.read_text())
    return {**res, "cpu": usage.ru_utime + usage.ru_stime}


def compare(ref: dict, got: dict) -> tuple[float, int]:
    """(largest |difference| over shared summary keys and per-class APs, number of values compared)."""
    diffs = [abs(ref[k] - v) for k, v in got.items() if k != "per_class" and k in ref]
    pc_ref, pc = ref.get("per_class", {}), got.get("per_class", {})
    diffs += [abs(pc_ref[k] - v) for k, v in pc.items() if k in pc_ref]
    return (max(diffs) if diffs else float("nan")), len(diffs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=LVIS_VAL_IMAGES)
    ap.add_argument("--iou", choices=("bbox", "segm"), default="bbox")
    ap.add_argument("--only", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="runs of ecmctl (the median is reported)")
    ap.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    ap.add_argument("--gt", help=argparse.SUPPRESS)
    ap.add_argument("--results", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.gt, args.results, args.iou, args.out)
        return
    t0 = time.perf_counter()
    gt, bbox, segm = generate(args.images, args.seed)
    results = bbox if args.iou == "bbox" else segm
    print(f"data: {args.images} images, {gt.stat().st_size / 1e6:.0f} MB ground truth, "
          f"{results.stat().st_size / 1e6:.0f} MB {args.iou} results ({time.perf_counter() - t0:.0f} s to "
          "generate or find)", flush=True)
    methods = [m for m in METHODS if m in args.only.split(",")]
    if "fce" in methods:
        try:
            import faster_coco_eval  # noqa: F401
        except ImportError:
            methods.remove("fce")
    runs = {}
    for m in methods:
        tries = [measure(m, gt, results, args.iou, gt.parent) for _ in range(args.repeat if m == "ecmctl" else 1)]
        runs[m] = sorted(tries, key=lambda r: r["seconds"])[len(tries) // 2]
        for r in tries:
            print(f"  {m}: {r['seconds']:.1f} s wall, {r['cpu']:.1f} s CPU, {r['rss_mb']:.0f} MB", flush=True)
    base = runs.get("lvis")
    print(f"\n{args.iou}, {args.images} images, 300 detections per image")
    print(f"{'evaluator':<10}{'wall (s)':>10}{'CPU (s)':>9}{'peak RSS (MB)':>15}{'wall/lvis':>11}{'CPU/lvis':>10}"
          f"{'RSS/lvis':>10}{'AP':>9}   max |Δ| vs lvis-api")
    for m, r in runs.items():
        rel = (f"{r['seconds'] / base['seconds']:>11.3f}{r['cpu'] / base['cpu']:>10.3f}"
               f"{r['rss_mb'] / base['rss_mb']:>10.3f}" if base else f"{'-':>11}{'-':>10}{'-':>10}")
        diff = ""
        if base and m != "lvis":
            d, n = compare(base["metrics"], r["metrics"])
            diff = f"{d:.2e} ({n} values)"
        print(f"{m:<10}{r['seconds']:>10.1f}{r['cpu']:>9.1f}{r['rss_mb']:>15.0f}{rel}{r['metrics']['AP']:>9.4f}"
              f"   {diff}")
    if base and "ecmctl" in runs:
        d, n = compare(base["metrics"], runs["ecmctl"]["metrics"])
        print(f"\necmctl vs lvis-api: {'IDENTICAL' if d <= 1e-12 else 'DIFFERENT'} (max |Δ| {d:.1e} over {n} "
              f"values); {base['seconds'] / runs['ecmctl']['seconds']:.1f}x faster (wall), "
              f"{base['cpu'] / runs['ecmctl']['cpu']:.1f}x less CPU, {base['rss_mb'] / runs['ecmctl']['rss_mb']:.1f}x "
              "less peak memory")


if __name__ == "__main__":
    main()
