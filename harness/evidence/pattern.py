"""The seeded RAM pattern (evidence 3): fill guest RAM outside the guest's own ranges
through the backend file before a transfer, verify every page after it, and name each
changed page by its guest-physical address."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import (Any, Callable, Dict, List, Optional,
                    Sequence, Tuple, TypeVar)

import numpy as np

from harness.core.errors import UsageError
from harness.core.priority import background, in_background
from harness.evidence.layout import PAGE_SIZE, RamError, RamLayout, RamLayoutError, ram_layout
from harness.evidence.memory import GuestRam

# Pattern chunk: small enough that the expected-pattern scratch buffer stays in the
# CPU cache (measured: 4 MiB verifies ~3x faster than 64 MiB), large enough that
# Python's per-chunk overhead does not show.
DEFAULT_CHUNK = 4 << 20
DEFAULT_MAX_LISTED = 64

# Threads for fill/verify: numpy releases the GIL. Keep it at the 2 cores the
# harness is sized for; the sampler is not running while the pattern is handled.
DEFAULT_WORKERS = 2


# --------------------------------------------------------------------------- the pattern
#
# Page p of the backend file (offset p * 4096) holds 512 little-endian u64 words:
#     tag(p)   = splitmix64 output number p+1 for state `seed`
#              = mix64(seed + (p + 1) * GOLDEN)            (mod 2**64)
#     word(p, i) = tag(p) XOR (i * WORD_K)                 (mod 2**64), i in 0..511
# mix64 is a bijection and GOLDEN is odd, so tags differ between pages of one seed; WORD_K
# is odd, so words differ within a page. A page moved, swapped, zeroed or changed in one
# byte no longer matches, and its first two words say which page's pattern it now holds.

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
_WORD_K = 0xD1B54A32D192ED03
_WORDS_PER_PAGE = PAGE_SIZE // 8
_WORD_XOR = np.arange(_WORDS_PER_PAGE, dtype=np.uint64) * np.uint64(_WORD_K)


def _mix64(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_MIX1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_MIX2)
    return z ^ (z >> np.uint64(31))


def _unmix64(z: int) -> int:
    z = z ^ (z >> 31) ^ (z >> 62)
    z = (z * pow(_MIX2, -1, 1 << 64)) & _MASK
    z = z ^ (z >> 27) ^ (z >> 54)
    z = (z * pow(_MIX1, -1, 1 << 64)) & _MASK
    return z ^ (z >> 30) ^ (z >> 60)


def _page_tags(seed: int, first_page: int, count: int) -> np.ndarray:
    pages = np.arange(first_page + 1, first_page + 1 + count, dtype=np.uint64)
    return _mix64(pages * np.uint64(_GOLDEN) + np.uint64(seed))


def pattern_word(seed: int, page: int, index: int) -> int:
    """Word ``index`` of backend page ``page`` (scalar reference of the pattern)."""
    z = (seed + (page + 1) * _GOLDEN) & _MASK
    z = ((z ^ (z >> 30)) * _MIX1) & _MASK
    z = ((z ^ (z >> 27)) * _MIX2) & _MASK
    return (z ^ (z >> 31)) ^ ((index * _WORD_K) & _MASK)


def _pattern_page_of_tag(seed: int, tag: int) -> int:
    """The page whose tag is ``tag`` (may be out of range: then no page of ours)."""
    return ((((_unmix64(tag) - seed) & _MASK) * pow(_GOLDEN, -1, 1 << 64)) & _MASK) - 1


def _check_seed(seed: int) -> int:
    if not 0 <= seed <= _MASK:
        raise UsageError(f"pattern seed {seed!r} must be an integer in 0..2**64-1")
    return int(seed)


def _exclusions(ram: GuestRam, layout: RamLayout,
                exclude: Optional[Sequence[Tuple[int, int]]]) -> Tuple[Tuple[Tuple[int, int], ...],
                                                                      List[Tuple[int, int]]]:
    """(guest-physical ranges, merged backend offset ranges) left out of the pattern."""
    gpa_ranges = tuple(ram.work.exclude if exclude is None else
                       ((int(a), int(b)) for a, b in exclude))
    offs: List[Tuple[int, int]] = []
    for a, b in gpa_ranges:
        if b < a:
            raise UsageError(f"exclude range {a:#x}..{b:#x} ends before it starts")
        offs.extend(layout.offset_ranges(a, b))
    offs.sort()
    merged: List[Tuple[int, int]] = []
    for a, b in offs:
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return gpa_ranges, merged


def _kept(c0: int, c1: int, excluded: Sequence[Tuple[int, int]]) -> List[Tuple[int, int]]:
    """``[c0, c1)`` minus the (sorted, merged) excluded ranges."""
    out, pos = [], c0
    for a, b in excluded:
        if b <= pos:
            continue
        if a >= c1:
            break
        if a > pos:
            out.append((pos, a))
        pos = max(pos, b)
    if pos < c1:
        out.append((pos, c1))
    return out


@dataclass(frozen=True)
class FillReport:
    seed: int
    bytes_written: int
    elapsed: float
    excluded: Tuple[Tuple[int, int], ...]

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _check_chunk(chunk: int, workers: int) -> None:
    if chunk <= 0 or chunk % PAGE_SIZE:
        raise UsageError(f"chunk {chunk} must be a positive multiple of {PAGE_SIZE}")
    if workers < 1:
        raise UsageError(f"workers {workers} must be >= 1")


_T = TypeVar("_T")


def _in_lanes(size: int, chunk: int, workers: int,
              lane: Callable[[Sequence[int]], _T]) -> List[_T]:
    """Run ``lane`` over interleaved shares of the chunk starts, one thread each.

    numpy releases the GIL in its loops, and first-touch page faults of a fresh memfd
    run in parallel: measured 2 threads ~2-3x faster than 1 at filling new RAM.
    Each lane gets ascending chunk starts and owns its scratch buffers.
    """
    starts = range(0, size, chunk)
    if workers == 1 or len(starts) == 1:
        return [in_background(lane, starts)]

    def yielding(share: Sequence[int]) -> _T:
        background()  # another case's guest may be measured meanwhile
        return lane(share)

    with ThreadPoolExecutor(workers, thread_name_prefix="ram-pattern") as pool:
        return list(pool.map(yielding, [starts[i::workers] for i in range(workers)]))


def fill_pattern(ram: GuestRam, seed: int,
                 exclude: Optional[Sequence[Tuple[int, int]]] = None, *,
                 chunk: int = DEFAULT_CHUNK, workers: int = DEFAULT_WORKERS) -> FillReport:
    """Write the seeded pattern over all guest RAM except ``exclude``.

    ``exclude``: guest-physical ``(start, end)`` ranges, end exclusive; default: the
    work area. Excluded bytes are never written, not even transiently: the guest runs
    meanwhile. A guest whose code or stack lives in RAM must exclude those ranges too.
    """
    seed = _check_seed(seed)
    if not ram.writable:
        raise RamError(f"fill_pattern: guest RAM {ram.path} is mapped read-only")
    _check_chunk(chunk, workers)
    gpa_ranges, excluded = _exclusions(ram, ram.layout, exclude)

    def lane(starts: Sequence[int]) -> int:
        scratch = np.empty(chunk // 8, dtype=np.uint64)
        written = 0
        for c0 in starts:
            c1 = min(c0 + chunk, ram.size)
            kept = _kept(c0, c1, excluded)
            if not kept:
                continue
            npages = (c1 - c0) // PAGE_SIZE
            tags = _page_tags(seed, c0 // PAGE_SIZE, npages)[:, None]
            view = ram._words(c0, c1 - c0)
            try:
                if kept == [(c0, c1)]:
                    np.bitwise_xor(tags, _WORD_XOR, out=view.reshape(npages, -1))
                else:   # write around the exclusions, byte-exact
                    exp = scratch[:npages * _WORDS_PER_PAGE]
                    np.bitwise_xor(tags, _WORD_XOR, out=exp.reshape(npages, -1))
                    vb, eb = view.view(np.uint8), exp.view(np.uint8)
                    for a, b in kept:
                        vb[a - c0:b - c0] = eb[a - c0:b - c0]
                    del vb, eb
            finally:
                del view
            written += sum(b - a for a, b in kept)
        return written

    t0 = time.monotonic()
    written = sum(_in_lanes(ram.size, chunk, workers, lane))
    return FillReport(seed, written, time.monotonic() - t0, gpa_ranges)


@dataclass(frozen=True)
class PatternReport:
    """The result of :func:`verify_pattern`. Addresses are guest-physical."""
    seed: int
    machine: str
    ram_size: int
    pages_checked: int
    bytes_checked: int
    bad_page_count: int
    bad_pages: Tuple[int, ...]               # the first `max_listed` changed pages
    misplaced: Tuple[Tuple[int, int], ...]   # (page, page whose pattern it holds)
    zeroed: Tuple[int, ...]                  # listed pages now all zero
    elapsed: float
    excluded: Tuple[Tuple[int, int], ...]

    @property
    def ok(self) -> bool:
        return self.bad_page_count == 0

    def describe(self) -> str:
        if self.ok:
            return (f"pattern intact: {self.pages_checked} page(s), {self.bytes_checked} "
                    f"bytes checked in {self.elapsed:.2f}s")
        shown = ", ".join(f"{g:#x}" for g in self.bad_pages)
        more = self.bad_page_count - len(self.bad_pages)
        text = (f"{self.bad_page_count} page(s) changed out of {self.pages_checked}, "
                f"first at guest-physical {shown}" + (f" (+{more} more)" if more > 0 else ""))
        if self.misplaced:
            text += "; moved: " + ", ".join(f"{g:#x} holds the pattern of {s:#x}"
                                            for g, s in self.misplaced)
        if self.zeroed:
            text += "; zeroed: " + ", ".join(f"{g:#x}" for g in self.zeroed)
        return text

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        d["description"] = self.describe()
        return d


def _verify_lane(ram: GuestRam, seed: int, starts: Sequence[int], chunk: int,
                 excluded: Sequence[Tuple[int, int]], max_listed: int) -> Tuple[int, List[int]]:
    """(bad page count, the first ``max_listed`` bad backend pages) of these chunks."""
    exp_buf = np.empty(chunk // 8, dtype=np.uint64)
    ne_buf = np.empty(chunk // 8, dtype=bool)
    count, listed = 0, []
    for c0 in starts:
        c1 = min(c0 + chunk, ram.size)
        kept = _kept(c0, c1, excluded)
        if not kept:
            continue
        npages = (c1 - c0) // PAGE_SIZE
        exp = exp_buf[:npages * _WORDS_PER_PAGE].reshape(npages, -1)
        np.bitwise_xor(_page_tags(seed, c0 // PAGE_SIZE, npages)[:, None], _WORD_XOR, out=exp)
        view = ram._words(c0, c1 - c0)
        try:
            if kept == [(c0, c1)]:
                ne = ne_buf[:npages * _WORDS_PER_PAGE].reshape(npages, -1)
                np.not_equal(view.reshape(npages, -1), exp, out=ne)
                bad = np.flatnonzero(ne.any(axis=1)) if ne.any() else ()
            else:
                vb, eb = view.view(np.uint8), exp.reshape(-1).view(np.uint8)
                found = [np.flatnonzero(vb[a - c0:b - c0] != eb[a - c0:b - c0]) + (a - c0)
                         for a, b in kept]
                bad = np.unique(np.concatenate(found) // PAGE_SIZE)
                del vb, eb
        finally:
            del view
        count += len(bad)
        listed.extend(int(p) + c0 // PAGE_SIZE for p in bad[:max_listed - len(listed)])
    return count, listed


def verify_pattern(ram: GuestRam, seed: int,
                   exclude: Optional[Sequence[Tuple[int, int]]] = None,
                   machine: Optional[str] = None, ram_size: Optional[int] = None, *,
                   max_listed: int = DEFAULT_MAX_LISTED, chunk: int = DEFAULT_CHUNK,
                   workers: int = DEFAULT_WORKERS) -> PatternReport:
    """Check every byte of guest RAM outside ``exclude`` against the seeded pattern.

    ``machine``/``ram_size`` override the layout ``ram`` was opened with (they only
    change which guest-physical addresses are reported and excluded); ``ram_size``
    must then equal the backend's size. Never copies RAM: one chunk at a time.
    """
    seed = _check_seed(seed)
    _check_chunk(chunk, workers)
    layout = ram.layout
    if machine is not None or ram_size is not None:
        size = ram.size if ram_size is None else ram_size
        if size != ram.size:
            raise RamLayoutError(f"ram_size {size:#x} differs from the RAM file's size "
                                 f"{ram.size:#x} ({ram.path})")
        layout = ram_layout(machine if machine is not None else ram.layout.machine, size)
    gpa_ranges, excluded = _exclusions(ram, layout, exclude)

    def lane(starts: Sequence[int]) -> Tuple[int, List[int]]:
        return _verify_lane(ram, seed, starts, chunk, excluded, max_listed)

    t0 = time.monotonic()
    lanes = _in_lanes(ram.size, chunk, workers, lane)
    elapsed = time.monotonic() - t0
    bad_count = sum(count for count, _ in lanes)
    listed = sorted(p for _, pages in lanes for p in pages)[:max_listed]
    misplaced, zeroed = _classify(ram, seed, listed, excluded, layout)
    total_pages = ram.size // PAGE_SIZE
    fully_excluded = sum(max(0, b // PAGE_SIZE - -(-a // PAGE_SIZE)) for a, b in excluded)
    return PatternReport(
        seed=seed, machine=layout.machine, ram_size=ram.size,
        pages_checked=total_pages - fully_excluded,
        bytes_checked=ram.size - sum(b - a for a, b in excluded),
        bad_page_count=bad_count,
        bad_pages=tuple(layout.gpa_of_offset(p * PAGE_SIZE) for p in listed),
        misplaced=misplaced, zeroed=zeroed, elapsed=elapsed, excluded=gpa_ranges)


def _classify(ram: GuestRam, seed: int, pages: Sequence[int],
              excluded: Sequence[Tuple[int, int]],
              layout: RamLayout) -> Tuple[Tuple[Tuple[int, int], ...], Tuple[int, ...]]:
    """For listed bad pages (not touching exclusions): whose pattern they hold, or zeroed."""
    misplaced, zeroed = [], []
    npages = ram.size // PAGE_SIZE
    for p in pages:
        off = p * PAGE_SIZE
        if _kept(off, off + PAGE_SIZE, excluded) != [(off, off + PAGE_SIZE)]:
            continue
        words = ram._words(off, PAGE_SIZE)
        try:
            if not words.any():
                zeroed.append(layout.gpa_of_offset(off))
                continue
            tag, second = int(words[0]), int(words[1])
        finally:
            del words
        if second != tag ^ _WORD_K:
            continue  # not a whole page of some page's pattern: just changed
        src = _pattern_page_of_tag(seed, tag)
        if 0 <= src < npages and src != p:
            misplaced.append((layout.gpa_of_offset(off), layout.gpa_of_offset(src * PAGE_SIZE)))
    return tuple(misplaced), tuple(zeroed)


