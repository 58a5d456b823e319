"""The conformance matrix as pages: ``conformance.md`` and a self-contained
``conformance.html``."""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from harness.tools.report import area_grid, case_view, same_args
from harness.tools.report.records import (VERDICT_MEANING, VERDICTS, _one_line, counts,
                                          summary_line)

# --------------------------------------------------------------------------- rendering


def _qemu_line(meta: Mapping[str, Any]) -> str:
    src, dst = meta.get("qemu_src", "?"), meta.get("qemu_dst", "?")
    return f"QEMU {src}" if src == dst else f"QEMU src {src}, dst {dst}"


def facts_line(meta: Mapping[str, Any]) -> str:
    aarch = ""
    if meta.get("qemu_aarch64_src"):
        a_src, a_dst = meta.get("qemu_aarch64_src"), meta.get("qemu_aarch64_dst")
        aarch = f"; aarch64 QEMU {a_src}" if a_src == a_dst else \
            f"; aarch64 QEMU src {a_src}, dst {a_dst}"
    return (f"{_qemu_line(meta)}{aarch}; accel {meta.get('accel', '?')}; dialect "
            f"{meta.get('dialect', '?')}; host {meta.get('host', '?')} "
            f"(Linux {meta.get('kernel', '?')}, {meta.get('arch', '?')}); "
            f"Python {meta.get('python', '?')}; generated {meta.get('generated', '?')}")


def run_line(meta: Mapping[str, Any]) -> str:
    """Which run the page shows: its id, the harness commit, its start."""
    if not meta.get("run_id"):
        return "run: unknown (written by an older harness)"
    return (f"run {meta['run_id']}, harness {meta.get('harness_commit', '?')}, started "
            f"{meta.get('run_started', '?')}")


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

    pause, pause_max = find("pause.switch_ms"), find("pause.switch_max_ms")
    if pause is not None:
        out.append(f"guest pause {_fmt(pause)}.." + (f"{_fmt(pause_max)} ms"
                                                     if pause_max is not None else "? ms"))
    after = find("pause.window.longest_ms")
    if after is not None:
        out.append(f"longest stall after it {_fmt(after)} ms")
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
             f"**{summary_line(recs)}**", "", facts_line(meta), "", run_line(meta), ""]
    for w in meta.get("warnings") or []:
        lines += [f"> **Warning:** {w}", ""]
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
    lines += same_args.markdown(recs)
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
tr.row-fail td,tr.row-error td{background:#fff8f7}tr.more td{border-top:0;padding-top:0}
tr:has(+ tr.more) td{border-bottom:0}details{font-size:12.5px;color:#38404f}summary{cursor:pointer;color:#2a5db0}
.warn{background:#fff4d6;border:1px solid #e8c66a;color:#6b4e00;padding:6px 10px;border-radius:4px;margin:8px 0}
.filter{margin:10px 0;font-size:13px}.filter label{margin-right:12px;cursor:pointer}.filter input[type=search]{margin-left:8px;padding:2px 6px}
ul.reasons li{margin:4px 0}code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12.5px;background:#f4f6f9;padding:0 3px;border-radius:3px}
.legend{color:#4a5468;font-size:12.5px;margin-top:28px}.pill.zero{opacity:.45}
.attn li{margin:3px 0}
""" + case_view.CSS + area_grid.CSS

# The verdict filter: hides table rows and grid tiles whose verdict is unticked, and
# rows whose id does not contain the search text. The page works without it.
_JS = """
(function(){
  function apply(){
    var on={};document.querySelectorAll('.filter input[data-v]').forEach(function(c){on[c.dataset.v]=c.checked;});
    var q=(document.getElementById('q').value||'').toLowerCase();
    document.querySelectorAll('[data-verdict]').forEach(function(el){
      var id=(el.getAttribute('data-id')||el.getAttribute('title')||'').toLowerCase();
      el.style.display=(on[el.dataset.verdict]&&id.indexOf(q)>=0)?'':'none';});
  }
  document.querySelectorAll('.filter input').forEach(function(c){c.addEventListener('input',apply);});
  apply();
})();
"""


def _h(text: Any) -> str:
    return html.escape(str(text if text is not None else ""))


def _badge(verdict: str) -> str:
    return f'<span class="v {verdict}">{_h(verdict)}</span>'


def _html_head(doc: Mapping[str, Any]) -> List[str]:
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
           f"<div class=\"facts\" id=\"run-line\">{_h(run_line(meta))}</div>"]
    for w in meta.get("warnings") or []:
        out.append(f"<div class=\"warn\"><b>Warning:</b> {_h(w)}</div>")
    out.append("<div class=\"summary\">")
    for v in ("pass", "fail", "error", "xfail", "xpass", "skip"):
        zero = " zero" if not c[v] else ""
        out.append(f"<span class=\"pill {v}{zero}\" title=\"{_h(VERDICT_MEANING[v])}\">"
                   f"{c[v]} {v}</span>")
    out.append("</div>")
    out.append("<div class=\"filter\">show: " + "".join(
        f"<label><input type=\"checkbox\" data-v=\"{v}\" checked> {v}</label>"
        for v in ("pass", "fail", "error", "xfail", "xpass", "skip"))
        + "<label>case id contains<input type=\"search\" id=\"q\" placeholder=\"e.g. "
          "fd-\"></label></div>")
    attention = [r for r in recs if r["verdict"] in ("fail", "error", "xpass")]
    if attention:
        out.append("<h2>Needs attention</h2><ul class=\"attn\">")
        for r in sorted(attention, key=lambda r: (VERDICTS.index(r["verdict"]), r["id"])):
            out.append(f"<li>{_badge(r['verdict'])} <code>{_h(r['id'])}</code>: "
                       f"{_h(_one_line(r['reason'], 600))}</li>")
        out.append("</ul>")
    return out


def _html_area(area: str, rs: Sequence[Mapping[str, Any]], base: Optional[Path]) -> List[str]:
    ac = counts(rs)
    out = [f"<h2 id=\"area-{_h(area)}\">{_h(area)} <small>("
           + ", ".join(f"{n} {v}" for v, n in ac.items() if n) + ")</small></h2>",
           area_grid.render(area, rs),
           "<table><colgroup><col class=\"c-v\"><col class=\"c-id\">"
           "<col class=\"c-exp\"><col class=\"c-obs\"><col></colgroup>"
           "<thead><tr><th>verdict</th><th>case</th><th>expected</th>"
           "<th>observed</th><th>notes</th></tr></thead><tbody>"]
    for r in rs:
        notes = _h(_one_line(r.get("reason") or "", 400)) or _h(key_figures(r))
        if r.get("deviation"):
            notes += (f" <a href=\"{_h(case_view.doc_link(r['deviation']['link'], base))}\">"
                      f"[{_h(r['deviation']['id'])}]</a>")
        out.append(
            f"<tr class=\"row-{r['verdict']}\" id=\"row-{_h(r['id'])}\" "
            f"data-verdict=\"{r['verdict']}\" data-id=\"{_h(r['id'])}\">"
            f"<td>{_badge(r['verdict'])}</td>"
            f"<td class=\"id\">{_h(r['id'])}<div class=\"t\">{_h(r.get('title'))}</div></td>"
            f"<td>{_h(r['expected'])}</td><td>{_h(observed_text(r)) or '&ndash;'}</td>"
            f"<td>{notes}</td></tr>")
        details = case_view.details(r, base)
        if details:
            # Full width, under its case: a check table needs the room.
            out.append(f"<tr class=\"more row-{r['verdict']}\" data-verdict=\"{r['verdict']}\" "
                       f"data-id=\"{_h(r['id'])}\"><td></td><td colspan=\"4\">{details}</td></tr>")
    out.append("</tbody></table>")
    return out


def _deviation_groups(recs: Sequence[Mapping[str, Any]], base: Optional[Path]) -> List[str]:
    """Known deviations, one entry per deviation with its doc and its cases."""
    groups: Dict[str, List[Mapping[str, Any]]] = {}
    for r in recs:
        if r["verdict"] in ("xfail", "xpass"):
            key = (r.get("deviation") or {}).get("id") or r.get("reason") or "?"
            groups.setdefault(key, []).append(r)
    if not groups:
        return []
    out = ["<h2 id=\"deviations\">Known deviations</h2><p class=\"t\">Run as strict expected "
           "failures: each entry in expectations/ names the QEMU versions, on the side it "
           "belongs to, where it was observed, and links its evidence. An xpass means QEMU "
           "changed.</p><ul class=\"reasons\">"]
    for key, rs in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        dev = rs[0].get("deviation")
        head = (f"<a href=\"{_h(case_view.doc_link(dev['link'], base))}\"><b>{_h(dev['id'])}</b>"
                f"</a>: {_h(dev.get('reason'))}" if dev else _h(key))
        out.append(f"<li id=\"deviation-{_h(key)}\">{head}<br>" + " ".join(
            f"<a href=\"#row-{_h(r['id'])}\">{_badge(r['verdict'])} <code>{_h(r['id'])}</code></a>"
            for r in rs) + "</li>")
    out.append("</ul>")
    return out


def _html_groups(recs: Sequence[Mapping[str, Any]], base: Optional[Path] = None) -> List[str]:
    out = _deviation_groups(recs, base)
    groups = _grouped_reasons(recs, "skip")
    if groups:
        out.append("<h2>Skips</h2><p class=\"t\">Not run: a capability this QEMU or host "
                   "lacks, or an opt-in case; a skip is never a pass.</p><ul class=\"reasons\">")
        for reason, ids in groups:
            out.append(f"<li>{_h(reason)}<br>" + " ".join(
                f"<a href=\"#row-{_h(i)}\"><code>{_h(i)}</code></a>" for i in ids) + "</li>")
        out.append("</ul>")
    return out


def render_html(doc: Mapping[str, Any], base: Optional[Path] = None) -> str:
    """A self-contained page (inline CSS and one inline script for the filter, no
    external assets).

    ``base``: the directory the page will live in; links to case artifacts below it
    are made relative, so the reports directory can be moved or archived whole."""
    out = _html_head(doc)
    for area, rs in _by_area(doc["cases"]):
        out += _html_area(area, rs, base)
    out += same_args.render_html(doc["cases"])
    out += _html_groups(doc["cases"], base)
    out.append("<div class=\"legend\">" + "<br>".join(
        f"{_badge(v)} {_h(VERDICT_MEANING[v])}" for v in
        ("pass", "fail", "error", "xfail", "xpass", "skip")) + "</div>")
    out.append(f"<script>{_JS}</script></body></html>")
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


