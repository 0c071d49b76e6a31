"""Benchmark `ecmctl count` against `lvis.LVIS(path)` on an LVIS-v1-shaped annotation file.

The file is generated once (cached under benchmarks/.cache/) with per-category instance and image
counts equal to LVIS v1 train (ecmctl/dataset/lvis_v1_categories.tsv), ~100k images and 1.27M polygon
annotations (~1 GB). Each method runs in its own subprocess; its wall time, CPU time (os.wait4) and peak
RSS (the child's own VmHWM at its exit, benchmarks/peak_rss.py) are measured, and both results are checked against the
tsv counts exactly.

    python benchmarks/count_bench.py              # full size (~1 GB file, LVIS needs ~10 GB RAM)
    python benchmarks/count_bench.py --scale 0.05 # quick run

`generate(path, scale, seed)` is importable: tests build a tiny file with it.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import numpy as np

GEN_VERSION = "lvis-like/1"
LVIS_V1_TRAIN_IMAGES = 100_170
CACHE = Path(__file__).resolve().parent / ".cache"
NUM_POOL = 4096


def reference_categories() -> list[dict]:
    """LVIS v1 train per-category statistics shipped with ecmctl, in category order."""
    text = (resources.files("ecmctl.dataset") / "lvis_v1_categories.tsv").read_text()
    cats = []
    for rec in csv.DictReader(io.StringIO(text), delimiter="\t"):
        cats.append({"id": int(rec["id"]), "name": rec["name"], "frequency": rec["frequency"],
                     "instance_count": int(rec["instance_count"]), "image_count": int(rec["image_count"])})
    return cats


def _group(image_count: int) -> str:
    return "r" if image_count <= 10 else ("c" if image_count <= 100 else "f")


def scaled_categories(scale: float = 1.0) -> list[dict]:
    """The reference counts times `scale`, rounded, every category >= 1 instance and image.

    At scale 1 this is the tsv itself. The frequency is the LVIS rule applied to the scaled image count
    (at scale 1 it equals the tsv's own column).
    """
    if not 0 < scale <= 1:
        raise ValueError(f"scale must be in (0, 1], got {scale}")
    out = []
    for c in reference_categories():
        inst = max(1, round(c["instance_count"] * scale))
        img = max(1, min(inst, round(c["image_count"] * scale)))
        out.append({**c, "instance_count": inst, "image_count": img, "frequency": _group(img)})
    return out


def _polygon_pool(rng: np.random.Generator, size: int = NUM_POOL) -> list[tuple[str, str, str]]:
    """(segmentation, bbox, area) json snippets of realistic size (LVIS v1 averages ~40 points)."""
    pool = []
    for _ in range(size):
        parts = 1 if rng.random() < 0.85 else int(rng.integers(2, 4))
        w, h = rng.uniform(8, 640), rng.uniform(8, 480)
        x0, y0 = rng.uniform(0, 640 - w * 0.9), rng.uniform(0, 480 - h * 0.9)
        polys, xs_all, ys_all = [], [], []
        for _ in range(parts):
            npts = int(np.clip(rng.gamma(3.0, 14.0 / parts), 3, 300))
            ang = np.sort(rng.uniform(0, 2 * np.pi, npts))
            rad = rng.uniform(0.6, 1.0, npts)
            xs = x0 + w / 2 * (1 + rad * np.cos(ang))
            ys = y0 + h / 2 * (1 + rad * np.sin(ang))
            xs_all.append(xs)
            ys_all.append(ys)
            flat = np.empty(2 * npts)
            flat[0::2], flat[1::2] = xs, ys
            polys.append("[" + ", ".join(f"{v:.2f}" for v in flat) + "]")
        xs, ys = np.concatenate(xs_all), np.concatenate(ys_all)
        bx, by = xs.min(), ys.min()
        bbox = f"[{bx:.2f}, {by:.2f}, {xs.max() - bx:.2f}, {ys.max() - by:.2f}]"
        area = f"{0.7 * (xs.max() - bx) * (ys.max() - by):.1f}"
        pool.append(("[" + ", ".join(polys) + "]", bbox, area))
    return pool


def _image_json(rng: np.random.Generator, image_id: int, num_cats: int) -> str:
    neg = np.sort(rng.choice(num_cats, size=int(rng.integers(0, 12)), replace=False) + 1)
    nex = np.sort(rng.choice(num_cats, size=int(rng.integers(0, 3)), replace=False) + 1)
    name = f"{image_id:012d}.jpg"
    return json.dumps({
        "date_captured": "2013-11-14 11:18:45",
        "neg_category_ids": neg.tolist(),
        "id": image_id,
        "license": int(rng.integers(1, 9)),
        "height": 480,
        "width": 640,
        "flickr_url": f"http://farm{int(rng.integers(1, 10))}.staticflickr.com/{image_id}/{name}",
        "coco_url": f"http://images.cocodataset.org/train2017/{name}",
        "not_exhaustive_category_ids": nex.tolist(),
    })


def generate(path: str | os.PathLike, scale: float = 1.0, seed: int = 0) -> dict:
    """Write an LVIS-v1-shaped annotation file; returns {"categories", "num_images", "num_annotations"}.

    Per category, the file holds exactly `instance_count` annotations spread over exactly
    `image_count` distinct images (scaled_categories(scale)). Written to a temp file, then renamed.
    """
    path = Path(path)
    cats = scaled_categories(scale)
    rng = np.random.default_rng(seed)
    num_images = max(max(c["image_count"] for c in cats), round(LVIS_V1_TRAIN_IMAGES * scale))
    image_ids = np.arange(1, num_images + 1) * 3 + 6  # sparse, not 0..n-1, like COCO ids

    cat_col, img_col = [], []
    for c in cats:
        chosen = rng.choice(num_images, size=c["image_count"], replace=False)
        extra = chosen[rng.integers(0, c["image_count"], c["instance_count"] - c["image_count"])]
        img_col.append(np.concatenate([chosen, extra]))
        cat_col.append(np.full(c["instance_count"], c["id"], dtype=np.int64))
    img_idx = np.concatenate(img_col)
    cat_ids = np.concatenate(cat_col)
    order = np.argsort(img_idx, kind="stable")  # annotations grouped by image, like LVIS
    img_of_ann = image_ids[img_idx[order]]
    cat_of_ann = cat_ids[order]
    num_ann = len(order)

    pool = _polygon_pool(rng, min(NUM_POOL, max(64, num_ann // 4)))
    pick = rng.integers(0, len(pool), num_ann)
    ann_fmt = '{"area": %s, "id": %d, "segmentation": %s, "image_id": %d, "bbox": %s, "category_id": %d}'

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", buffering=1 << 22) as f:
            f.write('{"info": ' + json.dumps({
                "description": "LVIS-v1-shaped synthetic file for benchmarking ecmctl count",
                "url": "https://www.lvisdataset.org", "version": "1.0", "year": 2020,
                "contributor": "ecmctl benchmarks/count_bench.py", "date_created": "2020-01-01",
                "generator": GEN_VERSION, "scale": scale, "seed": seed}))
            f.write(', "annotations": [')
            batch = 20_000
            ids = np.arange(1, num_ann + 1)
            for lo in range(0, num_ann, batch):
                hi = min(lo + batch, num_ann)
                rows = []
                for k, img, cat, p in zip(ids[lo:hi].tolist(), img_of_ann[lo:hi].tolist(),
                                          cat_of_ann[lo:hi].tolist(), pick[lo:hi].tolist(), strict=True):
                    seg, bbox, area = pool[p]
                    rows.append(ann_fmt % (area, k, seg, img, bbox, cat))
                f.write((", " if lo else "") + ", ".join(rows))
            f.write('], "images": [')
            for lo in range(0, num_images, batch):
                chunk = [_image_json(rng, int(i), len(cats)) for i in image_ids[lo:lo + batch]]
                f.write((", " if lo else "") + ", ".join(chunk))
            f.write('], "licenses": ' + json.dumps([
                {"url": f"http://creativecommons.org/licenses/{i}/2.0/", "id": i, "name": f"License {i}"}
                for i in range(1, 9)]))
            f.write(', "categories": ' + json.dumps([
                {"frequency": c["frequency"], "synset": f"{c['name']}.n.01", "synonyms": [c["name"]],
                 "id": c["id"], "def": f"a (generated) definition of {c['name']}", "name": c["name"],
                 "image_count": c["image_count"], "instance_count": c["instance_count"]}
                for c in cats]))
            f.write("}")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return {"categories": cats, "num_images": num_images, "num_annotations": num_ann}


def cached_file(scale: float, seed: int = 0) -> tuple[Path, dict]:
    """The generated file for (scale, seed) under benchmarks/.cache/, generated if missing."""
    stem = f"lvis_v1_like_scale{scale:g}_seed{seed}"
    path, meta_path = CACHE / f"{stem}.json", CACHE / f"{stem}.expected.json"
    if path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("generator") == GEN_VERSION and meta.get("bytes") == path.stat().st_size:
            return path, meta
    t0 = time.perf_counter()
    print(f"generating {path} (scale {scale:g}) ...", flush=True)
    meta = generate(path, scale, seed)
    meta.update(generator=GEN_VERSION, bytes=path.stat().st_size)
    meta_path.write_text(json.dumps(meta))
    print(f"generated {path.stat().st_size / 1e6:.0f} MB in {time.perf_counter() - t0:.1f} s", flush=True)
    return path, meta


LVIS_SCRIPT = """
import json, sys
from lvis import LVIS
api = LVIS(sys.argv[1])
out = []
for cat in api.dataset["categories"]:
    imgs = api.cat_img_map.get(cat["id"], [])
    out.append({"id": cat["id"], "instance_count": len(imgs), "image_count": len(set(imgs))})
with open(sys.argv[2], "w") as f:
    json.dump(out, f)
"""


def run_measured(cmd: list[str], env: dict | None = None) -> tuple[float, float, int, int, str]:
    """Run `python -m MODULE ...` or `python -c SCRIPT ...`; returns (wall s, CPU s, the child's own peak RSS
    in bytes, exit code, stderr tail)."""
    python, how, what, *rest = cmd
    with tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile("r") as peak:
        t0 = time.perf_counter()
        proc = subprocess.Popen([python, str(Path(__file__).with_name("peak_rss.py")), peak.name, how, what, *rest],
                                stdout=subprocess.DEVNULL, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        tail = err.read().decode(errors="replace")[-2000:]
        rss = int(peak.read() or 0)
    return wall, usage.ru_utime + usage.ru_stime, rss, proc.returncode, tail


def _check(name: str, got: list[dict], expected: list[dict]) -> list[str]:
    problems = []
    if [c["id"] for c in got] != [c["id"] for c in expected]:
        return [f"{name}: category ids/order differ"]
    for g, e in zip(got, expected, strict=True):
        for key in ("instance_count", "image_count"):
            if g[key] != e[key]:
                problems.append(f"{name}: category {e['id']} {key} {g[key]} != {e[key]}")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the LVIS v1 counts (quick: 0.05)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true",
                    help="keep both methods' output counts files (under benchmarks/.cache/) for inspection")
    args = ap.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    console = Console()
    path, meta = cached_file(args.scale, args.seed)
    expected = meta["categories"]
    with open(path, "rb") as f:  # warm the page cache: both methods read the file from memory
        while f.read(1 << 24):
            pass

    outdir = Path(tempfile.mkdtemp(prefix="count_bench.", dir=CACHE))
    load = os.getloadavg()
    ours_out, lvis_out = outdir / "ecmctl_counts.json", outdir / "lvis_counts.json"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    rows, problems = [], []
    ours_cmd = [sys.executable, "-m", "ecmctl.cli", "count", str(path), "-o", str(ours_out)]
    lvis_cmd = [sys.executable, "-c", LVIS_SCRIPT, str(path), str(lvis_out)]
    for name, cmd, out in (("ecmctl count", ours_cmd, ours_out), ("lvis.LVIS + count", lvis_cmd, lvis_out)):
        console.print(f"running {name} ...")
        wall, cpu, rss, rc, err = run_measured(cmd, env)
        if rc != 0:
            problems.append(f"{name}: exit code {rc}: {err.strip().splitlines()[-1:]}")
            got = []
        else:
            data = json.loads(out.read_text())
            got = data["categories"] if isinstance(data, dict) else data
            problems += _check(name, got, expected)
        rows.append((name, wall, cpu, rss, rc == 0 and not _check(name, got, expected)))

    console.print(f"file: {path} ({path.stat().st_size / 1e6:.0f} MB, {meta['num_annotations']:,} "
                  f"annotations, {meta['num_images']:,} images, {len(expected)} categories); load average "
                  f"{load[0]:.1f} before, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} CPUs")
    table = Table(title="ecmctl count vs lvis.LVIS")
    for col in ("method", "wall s", "CPU s", "peak RSS MB", "counts == expected"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for name, wall, cpu, rss, ok in rows:
        table.add_row(name, f"{wall:.2f}", f"{cpu:.2f}", f"{rss / 2**20:.0f}", "yes" if ok else "NO")
    console.print(table)
    (_, t_ours, _, rss_ours, _), (_, t_lvis, _, rss_lvis, _) = rows
    speed, mem = t_lvis / t_ours, rss_ours / rss_lvis
    console.print(f"speed-up (LVIS wall / ecmctl wall): {speed:.1f}x  (target >= 10x: "
                  f"{'met' if speed >= 10 else 'NOT met'})")
    console.print(f"memory (ecmctl peak RSS / LVIS peak RSS): {mem:.3f}  (target <= 0.2: "
                  f"{'met' if mem <= 0.2 else 'NOT met'})")
    if args.scale < 1:
        console.print(f"(the targets are for the full-size file; --scale {args.scale:g} is dominated by start-up)")
    if args.keep:
        console.print(f"kept outputs in {outdir}")
    else:
        for p in (ours_out, lvis_out):
            p.unlink(missing_ok=True)
        outdir.rmdir()
    for p in problems[:20]:
        console.print(f"[red]mismatch:[/] {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
