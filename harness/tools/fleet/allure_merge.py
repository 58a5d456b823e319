"""One Allure report across the fleet's jobs.

Every job's ``allure-results/`` is copied into ``OUT/allure-results/``; each result gets
its run as the parent suite (Allure's Suites tab: one branch per host class and build
or pair), a ``host`` label and a ``fleet run`` parameter, and a history id of its own
per run, so the same scenario on two hosts is two tests with two histories, not one
test retried. The environment lists the runs. Allure's history is carried between
nights through ``history`` (a CI cache), as a single run's is through its report.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

from harness.tools.report import ALLURE_SKIPPED, generate_allure

#: Files of one run's results that are the run's, not a test's.
_RUN_FILES = ("environment.properties", "executor.json", "categories.json")


def _rehash(run_key: str, value: Optional[str]) -> str:
    return hashlib.md5(f"{run_key}|{value or ''}".encode()).hexdigest()


def tag_result(doc: Dict[str, Any], run_key: str, label: str, host_class: str) -> Dict[str, Any]:
    """One test result, made the run's own."""
    labels = [x for x in doc.get("labels") or [] if x.get("name") not in ("parentSuite", "host")]
    doc["labels"] = labels + [{"name": "parentSuite", "value": label},
                              {"name": "host", "value": host_class}]
    params = [p for p in doc.get("parameters") or [] if p.get("name") != "fleet run"]
    doc["parameters"] = [{"name": "fleet run", "value": label}] + params
    doc["historyId"] = _rehash(run_key, doc.get("historyId"))
    if doc.get("testCaseId"):
        doc["testCaseId"] = _rehash(run_key, doc["testCaseId"])
    return doc


def copy_results(runs: Sequence[Any], results: Path) -> int:
    """Every run's results into ``results`` (emptied first). Returns the test count."""
    shutil.rmtree(results, ignore_errors=True)
    results.mkdir(parents=True)
    tests = 0
    for r in runs:
        src = Path(r.directory) / "allure-results"
        if not src.is_dir():
            continue
        for f in sorted(src.iterdir()):
            if f.name.endswith("-result.json"):
                try:
                    doc = json.loads(f.read_text())
                except (OSError, ValueError):
                    continue
                tag_result(doc, r.key, r.label, r.host_class)
                (results / f.name).write_text(json.dumps(doc))
                tests += 1
            elif f.name == "categories.json":
                shutil.copyfile(f, results / f.name)  # the same in every run
            elif f.is_file() and f.name not in _RUN_FILES:
                shutil.copyfile(f, results / f.name)  # attachments, containers: uuid names
    return tests


def write_environment(runs: Sequence[Any], results: Path) -> None:
    lines = [f"fleet.runs={len(runs)}"]
    for r in runs:
        meta = (r.matrix or {}).get("meta") or {}
        what = (f"src {meta.get('qemu_src', '?')}, dst {meta.get('qemu_dst', '?')}, accel "
                f"{meta.get('accel', '?')}, host {meta.get('host', '?')}, run "
                f"{meta.get('run_id', '?')}") if r.matrix else "no results"
        lines.append(f"{r.key}={what}")
    (results / "environment.properties").write_text(
        "\n".join(ln.replace("\n", " ") for ln in lines) + "\n")


def merge_allure(runs: Sequence[Any], out: Path,
                 history: Optional[Path] = None) -> Tuple[str, str]:
    """``out/allure-results`` from every run, then ``out/allure-report(.html)``.

    ``history``: a directory carried between nights; its ``history/`` seeds the trend
    and gets this night's. Returns generate_allure's ``(status, line)``."""
    results = out / "allure-results"
    if not copy_results(runs, results):
        return ALLURE_SKIPPED, "allure-report: skipped: no job wrote Allure results"
    write_environment(runs, results)
    report_history = out / "allure-report" / "history"
    if history is not None and (history / "history").is_dir():
        shutil.rmtree(report_history, ignore_errors=True)
        shutil.copytree(history / "history", report_history)
    status, line = generate_allure(out)
    if history is not None and report_history.is_dir():
        shutil.rmtree(history / "history", ignore_errors=True)
        history.mkdir(parents=True, exist_ok=True)
        shutil.copytree(report_history, history / "history")
    return status, line
