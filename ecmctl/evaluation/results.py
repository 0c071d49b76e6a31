"""Read an LVIS results file (a JSON list of detections) in bounded memory, validated element by element.

The file is read in chunks; each chunk is cut after the last `},` (the end of a top-level element in every
writer's layout: json, detectron2, mmdet) and the batch `[ ... ]` is decoded with msgspec into typed
Structs that hold only image_id, category_id, bbox, score (and segmentation for segm). A cut can only be
wrong if `},` occurs inside a string or a nested list; msgspec then fails on that batch (it parses from a
true element boundary, so it ends inside a string or a nested value), and the chunk is cut again at the
element ends found by a structural scan (quotes not escaped, brackets outside strings, depth). So no
batch is ever decoded from a wrong boundary, and memory is a chunk plus its decoded batch.

Every problem is a one-line UserError naming the file, the element index, the field and the fix.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

import msgspec
import numpy as np

from ecmctl.core.errors import UserError
from ecmctl.evaluation.gt import GroundTruth, sorted_lookup, to_rle
from ecmctl.evaluation.streaming import DetBatch, objects

CHUNK_BYTES = 16 << 20
SHAPE = ('a JSON list of detections {"image_id": int, "category_id": int, "bbox": [x, y, w, h], '
         '"score": float[, "segmentation": RLE or polygons]}')
_WS = b" \t\r\n"
_BYTE_RE = re.compile(r"\(byte (\d+)\)")
_PATH_RE = re.compile(r"(?: - at )?`\$\[(\d+)\]([^`]*)`")
_NONFINITE_RE = re.compile(rb"-?(?:NaN|Infinity)")


# gc=False: millions of small decoded objects that cannot form cycles; tracking them costs ~40% of decoding
class _Det(msgspec.Struct, gc=False):
    image_id: int
    category_id: int
    score: float
    bbox: tuple[float, float, float, float] | None = None


class _Rle(msgspec.Struct, gc=False):
    """A decoded RLE; subscriptable like the dict pycocotools reads (`rle["counts"]`), without building one
    dict per detection (overlap.as_dict makes one only for the detections that are compared)."""

    size: tuple[int, int]
    counts: str | list[int]

    def __getitem__(self, key: str):
        return getattr(self, key)


class _DetSegm(_Det, gc=False):
    segmentation: _Rle | list[list[float]] | None = None


class _CompressedRle(_Rle, gc=False):
    counts: str


class _DetCompressed(_Det, gc=False):
    """What mmdet and detectron2 write: compressed RLE strings; decoded first (no per-item type checks)."""

    segmentation: _CompressedRle | None = None


@dataclass
class _Batch:
    text: bytes | bytearray  # b"[" + elements + b"]"
    first: int  # index of its first element in the file
    offset: int  # file offset of text[1]


def element_ends(text: bytes | memoryview, start: int = 0) -> np.ndarray:
    """Offsets just past each complete top-level element in `text`, which begins inside the list
    (depth 1, outside strings) at `start`: closers that bring the depth back to 1, outside strings."""
    a = np.frombuffer(text, np.uint8)[start:]
    quotes = np.flatnonzero(a == 34)
    if quotes.size and (a == 92).any():  # a quote after an odd run of backslashes is escaped
        bs = np.flatnonzero(a == 92)
        run_start = np.r_[True, np.diff(bs) != 1]
        run_first = bs[np.flatnonzero(run_start)][np.cumsum(run_start) - 1]  # first backslash of each run
        before = np.searchsorted(bs, quotes - 1)
        hit = (before < bs.size) & (bs[np.minimum(before, bs.size - 1)] == quotes - 1)
        run_len = np.where(hit, quotes - 1 - run_first[np.minimum(before, bs.size - 1)] + 1, 0)
        quotes = quotes[run_len % 2 == 0]
    brackets = np.flatnonzero((a == 123) | (a == 125) | (a == 91) | (a == 93))
    brackets = brackets[np.searchsorted(quotes, brackets) % 2 == 0]  # an even number of quotes before
    opens = (a[brackets] == 123) | (a[brackets] == 91)
    depth = 1 + np.cumsum(np.where(opens, 1, -1))
    return brackets[~opens & (depth == 1)] + 1 + start


def _batches(path: str, chunk_bytes: int, decode) -> Iterator[tuple[list, _Batch]]:
    """(decoded elements, batch) for consecutive batches of the top-level list.

    `buf` is b"[" + the unread part of the list; a batch is decoded in place (cut, then b"]" appended),
    so each byte of the file is copied about once.
    """
    with open(path, "rb") as f:
        head = f.read(chunk_bytes)
        skip = len(head) - len(head.lstrip(_WS))
        if skip == len(head):
            raise UserError(f"{path}: the file is empty; expected {SHAPE}")
        if head[skip:skip + 1] != b"[":
            what = "an object (an annotation file?)" if head[skip:skip + 1] == b"{" else "not a list"
            raise UserError(f"{path}: the top-level JSON value is {what}; expected {SHAPE}")
        buf, offset, first, eof = bytearray(head[skip:]), skip + 1, 0, False
        del head
        while True:
            if not eof:
                more = f.read(chunk_bytes)
                eof = not more
                buf += more
                del more
            if eof:
                body = buf.rstrip(_WS)
                if not body.endswith(b"]"):
                    raise UserError(f"{path}: the file ends before the list's closing ']' (truncated?); "
                                    f"expected {SHAPE}")
                batch = _Batch(body, first, offset)
                yield _decode(path, decode, batch), batch
                return
            cut = buf.rfind(b"},") + 1
            if cut <= 0:
                continue  # no element ends in what was read: read more
            tail = bytes(buf[cut:])
            del buf[cut:]
            buf.append(93)  # "]"
            batch = _Batch(buf, first, offset)
            try:
                items = decode(buf)
            except (msgspec.DecodeError, msgspec.ValidationError):
                del buf[-1]
                buf += tail
                end = _last_separated_end(buf)
                if end is None:  # no element followed by ',' in what was read: read more
                    continue
                cut, tail = end, bytes(buf[end:])
                del buf[cut:]
                buf.append(93)
                items = _decode(path, decode, batch)
            yield items, batch
            rest = tail.lstrip(_WS)
            if rest[:1] != b",":
                raise UserError(f"{path}: not valid JSON at byte {offset + cut - 1 + len(tail) - len(rest)}: "
                                f"expected ',' after element #{first + len(items) - 1}; expected {SHAPE}")
            offset += cut - 1 + len(tail) - len(rest) + 1
            first += len(items)
            buf = bytearray(b"[") + rest[1:]


def _last_separated_end(buf: bytearray) -> int | None:
    """End of the last complete element of b"[" + elements that a ',' follows (a true cut point), if any."""
    for end in element_ends(buf, 1)[::-1].tolist():
        if buf[end:end + 64].lstrip(_WS)[:1] == b",":
            return end
    return None


def _decode(path: str, decode, batch: _Batch) -> list:
    """Decode a batch, or raise a UserError that names the element (and field) at fault."""
    try:
        return decode(batch.text)
    except msgspec.ValidationError as e:
        m = _PATH_RE.search(str(e))
        msg = _PATH_RE.sub("", str(e))
        if msg == "Number out of range":  # e.g. 1e999: a float64 overflow
            msg = "number out of range (not finite); scores and boxes must be finite numbers"
        if m is None:
            raise UserError(f"{path}: {msg}; expected {SHAPE}") from None
        field = m.group(2).lstrip(".") or "the element"
        raise UserError(f"{path}: element #{batch.first + int(m.group(1))}, {field}: {msg}; expected "
                        f"{SHAPE}") from None
    except msgspec.DecodeError as e:
        m = _BYTE_RE.search(str(e))
        if m is None:
            raise UserError(f"{path}: not valid JSON ({e}); expected {SHAPE}") from None
        at = int(m.group(1))
        index = batch.first + int(np.searchsorted(element_ends(batch.text, 1), at, "right"))
        token = _NONFINITE_RE.match(batch.text, at - (batch.text[at - 1:at] == b"-"))
        if token:
            key = re.findall(rb'"(\w+)"\s*:', batch.text[max(1, at - 400):at])
            field = key[-1].decode() if key else "a number"
            raise UserError(f"{path}: element #{index}, {field}: {token.group().decode()} is not a finite number; "
                            "scores and boxes must be finite (drop or fix that detection)") from None
        raise UserError(f"{path}: not valid JSON at byte {batch.offset + at - 1} (element #{index}): "
                        f"{_BYTE_RE.sub('', str(e)).strip()}; expected {SHAPE}") from None


def read_results(path: str | os.PathLike, gt: GroundTruth, iou_type: str,
                 chunk_bytes: int = CHUNK_BYTES) -> Iterator[DetBatch]:
    """Batches of validated detections in file order; `seq` is the element index in the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such results file")
    segm = iou_type == "segm"
    decode = _decode_segm if segm else msgspec.json.Decoder(list[_Det]).decode
    has_box: bool | None = None
    for items, batch in _batches(path, chunk_bytes, decode):
        n = len(items)
        if not n:
            continue
        idx = batch.first + np.arange(n, dtype=np.int64)
        img = _ids(path, gt.img_ids, np.fromiter((d.image_id for d in items), np.int64, n), idx, "image_id",
                   f"is not an image of {gt.path}; evaluate against the ground truth the detections were made for")
        cat = _ids(path, gt.cat_ids, np.fromiter((d.category_id for d in items), np.int64, n), idx,
                   "category_id", f"is not a category of {gt.path}; category ids must be the dataset's "
                   "(not 0-based class indices)")
        score = np.fromiter((d.score for d in items), np.float64, n)  # finite: msgspec rejects NaN, inf, 1e999
        boxes = [d.bbox for d in items]
        has_box = _check_boxes(path, boxes, batch.first, has_box, segm)
        box = np.array(boxes, np.float64).reshape(n, 4) if has_box else None
        if box is not None and (neg := np.flatnonzero((box[:, 2] < 0) | (box[:, 3] < 0))).size:
            i = int(neg[0])
            raise UserError(f"{path}: element #{batch.first + i} has a box of negative width or height "
                            f"({box[i].tolist()}); boxes are [x, y, width, height]")
        rles = _rles(path, gt, items, img, batch.first) if segm else None
        yield DetBatch(img, cat, score, idx, box, rles)


def _check_boxes(path: str, boxes: list, first: int, has_box: bool | None, segm: bool) -> bool:
    """Boxes on every detection or on none (lvis-api reads the first one to decide), and always for bbox."""
    want = boxes[0] is not None if has_box is None else has_box
    if (None in boxes) != (not want) or (not want and boxes.count(None) != len(boxes)):
        has = np.array([b is not None for b in boxes])
    else:
        has = np.full(len(boxes), want)
    if not want and not segm:
        raise UserError(f"{path}: element #{first} has no 'bbox'; bbox evaluation needs [x, y, w, h] on every "
                        "detection")
    bad = np.flatnonzero(has != want)
    if bad.size:
        i = first + int(bad[0])
        raise UserError(f"{path}: element #{i} has no 'bbox' but earlier ones have; give boxes on every "
                        "detection or on none" if want else
                        f"{path}: element #{i} has a 'bbox' but earlier ones have none; give boxes on every "
                        "detection or on none")
    return want


def _ids(path: str, sorted_ids: np.ndarray, values: np.ndarray, idx: np.ndarray, field: str,
         problem: str) -> np.ndarray:
    pos, ok = sorted_lookup(sorted_ids, values)
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        raise UserError(f"{path}: element #{idx[i]}, {field}: {values[i]} {problem}")
    return pos


_DECODE_COMPRESSED = msgspec.json.Decoder(list[_DetCompressed]).decode
_DECODE_ANY = msgspec.json.Decoder(list[_DetSegm]).decode


def _decode_segm(text: bytes | bytearray) -> list:
    """Segm detections: compressed RLEs only (the common case), else any segmentation lvis-api reads."""
    try:
        return _DECODE_COMPRESSED(text)
    except msgspec.ValidationError:
        return _DECODE_ANY(text)


def _rles(path: str, gt: GroundTruth, items: list, img: np.ndarray, first: int) -> np.ndarray:
    """Object array of the detections' RLEs: decoded compressed RLEs as they are, others converted."""
    segs = [d.segmentation for d in items]
    out = objects(segs)
    if type(items[0]) is _DetCompressed and None not in segs:
        return out
    for i in (i for i, s in enumerate(segs) if type(s) is not _CompressedRle):
        s = out[i]
        if s is None:
            raise UserError(f"{path}: element #{first + i} has no 'segmentation'; segm evaluation needs an RLE "
                            "(or polygons) on every detection (or evaluate with iou_type='bbox')")
        h, w = (int(v) for v in gt.img_hw[img[i]])
        out[i] = to_rle({"size": list(s.size), "counts": s.counts} if isinstance(s, _Rle) else s, h, w)
    return out
