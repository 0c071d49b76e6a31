"""The GPU check's driver: ecmctl's figures from one GPU call of at most 8 minutes (see scripts/gpu-check.sh).

Why: a GPU is lent only now and then, for 15 minutes of device time in all, to a machine without the
detection stack and without network. So the check builds mmcv's ops for that GPU (or installs the wheel an
earlier check returned), then runs each measurement under a time cap: a step that fails or overruns records
its error and the check goes on. Every figure goes into one JSON, rewritten after each step, so what ran
comes back even if the call is cut off. --dry-run runs the same steps at tiny sizes on this CPU.

    [BUDGET=480] bash scripts/gpu-check.sh [--dry-run] [--out DIR] [--work DIR]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as dt
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = "ecmctl/gpu-check@1"
REPORT = "gpu-check.json"
PAPER_R = 6.3313  # the r that the original ECM code hard-coded (Mask R-CNN R50, LVIS v1)
PART_BYTES = 15 * 2**20  # files returned from the device machine may be 16 MiB at most
BUILD_LOG_BYTES = 2 * 2**20  # the tail of mmcv's build log that goes to --out
RESERVE_S = 10  # kept back from the budget for the last JSON and the returned files
DRY_CAP_S = 240  # --dry-run: a 2-core CPU needs longer to start each process than a GPU needs for the step
WINDOW = 20  # mmengine's LogProcessor window (engine/builder.py): its `time` is the mean of the last 20 iters
TAIL_LINES = 25

# The paper's Mask R-CNN R50 row on the synthetic LVIS-size set, randomly initialised (the device machine cannot
# download ImageNet weights); the steps cap its epoch-based schedule with train.max_iters. One GPU at 2 images per
# iteration, timed per iteration: no gradient accumulation to the recipe's 16 (recipe.batch_policy=scale_lr).
FULL_SIZE = ["recipe=ecm_r50_1x", "dataset=synth", "detector.pretrained=null", "recipe.batch_policy=scale_lr"]


@dataclass(frozen=True)
class Sizes:
    """How big each step runs: LVIS scale on the GPU, tiny for --dry-run (the same steps and code)."""

    classes: int
    train_images: int
    val_images: int  # at least classes / 6; at 300 detections of 1203 classes, CUDA NMS takes ~0.3 s an image
    image: tuple[int, int]  # generated images, width x height, upscaled by the pipeline to `scale`
    scale: tuple[int, int]  # the pipeline's Resize (LVIS: 1333 x 800, keep ratio)
    rois: int | None  # RoIs sampled per image; None keeps the config's 512
    proposals: int | None  # RPN proposals per image at test time; None keeps the config's 1000
    max_per_img: int  # detections per image at evaluation (LVIS protocol: 300)
    calibrate_iters: int
    train_iters: int  # the ECM, BCE and AMP runs, each timed over its last WINDOW iterations
    torchrun_iters: int
    num_workers: int
    bench_shapes: str  # loss_bench.py --shapes: IMAGESxROIS
    bench_repeats: int


GPU = Sizes(classes=1203, train_images=400, val_images=240, image=(200, 120), scale=(1333, 800), rois=None,
            proposals=None, max_per_img=300, calibrate_iters=200, train_iters=50, torchrun_iters=10, num_workers=4,
            bench_shapes="16x512,2x512", bench_repeats=30)
DRY = Sizes(classes=100, train_images=17, val_images=17, image=(56, 32), scale=(112, 64), rois=32,
            proposals=50, max_per_img=10, calibrate_iters=2, train_iters=2, torchrun_iters=1, num_workers=0,
            bench_shapes="1x64", bench_repeats=3)


@dataclass
class Context:
    """What the steps share: sizes, folders, and what earlier steps found."""

    sizes: Sizes
    dry_run: bool
    out: Path
    work: Path
    whl: Path
    site: Path | None
    cuda: bool = False
    env: dict = field(default_factory=dict)
    weights: Path | None = None  # ECM weights for the training runs: calibrated, else the paper's r
    runs: dict[str, Path] = field(default_factory=dict)


class StepError(RuntimeError):
    """A step's command failed (`status` "failed") or overran its cap ("timeout"); `tail` is its output's end."""

    def __init__(self, message: str, status: str = "failed", tail: list[str] = ()) -> None:
        super().__init__(message)
        self.status, self.tail = status, list(tail)


# ---------------------------------------------------------------- pure parts (tests/test_gpu_check.py)


def arch_list(capabilities: list[list[int]]) -> str:
    """TORCH_CUDA_ARCH_LIST for exactly the GPUs present, e.g. [[9, 0]] -> "9.0": one arch builds fastest."""
    if not capabilities:
        raise ValueError("no CUDA device: nothing to build mmcv's ops for")
    return ";".join(sorted({f"{major}.{minor}" for major, minor in capabilities}))


def split_file(path: Path, dest: Path, part_bytes: int = PART_BYTES) -> list[Path]:
    """Copy `path` into `dest`, as NAME.part00, NAME.part01, ... when it is larger than `part_bytes`."""
    dest.mkdir(parents=True, exist_ok=True)
    if path.stat().st_size <= part_bytes:
        return [Path(shutil.copyfile(path, dest / path.name))]
    parts = []
    with open(path, "rb") as src:
        while chunk := src.read(part_bytes):
            parts.append(dest / f"{path.name}.part{len(parts):02d}")
            parts[-1].write_bytes(chunk)
    return parts


def join_parts(parts: list[Path], dest: Path) -> Path:
    """Concatenate NAME.partNN files (in order) into dest/NAME; refuses a result that is not a whole zip."""
    names = {p.name.rsplit(".part", 1)[0] for p in parts}
    if len(names) != 1:
        raise ValueError(f"parts of several files: {sorted(names)}")
    out = dest / names.pop()
    with open(out, "wb") as sink:
        for p in sorted(parts):
            sink.write(p.read_bytes())
    try:
        with zipfile.ZipFile(out) as whole:
            broken = whole.testzip()  # CRC of every member: a missing or truncated part shows
    except (zipfile.BadZipFile, OSError) as e:
        broken = str(e)
    if broken is not None:
        raise ValueError(f"{out.name}: the parts do not make a whole wheel ({len(parts)} found: {broken})")
    return out


def carried_wheel(folder: Path, work: Path) -> Path | None:
    """An mmcv wheel carried in `folder`: whole, or joined from the parts an earlier check returned."""
    whole = sorted(folder.glob("mmcv-*.whl"))
    if whole:
        return whole[-1]
    parts = sorted(folder.glob("mmcv-*.whl.part*"))
    return join_parts(parts, work) if parts else None


def build_env(base: dict[str, str], arch: str, jobs: int, shim: Path | None, nvidia: list[str]) -> dict[str, str]:
    """The environment that builds mmcv 2.1.0's ops for `arch` only, on `jobs` cores, without -g (as
    `make install` does). `shim` supplies THC/THCAtomics.cuh where torch no longer ships it; `nvidia` are
    the pip nvidia-* package folders torch runs on, whose headers (cusparse.h, ...) and libraries the CUDA
    toolkit may lack: they come after the toolkit's, through CPATH and LIBRARY_PATH."""
    env = {**base, "MMCV_WITH_OPS": "1", "FORCE_CUDA": "1", "TORCH_CUDA_ARCH_LIST": arch, "MAX_JOBS": str(jobs),
           "CFLAGS": "-DNDEBUG -O3 -g0 -fwrapv -Wall"}
    if shim is not None:
        env["MMCV_CUDA_ARGS"] = f"-I{shim}"
    for var, sub in (("CPATH", "include"), ("LIBRARY_PATH", "lib")):
        if nvidia:
            env[var] = os.pathsep.join([*(f"{d}/{sub}" for d in nvidia), *filter(None, [base.get(var)])])
    return env


def step_cap(cap_s: float, now: float, budget_end: float) -> float:
    """A step's time: its cap, or what the budget has left after the reserve for the last JSON."""
    return min(cap_s, budget_end - now - RESERVE_S)


def train_figures(log: list[dict]) -> dict:
    """ms/iter, data time and peak GPU memory from a run's mmengine scalars (ecmctl's `load_train_log`).

    The last record's `time` is the mean of the last WINDOW iterations, so a 50-iteration run is timed
    over iterations 31-50, after the warm-up; `memory` is torch.cuda.max_memory_allocated in MiB since the
    record before (mmengine resets the peak), so the peak of the run is their maximum.
    """
    if not log:
        raise RuntimeError("no training log (vis_data/scalars.json)")
    last = log[-1]
    memory = [r["memory"] for r in log if "memory" in r]
    losses = [r["loss"] for r in log]
    return {"iters": last["step"], "timed_iters": min(WINDOW, last["step"]), "ms_per_iter": 1e3 * last["time"],
            "data_ms_per_iter": 1e3 * last["data_time"], "peak_memory_mib": max(memory) if memory else None,
            "loss_finite": all(math.isfinite(v) for v in losses),
            "loss_first": losses[0] if math.isfinite(losses[0]) else None,
            "loss_last": losses[-1] if math.isfinite(losses[-1]) else None}


def summarize(steps: dict[str, dict]) -> dict:
    """The headline figures, from the steps that succeeded (None where a step did not)."""

    def fig(step: str, key: str):
        rec = steps.get(step, {})
        return rec.get(key) if rec.get("status") == "ok" else None

    ecm, bce = fig("train_ecm", "ms_per_iter"), fig("train_bce", "ms_per_iter")
    bench = fig("loss_bench", "results") or []
    return {
        "steps_ok": sum(r.get("status") == "ok" for r in steps.values()), "steps": len(steps),
        "device": fig("env", "devices"),
        "mmcv": fig("mmcv", "source"), "mmcv_build_s": fig("mmcv", "build_s"),
        "cuda_roi_align_max_abs_diff": fig("mmcv", "roi_align_max_abs_diff"),
        "cuda_nms_same_keep": fig("mmcv", "nms_same_keep"),
        "r": fig("calibrate", "r"), "r_ci95": fig("calibrate", "ci95"), "r_iters": fig("calibrate", "iters"),
        "r_paper": PAPER_R,
        "ms_per_iter": {"ecm": ecm, "bce": bce, "ecm_amp": fig("train_amp", "ms_per_iter")},
        "ecm_overhead_pct": 100.0 * (ecm - bce) / bce if ecm and bce else None,
        "peak_memory_mib": {name: fig(f"train_{name}", "peak_memory_mib") for name in ("ecm", "bce", "amp")},
        "torchrun_backend": fig("torchrun_nccl", "backend"),
        "loss_time": {f"{r['images']}x{r['rois']} {r['dtype']}": {
            "ecm_ms": r["methods"]["ECMLoss"]["median_ms"], "ecm_vs_bce": r["ecm_vs_bce"],
            "ecm_vs_seesaw": r["ecm_vs_seesaw"]} for r in bench},
        "eval_s_per_image": fig("eval", "s_per_image"),
    }


def assemble(ctx: Context, started: str, budget_s: float, elapsed_s: float, steps: dict[str, dict]) -> dict:
    """The one JSON the check writes (schema ecmctl/gpu-check@1)."""
    return {"schema": SCHEMA, "dry_run": ctx.dry_run, "started": started, "budget_s": round(budget_s),
            "elapsed_s": round(elapsed_s, 1), "detector": FULL_SIZE, "sizes": asdict(ctx.sizes),
            "summary": summarize(steps), "steps": steps}


# ---------------------------------------------------------------- running commands under a cap


def run(cmd: list[str], deadline: float, env: dict[str, str] | None = None, log: Path | None = None) -> list[str]:
    """Run `cmd` in its own process group until `deadline` (time.monotonic()), echoing its output (or
    appending it to `log`); returns its last lines. On overrun the whole group is killed (torchrun's
    ranks and dataloader workers too) and StepError("timeout") raised; a non-zero exit raises StepError."""
    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", env=env, cwd=ROOT, start_new_session=True)
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)

    def pump() -> None:
        with open(log, "a") if log else contextlib.nullcontext(sys.stdout) as sink:
            for line in proc.stdout:
                sink.write(line)
                sink.flush()
                tail.append(line.rstrip())

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        reader.join(timeout=5)
        raise StepError(f"over its cap, killed: {' '.join(map(str, cmd[:5]))} ...", "timeout", tail) from None
    reader.join(timeout=5)
    if proc.returncode != 0:
        raise StepError(f"exit status {proc.returncode}: {' '.join(map(str, cmd[:5]))} ...", "failed", tail)
    return list(tail)


def _kill_group(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


def probe(ctx: Context, name: str, deadline: float) -> dict:
    """Run this file's `--probe name` in a fresh interpreter (the driver itself never touches CUDA)."""
    out = ctx.work / f"probe-{name}.json"
    run([sys.executable, __file__, "--probe", f"{name}={out}"], deadline)
    return json.loads(out.read_text())


def ecmctl(*args: str) -> list[str]:
    return [sys.executable, "-m", "ecmctl", *args]


# ---------------------------------------------------------------- steps


@dataclass(frozen=True)
class Step:
    """One measurement. On the GPU machine it may run `cap_s` seconds, and it is skipped when the budget
    has less than `need_s` left (the least it can finish in there): a step that cannot finish wastes time."""

    name: str
    cap_s: int
    need_s: int
    fn: Callable[[Context, float], dict]
    needs_cuda: bool = False


def step_env(ctx: Context, deadline: float) -> dict:
    """Python, torch, CUDA, the GPU's compute capability, nvcc and ninja (the mmcv build needs both)."""
    ctx.env = probe(ctx, "env", deadline)
    ctx.cuda = ctx.env["cuda_available"]
    return ctx.env


def step_mmcv(ctx: Context, deadline: float) -> dict:
    """mmcv with ops: the venv's (--dry-run), a carried wheel, or built now for this GPU only; then
    mmcv's ops checked on the CPU and, with CUDA, RoIAlign and NMS on the GPU against the CPU."""
    if ctx.dry_run:
        figures: dict = {"source": "venv"}
    else:
        wheel = carried_wheel(ctx.whl, ctx.work)
        if wheel is None:
            wheel, figures = build_mmcv(ctx, deadline)
        else:
            figures = {"source": "carried", "wheel": wheel.name}
        run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--upgrade",
             "--target", ctx.site, wheel], deadline)
    return {**figures, **probe(ctx, "ops", deadline)}


def build_mmcv(ctx: Context, deadline: float) -> tuple[Path, dict]:
    """Build mmcv 2.1.0's wheel from the carried sdist for this GPU's arch; its parts go to --out."""
    sdist = next(iter(sorted(ctx.whl.glob("mmcv-*.tar.gz"))), None)
    if sdist is None:
        raise RuntimeError(f"neither an mmcv wheel nor mmcv's sdist in {ctx.whl}: run scripts/gpu-wheels.sh")
    arch, jobs = arch_list(ctx.env["capability"]), os.cpu_count() or 1
    shim = None
    if not (Path(ctx.env["torch_include"]) / "THC" / "THCAtomics.cuh").is_file():  # gone from recent torch
        shim = ctx.work / "shim"
        (shim / "THC").mkdir(parents=True, exist_ok=True)
        (shim / "THC" / "THCAtomics.cuh").write_text("#include <ATen/cuda/Atomic.cuh>\n")
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])  # pip's ninja
    env = build_env({**os.environ, "PATH": path}, arch, jobs, shim, ctx.env["nvidia"])
    dist, log = ctx.work / "mmcv-dist", ctx.work / "mmcv-build.log"
    print(f"building mmcv's ops for sm_{arch.replace('.', '')} with {jobs} jobs (log: {log}) ...", flush=True)
    t0 = time.monotonic()
    try:
        run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation", "--no-index",
             "-w", dist, sdist], deadline, env=env, log=log)
    finally:
        with open(log, "rb") as src:
            src.seek(max(0, log.stat().st_size - BUILD_LOG_BYTES))
            (ctx.out / log.name).write_bytes(src.read())
    seconds = time.monotonic() - t0
    wheel = next(dist.glob("mmcv-*.whl"))
    parts = split_file(wheel, ctx.out)
    print(f"mmcv built in {seconds:.0f} s: {wheel.name}, {wheel.stat().st_size / 2**20:.1f} MiB -> "
          f"{', '.join(p.name for p in parts)} (carry them in .whl/ next time)", flush=True)
    return wheel, {"source": "built", "arch": arch, "jobs": jobs, "ninja": ctx.env["ninja"],
                   "build_s": round(seconds, 1), "wheel": wheel.name,
                   "wheel_mib": round(wheel.stat().st_size / 2**20, 1), "parts": [p.name for p in parts],
                   "thc_shim": shim is not None}


def step_loss_bench(ctx: Context, deadline: float) -> dict:
    """benchmarks/loss_bench.py: ECMLoss against BCE, mmdet's sigmoid CE and Seesaw, fp32 and bf16."""
    out = ctx.work / "loss_bench.json"
    s = ctx.sizes
    run([sys.executable, ROOT / "benchmarks" / "loss_bench.py", "--device", "cuda" if ctx.cuda else "cpu",
         "--dtype", "fp32,bf16", "--shapes", s.bench_shapes, "--repeats", str(s.bench_repeats), "--json", out],
        deadline)
    return json.loads(out.read_text())


def step_synth(ctx: Context, deadline: float) -> dict:
    """The synthetic set at LVIS's class count: small images, upscaled to `scale` by the pipeline.

    The small profile (log-spaced counts) because the LVIS-like one needs ~14 images per class; this set is for
    speed and memory at 1203 classes, not for accuracy."""
    s = ctx.sizes
    run(ecmctl("synth", str(ctx.work / "data" / "synth"), "--profile", "small", "--classes", str(s.classes),
               "--train-images", str(s.train_images), "--val-images", str(s.val_images),
               "--image-size", str(s.image[0]), "--image-height", str(s.image[1]), "--repeat-looks"), deadline)
    return {"classes": s.classes, "train_images": s.train_images, "val_images": s.val_images,
            "image": list(s.image), "scale": list(s.scale)}


def overrides(ctx: Context) -> list[str]:
    """The config of every detector step: the full-size detector on the synthetic LVIS-size set."""
    s = ctx.sizes
    (w, h), (sw, sh) = s.image, s.scale
    return [*FULL_SIZE, f"data_root={ctx.work / 'data'}", f"run_root={ctx.work / 'runs'}",
            "dataset.synth.profile=small", f"dataset.synth.classes={s.classes}",
            f"dataset.synth.train_images={s.train_images}",
            f"dataset.synth.val_images={s.val_images}", f"dataset.synth.image_size={w}",
            f"dataset.synth.image_height={h}", "dataset.synth.repeat_looks=true",
            f"dataset.train_scale=[{sw},{sh}]", f"dataset.test_scale=[{sw},{sh}]", "train.val_interval=0",
            f"train.num_workers={s.num_workers}", f"calibrate.max_iters={s.calibrate_iters}",
            f"calibrate.min_iters={min(20, s.calibrate_iters)}",
            f"eval.max_per_img={s.max_per_img}",
            *([f"+detector.model.train_cfg.rcnn.sampler.num={s.rois}"] if s.rois else []),
            *([f"+detector.model.test_cfg.rpn.{k}={s.proposals}" for k in ("nms_pre", "max_per_img")]
              if s.proposals else [])]


def step_calibrate(ctx: Context, deadline: float) -> dict:
    """`ecmctl calibrate`: r with its bootstrap 95% interval, against the paper's 6.3313."""
    from ecmctl.pipeline.report import load_train_log

    out = ctx.work / "calibration"
    run(ecmctl("calibrate", *overrides(ctx), "-o", str(out)), deadline)
    doc = json.loads((out / "calibration.json").read_text())
    ctx.weights = Path(doc["weights_files"][0])
    stage = doc["per_stage"][0]
    return {"r": doc["r"], "ci95": doc["ci95"], "r_over_paper": doc["r"] / PAPER_R, "iters": doc["iters"],
            "fg": stage["fg"], "bg": stage["bg"], "rois_per_image": ctx.sizes.rois or 512,
            "ms_per_iter": train_figures(load_train_log(out))["ms_per_iter"]}


def ecm_weights(ctx: Context) -> tuple[list[str], str]:
    """The calibrated weights, or (calibration missing) the paper's r, from which `train` writes weights itself
    (calibrate.bg_ratio), so ECM still trains."""
    if ctx.weights is not None:
        return [f"weights_file={ctx.weights}"], "calibrated"
    return [f"calibrate.bg_ratio={PAPER_R}"], "paper r (no calibration)"


def train_step(name: str, loss: str, iters: Callable[[Sizes], int], *extra: str) -> Callable[[Context, float], dict]:
    """A step running `ecmctl train` for a few iterations; its figures from mmengine's scalars."""

    def step(ctx: Context, deadline: float) -> dict:
        from ecmctl.pipeline.report import load_train_log

        run_dir, n = ctx.work / "runs" / name, iters(ctx.sizes)
        figures = {"loss": loss, "overrides": list(extra)}
        weights = []
        if loss == "ecm":
            weights, figures["weights"] = ecm_weights(ctx)
        run(ecmctl("train", *overrides(ctx), f"loss={loss}", f"train.max_iters={n}",
                   f"train.checkpoint_interval={n}", f"run_dir={run_dir}", *weights, *extra), deadline)
        ctx.runs[name] = run_dir
        return {**figures, **train_figures(load_train_log(run_dir))}

    return step


def dist_backend(run_dir: Path) -> str | None:
    """The torch.distributed backend the run's ranks used, from mmengine's config dump in its log."""
    for log in sorted(run_dir.glob("*/*.log")):
        if found := re.search(r"dist_cfg=dict\(backend='(\w+)'\)", log.read_text(errors="replace")):
            return found.group(1)
    return None


def step_torchrun(ctx: Context, deadline: float) -> dict:
    """`launcher=torchrun` on this one GPU: mmengine's pytorch launcher, NCCL (gloo on a CPU)."""
    figures = train_step("torchrun_nccl", "ecm", lambda s: s.torchrun_iters, "launcher=torchrun",
                         "launcher.nproc_per_node=1")(ctx, deadline)
    return {**figures, "backend": dist_backend(ctx.runs["torchrun_nccl"])}


def step_eval(ctx: Context, deadline: float) -> dict:
    """`ecmctl eval` of the ECM run on the val set: LVIS protocol, box and mask; `s_per_image` is the
    whole command's time (start-up, inference, LVIS evaluation) over the images."""
    run_dir = next((ctx.runs[n] for n in ("train_ecm", "train_bce", "train_amp") if n in ctx.runs), None)
    if run_dir is None:
        raise RuntimeError("no trained run to evaluate")
    t0 = time.monotonic()
    run(ecmctl("eval", str(run_dir)), deadline)
    seconds = time.monotonic() - t0
    doc = json.loads((run_dir / "metrics.json").read_text())
    return {"run": run_dir.name, "images": ctx.sizes.val_images, "s_per_image": seconds / ctx.sizes.val_images,
            "max_per_img": ctx.sizes.max_per_img, "bbox_AP": doc["bbox"]["AP"],
            "segm_AP": doc.get("segm", {}).get("AP")}


STEPS = [  # in the order they run; seconds on the GPU machine (README "GPU check" explains the budget)
    Step("env", 20, 5, step_env),
    # a carried wheel: ~10 s; a build: ~4 min on 16 cores (~3500 CPU-s, from compiles timed here); capped late:
    # the wheel it returns lets every later check run in full
    Step("mmcv", 420, 10, step_mmcv),
    Step("loss_bench", 45, 20, step_loss_bench),
    Step("synth", 30, 5, step_synth),
    Step("calibrate", 100, 40, step_calibrate),
    Step("train_ecm", 60, 25, train_step("train_ecm", "ecm", lambda s: s.train_iters)),
    Step("train_bce", 60, 25, train_step("train_bce", "bce", lambda s: s.train_iters)),
    Step("train_amp", 60, 25, train_step("train_amp", "ecm", lambda s: s.train_iters, "train.amp=true"),
         needs_cuda=True),
    Step("torchrun_nccl", 60, 25, step_torchrun),
    Step("eval", 150, 60, step_eval),
]


def run_step(step: Step, ctx: Context, budget_end: float) -> dict:
    """Run one step under its cap; never raises: the record says ok / failed / timeout / skipped and why."""
    t0 = time.monotonic()
    own = DRY_CAP_S if ctx.dry_run else step.cap_s
    cap = step_cap(own, t0, budget_end)
    rec: dict = {"status": "ok", "cap_s": round(max(cap, 0.0))}
    print(f"\n== {step.name} (cap {rec['cap_s']} s)", flush=True)
    if step.needs_cuda and not ctx.cuda:
        rec.update(status="skipped", error="needs CUDA")
    elif cap < min(own, step.need_s):
        rec.update(status="skipped", error=f"budget: {cap + RESERVE_S:.0f} s left")
    else:
        try:
            rec.update(step.fn(ctx, t0 + cap))
        except StepError as e:
            rec.update(status=e.status, error=str(e), tail=e.tail)
        except Exception as e:  # a step's own bug or a missing file: recorded, the check goes on
            rec.update(status="failed", error=f"{type(e).__name__}: {e}")
    rec["seconds"] = round(time.monotonic() - t0, 1)
    print(f"== {step.name}: {rec['status']} in {rec['seconds']} s" + (f" ({rec['error']})" if "error" in rec else ""),
          flush=True)
    return rec


def check(ctx: Context, budget_s: float, steps: list[Step] = STEPS) -> dict:
    """Run every step within `budget_s`; rewrite --out/gpu-check.json after each one; return the JSON."""
    from ecmctl.core.io import atomic_write_json

    start, started = time.monotonic(), dt.datetime.now().astimezone().isoformat(timespec="seconds")
    records: dict[str, dict] = {}
    for step in steps:
        records[step.name] = run_step(step, ctx, start + budget_s)
        doc = assemble(ctx, started, budget_s, time.monotonic() - start, records)
        atomic_write_json(ctx.out / REPORT, doc)
    return doc


# ---------------------------------------------------------------- probes (run in a fresh interpreter)


def probe_env() -> dict:
    import platform

    import torch

    cuda, n = torch.cuda.is_available(), torch.cuda.device_count()
    nvcc = shutil.which("nvcc")
    release = re.search(r"release [\d.]+, V[\d.]+", subprocess.run([nvcc, "--version"], capture_output=True,
                                                                   text=True).stdout) if nvcc else None
    bin_dir = str(Path(sys.executable).parent)  # where pip puts ninja
    site = Path(torch.__file__).parents[1]
    return {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "cuda_available": cuda, "devices": [torch.cuda.get_device_name(i) for i in range(n)],
            "capability": [list(torch.cuda.get_device_capability(i)) for i in range(n)],
            "cpus": os.cpu_count(), "nvcc": release.group(0) if release else None,
            "ninja": shutil.which("ninja", path=os.pathsep.join([bin_dir, os.environ.get("PATH", "")])),
            "torch_include": str(Path(torch.__file__).parent / "include"),
            "nvidia": sorted(str(p.parent) for p in site.glob("nvidia/*/include"))}


def probe_ops() -> dict:
    import torch
    from mmcv.ops import RoIAlign, nms

    from ecmctl.core.environment import collect_info

    info = collect_info()  # `ecmctl info`: versions, mmcv's ops on the CPU, CUDA devices
    figures = {"versions": info["versions"], "ops_cpu": info["mmcv_ops"], "ops_cpu_error": info["mmcv_ops_error"]}
    if torch.cuda.is_available():
        g = torch.Generator().manual_seed(0)
        feats = torch.randn(2, 16, 50, 50, generator=g)
        xy, wh = torch.rand(64, 2, generator=g) * 40, torch.rand(64, 2, generator=g) * 10 + 1
        boxes = torch.cat([xy, xy + wh], 1)
        rois = torch.cat([torch.randint(0, 2, (64, 1), generator=g).float(), boxes], 1)
        align = RoIAlign((7, 7), spatial_scale=1.0, sampling_ratio=2, aligned=True)
        diff = (align(feats, rois) - align(feats.cuda(), rois.cuda()).cpu()).abs().max()
        scores = torch.rand(64, generator=g)
        keep_cpu, keep_gpu = nms(boxes, scores, 0.5)[1], nms(boxes.cuda(), scores.cuda(), 0.5)[1].cpu()
        figures.update(roi_align_max_abs_diff=float(diff), nms_same_keep=bool(torch.equal(keep_cpu, keep_gpu)))
    return figures


PROBES = {"env": probe_env, "ops": probe_ops}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes, on this CPU, in this machine's venv")
    ap.add_argument("--out", type=Path, default=None, help=f"where {REPORT} (and mmcv's wheel) go; default: "
                                                           "$OUT, else a new temporary folder")
    ap.add_argument("--budget", type=float, default=480, help="seconds for all steps (default 480)")
    ap.add_argument("--work", type=Path, default=None, help="datasets and runs (default: a temporary folder, "
                                                            "removed at the end)")
    ap.add_argument("--whl", type=Path, default=ROOT / ".whl", help="carried wheels and mmcv's sdist")
    ap.add_argument("--site", type=Path, default=None, help="where gpu-check.sh installed the wheels")
    ap.add_argument("--probe", default=None, help=argparse.SUPPRESS)  # NAME=FILE, run by the driver itself
    args = ap.parse_args(argv)
    if args.probe:
        name, _, path = args.probe.partition("=")
        Path(path).write_text(json.dumps(PROBES[name]()))
        return 0
    out = args.out or Path(os.environ.get("OUT") or tempfile.mkdtemp(prefix="gpu-check-out-"))
    out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:  # the runs' checkpoints take ~1 GB: our own work folder goes at the end
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gpu-check-")))
        work.mkdir(parents=True, exist_ok=True)
        ctx = Context(sizes=DRY if args.dry_run else GPU, dry_run=args.dry_run, out=out.resolve(),
                      work=work.resolve(), whl=args.whl.resolve(), site=args.site)
        doc = check(ctx, args.budget)
    print(f"\n{'step':<14} {'status':<8} {'seconds':>8}")
    for name, rec in doc["steps"].items():
        print(f"{name:<14} {rec['status']:<8} {rec['seconds']:>8}")
    print(json.dumps(doc["summary"], indent=1))
    print(f"wrote {ctx.out / REPORT} ({doc['elapsed_s']} s)")
    return 0 if all(r["status"] in ("ok", "skipped") for r in doc["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
