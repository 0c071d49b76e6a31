"""The pipeline's shared preconditions: dataset, counts, weights. Each stage runs the missing ones."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

from ecmctl.core.errors import UserError
from ecmctl.core.io import sha256_file
from ecmctl.dataset.counting import load_counts
from ecmctl.ecm.weights import load_weights

Say = Callable[[str], None]


def _quiet(msg: str) -> None:
    pass


def ensure_dataset(cfg: DictConfig, say: Say = _quiet) -> None:
    """The train/val annotations exist; the embedded synthetic set is generated when missing."""
    ds = cfg.dataset
    missing = [p for p in (ds.train_ann, ds.val_ann) if not Path(p).is_file()]
    if not missing:
        return
    if ds.get("synth"):
        from ecmctl.dataset.synth import make_dataset

        say(f"dataset {ds.name}: {missing[0]} is missing, generating it (ecmctl synth {ds.root})")
        s = ds.synth
        make_dataset(ds.root, num_classes=s.classes, train_images=s.train_images, val_images=s.val_images,
                     image_size=s.image_size, image_height=s.image_height, seed=s.seed,
                     repeat_looks=s.repeat_looks)
        return
    raise UserError(f"dataset {ds.name}: {missing[0]} does not exist; set data_root=DIR "
                    f"or dataset.root=DIR to where the dataset lives")


def counts_path(cfg: DictConfig) -> Path:
    return Path(cfg.counts_file) if cfg.counts_file else Path(cfg.run_root) / "counts" / f"{cfg.dataset.name}.json"


def ensure_counts(cfg: DictConfig, say: Say = _quiet) -> tuple[Path, dict]:
    """The counts of the dataset's train annotations: reused when they match, else counted now."""
    from ecmctl.dataset.counting import count_annotations, write_counts

    ensure_dataset(cfg, say)
    path, ann = counts_path(cfg), Path(cfg.dataset.train_ann)
    if path.is_file():
        doc, _ = load_counts(path)
        if doc["source"].get("sha256") == sha256_file(ann):
            return path, doc
        if cfg.counts_file:  # the user's file: it must describe this dataset's classes
            fresh = count_annotations(ann, progress=False)
            if _cat_keys(fresh) != _cat_keys(doc):
                raise UserError(f"{path}: its categories (ids or order) differ from {ann}; "
                                f"recount with `ecmctl count {ann} -o {path}`")
            return path, doc
    path.parent.mkdir(parents=True, exist_ok=True)
    say(f"counting {ann} -> {path} (ecmctl count)")
    return path, write_counts(ann, path, progress=False)


def _cat_keys(doc: dict) -> list:
    return [(c["id"], c["name"]) for c in doc["categories"]]


def class_names(counts: dict) -> list[str]:
    return [c["name"] for c in counts["categories"]]


def class_names_without_data(cfg: DictConfig) -> list[str]:
    """The dataset's classes in mmdet's order without reading its annotation files: LVIS v1's built-in
    table, the given counts file, or the synthetic set's design."""
    from ecmctl.dataset.lvis import builtin_counts

    if cfg.dataset.name == "lvis_v1":
        return class_names(builtin_counts("lvis_v1"))
    if cfg.counts_file and Path(cfg.counts_file).is_file():
        return class_names(load_counts(cfg.counts_file)[0])
    if cfg.dataset.synth:
        from ecmctl.dataset.synth import class_names as synth_class_names

        return synth_class_names(int(cfg.dataset.synth.classes))
    raise UserError(f"dataset {cfg.dataset.name}: its class names are not known without reading its annotations; "
                    "pass counts_file=PATH (from `ecmctl count`)")


def check_weights(path: str | Path, counts: dict, with_background: bool) -> None:
    """A weights file must list the dataset's classes, in order, and match the head's layout."""
    w = load_weights(path)
    ids = [c["id"] for c in counts["categories"]]
    fg_ids = w.ids[: w.num_foreground]
    if fg_ids != ids:
        raise UserError(f"{path}: its classes (ids or order) differ from the dataset's {len(ids)} classes; "
                        "regenerate it with `ecmctl weights` from this dataset's counts")
    if w.has_background != with_background:
        need = "with a background class (--bg-ratio)" if with_background else "without background"
        raise UserError(f"{path}: this detector needs a weights file {need}")
