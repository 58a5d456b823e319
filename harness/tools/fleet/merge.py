"""The fleet's merge: every job's results in one cross-host grid, one merged matrix, its
compare against the last good night, and this night kept as the next night's baseline.

``python -m harness fleet merge [RESULTS] --out DIR --keep DIR`` reads
``RESULTS/<host class>/<run>/`` (each job's ``conformance.json`` and ``fleet.json``) and
writes into ``--out``: ``grid.html`` and ``grid.md`` (a column per host class and build
or pair), ``merged.json`` (every case of every run, its id prefixed by ``[<host
class>/<run>]``), ``regressions.md`` (the compare), the Allure report across jobs.

The baseline is ``--baseline FILE`` (``CPRH_FLEET_BASELINE``), else ``KEEP/merged.json``
when it exists. Exit 1 on a regression or lost coverage: a case that got worse, a run
of the baseline with no results now, or a job that wrote none; 0 otherwise, and then
this night's ``merged.json`` replaces ``KEEP/merged.json``. With no baseline the compare
is skipped (said in one line) and this night becomes the baseline. ``--accept``
(``CPRH_FLEET_ACCEPT=1``) reports the changes, exits 0 and keeps this night: a person
accepting a new state of affairs.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from harness.core.errors import UsageError
from harness.tools import grid
from harness.tools.fleet.allure_merge import merge_allure
from harness.tools.fleet.job import FLEET_FILE, ROOT
from harness.tools.report import (ALLURE_FAILED, Comparison, compare, counts, load_matrix,
                                  relpath, render_comparison_md, render_comparison_text,
                                  summary_line)

MERGED = "merged.json"
DEFAULT_OUT = ROOT / "reports" / "fleet"
DEFAULT_KEEP = ROOT / "reports" / "fleet-baseline"


@dataclass
class Run:
    """One job's results: ``key`` is ``<host class>/<run>``, stable from night to night."""
    key: str
    host_class: str
    directory: Path
    fleet: Dict[str, Any]
    matrix: Optional[Dict[str, Any]]
    label: str = ""

    @property
    def status(self) -> str:
        return "ran" if self.matrix is not None else "no-results"

    @property
    def accel(self) -> str:
        return str((self.fleet.get("entry") or {}).get("accel")
                   or (self.matrix or {}).get("meta", {}).get("accel_requested") or "?")


def _read_json(path: Path) -> Dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def find_runs(results: Path) -> List[Run]:
    """Every ``<host class>/<run>/`` under ``results`` with a fleet.json or a matrix."""
    runs = []
    for d in sorted(Path(results).glob("*/*")):
        fleet_file, matrix_file = d / FLEET_FILE, d / "conformance.json"
        if not d.is_dir() or not (fleet_file.is_file() or matrix_file.is_file()):
            continue
        matrix = load_matrix(matrix_file) if matrix_file.is_file() else None
        runs.append(Run(f"{d.parent.name}/{d.name}", d.parent.name, d,
                        _read_json(fleet_file), matrix))
    label_runs(runs)
    return runs


def label_runs(runs: List[Run]) -> None:
    """``10.0.2 @kvm``, ``10.0.2 → 11.1.3 @kvm``; the accel too where runs differ in it."""
    several_accels = len({r.accel for r in runs}) > 1
    seen: Dict[str, int] = {}
    for r in runs:
        entry = r.fleet.get("entry") or {}
        meta = (r.matrix or {}).get("meta") or {}
        base = grid.label_of(meta) if r.matrix else (
            entry.get("src") if entry.get("src") == entry.get("dst")
            else f"{entry.get('src', '?')} → {entry.get('dst', '?')}")
        label = f"{base}{' ' + r.accel if several_accels else ''} @{r.host_class}"
        seen[label] = seen.get(label, 0) + 1
        r.label = label if seen[label] == 1 else f"{label} #{seen[label]}"
        if r.matrix is None:
            r.label += " (no results)"
    runs.sort(key=lambda r: (r.host_class, _is_pair(r), r.label))


def _is_pair(r: Run) -> bool:
    entry = r.fleet.get("entry") or {}
    if entry:
        return entry.get("src") != entry.get("dst")
    return "→" in r.label


def _runner(r: Run) -> str:
    ci = r.fleet.get("ci") or {}
    host = ci.get("hostname") or ((r.matrix or {}).get("meta") or {}).get("host", "?")
    words = [f"class {r.host_class}", f"host {host}"]
    if ci.get("runner"):
        words.append(f"runner {ci['runner']}")
    if ci.get("local_standin"):
        words.append(ci["local_standin"])
    return ", ".join(words)


def columns(runs: Sequence[Run]) -> List[grid.Column]:
    cols = []
    for r in runs:
        meta = dict((r.matrix or {}).get("meta") or {})
        meta["host"] = _runner(r)
        cases = {c["id"]: c for c in (r.matrix or {}).get("cases", [])}
        cols.append(grid.Column(r.label, r.directory, meta, cases))
    return cols


def run_facts(r: Run) -> Dict[str, Any]:
    meta = (r.matrix or {}).get("meta") or {}
    return {"key": r.key, "label": r.label, "status": r.status, "host_class": r.host_class,
            "runner": _runner(r), "accel": meta.get("accel") or r.accel,
            "qemu_src": meta.get("qemu_src"), "qemu_dst": meta.get("qemu_dst"),
            "run_id": meta.get("run_id"), "harness_exit": r.fleet.get("harness_exit"),
            "job_url": (r.fleet.get("ci") or {}).get("job_url"),
            "directory": str(r.directory)}


def merged_matrix(runs: Sequence[Run], env: Mapping[str, str]) -> Dict[str, Any]:
    """Every case of every run, as one matrix ``harness report --baseline`` can read."""
    cases = []
    for r in runs:
        for c in (r.matrix or {}).get("cases", []):
            cases.append({"id": f"[{r.key}] {c['id']}", "fleet_run": r.key,
                          "scenario": c["id"], "verdict": c["verdict"],
                          "reason": c.get("reason") or ""})
    meta = {"fleet": [run_facts(r) for r in runs], "host": socket.gethostname(),
            "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "pipeline_id": env.get("CI_PIPELINE_ID")}
    if env.get("CI_PIPELINE_URL") and env.get("CPRH_FLEET_LOCAL") != "1":
        meta["pipeline_url"] = env["CI_PIPELINE_URL"]  # gitlab-ci-local's lead nowhere
    return {"schema": 1, "kind": "fleet", "meta": meta, "counts": counts(cases), "cases": cases}


def describe(meta: Mapping[str, Any]) -> str:
    """A merged matrix in one line (the compare's file table)."""
    runs = meta.get("fleet") or []
    where = f"pipeline {meta['pipeline_id']}, " if meta.get("pipeline_id") else ""
    return (f"{len(runs)} run(s): " + ", ".join(r.get("label", r.get("key", "?")) for r in runs)
            + f"; {where}generated {meta.get('generated', '?')}")


def fleet_compare(base: Mapping[str, Any], current: Mapping[str, Any]) -> Comparison:
    """:func:`compare`, where a case of a run that reported nothing this night is lost
    coverage, not a removed case."""
    cmp = compare(base, current)
    present = {r["key"] for r in current["meta"].get("fleet", []) if r.get("status") == "ran"}
    for ch in cmp.changes:
        key = ch.id[1:].split("]", 1)[0] if ch.id.startswith("[") else ""
        if ch.kind == "removed" and key not in present:
            ch.kind, ch.reason = "coverage-loss", f"no results from {key} this night"
    order = {k: i for i, k in enumerate(("regression", "coverage-loss", "fix", "coverage-gain",
                                         "changed", "new", "removed"))}
    cmp.changes.sort(key=lambda c: (order[c.kind], c.id))
    return cmp


def resolve_baseline(given: Optional[str], keep: Path) -> Optional[Path]:
    """The explicit baseline, else the kept one, else None (a first night)."""
    if given:
        path = Path(given)
        if not path.is_file():
            raise UsageError(f"fleet: baseline {given}: no such file (CPRH_FLEET_BASELINE)")
        return path
    kept = keep / MERGED
    return kept if kept.is_file() else None


def keep_baseline(merged_path: Path, keep: Path) -> Path:
    keep.mkdir(parents=True, exist_ok=True)
    tmp = keep / (MERGED + ".tmp")
    shutil.copyfile(merged_path, tmp)
    tmp.replace(keep / MERGED)
    return keep / MERGED


def judge(cmp: Optional[Comparison], runs: Sequence[Run]) -> Tuple[int, str]:
    """The night's exit status and why."""
    missing = [r.key for r in runs if r.status != "ran"]
    why = []
    if not runs:
        return 1, "no job wrote results"
    if missing:
        why.append(f"{len(missing)} job(s) wrote no results: {', '.join(missing)}")
    if cmp is not None and cmp.regressions:
        why.append(f"{len(cmp.regressions)} regression(s) or lost case(s) against the baseline")
    if why:
        return 1, "; ".join(why)
    return 0, "no regression, no lost coverage" if cmp is not None else "first night: no baseline"


@dataclass
class Options:
    results: Path
    out: Path
    keep: Path
    baseline: Optional[str]
    accept: bool
    history: Optional[Path]
    allure_html: bool


def write_outputs(runs: Sequence[Run], opts: Options,
                  env: Mapping[str, str]) -> Tuple[Path, Dict[str, Any]]:
    opts.out.mkdir(parents=True, exist_ok=True)
    cols = columns(runs)
    rs = grid.rows(cols)
    (opts.out / "grid.html").write_text(grid.render_html(cols, rs, opts.out.resolve()))
    (opts.out / "grid.md").write_text(grid.render_md(cols, rs))
    merged = merged_matrix(runs, env)
    merged_path = opts.out / MERGED
    merged_path.write_text(json.dumps(merged, indent=2) + "\n")
    print(f"fleet: grid {relpath(opts.out / 'grid.html')}, {relpath(opts.out / 'grid.md')}; "
          f"merged matrix {relpath(merged_path)}: {summary_line(merged['cases'])}")
    return merged_path, merged


def run_compare(merged: Dict[str, Any], opts: Options) -> Optional[Comparison]:
    baseline = resolve_baseline(opts.baseline, opts.keep)
    (opts.out / "regressions.md").unlink(missing_ok=True)
    if baseline is None:
        print(f"fleet: no baseline: compare skipped (first night, or the kept baseline "
              f"{relpath(opts.keep / MERGED)} was reset); this night becomes the baseline")
        return None
    base = load_matrix(baseline)
    cmp = fleet_compare(base, merged)
    bname, cname = relpath(baseline), relpath(opts.out / MERGED)
    print(render_comparison_text(cmp, bname, cname))
    (opts.out / "regressions.md").write_text(
        render_comparison_md(cmp, bname, cname, describe=describe))
    print(f"fleet: compare written to {relpath(opts.out / 'regressions.md')}")
    return cmp


def merge(opts: Options, env: Mapping[str, str]) -> int:
    runs = find_runs(opts.results)
    for r in runs:
        facts = run_facts(r)
        print(f"fleet: {r.label}: {r.status}"
              + (f", {summary_line(r.matrix['cases'])}" if r.matrix else "")
              + f" ({facts['runner']})")
    merged_path, merged = write_outputs(runs, opts, env)
    cmp = run_compare(merged, opts)
    code, why = judge(cmp, runs)
    if code and opts.accept:
        print(f"fleet: accepted by a person (CPRH_FLEET_ACCEPT=1) although {why}")
        code, why = 0, "accepted (CPRH_FLEET_ACCEPT=1)"
    if code == 0:
        kept = keep_baseline(merged_path, opts.keep)
        print(f"fleet: baseline for the next night: {relpath(kept)} (this night's merged "
              "results; reset: docs/fleet.md)")
    else:
        print(f"fleet: the baseline stays {relpath(opts.keep / MERGED)} (the last good night)")
    if runs and opts.allure_html:
        status, line = merge_allure(runs, opts.out, opts.history)
        print(line)
        if status == ALLURE_FAILED:
            print("fleet: the Allure report failed; the grid and the compare stand")
    print(f"fleet: exit {code}: {why}")
    return code


def main(argv: Sequence[str], env: Optional[Mapping[str, str]] = None) -> int:
    env = os.environ if env is None else env
    ap = argparse.ArgumentParser(prog="python -m harness fleet merge",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("results", nargs="?", default=str(DEFAULT_OUT / "runs"), metavar="RESULTS",
                    help="the jobs' results: RESULTS/<host class>/<run>/ "
                         "(default reports/fleet/runs)")
    ap.add_argument("--out", default=str(DEFAULT_OUT), metavar="DIR",
                    help="grid, merged matrix, compare, Allure report (default reports/fleet)")
    ap.add_argument("--keep", default=env.get("CPRH_FLEET_KEEP") or str(DEFAULT_KEEP),
                    metavar="DIR", help="where the last good night's merged.json is kept "
                                        "(default reports/fleet-baseline)")
    ap.add_argument("--baseline", default=env.get("CPRH_FLEET_BASELINE") or None,
                    metavar="FILE", help="compare with this merged.json instead of the kept one")
    ap.add_argument("--accept", action="store_true",
                    default=env.get("CPRH_FLEET_ACCEPT") == "1",
                    help="exit 0 whatever changed and keep this night as the baseline")
    ap.add_argument("--history", metavar="DIR", default=None,
                    help="Allure history carried between nights (copied in, then back)")
    ap.add_argument("--no-allure-html", action="store_true", help="skip the Allure report")
    args = ap.parse_args(list(argv))
    results = Path(args.results)
    if not results.is_dir():
        raise UsageError(f"fleet: {args.results}: no such directory (the jobs' results)")
    opts = Options(results, Path(args.out), Path(args.keep), args.baseline, args.accept,
                   Path(args.history) if args.history else None, not args.no_allure_html)
    return merge(opts, env)
