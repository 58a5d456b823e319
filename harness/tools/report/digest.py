"""What a reader wants from a case's result record, beside its checks: the evidence in
a few labelled lines (the RAM file on both sides, the stream, the pattern, the counter,
the states, the pause against QEMU's downtime and the noise floor, each QEMU the
observation window watched), and for a soak chain one row per hop. Plain data in (a
result.json as :meth:`harness.run.result.PairResult.to_dict` writes it), plain data out;
nothing here prints a value it has not got."""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

from harness.evidence.pause import repeated_share
from harness.tools.report.text import Line, words

Row = Line


def _fmt(v: Any, none: str = "?") -> str:
    return words(v, none)


def _attempts(res: Mapping[str, Any]) -> List[Mapping[str, Any]]:
    return list(res.get("attempts") or [])


def first(res: Mapping[str, Any]) -> Mapping[str, Any]:
    a = _attempts(res)
    return a[0] if a else {}


def retry(res: Mapping[str, Any]) -> Mapping[str, Any]:
    return next((a for a in _attempts(res) if a.get("role") == "retry"), {})


def evidence(res: Mapping[str, Any]) -> Mapping[str, Any]:
    """The first attempt's evidence (the one a case's figures come from)."""
    return first(res).get("evidence") or {}


def _ram_rows(ev: Mapping[str, Any], res: Mapping[str, Any]) -> List[Row]:
    rows: List[Row] = []
    same = ev.get("same_memory") or {}
    if same:
        verdict = "the same file" if same.get("same") else "DIFFERENT files"
        rows.append(Line("RAM file", f"src {words(same.get('src_link'))} inode "
                                     f"{words(same.get('src_inode'))}; dst inode "
                                     f"{words(same.get('dst_inode'))}: {verdict}"
                     + (" (one process, before and after its exec)"
                        if same.get("across_exec") else "")))
    stream = ev.get("stream") or {}
    if stream.get("state_file_bytes") is not None:
        rows.append(Line("main stream", f"state file {stream['state_file_bytes']} bytes for "
                                        f"{words(stream.get('ram_bytes'), '?')} bytes of RAM"))
    elif stream.get("normal") is not None:
        rows.append(Line("main stream", f"{stream.get('normal')} RAM pages "
                                        f"({words(stream.get('normal_bytes'), '?')} bytes), "
                                        f"{words(stream.get('transferred'), '?')} bytes "
                                        f"transferred"))
    pat = ev.get("pattern") or {}
    if pat.get("description"):
        rows.append(Line("RAM pattern", str(pat["description"])))
    after = ((res.get("survival") or {}).get("pattern") or {})
    if after.get("description"):
        rows.append(Line("source RAM after the attempt", str(after["description"])))
    return rows


def _stall_words(st: Mapping[str, Any]) -> str:
    top = ", ".join(_fmt(x) for x in st.get("top_ms") or []) or "none"
    secs = st.get("seconds") or 0
    share = repeated_share(secs, st.get("longest_ms") or 0.0, st.get("stalled_ms") or 0.0)
    return (f"{words(st.get('count'), '?')} stall(s) in {_fmt(secs)} s, "
            f"{_fmt(st.get('stalled_ms'))} ms in all, {share:.0%} beyond the longest; "
            f"longest {top} ms")


def _pause_rows(ev: Mapping[str, Any]) -> List[Row]:
    p = ev.get("pause") or {}
    if not p:
        return []
    if p.get("error"):
        return [Line("pause", "not measured: " + str(p["error"]))]
    hi = p.get("switch_max_ms")
    figures = [f"switch-over {_fmt(p['switch_ms'])}.." + (f"{_fmt(hi)} ms" if hi is not None
                                                          else "? ms")
               if p.get("switch_ms") is not None else "",
               f"began {_fmt(p['switch_at_ms'])} ms after migrate"
               if p.get("switch_at_ms") is not None else "",
               f"QEMU's downtime {_fmt(p['qemu_downtime_ms'])} ms"
               if p.get("qemu_downtime_ms") is not None else "",
               f"console silent {_fmt(round(p['console_gap']['gap_ms'], 1))} ms"
               if (p.get("console_gap") or {}).get("gap_ms") is not None else ""]
    rows = [Line("guest pause", "; ".join(f for f in figures if f) or "no figure")]
    if p.get("baseline"):
        rows.append(Line("baseline before the transfer", _stall_words(p["baseline"])))
    if p.get("window"):
        rows.append(Line("stalls after the switch-over", _stall_words(p["window"])))
    b = p.get("budgets") or {}
    if b:
        stutter = b.get("max_stutter")
        rows.append(Line("budgets", f"pause <= {_fmt(b.get('max_pause_ms'))} ms; a stall after "
                                    f"it <= {_fmt(b.get('stall_floor_ms'))} ms or "
                                    f"{_fmt(b.get('stall_factor'))}x the baseline's longest; "
                                    f"stalled <= the baseline's share + "
                                    + (f"{stutter:.0%}" if isinstance(stutter, (int, float))
                                       else "?")))
    if p.get("samples"):
        rows.append(Line("sampler", f"{p['samples']} reads, one every "
                                    f"{_fmt(p.get('read_every_us'))} us "
                                    f"({_fmt(p.get('fast_read_every_us'))} us across the "
                                    f"switch-over), "
                                    f"{p.get('scheduling') or 'scheduling unknown'}"))
    return rows


def _watch_row(w: Mapping[str, Any], label: str) -> Row:
    polls = ", ".join(f"{k} x{v}" for k, v in (w.get("polls") or []))
    g = w.get("guest") or {}
    parts = [f"{_fmt(w.get('observed_s'))} s, query-status {polls or 'never answered'}",
             f"counter {g['counter_start']} -> {g['counter_end']}"
             if g.get("counter_start") is not None and g.get("counter_end") is not None
             else "",
             "events: " + ", ".join(e.get("event", "?") for e in w.get("events") or [])
             if w.get("events") else "no forbidden event",
             f"vCPU threads ran {_fmt(w['vcpu_ms'])} ms" if w.get("vcpu_ms") is not None
             else "",
             f"printed {w['console_bytes_after']} byte(s) on the console"
             if w.get("console_bytes_after") else "",
             f"held {_fmt(w['held_s'])} s by a hold file" if w.get("held_s") else "",
             "HUNG: " + words((w.get("hang") or {}).get("state")) if w.get("hang") else "",
             "DIED: " + words((w.get("death") or {}).get("how")) if w.get("death") else ""]
    return Line(label, "; ".join(p for p in parts if p))


def _window_rows(window: Optional[Mapping[str, Any]], prefix: str = "") -> List[Row]:
    if not window:
        return []
    return [_watch_row(w, f"{prefix}window on the {words(w.get('role'), 'QEMU')}")
            for w in window.get("watches") or []]


def _states_row(res: Mapping[str, Any], a: Mapping[str, Any]) -> List[Row]:
    states = [f"src before {res['src_state_before']}" if res.get("src_state_before") else "",
              f"src after {a['src_state']}" if a.get("src_state") else "",
              f"dst after {a['dst_state']}" if a.get("dst_state") else ""]
    return [Line("run states", ", ".join(s for s in states if s))] if any(states) else []


def highlights(res: Mapping[str, Any]) -> List[Row]:
    """The labelled evidence lines of one result record (empty when nothing ran)."""
    if not res:
        return []
    rows: List[Row] = []
    a = first(res)
    if res.get("counter_before") is not None:
        after = a.get("counter_after")
        text = f"{res['counter_before']} before" + (
            f" -> {after} on the target" if after is not None else ", not read after")
        if res.get("boots_before") is not None and a.get("boots_after") is not None:
            text += f"; boot count {res['boots_before']} -> {a['boots_after']}"
        rows.append(Line("guest counter", text))
    rows += _states_row(res, a)
    if a.get("hang"):
        h = a["hang"]
        rows.append(Line(f"{words(h.get('side'), 'a QEMU')} hung",
                         f"{words(h.get('waiting_for'), 'waiting for nothing known')}; "
                         f"process {words(h.get('state'))}"))
    ev = a.get("evidence") or {}
    rows += _ram_rows(ev, res) + _pause_rows(ev)
    rows += _window_rows(a.get("window"))
    rows += _retry_rows(retry(res))
    s = res.get("survival") or {}
    if s:
        rows.append(Line("source after the attempt",
                         f"{words(s.get('src_state'), 'state not read')}, "
                         + (f"counter {s['counter_after']}" if s.get("counter_after") is not None
                            else "counter not seen moving")))
    ended = res.get("ended") or []
    if ended:
        rows.append(Line("ended by the case", "; ".join(str(e) for e in ended)))
    for c in res.get("crashes") or []:
        rows.append(Line(f"{words(c.get('side'), 'a QEMU')} crash",
                         f"{words(c.get('signal'), 'a signal')}: "
                         + (" <- ".join(c.get("frames") or []) or c.get("note")
                            or "no backtrace")))
    return rows


def _retry_rows(rt: Mapping[str, Any]) -> List[Row]:
    if rt.get("not_applicable"):
        return [Line("retry", "not applicable: " + rt["not_applicable"])]
    if not rt:
        return []
    return [Line("retry", f"{rt.get('observed') or 'not settled'}"
                 + (f": {rt['message']}" if rt.get("message") else ""))] \
        + _window_rows(rt.get("window"), "retry: ")


#: The columns of a soak chain's per-hop table.
HOP_COLUMNS = ("hop", "observed", "downtime ms", "counter after", "boots", "window",
               "RAM inode", "open fds", "RSS anon KiB", "threads")


def hop_rows(res: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """One row per hop of a soak chain (empty for a case)."""
    out = []
    for h in res.get("hops") or []:
        a = h.get("attempt") or {}
        window = "; ".join(v for _, v in _window_rows(a.get("window"))) or "-"
        out.append(dict(zip(HOP_COLUMNS, (
            h.get("hop"), a.get("observed"), (a.get("query_migrate") or {}).get("downtime"),
            a.get("counter_after"), a.get("boots_after"), window, h.get("ram_inode"),
            h.get("open_fds"), h.get("rss_anon_kib"), h.get("threads")))))
    return out
