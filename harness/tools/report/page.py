"""The map of conformance.html: what lets a reader find a case on a long page.

The verdict pills (each a link that shows only that verdict), the run's files (the
matrix as JSON and Markdown, junit, Allure), a table of contents with counts, buttons
that open or close every case's details, a case's check count and duration, the known
deviations in full (carried in the page: the reports link nothing outside themselves),
and the filter's script (it also hides an area, a grid row or a grid left empty)."""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from harness.tools.report import deviations, layout
from harness.tools.report.records import VERDICT_MEANING, counts
from harness.tools.report.text import plural, words

#: The verdicts in the order the pills and the filter list them.
ORDER = ("pass", "fail", "error", "xfail", "xpass", "skip")
#: A link to the page with this in its fragment shows one verdict alone
#: (``conformance.html#only-xfail``; ``#only-all``: every case): the pills are such links.
ONLY = "only-"


def _h(text: Any) -> str:
    return html.escape(str(text if text is not None else ""))


def accel_words(meta: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> str:
    """The accelerator as the cases ran it: the run's choice and, when cases ran on
    another (a case that names TCG), how many on each."""
    run = str(meta.get("accel") or "?")
    ran: Dict[str, int] = {}
    for r in records:
        if r.get("accel"):
            ran[str(r["accel"])] = ran.get(str(r["accel"]), 0) + 1
    if len(ran) <= 1:
        return run
    return (f"{run} for the run; the cases ran on "
            + ", ".join(f"{a} ({plural(n, 'case')})"
                        for a, n in sorted(ran.items(), key=lambda kv: -kv[1]))
            + ": a case that names TCG runs TCG")


def pills(records: Sequence[Mapping[str, Any]]) -> str:
    """The counts, each a link that shows only its verdict (the filter's script)."""
    c = counts(records)
    return "<div class=\"summary\">" + "".join(
        f"<a class=\"pill {v}{' zero' if not c[v] else ''}\" href=\"#{ONLY}{v}\" "
        f"title=\"show only {v}: {_h(VERDICT_MEANING[v])}\">{c[v]} {v}</a>" for v in ORDER) \
        + f"<a class=\"pill all\" href=\"#{ONLY}all\" title=\"show every case\">all</a>" \
        + "</div>"


def files_bar(base: Optional[Path]) -> str:
    """Links to the run's other files, those that are there."""
    files = layout.report_files(base)
    if not files:
        return ""
    return "<div class=\"facts runfiles\">files of this run: " + " &middot; ".join(
        f"<a href=\"{_h(name)}\" title=\"{_h(what)}\">{_h(name)}</a> <small>({_h(what)})"
        f"</small>" for name, what in files) + "</div>"


def toc(entries: Sequence[Tuple[str, str, str]]) -> str:
    """The contents: (anchor, title, counts) per section."""
    return "<nav class=\"toc\"><b>contents</b>: " + " &middot; ".join(
        f"<a href=\"#{_h(anchor)}\">{_h(title)}</a>" + (f" <small>({_h(n)})</small>" if n else "")
        for anchor, title, n in entries) + "</nav>"


def area_counts(rs: Sequence[Mapping[str, Any]]) -> str:
    c = counts(rs)
    return ", ".join(f"{n} {v}" for v, n in c.items() if n)


def checks_and_time(r: Mapping[str, Any]) -> str:
    """``17/18 checks ok, 12.3 s``: what a row says of its case beside its verdict."""
    checks = r.get("checks") or []
    parts = []
    if checks:
        ok = sum(1 for c in checks if c.get("ok"))
        parts.append(f"{ok}/{plural(len(checks), 'check')} ok")
    secs = sum(v for v in (r.get("durations") or {}).values() if isinstance(v, (int, float)))
    if secs:
        parts.append(f"{words(round(secs, 1))} s")
    return ", ".join(parts)


def deviation_section(key: str, rs: Sequence[Mapping[str, Any]], badge: Any) -> str:
    """One known deviation: its reason, its cases, its text from docs/deviations.md
    (carried in the record, so the page links nothing outside the reports)."""
    dev = rs[0].get("deviation")
    head = (f"<b>{_h(dev['id'])}</b>: {_h(dev.get('reason'))}" if dev else _h(key))
    text = deviations.to_html((dev or {}).get("text"))
    more = (f"<details class=\"devtext\"><summary>the deviation in full (docs/deviations.md)"
            f"</summary>{text}</details>" if text else "")
    return (f"<li id=\"deviation-{_h(key)}\">{head}<br>" + " ".join(
        f"<a href=\"#row-{_h(r['id'])}\">{badge(r['verdict'])} <code>{_h(r['id'])}</code></a>"
        for r in rs) + more + "</li>")


def controls() -> str:
    """The filter (a checkbox per verdict, a search box) and open/close all."""
    return ("<div class=\"filter\">show: " + "".join(
        f"<label><input type=\"checkbox\" data-v=\"{v}\" checked> {v}</label>" for v in ORDER)
        + "<label>case id contains<input type=\"search\" id=\"q\" placeholder=\"e.g. fd-\">"
          "</label> <button type=\"button\" id=\"open-all\">open every case</button> "
          "<button type=\"button\" id=\"close-all\">close every case</button></div>")


CSS = """
a.pill{text-decoration:none}a.pill.all{background:#fff;border-color:#c9d0db;color:#38404f}
nav.toc{margin:8px 0 4px;font-size:13px;line-height:1.9}nav.toc small{color:#4a5468}
.runfiles small{color:#6b7385}.m{color:#4a5468;font-size:12px;font-family:system-ui,sans-serif;margin-top:2px}
details.devtext{margin:4px 0 8px}details.devtext p{margin:4px 0;max-width:70em}
pre{font-size:12px;background:#f4f6f9;padding:6px;overflow-x:auto}
.filter button{margin-left:6px;font-size:12px}
"""

# The filter: hides table rows and grid tiles whose verdict is unticked or whose id does
# not contain the search text, then any area, grid row or grid left with nothing shown.
# A pill shows its verdict alone; open/close every case's details; a link to a case's row
# opens its details. The page reads fine without it.
JS = """
(function(){
  function each(sel,f,root){(root||document).querySelectorAll(sel).forEach(f);}
  function shown(el){return el.style.display!=='none';}
  function apply(){
    var on={};each('.filter input[data-v]',function(c){on[c.dataset.v]=c.checked;});
    var q=(document.getElementById('q').value||'').toLowerCase();
    each('[data-verdict]',function(el){
      var id=(el.getAttribute('data-id')||el.getAttribute('title')||'').toLowerCase();
      el.style.display=(on[el.dataset.verdict]&&id.indexOf(q)>=0)?'':'none';});
    each('table.grid tbody tr',function(tr){
      var any=false;each('a.tile',function(t){if(shown(t))any=true;},tr);
      tr.style.display=any?'':'none';});
    each('table.grid',function(g){
      var any=false;each('tbody tr',function(tr){if(shown(tr))any=true;},g);
      g.style.display=any?'':'none';});
    each('section.area',function(s){
      var any=false;each('tr[data-verdict]',function(tr){if(shown(tr))any=true;},s);
      s.style.display=any?'':'none';});
  }
  each('.filter input',function(c){c.addEventListener('input',apply);});
  function fromHash(){
    var m=/^#only-(\\w+)$/.exec(location.hash);if(!m)return;
    each('.filter input[data-v]',function(c){c.checked=m[1]==='all'||c.dataset.v===m[1];});
    apply();}
  function openTarget(){
    var el=document.getElementById(decodeURIComponent(location.hash.slice(1)));if(!el)return;
    var d=el.tagName==='DETAILS'?el:(el.nextElementSibling&&el.nextElementSibling.querySelector('details'));
    if(d){d.open=true;}}
  window.addEventListener('hashchange',function(){fromHash();openTarget();});
  function openAll(o){each('details',function(d){d.open=o;});}
  document.getElementById('open-all').addEventListener('click',function(){openAll(true);});
  document.getElementById('close-all').addEventListener('click',function(){openAll(false);});
  apply();fromHash();openTarget();
})();
"""
