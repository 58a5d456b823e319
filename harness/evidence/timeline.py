"""The sampler's timeline as a picture: the guest's counter over time, the stalls of at
least 5 ms shaded (the switch-over's pause darker, whatever its length), the harness's marks (transfer, resumed, window end) as lines; the
whole run beside a zoom on the switch-over. Drawn with matplotlib (Agg, no display).

The series come from :meth:`harness.evidence.sampler.SamplerResult.timeline`; they are
also written as JSON beside the picture, so a reader can redraw or compare them.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence, Tuple

#: Around the switch-over, the zoom shows this much before the transfer mark and after
#: the resumed mark (ms).
ZOOM_BEFORE_MS, ZOOM_AFTER_MS = 30.0, 120.0
#: Stalls shaded on the timeline: at least this long (ms). Shorter ones are the host's
#: scheduling on a busy machine and would paint the whole run; the switch-over's own
#: pause is drawn whatever its length.
SHADE_MIN_MS = 5.0
_COLOURS = {"transfer": "#2a5db0", "resumed": "#17602c", "window-end": "#6b7280"}


def _ms(ns: float) -> float:
    return ns / 1e6


def _mark(marks: Sequence[Dict[str, Any]], label: str) -> Optional[float]:
    return next((_ms(m["t_ns"]) for m in marks if m["label"] == label), None)


def zoom_range(marks: Sequence[Dict[str, Any]], end_ms: float) -> Tuple[float, float]:
    """The zoom's x range: the switch-over (transfer to resumed) with some context."""
    start = _mark(marks, "transfer")
    resumed = _mark(marks, "resumed")
    if start is None:
        start = 0.0
    stop = resumed if resumed is not None else start
    return max(0.0, start - ZOOM_BEFORE_MS), min(end_ms, stop + ZOOM_AFTER_MS)


def switch_over_span(tl: Dict[str, Any]) -> Optional[Tuple[float, float]]:
    """The longest stall between the transfer and resumed marks (ms): the pause."""
    a, b = _mark(tl["marks"], "transfer"), _mark(tl["marks"], "resumed")
    if a is None or b is None:
        return None
    found = [(_ms(s), _ms(e)) for s, e, _ in tl["spans"] if _ms(e) >= a and _ms(s) <= b]
    return max(found, key=lambda se: se[1] - se[0], default=None)


def _panel(ax: Any, tl: Dict[str, Any], lo: float, hi: float, title: str) -> None:
    xs = [_ms(t) for t, _ in tl["trace"]]
    ys = [v for _, v in tl["trace"]]
    inside = [(x, y) for x, y in zip(xs, ys) if lo <= x <= hi]
    if inside:
        ax.plot([x for x, _ in inside], [y for _, y in inside], color="#1d2330", lw=1.1,
                drawstyle="steps-post")
    shaded = [(max(a, lo), min(b, hi) - max(a, lo))
              for a, b in ((_ms(s), _ms(e)) for s, e, _ in tl["spans"])
              if b - a >= SHADE_MIN_MS and b >= lo and a <= hi]
    if shaded:  # one artist for all of them
        ax.broken_barh(shaded, (0, 1), transform=ax.get_xaxis_transform(),
                       color="#d93025", alpha=0.22, lw=0)
    pause = switch_over_span(tl)
    if pause is not None and pause[1] >= lo and pause[0] <= hi:
        ax.axvspan(max(pause[0], lo), min(pause[1], hi), color="#d93025", alpha=0.6, lw=0)
    last_x, level = None, 0
    for m in sorted(tl["marks"], key=lambda m: m["t_ns"]):
        x = _ms(m["t_ns"])
        if lo <= x <= hi:
            colour = _COLOURS.get(m["label"], "#6b7280")
            ax.axvline(x, color=colour, lw=1, ls="--")
            # Labels of marks close together go one above the other.
            level = level + 1 if last_x is not None and x - last_x < (hi - lo) * 0.12 else 0
            ax.text(x, 0.97 - 0.13 * level, " " + m["label"], transform=ax.get_xaxis_transform(),
                    fontsize=7, va="top", color=colour)
            last_x = x
    ax.set_xlim(lo, hi)
    ax.set_title(title, fontsize=8.5, loc="left")
    ax.set_xlabel("ms since sampling started", fontsize=7.5)
    ax.tick_params(labelsize=7)
    ax.ticklabel_format(axis="y", style="plain", useOffset=False)
    ax.grid(alpha=0.25, lw=0.5)


def caption(pause: Dict[str, Any]) -> str:
    parts = []
    if pause.get("guest_pause_ms") is not None:
        parts.append(f"switch-over pause {pause['guest_pause_ms']:g} ms")
    if pause.get("qemu_downtime_ms") is not None:
        parts.append(f"QEMU downtime {pause['qemu_downtime_ms']} ms")
    if pause.get("window_stall_ms") is not None:
        parts.append(f"longest stall after it {pause['window_stall_ms']:g} ms")
    return "; ".join(parts)


def draw(tl: Dict[str, Any], pause: Dict[str, Any], png_path: str, title: str = "") -> str:
    """Write the timeline picture; returns its path.

    A bare Agg figure with fixed margins (no pyplot, no tight_layout): it is drawn for
    every case, inside the case's time, so it is kept cheap."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    end_ms = _ms(tl["trace"][-1][0]) if tl["trace"] else 1.0
    fig = Figure(figsize=(9.0, 2.5), dpi=90)
    FigureCanvasAgg(fig)
    whole, zoom = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    fig.subplots_adjust(left=0.085, right=0.99, bottom=0.17, top=0.8, wspace=0.2)
    _panel(whole, tl, 0.0, end_ms, "guest counter, whole run (stalls >= 5 ms light red)")
    lo, hi = zoom_range(tl["marks"], end_ms)
    _panel(zoom, tl, lo, hi, "around the switch-over (its pause dark red)")
    whole.set_ylabel("counter", fontsize=7.5)
    fig.suptitle((title + ": " if title else "") + caption(pause), fontsize=9, x=0.01,
                 ha="left")
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
