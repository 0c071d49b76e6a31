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
    """The train/val annotations exist; the embedded synthetic set is generated when missing.

    A synthetic set found on disk must be the one `dataset.synth` describes (profile, classes, images,
    image size, seed): an older or differently sized set in the same directory is an error, never used.
    """
    ds = cfg.dataset
    missing = [p for p in (ds.train_ann, ds.val_ann) if not Path(p).is_file()]
    if not missing:
        if ds.get("synth"):
            check_synth(ds)
        return
    if ds.get("synth"):
        from ecmctl.dataset.synth import make_dataset

        say(f"dataset {ds.name}: {missing[0]} is missing, generating it (ecmctl synth {ds.root} "
            f"--profile {ds.synth.get('profile', 'small')})")
        s = ds.synth
        make_dataset(ds.root, num_classes=s.classes, train_images=s.train_images, val_images=s.val_images,
                     image_size=s.image_size, seed=s.seed, profile=s.get("profile", "small"))
        return
    raise UserError(f"dataset {ds.name}: {missing[0]} does not exist; set data_root=DIR "
                    f"or dataset.root=DIR to where the dataset lives")


def _synth_shape(train: dict, val: dict) -> dict:
    images = train.get("images") or [{}]
    return {"description": (train.get("info") or {}).get("description"),
            "classes": len(train.get("categories", [])), "train_images": len(train.get("images", [])),
            "val_images": len(val.get("images", [])), "image_size": images[0].get("width")}


def check_synth(ds: DictConfig) -> None:
    """Refuse a generated set on disk that differs from `ds.synth` (files made elsewhere are trusted)."""
    import json

    from ecmctl.dataset.synth import SYNTH_DESCRIPTION, describe

    with open(ds.train_ann) as f:
        train = json.load(f)
    found_desc = (train.get("info") or {}).get("description") or ""
    if not found_desc.startswith(SYNTH_DESCRIPTION):
        return
    with open(ds.val_ann) as f:
        val = json.load(f)
    s = ds.synth
    want = {"description": describe("train", int(s.seed), s.get("profile", "small")), "classes": s.classes,
            "train_images": s.train_images, "val_images": s.val_images, "image_size": s.image_size}
    found = _synth_shape(train, val)
    diff = [f"{k} {found[k]!r} (dataset.synth asks for {want[k]!r})" for k in want if found[k] != want[k]]
    if diff:
        raise UserError(f"dataset {ds.name}: {ds.root} holds a different synthetic set: " + "; ".join(diff)
                        + f". Delete {ds.root} to generate the configured one, or set data_root=DIR "
                        "(or dataset.root=DIR) to another directory")


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
