"""ECM on one representative config of every detector family in mmdet 3.3's configs/.

Each family goes through the user's route, as separate processes:

    ecmctl train detector=mmdet detector.mmdet_config=FAMILY/CONFIG.py loss=ecm dataset=synth_tiny \\
        train.max_iters=2 detector.pretrained=null calibrate.max_iters=2 calibrate.min_iters=2 run_dir=...
    ecmctl eval RUN_DIR --set eval.max_per_img=100

(2 iterations on the tiny synthetic set, random init, r measured over 2 iterations where the detector has a
background class; 100 detections per image instead of LVIS's 300, since a random-init mask detector computes a
mask for each and the tiny images hold a few objects), and the table says family -> classification loss ->
ECM form -> trained / evaluated / refused (reason) -> seconds. The only per-family override is an image
size where a family needs more than the tiny set's 96 px (`SIZES`). Usage:

    python benchmarks/detector_zoo.py [--only fam1,fam2] [--jobs 2] [--out zoo.json] [--keep DIR [--reuse]]

Each family's row is also written to DIR/<family>.row.json; with --reuse, families whose row says
`evaluated` or `refused` are not run again (after a fix, rerun the others).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# family -> its representative config (the smallest standard variant, relative to mmdet's shipped configs)
FAMILIES = {
    "faster_rcnn": "faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py",
    "mask_rcnn": "mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py",
    "cascade_rcnn": "cascade_rcnn/cascade-mask-rcnn_r50_fpn_1x_coco.py",
    "libra_rcnn": "libra_rcnn/libra-faster-rcnn_r50_fpn_1x_coco.py",
    "dynamic_rcnn": "dynamic_rcnn/dynamic-rcnn_r50_fpn_1x_coco.py",
    "pisa": "pisa/faster-rcnn_r50_fpn_pisa_1x_coco.py",
    "double_heads": "double_heads/dh-faster-rcnn_r50_fpn_1x_coco.py",
    "cascade_rpn": "cascade_rpn/cascade-rpn_faster-rcnn_r50-caffe_fpn_1x_coco.py",
    "htc": "htc/htc_r50_fpn_1x_coco.py",
    "ms_rcnn": "ms_rcnn/ms-rcnn_r50_fpn_1x_coco.py",
    "grid_rcnn": "grid_rcnn/grid-rcnn_r50_fpn_gn-head_2x_coco.py",
    "sabl": "sabl/sabl-faster-rcnn_r50_fpn_1x_coco.py",
    "point_rend": "point_rend/point-rend_r50-caffe_fpn_ms-1x_coco.py",
    "tridentnet": "tridentnet/tridentnet_r50-caffe_1x_coco.py",
    "scnet": "scnet/scnet_r50_fpn_1x_coco.py",
    "sparse_rcnn": "sparse_rcnn/sparse-rcnn_r50_fpn_1x_coco.py",
    "queryinst": "queryinst/queryinst_r50_fpn_1x_coco.py",
    "retinanet": "retinanet/retinanet_r50_fpn_1x_coco.py",
    "fcos": "fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py",
    "atss": "atss/atss_r50_fpn_1x_coco.py",
    "yolof": "yolof/yolof_r50-c5_8xb8-1x_coco.py",
    "foveabox": "foveabox/fovea_r50_fpn_4xb4-1x_coco.py",
    "reppoints": "reppoints/reppoints-moment_r50_fpn_1x_coco.py",
    "guided_anchoring": "guided_anchoring/ga-retinanet_r50_fpn_1x_coco.py",
    "nas_fcos": "nas_fcos/nas-fcos_r50-caffe_fpn_nashead-gn-head_4xb4-1x_coco.py",
    "condinst": "condinst/condinst_r50_fpn_ms-poly-90k_coco_instance.py",
    "boxinst": "boxinst/boxinst_r50_fpn_ms-90k_coco.py",
    "fsaf": "fsaf/fsaf_r50_fpn_1x_coco.py",
    "paa": "paa/paa_r50_fpn_1x_coco.py",
    "ddod": "ddod/ddod_r50_fpn_1x_coco.py",
    "vfnet": "vfnet/vfnet_r50_fpn_1x_coco.py",
    "gfl": "gfl/gfl_r50_fpn_1x_coco.py",
    "tood": "tood/tood_r50_fpn_1x_coco.py",
    "rtmdet": "rtmdet/rtmdet_tiny_8xb32-300e_coco.py",
    "rtmdet_ins": "rtmdet/rtmdet-ins_tiny_8xb32-300e_coco.py",
    "yolox": "yolox/yolox_tiny_8xb8-300e_coco.py",
    "yolov3": "yolo/yolov3_mobilenetv2_8xb24-320-300e_coco.py",
    "ghm": "ghm/retinanet_r50_fpn_ghm-1x_coco.py",
    "centernet": "centernet/centernet-update_r50-caffe_fpn_ms-1x_coco.py",
    "cornernet": "cornernet/cornernet_hourglass104_8xb6-210e-mstest_coco.py",
    "centripetalnet": "centripetalnet/centripetalnet_hourglass104_16xb6-crop511-210e-mstest_coco.py",
    "autoassign": "autoassign/autoassign_r50-caffe_fpn_1x_coco.py",
    "free_anchor": "free_anchor/freeanchor_r50_fpn_1x_coco.py",
    "ssd": "ssd/ssdlite_mobilenetv2-scratch_8xb24-600e_coco.py",
    "yolact": "yolact/yolact_r50_1xb8-55e_coco.py",
    "solo": "solo/solo_r50_fpn_1x_coco.py",
    "solov2": "solov2/solov2_r50_fpn_1x_coco.py",
    "lad": "lad/lad_r50-paa-r101_fpn_2xb8_coco_1x.py",
    "ld": "ld/ld_r18-gflv1-r101_fpn_1x_coco.py",
    "detr": "detr/detr_r50_8xb2-150e_coco.py",
    "deformable_detr": "deformable_detr/deformable-detr_r50_16xb2-50e_coco.py",
    "conditional_detr": "conditional_detr/conditional-detr_r50_8xb2-50e_coco.py",
    "dab_detr": "dab_detr/dab-detr_r50_8xb2-50e_coco.py",
    "dino": "dino/dino-4scale_r50_8xb2-12e_coco.py",
    "ddq": "ddq/ddq-detr-4scale_r50_8xb2-12e_coco.py",
    "maskformer": "maskformer/maskformer_r50_ms-16xb1-75e_coco.py",
    "mask2former": "mask2former/mask2former_r50_8xb2-lsj-50e_coco.py",
}
# the one per-family override: an image size for families that need more than 96 px
SIZES = {
    "dino": 256,  # its encoder keeps the top 900 positions as queries: 96 px has fewer
    "ddod": 384,  # its deformable convs need a P7 map of at least 3 px
}
COMMON = ["loss=ecm", "dataset=synth_tiny", "train.max_iters=2", "train.checkpoint_interval=2",
          "detector.pretrained=null", "calibrate.max_iters=2", "calibrate.min_iters=2", "train.progress=false"]


def ecmctl() -> list[str]:
    exe = Path(sys.executable).with_name("ecmctl")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "ecmctl"]


def classification(config: str) -> str:
    """'base -> ECM form' for each classification site of the config, or the refusal (no process needed)."""
    from mmengine.config import Config

    from ecmctl.core.errors import UserError
    from ecmctl.engine.builder import mmdet_config_path
    from ecmctl.engine.placement import drop_semantic_branch, plan_placement

    model = Config.fromfile(str(mmdet_config_path(config))).model.to_dict()
    drop_semantic_branch(model)
    try:
        sites = plan_placement(model).sites
    except UserError:
        return "-"
    pairs = dict.fromkeys(f"{s.base_loss} -> {s.form}" for s in sites)
    return "; ".join(pairs)


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].removeprefix("error: ")[:300] if lines else ""


def run_family(family: str, root: Path, data_root: Path, timeout: int) -> dict:
    """Train and evaluate one family; its row, also written to ROOT/<family>.row.json."""
    row = _run_family(family, root, data_root, timeout)
    (root / f"{family}.row.json").write_text(json.dumps(row))
    return row


def _run_family(family: str, root: Path, data_root: Path, timeout: int) -> dict:
    config = FAMILIES[family]
    run_dir = root / family
    size = SIZES.get(family)
    extra = [f"dataset.train_scale=[{size},{size}]", f"dataset.test_scale=[{size},{size}]"] if size else []
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    row = {"family": family, "config": config, "image_size": size or 96, "classification": classification(config)}
    t0 = time.monotonic()
    cmd = [*ecmctl(), "train", "detector=mmdet", f"detector.mmdet_config={config}", *COMMON, *extra,
           f"data_root={data_root}", f"run_root={root / 'runs'}", f"run_dir={run_dir}"]
    try:
        tr = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {**row, "status": "failed", "reason": f"train timed out after {timeout} s",
                "seconds": round(time.monotonic() - t0, 1)}
    if tr.returncode != 0:
        status = "refused" if tr.returncode == 2 and not run_dir.exists() else "failed"
        return {**row, "status": status, "reason": last_line(tr.stderr or tr.stdout),
                "seconds": round(time.monotonic() - t0, 1)}
    try:
        ev = subprocess.run([*ecmctl(), "eval", str(run_dir), "--set", "eval.max_per_img=100"], capture_output=True,
                            text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {**row, "status": "trained", "reason": f"eval timed out after {timeout} s",
                "seconds": round(time.monotonic() - t0, 1)}
    seconds = round(time.monotonic() - t0, 1)
    metrics = run_dir / "metrics.json"
    if ev.returncode != 0 or not metrics.is_file():
        return {**row, "status": "trained", "reason": "eval: " + last_line(ev.stderr or ev.stdout), "seconds": seconds}
    doc = json.loads(metrics.read_text())
    ap = (doc.get("bbox") or {}).get("AP")
    return {**row, "status": "evaluated", "reason": "", "AP": ap, "segm": "segm" in doc, "seconds": seconds}


def markdown(rows: list[dict]) -> str:
    """The table as README markdown."""
    out = ["| family (config) | classification -> ECM form | result | s |", "|---|---|---|---:|"]
    for r in rows:
        size = f", {r['image_size']} px" if r["image_size"] != 96 else ""
        result = {"evaluated": "trained, evaluated" + (" (box + mask)" if r.get("segm") else ""),
                  "trained": f"trained; eval failed: {r['reason']}", "refused": f"refused: {r['reason']}",
                  "failed": f"failed: {r['reason']}"}[r["status"]]
        cell = r["classification"].replace("|", "\\|")
        out.append(f"| {r['family']} (`{r['config'].split('/')[-1]}`{size}) | {cell} | {result} | {r['seconds']:.0f} |")
    return "\n".join(out) + "\n"


def prepare_data(data_root: Path, run_root: Path) -> None:
    """The tiny set and its counts, made once before families run side by side (they share both)."""
    from ecmctl.core.config import compose
    from ecmctl.pipeline.prepare import ensure_counts

    ensure_counts(compose(["dataset=synth_tiny", f"data_root={data_root}", f"run_root={run_root}"]))


def render(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="ECM on mmdet 3.3's detector families (2 iterations, synth_tiny, random init)")
    for col in ("family", "classification -> ECM form", "result", "s"):
        table.add_column(col, overflow="fold")
    for r in rows:
        result = {"evaluated": "trained, evaluated" + (" (box+mask)" if r.get("segm") else ""),
                  "trained": f"trained, eval failed: {r['reason']}", "refused": f"refused: {r['reason']}",
                  "failed": f"FAILED: {r['reason']}"}[r["status"]]
        size = f" @{r['image_size']}px" if r["image_size"] != 96 else ""
        table.add_row(r["family"] + size, r["classification"], result, f"{r['seconds']:.0f}")
    Console(width=160).print(table)
    n = {s: sum(r["status"] == s for r in rows) for s in ("evaluated", "trained", "refused", "failed")}
    print(f"{len(rows)} families: {n['evaluated']} trained and evaluated, {n['trained']} trained only, "
          f"{n['refused']} refused, {n['failed']} failed; {sum(r['seconds'] for r in rows):.0f} s of runs")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", help="comma-separated families (default: all)")
    ap.add_argument("--jobs", type=int, default=1, help="families run at once")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per train or eval process")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    ap.add_argument("--markdown", default=None, help="write the table as markdown here")
    ap.add_argument("--keep", default=None, help="run directories here (default: a temporary directory)")
    ap.add_argument("--reuse", action="store_true", help="with --keep: keep the rows of families already "
                    "evaluated or refused there")
    args = ap.parse_args(argv)
    families = [f for f in args.only.split(",") if f] or list(FAMILIES)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        ap.error(f"unknown families {unknown}; known: {', '.join(FAMILIES)}")
    with tempfile.TemporaryDirectory(prefix="ecmctl-zoo-") as tmp:
        root = Path(args.keep or tmp).resolve()
        root.mkdir(parents=True, exist_ok=True)
        data_root = root / "data"
        prepare_data(data_root, root / "runs")
        t0 = time.monotonic()
        done = {}
        for f in families if args.reuse else []:
            row_file = root / f"{f}.row.json"
            if row_file.is_file() and (row := json.loads(row_file.read_text()))["status"] in ("evaluated", "refused"):
                done[f] = row
        todo = [f for f in families if f not in done]
        for f in todo:  # a fresh run directory per family
            shutil.rmtree(root / f, ignore_errors=True)
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            fresh = dict(zip(todo, pool.map(lambda f: run_family(f, root, data_root, args.timeout), todo)))
        rows = [done.get(f) or fresh[f] for f in families]
        render(rows)
        print(f"wall time {time.monotonic() - t0:.0f} s")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    if args.markdown:
        Path(args.markdown).write_text(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
