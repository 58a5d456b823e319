"""One case as HTML: every check with what was expected and what was seen (passes
included), the evidence in labelled lines, a soak chain's hops, the sampler's
timeline, the files. Used inside conformance.html and, as a page of its own, as the
Allure attachment of each case."""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence

from harness.tools.report import deviations, digest, layout
from harness.tools.report.text import expected_words, plural, words

CSS = """
table.checks,table.kv,table.hops{border-collapse:collapse;width:100%;margin:4px 0 8px;table-layout:auto;font-size:12.5px}
table.checks{table-layout:fixed}table.checks col.st{width:64px}table.checks col.nm{width:27%}table.checks col.ex{width:25%}
table.checks th,table.checks td,table.kv th,table.kv td,table.hops th,table.hops td{border-bottom:1px solid #e8ebf0;padding:3px 6px;text-align:left;vertical-align:top;overflow-wrap:anywhere}
table.checks th,table.hops th{background:#f4f6f9;font-weight:600;color:#38404f}
table.kv th{width:13em;color:#4a5468;font-weight:600;white-space:nowrap}
table.checks td.ok{color:#17602c;font-weight:700;white-space:nowrap}table.checks td.bad{color:#9b1c1c;font-weight:700;white-space:nowrap}
table.checks tr.bad td{background:#fff3f2}table.checks td.name{white-space:normal;min-width:12em}
table.checks .detail{color:#9b1c1c;font-size:12px}
img.timeline{max-width:100%;border:1px solid #e8ebf0;margin:4px 0}
.files a{margin-right:10px}
"""


def _h(text: Any) -> str:
    return html.escape(str(text if text is not None else ""))


def _value(v: Any) -> str:
    if v is None or isinstance(v, bool):
        return _h(words(v, "-"))
    if isinstance(v, (dict, list)):
        return f"<code>{_h(json.dumps(v, default=str))}</code>"
    return _h(" ".join(str(v).split()))


def checks_table(checks: Sequence[Mapping[str, Any]]) -> str:
    """Every check: ok or FAILED, its name, expected, observed (and why, when failed)."""
    if not checks:
        return ""
    rows = []
    for c in checks:
        ok = bool(c.get("ok"))
        why = "" if ok or not c.get("detail") else \
            f"<div class=\"detail\">{_h(' '.join(str(c['detail']).split()))}</div>"
        rows.append(f"<tr class=\"{'ok' if ok else 'bad'}\">"
                    f"<td class=\"{'ok' if ok else 'bad'}\">{'ok' if ok else 'FAILED'}</td>"
                    f"<td class=\"name\">{_h(c.get('check'))}</td>"
                    f"<td>{_value(c.get('expected'))}</td>"
                    f"<td>{_value(c.get('actual'))}{why}</td></tr>")
    n_bad = sum(1 for c in checks if not c.get("ok"))
    caption = f"{plural(len(checks), 'check')}, {n_bad} failed" if n_bad else \
        f"{plural(len(checks), 'check')}, " + ("all ok" if len(checks) > 1 else "ok")
    return ("<table class=\"checks\"><caption style=\"text-align:left;color:#4a5468\">"
            f"{_h(caption)}</caption><colgroup><col class=\"st\"><col class=\"nm\">"
            "<col class=\"ex\"><col></colgroup><thead><tr><th></th><th>check</th><th>expected</th>"
            "<th>observed</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def kv_table(rows: Sequence[Sequence[Any]]) -> str:
    if not rows:
        return ""
    return "<table class=\"kv\"><tbody>" + "".join(
        f"<tr><th>{_h(k)}</th><td>{_h(v)}</td></tr>" for k, v in rows) + "</tbody></table>"


def hops_table(hops: Sequence[Mapping[str, Any]]) -> str:
    if not hops:
        return ""
    cols = digest.HOP_COLUMNS
    return ("<table class=\"hops\"><thead><tr>" + "".join(f"<th>{_h(c)}</th>" for c in cols)
            + "</tr></thead><tbody>" + "".join(
                "<tr>" + "".join(f"<td>{_h(words(h.get(c), '-'))}</td>" for c in cols)
                + "</tr>"
                for h in hops) + "</tbody></table>")


def _href(path: str, base: Optional[Path]) -> str:
    """A link to an artifact: paths in a record are relative to the reports directory
    (where the page lives); an absolute one is linked as a file URI."""
    p = Path(path)
    if not p.is_absolute():
        return "/".join(p.parts)
    if base is not None:
        try:
            return "/".join(p.resolve().relative_to(Path(base).resolve()).parts)
        except ValueError:
            pass
    return p.resolve().as_uri()


def details(r: Mapping[str, Any], base: Optional[Path] = None, open_: bool = False) -> str:
    """The expandable details of one matrix record."""
    body = "".join(p for p in _detail_parts(r, base) if p)
    if not body:
        return ""
    return (f"<details{' open' if open_ else ''} id=\"case-{_h(r['id'])}\">"
            f"<summary>checks and evidence</summary>{body}</details>")


def _detail_parts(r: Mapping[str, Any], base: Optional[Path]) -> List[str]:
    parts: List[str] = []
    summ = r.get("summary") or {}
    if summ:
        parts.append("<div><b>parameters</b>: " + _h(", ".join(
            f"{k} {v}" for k, v in summ.items() if v is not None)) + "</div>")
    if r.get("deviation"):
        d = r["deviation"]
        parts.append(f"<div><b>known deviation</b>: <a href=\"#deviation-{_h(d['id'])}\">"
                     f"{_h(d['id'])}</a>: {_h(d.get('reason'))}</div>")
    parts.append(checks_table(r.get("checks") or []))
    parts.append(kv_table(r.get("highlights") or []))
    parts.append(hops_table(r.get("hops") or []))
    files = layout.case_files(r, base)
    if "timeline" in files:
        parts.append(f"<img class=\"timeline\" loading=\"lazy\" alt=\"sampler timeline\" "
                     f"src=\"{_h(_href(files['timeline'], base))}\">")
    parts.append(ending(r))
    parts.append(files_line(files, base))
    return parts


def ending(r: Mapping[str, Any]) -> str:
    """How the transfer ended, in full: the outcome and its message (QEMU's own words
    for a refusal; the harness's account of a fault or a crash)."""
    a = r.get("actual") or {}
    if not a.get("message"):
        return ""
    return (f"<div><b>how it ended</b>: {_h(a.get('outcome'))}: <code>"
            f"{_h(' '.join(str(a['message']).split()))}</code></div>")


def files_line(files: Mapping[str, str], base: Optional[Path], prefix: str = "") -> str:
    if not files:
        return ""
    return "<div class=\"files\"><b>files</b>: " + "".join(
        f"<a href=\"{_h(prefix + _href(path, base))}\">{_h(name)}</a>"
        for name, path in files.items()) + "</div>"


def case_page(rec: Mapping[str, Any], title: str = "", files: Optional[Mapping[str, str]] = None,
              back: str = "") -> str:
    """A result record (result.json) as a page of its own: the Allure attachment, and
    each case directory's ``case.html`` (``files``: the case's files, relative to that
    directory; ``back``: a link to the matrix page)."""
    checks = rec.get("checks") or []
    dev = rec.get("deviation") or {}
    head = [f"<h3>{_h(title or rec.get('id'))}</h3>"]
    if back:
        head.append(f"<div><a href=\"{_h(back)}\">all cases (conformance.html)</a></div>")
    if rec.get("verdict"):
        why = "the known deviation below" if dev else rec.get("reason")
        head.append(f"<div><b>verdict</b>: {_h(rec['verdict'])}"
                    + (f": {_h(why)}" if why else "") + "</div>")
    exp = rec.get("expected") or (rec.get("scenario") or {}).get("expect")
    if exp:
        head.append(f"<div><b>expected</b>: {_h(expected_words(exp))}</div>")
    if dev:
        head.append(f"<div><b>known deviation {_h(dev.get('id'))}</b>: "
                    f"{_h(dev.get('reason'))}</div>" + deviations.to_html(dev.get("text")))
    lines = rec.get("highlights") if "highlights" in rec else digest.highlights(rec)
    hops = rec.get("hops") if "highlights" in rec else digest.hop_rows(rec)
    timeline = (files or {}).get("timeline")
    body = head + [checks_table(checks), kv_table(lines or []), hops_table(hops or []),
                   f"<img class=\"timeline\" alt=\"sampler timeline\" src=\"{_h(timeline)}\">"
                   if timeline else "",
                   ending(rec) if rec.get("actual") else "", files_line(files or {}, None)]
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>"
            + _h(title or rec.get("id")) + "</title><style>"
            "body{font:13px/1.4 system-ui,sans-serif;margin:8px;color:#1d2330}"
            "code{font-family:ui-monospace,monospace;font-size:12px}pre{font-size:12px}" + CSS
            + "</style></head><body>" + "".join(b for b in body if b) + "</body></html>")
