"""The same arguments plus ``-incoming``, option by option: the matrix page's table per
option (docs/same-arguments.md).

Rows are the ``args/`` cases of one option (``-pidfile``: the same file on both sides,
then the target's own); columns: the verdict and what it means for that option (works;
refused clearly while the source carries on; breaks silently, a known deviation), what
QEMU did in its own words (its refusal, or that it said nothing, and what the checks
saw), and what a management layer must do (the scenario's ``advice``). Pure functions
over the matrix's records."""
from __future__ import annotations

import html
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from harness.tools.report.records import _one_line

AREA = "args"
TITLE = "The same arguments, option by option"
INTRO = ("cpr-transfer starts the new QEMU with the old one's arguments plus -incoming "
         "while the old one runs; only memory-backend fds travel on the cpr channel, every "
         "file, socket and port an option names is opened anew. Each option is judged: "
         "works, refused clearly (the source carries on), or breaks silently (a known "
         "deviation). docs/same-arguments.md has each finding.")
CHECK_PREFIX = "args."
AFTER_QUIT = ".after-quit"


def finding(r: Mapping[str, Any]) -> str:
    """What the case's verdict means for its option, in words."""
    verdict, outcome = r.get("verdict"), (r.get("actual") or {}).get("outcome")
    if verdict == "skip":
        return "not run here"
    if verdict == "xfail":
        return "breaks silently (known deviation)"
    if verdict == "xpass":
        return "works now: the known deviation no longer reproduces"
    if verdict == "pass":
        return "works" if outcome == "completed" else \
            "refused clearly, the source carries on"
    if verdict == "error":
        return "no verdict (the harness could not judge it)"
    return "does not do what the case requires"


def _essential(message: str) -> str:
    lines = [ln for ln in str(message or "").splitlines() if ln.strip()]
    kept = [ln for ln in lines if ": warning: " not in ln]
    return " ".join(kept or lines)


def qemu_words(r: Mapping[str, Any], limit: int = 300) -> str:
    """What QEMU did: its refusal in its own words; or, where it completed, that it said
    nothing, with what the option's checks saw (the failed ones first)."""
    if r.get("verdict") == "skip":
        return _one_line(r.get("reason") or "", limit)
    actual = r.get("actual") or {}
    outcome = actual.get("outcome")
    if not outcome:
        return _one_line(r.get("reason") or "", limit)
    if outcome != "completed":
        msg = _essential(actual.get("message", ""))
        return _one_line(f"{outcome}: {msg}" if msg else str(outcome), limit)
    checks = [c for c in r.get("checks") or [] if str(c.get("id", "")).startswith(CHECK_PREFIX)]
    bad = [c for c in checks if not c.get("ok")]
    lost = {c.get("id") for c in bad}
    # Lost at the window's end already: that is the news, not that it stayed lost.
    bad = [c for c in bad if not (str(c.get("id")).endswith(AFTER_QUIT)
                                  and str(c.get("id"))[:-len(AFTER_QUIT)] in lost)]
    if bad:
        return _one_line("completed; QEMU said nothing, but " + "; ".join(
            str(c.get("actual")) for c in bad), limit)
    ids = {c.get("id") for c in checks}
    # The last word on each: after the old QEMU quit where the check looked again.
    seen = [str(c.get("actual")) for c in checks if c.get("id") != "args.quit"
            and f"{c.get('id')}{AFTER_QUIT}" not in ids]
    return _one_line("completed" + (": " + "; ".join(seen) if seen else ""), limit)


def rows(records: Sequence[Mapping[str, Any]]) -> List[Tuple[str, List[Mapping[str, Any]]]]:
    """The ``args`` cases grouped by option, in the order of their ids."""
    groups: Dict[str, List[Mapping[str, Any]]] = {}
    for r in sorted(records, key=lambda r: r["id"]):
        if r.get("area") != AREA:
            continue
        option = (r.get("parameters") or {}).get("option") or r["id"].split("/", 1)[-1]
        groups.setdefault(option, []).append(r)
    return sorted(groups.items(), key=lambda kv: kv[1][0]["id"])


def _advice(r: Mapping[str, Any]) -> str:
    return str((r.get("parameters") or {}).get("advice") or "")


def _md(text: Any) -> str:
    return _one_line(str(text), 600).replace("|", "\\|")


def markdown(records: Sequence[Mapping[str, Any]]) -> List[str]:
    """The tables as markdown lines (none when the run holds no ``args`` case)."""
    groups = rows(records)
    if not groups:
        return []
    out = [f"## {TITLE}", "", INTRO, ""]
    for option, rs in groups:
        out += [f"### `{option}`", "",
                "| case | verdict | what QEMU did | what a management layer must do |",
                "|---|---|---|---|"]
        for r in rs:
            out.append(f"| `{r['id']}` | {r['verdict']}: {finding(r)} | "
                       f"{_md(qemu_words(r))} | {_md(_advice(r))} |")
        out.append("")
    return out


def render_html(records: Sequence[Mapping[str, Any]]) -> List[str]:
    """The tables as HTML (the page's CSS and verdict badges)."""
    groups = rows(records)
    if not groups:
        return []
    e = html.escape
    out = [f"<h2 id=\"same-arguments\">{e(TITLE)}</h2><p class=\"t\">{e(INTRO)}</p>"]
    for option, rs in groups:
        out.append(f"<h3><code>{e(option)}</code></h3><table><colgroup><col class=\"c-id\">"
                   "<col class=\"c-exp\"><col class=\"c-obs\"><col></colgroup><thead><tr>"
                   "<th>case</th><th>verdict</th><th>what QEMU did</th>"
                   "<th>what a management layer must do</th></tr></thead><tbody>")
        for r in rs:
            v = e(str(r["verdict"]))
            out.append(f"<tr data-verdict=\"{v}\" data-id=\"{e(r['id'])}\">"
                       f"<td class=\"id\"><a href=\"#row-{e(r['id'])}\">{e(r['id'])}</a>"
                       f"<div class=\"t\">{e(str(r.get('title') or ''))}</div></td>"
                       f"<td><span class=\"v {v}\">{v}</span> {e(finding(r))}</td>"
                       f"<td>{e(qemu_words(r))}</td><td>{e(_advice(r))}</td></tr>")
        out.append("</tbody></table>")
    return out
