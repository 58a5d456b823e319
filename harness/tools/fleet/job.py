"""One matrix entry of the fleet pipeline: the conformance suite on this host, for one
QEMU build or ordered pair and one accel, into its own results directory.

The entry comes from the environment, as GitLab's ``parallel: matrix:`` sets it:

=================  =============================================================
``CPRH_HOST_CLASS`` the host class: the runner tag the job ran under
``CPRH_SRC``        the source QEMU's version (``10.0.2``; fetched by get-qemu.sh)
``CPRH_DST``        the target QEMU's version (empty: the same build as the source)
``CPRH_ACCEL``      ``kvm``, ``tcg`` or ``auto``
``CPRH_SUITES``     suites, space separated (``core``), or ``all``
``CPRH_SCENARIOS``  optional: only these scenario ids, space separated (then the
                    suites are not used)
``CPRH_JOBS``       pytest-xdist workers of the run (default 2)
=================  =============================================================

The other run settings (``CPRH_OBSERVE_S``, ``CPRH_MAX_PAUSE_MS``, ``CPRH_CASE_TIMEOUT``,
``CPRH_SLOW``, ``CPRH_SOAK_HOPS``) reach ``harness run`` through the environment as
they are. Results go to ``RESULTS/<host class>/<run>/`` (``10.0.2-kvm``,
``10.0.2-to-11.1.3-kvm``) with ``fleet.json``: the entry, the exit status, the job and
the runner as CI names them.

Exit status: 0 when the run wrote its matrix (its verdicts are the merge's to judge
against the baseline: a night fails on a regression, not on a known failure); 1 when
it did not; 2 on bad input; 75 when fetching a QEMU failed in a way that may pass on
a retry (the archive unreachable, the fetch over ``CPRH_FETCH_TIMEOUT``): the pipeline
retries that exit code, and nothing else of a run.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from harness.core.errors import HarnessError, UsageError
from harness.scenario import catalogue

ROOT = Path(__file__).resolve().parents[3]
GET_QEMU = ROOT / "scripts" / "get-qemu.sh"
DEFAULT_RESULTS = ROOT / "reports" / "fleet" / "runs"
FLEET_FILE = "fleet.json"
EX_TEMPFAIL = 75
ACCELS = ("kvm", "tcg", "auto")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_VERSION = re.compile(r"^\d+\.\d+\.\d+$")
#: get-qemu's words for a failure a retry may cure.
_TRANSIENT = ("cannot reach", "waited 2 h for the lock", "Temporary failure")
#: What CI says about the job (GitLab's predefined variables), recorded as is.
CI_FACTS = {"job": "CI_JOB_NAME", "job_id": "CI_JOB_ID", "job_url": "CI_JOB_URL",
            "pipeline_id": "CI_PIPELINE_ID", "pipeline_url": "CI_PIPELINE_URL",
            "runner": "CI_RUNNER_DESCRIPTION", "runner_tags": "CI_RUNNER_TAGS",
            "commit": "CI_COMMIT_SHORT_SHA"}


class TempFail(HarnessError):
    """An infrastructure failure a retry may cure (exit 75)."""


@dataclass(frozen=True)
class Entry:
    """One matrix entry."""
    host_class: str
    src: str
    dst: str
    accel: str
    suites: Tuple[str, ...]
    scenarios: Tuple[str, ...]
    jobs: int

    @property
    def run_name(self) -> str:
        pair = self.src if self.src == self.dst else f"{self.src}-to-{self.dst}"
        return f"{pair}-{self.accel}"

    def results_dir(self, root: Path) -> Path:
        return Path(root) / self.host_class / self.run_name


def _required(env: Mapping[str, str], name: str, what: str) -> str:
    value = (env.get(name) or "").strip()
    if not value:
        raise UsageError(f"fleet: {name} is empty: the matrix entry must set it ({what})")
    return value


def _suites(env: Mapping[str, str], scenarios: Tuple[str, ...]) -> Tuple[str, ...]:
    """The suites to run; none when scenarios are named (they narrow the run)."""
    raw = env.get("CPRH_SUITES")
    words = tuple((raw or "").replace(",", " ").split())
    if scenarios:
        return ()
    if raw is not None and not words:
        raise UsageError("fleet: CPRH_SUITES is empty: name suites (core, transfer, "
                         "refusals, faults) or 'all'")
    if words == ("all",) or not words:
        return ()
    for name in words:
        try:
            catalogue.suite(name)
        except UsageError as exc:
            raise UsageError(f"fleet: CPRH_SUITES: {exc}") from None
    return words


def entry_from_env(env: Mapping[str, str]) -> Entry:
    """The matrix entry in ``env``. :raise UsageError: one line naming the bad variable."""
    host = _required(env, "CPRH_HOST_CLASS", "the host class: the runner tag, e.g. kvm-intel")
    if not _NAME.match(host):
        raise UsageError(f"fleet: CPRH_HOST_CLASS {host!r} is not a tag name "
                         "(letters, digits, '.', '_', '-'; at most 63)")
    src = _required(env, "CPRH_SRC", "the source QEMU's version, e.g. 10.0.2")
    dst = (env.get("CPRH_DST") or "").strip() or src
    for name, v in (("CPRH_SRC", src), ("CPRH_DST", dst)):
        if not _VERSION.match(v):
            raise UsageError(f"fleet: {name} {v!r} is not a QEMU version (X.Y.Z, e.g. 11.1.3)")
    accel = _required(env, "CPRH_ACCEL", "kvm, tcg or auto")
    if accel not in ACCELS:
        raise UsageError(f"fleet: CPRH_ACCEL {accel!r}: use one of {', '.join(ACCELS)}")
    scenarios = tuple((env.get("CPRH_SCENARIOS") or "").replace(",", " ").split())
    for sid in scenarios:
        try:
            catalogue.get(sid)
        except UsageError as exc:
            raise UsageError(f"fleet: CPRH_SCENARIOS: {exc}") from None
    raw_jobs = (env.get("CPRH_JOBS") or "2").strip()
    if not raw_jobs.isdigit() or int(raw_jobs) < 1:
        raise UsageError(f"fleet: CPRH_JOBS {raw_jobs!r}: expected a whole number >= 1")
    return Entry(host, src, dst, accel, _suites(env, scenarios), scenarios, int(raw_jobs))


def _pump(stream: Any, sink: List[str]) -> None:
    for line in stream:
        sys.stderr.write(line)
        sys.stderr.flush()
        sink.append(line.rstrip("\n"))


def qemu_path(version: str, timeout_s: float) -> str:
    """The path of QEMU ``version`` (scripts/get-qemu.sh: cached, or fetched now).

    :raise TempFail: the fetch timed out or could not reach the archive;
        UsageError: get-qemu does not know the version; HarnessError: any other failure.
    """
    proc = subprocess.Popen(["bash", str(GET_QEMU), version], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    lines: List[str] = []
    stdout: List[str] = []
    pumps = [threading.Thread(target=_pump, args=(proc.stderr, lines), daemon=True),
             threading.Thread(target=lambda: stdout.append(proc.stdout.read()), daemon=True)]
    for t in pumps:
        t.start()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # get-qemu's apt, make... with it
        proc.wait()
        raise TempFail(f"fleet: fetching QEMU {version} took over {timeout_s:.0f} s "
                       "(CPRH_FETCH_TIMEOUT): an infrastructure failure, retried") from None
    for t in pumps:
        t.join(10)
    out = "".join(stdout)
    said = next((ln for ln in reversed(lines) if ln.startswith("get-qemu:")), "")
    said = said[len("get-qemu:"):].strip() or f"exit {proc.returncode}"
    if proc.returncode == 0 and out.strip():
        return out.strip().splitlines()[-1]
    if any(t in said for t in _TRANSIENT):
        raise TempFail(f"fleet: QEMU {version}: {said}")
    if proc.returncode == 2 or said.startswith("no QEMU"):
        raise UsageError(f"fleet: QEMU {version}: {said}")
    raise HarnessError(f"fleet: QEMU {version} could not be had: {said}")


def harness_command(entry: Entry, src: str, dst: str, out: Path) -> List[str]:
    cmd = [sys.executable, "-m", "harness", "run", "--qemu-src", src, "--qemu-dst", dst,
           "--accel", entry.accel, "--reports", str(out), "--no-allure-html",
           "-j", str(entry.jobs)]
    for name in entry.suites:
        cmd += ["--suite", name]
    for sid in entry.scenarios:
        cmd += ["--scenario", sid]
    return cmd


def ci_facts(env: Mapping[str, str]) -> Dict[str, Any]:
    facts: Dict[str, Any] = {k: env.get(v) for k, v in CI_FACTS.items() if env.get(v)}
    facts["hostname"] = socket.gethostname()
    if env.get("CPRH_FLEET_LOCAL") == "1":
        facts["local_standin"] = ("gitlab-ci-local on this machine: runner tags are not "
                                  "emulated, every host class ran here")
        for made_up in ("job_url", "pipeline_url"):  # gitlab-ci-local's, leading nowhere
            facts.pop(made_up, None)
    return facts


def write_fleet_file(out: Path, entry: Entry, env: Mapping[str, str], **state: Any) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    doc = {"schema": 1, "entry": {**asdict(entry), "run_name": entry.run_name},
           "ci": ci_facts(env), **state}
    path = out / FLEET_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)
    return path


def run_entry(entry: Entry, results: Path, fetch_timeout: float,
              env: Mapping[str, str]) -> int:
    """Fetch both QEMUs, run the suite, record the job. 0: a matrix was written."""
    out = entry.results_dir(results)
    write_fleet_file(out, entry, env, status="started")
    src = qemu_path(entry.src, fetch_timeout)
    dst = src if entry.dst == entry.src else qemu_path(entry.dst, fetch_timeout)
    cmd = harness_command(entry, src, dst, out)
    print(f"fleet: {entry.host_class} {entry.run_name}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.monotonic()
    code = subprocess.call(cmd, cwd=str(ROOT))
    wall = round(time.monotonic() - t0, 1)
    wrote = (out / "conformance.json").is_file()
    write_fleet_file(out, entry, env, status="ran" if wrote else "no-results",
                     harness_exit=code, wall_seconds=wall, qemu_src_path=src,
                     qemu_dst_path=dst)
    if not wrote:
        print(f"fleet: the run wrote no conformance.json (harness exit {code}); the merge "
              "counts this entry as lost coverage", flush=True)
        return 1
    print(f"fleet: {out} written in {wall:.0f} s (harness exit {code}: verdicts are "
          "judged at the merge, against the baseline)", flush=True)
    return 0


def main(argv: Sequence[str], env: Optional[Mapping[str, str]] = None) -> int:
    env = os.environ if env is None else env
    ap = argparse.ArgumentParser(prog="python -m harness fleet job",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--results", default=env.get("CPRH_FLEET_RESULTS") or str(DEFAULT_RESULTS),
                    metavar="DIR", help="where <host class>/<run>/ goes "
                                        "(default reports/fleet/runs)")
    ap.add_argument("--fetch-timeout", default=env.get("CPRH_FETCH_TIMEOUT") or "1800",
                    metavar="SECONDS", help="longest a QEMU fetch may take (exit 75 beyond)")
    ap.add_argument("--dry-run", action="store_true",
                    help="check the entry and print what would run; fetch and run nothing")
    args = ap.parse_args(list(argv))
    try:
        fetch_timeout = float(args.fetch_timeout)
    except ValueError:
        fetch_timeout = -1.0
    if not fetch_timeout > 0:
        raise UsageError(f"fleet: CPRH_FETCH_TIMEOUT {args.fetch_timeout!r}: expected "
                         "seconds > 0")
    entry = entry_from_env(env)
    if args.dry_run:
        out = entry.results_dir(Path(args.results))
        cmd = harness_command(entry, f"$(get-qemu.sh {entry.src})",
                              f"$(get-qemu.sh {entry.dst})", out)
        print(f"fleet: {entry.host_class} {entry.run_name} -> {out}")
        print("fleet: would run: " + " ".join(cmd[1:]))
        return 0
    return run_entry(entry, Path(args.results), fetch_timeout, env)
