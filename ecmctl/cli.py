"""The `ecmctl` command line: each command parses, calls one library function, prints."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from ecmctl.errors import UserError

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
            err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


@app.command()
@user_errors
def info() -> None:
    """Versions of the stack, whether mmcv's compiled ops load, and CUDA devices.

    Example: ecmctl info
    """
    from ecmctl.info import collect_info, info_table

    console.print(info_table(collect_info()))


@app.command()
@user_errors
def synth(
    out_dir: Path = typer.Argument(..., help="Directory to write images/, train.json and val.json into."),
    classes: int = typer.Option(24, "--classes", help="Number of categories."),
    train_images: int = typer.Option(400, "--train-images", help="Number of training images."),
    val_images: int = typer.Option(120, "--val-images", help="Number of validation images."),
    image_size: int = typer.Option(128, "--image-size", help="Side of the square images in pixels."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives byte-identical files."),
) -> None:
    """Write a deterministic long-tailed dataset in LVIS v1 format.

    Example: ecmctl synth data/synth --classes 24 --train-images 400 --seed 0
    """
    from ecmctl.synth import make_dataset, summary_table

    summary = make_dataset(out_dir, num_classes=classes, train_images=train_images,
                           val_images=val_images, image_size=image_size, seed=seed)
    console.print(summary_table(summary))


@app.command()
@user_errors
def count(
    annotations: Path = typer.Argument(..., help="LVIS- or COCO-format annotation json."),
    out: Path = typer.Option(Path("counts.json"), "-o", "--out", help="Output counts file."),
) -> None:
    """Per-class instance and image counts from an annotation file (streamed, any size).

    Example: ecmctl count data/synth/train.json -o runs/counts.json
    """
    from ecmctl.counting import summary_tables, write_counts

    doc = write_counts(annotations, out)
    for table in summary_tables(doc):
        console.print(table)
    console.print(f"wrote {out}")


@app.command()
@user_errors
def weights(
    counts: str = typer.Argument(..., help="Counts file from `ecmctl count`, or the built-in name lvis_v1."),
    bg_ratio: Optional[float] = typer.Option(None, "--bg-ratio", help="Background ratio r (two-stage heads)."),
    min_count: Optional[int] = typer.Option(None, "--min-count", help="Floor instance counts at this value."),
    out: Path = typer.Option(Path("weights.json"), "-o", "--out", help="Output weights file."),
) -> None:
    """Effective class-margins and weights (eq. 10-11, 24-26) -> the weights file.

    Examples: ecmctl weights runs/counts.json --bg-ratio 6.3313 -o weights.json;
    ecmctl weights lvis_v1 --bg-ratio 6.3313
    """
    from ecmctl.weights import weights_table, write_weights

    doc = write_weights(counts, out, bg_ratio=bg_ratio, min_count=min_count)
    console.print(weights_table(doc))
    console.print(f"wrote {out}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
