"""A streaming structural JSON scanner for LVIS/COCO-style files: the integer keys of the element objects
of chosen top-level arrays, in bounded memory (fixed-size chunks), without parsing anything else.

* numpy finds every `"` (minus backslash-escaped ones) and every bracket/brace; brackets between an
  opening and a closing quote are inside strings and ignored; a cumulative sum gives the nesting depth.
* The strings at depth 1 that are followed by `:` are the top-level keys; they split the file into
  sections. `raw` sections (small) are collected and parsed with `json`. In `targets` sections only the
  keys at depth 3 (directly inside each element object) with the wanted names are read, with their
  integer values parsed vectorised; any other field is skipped without being parsed.
* A chunk is processed up to its last bracket outside strings; the rest is carried into the next one,
  so strings, keys and values never straddle a chunk boundary.

Structure is checked as it goes (balanced and matching brackets, terminated strings, one top-level
object and nothing after it), so a truncated or non-JSON file is an error, never partial counts. The
number tokens inside polygons are not validated.
"""

from __future__ import annotations

import json
import queue
import re
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from ecmctl.core.errors import UserError

# LVIS/COCO annotation files: the integer keys counted, and the small sections parsed whole.
ANNOTATION_TARGETS = {"annotations": ("category_id", "image_id", "id"), "images": ("id",)}
ANNOTATION_RAW = ("categories",)

_WS_RE = re.compile(rb"[ \t\r\n]*")
_COLON_RE = re.compile(rb"[ \t\r\n]*:[ \t\r\n]*")
_NUMBER_RE = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_TOKEN_RE = re.compile(rb"[^,}\]]{0,40}")
_AR = np.arange(64, dtype=np.int64)
_POW10 = 10 ** np.arange(19, dtype=np.int64)


class _Section:
    """Per-element integer keys of one top-level array (`annotations` or `images`)."""

    def __init__(self, name: str, keys: tuple[str, ...]):
        self.name = name
        self.keys = keys
        self.num_objects = 0
        self.objs: dict[str, list[np.ndarray]] = {k: [] for k in keys}
        self.vals: dict[str, list[np.ndarray]] = {k: [] for k in keys}
        self.bad: dict[str, list[tuple[int, str]]] = {k: [] for k in keys}  # (element, value text)
        self.record_spans = False
        self.starts: list[np.ndarray] = []  # file offsets of each element's '{' (with record_spans)
        self.ends: list[np.ndarray] = []  # file offsets just past each element's '}'

    def spans(self) -> tuple[np.ndarray, np.ndarray]:
        """(start, end) file offsets of every element object: the bytes a decoder reads one batch at a time."""
        cat = lambda parts: np.concatenate(parts) if parts else np.zeros(0, np.int64)  # noqa: E731
        return cat(self.starts), cat(self.ends)

    def column(self, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(value per element, whether present as an integer, number of occurrences per element)."""
        objs = np.concatenate(self.objs[key]) if self.objs[key] else np.zeros(0, np.int64)
        vals = np.concatenate(self.vals[key]) if self.vals[key] else np.zeros(0, np.int64)
        n = self.num_objects
        occ = np.bincount(objs, minlength=n)[:n]
        if self.bad[key]:
            occ = occ + np.bincount([o for o, _ in self.bad[key]], minlength=n)[:n]
        out = np.zeros(n, np.int64)
        present = np.zeros(n, bool)
        out[objs] = vals
        present[objs] = True
        return out, present, occ


class Scanner:
    """Streaming structural scanner; feed() it buffers, then finish()."""

    def __init__(self, path: str, targets: dict[str, tuple[str, ...]] = ANNOTATION_TARGETS,
                 raw: tuple[str, ...] = ANNOTATION_RAW, spans: tuple[str, ...] = ()):
        self.path = path
        self.targets, self.raw_sections = targets, raw
        self.offset = 0  # file offset of the buffer being fed
        self.depth = 0
        self.stack = np.zeros(64, np.int8)  # type of the open bracket at each level: 0 '[', 1 '{'
        self.started = False
        self.root_opened = False
        self.closed = False
        self.section: str | None = None  # top-level key whose value is being scanned
        self.top: dict[str, str | None] = {}  # top-level key -> "array" / "object" / "scalar"
        self.sections = {n: _Section(n, k) for n, k in targets.items()}
        for name in spans:  # the packed dataset decodes these sections' elements by their byte ranges
            self.sections[name].record_spans = True
        self.raw: dict[str, list[bytes]] = {n: [] for n in raw}
        self.collecting = False  # inside the value of a raw section that continues into the next buffer
        self._u8 = np.empty(0, np.uint8)
        self._mask = np.empty((2, 0), bool)

    # -- errors ---------------------------------------------------------------------------------
    def _invalid(self, what: str) -> UserError:
        return UserError(f"{self.path}: not valid JSON: {what}")

    def _where(self) -> str:
        return f"the {self.section!r} section" if self.section and self.depth > 1 else "the top-level object"

    # -- scanning -------------------------------------------------------------------------------
    def run(self, chunks: Iterable[tuple[bytes | _Slot, bool]]) -> None:
        """Feed (chunk, is_last) pairs; carries the unprocessed tail of each buffer into the next.

        A chunk is bytes, or a pooled _Slot with free room in front of its data: the (small) tail is
        copied there and the slot is scanned in place, without copying the chunk.
        """
        tail = b""
        pending: list[bytes] = []
        pending_len = 0
        want = 0
        for data, final in chunks:
            slot = None
            if isinstance(data, _Slot):
                if not pending and len(tail) <= data.head and (final or len(tail) + data.n >= want):
                    slot = data
                else:
                    raw = bytes(data.view())
                    data.release()
                    data = raw
            if slot is None:
                if data:
                    pending.append(data)
                    pending_len += len(data)
                if not final and len(tail) + pending_len < want:
                    continue
                buf = tail + b"".join(pending) if tail or len(pending) != 1 else pending[0]
                pending, pending_len = [], 0
                has_bs = buf.find(b"\\") >= 0
            else:
                lo, hi = slot.head - len(tail), slot.head + slot.n
                slot.ba[lo: slot.head] = tail
                buf = memoryview(slot.ba)[lo:hi]
                has_bs = slot.ba.find(b"\\", lo, hi) >= 0
            try:
                used = self.feed(buf, final, has_bs)
                self.offset += used
                tail = bytes(buf[used:])
            finally:
                if slot is not None:
                    del buf
                    slot.release()
            # nothing processable yet (no bracket): wait for twice as much, so huge gaps stay linear
            want = 2 * len(tail) if used == 0 else 0
            if final:
                return
        if pending or tail:  # an iterable that never said final
            self.offset += self.feed(tail + b"".join(pending), True)

    def _buffers(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._u8.size < n:
            self._u8 = np.empty(n, np.uint8)
            self._mask = np.empty((2, n), bool)
        return self._u8[:n], self._mask[0, :n], self._mask[1, :n]

    def feed(self, buf: bytes | memoryview, final: bool, has_backslash: bool | None = None) -> int:
        """Process buf up to its last bracket outside strings (all of it if final); return bytes used."""
        n = len(buf)
        if self.closed:
            k = _WS_RE.match(buf).end()
            if k < n:
                raise self._invalid(f"extra data after the top-level object at byte {self.offset + k}")
            return n
        if not self.started:
            k = _WS_RE.match(buf).end()
            if k == n:
                if final:
                    raise UserError(f"{self.path}: the file is empty; expected an LVIS/COCO annotation "
                                    "JSON object")
                return n
            if buf[k] != 123:
                if buf[k] == 91:
                    raise UserError(f"{self.path}: the top-level JSON value is a list; expected an LVIS/COCO "
                                    "annotation object with 'images', 'annotations' and 'categories'")
                shown = bytes(buf[k: k + 12]).decode("utf-8", "replace")
                raise self._invalid(f"expected '{{' at the start, found {shown!r}")
            self.started = True

        # events: every '"' and every [ ] { } (plus the candidates Y _ y, dropped below), in file order
        a = np.frombuffer(buf, np.uint8)
        u8, mask, mask2 = self._buffers(n)
        np.bitwise_or(a, 0x26, out=u8)
        np.equal(u8, 0x7F, out=mask)
        np.equal(a, 34, out=mask2)
        np.logical_or(mask, mask2, out=mask)
        ev = np.flatnonzero(mask)
        v = a[ev]
        low = v & 6
        keep = (low == 2) | (low == 4)  # '"' [ { have 2, ] } have 4; Y y have 0, _ has 6
        if not keep.all():
            ev, v = ev[keep], v[keep]
        isq = v == 34
        bs = None
        if has_backslash is None:
            has_backslash = bytes(buf).find(b"\\") >= 0
        if has_backslash:  # drop quotes escaped by an odd run of backslashes
            bs = np.flatnonzero(a == 92)
            gaps = np.flatnonzero(np.diff(bs) != 1)
            run_start = np.concatenate(([bs[0]], bs[gaps + 1]))
            run_end = np.concatenate((bs[gaps], [bs[-1]]))
            escaped = run_end[((run_end - run_start) & 1) == 0] + 1
            drop = isq & np.isin(ev, escaped)
            if drop.any():
                ev, v, isq = ev[~drop], v[~drop], isq[~drop]
        # a bracket after an odd number of quotes is inside a string; a quote after an even number opens one
        qc = np.cumsum(isq)
        structural = ((qc & 1) == 0) & ~isq
        bi = np.flatnonzero(structural)  # structural brackets (event indices)
        if final:
            end = n
            if qc.size and qc[-1] & 1:
                start = int(ev[np.flatnonzero(isq)[-1]])
                raise self._invalid(f"the file ends inside a string that starts at byte "
                                    f"{self.offset + start} (truncated?)")
        elif bi.size:
            last = int(bi[-1]) + 1
            end = int(ev[last - 1]) + 1
            ev, v, isq, structural = ev[:last], v[:last], isq[:last], structural[:last]
        else:
            return 0

        d = 1 - ((v >> 1) & 2).astype(np.int8)  # +1 for [ {, -1 for ] }, 0 for quotes and string contents
        d *= structural
        after = np.cumsum(d, dtype=np.int64)
        after += self.depth
        br, bv, bd, b_after = ev[bi], v[bi], d[bi].astype(np.int64), after[bi]
        b_before = b_after - bd
        self._check_structure(buf, br, bv, bd, b_before, b_after, end, final)

        qi = np.flatnonzero(isq)
        o_ev = qi[0::2]
        opens, closes = ev[o_ev], ev[qi[1::2]]
        dq = after[o_ev]

        # top-level keys split the buffer into sections
        bounds: list[tuple[int, str | None, int]] = [(0, self.section, -1)]
        for i in np.flatnonzero(dq == 1).tolist():
            o, c = int(opens[i]), int(closes[i])
            m = _COLON_RE.match(buf, c + 1)
            if m is None:
                continue  # a string value at the top level, not a key
            try:
                name = json.loads(bytes(buf[o: c + 1]))
            except (ValueError, UnicodeDecodeError):
                raise self._invalid(f"bad top-level key at byte {self.offset + o}") from None
            k = m.end()
            kind = {91: "array", 123: "object"}.get(buf[k], "scalar") if k < n else None
            if name in self.top and (name in self.targets or name in self.raw_sections):
                raise UserError(f"{self.path}: top-level key {name!r} appears twice")
            self.top[name] = kind
            bounds.append((o, name, k))

        for j, (lo, name, value_start) in enumerate(bounds):
            hi = bounds[j + 1][0] if j + 1 < len(bounds) else end
            if name is None or self.top.get(name) != "array" or hi <= lo:
                continue
            if name in self.targets:
                b0, b1 = np.searchsorted(br, [lo, hi])
                k0, k1 = np.searchsorted(opens, [lo, hi])
                self._scan_section(self.sections[name], a, buf, br[b0:b1], bv[b0:b1], bd[b0:b1],
                                   b_before[b0:b1], opens[k0:k1], closes[k0:k1], dq[k0:k1], bs)
            elif name in self.raw_sections and (value_start >= 0 or self.collecting):
                start = value_start if value_start >= 0 else lo
                i0, i1 = np.searchsorted(br, [start, hi])
                done = np.flatnonzero((b_after[i0:i1] == 1) & (bd[i0:i1] < 0))
                stop = int(br[i0 + done[0]]) + 1 if done.size else hi
                self.raw[name].append(bytes(buf[start:stop]))
                self.collecting = not done.size

        self.section = bounds[-1][1]
        if after.size:
            self.depth = int(after[-1])
        return end

    def _check_structure(self, buf, br, v, d, before, after, end, final) -> None:
        """Balanced, matching brackets; exactly one top-level object; nothing after it."""
        if not br.size:
            return
        if after.min() < 0:
            i = int(np.argmax(after < 0))
            raise self._invalid(f"unbalanced {chr(v[i])!r} at byte {self.offset + int(br[i])}")
        zero = np.flatnonzero(before == 0)
        allowed = 0 if self.root_opened else 1
        if zero.size > allowed:
            i = int(zero[allowed])
            raise self._invalid(f"extra data after the top-level object at byte {self.offset + int(br[i])}")
        if zero.size:
            self.root_opened = True
        # bracket types: sorted stably by level, each opener is followed by its closer
        level = np.where(d > 0, before, after)
        top = int(level.max())
        if top >= self.stack.size:
            self.stack = np.concatenate((self.stack, np.zeros(top + 1, np.int8)))
        order = np.argsort(level.astype(np.int16) if top < 32000 else level, kind="stable")
        lv, ty, op = level[order], ((v[order] >> 5) & 1).astype(np.int8), d[order] > 0
        same = lv[1:] == lv[:-1]
        pair = same & op[:-1] & ~op[1:]
        bad = pair & (ty[:-1] != ty[1:])
        first = np.ones(lv.size, bool)
        first[1:] = ~same
        carried = np.flatnonzero(first & ~op)
        bad_carried = carried[self.stack[lv[carried]] != ty[carried]] if carried.size else carried
        if bad.any() or bad_carried.size:
            pos = [int(br[order[np.argmax(bad) + 1]])] if bad.any() else []
            pos += [int(br[order[bad_carried[0]]])] if bad_carried.size else []
            p = min(pos)
            raise self._invalid(f"mismatched {chr(buf[p])!r} at byte {self.offset + p}")
        last = np.ones(lv.size, bool)
        last[:-1] = ~same
        still_open = np.flatnonzero(last & op)
        self.stack[lv[still_open]] = ty[still_open]
        closed = np.flatnonzero(after == 0)
        if closed.size:
            self.closed = True
            p = int(br[closed[0]])
            k = _WS_RE.match(buf, p + 1).end()
            if final and k < end:
                raise self._invalid(f"extra data after the top-level object at byte {self.offset + k}")

    def _scan_section(self, sec: _Section, a, buf, br, bv, bd, before, opens, closes, dq, bs) -> None:
        """Integer keys at depth 3 (directly inside each element object) of one section's slice."""
        is_start = (before == 2) & (bd > 0)
        starts = br[is_start]
        if starts.size and (bv[is_start] == 91).any():
            k = int(np.argmax(bv[is_start] == 91))
            raise UserError(f"{self.path}: entry #{sec.num_objects + k} of {sec.name!r} is a list, "
                            "expected an object")
        if sec.record_spans:
            sec.starts.append(starts.astype(np.int64) + self.offset)
            sec.ends.append(br[(before == 3) & (bd < 0)].astype(np.int64) + (self.offset + 1))
        sel = np.flatnonzero(dq == 3)
        ko, kc = opens[sel], closes[sel]
        words = _words(buf)
        length = kc - ko - 1
        has_bs = None
        if bs is not None and ko.size:  # keys written with escapes, e.g. "\u0069d"
            has_bs = np.flatnonzero(np.searchsorted(bs, kc) > np.searchsorted(bs, ko)).tolist()
        for key in sec.keys:
            m = np.flatnonzero(length == len(key))
            cand_o, cand_c = ko[m], kc[m]
            if cand_o.size:
                hit = _match_key(words, a, cand_o, key.encode())
                cand_o, cand_c = cand_o[hit], cand_c[hit]
            if has_bs:
                extra = [i for i in has_bs if _decode(bytes(buf[int(ko[i]): int(kc[i]) + 1])) == key]
                if extra:
                    cand_o = np.sort(np.concatenate((cand_o, ko[extra])))
                    cand_c = np.sort(np.concatenate((cand_c, kc[extra])))
            if not cand_o.size:
                continue
            obj = sec.num_objects - 1 + np.searchsorted(starts, cand_o)
            fast, val = _parse_values(words, a, cand_c)
            sec.objs[key].append(obj[fast])
            sec.vals[key].append(val[fast])
            for i in np.flatnonzero(~fast).tolist():
                self._slow_value(sec, key, int(obj[i]), buf, int(cand_c[i]))
        sec.num_objects += int(starts.size)

    def _slow_value(self, sec: _Section, key: str, obj: int, buf: bytes, c: int) -> None:
        m = _COLON_RE.match(buf, c + 1)
        if m is None:
            return  # a string value that happens to read like the key, not a key
        num = _NUMBER_RE.match(buf, m.end())
        value = None
        if num:
            x = json.loads(num.group())
            if isinstance(x, int) or (isinstance(x, float) and x.is_integer()):
                value = int(x)
            if value is not None and not -(2**63) <= value < 2**63:
                value = None  # beyond int64: reported as a bad value
        if value is None:
            text = _TOKEN_RE.match(buf, m.end()).group().decode("utf-8", "replace").strip()
            sec.bad[key].append((obj, text))
        else:
            sec.objs[key].append(np.array([obj], np.int64))
            sec.vals[key].append(np.array([value], np.int64))

    def finish(self) -> None:
        if not self.started:
            raise UserError(f"{self.path}: the file is empty; expected an LVIS/COCO annotation JSON object")
        if not self.closed:
            raise self._invalid(f"the file ends inside {self._where()} at byte {self.offset} (truncated?)")


def _decode(token: bytes):
    try:
        return json.loads(token)
    except (ValueError, UnicodeDecodeError):
        return None


def _words(buf) -> np.ndarray | None:
    """Overlapping little-endian 8-byte words: _words(buf)[i] holds buf[i:i+8] (a view, no copy)."""
    return np.ndarray((len(buf) - 7,), "<u8", buffer=buf, strides=(1,)) if len(buf) >= 8 else None


_U = np.uint64


def _digits(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(number of leading ASCII digits, value of those digits) of 8-byte little-endian words (SWAR)."""
    x = w ^ _U(0x3030303030303030)  # digit bytes -> 0..9, any other byte -> >= 10
    nondigit = ((x + _U(0x7676767676767676)) | x) & _U(0x8080808080808080)  # carries only go past the 1st
    lowest = nondigit & (~nondigit + _U(1))
    nd = np.where(nondigit == 0, 8, np.frexp(lowest.astype(np.float64))[1] // 8 - 1)
    y = x << (_U(8) * (_U(8) - nd.astype(np.uint64)))  # digits to the top bytes, zeros ('0') below
    y = y * _U(10) + (y >> _U(8))  # parse eight digits (Lemire)
    y = (((y & _U(0x000000FF000000FF)) * _U(0x000F424000000064))
         + (((y >> _U(16)) & _U(0x000000FF000000FF)) * _U(0x0000271000000001))) >> _U(32)
    return nd, y.astype(np.int64)


def _parse_values(words: np.ndarray | None, a: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised integer values of the keys whose closing quotes are at c.

    Handles the layouts json.dump writes (`"k": 12`, `"k":12`, any indent) for up to 16 digits; returns
    (fast, value): the rows that are not fast (other spacing, floats, strings, buffer end) take the
    slow path.
    """
    n = a.size
    if words is None or n < 24:
        return np.zeros(c.size, bool), np.zeros(c.size, np.int64)
    cc = np.minimum(c, n - 3)
    s = c + 2 + (a[cc + 2] == 32)
    neg = a[np.minimum(s, n - 1)] == 45
    s = s + neg
    ok = (a[cc + 1] == 58) & (c + 3 < n) & (s + 17 < n)
    s = np.where(ok, s, 0)
    nd, val = _digits(words[s])
    long = np.flatnonzero(ok & (nd == 8))
    if long.size:  # 9 to 16 digits: a second word
        nd2, val2 = _digits(words[s[long] + 8])
        nd[long] += nd2
        val[long] = val[long] * _POW10[nd2] + val2
    term = a[np.minimum(s + nd, n - 1)]
    ok &= (nd > 0) & (nd <= 16) & ((term == 44) | (term == 125) | (term == 93) | (term == 32) | (term == 10)
                                   | (term == 13) | (term == 9))
    return ok, np.where(neg, -val, val)


def _match_key(words: np.ndarray | None, a: np.ndarray, o: np.ndarray, key: bytes) -> np.ndarray:
    """Which strings opening at o (whose content length is len(key)) spell key exactly."""
    size = len(key)
    if words is None or size > 16 or (o.size and int(o[-1]) + 1 + max(size, 8) > a.size):
        return (a[o[:, None] + _AR[1: size + 1]] == np.frombuffer(key, np.uint8)).all(axis=1)
    head = key[:8].ljust(8, b"\0")
    mask = _U((1 << (8 * min(size, 8))) - 1)
    hit = (words[o + 1] & mask) == np.frombuffer(head, "<u8")[0]
    if size > 8:
        hit &= words[o + 1 + size - 8] == np.frombuffer(key[-8:], "<u8")[0]
    return hit


class _Slot:
    """A pooled read buffer: `head` free bytes (room for a carried tail), then `n` bytes of the file."""

    __slots__ = ("ba", "head", "n", "pool")

    def __init__(self, head: int, size: int, pool: queue.Queue):
        self.ba = bytearray(head + size)
        self.head, self.n, self.pool = head, 0, pool

    def view(self) -> memoryview:
        return memoryview(self.ba)[self.head: self.head + self.n]

    def release(self) -> None:
        self.pool.put(self)


def read_chunks(path: Path, chunk_size: int, hasher, on_chunk=None) -> Iterator[tuple[bytes | _Slot, bool]]:
    """(chunk, is_last) pairs, the file hashed on the way.

    Large files are read and hashed ahead by a thread (both release the GIL) into a small pool of
    reusable buffers, so the scan overlaps I/O and sha256 and no chunk is copied again.
    """
    size = path.stat().st_size
    if size <= 4 * chunk_size or chunk_size < (64 << 10):
        with open(path, "rb") as f:
            cur = f.read(chunk_size)
            hasher.update(cur)
            while True:
                nxt = f.read(chunk_size) if cur else b""
                hasher.update(nxt)
                if on_chunk:
                    on_chunk(len(cur))
                yield cur, not nxt
                if not nxt:
                    return
                cur = nxt

    head = min(max(chunk_size // 4, 4096), 1 << 20)
    free: queue.Queue = queue.Queue()
    full: queue.Queue = queue.Queue()
    for _ in range(4):  # the consumer holds two (current and look-ahead), the reader fills the others
        free.put(_Slot(head, chunk_size, free))
    stop = threading.Event()

    def reader() -> None:
        try:
            with open(path, "rb", buffering=0) as f:
                while True:
                    slot = None
                    while slot is None:
                        if stop.is_set():
                            return
                        try:
                            slot = free.get(timeout=0.1)
                        except queue.Empty:
                            continue
                    view = memoryview(slot.ba)[head:]
                    n = 0
                    while n < chunk_size and (k := f.readinto(view[n:])):
                        n += k
                    del view
                    slot.n = n
                    if n:
                        hasher.update(slot.view())
                    full.put(slot)
                    if not n:
                        return
        except BaseException as e:  # re-raised in the consumer
            full.put(e)

    thread = threading.Thread(target=reader, name="ecmctl-count-reader", daemon=True)
    thread.start()
    try:
        cur = full.get()
        while True:
            if isinstance(cur, BaseException):
                raise cur
            nxt = full.get() if cur.n else cur
            if isinstance(nxt, BaseException):
                raise nxt
            if on_chunk:
                on_chunk(cur.n)
            last = not nxt.n
            if last and nxt is not cur:
                nxt.release()
            yield cur, last
            if last:
                return
            cur = nxt
    finally:
        stop.set()
        thread.join()
