"""What a reader wants from a case's result record, beside its checks: the evidence in
a few labelled lines (the RAM file on both sides, the stream, the pattern, the counter,
the states, the pause against QEMU's downtime and the noise floor, the observation
window), and for a soak chain one row per hop. Plain data in, plain data out."""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple

Row = Tuple[str, str]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}".rstrip("0").rstrip(".")
    return str(v)


def _ram_rows(ev: Mapping[str, Any]) -> List[Row]:
    rows: List[Row] = []
    same = ev.get("same_memory") or {}
    if same:
        verdict = "the same file" if same.get("same") else "DIFFERENT files"
        rows.append(("RAM file", f"src {same.get('src_link')} inode {same.get('src_inode')}; "
                                 f"dst inode {same.get('dst_inode')}: {verdict}"))
    stream = ev.get("stream") or {}
    if stream.get("state_file_bytes") is not None:
        rows.append(("main stream", f"state file {stream['state_file_bytes']} bytes for "
                                    f"{stream.get('ram_bytes')} bytes of RAM"))
    elif stream:
        rows.append(("main stream", f"{stream.get('normal')} RAM pages "
                                    f"({stream.get('normal-bytes')} bytes), "
                                    f"{stream.get('transferred')} bytes transferred"))
    pat = ev.get("pattern") or {}
    if pat:
        rows.append(("RAM pattern", str(pat.get("description") or pat.get("ok"))))
    after = ev.get("pattern_src_after_refusal") or {}
    if after:
        rows.append(("source RAM after refusal", str(after.get("description") or after.get("ok"))))
    return rows


def _pause_rows(ev: Mapping[str, Any]) -> List[Row]:
    p = ev.get("pause") or {}
    if not p:
        return []
    if p.get("error"):
        return [("pause", "not measured: " + str(p["error"]))]
    figures = [f"switch-over {_fmt(p['guest_pause_ms'])} ms"
               if p.get("guest_pause_ms") is not None else "",
               f"QEMU downtime {p['qemu_downtime_ms']} ms"
               if p.get("qemu_downtime_ms") is not None else "",
               f"window {_fmt(p['window_stall_ms'])} ms"
               if p.get("window_stall_ms") is not None else "",
               f"noise floor {_fmt(p['noise_floor_ms'])} ms"
               if p.get("noise_floor_ms") is not None else "",
               f"budget {_fmt(p['budget_ms'])} ms" if p.get("budget_ms") is not None else ""]
    rows = [("guest pause", "; ".join(f for f in figures if f))]
    if p.get("samples"):
        rows.append(("sampler", f"{p['samples']} reads at {p.get('sample_rate_hz')} Hz, "
                                f"median interval {p.get('median_interval_us')} us"))
    if p.get("window_stall"):
        rows.append(("longest stall after the switch-over", str(p["window_stall"])))
    return rows


def _window_row(w: Optional[Mapping[str, Any]], label: str) -> List[Row]:
    if not w:
        return []
    statuses = ", ".join(f"{k} x{v}" for k, v in (w.get("statuses") or {}).items())
    parts = [f"{_fmt(w.get('observed_s', w.get('seconds')))} s, query-status {statuses or '-'}",
             f"counter {w.get('counter_start')} -> {w.get('counter_end')}"
             if w.get("counter_start") is not None else "",
             "events: " + ", ".join(e.get("event", "?") for e in w.get("events") or [])
             if w.get("events") else "no reset/stop/shutdown/panic event",
             f"held {w['held_s']} s by a hold file" if w.get("held_s") else "",
             "DIED: " + str((w.get("death") or {}).get("how")) if w.get("death") else ""]
    return [(label, "; ".join(p for p in parts if p))]


def highlights(res: Mapping[str, Any]) -> List[Row]:
    """The labelled evidence lines of one result record (empty when nothing ran)."""
    if not res:
        return []
    rows: List[Row] = []
    if res.get("counter_before") is not None:
        rows.append(("guest counter", f"{res.get('counter_before')} before -> "
                                      f"{res.get('counter_after')} on the target"
                     + (f"; boots {res.get('boots_before')} -> {res.get('boots_after')}"
                        if res.get("boots_before") is not None else "")))
    states = [f"src before {res.get('src_status_before')}" if res.get("src_status_before") else "",
              f"src after {res.get('src_status_after')}" if res.get("src_status_after") else "",
              f"dst after {res.get('dst_status_after')}" if res.get("dst_status_after") else ""]
    if any(states):
        rows.append(("run states", ", ".join(s for s in states if s)))
    ev = res.get("evidence") or {}
    rows += _ram_rows(ev) + _pause_rows(ev)
    rows += _window_row(res.get("window"), "observation window")
    rt = res.get("retry") or {}
    if rt.get("not_applicable"):
        rows.append(("retry", "not applicable: " + rt["not_applicable"]))
    elif rt:
        rows.append(("retry", f"{rt.get('observed')}" + (f": {rt['message']}"
                                                         if rt.get("message") else "")))
        rows += _window_row(rt.get("window"), "retry: observation window")
    if res.get("src_counter_after_refusal") is not None:
        rows.append(("source after refusal", f"counter {res['src_counter_after_refusal']}"))
    for c in res.get("crashes") or []:
        rows.append((f"{c.get('side')} crash", f"{c.get('signal')}: "
                     + (" <- ".join(c.get("frames") or []) or c.get("note") or "no backtrace")))
    return rows


#: The columns of a soak chain's per-hop table.
HOP_COLUMNS = ("hop", "observed", "downtime ms", "counter after", "boots", "window",
               "RAM inode", "open fds", "RSS anon KiB", "threads")


def hop_rows(res: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """One row per hop of a soak chain (empty for a case)."""
    out = []
    for h in res.get("hops") or (res.get("evidence") or {}).get("hops") or []:
        w = h.get("window") or {}
        statuses = ", ".join(f"{k} x{v}" for k, v in (w.get("statuses") or {}).items())
        window = (f"{statuses}; counter {w.get('counter_start')} -> {w.get('counter_end')}"
                  if w else "-") + ("; DIED" if w.get("death") else "")
        out.append(dict(zip(HOP_COLUMNS, (
            h.get("hop"), h.get("observed"), h.get("downtime_ms"), h.get("counter_after"),
            h.get("boots"), window, h.get("ram_inode"), h.get("open_fds"),
            h.get("rss_anon_kib"), h.get("threads")))))
    return out
