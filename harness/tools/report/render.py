"""The conformance matrix as pages: ``conformance.md`` and a self-contained
``conformance.html``."""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from harness.tools.report import area_grid, case_view, layout, page, same_args
from harness.tools.report.records import (VERDICT_MEANING, VERDICTS, _one_line, counts,
                                          summary_line)
from harness.tools.report.text import clip, expected_words

# --------------------------------------------------------------------------- rendering


def _qemu_line(meta: Mapping[str, Any]) -> str:
    src, dst = meta.get("qemu_src", "?"), meta.get("qemu_dst", "?")
    return f"QEMU {src}" if src == dst else f"QEMU src {src}, dst {dst}"


def facts_line(meta: Mapping[str, Any], records: Sequence[Mapping[str, Any]] = ()) -> str:
    aarch = ""
    if meta.get("qemu_aarch64_src"):
        a_src, a_dst = meta.get("qemu_aarch64_src"), meta.get("qemu_aarch64_dst")
        aarch = f"; aarch64 QEMU {a_src}" if a_src == a_dst else \
            f"; aarch64 QEMU src {a_src}, dst {a_dst}"
    return (f"{_qemu_line(meta)}{aarch}; accel {page.accel_words(meta, records)}; dialect "
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
    """The outcome and its message on one line (cut at a word boundary, with an
    ellipsis: the whole message is under the case, "how it ended")."""
    a = r.get("actual")
    if not a:
        return ""
    msg = _essential(a.get("message") or "")
    return a["outcome"] + (f": {clip(msg, limit)}" if msg else "")


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
             f"**{summary_line(recs)}**", "", facts_line(meta, recs), "", run_line(meta), ""]
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
            lines.append(f"| {r['verdict']} | `{r['id']}` | {_md_cell(expected_words(r['expected']))} | "
                         f"{_md_cell(observed_text(r)) or '-'} | {_md_cell(notes)} |")
        lines.append("")
    lines += same_args.markdown(recs)
    lines += _md_deviations(recs)
    groups = _grouped_reasons(recs, "skip")
    if groups:
        lines += ["## Skips (not run, with the reason)", ""]
        for reason, ids in groups:
            lines.append(f"- {_md_cell(reason)}: " + ", ".join(f"`{i}`" for i in ids))
        lines.append("")
    lines += ["Verdicts: " + "; ".join(f"**{v}**: {VERDICT_MEANING[v]}" for v in
                                       ("pass", "fail", "error", "xfail", "xpass", "skip")), ""]
    return "\n".join(lines)


def _md_deviations(recs: Sequence[Mapping[str, Any]]) -> List[str]:
    """Known deviations, each with its cases and its text (carried in the record)."""
    groups = _deviations_by_id(recs)
    if not groups:
        return []
    lines = ["## Known deviations (expected failures)", ""]
    for key, rs in groups:
        dev = rs[0].get("deviation") or {}
        lines.append(f"- **{key}**: {_md_cell(dev.get('reason') or rs[0].get('reason'))}: "
                     + ", ".join(f"`{r['id']}` ({r['verdict']})" for r in rs))
        for para in (dev.get("text") or "").split("\n\n"):
            if para.strip():
                lines += ["", "  > " + " ".join(para.split())]
        lines.append("")
    return lines


def _deviations_by_id(recs: Sequence[Mapping[str, Any]]
                      ) -> List[Tuple[str, List[Mapping[str, Any]]]]:
    groups: Dict[str, List[Mapping[str, Any]]] = {}
    for r in recs:
        if r["verdict"] in ("xfail", "xpass"):
            key = (r.get("deviation") or {}).get("id") or r.get("reason") or "?"
            groups.setdefault(key, []).append(r)
    return sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))


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
""" + case_view.CSS + area_grid.CSS + page.CSS

_JS = page.JS


def _h(text: Any) -> str:
    return html.escape(str(text if text is not None else ""))


def _badge(verdict: str) -> str:
    return f'<span class="v {verdict}">{_h(verdict)}</span>'


def _html_head(doc: Mapping[str, Any], base: Optional[Path] = None) -> List[str]:
    recs = doc["cases"]
    meta = doc.get("meta", {})
    out = ["<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
           "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">",
           f"<title>cpr-transfer conformance: {_h(summary_line(recs))}</title>",
           f"<style>{_CSS}</style></head><body>",
           "<h1>cpr-transfer conformance</h1>",
           f"<div class=\"facts\" id=\"summary-line\"><b>{_h(summary_line(recs))}</b></div>",
           f"<div class=\"facts\" id=\"facts\">{_h(facts_line(meta, recs))}"
           + (f"; wall {doc['wall_seconds']} s" if doc.get("wall_seconds") is not None else "")
           + "</div>",
           f"<div class=\"facts\" id=\"run-line\">{_h(run_line(meta))}</div>"]
    for w in meta.get("warnings") or []:
        out.append(f"<div class=\"warn\"><b>Warning:</b> {_h(w)}</div>")
    out += [page.pills(recs), page.files_bar(base), page.controls(), page.toc(_contents(recs))]
    attention = [r for r in recs if r["verdict"] in ("fail", "error", "xpass")]
    if attention:
        out.append("<h2 id=\"attention\">Needs attention</h2><ul class=\"attn\">")
        for r in sorted(attention, key=lambda r: (VERDICTS.index(r["verdict"]), r["id"])):
            out.append(f"<li>{_badge(r['verdict'])} <a href=\"#row-{_h(r['id'])}\"><code>"
                       f"{_h(r['id'])}</code></a>: {_h(r['reason'])}</li>")
        out.append("</ul>")
    return out


def _contents(recs: Sequence[Mapping[str, Any]]) -> List[Tuple[str, str, str]]:
    """The table of contents: what the page holds, in its order, with counts."""
    out: List[Tuple[str, str, str]] = []
    n_attn = sum(1 for r in recs if r["verdict"] in ("fail", "error", "xpass"))
    if n_attn:
        out.append(("attention", "needs attention", str(n_attn)))
    devs = _deviations_by_id(recs)
    if devs:
        out.append(("deviations", "known deviations", str(len(devs))))
    n_skip = sum(1 for r in recs if r["verdict"] == "skip")
    if n_skip:
        out.append(("skips", "skips", str(n_skip)))
    out += [(f"area-{a}", a, page.area_counts(rs)) for a, rs in _by_area(recs)]
    return out


def _notes(r: Mapping[str, Any]) -> str:
    """A row's notes, in full: the reason (the known deviation by its id, linking its
    text on this page), or a passing case's key figures."""
    dev = r.get("deviation")
    if dev and r["verdict"] in ("xfail", "xpass"):
        head = "known deviation" if r["verdict"] == "xfail" else "known deviation, not seen"
        return (f"{head} <a href=\"#deviation-{_h(dev['id'])}\">{_h(dev['id'])}</a>: "
                f"{_h(dev.get('reason'))}")
    return _h(r.get("reason") or "") or _h(key_figures(r))


def _html_area(area: str, rs: Sequence[Mapping[str, Any]], base: Optional[Path]) -> List[str]:
    out = [f"<section class=\"area\" id=\"area-{_h(area)}\"><h2>{_h(area)} <small>("
           + _h(page.area_counts(rs)) + ")</small></h2>",
           area_grid.render(area, rs),
           "<table><colgroup><col class=\"c-v\"><col class=\"c-id\">"
           "<col class=\"c-exp\"><col class=\"c-obs\"><col></colgroup>"
           "<thead><tr><th>verdict</th><th>case</th><th>expected</th>"
           "<th>observed</th><th>notes</th></tr></thead><tbody>"]
    for r in rs:
        meta = page.checks_and_time(r)
        out.append(
            f"<tr class=\"row-{r['verdict']}\" id=\"row-{_h(r['id'])}\" "
            f"data-verdict=\"{r['verdict']}\" data-id=\"{_h(r['id'])}\">"
            f"<td>{_badge(r['verdict'])}</td>"
            f"<td class=\"id\"><a class=\"self\" href=\"#row-{_h(r['id'])}\">{_h(r['id'])}</a>"
            f"<div class=\"t\">{_h(r.get('title'))}</div>"
            + (f"<div class=\"m\">{_h(meta)}</div>" if meta else "") + "</td>"
            f"<td>{_h(expected_words(r['expected']))}</td>"
            f"<td>{_observed_cell(r)}</td><td>{_notes(r)}</td></tr>")
        details = case_view.details(r, base)
        if details:
            # Full width, under its case: a check table needs the room.
            out.append(f"<tr class=\"more row-{r['verdict']}\" data-verdict=\"{r['verdict']}\" "
                       f"data-id=\"{_h(r['id'])}\"><td></td><td colspan=\"4\">{details}</td></tr>")
    out.append("</tbody></table></section>")
    return out


def _observed_cell(r: Mapping[str, Any]) -> str:
    """The observed outcome; a message too long for the column is cut at a word boundary
    with an ellipsis, the whole of it in the cell's title (and under the case)."""
    short, full = observed_text(r), observed_text(r, limit=1 << 20)
    if not short:
        return "&ndash;"
    if short == full:
        return _h(short)
    return f"<span class=\"clipped\" title=\"{_h(full)}\">{_h(short)}</span>"


def _html_groups(recs: Sequence[Mapping[str, Any]]) -> List[str]:
    """Known deviations (each in full) and skips (each reason once), before the areas."""
    out: List[str] = []
    groups = _deviations_by_id(recs)
    if groups:
        out.append("<h2 id=\"deviations\">Known deviations</h2><p class=\"t\">Run as strict "
                   "expected failures: each entry in expectations/ names the QEMU versions, on "
                   "the side it belongs to, where it was observed; its text (from "
                   "docs/deviations.md) is here in full. An xpass means QEMU changed.</p>"
                   "<ul class=\"reasons\">")
        out += [page.deviation_section(key, rs, _badge) for key, rs in groups]
        out.append("</ul>")
    skips = _grouped_reasons(recs, "skip")
    if skips:
        out.append("<h2 id=\"skips\">Skips</h2><p class=\"t\">Not run: a capability this "
                   "QEMU or host lacks, or an opt-in case; a skip is never a pass.</p>"
                   "<ul class=\"reasons\">")
        for reason, ids in skips:
            out.append(f"<li>{_h(reason)}<br>" + " ".join(
                f"<a href=\"#row-{_h(i)}\"><code>{_h(i)}</code></a>" for i in ids) + "</li>")
        out.append("</ul>")
    return out


def render_html(doc: Mapping[str, Any], base: Optional[Path] = None) -> str:
    """A self-contained page (inline CSS and one inline script for the filter, no
    external assets, no link out of the reports directory).

    ``base``: the directory the page will live in; links to case artifacts below it
    are made relative, so the reports directory can be moved or archived whole, and
    only files that are there are linked."""
    out = _html_head(doc, base)
    out += _html_groups(doc["cases"])
    out.append("<div id=\"cases\"></div>")
    for area, rs in _by_area(doc["cases"]):
        out += _html_area(area, rs, base)
    out += same_args.render_html(doc["cases"])
    out.append("<div class=\"legend\">" + "<br>".join(
        f"{_badge(v)} {_h(VERDICT_MEANING[v])}" for v in
        ("pass", "fail", "error", "xfail", "xpass", "skip")) + "</div>")
    out.append(f"<script>{_JS}</script></body></html>")
    return "\n".join(out)


def write_case_pages(doc: Mapping[str, Any], reports: Path) -> List[Path]:
    """Each case directory's own page (``cases/<case>/case.html``): its checks, evidence,
    the deviation in full and its files, linking back to conformance.html."""
    reports = Path(reports)
    written = []
    for r in doc["cases"]:
        cdir = r.get("case_dir")
        if not cdir or not (reports / cdir).is_dir():
            continue
        files = {k: Path(v).relative_to(cdir).as_posix()
                 for k, v in layout.case_files(r, reports).items()
                 if k != "case page" and not Path(v).is_absolute()
                 and Path(v).parts[:len(Path(cdir).parts)] == Path(cdir).parts}
        up = "/".join([".."] * len(Path(cdir).parts))
        path = reports / cdir / layout.CASE_PAGE
        path.write_text(case_view.case_page(r, files=files,
                                            back=f"{up}/conformance.html#row-{r['id']}"))
        written.append(path)
    return written


def write_matrix(doc: Mapping[str, Any], reports: Path) -> Dict[str, Path]:
    """Write conformance.json, conformance.md, each case's page and conformance.html
    into ``reports``."""
    reports = Path(reports)
    reports.mkdir(parents=True, exist_ok=True)
    paths = {"json": reports / "conformance.json", "md": reports / "conformance.md",
             "html": reports / "conformance.html"}
    paths["json"].write_text(json.dumps(doc, indent=2, default=str) + "\n")
    paths["md"].write_text(render_markdown(doc))
    write_case_pages(doc, reports)
    paths["html"].write_text(render_html(doc, base=reports))
    return paths


def refresh_pages(reports: Path) -> None:
    """Render conformance.html and .md again from conformance.json (when it is there):
    after the Allure report is built, so the page links it."""
    from harness.tools.report.records import load_matrix

    path = Path(reports) / "conformance.json"
    if path.is_file():
        doc = load_matrix(path)
        (Path(reports) / "conformance.md").write_text(render_markdown(doc))
        (Path(reports) / "conformance.html").write_text(render_html(doc, base=Path(reports)))
