"""A packed LVIS/COCO training set: the data list mmdet's datasets build, as a few flat arrays in one file.

mmdet's `LVISV1Dataset` loads the whole json with lvis-api and keeps one Python dict per image (about a minute
and 5 GB at LVIS v1 train size, on every rank). Here the file is streamed once (`jsonscan.Scanner` locates
each element, msgspec decodes a batch of them at a time with only the fields mmdet reads), the rules of mmdet's
`CocoDataset.parse_data_info` are applied to whole arrays, and the result is written to one cache file:

    images:    img_id, height, width, file name (bytes + offsets), whether a raw annotation names a class
    instances: per-image offsets; bbox (float64 xyxy), label, ignore flag
    masks:     the annotation file itself, verbatim (`source`), and per instance the offset and length of its
               annotation object's json text in it; its `segmentation` (polygons or RLE) is parsed with
               Python's json when its image is read: the very values (ints stay ints, floats are the same
               doubles) that lvis-api's json.load gives mmdet. Parsing the ~100M polygon numbers of LVIS train
               up front would cost more than everything else together; copying the file as it is read (the
               thread that reads and hashes it has the kernel copy each chunk) costs little and copies no
               text per annotation.

Layout: magic, version and the header's offset; the arrays, each 64-byte aligned (`source` first); a json
header (arrays, the source's sha256, the options) with a crc32 of everything before it. A reader memory-maps
it, so every rank and data-loader worker on a node shares the same pages, and `data_info(i)` decodes one
image at a time.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import hashlib
import json
import os
import pickle
import signal
import struct
import zlib
from collections.abc import Callable, Sequence
from operator import attrgetter
from pathlib import Path

import msgspec
import numpy as np

from ecmctl.core.errors import UserError
from ecmctl.dataset.jsonscan import Scanner, read_chunks

MAGIC = b"ECMPACK\0"
VERSION = 3  # of the layout: a pack of another version is rebuilt
PRELUDE = struct.Struct("<8sIIQQ")  # magic, version, reserved, header offset, header length
ALIGN = 64
BATCH_BYTES = 4 << 20
PARALLEL_MIN_BYTES = 64 << 20  # an annotations section smaller than this is decoded by one process
MAX_WORKERS = 16
LVIS_URL = "http://images.cocodataset.org/"
ARRAYS = {"img_id", "height", "width", "name_off", "name_blob", "named", "inst_off", "bbox", "label", "ignore",
          "ann_first", "ann_len", "source"}
VARIANTS = ("lvis", "coco")  # LVISV1Dataset (file name from coco_url, every category) or CocoDataset (classes)


class _Image(msgspec.Struct):
    id: int
    height: int
    width: int
    file_name: str | None = None
    coco_url: str | None = None


class _Ann(msgspec.Struct):
    image_id: int
    category_id: int
    bbox: list[float]
    area: float
    iscrowd: int | bool = 0
    ignore: int | bool = False


def options_key(variant: str, classes: Sequence[str] | None) -> dict:
    """What the packed arrays depend on besides the file: the dataset kind and, for COCO, the classes
    (CocoDataset keeps only the categories named in metainfo.classes)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}")
    return {"version": VERSION, "variant": variant, "classes": list(classes) if variant == "coco" else None}


def options_hash(options: dict) -> str:
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:16]


# --- building ----------------------------------------------------------------------------------------------------

def _decode(path: str, fd: int, base: int, what: str, starts: np.ndarray, ends: np.ndarray, typ, first: int = 0):
    """(first, end, elements) for the elements of one section, a batch of about BATCH_BYTES at a time, decoded
    as `typ`, read from `fd` (the pack's copy of the file, which starts at offset `base`); the elements are
    #first... of their section."""
    decoder = msgspec.json.Decoder(list[typ])
    i, n = 0, starts.size
    while i < n:
        j = int(np.searchsorted(starts, starts[i] + BATCH_BYTES, "right"))
        j = max(j, i + 1)
        lo, hi = int(starts[i]), int(ends[j - 1])
        data = os.pread(fd, hi - lo, base + lo)
        try:
            batch = decoder.decode(b"[" + data + b"]")
        except msgspec.ValidationError as e:
            raise UserError(f"{path}: an entry of {what!r} among #{first + i}-#{first + j - 1}: {e}") from None
        except msgspec.DecodeError as e:
            raise UserError(f"{path}: not valid JSON in {what!r} near byte {lo}: {e}") from None
        yield first + i, first + j, batch
        i = j


class _Tee:
    """What the reading thread does with each chunk of the annotation file: hash it, and append it to the
    pack (see _Writer.source). hashlib, zlib and the copy release the GIL: this overlaps the scan."""

    def __init__(self, append: Callable[[memoryview | bytes], None]):
        self.sha = hashlib.sha256()
        self.append = append

    def update(self, data: memoryview | bytes) -> None:
        self.sha.update(data)
        self.append(data)


def _identity(st: os.stat_result) -> tuple:
    return st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns


class Found(Exception):
    """Raised by build's `on_digest` to stop a build: a valid pack of this digest exists already."""


def build(path: str | os.PathLike, out: str | os.PathLike, variant: str = "lvis",
          classes: Sequence[str] | None = None, sha256: str | None = None,
          on_digest: Callable[[str], None] | None = None, workers: int | None = None) -> dict:
    """Pack an LVIS (variant lvis) or COCO (coco) annotation file into `out`; returns the header's metadata.
    The file is read once: as it is scanned, a thread hashes it and copies it into the pack. `on_digest(sha)`
    is called as soon as the sha256 is known (after the scan, before the decoding); it may raise Found to stop.
    The annotations are decoded by `workers` processes (forked; default: ECMCTL_PACK_WORKERS, else one per
    usable CPU for a large file), each a contiguous part of them: the pack is the same byte for byte.

    Equal, image by image, to what mmdet's LVISV1Dataset / CocoDataset.load_data_list produce: images in
    file order, their annotations in file order, with parse_data_info's rules (ignore skipped; boxes whose
    intersection with the image is empty, with area <= 0, or w or h < 1 dropped; crowd -> ignore_flag 1;
    labels in the file's category order).
    """
    name = os.fspath(path)
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such annotation file")
    collecting = gc.isenabled()
    gc.disable()  # millions of short-lived decoded objects, no cycles: the collector would only rescan the heap
    try:
        return _build(p, name, out, variant, classes, sha256, on_digest, workers)
    finally:
        if collecting:
            gc.enable()
        _trim_heap()


def _trim_heap() -> None:
    """Give the build's freed heap (decoded batches, columns) back to the system (glibc keeps it otherwise,
    and a rank's RSS would carry it for the whole run)."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL(None).malloc_trim(0)


def _build(p: Path, name: str, out, variant: str, classes, sha256: str | None, on_digest, workers) -> dict:
    src = os.open(p, os.O_RDONLY)
    try:
        before = _identity(os.fstat(src))
        with _Writer(out) as writer:
            tee = _Tee(writer.source(src))
            base = writer.pos
            scanner = Scanner(name, {"annotations": (), "images": ()}, spans=("annotations", "images"))  # no ids
            scanner.run(read_chunks(p, 8 << 20, tee))
            scanner.finish()
            digest = tee.sha.hexdigest()
            if sha256 is not None and digest != sha256:
                raise UserError(f"{p}: changed while it was read (sha256 {digest[:12]}…, expected "
                                f"{sha256[:12]}…)")
            if not before == _identity(os.fstat(src)) == _identity(os.stat(p)) or before[2] != scanner.offset:
                raise UserError(f"{p}: changed while it was read (its size, time or inode changed)")
            if on_digest is not None:
                on_digest(digest)
            return _build_arrays(p, name, writer, writer.fd, base, scanner, digest, variant, classes, workers)
    finally:
        os.close(src)


def _build_arrays(p: Path, name: str, writer: _Writer, fd: int, base: int, scanner: Scanner, digest: str,
                  variant: str, classes, workers: int | None) -> dict:
    for key in ("images", "annotations", "categories"):
        if scanner.top.get(key) != "array":
            raise UserError(f"{p}: no top-level {key!r} list; expected an LVIS or COCO annotation file")
    try:
        cats = json.loads(b"".join(scanner.raw["categories"]))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: not valid JSON in 'categories' ({e})") from None
    if variant == "lvis":
        cat_ids = [int(c["id"]) for c in cats]  # lvis-api's get_cat_ids: every category, file order
    else:  # pycocotools' getCatIds(catNms=classes): the file's order, names in classes
        wanted = set(classes or ())
        cat_ids = [int(c["id"]) for c in cats if c.get("name") in wanted]
    cat_sorted = np.array(sorted(cat_ids), np.int64)
    label_of_sorted = np.array([cat_ids.index(c) for c in cat_sorted.tolist()], np.int64)

    ann_starts, ann_ends = scanner.sections["annotations"].spans()
    img_starts, img_ends = scanner.sections["images"].spans()
    img_bytes = int(img_ends[-1] - img_starts[0]) if img_starts.size else 0
    bounds = _parts(ann_starts, ann_ends, _num_workers(workers, ann_starts.size,
                                                       int(ann_ends[-1] - ann_starts[0]) if ann_starts.size else 0),
                    head_start=2 * img_bytes)  # this process decodes the images too (more Python per byte)
    children = [_fork(_ann_columns, name, fd, base, ann_starts[a:b], ann_ends[a:b], a)
                for a, b in zip(bounds[1:-1], bounds[2:])]  # the parts after the first, decoded meanwhile
    try:
        ids, hs, ws, names = [], [], [], []
        for _, _, batch in _decode(name, fd, base, "images", img_starts, img_ends, _Image):
            for im in batch:
                if variant == "lvis":
                    if im.coco_url is None:
                        raise UserError(f"{p}: image id {im.id} has no 'coco_url' (LVIS v1 names images by it)")
                    fname = im.coco_url.replace(LVIS_URL, "")
                else:
                    if im.file_name is None:
                        raise UserError(f"{p}: image id {im.id} has no 'file_name'")
                    fname = im.file_name
                ids.append(im.id)
                hs.append(im.height)
                ws.append(im.width)
                names.append(fname.encode())
        img_id = np.array(ids, np.int64)
        order = np.argsort(img_id, kind="stable")
        dup = np.flatnonzero(img_id[order][1:] == img_id[order][:-1])
        if dup.size:
            raise UserError(f"{p}: image id {img_id[order][dup[0]]} appears twice in 'images'")
        height, width = np.array(hs, np.int64), np.array(ws, np.int64)
        name_off = np.zeros(len(names) + 1, np.int64)
        np.cumsum([len(s) for s in names], out=name_off[1:])
        name_blob = np.frombuffer(b"".join(names), np.uint8)
        del ids, hs, ws, names

        cols: dict[str, list] = {k: [] for k in ("img", "label", "ignore", "bbox", "ann", "named")}
        a, b = bounds[0], bounds[1]
        parts = [_ann_columns(name, fd, base, ann_starts[a:b], ann_ends[a:b], a)]
        parts += [_join(child) for child in children]
        for a, part in zip(bounds, parts):
            _apply_rules(part, a, img_id, order, height, width, cat_sorted, label_of_sorted, cols)
    finally:
        for pid, rfd in children:  # after an error: stop the ones still running
            _reap(pid, rfd)
    return _finish(writer, scanner, name, digest, variant, classes, cat_ids, img_id, height, width,
                   name_off, name_blob, ann_starts, ann_ends, cols)


def _finish(writer: _Writer, scanner: Scanner, name: str, digest: str, variant: str, classes, cat_ids: list[int],
            img_id: np.ndarray, height: np.ndarray, width: np.ndarray, name_off: np.ndarray, name_blob: np.ndarray,
            ann_starts: np.ndarray, ann_ends: np.ndarray, cols: dict) -> dict:
    """The per-image and per-instance arrays (instances regrouped by image), then the header."""

    cat = lambda k, dt: np.concatenate(cols[k]).astype(dt, copy=False) if cols[k] else np.zeros(0, dt)  # noqa: E731
    ann_img = cat("img", np.int64)
    num_images = img_id.size
    named = np.zeros(num_images, bool)
    named_img = cat("named", np.int64)
    named[named_img] = True  # filter_empty_gt: a raw annotation of one of cat_ids, whatever its box
    by_img = np.argsort(ann_img, kind="stable")  # images in file order, their annotations in file order
    inst_off = np.zeros(num_images + 1, np.int64)
    np.cumsum(np.bincount(ann_img, minlength=num_images), out=inst_off[1:])
    ann = cat("ann", np.int64)[by_img]  # each instance's annotation object, in `source`
    arrays = {
        "img_id": img_id, "height": height, "width": width, "name_off": name_off, "name_blob": name_blob,
        "named": named, "inst_off": inst_off,
        "bbox": cat("bbox", np.float64).reshape(-1, 4)[by_img], "label": cat("label", np.int32)[by_img],
        "ignore": cat("ignore", np.uint8)[by_img], "ann_first": ann_starts[ann],
        "ann_len": ann_ends[ann] - ann_starts[ann],
    }
    for key, arr in arrays.items():
        writer.put(key, arr)
    meta = {"source": {"path": os.path.abspath(name), "sha256": digest, "bytes": scanner.offset},
            "options": options_key(variant, classes), "cat_ids": cat_ids,
            "num_images": int(num_images), "num_instances": int(ann.size)}
    writer.close(meta)
    return meta


def _num_workers(requested: int | None, count: int, nbytes: int) -> int:
    if requested is None:
        env = os.environ.get("ECMCTL_PACK_WORKERS", "").strip()
        if env:
            try:
                requested = int(env)
            except ValueError:
                raise UserError(f"ECMCTL_PACK_WORKERS={env!r}: expected a number of processes") from None
        elif nbytes < PARALLEL_MIN_BYTES:
            return 1
        else:
            requested = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if not hasattr(os, "fork"):
        return 1
    return max(1, min(requested, MAX_WORKERS, count))


def _parts(starts: np.ndarray, ends: np.ndarray, k: int, head_start: int = 0) -> list[int]:
    """Element indices that cut the section into k contiguous parts of about equal work, counted in bytes;
    the first part's process has `head_start` bytes' worth of other work."""
    if k <= 1 or not starts.size:
        return [0, int(starts.size)]
    lo, hi = int(starts[0]), int(ends[-1])
    share = (hi - lo + head_start) / k
    cuts = np.searchsorted(starts, lo + np.maximum(0, share * np.arange(1, k) - head_start)).tolist()
    return [0, *sorted(set(cuts) - {0, int(starts.size)}), int(starts.size)]


def _fork(fn, *args) -> tuple[int, int]:
    """fn(*args) in a forked process; its pickled result (or exception) comes back through a pipe."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the parent's code
        try:
            os.close(rfd)
            try:
                payload = pickle.dumps((True, fn(*args)), protocol=5)
            except BaseException as e:  # noqa: BLE001 - handed to the parent
                try:
                    payload = pickle.dumps((False, e))
                except Exception:  # noqa: BLE001
                    payload = pickle.dumps((False, RuntimeError(f"{type(e).__name__}: {e}")))
            with open(wfd, "wb") as f:
                f.write(payload)
        finally:
            os._exit(0)
    os.close(wfd)
    return pid, rfd


def _join(child: tuple[int, int]):
    pid, rfd = child
    with open(os.dup(rfd), "rb") as f:
        payload = f.read()
    if not payload:
        raise RuntimeError(f"a packing worker (pid {pid}) died without a result")
    ok, value = pickle.loads(payload)
    if not ok:
        raise value
    return value


def _reap(pid: int, rfd: int) -> None:
    try:
        if os.waitpid(pid, os.WNOHANG) == (0, 0):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    except ChildProcessError:
        pass
    os.close(rfd)


_ANN_COLS = ("image", "category", "box", "area", "crowd", "ignore")


def _ann_columns(path: str, fd: int, base: int, starts: np.ndarray, ends: np.ndarray, first: int) -> dict:
    """The fields parse_data_info reads, as arrays, for annotations #first... (spans starts/ends)."""
    out: dict[str, list] = {k: [] for k in _ANN_COLS}
    for _, _, batch in _decode(path, fd, base, "annotations", starts, ends, _Ann, first):
        n = len(batch)
        image = np.fromiter(map(attrgetter("image_id"), batch), np.int64, count=n)
        boxes = list(map(attrgetter("bbox"), batch))
        sizes = np.fromiter(map(len, boxes), np.int64, count=n)
        if (sizes != 4).any():
            k = int(np.flatnonzero(sizes != 4)[0])
            raise UserError(f"{path}: an annotation of image id {image[k]} has a bbox of {len(boxes[k])} numbers, "
                            "expected [x, y, w, h]")
        out["image"].append(image)
        out["category"].append(np.fromiter(map(attrgetter("category_id"), batch), np.int64, count=n))
        out["box"].append(np.array(boxes, np.float64).reshape(n, 4))
        out["area"].append(np.fromiter(map(attrgetter("area"), batch), np.float64, count=n))
        out["crowd"].append(np.fromiter(map(bool, map(attrgetter("iscrowd"), batch)), bool, count=n))
        out["ignore"].append(np.fromiter(map(bool, map(attrgetter("ignore"), batch)), bool, count=n))
    shapes = {"box": (0, 4)}
    dtypes = {"image": np.int64, "category": np.int64, "box": np.float64, "area": np.float64, "crowd": bool,
              "ignore": bool}
    return {k: np.concatenate(v) if v else np.zeros(shapes.get(k, 0), dtypes[k]) for k, v in out.items()}


def _apply_rules(part: dict, first: int, img_id: np.ndarray, order: np.ndarray, height: np.ndarray,
                 width: np.ndarray, cat_sorted: np.ndarray, label_of_sorted: np.ndarray, cols: dict) -> None:
    """CocoDataset.parse_data_info's rules, on the columns of annotations #first... at once."""
    image, category, box, area = part["image"], part["category"], part["box"], part["area"]
    n = image.size
    if not n:
        return
    pos = np.searchsorted(img_id, image, sorter=order)
    pos = np.minimum(pos, max(img_id.size - 1, 0))
    known = img_id[order[pos]] == image if img_id.size else np.zeros(n, bool)
    img = np.where(known, order[pos], 0)
    cpos = np.minimum(np.searchsorted(cat_sorted, category), max(cat_sorted.size - 1, 0))
    in_cats = cat_sorted[cpos] == category if cat_sorted.size else np.zeros(n, bool)
    cols["named"].append(img[known & in_cats])

    x1, y1, w, h = box.T
    W, H = width[img].astype(np.float64), height[img].astype(np.float64)
    inter_w = np.maximum(0, np.minimum(x1 + w, W) - np.maximum(x1, 0))
    inter_h = np.maximum(0, np.minimum(y1 + h, H) - np.maximum(y1, 0))
    keep = known & ~part["ignore"] & (inter_w * inter_h != 0) & ~((area <= 0) | (w < 1) | (h < 1)) & in_cats
    idx = np.flatnonzero(keep)
    if not idx.size:
        return
    cols["img"].append(img[idx])
    cols["label"].append(label_of_sorted[cpos[idx]])
    cols["ignore"].append(part["crowd"][idx].astype(np.uint8))
    cols["bbox"].append(np.stack([x1[idx], y1[idx], x1[idx] + w[idx], y1[idx] + h[idx]], 1).ravel())
    cols["ann"].append(idx + first)


# --- the file ------------------------------------------------------------------------------------------------------

class _Writer:
    """Writes a pack: arrays one after another (each 64-byte aligned; the source is appended in pieces), then the
    header. The crc32 covers every byte before the header, and the header records it and its own offset, so
    a truncated or altered file is never read. The caller renames the finished file into place."""

    def __init__(self, path: str | os.PathLike):
        self.path = path
        self.table: dict[str, dict] = {}
        self.crc = 0
        self.pos = PRELUDE.size
        self.fd = -1

    def __enter__(self) -> _Writer:
        # read back while building. Not O_TRUNC: on ext4, truncating to 0 (even an empty file) makes close()
        # start writing back every page written since (auto_da_alloc), 0.3-0.4 s per GB spent here
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if os.fstat(self.fd).st_size:
            os.ftruncate(self.fd, 0)
        self._pwrite(b"\0" * PRELUDE.size, 0)
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)

    def _pwrite(self, data: bytes | memoryview, offset: int) -> None:
        view = memoryview(data).cast("B")
        while view:
            n = os.pwrite(self.fd, view, offset)
            view, offset = view[n:], offset + n

    def _bytes(self, data: bytes | memoryview) -> None:
        self._pwrite(data, self.pos)
        self.crc = zlib.crc32(data, self.crc)
        self.pos += len(data)

    def _align(self) -> None:
        if self.pos % ALIGN:
            self._bytes(b"\0" * (-self.pos % ALIGN))

    def put(self, key: str, arr: np.ndarray) -> None:
        self._align()
        data = np.ascontiguousarray(arr)
        self.table[key] = {"dtype": data.dtype.str, "shape": list(data.shape), "offset": self.pos}
        if data.size:
            self._bytes(memoryview(data).cast("B"))

    def source(self, src: int) -> Callable[[memoryview | bytes], None]:
        """The annotation file as the array `source`: returns the function that appends the next piece of
        it, given the piece as read (for the crc32). The bytes are copied from the file descriptor `src` by
        the kernel (copy_file_range: a fraction of the cost of writing them from memory), else written."""
        self._align()
        entry = self.table["source"] = {"dtype": "|u1", "shape": [0], "offset": self.pos}
        state = {"src_pos": 0, "copy": hasattr(os, "copy_file_range")}

        def append(piece) -> None:
            data = memoryview(piece).cast("B")
            n = len(data)
            done = 0
            while state["copy"] and done < n:
                try:
                    k = os.copy_file_range(src, self.fd, n - done, state["src_pos"] + done, self.pos + done)
                except OSError:
                    k = 0
                if not k:  # not supported here, or the file ended early: write what was read instead
                    state["copy"] = False
                done += k
            if done < n:
                self._pwrite(data[done:], self.pos + done)
            self.crc = zlib.crc32(data, self.crc)
            self.pos += n
            state["src_pos"] += n
            entry["shape"][0] += n
        return append

    def close(self, meta: dict) -> None:
        header = json.dumps({**meta, "arrays": self.table, "crc32": self.crc, "header_offset": self.pos}).encode()
        self._pwrite(header, self.pos)
        self._pwrite(PRELUDE.pack(MAGIC, VERSION, 0, self.pos, len(header)), 0)
        # no fsync: a pack torn by a crash fails its length or crc32 check when next opened and is rebuilt


class CorruptPack(Exception):
    """A pack file that is truncated, altered or of another version: rebuilt, never read."""


def _crc32(path: str | os.PathLike, start: int, end: int, chunk: int = 16 << 20) -> int:
    crc, buf = 0, bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        f.seek(start)
        left = end - start
        while left > 0:
            got = f.readinto(view[:min(chunk, left)])
            if not got:
                break
            crc = zlib.crc32(view[:got], crc)
            left -= got
    return crc


def open_pack(path: str | os.PathLike, verify: bool = True) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays of a pack file as read-only memory maps (shared by every process that maps it), and its
    header. With verify, the crc32 of the whole payload is checked (about 0.3 s per GB), read through a small
    buffer rather than the map, so that checking does not bring the whole file into this process's RSS."""
    size = os.path.getsize(path)
    if size < PRELUDE.size:
        raise CorruptPack(f"{path}: {size} bytes, shorter than a pack's prelude")
    mm = np.memmap(path, np.uint8, mode="r")
    magic, version, _, h_off, h_len = PRELUDE.unpack(bytes(mm[:PRELUDE.size]))
    if magic != MAGIC or version != VERSION:
        raise CorruptPack(f"{path}: not an ecmctl pack of version {VERSION}")
    if h_off + h_len != size:
        raise CorruptPack(f"{path}: {size} bytes, the header says {h_off + h_len} (truncated?)")
    try:
        header = json.loads(bytes(mm[h_off:h_off + h_len]))
    except (ValueError, UnicodeDecodeError):
        raise CorruptPack(f"{path}: unreadable header") from None
    if header.get("header_offset") != h_off:
        raise CorruptPack(f"{path}: the header does not match the prelude")
    if verify and _crc32(path, PRELUDE.size, h_off) != header["crc32"]:
        raise CorruptPack(f"{path}: checksum mismatch (the file was altered)")
    if set(header.get("arrays", ())) != ARRAYS:
        raise CorruptPack(f"{path}: not the arrays of a version-{VERSION} pack")
    arrays = {}
    for key, spec in header["arrays"].items():
        dt = np.dtype(spec["dtype"])
        count = int(np.prod(spec["shape"])) if spec["shape"] else 1
        arrays[key] = np.frombuffer(mm, dt, count=count, offset=spec["offset"]).reshape(spec["shape"])
    return arrays, header


# --- reading: one image at a time ---------------------------------------------------------------------------------

def file_name(arrays: dict[str, np.ndarray], i: int) -> str:
    off = arrays["name_off"]
    return bytes(arrays["name_blob"][off[i]:off[i + 1]]).decode()


def data_info(arrays: dict[str, np.ndarray], i: int, img_prefix: str, seg_prefix: str | None = None,
              seg_suffix: str = ".png") -> dict:
    """Image i's data info, as CocoDataset.parse_data_info writes it (bbox xyxy, bbox_label, ignore_flag, and
    `mask`: the segmentation, polygons or RLE, as json.loads reads it from the annotation's text)."""
    name = file_name(arrays, i)
    info = {"img_path": os.path.join(img_prefix, name), "img_id": int(arrays["img_id"][i]),
            "seg_map_path": (os.path.join(seg_prefix, name.rsplit(".", 1)[0] + seg_suffix) if seg_prefix else None),
            "height": int(arrays["height"][i]), "width": int(arrays["width"][i])}
    lo, hi = int(arrays["inst_off"][i]), int(arrays["inst_off"][i + 1])
    boxes = arrays["bbox"][lo:hi].tolist()
    labels = arrays["label"][lo:hi].tolist()
    ignore = arrays["ignore"][lo:hi].tolist()
    first = arrays["ann_first"][lo:hi].tolist()
    length = arrays["ann_len"][lo:hi].tolist()
    source = arrays["source"]
    instances = []
    for k in range(hi - lo):
        inst = {"ignore_flag": ignore[k], "bbox": boxes[k], "bbox_label": labels[k]}
        seg = json.loads(source[first[k]:first[k] + length[k]].tobytes()).get("segmentation")
        if seg:  # mmdet: `if ann.get('segmentation')`
            inst["mask"] = seg
        instances.append(inst)
    info["instances"] = instances
    return info


def cat_ids(arrays: dict[str, np.ndarray], i: int) -> list[int]:
    """The labels of image i's instances (BaseDetDataset.get_cat_ids), without decoding its masks."""
    return arrays["label"][arrays["inst_off"][i]:arrays["inst_off"][i + 1]].tolist()


def kept_images(arrays: dict[str, np.ndarray], filter_empty_gt: bool, min_size: float) -> np.ndarray:
    """CocoDataset.filter_data: with filter_empty_gt, images that some raw annotation of a class names (its
    box may be dropped later: mmdet tests lvis-api's cat_img_map, not the parsed instances); min(w, h) >=
    min_size."""
    keep = np.minimum(arrays["width"], arrays["height"]) >= min_size
    if filter_empty_gt:
        keep &= arrays["named"]
    return np.flatnonzero(keep)


def repeat_factors(arrays: dict[str, np.ndarray], images: np.ndarray, thr: float) -> np.ndarray:
    """mmengine ClassBalancedDataset._get_repeat_factors over the images `images` (the dataset's indices),
    with the same float operations: f_c = images with c / images; r_c = max(1, sqrt(thr / f_c)); an image's
    factor is the max r_c over its labels (1 without instances)."""
    n = images.size
    off = arrays["inst_off"]
    counts = off[images + 1] - off[images]
    which = np.repeat(np.arange(n), counts)
    starts = np.repeat(off[images] - np.concatenate(([0], np.cumsum(counts)[:-1])), counts)
    labels = arrays["label"][starts + np.arange(which.size)].astype(np.int64)
    num_labels = int(labels.max()) + 1 if labels.size else 1
    pairs = np.unique(which * num_labels + labels)  # (image, label), sorted by image
    img_of, lab_of = pairs // num_labels, pairs % num_labels
    freq = np.bincount(lab_of, minlength=num_labels).astype(np.float64) / n
    with np.errstate(divide="ignore"):
        rep = np.maximum(1.0, np.sqrt(thr / freq))
    factors = np.ones(n, np.float64)
    if pairs.size:
        first = np.flatnonzero(np.concatenate(([True], img_of[1:] != img_of[:-1])))
        factors[img_of[first]] = np.maximum.reduceat(rep[lab_of], first)
    return factors


def repeat_indices(factors: np.ndarray) -> np.ndarray:
    """ClassBalancedDataset.repeat_indices: each index ceil(factor) times, in order."""
    return np.repeat(np.arange(factors.size), np.ceil(factors).astype(np.int64))
