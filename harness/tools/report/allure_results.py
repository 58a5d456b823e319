"""Tidy an allure-results directory after a run, before the HTML is built.

allure-pytest writes what pytest knows; a reader needs less noise and one run:

* parameter values as written, not Python reprs (``'fd'`` -> ``fd``), a parametrized
  object by its id (``Scenario(...)`` -> the scenario id), one value per name (the
  last: a value set again once the case ran, e.g. the resolved machine type);
* a case named by its scenario id (a case skipped before it ran has pytest's name);
* a known deviation's message reduced to the deviation (what Allure groups a category
  by), what was observed moved to the trace;
* no empty or missing attachments, no pytest finalizers (``<fixture>::<lambda>``) as
  teardown steps;
* each result labelled with the run it belongs to; results older than this run
  (another run's, left in the directory) counted, so the report can warn.
"""
from __future__ import annotations

import ast
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

RUN_LABEL = "run_id"
XFAIL_PREFIX = "XFAIL known deviation: "
_REPR = re.compile(r"^\w+\(.*\)$", re.S)


@dataclass
class Tidied:
    results: int = 0
    runs: Dict[str, int] = field(default_factory=dict)   # run id -> results
    dropped_attachments: int = 0
    dropped_afters: int = 0

    @property
    def mixed(self) -> bool:
        return len(self.runs) > 1

    def describe(self) -> str:
        if not self.mixed:
            return ""
        return ("allure-results holds results of " + str(len(self.runs)) + " runs ("
                + ", ".join(f"{k}: {v}" for k, v in sorted(self.runs.items())) + ")")


def plain_value(value: Any, story: Optional[str] = None) -> Any:
    """A parameter value as a reader writes it."""
    if not isinstance(value, str):
        return value
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        try:
            lit = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
        return lit if isinstance(lit, str) else value
    if story and _REPR.match(value) and value.startswith("Scenario("):
        return story
    return value


def _label(result: Mapping[str, Any], name: str) -> Optional[str]:
    return next((lb["value"] for lb in result.get("labels") or [] if lb.get("name") == name),
                None)


def _keep_attachments(node: Dict[str, Any], base: Path, out: Tidied) -> None:
    kept = []
    for a in node.get("attachments") or []:
        path = base / str(a.get("source", ""))
        if a.get("source") and path.is_file() and path.stat().st_size > 0:
            kept.append(a)
        else:
            out.dropped_attachments += 1
            if path.is_file():
                path.unlink()
    if "attachments" in node:
        node["attachments"] = kept
    for step in node.get("steps") or []:
        _keep_attachments(step, base, out)


def _tidy_parameters(result: Dict[str, Any]) -> None:
    story = _label(result, "story")
    by_name: Dict[str, Dict[str, Any]] = {}
    for p in result.get("parameters") or []:
        p = dict(p, value=plain_value(p.get("value"), story))
        by_name.pop(p.get("name"), None)  # the last one wins, in its own place
        by_name[p.get("name")] = p
    if "parameters" in result:
        result["parameters"] = list(by_name.values())


def _tidy_deviation(result: Dict[str, Any]) -> None:
    details = result.get("statusDetails") or {}
    msg = details.get("message") or ""
    if result.get("status") == "skipped" and msg.startswith(XFAIL_PREFIX) and "\n\n" in msg:
        head, rest = msg.split("\n\n", 1)
        details["message"] = head
        details["trace"] = "observed:\n" + rest + "\n\n" + (details.get("trace") or "")


def tidy_result(result: Dict[str, Any], base: Path, run_id: str, run_start_ms: int,
                out: Tidied) -> Dict[str, Any]:
    _tidy_parameters(result)
    story = _label(result, "story")
    if story and str(result.get("name", "")).startswith("test_"):
        result["name"] = story
    _tidy_deviation(result)
    _keep_attachments(result, base, out)
    run = _label(result, RUN_LABEL)
    if run is None:
        # Written by a runner that did not label it: this run's if it started after us.
        run = run_id if int(result.get("start") or 0) >= run_start_ms else "(older run)"
        result.setdefault("labels", []).append({"name": RUN_LABEL, "value": run})
    out.runs[run] = out.runs.get(run, 0) + 1
    out.results += 1
    return result


def tidy_container(container: Dict[str, Any], out: Tidied) -> Dict[str, Any]:
    afters = []
    for a in container.get("afters") or []:
        empty = not a.get("steps") and not a.get("attachments")
        if str(a.get("name", "")).endswith("::<lambda>") and empty \
                and a.get("status") in (None, "passed"):
            out.dropped_afters += 1
            continue
        afters.append(a)
    if "afters" in container:
        container["afters"] = afters
    return container


def tidy(alluredir: Path, run_id: str, run_start_ms: int) -> Tidied:
    """Tidy every result and container file in ``alluredir`` in place."""
    alluredir = Path(alluredir)
    out = Tidied()
    try:
        names = sorted(os.listdir(alluredir))
    except OSError:
        return out
    for name in names:
        path = alluredir / name
        if not (name.endswith("-result.json") or name.endswith("-container.json")):
            continue
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if name.endswith("-result.json"):
            doc = tidy_result(doc, alluredir, run_id, run_start_ms, out)
        else:
            doc = tidy_container(doc, out)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, path)
    return out


def results_runs(alluredir: Path) -> Dict[str, int]:
    """Results per run id in ``alluredir`` (after :func:`tidy`)."""
    runs: Dict[str, int] = {}
    for path in Path(alluredir).glob("*-result.json"):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        run = _label(doc, RUN_LABEL) or "(unlabelled)"
        runs[run] = runs.get(run, 0) + 1
    return runs
