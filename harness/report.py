"""Reports people read: the conformance matrix, the regression diff, Allure extras.

Pure functions over plain data, so they work the same on a live run, on a file from
last night and in the self-tests:

* :func:`case_record` turns what the test runner saw of one case (its phases, the
  scenario's parameters, the pair's result dict) into one matrix record with a
  verdict in :data:`VERDICTS`;
* :func:`matrix` wraps the records with the run's facts (QEMU versions, accel, host);
  :func:`render_markdown` and :func:`render_html` turn that into ``conformance.md``
  and a self-contained ``conformance.html``; :func:`write_matrix` writes all three;
* :func:`compare` diffs a baseline matrix against the current one and says which
  cases regressed (:data:`REGRESSION_KINDS` make ``harness report`` exit 1);
* :func:`environment_properties` and :data:`CATEGORIES` feed Allure;
  :func:`generate_allure` runs ``scripts/allure-report.sh``.

This module imports nothing from pytest, allure or avocado: the pytest adapter
(``conftest.py``) hands it plain values.
"""
from __future__ import annotations

import datetime as _dt
import html
import json
import os
import platform
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from harness.errors import UsageError

SCHEMA = 1
ROOT = Path(__file__).resolve().parent.parent
ALLURE_SCRIPT = ROOT / "scripts" / "allure-report.sh"

#: Every verdict a case can get, in the order a reader should look at them.
VERDICTS = ("fail", "error", "xpass", "xfail", "skip", "pass")
#: What each verdict means, for legends.
VERDICT_MEANING = {
    "pass": "QEMU did what the scenario requires",
    "fail": "QEMU did not: a conformance check failed",
    "error": "the harness could not reach a verdict (timeout, launch failure, bug)",
    "xfail": "a known deviation of this QEMU, reproduced as recorded",
    "xpass": "a known deviation no longer reproduces: QEMU changed (or the entry is stale)",
    "skip": "not run: a capability this QEMU or host lacks",
}
_BAD = ("fail", "error")

# Where pytest's phases put a verdict (see case_record).
PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"
_STRICT_XPASS = "[XPASS(strict)]"


# --------------------------------------------------------------------------- records


@dataclass
class Phase:
    """One runner phase of a case (pytest's setup/call/teardown), as plain values."""
    when: str                      # "setup", "call" or "teardown"
    outcome: str                   # "passed", "failed" or "skipped"
    message: str = ""              # skip reason, or the failure's one-line summary
    wasxfail: Optional[str] = None  # set when the runner applied an expected failure
    duration: float = 0.0


def flatten_numbers(obj: Any, prefix: str = "", limit: int = 500,
                    max_list: int = 32) -> Dict[str, float]:
    """Every int/float in nested dicts/lists, keyed by a dotted path (``a.b.0.c``).

    Booleans are left out (not figures); lists longer than ``max_list`` are raw series,
    not figures, and are skipped; at most ``limit`` fields are kept.
    """
    out: Dict[str, float] = {}

    def walk(x: Any, path: str) -> None:
        if len(out) >= limit:
            return
        if isinstance(x, bool):
            return
        if isinstance(x, (int, float)):
            out[path] = x
        elif isinstance(x, Mapping):
            for k, v in x.items():
                walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(x, (list, tuple)) and len(x) <= max_list:
            for i, v in enumerate(x):
                walk(v, f"{path}.{i}" if path else str(i))

    walk(obj, prefix)
    return out


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def describe_checks(mismatches: Sequence[Mapping[str, Any]]) -> str:
    """Failed checks as one line each: ``name: expected X, got Y (detail)``."""
    lines = []
    for m in mismatches:
        line = f"{m.get('check')}: expected {m.get('expected')!r}, got {m.get('actual')!r}"
        if m.get("detail"):
            line += f" ({_one_line(m['detail'], 200)})"
        lines.append(line)
    return "; ".join(lines)


def verdict_of(phases: Sequence[Phase], mismatches: Sequence[Mapping[str, Any]] = ()
               ) -> Tuple[str, str]:
    """The case's verdict and the reason a reader needs, from its runner phases.

    ``fail`` is reserved for a failed conformance check (``mismatches`` non-empty, or
    the call failing with the checks named); any other failure is ``error``.
    """
    by = {p.when: p for p in phases}
    setup, call, teardown = by.get("setup"), by.get("call"), by.get("teardown")
    checks = describe_checks(mismatches)
    if setup is not None and setup.outcome == FAILED:
        return "error", "set-up failed: " + _one_line(setup.message)
    if setup is not None and setup.outcome == SKIPPED:
        if setup.wasxfail is not None:
            return "xfail", setup.wasxfail
        return "skip", setup.message
    if call is None:
        if teardown is not None and teardown.outcome == FAILED:
            return "error", "teardown failed: " + _one_line(teardown.message)
        return "error", "the case did not run (interrupted?)"
    if call.outcome == SKIPPED:
        if call.wasxfail is not None:
            # What was observed is in the record's checks and actual outcome.
            return "xfail", call.wasxfail or "expected failure"
        return "skip", call.message
    if call.outcome == FAILED:
        if call.message.startswith(_STRICT_XPASS):
            reason = call.message[len(_STRICT_XPASS):].strip()
            return "xpass", f"passed, but expected to fail: {reason}"
        if mismatches:
            return "fail", checks
        return "error", _one_line(call.message)
    # call passed
    if teardown is not None and teardown.outcome == FAILED:
        return "error", "teardown failed: " + _one_line(teardown.message)
    if call.wasxfail is not None:
        return "xpass", f"passed, but expected to fail: {call.wasxfail}"
    return "pass", ""


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


def case_record(nodeid: str, phases: Sequence[Phase], scenario: Optional[Mapping[str, Any]],
                result: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """One matrix record.

    ``scenario`` is :meth:`harness.scenario.Scenario.params` (known for every case,
    also a skipped one); ``result`` is the pair's result dict with ``mismatches``
    (present only when the pair ran and was judged).
    """
    sc = dict(scenario or (result or {}).get("scenario") or {})
    res = dict(result or {})
    mismatches = res.get("mismatches") or []
    verdict, reason = verdict_of(phases, mismatches)
    durations = {f"{p.when}_s": round(p.duration, 3) for p in phases}
    actual = None
    if res.get("observed"):
        actual = {"outcome": res.get("observed"), "message": res.get("observed_message", "")}
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
        "reason": reason,
        "checks": mismatches,
        "accel": res.get("accel") or None,
        "qemu_src": res.get("qemu_src_version") or None,
        "qemu_dst": res.get("qemu_dst_version") or None,
        "query_migrate": res.get("query_migrate") or {},
        "evidence": flatten_numbers(res.get("evidence") or {}),
        "timings": dict(res.get("timings") or {}),
        "durations": durations,
        "observed": {k: res.get(k) for k in (
            "src_status_before", "src_status_after", "dst_status_after", "dst_exitcode",
            "counter_before", "counter_after", "boots_before", "boots_after",
            "src_counter_after_refusal", "retry") if k in res},
        "artifacts": res.get("artifacts") or {},
    }


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


# --------------------------------------------------------------------------- rendering


def _qemu_line(meta: Mapping[str, Any]) -> str:
    src, dst = meta.get("qemu_src", "?"), meta.get("qemu_dst", "?")
    return f"QEMU {src}" if src == dst else f"QEMU src {src}, dst {dst}"


def facts_line(meta: Mapping[str, Any]) -> str:
    return (f"{_qemu_line(meta)}; accel {meta.get('accel', '?')}; host {meta.get('host', '?')} "
            f"(Linux {meta.get('kernel', '?')}, {meta.get('arch', '?')}); "
            f"Python {meta.get('python', '?')}; generated {meta.get('generated', '?')}")


def _essential(message: str) -> str:
    """A QEMU message without its ``warning:`` lines (a target's log tail starts with
    CPUID warnings on some hosts), unless that is all there is."""
    lines = [ln for ln in str(message).splitlines() if ln.strip()]
    kept = [ln for ln in lines if ": warning: " not in ln]
    return "\n".join(kept or lines)


def observed_text(r: Mapping[str, Any], limit: int = 160) -> str:
    a = r.get("actual")
    if not a:
        return ""
    msg = _essential(a.get("message") or "")
    return a["outcome"] + (f": {_one_line(msg, limit)}" if msg else "")


def _fmt(v: Any) -> str:
    return f"{v:.1f}" if isinstance(v, float) else str(v)


def key_figures(r: Mapping[str, Any]) -> str:
    """A few figures worth a column: QEMU's downtime and total time, the pause the
    guest lived through (host-side sampler) with its noise floor, pages verified."""
    qm = r.get("query_migrate") or {}
    ev = r.get("evidence") or {}
    out = []
    if isinstance(qm.get("downtime"), (int, float)):
        out.append(f"downtime {qm['downtime']} ms")
    if isinstance(qm.get("total-time"), (int, float)):
        out.append(f"total {qm['total-time']} ms")

    def find(suffix: str) -> Any:
        return next((v for k, v in ev.items() if k.endswith(suffix)), None)

    pause, pause_max = find("guest_pause_ms"), find("guest_pause_max_ms")
    if pause is not None:
        out.append(f"guest pause {_fmt(pause)} ms"
                   + (f" (at most {_fmt(pause_max)})" if pause_max is not None else ""))
    noise = find("noise_floor_ms")
    if noise is not None:
        out.append(f"noise floor {_fmt(noise)} ms")
    checked, bad = find("pattern.pages_checked"), find("pattern.bad_page_count")
    if checked is not None:
        out.append(f"{checked} pages verified" + (f", {bad} changed" if bad else ""))
    return ", ".join(out)


def _by_area(records: Sequence[Mapping[str, Any]]) -> List[Tuple[str, List[Mapping[str, Any]]]]:
    areas: Dict[str, List[Mapping[str, Any]]] = {}
    for r in records:
        areas.setdefault(r["area"], []).append(r)
    rank = {v: i for i, v in enumerate(VERDICTS)}
    return [(a, sorted(rs, key=lambda r: (rank[r["verdict"]], r["id"])))
            for a, rs in sorted(areas.items())]


def _grouped_reasons(records: Sequence[Mapping[str, Any]], verdict: str
                     ) -> List[Tuple[str, List[str]]]:
    groups: Dict[str, List[str]] = {}
    for r in records:
        if r["verdict"] == verdict:
            reason = r.get("reason") or "(no reason given)"
            groups.setdefault(reason, []).append(r["id"])
    return sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))


def _md_cell(text: Any) -> str:
    return _one_line(str(text if text is not None else ""), 400).replace("|", "\\|")


def render_markdown(doc: Mapping[str, Any]) -> str:
    recs = doc["cases"]
    meta = doc.get("meta", {})
    lines = ["# cpr-transfer conformance", "",
             f"**{summary_line(recs)}**", "", facts_line(meta), ""]
    attention = [r for r in recs if r["verdict"] in ("fail", "error", "xpass")]
    if attention:
        lines += ["## Needs attention", ""]
        for r in sorted(attention, key=lambda r: (VERDICTS.index(r["verdict"]), r["id"])):
            lines.append(f"- **{r['verdict'].upper()}** `{r['id']}`: {_md_cell(r['reason'])}")
        lines.append("")
    for area, rs in _by_area(recs):
        c = counts(rs)
        lines += [f"## {area} ({', '.join(f'{n} {v}' for v, n in c.items() if n)})", "",
                  "| verdict | case | expected | observed | notes |",
                  "|---|---|---|---|---|"]
        for r in rs:
            notes = r.get("reason") or key_figures(r)
            lines.append(f"| {r['verdict']} | `{r['id']}` | {_md_cell(r['expected'])} | "
                         f"{_md_cell(observed_text(r)) or '-'} | {_md_cell(notes)} |")
        lines.append("")
    for verdict, title in (("xfail", "Known deviations (expected failures)"),
                           ("skip", "Skips (not run, with the reason)")):
        groups = _grouped_reasons(recs, verdict)
        if groups:
            lines += [f"## {title}", ""]
            for reason, ids in groups:
                lines.append(f"- {_md_cell(reason)}: " + ", ".join(f"`{i}`" for i in ids))
            lines.append("")
    lines += ["Verdicts: " + "; ".join(f"**{v}**: {VERDICT_MEANING[v]}" for v in
                                       ("pass", "fail", "error", "xfail", "xpass", "skip")), ""]
    return "\n".join(lines)


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1d2330;background:#fff}
h1{font-size:22px;margin:0 0 6px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde2ea;padding-bottom:4px}
.facts{color:#4a5468;margin:4px 0 14px}.summary{display:flex;gap:8px;flex-wrap:wrap;margin:12px 0}
.pill{border-radius:14px;padding:4px 12px;font-weight:600;border:1px solid transparent}
table{border-collapse:collapse;width:100%;margin:6px 0 4px;table-layout:fixed}
col.c-v{width:76px}col.c-id{width:30%}col.c-exp{width:17%}col.c-obs{width:24%}
td{overflow-wrap:anywhere}th,td{text-align:left;vertical-align:top;padding:6px 8px;border-bottom:1px solid #e8ebf0}
th{background:#f4f6f9;font-weight:600;font-size:13px;color:#38404f}td.id{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12.5px}
.t{color:#4a5468;font-size:12.5px;font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;white-space:normal}.v{display:inline-block;min-width:44px;text-align:center;border-radius:4px;padding:1px 6px;font-weight:700;font-size:12px;text-transform:uppercase}
.pass{background:#dff3e4;color:#17602c}.fail{background:#fbe0e0;color:#9b1c1c}.error{background:#fde8cf;color:#8a4b00}
.xfail{background:#ece6fb;color:#4b2e99}.xpass{background:#ffd6f0;color:#8c0e5c}.skip{background:#eceff3;color:#4a5468}
tr.row-fail td,tr.row-error td{background:#fff8f7}details{font-size:12.5px;color:#38404f}summary{cursor:pointer;color:#2a5db0}
dl{display:grid;grid-template-columns:max-content auto;gap:1px 12px;margin:4px 0}dt{font-family:ui-monospace,monospace;color:#4a5468}dd{margin:0}
ul.reasons li{margin:4px 0}code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12.5px;background:#f4f6f9;padding:0 3px;border-radius:3px}
.legend{color:#4a5468;font-size:12.5px;margin-top:28px}.pill.zero{opacity:.45}
.files a{margin-right:10px}.attn li{margin:3px 0}
"""


def _h(text: Any) -> str:
    return html.escape(str(text if text is not None else ""))


def _badge(verdict: str) -> str:
    return f'<span class="v {verdict}">{_h(verdict)}</span>'


def _href(path: str, base: Optional[Path]) -> str:
    """A link to an artifact: relative to the page when it lies below it."""
    p = Path(path)
    if base is not None:
        try:
            return "/".join(p.resolve().relative_to(Path(base).resolve()).parts)
        except ValueError:
            pass
    return p.resolve().as_uri() if p.is_absolute() else path


def _details(r: Mapping[str, Any], base: Optional[Path] = None) -> str:
    parts = []
    summ = r.get("summary") or {}
    if summ:
        parts.append(("parameters", ", ".join(f"{k} {v}" for k, v in summ.items()
                                              if v is not None)))
    for name in ("evidence", "timings", "durations"):
        vals = r.get(name) or {}
        if vals:
            parts.append((name, "<dl>" + "".join(
                f"<dt>{_h(k)}</dt><dd>{_h(v)}</dd>" for k, v in vals.items()) + "</dl>"))
    if r.get("actual") and r["actual"].get("message"):
        parts.append(("QEMU said", f"<code>{_h(_one_line(r['actual']['message'], 600))}</code>"))
    files = r.get("artifacts") or {}
    if files:
        parts.append(("files", "<span class=\"files\">" + "".join(
            f"<a href=\"{_h(_href(path, base))}\">{_h(name)}</a>"
            for name, path in files.items()) + "</span>"))
    if not parts:
        return ""
    raw = ("evidence", "timings", "durations", "QEMU said", "files")
    body = "".join(f"<div><b>{_h(k)}</b>: {v if k in raw else _h(v)}</div>" for k, v in parts)
    return f"<details><summary>details</summary>{body}</details>"


def render_html(doc: Mapping[str, Any], base: Optional[Path] = None) -> str:
    """A self-contained page (inline CSS, no scripts, no external assets).

    ``base``: the directory the page will live in; links to case artifacts below it
    are made relative, so the reports directory can be moved or archived whole."""
    recs = doc["cases"]
    meta = doc.get("meta", {})
    c = counts(recs)
    out = ["<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
           "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">",
           f"<title>cpr-transfer conformance: {_h(summary_line(recs))}</title>",
           f"<style>{_CSS}</style></head><body>",
           "<h1>cpr-transfer conformance</h1>",
           f"<div class=\"facts\" id=\"summary-line\"><b>{_h(summary_line(recs))}</b></div>",
           f"<div class=\"facts\">{_h(facts_line(meta))}"
           + (f"; wall {doc['wall_seconds']} s" if doc.get("wall_seconds") is not None else "")
           + "</div>",
           "<div class=\"summary\">"]
    for v in ("pass", "fail", "error", "xfail", "xpass", "skip"):
        zero = " zero" if not c[v] else ""
        out.append(f"<span class=\"pill {v}{zero}\" title=\"{_h(VERDICT_MEANING[v])}\">"
                   f"{c[v]} {v}</span>")
    out.append("</div>")
    attention = [r for r in recs if r["verdict"] in ("fail", "error", "xpass")]
    if attention:
        out.append("<h2>Needs attention</h2><ul class=\"attn\">")
        for r in sorted(attention, key=lambda r: (VERDICTS.index(r["verdict"]), r["id"])):
            out.append(f"<li>{_badge(r['verdict'])} <code>{_h(r['id'])}</code>: "
                       f"{_h(_one_line(r['reason'], 600))}</li>")
        out.append("</ul>")
    for area, rs in _by_area(recs):
        ac = counts(rs)
        out.append(f"<h2 id=\"area-{_h(area)}\">{_h(area)} <small>("
                   + ", ".join(f"{n} {v}" for v, n in ac.items() if n) + ")</small></h2>")
        out.append("<table><colgroup><col class=\"c-v\"><col class=\"c-id\">"
                   "<col class=\"c-exp\"><col class=\"c-obs\"><col></colgroup>"
                   "<thead><tr><th>verdict</th><th>case</th><th>expected</th>"
                   "<th>observed</th><th>notes</th></tr></thead><tbody>")
        for r in rs:
            notes = _h(_one_line(r.get("reason") or "", 400)) or _h(key_figures(r))
            out.append(
                f"<tr class=\"row-{r['verdict']}\" data-verdict=\"{r['verdict']}\">"
                f"<td>{_badge(r['verdict'])}</td>"
                f"<td class=\"id\">{_h(r['id'])}<div class=\"t\">{_h(r.get('title'))}</div></td>"
                f"<td>{_h(r['expected'])}</td><td>{_h(observed_text(r)) or '&ndash;'}</td>"
                f"<td>{notes}{_details(r, base)}</td></tr>")
        out.append("</tbody></table>")
    for verdict, title, blurb in (
            ("xfail", "Known deviations",
             "Run as strict expected failures: each entry in expectations/ names the "
             "QEMU versions it applies to and links its evidence (docs/deviations.md)."),
            ("skip", "Skips",
             "Not run because this QEMU or host lacks a capability; a skip is never a pass.")):
        groups = _grouped_reasons(recs, verdict)
        if groups:
            out.append(f"<h2>{title}</h2><p class=\"t\">{_h(blurb)}</p><ul class=\"reasons\">")
            for reason, ids in groups:
                out.append(f"<li>{_h(reason)}<br>" + " ".join(
                    f"<code>{_h(i)}</code>" for i in ids) + "</li>")
            out.append("</ul>")
    out.append("<div class=\"legend\">" + "<br>".join(
        f"{_badge(v)} {_h(VERDICT_MEANING[v])}" for v in
        ("pass", "fail", "error", "xfail", "xpass", "skip")) + "</div>")
    out.append("</body></html>")
    return "\n".join(out)


def write_matrix(doc: Mapping[str, Any], reports: Path) -> Dict[str, Path]:
    """Write conformance.json, conformance.md and conformance.html into ``reports``."""
    reports = Path(reports)
    reports.mkdir(parents=True, exist_ok=True)
    paths = {"json": reports / "conformance.json", "md": reports / "conformance.md",
             "html": reports / "conformance.html"}
    paths["json"].write_text(json.dumps(doc, indent=2, default=str) + "\n")
    paths["md"].write_text(render_markdown(doc))
    paths["html"].write_text(render_html(doc, base=reports))
    return paths


# --------------------------------------------------------------------------- compare

#: Change kinds, in report order. The first two make ``harness report`` exit 1.
REGRESSION_KINDS = ("regression", "coverage-loss")
CHANGE_KINDS = REGRESSION_KINDS + ("fix", "coverage-gain", "changed", "new", "removed")
CHANGE_TITLES = {
    "regression": "Regressions",
    "coverage-loss": "Coverage lost (ran before, skipped now)",
    "fix": "Fixes",
    "coverage-gain": "Coverage gained (skipped before, runs now)",
    "changed": "Other verdict changes",
    "new": "New cases",
    "removed": "Removed cases",
}


def change_kind(old: str, new: str) -> Optional[str]:
    """How a verdict change reads; None when unchanged. See docs/reports.md."""
    if old == new:
        return None
    if new in _BAD:
        return "changed" if old in _BAD else "regression"
    if new == "skip":
        return "coverage-loss"
    if old == "skip":
        return "coverage-gain"
    if new == "xfail":
        # pass/xpass -> xfail: it worked before, now it is a (recorded) failure.
        return "regression" if old in ("pass", "xpass") else "changed"
    if new in ("pass", "xpass"):
        return "fix" if old in _BAD + ("xfail",) else "changed"
    return "changed"


@dataclass
class Change:
    kind: str
    id: str
    old: Optional[str]
    new: Optional[str]
    reason: str = ""       # the current record's reason (skip reason, failed checks...)
    old_reason: str = ""   # the baseline record's

    @property
    def why(self) -> str:
        """What a reader needs: the reason now, or what it was (a fix has none now)."""
        if self.reason:
            return self.reason
        return f"was: {self.old_reason}" if self.old_reason else ""


@dataclass
class Comparison:
    baseline: Mapping[str, Any]
    current: Mapping[str, Any]
    changes: List[Change] = field(default_factory=list)
    unchanged: int = 0

    @property
    def regressions(self) -> List[Change]:
        return [c for c in self.changes if c.kind in REGRESSION_KINDS]

    @property
    def exit_code(self) -> int:
        return 1 if self.regressions else 0

    def of(self, kind: str) -> List[Change]:
        return [c for c in self.changes if c.kind == kind]


def compare(baseline: Mapping[str, Any], current: Mapping[str, Any]) -> Comparison:
    """Which cases changed verdict from ``baseline`` to ``current`` (both matrices)."""
    old = {c["id"]: c for c in baseline["cases"]}
    new = {c["id"]: c for c in current["cases"]}
    cmp = Comparison(baseline, current)
    for sid in sorted(set(old) | set(new)):
        o, n = old.get(sid), new.get(sid)
        if o is None:
            cmp.changes.append(Change("new", sid, None, n["verdict"], n.get("reason") or ""))
        elif n is None:
            cmp.changes.append(Change("removed", sid, o["verdict"], None, "",
                                      o.get("reason") or ""))
        else:
            kind = change_kind(o["verdict"], n["verdict"])
            if kind is None:
                cmp.unchanged += 1
            else:
                cmp.changes.append(Change(kind, sid, o["verdict"], n["verdict"],
                                          n.get("reason") or "", o.get("reason") or ""))
    rank = {k: i for i, k in enumerate(CHANGE_KINDS)}
    cmp.changes.sort(key=lambda c: (rank[c.kind], c.id))
    return cmp


def _arrow(c: Change) -> str:
    return f"{c.old or '(absent)'} -> {c.new or '(absent)'}"


def render_comparison_text(cmp: Comparison, baseline_name: str, current_name: str) -> str:
    n = len({c["id"] for c in cmp.current["cases"]})
    lines = [f"compared {current_name} ({n} cases) with baseline {baseline_name}: "
             f"{len(cmp.changes)} changed, {cmp.unchanged} unchanged"]
    width = max([len(c.id) for c in cmp.changes] + [10])
    for c in cmp.changes:
        lines.append(f"  {c.kind.upper():14s} {c.id:{width}s} {_arrow(c):18s} "
                     f"{_one_line(c.why, 160)}".rstrip())
    r = cmp.regressions
    lines.append(f"{len(r)} regression(s)" + (" (regressions and lost coverage)" if r else
                                              ": no case got worse"))
    return "\n".join(lines)


def render_comparison_md(cmp: Comparison, baseline_name: str, current_name: str) -> str:
    bm, cm = cmp.baseline.get("meta", {}), cmp.current.get("meta", {})
    r = cmp.regressions
    lines = ["# cpr-transfer conformance: changes since the baseline", "",
             f"**{len(r)} regression(s)**, {len(cmp.of('fix'))} fix(es), "
             f"{len(cmp.changes)} change(s), {cmp.unchanged} unchanged", "",
             "| | file | run |", "|---|---|---|",
             f"| baseline | `{baseline_name}` | {_md_cell(facts_line(bm))} |",
             f"| current | `{current_name}` | {_md_cell(facts_line(cm))} |", ""]
    for kind in CHANGE_KINDS:
        cs = cmp.of(kind)
        if not cs:
            continue
        lines += [f"## {CHANGE_TITLES[kind]} ({len(cs)})", "",
                  "| case | baseline | current | why |", "|---|---|---|---|"]
        for c in cs:
            lines.append(f"| `{c.id}` | {c.old or '-'} | {c.new or '-'} | {_md_cell(c.why)} |")
        lines.append("")
    if not cmp.changes:
        lines += ["No case changed verdict.", ""]
    lines += ["A regression is a case that is now `fail`/`error` but was not, or that "
              "passed and is now a known deviation (`xfail`); lost coverage is a case "
              "that ran and is now skipped. Either makes `harness report --baseline` "
              "exit 1. See docs/reports.md.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- Allure


def environment_properties(meta: Mapping[str, Any]) -> str:
    """Allure's environment.properties: the run's facts, one ``key = value`` a line."""
    keys = (("QEMU.src", "qemu_src"), ("QEMU.dst", "qemu_dst"), ("accel", "accel"),
            ("host.kernel", "kernel"), ("host", "host"), ("arch", "arch"),
            ("python", "python"), ("QEMU.src.path", "qemu_src_path"),
            ("QEMU.dst.path", "qemu_dst_path"))
    lines = []
    for label, key in keys:
        value = meta.get(key)
        if value is None:
            continue
        # .properties: escape backslashes, keep one line.
        lines.append(f"{label} = " + " ".join(str(value).split()).replace("\\", "\\\\"))
    return "\n".join(lines) + "\n"


# Allure puts a failed result into the *first* category whose status and regexes
# match, so the order says which cause wins when a case fails several checks (a
# target left paused also shows no guest progress: the run state is named). A regex
# must match the *whole* message (Java Pattern.matches): each one is ``(?s).*...*``. The message of a failed case is
# pytest's ``exconly()``: "<module>.<Class>: <str(exc)>". The texts matched here are
# built by harness.errors (ConformanceFailure lists "  - <check>: expected ..., got ...";
# WaitTimeout says "timed out after ... waiting for ...") and by harness.pair (the
# observed outcome "src-crashed"/"dst-crashed"). A check name is what comes between
# "  - " and ": expected " on one line.
_CHECK = r"(?:(?!: expected )[^\n])*"
CATEGORIES: List[Dict[str, Any]] = [
    {"name": "QEMU crashed",
     "description": "a QEMU process died during the transfer (signal or unexpected exit)",
     "matchedStatuses": ["failed", "broken"],
     "messageRegex": r"(?s).*\n  - outcome: expected '[^']*', got '(src|dst)-crashed'.*"},
    {"name": "QEMU refused a transfer it should accept",
     "description": "outcome mismatch: the scenario must complete, QEMU refused or failed it",
     "matchedStatuses": ["failed", "broken"],
     "messageRegex": r"(?s).*\n  - outcome: expected 'completes', got "
                     r"'(src-refuses|dst-refuses|failed)'.*"},
    {"name": "QEMU did not refuse as documented",
     "description": "outcome mismatch on an error path: QEMU accepted, or refused on the "
                    "other side",
     "matchedStatuses": ["failed", "broken"],
     "messageRegex": r"(?s).*\n  - outcome: expected '(src|dst)-refuses', got "
                     r"'(completes|failed|src-refuses|dst-refuses)'.*"},
    {"name": "QEMU refused with another message",
     "matchedStatuses": ["failed", "broken"],
     "messageRegex": r"(?s).*\n  - error message: expected .*"},
    {"name": "RAM not kept in place",
     "description": "the target did not map the source's RAM, or RAM pages went through "
                    "the migration stream",
     "matchedStatuses": ["failed", "broken"],
     "messageRegex": rf"(?s).*\n  - {_CHECK}(same memory|RAM pages in the main stream)"
                     rf"{_CHECK}: expected .*"},
    {"name": "RAM changed",
     "description": "guest RAM content check failed (the seeded pattern, a changed page)",
     "matchedStatuses": ["failed", "broken"],
     "messageRegex": rf"(?s).*\n  - {_CHECK}(RAM|[Pp]attern){_CHECK}: expected .*"},
    {"name": "Guest reset",
     "matchedStatuses": ["failed", "broken"],
     "messageRegex": rf"(?s).*\n  - {_CHECK}(guest reset|counter never went back)"
                     rf"{_CHECK}: expected .*"},
    {"name": "Wrong run state after the transfer",
     "matchedStatuses": ["failed", "broken"],
     "messageRegex": rf"(?s).*\n  - {_CHECK}(run state|survives refusal|query-migrate status)"
                     rf"{_CHECK}: expected .*"},
    {"name": "Guest stalled",
     "description": "the guest's progress counter did not move on",
     "matchedStatuses": ["failed", "broken"],
     "messageRegex": rf"(?s).*\n  - {_CHECK}guest progress{_CHECK}: expected .*"},
    {"name": "Guest pause not measured",
     "matchedStatuses": ["failed", "broken"],
     "messageRegex": rf"(?s).*\n  - {_CHECK}pause measured{_CHECK}: expected .*"},
    {"name": "Retry after a refusal failed",
     "matchedStatuses": ["failed", "broken"],
     "messageRegex": r"(?s).*\n  - retry of a valid transfer: expected .*"},
    {"name": "Harness timeout",
     "description": "a bounded harness wait ran out (WaitTimeout): see what it waited for",
     "matchedStatuses": ["failed", "broken"],
     "messageRegex": r"(?s).*WaitTimeout: .*timed out after .* waiting for .*"},
    {"name": "QEMU did not start",
     "matchedStatuses": ["broken"],
     "messageRegex": r"(?s).*VMLaunchFailure: .*"},
    {"name": "Known deviations (expected failures)",
     "matchedStatuses": ["skipped"],
     "messageRegex": r"(?s)XFAIL known deviation: .*"},
    {"name": "Not supported here (skips)",
     "matchedStatuses": ["skipped"],
     "messageRegex": r"(?s)(?!XFAIL).*"},
    {"name": "Other harness errors",
     "description": "broken for a reason none of the categories above names",
     "matchedStatuses": ["broken"],
     "messageRegex": r"(?s)(?!.*\n  - [^\n]*: expected )(?!.*WaitTimeout: )"
                     r"(?!.*VMLaunchFailure: ).*"},
]


def write_allure_extras(alluredir: Path, meta: Mapping[str, Any]) -> None:
    """environment.properties and categories.json for an allure-results directory."""
    alluredir = Path(alluredir)
    alluredir.mkdir(parents=True, exist_ok=True)
    (alluredir / "environment.properties").write_text(
        environment_properties({**host_facts(), **dict(meta)}))
    (alluredir / "categories.json").write_text(json.dumps(CATEGORIES, indent=2) + "\n")


REPORT_NAME = "cpr-transfer conformance"


def write_executor(results: Path, history: Path, build_name: str = "") -> int:
    """executor.json: names the report and numbers the run for Allure's trend graphs.

    The build number continues from the previous report's history (``history``, its
    ``history-trend.json``); returns the number given to this run."""
    order = 0
    try:
        trend = json.loads((Path(history) / "history-trend.json").read_text())
        order = max([int(t.get("buildOrder") or 0) for t in trend] + [len(trend)])
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    order += 1
    name = build_name or f"run #{order} on {socket.gethostname()}"
    executor = {"name": socket.gethostname(), "type": "cpr-harness", "buildOrder": order,
                "buildName": name, "reportName": REPORT_NAME}
    Path(results).mkdir(parents=True, exist_ok=True)
    (Path(results) / "executor.json").write_text(json.dumps(executor, indent=2) + "\n")
    return order


#: generate_allure's status values.
ALLURE_OK, ALLURE_SKIPPED, ALLURE_FAILED = "ok", "skipped", "failed"


def generate_allure(reports: Path, script: Path = ALLURE_SCRIPT,
                    timeout: float = 300.0) -> Tuple[str, str]:
    """Build the Allure HTML report from ``reports/allure-results``.

    Returns ``(status, one line)``: ``ok``; ``skipped`` when java, npm or the results
    are missing (the script's exit code 3); ``failed`` otherwise.
    """
    paths = default_paths(reports)
    if paths["allure-results"].is_dir() and any(paths["allure-results"].iterdir()):
        write_executor(paths["allure-results"], paths["allure-report"] / "history")
    try:
        p = subprocess.run(["bash", str(script), str(reports)], capture_output=True,
                           text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return ALLURE_FAILED, f"allure-report: failed: still running after {timeout:.0f}s"
    except OSError as exc:
        return ALLURE_FAILED, f"allure-report: failed: cannot run {script}: {exc}"
    last = (p.stdout.strip().splitlines() or [""])[-1]
    if p.returncode == 0:
        return ALLURE_OK, last
    if p.returncode == 3:
        return ALLURE_SKIPPED, last
    err = " ".join(p.stderr.strip().splitlines()[-3:])
    return ALLURE_FAILED, (last or f"allure-report: failed (exit {p.returncode})") + \
        (f": {_one_line(err, 300)}" if err else "")


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
