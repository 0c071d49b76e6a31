"""Detection shards: the raw detections of a run in a compact file, to re-score without inference.

A shard is a sequence of frames (4-byte little-endian length + msgpack): a header, then chunks of
columns as raw little-endian arrays: image_id int64, category_id int64, score float64, seq int64 (input
order, lvis-api's tie-breaker), box (n, 4) in the header's format ("xyxy", "xywh" or "none") and dtype,
for masks their compressed RLE (height, width, counts), and the ids of the images processed (an image
without detections still counts: its ground truths are misses). Boxes keep the dtype they were given:
float32 model outputs stay float32 (lossless), float64 results-file boxes stay float64, so a re-scored
shard gives the same numbers.
A run writes one shard per rank (`rank_path`); `read_detections` yields the chunks of several shards as
one stream, later shards' `seq` after earlier ones'.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np

from ecmctl.core.errors import UserError

FORMAT = "ecmctl/detections@1"
SUFFIX = ".dets"
FLUSH_DETS = 1 << 16
_LEN = struct.Struct("<I")


class _Header(msgspec.Struct):
    format: str
    box_format: str  # "xyxy" or "xywh"
    box_dtype: str  # "float32" or "float64"
    masks: bool


class _Chunk(msgspec.Struct):
    images: bytes  # int64 ids of the images processed (with or without detections)
    image_id: bytes
    category_id: bytes
    score: bytes
    seq: bytes
    box: bytes
    mask_hw: bytes = b""  # int32 (n, 2)
    rle_len: bytes = b""  # int64 (n,) bytes of each compressed RLE
    rle_counts: bytes = b""


@dataclass
class Detections:
    """One chunk of a shard, decoded."""

    images: np.ndarray  # ids of the images processed
    image_id: np.ndarray
    category_id: np.ndarray
    score: np.ndarray
    seq: np.ndarray
    box: np.ndarray | None  # (n, 4) in box_format; None for "none"
    box_format: str
    rles: list[dict] | None


def rank_path(directory: str | os.PathLike, rank: int) -> Path:
    return Path(directory) / f"rank{rank:04d}{SUFFIX}"


class DetectionWriter:
    """Appends detections to a shard; buffered, flushed every ~65k detections and on `close`."""

    def __init__(self, path: str | os.PathLike, box_format: str = "xyxy", box_dtype: str = "float32",
                 masks: bool = False):
        self.path = Path(path)
        self.box_dtype = np.dtype(box_dtype)
        self.masks = masks
        self._file = open(self.path, "wb")  # noqa: SIM115 (closed by close() / the context manager)
        self._frame(_Header(FORMAT, box_format, self.box_dtype.name, masks))
        self._cols: list[tuple] = []
        self._pending = 0

    def _frame(self, obj: msgspec.Struct) -> None:
        data = msgspec.msgpack.encode(obj)
        self._file.write(_LEN.pack(len(data)))
        self._file.write(data)

    def add(self, images: np.ndarray, image_id: np.ndarray, category_id: np.ndarray, score: np.ndarray,
            seq: np.ndarray, box: np.ndarray | None, rles: list[dict] | None = None) -> None:
        """Detections of the processed `images` (ids); `rles` compressed RLE dicts when the shard has masks."""
        if self.masks != (rles is not None):
            raise ValueError(f"{self.path}: this shard was opened with masks={self.masks}")
        n = len(score)
        box = np.zeros((n, 4)) if box is None else box
        self._cols.append((np.asarray(images, np.int64).reshape(-1), np.asarray(image_id, np.int64),
                           np.asarray(category_id, np.int64), np.asarray(score, np.float64),
                           np.asarray(seq, np.int64), np.asarray(box, self.box_dtype).reshape(-1, 4), rles))
        self._pending += len(score)
        if self._pending >= FLUSH_DETS:
            self.flush()

    def flush(self) -> None:
        if not self._cols:
            return
        cols = list(zip(*self._cols))
        chunk = _Chunk(*(np.concatenate(c).tobytes() for c in cols[:6]))
        if self.masks:
            rles = [r for part in cols[6] for r in part]
            counts = [r["counts"].encode() if isinstance(r["counts"], str) else r["counts"] for r in rles]
            chunk.mask_hw = np.array([r["size"] for r in rles], np.int32).reshape(-1, 2).tobytes()
            chunk.rle_len = np.array([len(c) for c in counts], np.int64).tobytes()
            chunk.rle_counts = b"".join(counts)
        self._frame(chunk)
        self._cols, self._pending = [], 0

    def close(self) -> None:
        if not self._file.closed:
            self.flush()
            self._file.close()

    def __enter__(self) -> DetectionWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _frames(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while head := f.read(_LEN.size):
            (n,) = _LEN.unpack(head) if len(head) == _LEN.size else (None,)
            data = f.read(n) if n is not None else b""
            if n is None or len(data) != n:
                raise UserError(f"{path}: truncated detection shard (the run was interrupted while writing?)")
            yield data


def _read_one(path: Path, seq_offset: int) -> Iterator[Detections]:
    frames = _frames(path)
    try:
        header = msgspec.msgpack.decode(next(frames), type=_Header)
    except (StopIteration, msgspec.DecodeError, msgspec.ValidationError):
        raise UserError(f"{path}: not an ecmctl detection shard") from None
    if header.format != FORMAT:
        raise UserError(f"{path}: detection shard format {header.format!r}, this ecmctl reads {FORMAT!r}")
    for data in frames:
        try:
            c = msgspec.msgpack.decode(data, type=_Chunk)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise UserError(f"{path}: corrupt detection shard") from None
        rles = None
        if header.masks:
            hw = np.frombuffer(c.mask_hw, np.int32).reshape(-1, 2).tolist()
            ends = np.cumsum(np.frombuffer(c.rle_len, np.int64)).tolist()
            rles = [{"size": s, "counts": c.rle_counts[b:e]} for s, b, e in zip(hw, [0, *ends[:-1]], ends)]
        box = None if header.box_format == "none" else np.frombuffer(c.box, header.box_dtype).reshape(-1, 4)
        yield Detections(np.frombuffer(c.images, np.int64), np.frombuffer(c.image_id, np.int64),
                         np.frombuffer(c.category_id, np.int64), np.frombuffer(c.score, np.float64),
                         np.frombuffer(c.seq, np.int64) + seq_offset, box, header.box_format, rles)


def read_detections(paths: Sequence[str | os.PathLike]) -> Iterator[Detections]:
    """The chunks of `paths` in order; each shard's `seq` continues after the previous shard's largest."""
    offset = 0
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise UserError(f"{path}: no such detection shard")
        top = -1
        for det in _read_one(path, offset):
            if det.seq.size:
                top = max(top, int(det.seq.max()))
            yield det
        offset = max(offset, top + 1)


def shard_paths(directory: str | os.PathLike) -> list[Path]:
    """Every shard of a run directory, in rank order."""
    found = sorted(Path(directory).glob(f"*{SUFFIX}"))
    if not found:
        raise UserError(f"{directory}: no detection shards (*{SUFFIX}); evaluate with shard_dir set to write them")
    return found
