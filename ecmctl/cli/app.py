"""The `ecmctl` command line: each command parses, calls one library function, prints."""

from __future__ import annotations

import functools
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from ecmctl.core.errors import UserError

app = typer.Typer(
    name="ecmctl",
    help="Long-tailed detection with the ECM loss: count -> calibrate -> train -> eval.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
console = Console()
err_console = Console(stderr=True)


def user_errors(fn):
    """Print a UserError as one line and exit 2: user mistakes never show a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

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
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives byte-identical files."),
) -> None:
    """Write a deterministic long-tailed dataset in LVIS v1 format.

    Examples: ecmctl synth data/synth  (the LVIS-like default, as dataset=synth);
    ecmctl synth data/synth_small --profile small  (as dataset=synth_small)
    """
    from ecmctl.cli.render import synth_table
    from ecmctl.dataset.synth import make_dataset

    summary = make_dataset(out_dir, num_classes=classes, train_images=train_images, val_images=val_images,
                           image_size=image_size, seed=seed, profile=profile)
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
    console.print(f"wrote {out}")


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
    console.print(f"wrote {out}")


OVERRIDES = typer.Argument(None, help="Hydra overrides: group=option or key=value, e.g. detector=atss_tiny.",
                           show_default=False)


def _compose(overrides: list[str] | None, show_cfg: bool):
    from ecmctl.core.config import compose, to_yaml

    cfg = compose(overrides or [])
    if show_cfg:
        console.print(to_yaml(cfg), highlight=False, markup=False)
    return cfg


def _say(msg: str) -> None:
    console.print(f"[cyan]>[/] {escape(msg)}", highlight=False)


@app.command(context_settings={"allow_extra_args": False})
@user_errors
def calibrate(
    overrides: list[str] | None = OVERRIDES,
    out: Path | None = typer.Option(None, "-o", "--out", help="Output directory (default runs/calibrate/...)."),
    show_cfg: bool = typer.Option(False, "--cfg", help="Print the resolved config first."),
) -> None:
    """Measure the background ratio r in a short real training run, then write the weights file.

    Example: ecmctl calibrate detector=mask_rcnn_tiny calibrate.max_iters=100
    """
    from ecmctl.core.runs import new_run_dir
    from ecmctl.pipeline.calibrate import run_calibration

    cfg = _compose(overrides, show_cfg)
    out_dir = out or new_run_dir(Path(cfg.run_root) / "calibrate", f"{cfg.detector.name}-{cfg.dataset.name}")
    res = run_calibration(cfg, out_dir, _say)
    for st in res.per_stage:
        lo, hi = st["ci95"]
        console.print(f"stage {st['stage']}: r = {st['r']:.4f}  95% CI [{lo:.4f}, {hi:.4f}]  "
                      f"({st['iters']} iterations, {st['fg']} fg / {st['bg']} bg RoIs)")
    console.print(f"weights: {', '.join(res.weights_files)}\ncalibration: {Path(out_dir) / 'calibration.json'}")


@app.command()
@user_errors
def train(
    overrides: list[str] | None = OVERRIDES,
    resume: Path | None = typer.Option(None, "--resume", help="Continue RUN_DIR from its last checkpoint."),
    multirun: bool = typer.Option(False, "-m", "--multirun", help="Sweep: a=1,2 b=x,y runs every combination."),
    show_cfg: bool = typer.Option(False, "--cfg", help="Print the resolved config and exit."),
) -> None:
    """Train any mmdet detector with the chosen loss (runs count/calibrate first when needed).

    Examples: ecmctl train detector=faster_rcnn_tiny loss=ecm schedule=smoke;
    ecmctl train -m loss=ecm,bce seed=0,1,2;  ecmctl train --resume runs/NAME/TIMESTAMP
    """
    from ecmctl.pipeline import train as training

    if resume is not None:
        if overrides:
            raise UserError("--resume takes no overrides: the run keeps the config it was started with")
        run = training.resume(resume, _say)
        console.print(f"finished: {run.path}")
        return
    if multirun:
        from ecmctl.cli.render import sweep_table
        from ecmctl.pipeline.sweep import run_sweep

        console.print(sweep_table(run_sweep(overrides or [], _say)))
        return
    if show_cfg:
        _compose(overrides, True)
        return
    run = training.train(_compose(overrides, False), overrides or [], _say)
    console.print(f"{run.meta['status']}: {run.path}")


@app.command("eval")
@user_errors
def eval_cmd(
    run_dirs: list[Path] = typer.Argument(..., help="One or more run directories (compared side by side)."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Checkpoint (default: the last)."),
    overrides: list[str] | None = typer.Option(None, "--set", help="eval.* override, e.g. eval.per_class=true"),
    reuse: bool = typer.Option(False, "--reuse", help="Use existing metrics.json instead of re-evaluating."),
) -> None:
    """LVIS evaluation (AP, APr/APc/APf, box and mask) -> metrics.json and a table.

    Examples: ecmctl eval runs/faster_rcnn_tiny-ecm-synth/20261125-120000;
    ecmctl eval RUN_A RUN_B --reuse
    """
    from ecmctl.cli.render import metrics_table
    from ecmctl.pipeline.evaluate import evaluate, load_metrics

    if checkpoint is not None and len(run_dirs) > 1:
        raise UserError("--checkpoint applies to a single run directory")
    docs = [load_metrics(r) if reuse else evaluate(r, checkpoint, overrides or [], _say) for r in run_dirs]
    console.print(metrics_table(docs))
    for r in run_dirs:
        console.print(f"wrote {Path(r) / 'metrics.json'}" if not reuse else f"read {Path(r) / 'metrics.json'}")


@app.command()
@user_errors
def demo(
    overrides: list[str] | None = OVERRIDES,
    out: Path | None = typer.Option(None, "--out", help="Where the demo's runs go (default runs/demo)."),
) -> None:
    """The main job on the embedded dataset: synth, count, calibrate, train ECM and BCE, eval, report.

    Examples: ecmctl demo;  ecmctl demo demo.seeds=[0,1,2];  ecmctl demo schedule=smoke --out /tmp/demo
    """
    from ecmctl.cli.render import demo_table
    from ecmctl.pipeline.demo import run_demo

    summary = run_demo([*(overrides or []), *([f"demo.out={out}"] if out else [])], _say)
    console.print(demo_table(summary))
    console.print(f"report: {summary['report']}")


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
