"""One bench round: a scenario of the method's mode on the pair driver, measured.

A round is :func:`harness.run.driver.run_scenario` with the ``MEASURE`` evidence plan
(the RAM is touched and the pause sampled, no conformance checks) and hooks that take
the figures before teardown; the "bare" round (the harness-overhead baseline) runs the
same driver with every piece of evidence switched off. There is no second runner.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from harness.core.cleanup import private_tmpdir, remove_tmpdir
from harness.core.errors import HarnessError, UsageError
from harness.core.logs import tail
from harness.evidence.pause import M_DST_RESUME, M_SRC_STOP
from harness.evidence.collector import (M_IDLE_END, M_NOISE, M_RESUMED, M_TRANSFER, OFF, SRC,
                                       EvidencePlan)
from harness.qemu.probe import probe
from harness.run.config import RunConfig
from harness.run.driver import Hooks, PairDriver, run_scenario
from harness.run.attempt import Attempt
from harness.run.result import PairResult
from harness.run.verdict import failed, judge
from harness.scenario.model import Observed
from harness.scenario import catalogue
from harness.scenario.model import Scenario
from harness.tools.bench.figures import (RoundResult, final_stall, precopy_pause, split_marks,
                                         stats, transfer_window_gap_ms)
from harness.tools.bench.output import size_label

ROOT = Path(__file__).resolve().parents[3]
#: The conformance case whose cost the harness-overhead measurement compares.
OVERHEAD_CASE = "transfer/unix-unix-memfd-immediate-q35"
#: Precopy's max-bandwidth. QEMU's default is 128 MiB/s (a 8 GiB guest would need
#: ~64 s); a local unix socket has no reason for a cap, so the benchmark lifts it.
PRECOPY_BANDWIDTH = 100 << 30


@dataclass(frozen=True)
class Method:
    name: str
    mode: str
    backend: str
    prealloc: bool
    #: Guest RAM copies the host must hold at once (precopy: source + target).
    copies: int
    doc: str


METHODS: Dict[str, Method] = {m.name: m for m in (
    Method("cpr-transfer", "cpr-transfer", "memfd", False, 1,
           "cpr-transfer, memory-backend-memfd share=on: the target maps the same memfd"),
    Method("cpr-transfer-prealloc", "cpr-transfer", "memfd", True, 1,
           "cpr-transfer, memory-backend-memfd share=on,prealloc=on on both sides"),
    Method("precopy", "precopy", "memfd", False, 2,
           "normal precopy migration over a unix socket to a second local QEMU with its "
           "own memfd: the main stream carries all RAM"),
    Method("cpr-reboot", "cpr-reboot", "file-shm", False, 1,
           "cpr-reboot to a file with x-ignore-shared: one memory-backend-file share=on on "
           "/dev/shm; the source quits, then the target starts and loads the file"),
)}


@dataclass
class Context:
    """What every round shares: the run's config (both sides the same QEMU), its accel."""
    cfg: RunConfig
    accel: str
    qemu_version: str
    logroot: str
    noise_s: float
    #: Precopy's max-bandwidth (bytes/s), or None for QEMU's own default.
    precopy_bandwidth: Optional[int] = PRECOPY_BANDWIDTH

    def transfer_timeout(self, ram_mb: int) -> float:
        # Precopy of a touched 8 GiB guest moves 8 GiB; the others move kilobytes.
        return 60.0 + 20.0 * ram_mb / 1024


def context(qemu: str, accel: str, logroot: str, noise_s: float,
            precopy_bandwidth: Optional[int] = PRECOPY_BANDWIDTH) -> Context:
    """:raise UsageError: KVM asked for but not usable."""
    caps = probe(qemu)
    if accel == "auto":
        accel = "kvm" if caps.kvm_usable else "tcg"
    elif accel == "kvm" and not caps.kvm_usable:
        raise UsageError(f"--accel kvm: KVM is not usable with {caps.path}: {caps.kvm_reason}")
    cfg = RunConfig(qemu_src=caps.path, qemu_dst=caps.path, accel=accel)
    return Context(cfg, accel, caps.version_str, logroot, noise_s, precopy_bandwidth)


def scenario(method: Method, ram_mb: int, precopy_bandwidth: Optional[int] = None) -> Scenario:
    base = catalogue.get(OVERHEAD_CASE)
    params = (("max-bandwidth", precopy_bandwidth),) \
        if method.mode == "precopy" and precopy_bandwidth else ()
    return base.with_(id=f"bench/{method.name}-{size_label(ram_mb)}", mode=method.mode,
                      backend=method.backend, prealloc=method.prealloc, ram_mb=ram_mb,
                      parameters=params)


class _Measure:
    """The hooks of a measured round: figures taken while both sides still run."""

    def __init__(self, method: Method, r: RoundResult):
        self.m, self.r = method, r

    def before_stop_samplers(self, d: PairDriver) -> None:
        if self.m.mode != "precopy" or "dst" not in d.ev.samplers:
            return
        # Stop the source's sampler first: its final stall says where the target's
        # sampler needs marks (placed in its past) to isolate the stall at that value.
        src_res = d.ev.samplers[SRC].stop()
        fin = final_stall(src_res)
        if fin is not None:
            for label, t_ns in split_marks(fin.start_ns, d.seen_running_ns["first"]):  # type: ignore[attr-defined]
                d.ev.samplers["dst"].mark_at(label, t_ns)

    def after_transfer(self, d: PairDriver, a: Attempt) -> None:
        res = d.ev.results.get(SRC)
        if res is None:
            return
        noise = res.longest_between(M_NOISE, M_IDLE_END) if d.plan.baseline_s > 0 else None
        self.r.noise_floor_ms = round(noise.duration_ms, 3) if noise else 0.0
        if self.m.mode == "precopy":
            self._precopy(d, noise)
            return
        # The stall across QEMU's STOP and RESUME: the very figures a conformance case
        # judges (harness.evidence.pause), read from the attempt's pause record.
        marks = {m.label for m in res.marks}
        pause = res.longest_between(M_SRC_STOP, M_DST_RESUME) \
            if {M_SRC_STOP, M_DST_RESUME} <= marks else res.longest_between(M_TRANSFER, M_RESUMED)
        self._where(res, pause.start_ns if pause else None, noise)
        p = a.pause
        if p is not None and p.measured:
            self.r.guest_pause_ms, self.r.guest_pause_max_ms = p.switch_ms, p.switch_max_ms
            gap = (p.console_gap or {}).get("gap_ms")
            self.r.console_gap_ms = None if gap is None else round(gap, 3)
            self.r.extra["pause_record"] = {"switch_ms": p.switch_ms,
                                            "switch_max_ms": p.switch_max_ms,
                                            "qemu_span_ms": p.qemu_span_ms}
        else:  # no stall above the sampler's threshold: the pause was shorter than it
            self.r.guest_pause_ms = round(pause.duration_ms, 3) if pause else 0.0
            self.r.guest_pause_max_ms = round(pause.max_ms, 3) if pause else \
                res.threshold_ns / 1e6
        self.r.sampler_gap_ms = transfer_window_gap_ms(res, M_TRANSFER, M_RESUMED)
        self.r.extra["sampler"] = {"rate_hz": round(res.rate_hz),
                                   "median_interval_ns": res.median_interval_ns,
                                   "counter_went_back": res.reset,
                                   "pause_stall": None if pause is None else pause.__dict__}

    def _precopy(self, d: PairDriver, noise: Any) -> None:
        src_res, dst_res = d.ev.results[SRC], d.ev.results.get("dst")
        if dst_res is None:
            raise HarnessError("precopy pause: the target's sampler gave no result")
        p = precopy_pause(src_res, dst_res)
        self._where(src_res, p.src_stop_ns, noise)
        self.r.guest_pause_ms, self.r.guest_pause_max_ms = p.pause_ms, p.pause_max_ms
        # The samplers' own gaps around the switch-over: the target's split windows, and
        # the source's gap just before it first read the final value.
        fin = final_stall(src_res)
        split_gap = max((w.max_sampler_gap_ns for w in dst_res.windows
                         if w.start.startswith("split")), default=0)
        src_gap = fin.max_ns - fin.duration_ns if fin is not None else 0
        self.r.sampler_gap_ms = round(max(split_gap, src_gap) / 1e6, 3)
        self.r.extra["pause"] = p.__dict__
        if p.note:
            self.r.extra["note"] = p.note
        self.r.extra["sampler"] = {"rate_hz_src": round(src_res.rate_hz),
                                   "rate_hz_dst": round(dst_res.rate_hz)}
        if p.problem:
            raise HarnessError(f"precopy pause: {p.problem}")

    def _where(self, res: Any, pause_start_ns: Optional[int], noise: Any) -> None:
        """Where the pause began relative to ``migrate``; whether it is also the noise."""
        marks = {m.label: m.t_ns for m in res.marks}
        if pause_start_ns is not None and M_TRANSFER in marks:
            self.r.extra["pause_at_ms"] = round((pause_start_ns - marks[M_TRANSFER]) / 1e6, 3)
        if noise is not None and pause_start_ns == noise.start_ns:
            self.r.extra["noise_is_pause"] = True


def _figures(r: RoundResult, res: PairResult, method: Method) -> None:
    """The round's figures from the pair's result."""
    first = res.first
    t, ph, q = res.timings, res.phases, (first.query_migrate if first else {})
    r.src_start_ms = round(t["src_start"] * 1e3, 1) if "src_start" in t else None
    r.dst_start_ms = round(ph["launch-dst"] * 1e3, 1) if "launch-dst" in ph else None
    r.dst_start_until = {"cpr-transfer": "cpr socket listening",
                         "precopy": "QMP ready, main socket listening",
                         "cpr-reboot": "QMP ready (-incoming defer)"}[method.mode]
    if "first_migrate_issued" in t and "first_dst_running" in t:
        r.switch_ms = round((t["first_dst_running"] - t["first_migrate_issued"]) * 1e3, 1)
    r.fill_s = round(ph["fill"], 3) if "fill" in ph else None
    r.src_quit_ms = round(ph["src-quit"] * 1e3, 1) if "src-quit" in ph else None
    r.qemu_downtime_ms = q.get("downtime")
    r.qemu_total_time_ms = q.get("total-time")
    r.qemu_setup_time_ms = q.get("setup-time")
    ram = q.get("ram") or {}
    r.main_bytes, r.main_bytes_from = ram.get("transferred"), "ram.transferred"
    if "state_file_bytes" in res.extra:
        r.extra["ram_transferred"] = r.main_bytes
        r.main_bytes, r.main_bytes_from = res.extra["state_file_bytes"], "state file size"
    r.extra["ram"] = {k: ram.get(k) for k in ("transferred", "total", "normal",
                                              "normal-bytes", "duplicate",
                                              "dirty-sync-count", "mbps")}
    if "max_bandwidth" in res.extra:
        r.extra["max_bandwidth"] = res.extra["max_bandwidth"]
    r.extra["phases"] = dict(ph)
    r.counter_before = res.counter_before
    r.counter_after = first.counter_after if first else None
    r.boots_before = res.boots_before
    r.boots_after = first.boots_after if first else None


def _problem(res: PairResult) -> str:
    """Why a round's transfer does not count: it did not complete, or the guest did
    not continue on the target ("" when it did)."""
    a = res.first
    if a is None or a.observed is not Observed.COMPLETED:
        return f"transfer {res.observed or 'not settled'}: {res.observed_message[-300:]}"
    if not a.counter_moved:
        return f"the guest's counter did not move on the target ({a.counter_after})"
    if a.boots_after != res.boots_before:
        return f"the guest was reset: boot count {res.boots_before} -> {a.boots_after}"
    return ""


def run_round(ctx: Context, method: Method, ram_mb: int, round_no: int, bare: bool = False,
              tag: str = "") -> RoundResult:
    """One measured (or bare) round; an error is recorded, not raised."""
    r = RoundResult(method.name, ram_mb, round_no)
    logdir = os.path.join(ctx.logroot, tag or f"{method.name}-{size_label(ram_mb)}-r{round_no}")
    r.logs = logdir
    measure = _Measure(method, r)
    hooks = Hooks() if bare else Hooks(before_stop_samplers=measure.before_stop_samplers,
                                       after_transfer=measure.after_transfer)
    plan = OFF if bare else EvidencePlan(checks=False, baseline_s=ctx.noise_s, observe=False,
                                         timeline=False)
    cfg = ctx.cfg.with_(timeouts=replace(ctx.cfg.timeouts, transfer=ctx.transfer_timeout(ram_mb)))
    t0 = time.monotonic()
    try:
        res = run_scenario(scenario(method, ram_mb, ctx.precopy_bandwidth), cfg, logdir,
                           hooks=hooks, plan=plan)
        _figures(r, res, method)
        problem = _problem(res)
        if problem:
            raise HarnessError(problem)
    except Exception as exc:  # noqa: BLE001 - one bad round must not end the bench
        r.status = "error"
        first = (str(exc).strip().splitlines() or [""])[0]
        r.reason = (first if isinstance(exc, HarnessError)
                    else f"{type(exc).__name__}: {first}")[:400]
    finally:
        r.wall_s = round(time.monotonic() - t0, 3)
    return r


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


# --------------------------------------------------------------------------- the harness's cost

def measure_overhead(ctx: Context, rounds: int, progress: Callable[[str], None]
                     ) -> Dict[str, Any]:
    """A full conformance case vs the bare launch + transfer of the same pair, on the
    same driver; and where the full case's time goes, phase by phase."""
    sc = catalogue.get(OVERHEAD_CASE)
    full: List[Dict[str, Any]] = []
    bare: List[Dict[str, Any]] = []
    for i in range(1, rounds + 1):
        case_dir = os.path.join(ctx.logroot, f"overhead-case-r{i}")
        t = time.monotonic()
        try:
            res = run_scenario(sc, ctx.cfg, case_dir)
            bad = failed(judge(res))
            full.append({"round": i, "wall_s": round(time.monotonic() - t, 3),
                         "verdict": "pass" if not bad else "fail: " +
                         ", ".join(m.name for m in bad), "phases": res.phases})
        except HarnessError as exc:
            full.append({"round": i, "wall_s": None, "verdict": f"error: {exc}"[:300]})
        br = run_round(ctx, METHODS["cpr-transfer"], sc.ram_mb, i, bare=True,
                       tag=f"overhead-bare-r{i}")
        bare.append({"round": i, "wall_s": br.wall_s if br.status == "ok" else None,
                     "status": br.status, "reason": br.reason,
                     "phases": br.extra.get("phases", {})})
        progress(f"overhead round {i}: full case {full[-1]['wall_s']} s "
                 f"({full[-1]['verdict']}), bare pair {bare[-1]['wall_s']} s")
    fs, bs = stats(r["wall_s"] for r in full), stats(r["wall_s"] for r in bare)
    out: Dict[str, Any] = {"case": OVERHEAD_CASE, "ram_mb": sc.ram_mb,
                           "observe_s": ctx.cfg.observe_s,
                           "full_case_s": fs, "bare_pair_s": bs,
                           "full_rounds": full, "bare_rounds": bare,
                           "breakdown": _breakdown(full), "breakdown_bare": _breakdown(bare)}
    if fs and bs:
        out["overhead_s"] = round(fs["median"] - bs["median"], 3)
        out["overhead_ratio"] = round(fs["median"] / bs["median"], 2) if bs["median"] else None
    return out


def _breakdown(rounds: List[Dict[str, Any]]) -> Dict[str, float]:
    """Median seconds per phase over the rounds that ran."""
    names = list(dict.fromkeys(k for r in rounds for k in (r.get("phases") or {})))
    out = {}
    for n in names:
        s = stats((r.get("phases") or {}).get(n) for r in rounds)
        if s:
            out[n] = round(s["median"], 3)
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
