"""`python -m ecmctl.worker RUN_DIR [--resume | --test CKPT | --calibrate]`: one rank, as torchrun starts it."""

import argparse

from ecmctl.train import run_worker


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("run_dir")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--test", metavar="CHECKPOINT", help="evaluate this checkpoint instead of training")
    p.add_argument("--set", action="append", default=[], help="eval override, as for `ecmctl eval --set`")
    p.add_argument("--calibrate", action="store_true", help="RUN_DIR is a calibration directory: calibrate")
    a = p.parse_args()
    if a.calibrate:
        calibrate_rank(a.run_dir)
    elif a.test:
        evaluate_rank(a.run_dir, a.test, a.set)
    else:
        run_worker(a.run_dir, a.resume)


def evaluate_rank(run_dir: str, checkpoint: str, overrides: list[str]) -> None:
    """One evaluation rank; rank 0 writes metrics.json."""
    from pathlib import Path

    from mmengine.dist import get_rank

    from ecmctl.evaluate import eval_config, run_test, write_metrics

    cfg = eval_config(Path(run_dir), overrides)
    raw = run_test(run_dir, checkpoint, cfg)
    if get_rank() == 0:
        write_metrics(Path(run_dir), Path(checkpoint), cfg, raw)


def calibrate_rank(out_dir: str) -> None:
    """One calibration rank, from the config that `ecmctl calibrate` saved in OUT_DIR."""
    from pathlib import Path

    from omegaconf import OmegaConf

    from ecmctl.calibrate import CALIBRATE_CONFIG, run_calibration

    run_calibration(OmegaConf.load(Path(out_dir) / CALIBRATE_CONFIG), out_dir, say=lambda m: None)


if __name__ == "__main__":
    main()
