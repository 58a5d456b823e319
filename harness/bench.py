"""Benchmark: what cpr-transfer costs the guest, against the alternatives, as RAM grows.

``python -m harness.bench`` runs, for each guest RAM size and each method, a lean
launch + transfer of the bare-metal guest with its RAM touched (filled with the seeded
pattern through the memory file, so every page is resident), several rounds, and
reports min/median/max of:

* the guest pause as the harness measures it: the host-side sampler
  (:mod:`harness.sampler`) reading the guest's progress counter through the memory
  file(s), beside QEMU's own ``downtime`` and ``total-time``;
* the bytes on the main channel (``ram.transferred``, or the state file's size);
* the time to start the target (launch to listening / to QMP ready).

Methods (``METHODS``): cpr-transfer (with and without ``prealloc=on``), normal
precopy to a second local QEMU over a unix socket (separate memfds: all RAM goes
through the stream), and cpr-reboot through a file with ``x-ignore-shared`` (one
``memory-backend-file,share=on`` on /dev/shm for both QEMUs, the source quits before
the target starts).

It also times the harness's own cost: a full conformance case
(:func:`harness.pair.run_scenario`) against the bare launch + transfer of the same
pair with the lean runner, and the conformance matrix's wall time with and without
``-n 2``.

Output: a table on the terminal (and ``bench.txt``), ``bench.json`` (every round, the
summaries, host and QEMU) and ``bench.png``. Method and figures: ``docs/bench.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from harness import backends, catalogue, channels, ram
from harness import dialect as dialects
from harness.cleanup import private_tmpdir, remove_tmpdir
from harness.errors import HarnessError, UsageError, WaitTimeout
from harness.sampler import Sampler, SamplerResult, Stall
from harness.sweep import parse_size_mb
from harness.vmm import QemuProcess, tail

ROOT = Path(__file__).resolve().parent.parent
EXIT_USAGE = 2

#: 8G is left out of the default: with 3 rounds it alone takes ~7 minutes on the
#: 2-core reference host (precopy of a touched 8 GiB guest ~60-80 s a round, first
#: touch of fresh memory ~0.5 GB/s), which with the matrix timing breaks the 10-minute
#: budget. ``--sizes 256M,1G,4G,8G`` runs it (sizes that do not fit are skipped).
DEFAULT_SIZES = ("256M", "1G", "4G")
ALL_SIZES = ("256M", "1G", "4G", "8G")
QUICK_SIZES = ("256M", "1G")
DEFAULT_ROUNDS = 3
#: The conformance case whose cost the harness-overhead measurement compares.
OVERHEAD_CASE = "transfer/unix-unix-memfd-immediate-q35"
#: The idle window before each transfer: its longest stall is the run's noise floor.
NOISE_WINDOW_S = 0.5
#: Between the end of the idle window and the transfer mark: a stall overlapping a
#: mark counts in both windows, so without a gap a stall that began just before
#: ``migrate`` (the QMP set-up commands stall the vCPU here) would be both the noise
#: floor and the pause.
GUARD_S = 0.02
#: A short tail after the target runs, so the sampler sees the counter move on.
TAIL_S = 0.05
#: Precopy's max-bandwidth. QEMU's default is 128 MiB/s (a 8 GiB guest would need
#: ~64 s); a local unix socket has no reason for a cap, so the benchmark lifts it.
PRECOPY_BANDWIDTH = 100 << 30
#: Past marks dropped into the precopy target's sampler to isolate its stall at the
#: source's final counter value (see :func:`precopy_pause`): fine ones around the moment
#: the harness saw the target running (that stall ends near it and can be as short as
#: 0.2 ms), coarse ones from the source's stop on.
SPLIT_FINE_NS = 20_000
SPLIT_FINE_BEFORE_NS = 25_000_000
SPLIT_FINE_AFTER_NS = 15_000_000
SPLIT_COARSE_MIN_NS = 200_000
SPLIT_COARSE_MAX = 1000
#: Downtime is whole milliseconds: differences below this are never reported.
_DOWNTIME_RESOLUTION_MS = 1.0
#: ... nor differences within this fraction of the downtime.
_DOWNTIME_RELATIVE = 0.1


@dataclass(frozen=True)
class Method:
    name: str
    backend: str
    prealloc: bool
    #: Guest RAM copies the host must hold at once (precopy: source + target).
    copies: int
    doc: str


METHODS: Dict[str, Method] = {m.name: m for m in (
    Method("cpr-transfer", "memfd", False, 1,
           "cpr-transfer, memory-backend-memfd share=on: the target maps the same memfd"),
    Method("cpr-transfer-prealloc", "memfd", True, 1,
           "cpr-transfer, memory-backend-memfd share=on,prealloc=on on both sides"),
    Method("precopy", "memfd", False, 2,
           "normal precopy migration over a unix socket to a second local QEMU with its "
           "own memfd: the main stream carries all RAM"),
    Method("cpr-reboot", "file-shm", False, 1,
           "cpr-reboot to a file with x-ignore-shared: one memory-backend-file share=on on "
           "/dev/shm; the source quits, then the target starts and loads the file"),
)}


# --------------------------------------------------------------------------- statistics

def stats(values: Iterable[Optional[float]]) -> Optional[Dict[str, float]]:
    """min/median/max/n of the values that are not None; None if there are none."""
    vals = sorted(float(v) for v in values if v is not None)
    if not vals:
        return None
    return {"min": vals[0], "median": statistics.median(vals), "max": vals[-1], "n": len(vals)}


#: The per-round figures summarized per (method, size): key -> (label, unit).
METRICS: Dict[str, Tuple[str, str]] = {
    "guest_pause_ms": ("guest pause", "ms"),
    "guest_pause_max_ms": ("guest pause, upper bound", "ms"),
    "noise_floor_ms": ("noise floor (idle pair)", "ms"),
    "qemu_downtime_ms": ("QEMU downtime", "ms"),
    "qemu_total_time_ms": ("QEMU total-time", "ms"),
    "main_bytes": ("bytes on the main channel", "B"),
    "dst_start_ms": ("target start", "ms"),
    "src_start_ms": ("source start (launch to QMP)", "ms"),
    "switch_ms": ("migrate issued to target running (harness view)", "ms"),
    "fill_s": ("RAM fill through the memory file", "s"),
    "wall_s": ("round wall time", "s"),
}


@dataclass
class RoundResult:
    method: str
    ram_mb: int
    round: int
    status: str = "ok"                 # ok / error / skip
    reason: str = ""
    guest_pause_ms: Optional[float] = None
    guest_pause_max_ms: Optional[float] = None
    noise_floor_ms: Optional[float] = None
    #: The sampler's own longest gap between reads during the transfer window.
    sampler_gap_ms: Optional[float] = None
    qemu_downtime_ms: Optional[float] = None
    qemu_total_time_ms: Optional[float] = None
    qemu_setup_time_ms: Optional[float] = None
    main_bytes: Optional[int] = None
    main_bytes_from: str = ""
    dst_start_ms: Optional[float] = None
    dst_start_until: str = ""
    src_start_ms: Optional[float] = None
    src_quit_ms: Optional[float] = None
    switch_ms: Optional[float] = None
    fill_s: Optional[float] = None
    wall_s: Optional[float] = None
    counter_before: Optional[int] = None
    counter_after: Optional[int] = None
    boots_before: Optional[int] = None
    boots_after: Optional[int] = None
    extra: Dict[str, Any] = field(default_factory=dict)
    logs: str = ""

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def summarize(rounds: Sequence[RoundResult]) -> List[Dict[str, Any]]:
    """One summary per (method, RAM size), in first-seen order."""
    groups: Dict[Tuple[str, int], List[RoundResult]] = {}
    for r in rounds:
        groups.setdefault((r.method, r.ram_mb), []).append(r)
    out = []
    for (method, mb), rs in groups.items():
        ok = [r for r in rs if r.status == "ok"]
        s: Dict[str, Any] = {
            "method": method, "ram_mb": mb, "rounds": len(rs), "ok": len(ok),
            "errors": [f"round {r.round}: {r.reason}" for r in rs if r.status == "error"],
            "skipped": sorted({r.reason for r in rs if r.status == "skip"}),
            "metrics": {k: stats(getattr(r, k) for r in ok) for k in METRICS},
        }
        s["disagreement"] = disagreement(method, s["metrics"])
        out.append(s)
    return out


def disagreement(method: str, metrics: Dict[str, Optional[Dict[str, float]]]
                 ) -> Optional[Dict[str, Any]]:
    """Does QEMU's ``downtime`` disagree with the measured pause beyond the noise?

    Medians are compared. The tolerance is the largest of: the group's median noise
    floor (per round, the longest stall the sampler saw on the idle pair just before
    the transfer: scheduling noise on a busy host), the 1 ms resolution of
    ``downtime``, and 10% of the downtime (a 300 ms precopy downtime that the guest
    saw as 292 ms agrees). None when a figure is missing.
    """
    pause, down, noise = (metrics.get(k) for k in
                          ("guest_pause_ms", "qemu_downtime_ms", "noise_floor_ms"))
    if pause is None or down is None:
        return None
    tol = max(noise["median"] if noise else 0.0, _DOWNTIME_RESOLUTION_MS,
              _DOWNTIME_RELATIVE * down["median"])
    diff = pause["median"] - down["median"]
    ratio = pause["median"] / down["median"] if down["median"] > 0 else None
    d: Dict[str, Any] = {
        "pause_median_ms": round(pause["median"], 3),
        "downtime_median_ms": down["median"],
        "difference_ms": round(diff, 3),
        "ratio": None if ratio is None else round(ratio, 2),
        "tolerance_ms": round(tol, 3),
        "disagrees": abs(diff) > tol,
    }
    if d["disagrees"]:
        side = "longer" if diff > 0 else "shorter"
        why = WHY_LONGER.get(method, "") if diff > 0 else WHY_SHORTER
        d["text"] = (f"{method}: the guest's pause ({pause['median']:.1f} ms) is "
                     f"{abs(diff):.1f} ms {side} than QEMU's downtime "
                     f"({down['median']:g} ms)"
                     + (f", {ratio:.1f}x" if ratio else "")
                     + f"; tolerance {tol:.1f} ms" + (f". {why}" if why else ""))
    return d


#: Why the guest's pause can be longer than QEMU's downtime, per method.
WHY_LONGER = {
    "cpr-reboot": "QEMU's downtime is the source's stop-and-save only; quitting the "
                  "source, starting the target and loading the file are not in it",
    "precopy": "downtime is the source's view; the target's load and vCPU restart "
               "are not all in it (the pause spans two memory files here)",
    "cpr-transfer": "downtime is the source's view of the switch-over; the target's "
                    "load and vCPU restart are not all in it, and the longest stall "
                    "may also come from CPU contention during the transfer",
    "cpr-transfer-prealloc": "the longest stall can come before the switch-over, while "
                             "the target preallocates (CPU contention on the source's "
                             "vCPU); pause_at_ms in bench.json says where it began",
}
#: Why it can be shorter.
WHY_SHORTER = ("QEMU counts downtime on the source until its side of the migration "
               "completes; the guest already ran on the target before that")


# --------------------------------------------------------------------------- the pause

def _stalls(res: SamplerResult) -> List[Stall]:
    """Every distinct stall the result names (its top list and each window's longest)."""
    seen: Dict[Tuple[int, int], Stall] = {}
    for s in [res.longest, *res.top, *(w.longest for w in res.windows)]:
        if s is not None:
            seen[(s.start_ns, s.value)] = s
    return sorted(seen.values(), key=lambda s: s.start_ns)


def final_stall(res: SamplerResult) -> Optional[Stall]:
    """The stall still going when sampling stopped (a source that stopped for good)."""
    ongoing = [s for s in _stalls(res) if s.end_ns is None]
    return ongoing[-1] if ongoing else None


def split_marks(src_stop_ns: int, dst_seen_running_ns: int) -> List[Tuple[str, int]]:
    """Past marks for the precopy target's sampler (labels ``split00000``...).

    Every ``SPLIT_FINE_NS`` from ``SPLIT_FINE_BEFORE_NS`` before the harness saw the
    target running to ``SPLIT_FINE_AFTER_NS`` after; before that, from 1 ms before the
    source's stop, at most ``SPLIT_COARSE_MAX`` marks at least ``SPLIT_COARSE_MIN_NS``
    apart. Sorted, distinct times.
    """
    fine_from = dst_seen_running_ns - SPLIT_FINE_BEFORE_NS
    coarse_from = src_stop_ns - 1_000_000
    times: List[int] = []
    if coarse_from < fine_from:
        span = fine_from - coarse_from
        n = max(1, min(SPLIT_COARSE_MAX, span // SPLIT_COARSE_MIN_NS))
        times += [int(coarse_from + i * span / n) for i in range(n)]
    start = max(fine_from, coarse_from)
    end = dst_seen_running_ns + SPLIT_FINE_AFTER_NS
    times += list(range(start, end + 1, SPLIT_FINE_NS))
    times = sorted(set(times))
    return [(f"split{i:05d}", t) for i, t in enumerate(times)]


@dataclass(frozen=True)
class PrecopyPause:
    """The guest's pause across two memory files (precopy: separate memfds)."""
    pause_ms: Optional[float]
    pause_max_ms: Optional[float]
    final_value: Optional[int]
    src_stop_ns: Optional[int]
    dst_resume_ns: Optional[int]
    problem: str = ""
    note: str = ""


def precopy_pause(src: SamplerResult, dst: SamplerResult) -> PrecopyPause:
    """Pause = first counter change seen on the target minus last change on the source.

    Precise definition, on the one CLOCK_MONOTONIC both samplers share:

    * on the source, the last change is the first read of the final value ``V`` (the
      stall still going when the source sampler stopped): ``src_stop``;
    * on the target, precopy itself writes the counter's page (with older values, and
      last with ``V``) before the guest runs there, so "first change" means the first
      change away from ``V``: the end of the target's stall at value ``V``.

    ``pause_ms`` uses the inner bounds (last target read of ``V`` minus first source
    read of ``V``), as the single-file sampler's ``duration`` does; ``pause_max_ms``
    the outer ones (first target read of a new value minus the source read before
    ``V``). The target's stall at ``V`` is found by value among the stalls the result
    names; :func:`split_marks` dropped into the target's sampler make it the longest of
    some window, so it is named even when longer migration-time stalls fill the top.

    That stall can be shorter than the sampler's threshold (the final page landed less
    than 50 us before the guest ran: a -nodefaults machine has little device state to
    load), and is then not recorded. Values on the target are at most ``V`` before the
    guest runs there and above it after, so ``V`` arrived at the end of the last stall
    below ``V`` and the guest resumed at most one threshold later: the bounds use that.
    """
    fin = final_stall(src)
    if fin is None:
        return PrecopyPause(None, None, None, None, None,
                            "the source's counter never stopped for good (no final stall)")
    v = fin.value
    src_before = fin.start_ns - (fin.max_ns - fin.duration_ns)
    stalls = _stalls(dst)
    at_v = [s for s in stalls if s.value == v and s.end_ns is not None]
    if at_v:
        s = max(at_v, key=lambda x: x.end_ns or 0)
        assert s.end_ns is not None
        inner = (s.start_ns + s.duration_ns) - fin.start_ns
        return PrecopyPause(round(inner / 1e6, 3), round((s.end_ns - src_before) / 1e6, 3),
                            v, fin.start_ns, s.end_ns)
    below = [s for s in stalls if s.value < v and s.end_ns is not None]
    if dst.last_value > v and below:
        arrived = max(s.end_ns for s in below if s.end_ns is not None)
        return PrecopyPause(round((arrived - fin.start_ns) / 1e6, 3),
                            round((arrived + dst.threshold_ns - src_before) / 1e6, 3),
                            v, fin.start_ns, arrived,
                            note=f"the target ran less than the sampler's threshold "
                                 f"({dst.threshold_ns / 1e3:.0f} us) after the final value "
                                 f"arrived: resume taken as that arrival")
    why = ("the guest never ran on the target past it" if dst.last_value <= v else
           "and no earlier stall to bound its arrival")
    return PrecopyPause(None, None, v, fin.start_ns, None,
                        f"no stall at the source's final value {v} on the target ({why})")


def transfer_window_gap_ms(res: SamplerResult, start: str, end: str) -> Optional[float]:
    """The sampler's longest gap between reads in the windows from ``start`` to ``end``."""
    labels = [w.start for w in res.windows]
    try:
        i = labels.index(start)
    except ValueError:
        return None
    gaps = []
    for w in res.windows[i:]:
        gaps.append(w.max_sampler_gap_ns)
        if w.end == end:
            break
    return round(max(gaps, default=0) / 1e6, 3)


class _Sampler(Sampler):
    """A :class:`Sampler` that can also place marks at past times (the protocol's
    ``t_ns``): the precopy target's split marks, placed once the source's stop is known."""

    def mark_at(self, label: str, t_ns: int) -> None:
        self._send({"cmd": "mark", "label": label, "t_ns": int(t_ns)}, when=f"at mark {label!r}")


# --------------------------------------------------------------------------- host

def mem_fits(ram_mb: int, copies: int, shm: bool) -> Tuple[bool, str]:
    """Is there memory for ``copies`` guests of ``ram_mb``, and /dev/shm room if asked?"""
    import psutil

    need = ram_mb * copies << 20
    avail = psutil.virtual_memory().available
    # Leave a fifth for the others sharing the machine and for QEMU itself.
    if need > avail * 0.8:
        return False, (f"needs {need >> 20} MiB of guest RAM ({copies} cop"
                       f"{'y' if copies == 1 else 'ies'}), the host has {avail >> 20} MiB "
                       f"available (80% usable)")
    if shm:
        st = os.statvfs("/dev/shm")
        free = st.f_bavail * st.f_frsize
        if ram_mb << 20 > free:
            return False, f"needs {ram_mb} MiB on /dev/shm, {free >> 20} MiB free there"
    return True, ""


def host_info() -> Dict[str, Any]:
    import psutil

    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    vm = psutil.virtual_memory()
    return {"hostname": platform.node(), "kernel": platform.release(),
            "arch": platform.machine(), "cpu": cpu, "cpus": os.cpu_count(),
            "mem_total_mb": vm.total >> 20, "mem_available_mb": vm.available >> 20,
            "python": platform.python_version(), "load_avg": list(os.getloadavg())}


def size_label(mb: int) -> str:
    return f"{mb // 1024}G" if mb % 1024 == 0 else f"{mb}M"


# --------------------------------------------------------------------------- the lean runner

@dataclass
class Context:
    """What every run shares: the binary, the accelerator, the guest, the waits."""
    qemu: str
    accel: str
    qemu_version: str
    logroot: str
    noise_s: float = NOISE_WINDOW_S
    precopy_bandwidth: Optional[int] = PRECOPY_BANDWIDTH
    start_timeout: float = 30.0
    guest_timeout: float = 30.0
    listen_timeout: float = 15.0
    settle_timeout: float = 15.0

    def transfer_timeout(self, ram_mb: int) -> float:
        # Precopy of a touched 8 GiB guest moves 8 GiB; the others move kilobytes.
        return 60.0 + 20.0 * ram_mb / 1024


def resolve(qemu: str, accel: str) -> Tuple[str, str, str]:
    """(path, accel, version) for ``qemu``; ``accel`` auto -> kvm when usable."""
    from harness.capabilities import probe

    caps = probe(qemu)
    if accel == "auto":
        accel = "kvm" if caps.kvm_usable else "tcg"
    elif accel == "kvm" and not caps.kvm_usable:
        raise UsageError(f"--accel kvm: KVM is not usable with {caps.path}: {caps.kvm_reason}")
    return caps.path, accel, caps.version_str


class LeanRun:
    """Launch a source, touch its RAM, transfer by one method, measure, tear down.

    ``bare``: no RAM fill, no sampler, no noise window: just launch + transfer (the
    baseline the harness's own overhead is measured against).
    """

    def __init__(self, ctx: Context, method: Method, ram_mb: int, round_no: int,
                 bare: bool = False, tag: str = ""):
        self.ctx, self.m, self.mb, self.bare = ctx, method, ram_mb, bare
        self.size = ram_mb << 20
        self.r = RoundResult(method.name, ram_mb, round_no)
        from harness.evidence import work_area
        from harness.guest import image

        self.guest = image("x86-bios")
        self.work = work_area(self.guest)
        self.dialect = dialects.get(dialects.RELEASED)
        self.sc = catalogue.get(OVERHEAD_CASE).with_(ram_mb=ram_mb, backend=method.backend,
                                                     prealloc=method.prealloc)
        self.logdir = os.path.join(ctx.logroot, tag or
                                   f"{method.name}-{size_label(ram_mb)}-r{round_no}")
        self.src: Optional[QemuProcess] = None
        self.dst: Optional[QemuProcess] = None
        self.src_ram: Optional[ram.GuestRam] = None
        self.dst_ram: Optional[ram.GuestRam] = None
        self.samplers: List[Sampler] = []
        self.chans: List[channels.Channel] = []
        self.wd = ""
        self.shm: Optional[str] = None
        self.mem: Optional[backends.MemoryArgs] = None

    # -- plumbing

    def vm_args(self, side: str) -> List[str]:
        from harness.pair import render_vm_args

        assert self.mem is not None
        serial = os.path.join(self.logdir, f"{side}.serial")
        return render_vm_args(self.sc, self.dialect, self.mem, self.ctx.accel,
                              self.guest.qemu_args(serial), side)

    def _open(self, path_or_fd: Any, writable: bool) -> ram.GuestRam:
        return ram.open_ram(path_or_fd, writable, machine=self.sc.machine, work=self.work)

    def _sampler(self, path: str, side: str) -> _Sampler:
        offset = ram.ram_layout(self.sc.machine, self.size).offset_of_gpa(
            self.work.counter_gpa, 8)
        s = _Sampler(path, offset, self.ctx.noise_s + self.ctx.transfer_timeout(self.mb)
                     + 2 * self.ctx.settle_timeout + self.ctx.start_timeout + 30,
                     log_path=os.path.join(self.logdir, f"sampler-{side}.log"))
        self.samplers.append(s)
        s.start()
        return s

    @staticmethod
    def _wait_counter(read: Callable[[], int], timeout: float, side: str, what: str,
                      above: Optional[int] = None, alive: Optional[Callable[[], None]] = None
                      ) -> int:
        start = time.monotonic()
        first = read()
        while True:
            v = read()
            if v != first and (above is None or v > above):
                return v
            if alive is not None:
                alive()
            if time.monotonic() - start > timeout:
                raise WaitTimeout(what, timeout, time.monotonic() - start,
                                  f"counter {v}", side)
            time.sleep(0.005)

    def _wait_migration(self, vm: QemuProcess, timeout: float) -> Dict[str, Any]:
        """Poll ``query-migrate`` until completed; raise on failed/cancelled/timeout."""
        assert vm.qmp is not None
        start = time.monotonic()
        while True:
            q = vm.qmp.cmd("query-migrate")
            st = q.get("status", "")
            if st == "completed":
                return q
            if st in ("failed", "cancelled"):
                raise HarnessError(f"{vm.side}: migration {st}: {q.get('error-desc', '')}; "
                                   f"log {vm.log_path}")
            if time.monotonic() - start > timeout:
                raise WaitTimeout("migration to complete", timeout, time.monotonic() - start,
                                  st, vm.side, vm.log_path)
            time.sleep(0.005)

    def _wait_running(self, vm: QemuProcess, timeout: float) -> None:
        assert vm.qmp is not None
        start = time.monotonic()
        while True:
            vm.check_alive("before it ran the guest")
            st = vm.qmp.cmd("query-status")["status"]
            if st == "running":
                return
            if time.monotonic() - start > timeout:
                raise WaitTimeout("the target to run", timeout, time.monotonic() - start,
                                  st, vm.side, vm.log_path)
            time.sleep(0.002)

    def _launch(self, side: str, extra: List[str]) -> QemuProcess:
        vm = QemuProcess(side, self.ctx.qemu, self.vm_args(side) + extra, self.wd, self.logdir)
        if side == "src":
            self.src = vm
        else:
            self.dst = vm
        vm.launch()
        return vm

    # -- the run

    def run(self) -> RoundResult:
        t0 = time.monotonic()
        os.makedirs(self.logdir, exist_ok=True)
        self.r.logs = self.logdir
        self.wd = private_tmpdir("bench")
        if self.m.backend == "file-shm":
            self.shm = private_tmpdir("shm", base="/dev/shm")
        try:
            self.mem = backends.render(self.m.backend, self.mb, self.m.prealloc, self.shm)
            self._start_src()
            {"cpr-transfer": self._cpr_transfer, "cpr-transfer-prealloc": self._cpr_transfer,
             "precopy": self._precopy, "cpr-reboot": self._cpr_reboot}[self.m.name]()
            self._check_guest_continued()
        except Exception as exc:  # noqa: BLE001 - one bad round must not end the bench
            self.r.status = "error"
            first = (str(exc).strip().splitlines() or [""])[0]
            self.r.reason = (first if isinstance(exc, HarnessError)
                             else f"{type(exc).__name__}: {first}")[:400]
        finally:
            self.teardown()
            self.r.wall_s = round(time.monotonic() - t0, 3)
        return self.r

    def teardown(self) -> None:
        """Every sampler, QEMU, mapping, channel and temp dir; each even if one raises."""
        try:
            for s in self.samplers:
                s.close()
            for vm in (self.dst, self.src):
                if vm is not None:
                    vm.shutdown()
        finally:
            for g in (self.src_ram, self.dst_ram):
                if g is not None:
                    g.close()
            for c in self.chans:
                c.close()
            remove_tmpdir(self.wd)
            if self.shm:
                remove_tmpdir(self.shm)

    def _start_src(self) -> None:
        ctx = self.ctx
        t = time.monotonic()
        src = self._launch("src", [])
        src.connect_qmp(ctx.start_timeout)
        self.r.src_start_ms = round((time.monotonic() - t) * 1e3, 1)
        assert self.mem is not None
        where = self.mem.mem_path or ram.find_ram_fd(src.pid, self.size,
                                                      backends.BACKENDS[self.m.backend].fd_hint)
        self.src_ram = self._open(where, writable=not self.bare)
        g = self.src_ram
        self._wait_counter(g.counter, ctx.guest_timeout, "src", "the guest's counter to move",
                           alive=lambda: src.check_alive("while the guest booted"))
        self.r.boots_before = g.boots()
        if self.bare:
            return
        seed = int.from_bytes(os.urandom(8), "little") or 1
        rep = ram.fill_pattern(g, seed, list(self.guest.own_ranges))
        self.r.fill_s = round(rep.elapsed, 3)

    def _src_sampler_path(self) -> str:
        assert self.src_ram is not None
        return self.src_ram.path

    def _mark(self, label: str) -> None:
        for s in self.samplers:
            if s.running():
                s.mark(label)

    def _noise(self) -> None:
        """The idle window: its longest stall is this run's noise floor."""
        if not self.bare:
            self._mark("noise")
            time.sleep(self.ctx.noise_s)
            self._mark("idle-end")

    def _transfer_mark(self) -> None:
        """The guard gap, the counter's pre-transfer value, then the ``transfer`` mark."""
        assert self.src_ram is not None
        if not self.bare:
            time.sleep(GUARD_S)
        self.r.counter_before = self.src_ram.counter()
        self._mark("transfer")

    def _where(self, res: SamplerResult, pause_start_ns: Optional[int],
               noise: Optional[Stall]) -> None:
        """Where the pause began relative to ``migrate``; whether it is also the noise."""
        marks = {m.label: m.t_ns for m in res.marks}
        if pause_start_ns is not None and "transfer" in marks:
            self.r.extra["pause_at_ms"] = round((pause_start_ns - marks["transfer"]) / 1e6, 3)
        if noise is not None and pause_start_ns == noise.start_ns:
            self.r.extra["noise_is_pause"] = True

    def _record_qm(self, q: Dict[str, Any]) -> None:
        self.r.qemu_downtime_ms = q.get("downtime")
        self.r.qemu_total_time_ms = q.get("total-time")
        self.r.qemu_setup_time_ms = q.get("setup-time")
        r = q.get("ram") or {}
        self.r.main_bytes = r.get("transferred")
        self.r.main_bytes_from = "ram.transferred"
        self.r.extra["ram"] = {k: r.get(k) for k in ("transferred", "total", "normal",
                                                      "normal-bytes", "duplicate",
                                                      "dirty-sync-count", "mbps")}

    def _single_file_pause(self) -> None:
        """One memory file, one sampler: the longest stall from migrate to running."""
        if not self.samplers:
            return
        time.sleep(TAIL_S)
        res = self.samplers[0].stop()
        pause = res.longest_between("transfer", "resumed")
        noise = res.longest_between("noise", "idle-end")
        self._where(res, pause.start_ns if pause else None, noise)
        # No stall above the sampler's threshold: the pause was shorter than it.
        thr = res.threshold_ns / 1e6
        self.r.guest_pause_ms = round(pause.duration_ms, 3) if pause else 0.0
        self.r.guest_pause_max_ms = round(pause.max_ms, 3) if pause else thr
        self.r.noise_floor_ms = round(noise.duration_ms, 3) if noise else 0.0
        self.r.sampler_gap_ms = transfer_window_gap_ms(res, "transfer", "resumed")
        self.r.extra["sampler"] = {"rate_hz": round(res.rate_hz),
                                   "median_interval_ns": res.median_interval_ns,
                                   "counter_went_back": res.reset,
                                   "pause_stall": None if pause is None else asdict(pause)}

    # cpr-transfer --------------------------------------------------------------------

    def _cpr_transfer(self) -> None:
        ctx = self.ctx
        src = self.src
        assert src is not None and src.qmp is not None and self.src_ram is not None
        if not self.bare:
            self._sampler(self._src_sampler_path(), "src")
            self._noise()
        sq = src.qmp
        sq.cmd("migrate-set-parameters", {"mode": "cpr-transfer"})
        main = channels.main_channel("unix", self.wd)
        cpr = channels.cpr_channel("unix", self.wd)
        self.chans += [main, cpr]
        t = time.monotonic()
        dst = self._launch("dst", self.dialect.target_incoming(main, cpr, False))
        # The target has no monitor until it has read CPR state: ready = listening.
        cpr.wait_listening(ctx.listen_timeout,
                           lambda: dst.check_alive("before it listened on the cpr channel"))
        self.r.dst_start_ms = round((time.monotonic() - t) * 1e3, 1)
        self.r.dst_start_until = "cpr socket listening"
        self._transfer_mark()
        t = time.monotonic()
        m = self.dialect.source_migrate(main, cpr)
        sq.cmd(m.name, m.args)
        dst.connect_qmp(ctx.start_timeout)
        q = self._wait_migration(src, ctx.transfer_timeout(self.mb))
        self._wait_running(dst, ctx.settle_timeout)
        self.r.switch_ms = round((time.monotonic() - t) * 1e3, 1)
        self._mark("resumed")
        self._record_qm(q)
        self._single_file_pause()

    # precopy --------------------------------------------------------------------------

    def _precopy(self) -> None:
        ctx = self.ctx
        src = self.src
        assert src is not None and src.qmp is not None and self.src_ram is not None
        if not self.bare:
            self._sampler(self._src_sampler_path(), "src")
        main = channels.main_channel("unix", self.wd)
        main.listen_path = main.src_addr["path"]  # type: ignore[index]
        self.chans.append(main)
        t = time.monotonic()
        dst = self._launch("dst", ["-incoming", str(main.dst_incoming)])
        dst.connect_qmp(ctx.start_timeout)
        main.wait_listening(ctx.listen_timeout,
                            lambda: dst.check_alive("before it listened on the main channel"))
        self.r.dst_start_ms = round((time.monotonic() - t) * 1e3, 1)
        self.r.dst_start_until = "QMP ready, main socket listening"
        self.dst_ram = self._open(ram.find_ram_fd(dst.pid, self.size,
                                                  backends.BACKENDS["memfd"].fd_hint), False)
        dst_sampler = None
        if not self.bare:
            dst_sampler = self._sampler(self.dst_ram.path, "dst")
            self._noise()
        sq = src.qmp
        if ctx.precopy_bandwidth:
            sq.cmd("migrate-set-parameters", {"max-bandwidth": ctx.precopy_bandwidth})
        self.r.extra["max_bandwidth"] = sq.cmd("query-migrate-parameters").get("max-bandwidth")
        self._transfer_mark()
        t = time.monotonic()
        sq.cmd("migrate", {"channels": [main.qapi()]})
        q = self._wait_migration(src, ctx.transfer_timeout(self.mb))
        self._wait_running(dst, ctx.settle_timeout)
        t_running_ns = time.monotonic_ns()
        self.r.switch_ms = round((time.monotonic() - t) * 1e3, 1)
        self._mark("resumed")
        self._record_qm(q)
        if dst_sampler is None:
            return
        time.sleep(TAIL_S)
        src_res = self.samplers[0].stop()
        fin = final_stall(src_res)
        if fin is not None:
            for label, t_ns in split_marks(fin.start_ns, t_running_ns):
                dst_sampler.mark_at(label, t_ns)
        dst_res = dst_sampler.stop()
        p = precopy_pause(src_res, dst_res)
        noise = src_res.longest_between("noise", "idle-end")
        self._where(src_res, p.src_stop_ns, noise)
        self.r.noise_floor_ms = round(noise.duration_ms, 3) if noise else 0.0
        self.r.guest_pause_ms, self.r.guest_pause_max_ms = p.pause_ms, p.pause_max_ms
        # The samplers' own gaps around the switch-over (the whole transfer can take a
        # minute, with long gaps that do not touch the pause): the target's split
        # windows, and the source's gap just before it first read the final value.
        split_gap = max((w.max_sampler_gap_ns for w in dst_res.windows
                         if w.start.startswith("split")), default=0)
        src_gap = fin.max_ns - fin.duration_ns if fin is not None else 0
        self.r.sampler_gap_ms = round(max(split_gap, src_gap) / 1e6, 3)
        self.r.extra["pause"] = asdict(p)
        if p.note:
            self.r.extra["note"] = p.note
        self.r.extra["sampler"] = {"rate_hz_src": round(src_res.rate_hz),
                                   "rate_hz_dst": round(dst_res.rate_hz)}
        if p.problem:
            # What the target's sampler did see near the switch-over, for the record.
            t0 = p.src_stop_ns or 0
            self.r.extra["dst_stalls_near_switch"] = [
                {"start_ms": round((st.start_ns - t0) / 1e6, 3),
                 "duration_ms": round(st.duration_ms, 3), "value": st.value}
                for st in _stalls(dst_res) if st.start_ns >= t0 - 5_000_000][:40]
            raise HarnessError(f"precopy pause: {p.problem}")

    # cpr-reboot -------------------------------------------------------------------------

    def _cpr_reboot(self) -> None:
        ctx = self.ctx
        src = self.src
        assert src is not None and src.qmp is not None and self.src_ram is not None
        assert self.mem is not None and self.mem.mem_path is not None
        if not self.bare:
            self._sampler(self.mem.mem_path, "src+dst")
            self._noise()
        state = os.path.join(self.wd, "vm.state")
        setup = [("migrate-set-parameters", {"mode": "cpr-reboot"}),
                 ("migrate-set-capabilities", {"capabilities": [
                     {"capability": "x-ignore-shared", "state": True}]})]
        sq = src.qmp
        for name, args in setup:
            sq.cmd(name, args)
        self._transfer_mark()
        t = time.monotonic()
        sq.cmd("migrate", {"uri": f"file:{state}"})
        q = self._wait_migration(src, ctx.transfer_timeout(self.mb))
        self._record_qm(q)
        self.r.extra["ram_transferred"] = self.r.main_bytes
        self.r.main_bytes = os.path.getsize(state)
        self.r.main_bytes_from = "state file size"
        tq = time.monotonic()
        src.shutdown()
        self.r.src_quit_ms = round((time.monotonic() - tq) * 1e3, 1)
        td = time.monotonic()
        dst = self._launch("dst", ["-incoming", "defer"])
        dq = dst.connect_qmp(ctx.start_timeout)
        self.r.dst_start_ms = round((time.monotonic() - td) * 1e3, 1)
        self.r.dst_start_until = "QMP ready (-incoming defer)"
        for name, args in setup:
            dq.cmd(name, args)
        dq.cmd("migrate-incoming", {"uri": f"file:{state}"})
        self._wait_running(dst, ctx.transfer_timeout(self.mb))
        self.r.switch_ms = round((time.monotonic() - t) * 1e3, 1)
        self._mark("resumed")
        self._single_file_pause()

    # after ------------------------------------------------------------------------------

    def _check_guest_continued(self) -> None:
        """The guest runs on the target: its counter moves past its pre-transfer value."""
        g = self.dst_ram if self.dst_ram is not None else self.src_ram
        assert g is not None and self.dst is not None
        dst = self.dst
        self.r.counter_after = self._wait_counter(
            g.counter, self.ctx.settle_timeout, "dst",
            "the guest's counter to move on the target", above=self.r.counter_before,
            alive=lambda: dst.check_alive("after the transfer"))
        self.r.boots_after = g.boots()
        if self.r.boots_after != self.r.boots_before:
            raise HarnessError(f"the guest was reset: boot count {self.r.boots_before} -> "
                               f"{self.r.boots_after}")


# --------------------------------------------------------------------------- the harness's cost

def measure_overhead(ctx: Context, rounds: int, progress: Callable[[str], None]
                     ) -> Dict[str, Any]:
    """A full conformance case vs the bare lean launch + transfer of the same pair."""
    from harness.pair import RunConfig, run_scenario
    from harness.verdict import judge

    sc = catalogue.get(OVERHEAD_CASE)
    cfg = RunConfig(qemu_src=ctx.qemu, qemu_dst=ctx.qemu, accel=ctx.accel)
    full: List[Dict[str, Any]] = []
    lean: List[Dict[str, Any]] = []
    for i in range(1, rounds + 1):
        case_dir = os.path.join(ctx.logroot, f"overhead-case-r{i}")
        t = time.monotonic()
        try:
            res = run_scenario(sc, cfg, case_dir)
            bad = judge(res)
            full.append({"round": i, "wall_s": round(time.monotonic() - t, 3),
                         "verdict": "pass" if not bad else "fail: " +
                         ", ".join(m.check for m in bad), "timings": res.timings})
        except HarnessError as exc:
            full.append({"round": i, "wall_s": None, "verdict": f"error: {exc}"[:300]})
        lr = LeanRun(ctx, METHODS["cpr-transfer"], sc.ram_mb, i, bare=True,
                     tag=f"overhead-lean-r{i}").run()
        lean.append({"round": i, "wall_s": lr.wall_s if lr.status == "ok" else None,
                     "status": lr.status, "reason": lr.reason})
        progress(f"overhead round {i}: full case {full[-1]['wall_s']} s "
                 f"({full[-1]['verdict']}), bare lean {lean[-1]['wall_s']} s")
    fs, ls = stats(r["wall_s"] for r in full), stats(r["wall_s"] for r in lean)
    out: Dict[str, Any] = {"case": OVERHEAD_CASE, "ram_mb": sc.ram_mb,
                           "full_case_s": fs, "bare_lean_s": ls,
                           "full_rounds": full, "lean_rounds": lean}
    if fs and ls:
        out["overhead_s"] = round(fs["median"] - ls["median"], 3)
        out["overhead_ratio"] = round(fs["median"] / ls["median"], 2) if ls["median"] else None
    return out


def time_matrix(accel: str, timeout: float, progress: Callable[[str], None],
                logroot: str) -> Dict[str, Any]:
    """The conformance matrix's wall time, serial and with ``-n 2`` (pytest subprocesses)."""
    out: Dict[str, Any] = {"runs": []}
    for label, extra in (("-n 1 (no xdist)", []), ("-n 2", ["-n", "2"])):
        reports = private_tmpdir("matrix")
        cmd = [sys.executable, "-m", "pytest", "suites/conformance", "-q",
               "-p", "no:cacheprovider", "--reports", reports, *extra]
        if accel != "auto":
            cmd += ["--accel", accel]
        log_path = os.path.join(logroot, f"matrix{'-n2' if extra else '-n1'}.log")
        t = time.monotonic()
        rc: Optional[int]
        with open(log_path, "wb") as log:
            p = subprocess.Popen(cmd, cwd=str(ROOT), stdin=subprocess.DEVNULL, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
            try:
                rc = p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                # pytest's own session: its QEMUs die with it (PDEATHSIG + janitor).
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                    p.wait(timeout=30)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
                rc = None
        wall = round(time.monotonic() - t, 1)
        summary = ""
        for line in reversed(tail(log_path, 30).splitlines()):
            if re.search(r"\d+ (passed|failed|error|skipped)", line):
                summary = line.strip("= ")
                break
        remove_tmpdir(reports)
        run = {"label": label, "command": " ".join(cmd[1:]), "wall_s": wall,
               "exit_code": rc, "summary": summary or ("timed out" if rc is None else ""),
               "log": log_path}
        out["runs"].append(run)
        progress(f"matrix {label}: {wall} s, exit {rc}: {run['summary']}")
    w = [r["wall_s"] for r in out["runs"]]
    if len(w) == 2 and w[1]:
        out["speedup"] = round(w[0] / w[1], 2)
    return out


# --------------------------------------------------------------------------- output

def _fmt(v: Optional[float], digits: int = 1) -> str:
    if v is None:
        return "-"
    if abs(v) >= 100 or float(v).is_integer():
        return f"{v:.0f}"
    return f"{v:.{digits}f}"


def _triple(s: Optional[Dict[str, float]], digits: int = 1) -> str:
    if s is None:
        return "-"
    return "/".join(_fmt(s[k], digits) for k in ("min", "median", "max"))


def human_bytes(n: Optional[float]) -> str:
    if n is None:
        return "-"
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n:.0f} B"


def table(doc: Dict[str, Any]) -> str:
    """The terminal table: one row per (method, size), min/median/max over rounds."""
    cols = [("method", 22), ("RAM", 5), ("ok", 4), ("guest pause ms", 17),
            ("QEMU downtime ms", 17), ("QEMU total-time ms", 19), ("main channel", 12),
            ("target start ms", 16), ("noise ms", 14)]
    head = " ".join(f"{n:<{w}}" if i < 2 else f"{n:>{w}}" for i, (n, w) in enumerate(cols))
    lines = ["min/median/max over rounds; main channel: median bytes", head, "-" * len(head)]
    for s in doc["summary"]:
        m = s["metrics"]
        ok = f"{s['ok']}/{s['rounds']}"
        mb = m.get("main_bytes")
        cells = [s["method"], size_label(s["ram_mb"]), ok, _triple(m["guest_pause_ms"]),
                 _triple(m["qemu_downtime_ms"], 0), _triple(m["qemu_total_time_ms"], 0),
                 human_bytes(mb["median"] if mb else None), _triple(m["dst_start_ms"], 0),
                 _triple(m["noise_floor_ms"])]
        lines.append(" ".join(f"{c:<{w}}" if i < 2 else f"{c:>{w}}"
                              for i, (c, (_, w)) in enumerate(zip(cells, cols))))
    lines += footer(doc)
    return "\n".join(lines)


def footer(doc: Dict[str, Any]) -> List[str]:
    out: List[str] = []
    starts = {s["method"]: s for s in doc["summary"]}
    until = {r["method"]: r["dst_start_until"] for r in doc["rounds"] if r["dst_start_until"]}
    if until:
        out.append("target start = launch until: " +
                   "; ".join(f"{k}: {v}" for k, v in until.items() if k in starts))
    dis = [s["disagreement"] for s in doc["summary"]
           if s.get("disagreement") and s["disagreement"]["disagrees"]]
    agree = [f"{s['method']} {size_label(s['ram_mb'])}" for s in doc["summary"]
             if s.get("disagreement") and not s["disagreement"]["disagrees"]]
    if dis:
        out.append("QEMU's downtime DISAGREES with the measured pause (medians; tolerance: the "
                   "median noise floor, 1 ms, or 10% of the downtime, whichever is largest):")
        for s in doc["summary"]:
            d = s.get("disagreement")
            if d and d["disagrees"]:
                out.append(f"  {size_label(s['ram_mb']):>4} {d['text']}")
    if agree:
        out.append("downtime agrees with the pause within the tolerance: " + ", ".join(agree))
    for s in doc["summary"]:
        for e in s["errors"]:
            out.append(f"ERROR {s['method']} {size_label(s['ram_mb'])} {e}")
        for k in s["skipped"]:
            out.append(f"skipped {s['method']} {size_label(s['ram_mb'])}: {k}")
    ov = doc.get("overhead")
    if ov and ov.get("full_case_s") and ov.get("bare_lean_s"):
        out.append(f"harness overhead ({ov['case']}, {size_label(ov['ram_mb'])}): full conformance "
                   f"case {_triple(ov['full_case_s'], 2)} s vs bare launch+transfer "
                   f"{_triple(ov['bare_lean_s'], 2)} s: +{ov['overhead_s']:.2f} s a case "
                   f"({ov['overhead_ratio']}x)")
    elif ov:
        out.append(f"harness overhead: not measured ({ov.get('note', 'errors')})")
    mx = doc.get("matrix")
    if mx and mx.get("runs"):
        out.append("conformance matrix wall time: " + "; ".join(
            f"{r['label']} {r['wall_s']} s ({r['summary'] or 'exit ' + str(r['exit_code'])})"
            for r in mx["runs"]) + (f"; speed-up {mx['speedup']}x" if mx.get("speedup") else ""))
    out.append(f"bench wall time {doc['wall_s']:.0f} s; {doc['qemu']['version']}, "
               f"accel {doc['accel']}, {doc['host']['cpus']} CPUs, load "
               f"{doc['host']['load_avg'][0]:.1f} at start, "
               f"{doc.get('load_avg_end', [0])[0]:.1f} at end")
    return out


def plot(doc: Dict[str, Any], path: str) -> None:
    """bench.png: guest pause, main-channel bytes and total-time vs RAM size."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"cpr-transfer": "tab:blue", "cpr-transfer-prealloc": "tab:cyan",
              "precopy": "tab:red", "cpr-reboot": "tab:green"}
    # Distinct markers: cpr-transfer with and without prealloc send the same bytes,
    # so their lines lie on top of each other.
    markers = {"cpr-transfer": "o", "cpr-transfer-prealloc": "D", "precopy": "s",
               "cpr-reboot": "^"}
    fig, axes = plt.subplots(1, 3, figsize=(18, 6))
    sizes = sorted({s["ram_mb"] for s in doc["summary"]})
    methods = list(dict.fromkeys(s["method"] for s in doc["summary"]))

    def series(method: str, key: str) -> Tuple[List[int], List[float], List[float], List[float]]:
        xs, med, lo, hi = [], [], [], []
        for s in doc["summary"]:
            st = s["metrics"].get(key)
            if s["method"] == method and st is not None:
                xs.append(s["ram_mb"])
                med.append(st["median"])
                lo.append(st["median"] - st["min"])
                hi.append(st["max"] - st["median"])
        return xs, med, lo, hi

    ax = axes[0]
    for i, method in enumerate(methods):
        c = colors.get(method, f"C{i}")
        xs, med, lo, hi = series(method, "guest_pause_ms")
        if xs:
            ax.errorbar(xs, med, yerr=[lo, hi], marker=markers.get(method, "o"), color=c,
                        capsize=4, label=f"{method}: guest pause (measured)")
        xs, med, _, _ = series(method, "qemu_downtime_ms")
        if xs:
            ax.plot(xs, med, linestyle="--", marker="x", color=c, alpha=0.7,
                    label=f"{method}: QEMU downtime")
    noise = stats(r["noise_floor_ms"] for r in doc["rounds"] if r["status"] == "ok")
    if noise:
        ax.axhspan(0, noise["median"], color="grey", alpha=0.15,
                   label=f"noise floor, idle pair (median {noise['median']:.1f} ms)")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_ylabel("ms (median; bars: min..max over rounds)")
    ax.set_title("Guest pause vs RAM size")

    ax = axes[1]
    for i, method in enumerate(methods):
        xs, med, lo, hi = series(method, "main_bytes")
        if xs:
            ax.errorbar(xs, med, yerr=[lo, hi], marker=markers.get(method, "o"), capsize=4,
                        color=colors.get(method, f"C{i}"), label=method,
                        markersize=9 if method == "cpr-transfer" else 6,
                        fillstyle="none" if method == "cpr-transfer" else "full")
    ax.set_yscale("log")
    ax.set_ylabel("bytes (ram.transferred; cpr-reboot: state file size)")
    ax.set_title("Bytes on the main channel vs RAM size")

    ax = axes[2]
    for i, method in enumerate(methods):
        c = colors.get(method, f"C{i}")
        xs, med, lo, hi = series(method, "qemu_total_time_ms")
        if xs:
            ax.errorbar(xs, med, yerr=[lo, hi], marker=markers.get(method, "o"), capsize=4,
                        color=c, label=f"{method}: QEMU total-time")
        xs, med, lo, hi = series(method, "dst_start_ms")
        if xs:
            ax.plot(xs, med, linestyle=":", marker="s", color=c, alpha=0.7,
                    label=f"{method}: target start")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_ylabel("ms (median)")
    ax.set_title("QEMU total-time and target start vs RAM size")

    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes)
        ax.set_xticklabels([size_label(s) for s in sizes])
        ax.set_xlabel("guest RAM (touched: every page resident)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"cpr-transfer vs precopy vs cpr-reboot: {doc['qemu']['version']}, "
                 f"accel {doc['accel']}, {doc['host']['cpus']} CPUs, "
                 f"{doc['config']['rounds']} round(s)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------- the command

def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m harness.bench",
        description="What cpr-transfer costs the guest, against precopy and cpr-reboot, "
                    "as guest RAM grows. Writes a table, bench.json and bench.png.")
    ap.add_argument("--sizes", metavar="LIST",
                    help=f"guest RAM sizes, comma-separated (default "
                         f"{','.join(DEFAULT_SIZES)}; sizes that do not fit are skipped)")
    ap.add_argument("--methods", metavar="LIST",
                    help=f"comma-separated, from: {', '.join(METHODS)} (default: all)")
    ap.add_argument("--rounds", type=int, metavar="N",
                    help=f"rounds per method and size (default {DEFAULT_ROUNDS})")
    ap.add_argument("--out", metavar="DIR", default=os.environ.get("CPRH_REPORTS", "reports"),
                    help="where bench.json/.png/.txt and the per-run logs go (default reports/)")
    ap.add_argument("--quick", action="store_true",
                    help=f"sizes {','.join(QUICK_SIZES)} and 1 round (for the self-test "
                         f"and CI); --sizes/--rounds still win")
    ap.add_argument("--accel", choices=("auto", "kvm", "tcg"),
                    default=os.environ.get("CPRH_ACCEL", "auto"))
    ap.add_argument("--qemu", metavar="PATH",
                    default=os.environ.get("CPRH_QEMU_SRC", "qemu-system-x86_64"),
                    help="the QEMU for both sides (default qemu-system-x86_64)")
    ap.add_argument("--skip-matrix", action="store_true",
                    help="do not time the conformance matrix (-n 1 vs -n 2)")
    ap.add_argument("--skip-overhead", action="store_true",
                    help="do not time a full conformance case against the bare runner")
    ap.add_argument("--matrix-timeout", type=float, default=900.0, metavar="S",
                    help="bound on each conformance matrix run (default 900 s)")
    ap.add_argument("--precopy-bandwidth", default="max", metavar="BYTES|max|default",
                    help="precopy max-bandwidth: 'max' (100 GiB/s, the default), "
                         "'default' (QEMU's own, 128 MiB/s), or bytes per second")
    args = ap.parse_args(argv)
    sizes = args.sizes.split(",") if args.sizes else list(QUICK_SIZES if args.quick
                                                          else DEFAULT_SIZES)
    args.sizes_mb = [parse_size_mb(s) for s in sizes if s.strip()]
    if not args.sizes_mb:
        raise UsageError("--sizes: no size given")
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else list(METHODS)
    for m in methods:
        if m not in METHODS:
            raise UsageError(f"--methods: unknown method {m!r}; known: {', '.join(METHODS)}")
    args.method_list = methods
    if args.rounds is None:
        args.rounds = 1 if args.quick else DEFAULT_ROUNDS
    if args.rounds < 1:
        raise UsageError("--rounds must be at least 1")
    bw = args.precopy_bandwidth
    if bw == "max":
        args.bandwidth = PRECOPY_BANDWIDTH
    elif bw == "default":
        args.bandwidth = None
    elif bw.isdigit() and int(bw) > 0:
        args.bandwidth = int(bw)
    else:
        raise UsageError(f"--precopy-bandwidth {bw!r}: use max, default or a byte count")
    return args


def run(args: argparse.Namespace, progress: Callable[[str], None]) -> Dict[str, Any]:
    t_start = time.monotonic()
    out = os.path.abspath(args.out)
    logroot = os.path.join(out, "bench")
    os.makedirs(logroot, exist_ok=True)
    host = host_info()
    path, accel, version = resolve(args.qemu, args.accel)
    ctx = Context(qemu=path, accel=accel, qemu_version=version, logroot=logroot,
                  precopy_bandwidth=args.bandwidth)
    rounds: List[RoundResult] = []
    for mb in args.sizes_mb:
        for i in range(1, args.rounds + 1):
            for name in args.method_list:
                m = METHODS[name]
                fits, why = mem_fits(mb, m.copies, m.backend == "file-shm")
                if not fits:
                    r = RoundResult(name, mb, i, status="skip", reason=why)
                else:
                    r = LeanRun(ctx, m, mb, i).run()
                rounds.append(r)
                progress(f"{name:22} {size_label(mb):>4} round {i}: {r.status}"
                         + (f" ({r.reason})" if r.reason else
                            f", pause {_fmt(r.guest_pause_ms, 2)} ms, downtime "
                            f"{_fmt(r.qemu_downtime_ms)} ms, total {_fmt(r.qemu_total_time_ms)}"
                            f" ms, {human_bytes(r.main_bytes)}, {r.wall_s:.1f} s"))
    doc: Dict[str, Any] = {
        "schema": 1,
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "python -m harness.bench " + " ".join(args.argv),
        "host": host,
        "qemu": {"path": path, "version": version},
        "accel": accel,
        "config": {"sizes_mb": args.sizes_mb, "methods": args.method_list,
                   "rounds": args.rounds, "noise_window_s": ctx.noise_s,
                   "precopy_max_bandwidth": args.bandwidth,
                   "sampler_threshold_us": 50, "guest": "x86-bios",
                   "machine": "q35", "smp": 1},
        "methods": {k: asdict(v) for k, v in METHODS.items() if k in args.method_list},
        "rounds": [r.to_dict() for r in rounds],
        "summary": summarize(rounds),
    }
    doc["disagreements"] = [s["disagreement"]["text"] for s in doc["summary"]
                            if s["disagreement"] and s["disagreement"]["disagrees"]]
    doc["bench_s"] = round(time.monotonic() - t_start, 1)
    if not args.skip_overhead:
        doc["overhead"] = measure_overhead(ctx, args.rounds, progress)
    if not args.skip_matrix:
        doc["matrix"] = time_matrix(args.accel, args.matrix_timeout, progress, logroot)
    doc["load_avg_end"] = list(os.getloadavg())
    doc["wall_s"] = round(time.monotonic() - t_start, 1)
    return doc


def write(doc: Dict[str, Any], out: str) -> Dict[str, str]:
    os.makedirs(out, exist_ok=True)
    paths = {k: os.path.join(out, f"bench.{k}") for k in ("json", "png", "txt")}
    doc["table"] = table(doc)
    with open(paths["txt"], "w") as f:
        f.write(doc["table"] + "\n")
    plot(doc, paths["png"])
    with open(paths["json"], "w") as f:
        json.dump(doc, f, indent=1, default=str)
        f.write("\n")
    return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m harness.bench``: 0 if every round ran, 1 if some failed, 2 on bad input."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_args(argv)
        args.argv = argv
        from harness.cleanup import check_tmp_base
        check_tmp_base()

        def progress(msg: str) -> None:
            print(msg, file=sys.stderr, flush=True)

        doc = run(args, progress)
        paths = write(doc, os.path.abspath(args.out))
    except HarnessError as exc:  # bad input, QEMU missing: one line, no traceback
        print(f"cpr-harness bench: error: {str(exc).strip()}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # the round in flight has torn down in its finally
        print("cpr-harness bench: interrupted; nothing written", file=sys.stderr)
        return 130
    print(doc["table"])
    print(f"wrote {paths['json']}, {paths['png']}, {paths['txt']}")
    return 1 if any(r["status"] == "error" for r in doc["rounds"]) else 0


if __name__ == "__main__":
    sys.exit(main())
