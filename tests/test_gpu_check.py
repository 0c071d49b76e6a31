"""The GPU check (scripts/gpu-check.sh, scripts/gpu_check.py) cannot be run here on a GPU, so its pure parts are
tested directly and its dry run end to end: a check that rots is found before the next GPU lease."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_driver():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


gc = _load_driver()


def _ctx(tmp_path: Path, dry_run: bool = True):
    return gc.Context(sizes=gc.DRY, dry_run=dry_run, out=tmp_path / "out", work=tmp_path / "work",
                      whl=tmp_path / "whl", site=None)


def test_arch_list_is_the_gpus_own_archs_only():
    assert gc.arch_list([[9, 0]]) == "9.0"
    assert gc.arch_list([[9, 0], [8, 0], [9, 0]]) == "8.0;9.0"
    with pytest.raises(ValueError, match="no CUDA device"):
        gc.arch_list([])


def _wheel(path: Path, size: int) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("mmcv/_ext.so", os.urandom(size))
    return path


def test_wheel_splits_under_the_file_limit_and_joins_back(tmp_path):
    wheel = _wheel(tmp_path / "mmcv-2.1.0-cp312-cp312-linux_x86_64.whl", 2500)
    parts = gc.split_file(wheel, tmp_path / "out", part_bytes=1000)
    assert [p.name[-7:] for p in parts] == [".part00", ".part01", ".part02"]
    assert all(p.stat().st_size <= 1000 for p in parts)
    (tmp_path / "work").mkdir()
    joined = gc.carried_wheel(tmp_path / "out", tmp_path / "work")  # as carried next time, in .whl/
    assert joined.name == wheel.name and joined.read_bytes() == wheel.read_bytes()
    parts[1].unlink()
    with pytest.raises(ValueError, match="not make a whole wheel"):
        gc.carried_wheel(tmp_path / "out", tmp_path / "work")


def test_small_wheel_travels_whole_and_is_preferred(tmp_path):
    wheel = _wheel(tmp_path / "mmcv-2.1.0-cp312-cp312-linux_x86_64.whl", 10)
    (carried := tmp_path / "whl").mkdir()
    assert gc.split_file(wheel, carried) == [carried / wheel.name]
    assert gc.carried_wheel(carried, tmp_path) == carried / wheel.name
    assert gc.carried_wheel(tmp_path / "nothing", tmp_path) is None


def test_build_env_targets_one_arch_and_finds_headers():
    env = gc.build_env({"PATH": "/bin", "CPATH": "/x"}, "9.0", 16, Path("/s"), ["/n/cu13"])
    assert env["TORCH_CUDA_ARCH_LIST"] == "9.0" and env["MAX_JOBS"] == "16" and env["FORCE_CUDA"] == "1"
    assert env["MMCV_WITH_OPS"] == "1" and "-g0" in env["CFLAGS"] and env["PATH"] == "/bin"
    assert env["MMCV_CUDA_ARGS"] == "-I/s" and env["CPATH"] == "/n/cu13/include:/x"
    assert env["LIBRARY_PATH"] == "/n/cu13/lib"
    bare = gc.build_env({}, "9.0", 1, None, [])
    assert not {"MMCV_CUDA_ARGS", "CPATH", "LIBRARY_PATH"} & set(bare)


def test_run_kills_the_whole_group_at_the_cap(tmp_path):
    flag = tmp_path / "grandchild-lived"
    t0 = time.monotonic()
    with pytest.raises(gc.StepError) as err:
        gc.run(["bash", "-c", f"echo started; (sleep 2; touch {flag}) & sleep 30"], time.monotonic() + 1)
    assert err.value.status == "timeout" and err.value.tail == ["started"]
    assert time.monotonic() - t0 < 10
    time.sleep(2.5)
    assert not flag.exists()
    with pytest.raises(gc.StepError, match="exit status 3") as err:
        gc.run(["bash", "-c", "echo oops; exit 3"], time.monotonic() + 10)
    assert err.value.status == "failed" and err.value.tail == ["oops"]


def test_steps_are_capped_by_the_budget_and_recorded(tmp_path):
    assert gc.step_cap(100, now=0, budget_end=60) == 60 - gc.RESERVE_S
    assert gc.step_cap(30, now=0, budget_end=600) == 30

    def sleeps(ctx, deadline):
        gc.run(["sleep", "30"], deadline)

    def breaks(ctx, deadline):
        raise KeyError("capability")

    ctx = _ctx(tmp_path, dry_run=False)
    steps = [gc.Step("fine", 5, 1, lambda ctx, deadline: {"answer": 42}), gc.Step("slow", 1, 1, sleeps),
             gc.Step("buggy", 5, 1, breaks), gc.Step("gpu_only", 5, 1, lambda c, d: {}, needs_cuda=True)]
    budget_end = time.monotonic() + 100
    recs = {s.name: gc.run_step(s, ctx, budget_end) for s in steps}
    assert recs["fine"]["status"] == "ok" and recs["fine"]["answer"] == 42
    assert recs["slow"]["status"] == "timeout" and recs["slow"]["seconds"] < 5
    assert recs["buggy"] == {**recs["buggy"], "status": "failed", "error": "KeyError: 'capability'"}
    assert recs["gpu_only"]["status"] == "skipped" and recs["gpu_only"]["error"] == "needs CUDA"
    needy = gc.Step("needy", 100, 30, steps[0].fn)  # cannot finish in less than 30 s
    assert gc.run_step(needy, ctx, time.monotonic() + gc.RESERVE_S + 40)["status"] == "ok"
    late = gc.run_step(needy, ctx, time.monotonic() + gc.RESERVE_S + 20)
    assert late["status"] == "skipped" and late["error"].startswith("budget")
    assert all(isinstance(r["seconds"], float) and isinstance(r["cap_s"], int) for r in [*recs.values(), late])


def test_check_writes_the_json_after_every_step(tmp_path):
    ctx = _ctx(tmp_path)
    ctx.out.mkdir()
    seen = []

    def peek(c, d):
        seen.append(json.loads((ctx.out / gc.REPORT).read_text())["steps"])
        return {"results": [{"images": 2, "rois": 512, "dtype": "bf16", "ecm_vs_bce": 0.9, "ecm_vs_seesaw": 0.1,
                             "methods": {"ECMLoss": {"median_ms": 0.5}}}]}

    def train(c, d):
        return {"ms_per_iter": 110.0, "peak_memory_mib": 9000}

    doc = gc.check(ctx, 1000, [gc.Step("train_bce", 5, 1, lambda c, d: {"ms_per_iter": 100.0}),
                               gc.Step("loss_bench", 5, 1, peek), gc.Step("train_ecm", 5, 1, train)])
    assert list(seen[0]) == ["train_bce"]  # written before the next step ran
    assert json.loads(json.dumps(doc)) == json.loads((ctx.out / gc.REPORT).read_text())
    assert doc["schema"] == gc.SCHEMA and doc["dry_run"] and doc["sizes"]["classes"] == gc.DRY.classes
    s = doc["summary"]
    assert s["steps_ok"] == s["steps"] == 3 and s["r"] is None and s["r_paper"] == gc.PAPER_R
    assert s["ms_per_iter"]["ecm"] == 110.0 and math.isclose(s["ecm_overhead_pct"], 10.0)
    assert s["peak_memory_mib"]["ecm"] == 9000
    assert s["loss_time"] == {"2x512 bf16": {"ecm_ms": 0.5, "ecm_vs_bce": 0.9, "ecm_vs_seesaw": 0.1}}


def test_train_figures_from_mmengine_scalars():
    log = [{"step": 5 * k, "loss": v, "time": 0.2 + k, "data_time": 0.01, "memory": m}
           for k, (v, m) in enumerate([(3.0, 9000), (2.0, 9500), (float("nan"), 9100)], start=1)]
    f = gc.train_figures(log)
    assert f["iters"] == 15 and f["timed_iters"] == 15 and math.isclose(f["ms_per_iter"], 3200.0)
    assert f["peak_memory_mib"] == 9500 and f["loss_first"] == 3.0 and f["loss_last"] is None
    assert not f["loss_finite"]
    assert gc.train_figures([{**log[0], "step": 50}])["timed_iters"] == gc.WINDOW
    with pytest.raises(RuntimeError, match="no training log"):
        gc.train_figures([])


@pytest.mark.slow
def test_dry_run_reports_every_step(tmp_path):
    """The script itself, at tiny sizes on the CPU: every step reports a time and a status."""
    env = {**os.environ, "PYTHON": sys.executable, "BUDGET": "1100"}  # ends before the timeout below
    proc = subprocess.run(["bash", "scripts/gpu-check.sh", "--dry-run", "--out", str(tmp_path / "out")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((tmp_path / "out" / gc.REPORT).read_text())
    assert doc["schema"] == gc.SCHEMA and doc["dry_run"] and list(doc["steps"]) == [s.name for s in gc.STEPS]
    for name, rec in doc["steps"].items():
        assert isinstance(rec["seconds"], float) and rec["seconds"] >= 0, name
        expected = "skipped" if name == "train_amp" else "ok"  # mmengine's AMP needs a GPU
        assert rec["status"] == expected, (name, rec.get("error"), rec.get("tail"))
    s = doc["summary"]
    assert s["mmcv"] == "venv" and s["r"] > 0 and len(s["r_ci95"]) == 2
    assert s["ms_per_iter"]["ecm"] > 0 and s["ms_per_iter"]["bce"] > 0 and s["torchrun_backend"] == "gloo"
    assert set(s["loss_time"]) == {f"{gc.DRY.bench_shapes} fp32", f"{gc.DRY.bench_shapes} bf16"}
    assert s["eval_s_per_image"] > 0 and doc["steps"]["eval"]["bbox_AP"] >= 0
