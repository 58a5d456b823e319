"""A chain of live updates of one guest (the soak): A -> B -> C -> ..., each target
becoming the next source, on the same memory all the way. Each hop is an attempt of
the pair driver, like a conformance case's."""
from __future__ import annotations

import os
from typing import Any, Dict, Optional

import psutil

from harness.core.observe import NULL_OBSERVER, Observer
from harness.core.wait import case_deadline
from harness.run.config import RunConfig
from harness.run.driver import PairDriver, source_mode_readback
from harness.run.plan import VALID_KINDS
from harness.run.result import Attempt, ChainResult
from harness.run.setup import prepare
from harness.run.verdict import failed, window_checks
from harness.scenario.model import Observed, Scenario


def _rss_anon_kib(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def run_chain(sc: Scenario, cfg: RunConfig, artifacts_dir: str, hops: int,
              observer: Observer = NULL_OBSERVER) -> ChainResult:
    """Live-update one guest ``hops`` times in a row, each target becoming the next source.

    Records per hop what a leak or a copy would show: the RAM file's inode (must stay the
    same), the live QEMU's open fds and anonymous RSS, the guest's counter and boot count,
    QEMU's downtime; verifies the RAM pattern through the last QEMU at the end.
    """
    with observer.step("probe QEMU binaries"):
        setup = prepare(sc, cfg)
    b = setup.bins
    chain = ChainResult(hops_wanted=hops, scenario=sc, accel=b.accel,
                        qemu_src_version=b.src.version_str, qemu_dst_version=b.dst.version_str,
                        machine_type=b.src.resolve_machine(b.machine))
    with PairDriver.session(setup, artifacts_dir, observer) as d:
        d.ev.sample_pause = False
        try:
            with case_deadline(cfg.case_timeout + hops * (cfg.observe_s + 5.0),
                               f"the {hops}-hop chain"):
                d.start_src()
                _hops(d, chain)
        finally:
            chain.artifacts, chain.phases = d.r.artifacts, d.r.phases
    chain.deaths = d.r.deaths
    return chain


def _hop_problem(d: PairDriver, a: Attempt, last: Any, boots0: int) -> str:
    """Why hop ``a`` is not a good live update ("" when it is)."""
    if a.observed is not Observed.COMPLETED:
        return f"transfer {a.observed}: {a.message[-300:]}"
    if a.dst_status_after != "running" or a.src_status_after != "postmigrate":
        return f"states: dst {a.dst_status_after}, src {a.src_status_after}"
    if not a.counter_moved_on_dst or (a.counter_after or 0) <= last.counter:
        return f"guest counter did not move on: {last.counter} -> {a.counter_after}"
    if a.boots_after != boots0:
        return f"guest was reset: boot count {boots0} -> {a.boots_after}"
    bad = failed(window_checks(a.window, boots0))
    if bad:
        return "; ".join(f"{c.check}: expected {c.expected}, got {c.actual}" for c in bad)
    return ""


def _hops(d: PairDriver, c: ChainResult) -> None:
    inode0 = d.ev.ram_inode(d.source.pid) if d.ev.applicable else None
    c.ram_inode = inode0
    last = d.work_area(d.source)
    boots0 = last.boots
    for i in range(1, c.hops_wanted + 1):
        source_mode_readback(d.source.qmp, "cpr-transfer")
        d.r.counter_before = last.counter
        a = Attempt(f"hop{i:03d}")
        with d.phase("transfer", f"hop {i}: transfer to a new QEMU"):
            d.attempt(a, VALID_KINDS)
        hop: Dict[str, Any] = {"hop": i, "observed": a.observed.value if a.observed else None,
                               "downtime_ms": a.query_migrate.get("downtime"),
                               "counter_after": a.counter_after, "boots": a.boots_after,
                               "counter_moved": a.counter_moved_on_dst,
                               "window": a.window}
        problem = _hop_problem(d, a, last, boots0)
        if not problem and inode0 is not None:
            hop["ram_inode"] = inode = d.ev.ram_inode(d.target.pid)
            if inode != inode0:
                problem = f"RAM file changed: inode {inode0} -> {inode}"
        # The old source is done: quit it, the target becomes the source. A mixed pair
        # (the series and a released QEMU) speaks the target's dialect from now on:
        # both sides are the target's binary.
        old, d.src, d.dst = d.src, d.dst, None
        d.dialect = d.dialect.for_side("dst")
        d.old_dsts.append(old)
        d.shutdown_quietly(old)
        if not problem:
            hop["open_fds"] = len(os.listdir(f"/proc/{d.source.pid}/fd"))
            hop["rss_anon_kib"] = _rss_anon_kib(d.source.pid)
            hop["threads"] = psutil.Process(d.source.pid).num_threads()
            last = d.work_area(d.source)
        c.hops.append(hop)
        if problem:
            c.failed_hop, c.failure = i, problem
            return
    if d.ev.pattern:
        c.pattern = d.ev.verify_pattern_at(d.source.pid)
