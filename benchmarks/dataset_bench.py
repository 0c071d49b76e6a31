"""Benchmark the packed training set against mmdet's on an LVIS-v1-train-shaped annotation file.

The file is count_bench.py's (generated once under benchmarks/.cache/ from lvis_v1_categories.tsv: 100,170
images, 1.27M polygon annotations, LVIS v1's per-class counts). Each contender runs in its own process:

  mmdet            LVISV1Dataset (lvis-api) + mmengine ClassBalancedDataset(oversample_thr=1e-3)
  packed, first    ecmctl.PackedLVISV1Dataset + ecmctl.ClassBalancedDataset, empty cache: hash, build, write
  packed, second   the same in a second process, the cache present: map it, verify it, index it

Measured in each child, after its imports: the wall time of the data list and of RFS, the peak RSS of the
whole process (VmHWM), its RSS after the build and what the build added to it, and the private memory it added
(anonymous pages, /proc/self/smaps_rollup: what no other process can share; the pack's pages are file pages,
shared through the page cache, counted as "Private_Clean" by the kernel while no other process maps them);
the repeat indices and one data-list entry are compared between contenders.

    python benchmarks/dataset_bench.py                  # full size (mmdet needs ~10 GB RAM and minutes)
    python benchmarks/dataset_bench.py --images 5000    # quick
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from count_bench import CACHE, LVIS_V1_TRAIN_IMAGES, cached_file  # noqa: E402

FILTER = dict(filter_empty_gt=True, min_size=2)  # ecmctl's train set
RFS_THR = 1e-3


def _memory() -> dict:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    roll = dict(line.split(":", 1) for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:])
    kb = lambda d, k: int(d[k].split()[0]) * 1024  # noqa: E731
    return {"rss": kb(status, "VmRSS"), "peak": kb(status, "VmHWM"),
            "private": kb(roll, "Anonymous"), "file": kb(status, "RssFile")}


def child(kind: str, ann: str, cache: str, out: str) -> None:
    import numpy as np

    import ecmctl.engine.compat as compat

    compat.apply()
    from mmdet.datasets import LVISV1Dataset
    from mmengine.dataset import ClassBalancedDataset as MMEngineRFS

    from ecmctl.engine.packed_dataset import ClassBalancedDataset, PackedLVISV1Dataset

    kw = dict(data_root=str(Path(ann).parent), ann_file=ann, data_prefix=dict(img=""), pipeline=[],
              filter_cfg=FILTER)
    before = _memory()
    t0 = time.perf_counter()
    if kind == "mmdet":
        ds = LVISV1Dataset(**kw)
        t1 = time.perf_counter()
        rfs = MMEngineRFS(ds, RFS_THR)
    else:
        ds = PackedLVISV1Dataset(cache_dir=cache, **kw)
        t1 = time.perf_counter()
        rfs = ClassBalancedDataset(ds, RFS_THR)
    t2 = time.perf_counter()
    after = _memory()
    indices = np.asarray(rfs.repeat_indices, np.int64)
    sample = ds.get_data_info(len(ds) // 2)
    Path(out).write_text(json.dumps({
        "data_list_s": t1 - t0, "rfs_s": t2 - t1, "before": before, "after": after, "images": len(ds),
        "rfs_len": len(rfs), "rfs_sha": hashlib.sha256(indices.tobytes()).hexdigest(),
        "sample": hashlib.sha256(json.dumps(sample, sort_keys=True).encode()).hexdigest()}))


def measure(kind: str, ann: Path, cache: Path, tmp: Path) -> dict:
    out = tmp / f"{kind}.json"
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", kind, str(ann), str(cache), str(out)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{proc.stderr[-3000:]}")
    return {**json.loads(out.read_text()), "process_s": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=LVIS_V1_TRAIN_IMAGES, help="images (full size: 100,170)")
    ap.add_argument("--child", nargs=4, metavar=("KIND", "ANN", "CACHE", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0

    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    ann, meta = cached_file(min(1.0, args.images / LVIS_V1_TRAIN_IMAGES))
    with open(ann, "rb") as f:  # in the page cache for every contender
        while f.read(1 << 24):
            pass
    tmp = Path(tempfile.mkdtemp(prefix="dataset_bench.", dir=CACHE))
    cache = tmp / "cache"
    load = os.getloadavg()
    rows = {}
    for kind in ("mmdet", "packed_first", "packed_second"):
        console.print(f"running {kind} ...")
        rows[kind] = measure(kind, ann, cache, tmp)
    shutil.rmtree(tmp)

    mb = lambda b: f"{b / 2**20:,.0f}"  # noqa: E731
    console.print(f"file: {ann} ({ann.stat().st_size / 1e6:,.0f} MB, {meta['num_images']:,} images, "
                  f"{meta['num_annotations']:,} annotations); load average {load[0]:.1f} before, "
                  f"{os.getloadavg()[0]:.1f} after, on {os.cpu_count()} CPUs")
    table = Table(title="train set: data list + RFS (oversample_thr 1e-3), each in its own process", width=160)
    for col in ("contender", "data list s", "RFS s", "total s", "peak RSS MB", "RSS after MB",
                "RSS added MB", "of it file pages MB", "private added MB", "RFS indices"):
        table.add_column(col, justify="left" if col == "contender" else "right")
    ref = rows["mmdet"]
    for kind, r in rows.items():
        same = "reference" if kind == "mmdet" else (
            "equal" if (r["rfs_sha"], r["rfs_len"], r["sample"]) == (ref["rfs_sha"], ref["rfs_len"], ref["sample"])
            else "DIFFER")
        table.add_row(kind, f"{r['data_list_s']:.2f}", f"{r['rfs_s']:.2f}", f"{r['data_list_s'] + r['rfs_s']:.2f}",
                      mb(r["after"]["peak"]), mb(r["after"]["rss"]), mb(r["after"]["rss"] - r["before"]["rss"]),
                      mb(r["after"]["file"] - r["before"]["file"]),
                      mb(r["after"]["private"] - r["before"]["private"]), same)
    console.print(table)
    first, second = rows["packed_first"], rows["packed_second"]
    total = lambda r: r["data_list_s"] + r["rfs_s"]  # noqa: E731
    checks = [
        ("speed: mmdet / packed first build", total(ref) / total(first), ">= 10x", total(ref) / total(first) >= 10),
        ("memory: packed peak RSS / mmdet peak RSS", first["after"]["peak"] / ref["after"]["peak"], "<= 0.2",
         first["after"]["peak"] <= 0.2 * ref["after"]["peak"]),
        ("memory: packed RSS after / mmdet RSS after", first["after"]["rss"] / ref["after"]["rss"], "<= 0.1",
         first["after"]["rss"] <= 0.1 * ref["after"]["rss"]),
        ("second process: ready in (s)", total(second), "<= 1 s", total(second) <= 1.0),
        ("second process: private memory added (MB)", (second["after"]["private"] - second["before"]["private"])
         / 2**20, "<= 100 MB", second["after"]["private"] - second["before"]["private"] <= 100 * 2**20),
    ]
    for name, value, target, ok in checks:
        console.print(f"{name}: {value:.3g}  (target {target}: {'met' if ok else 'NOT met'})")
    console.print(f"(after imports, mmdet's process held {mb(ref['before']['rss'])} MB, the packed ones "
                  f"{mb(first['before']['rss'])} MB: torch, mmcv, mmdet)")
    differ = [k for k in ("packed_first", "packed_second") if rows[k]["rfs_sha"] != ref["rfs_sha"]]
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
