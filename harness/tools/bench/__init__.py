"""Benchmark: what cpr-transfer costs the guest, against the alternatives, as RAM grows.

``python -m harness bench`` runs, for each guest RAM size and each method, the
bare-metal guest with its RAM touched (filled with the seeded pattern through the
memory file, so every page is resident) on the pair driver (:mod:`.rounds`), several
rounds, and reports min/median/max of:

* the guest pause as the harness measures it: the host-side sampler
  (:mod:`harness.evidence.sampler`) reading the guest's progress counter through the
  memory file(s), beside QEMU's own ``downtime`` and ``total-time``;
* the bytes on the main channel (``ram.transferred``, or the state file's size);
* the time to start the target (launch to listening / to QMP ready).

Methods (:data:`METHODS`): cpr-transfer (with and without ``prealloc=on``), normal
precopy to a second local QEMU over a unix socket (separate memfds: all RAM goes
through the stream), and cpr-reboot through a file with ``x-ignore-shared`` (one
``memory-backend-file,share=on`` on /dev/shm for both QEMUs, the source quits before
the target starts).

It also times the harness's own cost on the same driver: a full conformance case
against the bare launch + transfer of the same pair (every piece of evidence off),
where the full case's time goes phase by phase, and the conformance matrix's wall time
with and without ``-n 2``.

Output: a table on the terminal (and ``bench.txt``), ``bench.json`` (every round, the
summaries, host and QEMU) and ``bench.png``. Method and figures: ``docs/bench.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict
from typing import Any, Callable, Dict, List, Optional, Sequence

from harness.core.cleanup import check_tmp_base
from harness.core.errors import HarnessError, UsageError
from harness.evidence.collector import NOISE_WINDOW_S
from harness.tools.bench.figures import (RoundResult, disagreement, final_stall,  # noqa: F401
                                         precopy_pause, split_marks, stats, summarize)
from harness.tools.bench.figures import (SPLIT_COARSE_MAX, SPLIT_COARSE_MIN_NS,  # noqa: F401
                                         SPLIT_FINE_AFTER_NS, SPLIT_FINE_BEFORE_NS,
                                         SPLIT_FINE_NS)
from harness.tools.bench.output import _fmt, human_bytes, plot, size_label, table
from harness.tools.bench.rounds import (METHODS, OVERHEAD_CASE, PRECOPY_BANDWIDTH,  # noqa: F401
                                        context, measure_overhead, mem_fits, run_round,
                                        time_matrix)
from harness.tools.sweep import DEFAULT_SIZES, parse_size_mb

EXIT_USAGE = 2
#: 8G is left out of the default: with 3 rounds it alone takes ~7 minutes on the
#: 2-core reference host (precopy of a touched 8 GiB guest ~60-80 s a round, first
#: touch of fresh memory ~0.5 GB/s). ``--sizes 256M,1G,4G,8G`` runs it (sizes that do
#: not fit are skipped).
QUICK_SIZES = ("256M", "1G")
DEFAULT_ROUNDS = 3


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


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m harness bench",
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
                    help="do not time a full conformance case against the bare pair")
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
    ctx = context(args.qemu, args.accel, logroot, NOISE_WINDOW_S, args.bandwidth)
    rounds: List[RoundResult] = []
    for mb in args.sizes_mb:
        for i in range(1, args.rounds + 1):
            for name in args.method_list:
                m = METHODS[name]
                fits, why = mem_fits(mb, m.copies, m.backend == "file-shm")
                r = run_round(ctx, m, mb, i) if fits else \
                    RoundResult(name, mb, i, status="skip", reason=why)
                rounds.append(r)
                progress(f"{name:22} {size_label(mb):>4} round {i}: {r.status}"
                         + (f" ({r.reason})" if r.reason else
                            f", pause {_fmt(r.guest_pause_ms, 2)} ms, downtime "
                            f"{_fmt(r.qemu_downtime_ms)} ms, total {_fmt(r.qemu_total_time_ms)}"
                            f" ms, {human_bytes(r.main_bytes)}, {r.wall_s:.1f} s"))
    doc: Dict[str, Any] = {
        "schema": 1,
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "python -m harness bench " + " ".join(args.argv),
        "host": host,
        "qemu": {"path": ctx.cfg.qemu_src, "version": ctx.qemu_version},
        "accel": ctx.accel,
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
    """``python -m harness bench``: 0 if every round ran, 1 if some failed, 2 on bad input."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_args(argv)
        args.argv = argv
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
