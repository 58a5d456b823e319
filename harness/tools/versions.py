"""Upgrade and downgrade as a dimension: the core matrix on each QEMU build alone and on
every ordered pair of them, one result directory per run, then the grid.

``python -m harness versions QEMU1 QEMU2 ... --reports DIR`` runs ``python -m harness
run`` (the conformance suite, one pytest per run) for each build and each ordered
pair, into ``DIR/<version>`` and ``DIR/<src>-to-<dst>``, then writes ``DIR/grid.html``
and ``DIR/grid.md`` (:mod:`harness.tools.grid`). Across versions each case pins the
older side's versioned machine type (:func:`harness.run.setup.resolve_machine`).
"""
from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Sequence

from harness.core.errors import HarnessError, UsageError
from harness.qemu.probe import probe
from harness.run.setup import short_version
from harness.tools.grid import write_grid

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Build:
    path: str
    version: str
    label: str


@dataclass(frozen=True)
class Run:
    src: Build
    dst: Build

    @property
    def name(self) -> str:
        return self.src.label if self.src == self.dst else f"{self.src.label}-to-{self.dst.label}"


def builds(binaries: Sequence[str]) -> List[Build]:
    """Each binary probed, labelled by its version (``11.1.3``; ``11.1.3-2`` for a second
    build of one version). :raise UsageError: fewer than one, or one does not probe."""
    if not binaries:
        raise UsageError("versions: name at least one QEMU (two for upgrades)")
    out: List[Build] = []
    for b in binaries:
        try:
            caps = probe(b)
        except HarnessError as exc:
            raise UsageError(f"versions: {exc}") from None
        problems = caps.dialect_problems()
        if problems:
            raise UsageError(f"versions: {caps.path} ({caps.version_str}) does not support "
                             f"cpr-transfer: {'; '.join(problems)}")
        v = short_version(caps)
        n = sum(1 for x in out if x.version == v)
        out.append(Build(caps.path, v, v if not n else f"{v}-{n + 1}"))
    return out


def plan(bs: Sequence[Build]) -> List[Run]:
    """Each build alone, then every ordered pair (upgrades and downgrades)."""
    return [Run(b, b) for b in bs] + [Run(a, b) for a, b in itertools.permutations(bs, 2)]


def run_all(binaries: Sequence[str], reports: str, suites: Sequence[str], extra: Sequence[str],
            progress: Callable[[str], None]) -> int:
    """Every run, then the grid. 0: every run's cases conform (or are known deviations)."""
    runs = plan(builds(binaries))
    root = Path(reports)
    root.mkdir(parents=True, exist_ok=True)
    worst = 0
    dirs = []
    for i, r in enumerate(runs, 1):
        out = root / r.name
        cmd = [sys.executable, "-m", "harness", "run", "--qemu-src", r.src.path,
               "--qemu-dst", r.dst.path, "--reports", str(out), "--no-allure-html",
               *[a for s in suites for a in ("--suite", s)], *extra]
        progress(f"[{i}/{len(runs)}] {r.name}: {r.src.path} -> {r.dst.path}")
        t = time.monotonic()
        with open(root / f"{r.name}.log", "wb") as log:
            code = subprocess.call(cmd, cwd=str(ROOT), stdout=log, stderr=subprocess.STDOUT)
        progress(f"    exit {code} in {time.monotonic() - t:.0f} s; log {root / f'{r.name}.log'}")
        worst = max(worst, code)
        if (out / "conformance.json").is_file():
            dirs.append(str(out))
    if not dirs:
        raise HarnessError(f"versions: no run wrote a matrix (see the logs in {root})")
    paths = write_grid(dirs, str(root))
    progress(f"grid: {paths['html']}, {paths['md']}")
    return 0 if worst == 0 else 1


def main(argv: Sequence[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m harness versions",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("qemus", nargs="+", metavar="QEMU", help="QEMU binaries (paths or names)")
    ap.add_argument("--reports", default=os.environ.get("CPRH_REPORTS",
                                                        str(ROOT / "reports" / "versions")),
                    metavar="DIR", help="where the runs and the grid go "
                                        "(default reports/versions)")
    ap.add_argument("--suite", action="append", metavar="NAME",
                    help="the suites each run covers (default: core, unless --scenario)")
    ap.add_argument("--scenario", action="append", metavar="ID",
                    help="only these scenarios in each run (repeatable)")
    args, extra = ap.parse_known_args(argv)
    suites = args.suite or ([] if args.scenario else ["core"])
    extra = [a for sid in args.scenario or [] for a in ("--scenario", sid)] + extra
    return run_all(args.qemus, args.reports, suites, extra, lambda m: print(m, flush=True))
