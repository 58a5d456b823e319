"""The grid: scenarios by QEMU builds and src->dst pairs, from any set of result dirs.

``python -m harness grid RUNDIR... -o OUTDIR`` reads each run's ``conformance.json``
and writes ``grid.html`` and ``grid.md``: a row per scenario, a column per run
(a build, ``10.0.2``, or a pair, ``10.0.2 → 11.1.3``; the host is added where runs
from several hosts share a label), a cell per verdict linking to that case's
artifacts. Rows whose verdicts differ between columns are listed first and marked,
like wpt.fyi's browsers side by side.
"""
from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from harness.core.errors import UsageError
from harness.tools.report.records import VERDICT_MEANING, VERDICTS, load_matrix
from harness.tools.report.render import _CSS


@dataclass
class Column:
    label: str
    run_dir: Path
    meta: Dict[str, Any]
    cases: Dict[str, Dict[str, Any]] = field(default_factory=dict)

    @property
    def cross_version(self) -> bool:
        return self.meta.get("qemu_src_version") != self.meta.get("qemu_dst_version")


def _version(meta: Mapping[str, Any], side: str) -> str:
    v = meta.get(f"qemu_{side}_version")
    if v:
        return str(v)
    full = str(meta.get(f"qemu_{side}", "?"))
    return full.split(" ", 1)[0]


def label_of(meta: Mapping[str, Any]) -> str:
    src, dst = _version(meta, "src"), _version(meta, "dst")
    return src if src == dst else f"{src} → {dst}"


def load_columns(run_dirs: Sequence[str]) -> List[Column]:
    """One column per run directory (or conformance.json), in the order given.

    :raise UsageError: a directory holds no readable matrix.
    """
    cols: List[Column] = []
    for d in run_dirs:
        p = Path(d)
        path = p if p.suffix == ".json" else p / "conformance.json"
        doc = load_matrix(path)
        meta = dict(doc.get("meta") or {})
        cols.append(Column(label_of(meta), path.parent, meta,
                           {c["id"]: c for c in doc["cases"]}))
    if not cols:
        raise UsageError("grid: no result directories given")
    labels = [c.label for c in cols]
    for c in cols:  # the same build or pair from several hosts: say which
        if labels.count(c.label) > 1:
            c.label = f"{c.label} @{c.meta.get('host', '?')}"
    seen: Dict[str, int] = {}
    for c in cols:
        seen[c.label] = seen.get(c.label, 0) + 1
        if seen[c.label] > 1:
            c.label = f"{c.label} #{seen[c.label]}"
    # Builds first, then pairs: the columns read as wpt.fyi's browsers, then upgrades
    # (sorted() is stable: the given order stays within each).
    return sorted(cols, key=lambda c: c.cross_version)


def rows(cols: Sequence[Column]) -> List[Dict[str, Any]]:
    """Every scenario of any column: its verdict per column, and whether they differ."""
    ids = sorted({sid for c in cols for sid in c.cases})
    out = []
    for sid in ids:
        verdicts = [c.cases.get(sid, {}).get("verdict") for c in cols]
        present = [v for v in verdicts if v is not None]
        out.append({"id": sid, "verdicts": verdicts, "differs": len(set(present)) > 1})
    out.sort(key=lambda r: (not r["differs"], r["id"]))
    return out


def _case_link(col: Column, sid: str, out_dir: Path) -> Optional[str]:
    case = col.cases.get(sid) or {}
    for path in (case.get("artifacts") or {}).values():
        p = Path(path)
        if not p.is_absolute():
            p = col.run_dir / p
        target = p.parent
        return os.path.relpath(target, out_dir) + "/"
    return None


def render_md(cols: Sequence[Column], rs: Sequence[Dict[str, Any]]) -> str:
    lines = ["# cpr-transfer conformance grid", "",
             f"{len(rs)} scenarios × {len(cols)} runs; "
             f"{sum(r['differs'] for r in rs)} scenario(s) differ between runs (listed first, "
             "marked ≠).", "",
             "| scenario | " + " | ".join(c.label for c in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for r in rs:
        cells = [v or "–" for v in r["verdicts"]]
        lines.append(f"| {'≠ ' if r['differs'] else ''}`{r['id']}` | " + " | ".join(cells) + " |")
    lines += ["", "Runs:", ""]
    for c in cols:
        m = c.meta
        lines.append(f"- **{c.label}**: `{c.run_dir}`; src {m.get('qemu_src', '?')}, "
                     f"dst {m.get('qemu_dst', '?')}; accel {m.get('accel', '?')}; "
                     f"host {m.get('host', '?')}; {m.get('generated', '?')}")
    return "\n".join(lines) + "\n"


def render_html(cols: Sequence[Column], rs: Sequence[Dict[str, Any]], out_dir: Path) -> str:
    h = html.escape
    differ = sum(r["differs"] for r in rs)
    out = ["<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
           "<title>cpr-transfer conformance grid</title>",
           f"<style>{_CSS}td.cell{{text-align:center}}tr.same{{}}"
           "tr.differs td.id{font-weight:700}body.only-diff tr.same{display:none}"
           "</style></head><body>",
           "<h1>cpr-transfer conformance grid</h1>",
           f"<div class=\"facts\">{len(rs)} scenarios × {len(cols)} runs; {differ} scenario(s) "
           "differ between runs (first, in bold). "
           "<label><input type=\"checkbox\" onchange=\"document.body.classList.toggle("
           "'only-diff', this.checked)\"> only the rows that differ</label></div>",
           "<table><thead><tr><th>scenario</th>"
           + "".join(f"<th title=\"{h(str(c.run_dir))}\">{h(c.label)}</th>" for c in cols)
           + "</tr></thead><tbody>"]
    for r in rs:
        cells = []
        for c, v in zip(cols, r["verdicts"]):
            if v is None:
                cells.append("<td class=\"cell\">&ndash;</td>")
                continue
            link = _case_link(c, r["id"], out_dir)
            reason = (c.cases[r["id"]].get("reason") or "")[:300]
            badge = f"<span class=\"v {h(v)}\" title=\"{h(reason)}\">{h(v)}</span>"
            cells.append("<td class=\"cell\">" + (f"<a href=\"{h(link)}\">{badge}</a>"
                                                     if link else badge) + "</td>")
        cls = "differs" if r["differs"] else "same"
        out.append(f"<tr class=\"{cls}\"><td class=\"id\">{h(r['id'])}</td>{''.join(cells)}</tr>")
    out.append("</tbody></table><div class=\"legend\">" + "<br>".join(
        f"<span class=\"v {v}\">{v}</span> {h(VERDICT_MEANING[v])}" for v in VERDICTS)
        + "</div></body></html>")
    return "\n".join(out)


def write_grid(run_dirs: Sequence[str], out_dir: str) -> Dict[str, Path]:
    """grid.html and grid.md in ``out_dir`` from the runs in ``run_dirs``."""
    cols = load_columns(run_dirs)
    rs = rows(cols)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"html": out / "grid.html", "md": out / "grid.md"}
    paths["html"].write_text(render_html(cols, rs, out.resolve()))
    paths["md"].write_text(render_md(cols, rs))
    return paths
