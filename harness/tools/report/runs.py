"""One run per reports directory.

A run starts by clearing the previous run's outputs (:func:`start`; Allure's built
report stays, for its history), writes ``run.json`` (:func:`write_run`: its id, the
harness commit, start and end, counts), and every artifact carries its id. Before a
page is (re)built, :func:`disagreements` compares the inputs: ``run.json``, the
matrix's meta, each case's ``result.json``, and the allure-results (environment and
each result's run label). Each disagreement is one line a page shows as a warning.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from harness.tools.report.allure_results import results_runs

RUN_FILE = "run.json"
#: What a run writes into its reports directory (cleared when the next one starts).
RUN_OUTPUTS = ("conformance.json", "conformance.html", "conformance.md", RUN_FILE,
               "junit.xml", "regressions.md")


def start(reports: Path, allure_results: Optional[Path] = None) -> None:
    """Remove the previous run's outputs from ``reports``: the matrix, cases/, junit,
    run.json, and ``allure_results`` when the run owns that directory."""
    reports = Path(reports)
    for name in RUN_OUTPUTS:
        (reports / name).unlink(missing_ok=True)
    shutil.rmtree(reports / "cases", ignore_errors=True)
    if allure_results is not None:
        shutil.rmtree(allure_results, ignore_errors=True)


def write_run(reports: Path, identity: Mapping[str, Any], **facts: Any) -> Path:
    path = Path(reports) / RUN_FILE
    path.write_text(json.dumps({**dict(identity), **facts}, indent=2, default=str) + "\n")
    return path


def read_run(reports: Path) -> Optional[Dict[str, Any]]:
    try:
        return json.loads((Path(reports) / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None


def _allure_env_run(alluredir: Path) -> Optional[str]:
    try:
        for line in (alluredir / "environment.properties").read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "run.id":
                return value.strip()
    except OSError:
        pass
    return None


def disagreements(reports: Path, doc: Optional[Mapping[str, Any]] = None) -> List[str]:
    """Where the inputs of the pages in ``reports`` come from different runs."""
    reports = Path(reports)
    run = read_run(reports)
    want = (run or {}).get("run_id") or ((doc or {}).get("meta") or {}).get("run_id")
    if not want:
        return ["no run id in run.json nor in the matrix: written by an older harness?"]
    out = []
    if doc is not None:
        got = (doc.get("meta") or {}).get("run_id")
        if got != want:
            out.append(f"the matrix is of run {got}, run.json of run {want}")
        others: Dict[str, int] = {}
        for c in doc.get("cases") or []:
            rid = (c.get("run") or {}).get("run_id")
            if rid is not None and rid != want:
                others[rid] = others.get(rid, 0) + 1
        if others:
            out.append("case records of other runs: " + ", ".join(
                f"{k} ({v})" for k, v in sorted(others.items())))
    stale = []
    for path in sorted((reports / "cases").glob("*/result.json")):
        try:
            rid = (json.loads(path.read_text()).get("run") or {}).get("run_id")
        except (OSError, ValueError):
            continue
        if rid != want:
            stale.append(path.parent.name)
    if stale:
        out.append(f"{len(stale)} case directories of another run in cases/ "
                   f"(e.g. {stale[0]})")
    alluredir = reports / "allure-results"
    if alluredir.is_dir():
        env = _allure_env_run(alluredir)
        if env is not None and env != want:
            out.append(f"allure-results' environment is of run {env}, not {want}")
        runs = results_runs(alluredir)
        foreign = {k: v for k, v in runs.items() if k != want}
        if foreign:
            out.append("allure-results holds results of other runs: " + ", ".join(
                f"{k} ({v})" for k, v in sorted(foreign.items())))
    return out
