"""The pipeline's shared preconditions: dataset, counts, weights. Each stage runs the missing ones."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

from ecmctl.core.errors import UserError
from ecmctl.core.io import check_writable, make_dirs, sha256_file
from ecmctl.dataset.counting import load_counts
from ecmctl.ecm.weights import load_weights

Say = Callable[[str], None]


def _quiet(msg: str) -> None:
    pass


SYNTH_MARKER = b"ecmctl synth"  # in the `info` block that opens every annotation file `ecmctl synth` writes


def check_synth_out(out_dir: str | Path) -> None:
    """`synth` (re)writes OUT_DIR/{train,val}.json and its image folders: refuse, before any image is drawn, a
    directory whose annotation files are not an earlier synthetic set (a real dataset is never replaced),
    and one that cannot be written."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory; remove it or choose another OUT_DIR")
    for split in ("train", "val"):
        f = out / f"{split}.json"
        if f.exists():
            with open(f, "rb") as fh:
                head = fh.read(4096)
            if SYNTH_MARKER not in head:
                raise UserError(f"{f}: exists and is not a synthetic set written by `ecmctl synth`; it would be "
                                "replaced. Choose another OUT_DIR")
    check_writable(out, "OUT_DIR")


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

        check_synth_out(ds.root)
        say(f"dataset {ds.name}: {missing[0]} is missing, generating it (ecmctl synth {ds.root} "
            f"--profile {ds.synth.get('profile', 'small')})")
        s = ds.synth
        make_dataset(ds.root, num_classes=s.classes, train_images=s.train_images, val_images=s.val_images,
                     image_size=s.image_size, seed=s.seed, profile=s.get("profile", "small"),
                     image_height=s.image_height, repeat_looks=s.repeat_looks)
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


def counts_path(cfg: DictConfig, ann_sha: str) -> Path:
    """The given counts_file, or the shared cache <run_root>/counts/<dataset.name>-<sha256 of the annotations>.json:
    keyed by content, so jobs on another data_root with the same dataset name never replace each other's."""
    if cfg.counts_file:
        return Path(cfg.counts_file)
    return Path(cfg.run_root) / "counts" / f"{cfg.dataset.name}-{ann_sha[:16]}.json"


_SHA_CACHE: dict[tuple, str] = {}


def annotations_sha256(path: str | Path) -> str:
    """sha256 of an annotation file, hashed once per process while the file is unchanged (LVIS train is
    1 GB: counts, weights and calibration all check their provenance against it)."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = sha256_file(path)
    return _SHA_CACHE[key]


def _short(sha: str | None) -> str:
    return sha[:12] if isinstance(sha, str) else "unknown"


def ensure_counts(cfg: DictConfig, say: Say = _quiet) -> tuple[Path, dict]:
    """The counts of the dataset's train annotations. A given `counts_file` must exist and have been counted
    from this dataset's train annotations (else UserError, naming both files; `allow_foreign_weights=true`
    accepts counts of another annotation file with the same classes, deliberately). Without one, the
    cached counts under <run_root>/counts/ (by the annotations' sha256) are reused when they match, else counted
    now and written atomically."""
    from ecmctl.dataset.counting import write_counts

    ensure_dataset(cfg, say)
    ann = Path(cfg.dataset.train_ann)
    ann_sha = annotations_sha256(ann)
    path = counts_path(cfg, ann_sha)
    if cfg.counts_file:  # the user's file: used as given, never (re)written
        if not path.is_file():
            raise UserError(f"counts_file={path}: no such file; make it with `ecmctl count {ann} -o {path}`, or "
                            f"leave counts_file unset to count {ann} now")
        doc, _ = load_counts(path)
        src = doc.get("source") or {}
        if src.get("sha256") != ann_sha:
            if _cat_keys(doc) != _cat_keys(_fresh_cats(ann)):
                raise UserError(f"{path}: its categories (ids or order) differ from {ann}; "
                                f"recount with `ecmctl count {ann} -o NEW.json`")
            if not cfg.get("allow_foreign_weights"):
                raise UserError(f"counts_file={path} was counted from {src.get('path')} (sha256 "
                                f"{_short(src.get('sha256'))}), not from this dataset's train annotations {ann} "
                                f"(sha256 {_short(ann_sha)}), though their classes are the same; recount with "
                                f"`ecmctl count {ann} -o NEW.json`, or pass allow_foreign_weights=true to use them "
                                "deliberately")
            say(f"allow_foreign_weights: using counts of {src.get('path')} for {ann} (recorded in run.json)")
        return path, doc
    if path.is_file():
        doc, _ = load_counts(path)
        if (doc.get("source") or {}).get("sha256") == ann_sha:
            return path, doc
    make_dirs(path.parent, "counts directory")
    say(f"counting {ann} -> {path} (ecmctl count)")
    return path, write_counts(ann, path, progress=False)


def _fresh_cats(ann: Path) -> dict:
    from ecmctl.dataset.counting import count_annotations

    return count_annotations(ann, progress=False)


def check_val_categories(val_ann: str | Path, counts: dict, counts_file: str | Path) -> None:
    """The val set must have the categories of the counts a run trains with (which its classes and weights come
    from): the same ids and names in the same order. Another order scores the wrong classes with exit 0; a
    missing one fails only after inference. Also refuses a val file with duplicate ids or names."""
    from ecmctl.dataset.counting import count_annotations

    trained = _cat_keys(counts)
    val = _cat_keys(count_annotations(val_ann, progress=False))
    if val == trained:
        return
    if len(val) != len(trained):
        what = f"{len(val)} categories, but the run's classes are {len(trained)}"
    else:
        i = next(i for i, (a, b) in enumerate(zip(val, trained)) if a != b)
        what = (f"category #{i} is id {val[i][0]} {val[i][1]!r}, but the run's class #{i} is id {trained[i][0]} "
                f"{trained[i][1]!r} (another order or other names)")
    raise UserError(f"{val_ann}: {what}, from {counts_file}; use a val set with the training categories, in their "
                    "order")


def foreign_inputs(cfg: DictConfig, counts_file: Path, counts: dict, weights_files: list[str] | None) -> list[dict]:
    """The inputs made from another annotation file than the dataset's (allowed by allow_foreign_weights),
    for run.json: which input, and which file it came from."""
    ann_sha = annotations_sha256(cfg.dataset.train_ann)
    out = []
    src = counts.get("source") or {}
    if src.get("sha256") != ann_sha:
        out.append({"input": "counts", "file": str(counts_file), "annotations": src.get("path"),
                    "annotations_sha256": src.get("sha256")})
    for f in weights_files or []:
        doc = load_weights(f).doc or {}
        if doc.get("annotations_sha256") not in (None, ann_sha):
            out.append({"input": "weights", "file": str(f), "annotations": doc.get("annotations"),
                        "annotations_sha256": doc.get("annotations_sha256")})
    return out


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


def check_weights(path: str | Path, counts: dict, with_background: bool, counts_file: str | Path | None = None,
                  ann_sha256: str | None = None, allow_foreign: bool = False) -> None:
    """A weights file must be internally consistent (`load_weights`), list the dataset's classes (ids and
    names, in order) with the run's counts as n_pos, match the head's layout, and come from this dataset's
    annotations: recorded in the file (annotations_sha256), or, for a file that does not record them, made
    from the run's own counts file (counts_sha256). `allow_foreign` accepts weights of another annotation
    file with the same classes."""
    w = load_weights(path)
    doc = w.doc or {}
    keys = [(c["id"], c["name"]) for c in counts["categories"]]
    fg = list(zip(w.ids[: w.num_foreground], w.names[: w.num_foreground]))
    if [k[0] for k in fg] != [k[0] for k in keys]:
        raise UserError(f"{path}: its classes (ids or order) differ from the dataset's {len(keys)} classes; "
                        "regenerate it with `ecmctl weights` from this dataset's counts")
    if fg != keys:
        i = next(i for i, (a, b) in enumerate(zip(fg, keys)) if a != b)
        raise UserError(f"{path}: class id {keys[i][0]} is named {fg[i][1]!r}, but the dataset calls it "
                        f"{keys[i][1]!r}; regenerate it with `ecmctl weights` from this dataset's counts")
    if w.has_background != with_background:
        need = "with a background class (--bg-ratio)" if with_background else "without background"
        raise UserError(f"{path}: this detector needs a weights file {need}")
    src = counts.get("source") or {}
    ann = src.get("path")
    made_from = doc.get("annotations_sha256")
    counts_sha = sha256_file(counts_file) if counts_file and Path(counts_file).is_file() else None
    if made_from is None and counts_sha is not None and doc.get("counts_sha256") != counts_sha:
        raise UserError(f"{path}: made from counts with sha256 {_short(doc.get('counts_sha256'))}, not from this "
                        f"run's counts {counts_file} (sha256 {_short(counts_sha)}), and it does not record its "
                        f"annotation file; regenerate it with `ecmctl weights {counts_file}`")
    if made_from is not None and ann_sha256 is not None and made_from != ann_sha256 and not allow_foreign:
        raise UserError(f"{path}: made from the annotations {doc.get('annotations')} (sha256 {_short(made_from)}), "
                        f"not from this dataset's train annotations (sha256 {_short(ann_sha256)}); regenerate it "
                        "with `ecmctl weights` from this dataset's counts, or pass allow_foreign_weights=true to "
                        "use it deliberately")
    same_counts = made_from == src.get("sha256") if made_from is not None else doc.get("counts_sha256") == counts_sha
    if same_counts and w.n_pos is not None:
        floor = doc.get("min_count") or 0
        want = [max(c["instance_count"], floor) for c in counts["categories"]]
        got = w.n_pos[: w.num_foreground].tolist()
        bad = [i for i, (a, b) in enumerate(zip(got, want)) if not math.isclose(a, b, rel_tol=1e-9)
               and not (floor == 0 and b == 0 and a >= 1)]
        if bad:
            i = bad[0]
            raise UserError(f"{path}: class {keys[i][1]!r} has n_pos {got[i]:g}, but the counts of {ann} say "
                            f"{want[i]:g}; regenerate it with `ecmctl weights` from this dataset's counts")
