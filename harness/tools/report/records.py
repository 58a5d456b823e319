"""Conformance matrix records: one plain record per case, the matrix document around
them, and reading one back. Pure functions over plain data (no test framework here:
an adapter turns its own outcomes into a verdict and a reason first)."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import socket
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence

from harness.core.errors import UsageError
from harness.scenario.model import Verdict
from harness.tools.report import deviations, digest
from harness.tools.report.layout import unmachine
from harness.tools.report.text import clip

SCHEMA = 1
ROOT = Path(__file__).resolve().parents[3]


#: Every verdict a case can get, in the order a reader should look at them.
VERDICTS = tuple(v.value for v in Verdict)
#: What each verdict means, for legends.
VERDICT_MEANING = {v.value: v.meaning for v in Verdict}
_BAD = tuple(v.value for v in Verdict if v.bad)

# Where pytest's phases put a verdict (see case_record).
PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"

def flatten(obj: Any, prefix: str = "", limit: int = 500, max_list: int = 32,
            numbers_only: bool = False) -> Dict[str, Any]:
    """Every scalar (number, string, boolean, null) in nested dicts/lists, keyed by a
    dotted path (``a.b.0.c``); ``numbers_only``: ints and floats only (figures).

    Lists longer than ``max_list`` are raw series, not evidence a reader reads, and are
    skipped; at most ``limit`` fields are kept."""
    out: Dict[str, Any] = {}

    def walk(x: Any, path: str) -> None:
        if len(out) >= limit:
            return
        if isinstance(x, bool) or x is None or isinstance(x, str):
            if not numbers_only:
                out[path] = x
        elif isinstance(x, (int, float)):
            out[path] = x
        elif isinstance(x, Mapping):
            for k, v in x.items():
                walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(x, (list, tuple)) and len(x) <= max_list:
            for i, v in enumerate(x):
                walk(v, f"{path}.{i}" if path else str(i))

    walk(obj, prefix)
    return out


def flatten_numbers(obj: Any, prefix: str = "", limit: int = 500,
                    max_list: int = 32) -> Dict[str, float]:
    """The figures only (see :func:`flatten`): what a benchmark compares."""
    return flatten(obj, prefix, limit, max_list, numbers_only=True)


def _one_line(text: str, limit: int = 300) -> str:
    """One line, at most about ``limit`` characters, cut at a word boundary."""
    return clip(text, limit)


def describe_checks(mismatches: Sequence[Mapping[str, Any]]) -> str:
    """Failed checks as one line each: ``name [id]: expected “X”, got “Y” (detail)``."""
    lines = []
    for m in mismatches:
        ident = f" [{m['id']}]" if m.get("id") else ""
        line = (f"{m.get('check')}{ident}: expected \u201c{m.get('expected')}\u201d, "
                f"got \u201c{m.get('actual')}\u201d")
        if m.get("detail"):
            line += f" ({_one_line(m['detail'], 200)})"
        lines.append(line)
    return "; ".join(lines)



def check_lines(checks: Sequence[Mapping[str, Any]]) -> str:
    """Every check, one line each (junit's system-out): a failed one in full, a passing
    one with what was seen, shortened at a word boundary."""
    out = []
    for c in checks:
        head = f"{c.get('check')} [{c.get('id')}]"
        if c.get("ok"):
            out.append(f"ok      {head}: {clip(c.get('actual'), 90)}")
        else:
            out.append(f"FAILED  {head}: expected {c.get('expected')}; observed "
                       f"{c.get('actual')}" + (f" ({c['detail']})" if c.get("detail") else ""))
    return "\n".join(out)


def scenario_summary(params: Mapping[str, Any]) -> Dict[str, Any]:
    """The parameters a reader compares cases by (per-side channels spelled out)."""
    if not params:
        return {}

    def side(kind: str) -> str:
        both = params.get(kind)
        src = params.get(f"src_{kind}") or both
        dst = params.get(f"dst_{kind}") or both
        return str(src) if src == dst else f"src {src} / dst {dst}"

    return {"main": side("main"), "cpr": side("cpr"), "backend": params.get("backend"),
            "incoming": params.get("incoming"), "machine": params.get("machine"),
            "accel": params.get("accel"), "smp": params.get("smp"),
            "guest": params.get("guest"), "arch": params.get("arch")}


def _artifacts(res: Mapping[str, Any], case_dir: Optional[str]) -> Dict[str, str]:
    """Artifact paths relative to the reports directory: ``case_dir`` (the case's
    directory, relative to the reports) joined with each path relative to it."""
    out = {}
    for name, path in (res.get("artifacts") or {}).items():
        path = str(path)
        if case_dir and not os.path.isabs(path):
            path = f"{case_dir}/{path}"
        out[name] = path
    return out


def case_record(nodeid: str, verdict: str, reason: str,
                scenario: Optional[Mapping[str, Any]], result: Optional[Mapping[str, Any]],
                durations: Optional[Mapping[str, float]] = None,
                deviation: Optional[Mapping[str, Any]] = None,
                reports: Optional[Path] = None) -> Dict[str, Any]:
    """One matrix record.

    ``verdict`` (one of :data:`VERDICTS`) and ``reason`` are the adapter's reading of
    its runner's outcome; ``scenario`` is :meth:`harness.scenario.model.Scenario.params`
    (known for every case, also a skipped one); ``result`` is the case's result record
    (present only when the pair ran and was judged); ``durations`` the runner's own
    phase times; ``deviation`` the known deviation the case was expected to reproduce
    (``id``, ``link``, ``reason``). Texts a reader reads (the reason, QEMU's message,
    the checks, the evidence lines) say no absolute path of this machine
    (:func:`harness.tools.report.layout.unmachine`; ``reports``: the reports directory).
    """
    if verdict not in VERDICTS:
        raise ValueError(f"unknown verdict {verdict!r}")
    sc = dict(scenario or (result or {}).get("scenario") or {})
    res = dict(result or {})
    checks = res.get("checks") or res.get("mismatches") or []
    actual = None
    if res.get("observed"):
        actual = {"outcome": res.get("observed"),
                  "message": unmachine(res.get("observed_message", ""), reports)}
    sid = sc.get("id") or res.get("id") or nodeid
    return {
        "id": sid,
        "nodeid": nodeid,
        "area": sc.get("area") or (sid.split("/", 1)[0] if "/" in sid else "other"),
        "title": sc.get("title", ""),
        "parameters": sc,
        "summary": scenario_summary(sc),
        "expected": sc.get("expect", ""),
        "actual": actual,
        "verdict": verdict,
        "reason": unmachine(reason, reports),
        "deviation": _deviation(deviation),
        # Every check, passes included, each with ``ok``.
        "checks": [_plain_check(c, reports) for c in checks],
        "highlights": [[label, unmachine(text, reports)]
                       for label, text in digest.highlights(res)],
        "hops": digest.hop_rows(res),
        "accel": res.get("accel") or None,
        "qemu_src": res.get("qemu_src_version") or None,
        "qemu_dst": res.get("qemu_dst_version") or None,
        "machine": (res["machine_type"] + (" (pinned)" if res.get("machine_pinned") else ""))
        if res.get("machine_type") else None,
        "query_migrate": dict(digest.first(res).get("query_migrate") or {}),
        "evidence": flatten({**{k: v for k, v in digest.evidence(res).items()
                                if k != "dst_query_migrate"},
                             "ram": res.get("ram") or {}}),
        "timings": dict(res.get("timings") or {}),
        "durations": dict(durations or {}),
        "observed": _observed(res),
        "crashes": res.get("crashes") or [],
        "run": res.get("run"),
        "case_dir": res.get("case_dir"),
        "artifacts": _artifacts(res, res.get("case_dir")),
    }


def _plain_check(c: Mapping[str, Any], reports: Optional[Path]) -> Dict[str, Any]:
    out = dict(c, ok=c.get("ok", False))
    for key in ("expected", "actual", "detail"):
        if isinstance(out.get(key), str):
            out[key] = unmachine(out[key], reports)
    return out


def _deviation(deviation: Optional[Mapping[str, Any]]) -> Optional[Dict[str, Any]]:
    """The known deviation with its doc section's text (``text``, Markdown), so the
    reports carry it and link nothing outside themselves."""
    if not deviation:
        return None
    out = dict(deviation)
    if not out.get("text") and out.get("link"):
        out["text"] = deviations.section(str(out["link"]))
    return out


def _observed(res: Mapping[str, Any]) -> Dict[str, Any]:
    """The states and counters a reader compares runs by (empty when nothing ran)."""
    if not res.get("attempts"):
        return {}
    a, rt, s = digest.first(res), digest.retry(res), res.get("survival") or {}
    out = {"src_state_before": res.get("src_state_before"), "src_state_after": a.get("src_state"),
           "dst_state_after": a.get("dst_state"), "dst_exitcode": a.get("dst_exitcode"),
           "counter_before": res.get("counter_before"), "counter_after": a.get("counter_after"),
           "boots_before": res.get("boots_before"), "boots_after": a.get("boots_after")}
    if s:
        out["src_counter_after_refusal"] = s.get("counter_after")
    if rt:
        out["retry"] = rt.get("not_applicable") and f"not applicable: {rt['not_applicable']}" \
            or rt.get("observed")
    return out


def counts(records: Iterable[Mapping[str, Any]]) -> Dict[str, int]:
    c = {v: 0 for v in VERDICTS}
    for r in records:
        c[r["verdict"]] = c.get(r["verdict"], 0) + 1
    return c


def summary_line(records: Sequence[Mapping[str, Any]]) -> str:
    c = counts(records)
    return f"{len(records)} case(s): " + ", ".join(f"{c[v]} {v}" for v in
                                                    ("pass", "fail", "error", "xfail",
                                                     "xpass", "skip"))


def host_facts() -> Dict[str, str]:
    return {"host": socket.gethostname(), "kernel": platform.release(),
            "arch": platform.machine(), "python": platform.python_version()}


def matrix(records: Sequence[Mapping[str, Any]], meta: Mapping[str, Any],
           wall_seconds: Optional[float] = None) -> Dict[str, Any]:
    """The conformance matrix document (what ``conformance.json`` holds)."""
    recs = sorted((dict(r) for r in records),
                  key=lambda r: (r["area"], r["id"], r.get("nodeid", "")))
    seen: Dict[str, int] = {}
    for r in recs:  # ids must be unique: a compare matches cases by id
        seen[r["id"]] = seen.get(r["id"], 0) + 1
        if seen[r["id"]] > 1:
            r["id"] = f"{r['id']}@{r.get('nodeid', seen[r['id']])}"
    doc_meta = {**host_facts(), **dict(meta)}
    doc_meta.setdefault("generated", _dt.datetime.now(_dt.timezone.utc)
                        .strftime("%Y-%m-%dT%H:%M:%SZ"))
    return {"schema": SCHEMA, "meta": doc_meta, "counts": counts(recs),
            "wall_seconds": round(wall_seconds, 2) if wall_seconds is not None else None,
            "cases": recs}


def load_matrix(path: Path) -> Dict[str, Any]:
    """Read a conformance.json; any problem is a :class:`UsageError` with one line."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory, not a conformance.json") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("cases"), list):
        raise UsageError(f"{path}: not a conformance matrix (no 'cases' list)")
    for i, c in enumerate(doc["cases"]):
        if not isinstance(c, dict) or not isinstance(c.get("id"), str):
            raise UsageError(f"{path}: case #{i + 1} has no 'id'")
        if c.get("verdict") not in VERDICTS:
            raise UsageError(f"{path}: case {c['id']!r} has no valid verdict "
                             f"(got {c.get('verdict')!r}; a file from an older harness? "
                             f"re-run the suite to regenerate it)")
    doc.setdefault("meta", {})
    return doc



def default_paths(reports: Path) -> Dict[str, Path]:
    reports = Path(reports)
    return {"json": reports / "conformance.json", "html": reports / "conformance.html",
            "md": reports / "conformance.md", "regressions": reports / "regressions.md",
            "allure-results": reports / "allure-results",
            "allure-report": reports / "allure-report",
            "allure-single": reports / "allure-report.html"}


def relpath(path: Path, start: Optional[Path] = None) -> str:
    """``path`` relative to ``start`` (the cwd) when it lies below it, else absolute."""
    try:
        rel = os.path.relpath(path, start or Path.cwd())
    except ValueError:
        return str(path)
    return str(Path(path).resolve()) if rel.startswith("..") else rel
