"""The `ecmctl` command line: each command parses, calls one library function, prints."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from ecmctl.core.errors import UserError, as_interrupt, as_user_error
from ecmctl.core.quiet import install_warning_filters
from ecmctl.core.signals import exit_code, terminate_as_interrupt

install_warning_filters()  # before any command imports the stack


class OneLineErrors(TyperGroup):
    """Click's own usage errors (a missing argument, `--classes abc`, an unknown option) as one line and
    exit 2, like every other user mistake, instead of a usage panel."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode: bool = True, **extra):
        from typer._click.exceptions import ClickException, NoArgsIsHelpError
        from typer.exceptions import Abort

        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except NoArgsIsHelpError:  # `ecmctl` alone: the help was printed
            sys.exit(2)
        except ClickException as e:
            ctx = getattr(e, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            print_error(UserError(e.format_message() + hint))
            sys.exit(e.exit_code)
        except Abort:
            err_console.print("[bold red]interrupted[/]", highlight=False)
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    cls=OneLineErrors,
    name="ecmctl",
    help="Long-tailed detection with the ECM loss: count -> calibrate -> train -> eval.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
console = Console()
err_console = Console(stderr=True)


def print_error(e: UserError) -> None:
    err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)


def user_errors(fn):
    """The CLI's one error path: a user mistake (UserError, see `as_user_error`; a full disk too) is one line and
    exit 2, Ctrl-C is one line and exit 130, SIGTERM the same from the command's first line on (every record ends
    `interrupted`, core/signals.py) and exit 143, and a bug is a traceback and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        verbose = kwargs.get("verbose")
        if verbose is not None:
            from ecmctl.core.quiet import set_verbose

            set_verbose(bool(verbose))
        try:
            with terminate_as_interrupt():
                return fn(*args, **kwargs)
        except KeyboardInterrupt as stop:
            err_console.print("[bold red]interrupted[/]", highlight=False)
            raise typer.Exit(exit_code(stop)) from None
        except Exception as e:
            if (stop := as_interrupt(e)) is not None:  # an interrupt a library re-raised as its own error
                err_console.print("[bold red]interrupted[/]", highlight=False)
                raise typer.Exit(exit_code(stop)) from None
            err = as_user_error(e)
            if err is None:
                raise
            print_error(err)
            raise typer.Exit(err.exit_code) from None

    return wrapper


@app.command()
@user_errors
def info() -> None:
    """Versions of the stack, whether mmcv's compiled ops load, and CUDA devices.

    Example: ecmctl info
    """
    from ecmctl.cli.render import info_table
    from ecmctl.core.environment import collect_info

    console.print(info_table(collect_info()))


@app.command()
@user_errors
def synth(
    out_dir: Path = typer.Argument(..., help="Directory to write train/, val/ (images), train.json and val.json into."),
    profile: str = typer.Option(
        "lvis", "--profile",
        help="How per-class train image counts are designed. [bold]lvis[/]: a scaled-down LVIS v1: LVIS's "
             "rare/common/frequent class shares (28/38/34 %), each class's count drawn from LVIS v1's per-group "
             "quantiles, the frequent group's spread compressed so that images hold LVIS's 3.6 categories on "
             "average (defaults: 96 classes, 1600 train, 320 val images). [bold]small[/]: a third of the classes "
             "per group, log-spaced (defaults: 24 classes, 400 train, 120 val images)."),
    classes: int | None = typer.Option(None, "--classes", help="Number of categories, up to 192 "
                                       "(12 shapes x 8 colours x 2 textures). Default: the profile's."),
    train_images: int | None = typer.Option(None, "--train-images", help="Number of training images. "
                                            "Default: the profile's."),
    val_images: int | None = typer.Option(None, "--val-images", help="Number of validation images. "
                                          "Default: the profile's."),
    image_size: int | None = typer.Option(None, "--image-size", help="Side of the square images in pixels "
                                          "(default 128)."),
    image_height: int | None = typer.Option(None, "--image-height", help="Height in pixels (default: square)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives byte-identical files."),
    repeat_looks: bool = typer.Option(False, "--repeat-looks",
                                      help="Allow more than 192 classes (looks then repeat under numbered "
                                           "names): for speed tests at LVIS size."),
) -> None:
    """Write a deterministic long-tailed dataset in LVIS v1 format.

    Examples: ecmctl synth data/synth  (the LVIS-like default, as dataset=synth);
    ecmctl synth data/synth_small --profile small  (as dataset=synth_small);
    ecmctl synth data/lvis_size --classes 1203 --repeat-looks --image-size 200 --image-height 120 --train-images 400
    """
    from ecmctl.cli.render import synth_table
    from ecmctl.dataset.synth import make_dataset
    from ecmctl.pipeline.prepare import check_synth_out

    check_synth_out(out_dir)  # never replaces a real dataset's annotations
    summary = make_dataset(out_dir, num_classes=classes, train_images=train_images, val_images=val_images,
                           image_size=image_size, image_height=image_height, seed=seed, profile=profile,
                           repeat_looks=repeat_looks)
    console.print(synth_table(summary))


@app.command()
@user_errors
def count(
    annotations: Path = typer.Argument(..., help="LVIS- or COCO-format annotation json."),
    out: Path = typer.Option(Path("counts.json"), "-o", "--out", help="Output counts file."),
) -> None:
    """Per-class instance and image counts from an annotation file (streamed, any size).

    Example: ecmctl count data/synth/train.json -o runs/counts.json
    """
    from ecmctl.cli.render import counts_tables
    from ecmctl.dataset.counting import write_counts

    doc = write_counts(annotations, out)
    for table in counts_tables(doc):
        console.print(table)
    _line(f"wrote {out}")


@app.command()
@user_errors
def weights(
    counts: str = typer.Argument(..., help="Counts file from `ecmctl count`, or the built-in name lvis_v1."),
    bg_ratio: float | None = typer.Option(None, "--bg-ratio", help="Background ratio r (two-stage heads)."),
    min_count: int | None = typer.Option(None, "--min-count", help="Floor instance counts at this value."),
    out: Path = typer.Option(Path("weights.json"), "-o", "--out", help="Output weights file."),
) -> None:
    """Effective class-margins and weights (eq. 10-11, 24-26) -> the weights file.

    Examples: ecmctl weights runs/counts.json --bg-ratio 6.3313 -o weights.json;
    ecmctl weights lvis_v1 --bg-ratio 6.3313
    """
    from ecmctl.cli.render import weights_table
    from ecmctl.ecm.weights import write_weights

    doc = write_weights(counts, out, bg_ratio=bg_ratio, min_count=min_count)
    console.print(weights_table(doc))
    _line(f"wrote {out}")


OVERRIDES = typer.Argument(None, help="Hydra overrides: group=option or key=value, e.g. detector=atss_tiny.",
                           show_default=False)


def _compose(overrides: list[str] | None, show_cfg: bool):
    from ecmctl.core.config import compose, to_yaml

    cfg = compose(overrides or [])
    if show_cfg:
        console.print(to_yaml(cfg), highlight=False, markup=False)
    return cfg


def _line(text: str) -> None:
    """A plain line (paths and values: no markup, no wrapping)."""
    console.print(escape(text), highlight=False, soft_wrap=True)


def _say(msg: str) -> None:
    console.print(f"[cyan]>[/] {escape(msg)}", highlight=False, soft_wrap=True)


VERBOSE = typer.Option(False, "-v", "--verbose", help="Show everything: mmengine's full log and the stack's "
                       "warnings (by default they go to the run's log file only).")


@app.command(context_settings={"allow_extra_args": False})
@user_errors
def calibrate(
    overrides: list[str] | None = OVERRIDES,
    out: Path | None = typer.Option(None, "-o", "--out", help="Output directory (default runs/calibrate/...)."),
    show_cfg: bool = typer.Option(False, "--cfg", help="Print the resolved config first."),
    verbose: bool = VERBOSE,
) -> None:
    """Measure the background ratio r in a short real training run, then write the weights file.

    Example: ecmctl calibrate detector=mask_rcnn_tiny calibrate.max_iters=100
    """
    from ecmctl.pipeline.calibrate import run_calibration

    cfg = _compose(overrides, show_cfg)
    res = run_calibration(cfg, out, _say)
    for st in res.per_stage:
        if st["ci95"] is None:
            _line(f"stage {st['stage']}: r = {st['r']:.4f} (fixed by calibrate.bg_ratio)")
            continue
        lo, hi = st["ci95"]
        _line(f"stage {st['stage']}: r = {st['r']:.4f}  95% CI [{lo:.4f}, {hi:.4f}]  "
                      f"({st['iters']} iterations, {st['fg']} fg / {st['bg']} bg RoIs)")
    _line(f"weights: {', '.join(res.weights_files)}")
    _line(f"calibration: {Path(res.out_dir) / 'calibration.json'}")


@app.command()
@user_errors
def train(
    overrides: list[str] | None = OVERRIDES,
    resume: Path | None = typer.Option(None, "--resume", help="Continue RUN_DIR from its last checkpoint."),
    multirun: bool = typer.Option(False, "-m", "--multirun", help="Sweep: a=1,2 b=x,y runs every combination."),
    show_cfg: bool = typer.Option(False, "--cfg", help="Print the resolved config and exit."),
    mmdet_config: Path | None = typer.Option(
        None, "--mmdet-config", help="Write the fully resolved mmdet config to this file and exit (no data read, "
        "no calibration, no training)."),
    verbose: bool = VERBOSE,
) -> None:
    """Train any mmdet detector with the chosen loss (runs count/calibrate first when needed).

    Examples: ecmctl train recipe=ecm_r50_1x data_root=/data launcher=torchrun launcher.nproc_per_node=8;
    ecmctl train detector=faster_rcnn_tiny loss=ecm schedule=smoke;  ecmctl train -m loss=ecm,bce seed=0,1,2;
    ecmctl train --resume runs/NAME/TIMESTAMP;  ecmctl train recipe=ecm_r50_1x --mmdet-config r50.py

    Any mmdet detector: ecmctl train detector=mmdet detector.mmdet_config=rtmdet/rtmdet_s_8xb32-300e_coco.py
    (relative to mmdet's shipped configs) or detector.mmdet_config=configs/my_detector.py (your own file,
    _base_ inheritance works); add schedule=native to keep the config's own training recipe.
    """
    from ecmctl.pipeline import train as training

    if mmdet_config is not None:
        if multirun or resume is not None:
            raise UserError("--mmdet-config writes one config: it takes neither --multirun nor --resume")
        out = training.write_mmdet_config(_compose(overrides, show_cfg), mmdet_config, _say)
        _line(f"wrote {out}")
        return
    if resume is not None:
        if overrides:
            raise UserError("--resume takes no overrides: the run keeps the config it was started with")
        run = training.resume(resume, _say)
        _line(f"{run.meta['status']}: {run.path}")
        return
    if multirun:
        from ecmctl.cli.render import sweep_table
        from ecmctl.pipeline.sweep import failed_jobs, run_sweep

        summary = run_sweep(overrides or [], _say)
        console.print(sweep_table(summary))
        failed = failed_jobs(summary)
        if failed:
            bugs = [j for j in failed if "traceback" in j]
            for j in bugs:  # a bug in a job: its traceback, and exit 1
                err_console.print(j["traceback"], markup=False, highlight=False)
            first = failed[0]
            msg = (f"{len(failed)} of {len(summary['jobs'])} sweep jobs failed (first: {' '.join(first['overrides'])}: "
                   f"{first['reason']}); see {summary['sweep_json']}")
            if bugs:
                print_error(UserError(msg))
                raise typer.Exit(1)
            raise UserError(msg)
        return
    if show_cfg:
        _compose(overrides, True)
        return
    run = training.train(_compose(overrides, False), overrides or [], _say)
    _line(f"{run.meta['status']}: {run.path}")


@app.command()
@user_errors
def recipes() -> None:
    """The paper's recipes: detector, schedule, GPUs x images assumed, published AP, and the command to run each.

    Example: ecmctl recipes
    """
    from ecmctl.cli.render import recipes_table
    from ecmctl.pipeline.recipes import OFFICIAL_BG_RATIO_OVERRIDE, list_recipes

    recipes = list_recipes()
    console.print(recipes_table(recipes))
    console.print("commands (one node, torchrun; README \"Reproducing the paper\" for SLURM):", highlight=False)
    for r in recipes:
        console.print(f"  {r.command}", highlight=False, markup=False, soft_wrap=True)
    console.print(f"r is measured by calibration; add {OFFICIAL_BG_RATIO_OVERRIDE} to use the official code's "
                  "constant for every RoI stage instead.", highlight=False)


@app.command()
@user_errors
def prefetch(overrides: list[str] | None = OVERRIDES) -> None:
    """Download the backbone checkpoint a config needs into the cache mmengine reads (run it on a login node).

    Example: ecmctl prefetch recipe=ecm_r101_2x
    """
    from ecmctl.pipeline.train import prefetch_checkpoints

    for name, path in prefetch_checkpoints(_compose(overrides, False), _say):
        _line(f"{name}: {path}")


@app.command("eval")
@user_errors
def eval_cmd(
    run_dirs: list[Path] | None = typer.Argument(None, help="Run directories (compared side by side), or one "
                                                 "sweep directory.",
                                                 show_default=False),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Checkpoint (default: the run's last)."),
    overrides: list[str] | None = typer.Option(None, "--set", help="eval.* override, e.g. eval.protocol=fixed"),
    reuse: bool = typer.Option(False, "--reuse", help="Show the existing metrics.json instead of evaluating."),
    reuse_detections: bool = typer.Option(False, "--reuse-detections",
                                          help="Re-score the run's kept detections (no inference)."),
    gt: Path | None = typer.Option(None, "--gt", help="LVIS annotations to score --results (or a run's kept "
                                   "detections, with --reuse-detections) against."),
    results: Path | None = typer.Option(None, "--results", help="An LVIS-format results file (no run needed)."),
    iou: str = typer.Option("bbox", "--iou", help="bbox or segm (with --results)."),
    protocol: str = typer.Option("standard", "--protocol", help="standard, fixed or pooled (with --results)."),
    out: Path | None = typer.Option(None, "-o", "--out", help="metrics file to write (with --gt)."),
    verbose: bool = VERBOSE,
) -> None:
    """LVIS evaluation (AP, APr/APc/APf, box and mask; Fixed/Pooled AP) -> metrics.json and a table.

    A sweep directory: its finished runs without current metrics (SLURM: one job array).

    Examples: ecmctl eval runs/ecm_r50_1x-lvis_v1/20261125-120000;  ecmctl eval RUN_A RUN_B --reuse;
    ecmctl eval runs/sweeps/sweep/20261125-120000;
    ecmctl eval RUN --set eval.protocol=fixed;  ecmctl eval RUN --reuse-detections --set eval.protocol=pooled;
    ecmctl eval --gt lvis_v1_val.json --results detections.json --iou segm -o metrics.json;
    ecmctl eval RUN --reuse-detections --gt val_subset.json -o subset_metrics.json
    """
    from ecmctl.cli.render import metrics_table
    from ecmctl.core.metrics_identity import val_set_note
    from ecmctl.evaluation.params import IOU_TYPES, PROTOCOLS
    from ecmctl.pipeline.evaluate import evaluate, evaluate_results_file, load_metrics

    if results is not None:
        if gt is None or run_dirs:
            raise UserError("--results goes with --gt ANNOTATIONS, without run directories")
        if iou not in IOU_TYPES or protocol not in PROTOCOLS:
            raise UserError(f"--iou {iou} --protocol {protocol}: --iou is bbox or segm, --protocol standard, "
                            "fixed or pooled")
        doc = evaluate_results_file(gt, results, iou, protocol, out)
        console.print(metrics_table([doc], names=[results.name]))
        if out is not None:
            _line(f"wrote {out}")
        return
    if not run_dirs:
        raise UserError("give run directories, or --gt ANNOTATIONS --results RESULTS")
    if len(run_dirs) == 1 and (run_dirs[0] / "sweep.json").is_file():
        _eval_sweep(run_dirs[0], overrides or [], checkpoint, reuse or reuse_detections or gt is not None)
        return
    if checkpoint is not None and len(run_dirs) > 1:
        raise UserError("--checkpoint applies to a single run directory")
    if reuse and (reuse_detections or checkpoint is not None or overrides):
        raise UserError("--reuse shows the existing metrics.json: it takes no --checkpoint, --set or "
                        "--reuse-detections")
    if gt is not None and len(run_dirs) > 1:
        raise UserError("--gt re-scores one run's kept detections: give a single run directory")
    docs = [load_metrics(r) if reuse else evaluate(r, checkpoint, overrides or [], _say, reuse_detections, gt, out)
            for r in run_dirs]
    console.print(metrics_table(docs))
    if note := val_set_note([(str(r), d) for r, d in zip(run_dirs, docs)]):
        _line(note)
    for r in run_dirs:
        _line(f"read {Path(r) / 'metrics.json'}" if reuse else f"wrote {out or Path(r) / 'metrics.json'}")


def _eval_sweep(sweep_dir: Path, overrides: list[str], checkpoint: Path | None, other: bool) -> None:
    """`ecmctl eval SWEEP_DIR`: its finished runs without current metrics (pipeline.sweep.evaluate_sweep)."""
    from ecmctl.cli.render import metrics_table
    from ecmctl.pipeline.sweep import evaluate_sweep

    if checkpoint is not None or other:
        raise UserError(f"{sweep_dir}: a sweep is evaluated run by run from each run's last checkpoint; --checkpoint, "
                        "--reuse, --reuse-detections and --gt take run directories")
    res = evaluate_sweep(sweep_dir, overrides, _say)
    if res["evaluated"]:
        console.print(metrics_table(res["evaluated"]))
    for job in res["submitted"]:
        _line(f"submitted: {job['run_dir']} (job {job['slurm_job']})")
    for s in res["skipped"]:
        _line(f"skipped ({s['status']}): {' '.join(s['overrides'])}")
    if res["current"]:
        _line(f"{res['current']} run(s) already have metrics.json of their last checkpoint")
    if res["queued"]:
        _line(f"{res['queued']} run(s) have an evaluation job in the queue already")
    if not (res["evaluated"] or res["submitted"] or res["failed"] or res["queued"]):
        _line(f"nothing to evaluate in {sweep_dir}")
    if res["failed"]:
        raise UserError(f"{len(res['failed'])} evaluation(s) failed (first: {res['failed'][0]['run_dir']}: "
                        f"{res['failed'][0]['reason']}); see {res['sweep_json']}")


@app.command()
@user_errors
def status(
    path: Path = typer.Argument(Path("runs"), help="A sweep directory, a run directory or a run_root."),
    watch: bool = typer.Option(False, "--watch", help="Refresh until every run has ended (Ctrl-C stops watching)."),
    interval: float = typer.Option(5.0, "--interval", help="Seconds between refreshes with --watch."),
    as_json: bool = typer.Option(False, "--json", help="Print the status as JSON instead of a table."),
) -> None:
    """One row per run of a sweep, a run or a run_root: state, iteration, loss, ETA, AP/APr, failure reason.

    A `running` or `submitted` run is checked with SLURM or its lock; a dead one is recorded failed or interrupted.

    Examples: ecmctl status runs/sweeps/sweep/20261125-120000 --watch;  ecmctl status runs --json
    """
    import json
    import time

    from rich.live import Live

    from ecmctl.cli.render import status_table
    from ecmctl.pipeline.status import collect_status, is_done

    if as_json and watch:
        raise UserError("--json prints the status once: leave out --watch")
    doc = collect_status(path)
    if as_json:
        console.print_json(json.dumps(doc))
        return
    for note in doc["notes"]:
        _line(f"note: {note}")
    if not watch:
        console.print(status_table(doc))
        return
    with Live(status_table(doc), console=console, auto_refresh=False) as live:
        while not is_done(doc):
            time.sleep(max(0.5, interval))
            doc = collect_status(path)
            live.update(status_table(doc), refresh=True)


@app.command()
@user_errors
def retry(
    sweep_dir: Path = typer.Argument(..., help="A sweep directory (sweep.json)."),
    failed: bool = typer.Option(False, "--failed", help="Retry the failed jobs."),
    interrupted: bool = typer.Option(False, "--interrupted", help="Retry the interrupted jobs (neither flag: both)."),
    verbose: bool = VERBOSE,
) -> None:
    """Resubmit a sweep's failed and/or interrupted jobs, each resuming from its own last checkpoint.

    The sweep's launcher is used; sweep.json keeps every attempt.

    Examples: ecmctl retry runs/sweeps/sweep/20261125-120000;  ecmctl retry SWEEP_DIR --failed
    """
    from ecmctl.cli.render import status_table
    from ecmctl.pipeline.status import collect_status
    from ecmctl.pipeline.sweep import retry_sweep

    both = not failed and not interrupted
    retried = retry_sweep(sweep_dir, failed or both, interrupted or both, _say)
    if not retried:
        what = " or ".join(w for w, on in (("failed", failed or both), ("interrupted", interrupted or both)) if on)
        _line(f"nothing to retry: no {what} jobs in {sweep_dir}")
        return
    console.print(status_table(collect_status(sweep_dir)))
    if bad := [e for e in retried if e["status"] == "failed"]:
        raise UserError(f"{len(bad)} of {len(retried)} retried jobs failed again (first: "
                        f"{' '.join(bad[0]['overrides'])}: {bad[0]['reason']}); see {sweep_dir / 'sweep.json'}")


@app.command()
@user_errors
def demo(
    overrides: list[str] | None = OVERRIDES,
    out: Path | None = typer.Option(None, "--out", help="Where the demo's runs go (default runs/demo)."),
    verbose: bool = VERBOSE,
) -> None:
    """The main job on the embedded dataset: synth, count, calibrate, train ECM and BCE (or demo.losses), eval,
    compare, report.

    Examples: ecmctl demo;  ecmctl demo demo.seeds=[0,1,2];  ecmctl demo schedule=smoke --out /tmp/demo;
    ecmctl demo demo.losses=[bce,ecm,seesaw]
    """
    from ecmctl.cli.render import demo_table
    from ecmctl.pipeline.demo import run_demo

    summary = run_demo([*(overrides or []), *([f"demo.out={out}"] if out else [])], _say)
    console.print(demo_table(summary))
    _line(f"report: {summary['report']}")


@app.command()
@user_errors
def compare(
    run_dirs: list[Path] = typer.Argument(..., help="Evaluated run directories, sweep directories (sweep.json) or "
                                          "demo directories (demo.json)."),
    by: str | None = typer.Option(None, "--by", help="Group by this config key (e.g. loss.name, or loss); default: "
                                  "the keys that differ between the runs (seed, names and paths aside)."),
    baseline: str | None = typer.Option(None, "--baseline", help="The group every other is compared with, as "
                                        "KEY=VALUE (e.g. loss.name=bce); default: the first group in sorted order."),
    out: Path | None = typer.Option(None, "-o", "--out", help="Write the comparison as JSON here, and the AP-by-group "
                                    "figure beside it (.png)."),
) -> None:
    """Runs grouped by what differs in their configs, paired by seed: mean ± sd per group, and each group's
    paired difference with the baseline (95% t-interval, per-seed values).

    Examples: ecmctl compare runs/sweeps/sweep/20261125-120000 --baseline loss=bce -o compare.json;
    ecmctl compare runs/demo;  ecmctl compare RUN_A RUN_B RUN_C RUN_D --by loss.name
    """
    from ecmctl.cli.render import compare_table
    from ecmctl.pipeline.compare import compare_runs

    doc = compare_runs(list(run_dirs), by=by, baseline=baseline, out=out)
    console.print(compare_table(doc))
    for note in doc["notes"]:
        _line(f"note: {note}")
    if out is not None:
        _line(f"wrote {doc['json']} and {doc['figure']}")


@app.command()
@user_errors
def report(
    run_dirs: list[Path] = typer.Argument(..., help="Evaluated run directories, the first is the reference."),
    out: Path = typer.Option(Path("report"), "-o", "--out", help="Output directory for PNGs and report.md."),
) -> None:
    """Plots (weights, margins, AP by group, per-class AP, loss curves) and a Markdown summary.

    Example: ecmctl report runs/demo/demo-ecm-seed0/* runs/demo/demo-bce-seed0/* -o report/
    """
    from ecmctl.pipeline.report import report_summary, write_report

    console.print(report_summary(write_report(list(run_dirs), out)))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
