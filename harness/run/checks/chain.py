"""The checks of a soak chain (:class:`harness.run.result.ChainResult`): every hop a
good live update (judged like a case's completed attempt: its states, its window on
both QEMUs), the same RAM file all the way, the pattern intact at the end, the counter
increasing hop by hop, no growth of the live QEMU's fds or memory."""
from __future__ import annotations

from typing import List, Optional

from harness.core.errors import Check
from harness.qemu.states import RunState
from harness.run.checks.base import define, text
from harness.run.checks.deaths import judge_deaths
from harness.run.checks.window import judge_window
from harness.run.records import AttemptRecord
from harness.run.result import ChainResult
from harness.scenario.model import Observed

HOPS_GOOD = define("chain.hops-good", "every hop a good live update", "run-state")
HOPS_DONE = define("chain.hops-done", "hops done", "run-state")
PATTERN = define("chain.pattern", "RAM pattern intact at the end", "ram-content")
SAME_FILE = define("chain.same-file", "the same RAM file all the way", "ram-place")
COUNTER = define("chain.counter", "guest counter increasing hop by hop", "guest-stalled")
FDS = define("chain.fds", "no open fd growth", "death")
RSS = define("chain.rss", "no anonymous RSS growth", "death")
#: Anonymous RSS the live QEMU may gain over a whole chain before it counts as a leak.
RSS_SLACK_KIB = 2048


def hop_problem(a: AttemptRecord, last_counter: Optional[int],
                boots0: Optional[int]) -> str:
    """Why hop ``a`` is not a good live update ("" when it is)."""
    if a.observed is not Observed.COMPLETED:
        return f"transfer {a.observed or 'not settled'}: {a.message[-300:]}"
    if a.dst_state != RunState.RUNNING or a.src_state != RunState.POSTMIGRATE:
        return f"states: dst {a.dst_state or 'not read'}, src {a.src_state or 'not read'}"
    if not a.counter_moved or (a.counter_after or 0) <= (last_counter or 0):
        return (f"guest counter did not move on: {text(last_counter, 'not read')} -> "
                f"{text(a.counter_after, 'not read')}")
    if a.boots_after != boots0:
        return f"guest was reset: boot count {boots0} -> {a.boots_after}"
    bad = [c for c in judge_window(a.window, boots0) if not c.ok]
    return "; ".join(f"{c.name}: expected {c.expected}, got {c.observed}" for c in bad)


def judge_chain(c: ChainResult) -> List[Check]:
    out = [HOPS_GOOD(c.failed_hop is None, "none failed",
                     "none failed" if c.failed_hop is None else f"hop {c.failed_hop}: {c.failure}"),
           HOPS_DONE(len(c.hops) == c.hops_wanted, str(c.hops_wanted), str(len(c.hops))),
           judge_deaths(c.deaths)]
    if c.failed_hop is not None or not c.hops:
        return out
    pat = c.pattern
    out.append(PATTERN(pat is not None and pat.ok, "every page unchanged",
                       pat.describe() if pat is not None else "not verified"))
    inodes = sorted({h.ram_inode for h in c.hops if h.ram_inode is not None})
    out.append(SAME_FILE(inodes == [c.ram_inode], str(c.ram_inode),
                         ", ".join(map(str, inodes)) or "not read",
                         "the RAM file changed along the chain"))
    counters = [h.attempt.counter_after or 0 for h in c.hops]
    out.append(COUNTER(counters == sorted(counters) and len(set(counters)) == len(counters),
                       "strictly increasing", ", ".join(map(str, counters))))
    fds = [h.open_fds or 0 for h in c.hops]
    out.append(FDS(fds[-1] <= fds[0], f"<= {fds[0]}", str(fds[-1]),
                   "open fds of the live QEMU hop by hop: " + ", ".join(map(str, fds))))
    rss = [h.rss_anon_kib or 0 for h in c.hops]
    # Hop 1 is a warm-up (under TCG its QEMU is ~4 MiB smaller: the translation cache
    # fills on its first run); from hop 2 on, a leak shows as growth.
    base = rss[1] if len(rss) > 2 else rss[0]
    slack = max(RSS_SLACK_KIB, base // 20)
    out.append(RSS(rss[-1] - base < slack, f"< {base + slack} KiB", f"{rss[-1]} KiB",
                   "anonymous RSS of the live QEMU hop by hop (KiB): "
                   + ", ".join(map(str, rss))))
    return out
