"""Forward + backward time of ECMLoss against plain BCE-with-logits, mmdet's sigmoid CrossEntropyLoss and
SeesawLoss, on an LVIS-sized RoI batch (16 images × 512 RoIs, 1203 classes + background, ~25 % fg).

    .venv/bin/python benchmarks/loss_bench.py [--repeats 15] [--warmup 3] [--device cpu|cuda]
        [--shapes 16x512,2x512] [--dtype fp32,bf16] [--json results.json]

All losses see the same logits and labels in the same run (SeesawLoss needs C + 2 = 1205 columns: it gets
the same logits plus one extra column). Methods are timed round-robin, so machine load hits all alike;
the table shows the median, and the ratio to plain BCE-with-logits on a prebuilt one-hot target.
Each shape is IMAGESxROIS (16x512: the paper's 8-GPU batch of 8192 RoIs; 2x512: one GPU's share). bf16
gives the losses bf16 logits inside torch.autocast, as a classifier under AMP does; every loss computes
what autocast lets it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--rois", type=int, default=512, help="RoIs per image")
    ap.add_argument("--shapes", default=None, help="comma-separated IMAGESxROIS (default: --images x --rois)")
    ap.add_argument("--dtype", default="fp32", help="comma-separated: fp32, bf16")
    ap.add_argument("--fg-fraction", type=float, default=0.25)
    ap.add_argument("--bg-ratio", type=float, default=6.3313)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write every figure to this file")
    args = ap.parse_args(argv)
    shapes = [tuple(int(v) for v in s.split("x")) for s in (args.shapes or f"{args.images}x{args.rois}").split(",")]
    dtypes = args.dtype.split(",")
    if bad := [d for d in dtypes if d not in DTYPES]:
        ap.error(f"--dtype {','.join(bad)}: choose from {', '.join(DTYPES)}")

    from ecmctl.dataset.lvis import builtin_counts
    from ecmctl.ecm.weights import weights_document
    from ecmctl.losses import ECMLoss

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    counts = builtin_counts("lvis_v1")
    with tempfile.TemporaryDirectory() as tmp:
        wf = Path(tmp) / "lvis_weights.json"
        wf.write_text(json.dumps(weights_document(counts, counts["source"]["sha256"], args.bg_ratio)))
        ecm = ECMLoss(str(wf)).to(device)

    print(f"device: {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
                                 f" ({torch.get_num_threads()} threads)"))
    results = [bench(ecm, len(counts["categories"]), images, rois, dtype, device, args)
               for images, rois in shapes for dtype in dtypes]
    if args.json:
        args.json.write_text(json.dumps({
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
            "torch": torch.__version__, "repeats": args.repeats, "warmup": args.warmup, "results": results},
            indent=1))


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def bench(ecm, num_classes: int, images: int, rois: int, dtype: str, device: torch.device, args) -> dict:
    """Time every loss on one batch of images x rois logits in `dtype`; print the table, return its figures."""
    from mmdet.models.losses import CrossEntropyLoss, SeesawLoss

    n = images * rois
    g = torch.Generator().manual_seed(args.seed)
    logits = torch.randn(n, num_classes + 2, generator=g).mul_(2.0).sub_(3.0).to(device, DTYPES[dtype])
    labels = torch.full((n,), num_classes, dtype=torch.long)
    fg = torch.rand(n, generator=g) < args.fg_fraction
    labels[fg] = torch.randint(0, num_classes, (int(fg.sum()),), generator=g)
    labels = labels.to(device)
    label_weights = torch.ones(n, device=device)
    avg_factor = float(n)  # what BBoxHead passes: number of RoIs with label weight > 0
    base = logits[:, : num_classes + 1].contiguous()  # N × 1204, the RoI head's C + 1 outputs
    base_seesaw = logits.contiguous()  # N × 1205 for Seesaw's C + 2 outputs
    onehot = torch.zeros(base.shape, device=device).scatter_(1, labels[:, None], 1.0)

    ce_sigmoid = CrossEntropyLoss(use_sigmoid=True).to(device)
    seesaw = SeesawLoss(num_classes=num_classes).to(device)

    # plain BCE summed over classes and averaged over RoIs, as the RoI losses below
    def bce_plain(s):
        return F.binary_cross_entropy_with_logits(s, onehot, reduction="sum") / n

    def bce_onehot(s):
        target = torch.zeros(s.shape, device=device).scatter_(1, labels[:, None], 1.0)
        return F.binary_cross_entropy_with_logits(s, target, reduction="sum") / n

    def mmdet_ce(s):
        return ce_sigmoid(s, labels, label_weights, avg_factor=avg_factor)

    def mmdet_seesaw(s):
        out = seesaw(s, labels, label_weights, avg_factor=avg_factor)
        return out["loss_cls_objectness"] + out["loss_cls_classes"]

    def ecm_loss(s):
        return ecm(s, labels, label_weights, avg_factor=avg_factor)

    methods = [  # name, function, input
        ("bce_with_logits (prebuilt one-hot)", bce_plain, base),
        ("bce_with_logits + one-hot", bce_onehot, base),
        ("mmdet CrossEntropyLoss(sigmoid)", mmdet_ce, base),
        ("mmdet SeesawLoss", mmdet_seesaw, base_seesaw),
        ("ECMLoss", ecm_loss, base),
    ]

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def run_once(fn, x):
        s = x.detach().clone().requires_grad_()
        sync()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=DTYPES[dtype], enabled=dtype != "fp32"):
            loss = fn(s)
        loss.backward()
        sync()
        return time.perf_counter() - t0, float(loss.detach())

    times = {name: [] for name, _, _ in methods}
    values = {}
    for _ in range(args.warmup):
        for _name, fn, x in methods:
            run_once(fn, x)
    for _ in range(args.repeats):
        for name, fn, x in methods:
            dt, values[name] = run_once(fn, x)
            times[name].append(dt)

    # sanity: ECMLoss equals the formula Σ_c m_c BCE(σ(2s + log w⁺ − log w⁻), y) averaged over RoIs
    z = 2 * base.double() + ecm.bias.double()
    ref = (F.binary_cross_entropy_with_logits(z, onehot.double(), reduction="none") * ecm.det_weight.double())
    ref = float(ref.sum(1).mean())
    assert abs(values["ECMLoss"] - ref) <= 1e-4 * abs(ref), (values["ECMLoss"], ref)

    print(f"torch {torch.__version__}; logits {n} x {num_classes + 1} {dtype} ({n} RoIs = {images} x "
          f"{rois}), {int(fg.sum())} foreground ({fg.float().mean():.1%}); forward + backward, "
          f"median of {args.repeats} after {args.warmup} warmup")
    ref_t = statistics.median(times[methods[0][0]])
    width = max(len(name) for name, _, _ in methods)
    print(f"{'loss':<{width}}  {'median ms':>10}  {'min ms':>8}  {'vs BCE':>7}  {'value':>9}")
    for name, _, _ in methods:
        med = statistics.median(times[name])
        print(f"{name:<{width}}  {med * 1e3:10.1f}  {min(times[name]) * 1e3:8.1f}  {med / ref_t:6.2f}x  "
              f"{values[name]:9.4f}")
    ecm_t, seesaw_t = statistics.median(times["ECMLoss"]), statistics.median(times["mmdet SeesawLoss"])
    print(f"ECMLoss / BCE-with-logits = {ecm_t / ref_t:.2f}x (target <= 1.3x); "
          f"ECMLoss / Seesaw = {ecm_t / seesaw_t:.2f}x (target < 1)")
    return {"images": images, "rois": rois, "logits": [n, num_classes + 1], "dtype": dtype,
            "ecm_vs_bce": ecm_t / ref_t, "ecm_vs_seesaw": ecm_t / seesaw_t,
            "methods": {name: {"median_ms": statistics.median(times[name]) * 1e3, "min_ms": min(times[name]) * 1e3,
                               "value": values[name]} for name, _, _ in methods}}


if __name__ == "__main__":
    main()
