"""A chain of live updates of one guest (the soak): A -> B -> C -> ..., each target
becoming the next source, on the same memory all the way. Each hop is an attempt of
the pair driver, like a conformance case's, watched the same way (both QEMUs through
its window)."""
from __future__ import annotations

import os
from typing import Optional

import psutil

from harness.core.observe import NULL_OBSERVER, Observer
from harness.core.wait import case_deadline
from harness.run.attempt import Attempt
from harness.run.checks.chain import hop_problem
from harness.run.config import RunConfig
from harness.run.driver import PairDriver
from harness.run.outcomes import source_mode_readback
from harness.run.plan import VALID_KINDS
from harness.run.records import Role
from harness.run.result import ChainResult, HopRecord
from harness.run.setup import prepare
from harness.scenario.model import Scenario


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


def _hops(d: PairDriver, c: ChainResult) -> None:
    inode0 = d.ev.ram_inode(d.source.pid) if d.ev.applicable else None
    c.ram_inode = inode0
    last = d.work_area(d.source)
    c.boots_before = boots0 = last.boots
    for i in range(1, c.hops_wanted + 1):
        source_mode_readback(d.source.qmp, "cpr-transfer")
        d.r.counter_before = last.counter
        a = Attempt(Role.HOP, f"hop{i:03d}", counter_reference=last.counter)
        with d.phase("transfer", f"hop {i}: transfer to a new QEMU"):
            d.attempt(a, VALID_KINDS)
        rec = a.record(d.ev.setup.applicable, d.ev.setup.pattern_applicable)
        problem = hop_problem(rec, last.counter, boots0)
        inode = None
        if not problem and inode0 is not None:
            inode = d.ev.ram_inode(d.target.pid)
            if inode != inode0:
                problem = f"RAM file changed: inode {inode0} -> {inode}"
        # The old source is done: quit it, the target becomes the source. A mixed pair
        # (the series and a released QEMU) speaks the target's dialect from now on:
        # both sides are the target's binary.
        old, d.src, d.dst = d.src, d.dst, None
        d.dialect = d.dialect.for_side("dst")
        d.old_dsts.append(old)
        d.shutdown_quietly(old)
        hop = HopRecord(i, rec, inode)
        if not problem:
            hop = HopRecord(i, rec, inode, len(os.listdir(f"/proc/{d.source.pid}/fd")),
                            _rss_anon_kib(d.source.pid),
                            psutil.Process(d.source.pid).num_threads())
            last = d.work_area(d.source)
        c.hops.append(hop)
        if problem:
            c.failed_hop, c.failure = i, problem
            return
    if d.ev.pattern:
        c.pattern = d.ev.verify_pattern_at(d.source.pid)
