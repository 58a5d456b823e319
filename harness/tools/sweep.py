"""Run one scenario at several guest RAM sizes and tabulate the evidence.

This is what shows cpr-transfer's promise across sizes: the main stream stays the same
size whatever the RAM, and the guest pause does not grow with it. ``python -m harness
sizes`` prints the table; the benchmark builds on it.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from harness.core.errors import UsageError
from harness.run.config import RunConfig
from harness.run.driver import run_scenario
from harness.evidence.pause import PauseFigures
from harness.evidence.stream import StreamFigures
from harness.run.records import AttemptEvidence
from harness.run.verdict import failed, judge
from harness.scenario import catalogue
from harness.scenario.model import Scenario

DEFAULT_SIZES = ("256M", "1G", "4G")


def parse_size_mb(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([MG])i?B?\s*", text, re.IGNORECASE)
    if not m:
        raise UsageError(f"bad RAM size {text!r}: use e.g. 256M or 4G")
    n = int(m.group(1)) * (1024 if m.group(2).upper() == "G" else 1)
    if n < 64:
        raise UsageError(f"RAM size {text!r} is below 64M")
    return n


def host_fits(ram_mb: int, copies: int = 1) -> bool:
    """Is there memory for ``copies`` guests of this size (shared RAM counts once)?"""
    try:
        import psutil
        avail = psutil.virtual_memory().available
    except Exception:  # noqa: BLE001 - best effort
        return True
    return ram_mb * copies * (1 << 20) < avail * 0.8


@dataclass
class SweepRow:
    ram_mb: int
    verdict: str
    failed_checks: List[str]
    transferred: Optional[int]
    normal: Optional[int]
    guest_pause_ms: Optional[float]
    noise_floor_ms: Optional[float]
    qemu_downtime_ms: Optional[int]
    qemu_total_time_ms: Optional[int]
    verify_s: Optional[float]
    case_dir: str

    def to_dict(self) -> Dict[str, Any]:
        return dict(self.__dict__)


def run_sweep(sizes_mb: Sequence[int], cfg: RunConfig, out_dir: str,
              base: Optional[Scenario] = None, prealloc: bool = False) -> List[SweepRow]:
    base = base or catalogue.get("transfer/unix-unix-memfd-immediate-q35")
    rows: List[SweepRow] = []
    for mb in sizes_mb:
        sc = base.with_(id=f"{base.id}-{mb}M", ram_mb=mb, prealloc=prealloc)
        case_dir = os.path.join(out_dir, f"ram-{mb}M" + ("-prealloc" if prealloc else ""))
        if not host_fits(mb):
            rows.append(SweepRow(mb, "skip: not enough host memory", [], None, None, None,
                                 None, None, None, None, case_dir))
            continue
        r = run_scenario(sc, cfg, case_dir)
        bad = failed(judge(r))
        ev = r.first.evidence if r.first is not None else AttemptEvidence()
        pause = ev.pause or PauseFigures()
        stream = ev.stream or StreamFigures()
        rows.append(SweepRow(
            ram_mb=mb, verdict="pass" if not bad else "fail",
            failed_checks=[m.name for m in bad],
            transferred=stream.transferred, normal=stream.normal,
            guest_pause_ms=pause.guest_pause_ms,
            noise_floor_ms=pause.noise_floor_ms,
            qemu_downtime_ms=pause.qemu_downtime_ms,
            qemu_total_time_ms=pause.qemu_total_time_ms,
            verify_s=ev.pattern.elapsed if ev.pattern is not None else None,
            case_dir=case_dir))
    return rows


def table(rows: Sequence[SweepRow]) -> str:
    def f(v: Any, fmt: str = "{}") -> str:
        return "-" if v is None else fmt.format(v)

    head = (f"{'RAM':>7} {'verdict':8} {'stream bytes':>12} {'ram.normal':>10} "
            f"{'guest pause':>11} {'noise floor':>11} {'QEMU downtime':>13} "
            f"{'total-time':>10} {'verify':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        size = f"{r.ram_mb // 1024}G" if r.ram_mb % 1024 == 0 else f"{r.ram_mb}M"
        lines.append(
            f"{size:>7} {r.verdict[:8]:8} {f(r.transferred):>12} {f(r.normal):>10} "
            f"{f(r.guest_pause_ms, '{:.2f} ms'):>11} {f(r.noise_floor_ms, '{:.2f} ms'):>11} "
            f"{f(r.qemu_downtime_ms, '{} ms'):>13} {f(r.qemu_total_time_ms, '{} ms'):>10} "
            f"{f(r.verify_s, '{:.2f}s'):>7}")
        if r.failed_checks:
            lines.append(f"{'':>7} failed: {', '.join(r.failed_checks)}")
    sizes = [r.transferred for r in rows if r.transferred is not None]
    if len(sizes) > 1:
        lines.append(f"main stream size spread across RAM sizes: {max(sizes) - min(sizes)} "
                     f"bytes ({min(sizes)}..{max(sizes)})")
    return "\n".join(lines)
