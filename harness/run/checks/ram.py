"""The in-place RAM evidence of a completed attempt (docs/ram-evidence.md): the target
maps the source's RAM file, no RAM page went through the stream, every page of the
seeded pattern is unchanged."""
from __future__ import annotations

from typing import Iterable, List

from harness.core.errors import Check
from harness.run.checks.base import Family, define
from harness.run.records import AttemptRecord
from harness.run.result import PairResult

SAME_MEMORY = define("ram.same-memory", "same memory mapped by the target", "ram-place")
STREAM = define("ram.stream", "no RAM pages in the main stream", "ram-place")
PATTERN = define("ram.pattern", "RAM pattern intact", "ram-content")
#: cpr-exec's state file may be this big and still hold no RAM (device state: ~80 KB).
STATE_FILE_MAX = 4 << 20


class Ram(Family):
    name = "ram"

    def judge(self, r: PairResult, a: AttemptRecord) -> Iterable[Check]:
        ev, at = a.evidence, a.label
        if not ev.applicable:
            return []
        out: List[Check] = []
        same = ev.same_memory
        out.append(SAME_MEMORY(bool(same and same.same), "the source's RAM file (same inode)",
                               "not compared" if same is None else
                               f"src inode {same.src_inode}, dst inode {same.dst_inode}"
                               + ("" if same.same else " (different)"), attempt=at))
        s = ev.stream
        if s is not None and s.from_state_file:
            # cpr-exec: the source's counters went with it; its state file is the stream.
            limit = max(STATE_FILE_MAX, (s.ram_bytes or 0) // 256)
            out.append(STREAM((s.state_file_bytes or 0) < limit,
                              f"a state file far smaller than the RAM (< {limit} bytes)",
                              f"{s.state_file_bytes} bytes", "guest RAM went into the state file",
                              at))
        else:
            out.append(STREAM(s is not None and s.normal == 0 and s.normal_bytes == 0,
                              "ram.normal == 0",
                              "no query-migrate figures" if s is None else
                              f"ram.normal {s.normal}, ram.normal-bytes {s.normal_bytes}",
                              attempt=at))
        if ev.pattern_applicable:
            p = ev.pattern
            out.append(PATTERN(p is not None and p.ok, "every page unchanged",
                               p.describe() if p is not None else "not verified", attempt=at))
        return out
