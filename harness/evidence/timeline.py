"""The sampler's timeline as a picture a person reads: the guest's counter over time,
with time zero at the source's ``migrate`` (the ``transfer`` mark); the switch-over's
pause drawn as exactly the interval the check reports (dark: the time the counter surely
stood still; light around it: the most it can have); the baseline's stalls (before the
transfer, blue) apart from the stalls after the switch-over (red); the harness's and
QEMU's marks as labelled lines. The whole run above a zoom on the switch-over. Drawn
with matplotlib (Agg, no display).

The series come from :meth:`harness.evidence.sampler.SamplerResult.timeline`; they are
also written as JSON beside the picture (with the pause figures), so a reader can redraw
or compare them.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence, Tuple

#: Around the switch-over, the zoom shows this much before the source stopped and after
#: the target resumed (ms).
ZOOM_BEFORE_MS, ZOOM_AFTER_MS = 40.0, 160.0
#: Stalls shaded on the timeline: at least this long (ms). Shorter ones are the host's
#: scheduling on a busy machine and would paint the whole run.
SHADE_MIN_MS = 5.0
_COLOURS = {"baseline": "#2a5db0", "baseline-end": "#2a5db0", "transfer": "#1d2330",
            "src-stop": "#9b1c1c", "dst-resume": "#17602c", "resumed": "#17602c",
            "window-end": "#6b7280"}
_LABELS = {"baseline": "baseline", "baseline-end": "baseline end", "transfer": "migrate",
           "src-stop": "src STOP", "dst-resume": "dst RESUME",
           "resumed": "harness sees it run", "window-end": "window end"}


def _mark(marks: Sequence[Dict[str, Any]], label: str) -> Optional[int]:
    return next((m["t_ns"] for m in marks if m["label"] == label), None)


def _zero_ns(tl: Dict[str, Any]) -> int:
    """Time zero: the source's migrate (the start of sampling if it never came)."""
    z = _mark(tl["marks"], "transfer")
    return z if z is not None else 0


def switch_spans(pause: Dict[str, Any]) -> Tuple[Optional[Tuple[float, float]],
                                                   Optional[Tuple[float, float]]]:
    """The switch-over's pause, ms since migrate: (surely stalled, at most stalled)."""
    lo, hi = pause.get("switch_span_ms"), pause.get("switch_max_span_ms")
    return (tuple(lo) if lo else None, tuple(hi) if hi else None)  # type: ignore[return-value]


def zoom_range(tl: Dict[str, Any], pause: Dict[str, Any], lo_all: float,
               hi_all: float) -> Tuple[float, float]:
    """The zoom's x range: the switch-over with some context."""
    z = _zero_ns(tl)
    marks = {m["label"]: (m["t_ns"] - z) / 1e6 for m in tl["marks"]}
    spans = [s for s in switch_spans(pause) if s]
    start = min([marks.get("src-stop", 0.0)] + [s[0] for s in spans])
    stop = max([marks.get("dst-resume", start)] + [s[1] for s in spans])
    return max(lo_all, start - ZOOM_BEFORE_MS), min(hi_all, stop + ZOOM_AFTER_MS)


def _shade(ax: Any, tl: Dict[str, Any], lo: float, hi: float) -> None:
    z = _zero_ns(tl)
    base_end = _mark(tl["marks"], "baseline-end")
    before, after = [], []
    for s, e, _ in tl["spans"]:
        a, b = (s - z) / 1e6, (e - z) / 1e6
        if b - a < SHADE_MIN_MS or b < lo or a > hi:
            continue
        seg = (max(a, lo), min(b, hi) - max(a, lo))
        (before if base_end is not None and e <= base_end else after).append(seg)
    for segs, colour in ((before, "#2a5db0"), (after, "#d93025")):
        if segs:  # one artist for all of them
            ax.broken_barh(segs, (0, 1), transform=ax.get_xaxis_transform(),
                           color=colour, alpha=0.2, lw=0)


def _panel(ax: Any, tl: Dict[str, Any], pause: Dict[str, Any], lo: float, hi: float,
           title: str) -> None:
    z = _zero_ns(tl)
    pts = [((t - z) / 1e6, v) for t, v in tl["trace"]]
    inside = [(x, y) for x, y in pts if lo <= x <= hi]
    if inside:
        ax.plot([x for x, _ in inside], [y for _, y in inside], color="#1d2330", lw=1.2,
                drawstyle="steps-post")
    _shade(ax, tl, lo, hi)
    sure, most = switch_spans(pause)
    for span, alpha in ((most, 0.25), (sure, 0.75)):
        if span and span[1] >= lo and span[0] <= hi:
            ax.axvspan(max(span[0], lo), min(span[1], hi), color="#9b1c1c", alpha=alpha, lw=0)
    last_x, level = None, 0
    for m in sorted(tl["marks"], key=lambda m: m["t_ns"]):
        x = (m["t_ns"] - z) / 1e6
        if not lo <= x <= hi:
            continue
        colour = _COLOURS.get(m["label"], "#6b7280")
        ax.axvline(x, color=colour, lw=1, ls="--")
        # Labels of marks close together go one below the other.
        level = level + 1 if last_x is not None and x - last_x < (hi - lo) * 0.14 else 0
        ax.text(x, 0.97 - 0.11 * (level % 4), " " + _LABELS.get(m["label"], m["label"]),
                transform=ax.get_xaxis_transform(), fontsize=8, va="top", color=colour,
                clip_on=True)
        last_x = x
    ax.set_xlim(lo, hi)
    ax.set_title(title, fontsize=9.5, loc="left")
    ax.set_xlabel("ms since the source's migrate", fontsize=8.5)
    ax.tick_params(labelsize=8)
    ax.ticklabel_format(axis="y", style="plain", useOffset=False)
    ax.grid(alpha=0.25, lw=0.5)


def caption(pause: Dict[str, Any]) -> str:
    parts = []
    if pause.get("switch_ms") is not None:
        hi = pause.get("switch_max_ms")
        parts.append(f"switch-over pause {pause['switch_ms']:g}.."
                     f"{hi:g} ms" if hi is not None else f"{pause['switch_ms']:g} ms")
    if pause.get("qemu_downtime_ms") is not None:
        parts.append(f"QEMU's downtime {pause['qemu_downtime_ms']:g} ms")
    w = pause.get("window") or {}
    if w.get("longest_ms") is not None:
        parts.append(f"longest stall after it {w['longest_ms']:g} ms")
    b = pause.get("baseline") or {}
    if b.get("longest_ms") is not None:
        parts.append(f"baseline's longest {b['longest_ms']:g} ms")
    return "; ".join(parts)


def draw(tl: Dict[str, Any], pause: Dict[str, Any], png_path: str, title: str = "") -> str:
    """Write the timeline picture; returns its path.

    A bare Agg figure with fixed margins (no pyplot, no tight_layout): it is drawn for
    every case, after its measurement, so it is kept cheap."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    z = _zero_ns(tl)
    xs = [(t - z) / 1e6 for t, _ in tl["trace"]] or [0.0, 1.0]
    lo_all, hi_all = min(xs), max(xs)
    fig = Figure(figsize=(11.0, 6.0), dpi=100)
    FigureCanvasAgg(fig)
    whole, zoom = fig.subplots(2, 1)
    fig.subplots_adjust(left=0.09, right=0.985, bottom=0.08, top=0.9, hspace=0.42)
    _panel(whole, tl, pause, lo_all, hi_all,
           "guest counter, the whole run (stalls >= 5 ms: blue in the baseline, red after)")
    lo, hi = zoom_range(tl, pause, lo_all, hi_all)
    _panel(zoom, tl, pause, lo, hi, "around the switch-over: its pause dark red (surely "
                                    "stalled), light red (at most)")
    for ax in (whole, zoom):
        ax.set_ylabel("counter", fontsize=8.5)
    fig.suptitle((title + ": " if title else "") + caption(pause), fontsize=10.5,
                 x=0.01, ha="left")
    fig.savefig(png_path)
    return png_path


def write(tl: Dict[str, Any], pause: Dict[str, Any], json_path: str, png_path: str,
          title: str = "") -> List[str]:
    """The series as JSON, and the picture when there is anything to draw. Returns the
    paths written."""
    with open(json_path, "w") as f:
        json.dump({**tl, "pause": pause}, f)
    if len(tl["trace"]) < 2:
        return [json_path]
    return [json_path, draw(tl, pause, png_path, title)]
