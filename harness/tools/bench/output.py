"""The bench's output: the terminal table and its footer, bench.png."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from harness.tools.bench.figures import stats


def size_label(mb: int) -> str:
    return f"{mb // 1024}G" if mb % 1024 == 0 else f"{mb}M"



# --------------------------------------------------------------------------- output

def _fmt(v: Optional[float], digits: int = 1) -> str:
    if v is None:
        return "-"
    if abs(v) >= 100 or float(v).is_integer():
        return f"{v:.0f}"
    return f"{v:.{digits}f}"


def _triple(s: Optional[Dict[str, float]], digits: int = 1) -> str:
    if s is None:
        return "-"
    return "/".join(_fmt(s[k], digits) for k in ("min", "median", "max"))


def human_bytes(n: Optional[float]) -> str:
    if n is None:
        return "-"
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n:.0f} B"


def table(doc: Dict[str, Any]) -> str:
    """The terminal table: one row per (method, size), min/median/max over rounds."""
    cols = [("method", 22), ("RAM", 5), ("ok", 4), ("guest pause ms", 17),
            ("console gap ms", 17), ("QEMU downtime ms", 17), ("QEMU total-time ms", 19), ("main channel", 12),
            ("target start ms", 16), ("noise ms", 14)]
    head = " ".join(f"{n:<{w}}" if i < 2 else f"{n:>{w}}" for i, (n, w) in enumerate(cols))
    lines = ["min/median/max over rounds; main channel: median bytes", head, "-" * len(head)]
    for s in doc["summary"]:
        m = s["metrics"]
        ok = f"{s['ok']}/{s['rounds']}"
        mb = m.get("main_bytes")
        cells = [s["method"], size_label(s["ram_mb"]), ok, _triple(m["guest_pause_ms"]),
                 _triple(m.get("console_gap_ms")), _triple(m["qemu_downtime_ms"], 0), _triple(m["qemu_total_time_ms"], 0),
                 human_bytes(mb["median"] if mb else None), _triple(m["dst_start_ms"], 0),
                 _triple(m["noise_floor_ms"])]
        lines.append(" ".join(f"{c:<{w}}" if i < 2 else f"{c:>{w}}"
                              for i, (c, (_, w)) in enumerate(zip(cells, cols))))
    lines += footer(doc)
    return "\n".join(lines)


def footer(doc: Dict[str, Any]) -> List[str]:
    out: List[str] = []
    starts = {s["method"]: s for s in doc["summary"]}
    until = {r["method"]: r["dst_start_until"] for r in doc["rounds"] if r["dst_start_until"]}
    if until:
        out.append("target start = launch until: " +
                   "; ".join(f"{k}: {v}" for k, v in until.items() if k in starts))
    dis = [s["disagreement"] for s in doc["summary"]
           if s.get("disagreement") and s["disagreement"]["disagrees"]]
    agree = [f"{s['method']} {size_label(s['ram_mb'])}" for s in doc["summary"]
             if s.get("disagreement") and not s["disagreement"]["disagrees"]]
    if dis:
        out.append("QEMU's downtime DISAGREES with the measured pause (medians; tolerance: the "
                   "median noise floor, 1 ms, or 10% of the downtime, whichever is largest):")
        for s in doc["summary"]:
            d = s.get("disagreement")
            if d and d["disagrees"]:
                out.append(f"  {size_label(s['ram_mb']):>4} {d['text']}")
    if agree:
        out.append("downtime agrees with the pause within the tolerance: " + ", ".join(agree))
    for s in doc["summary"]:
        for e in s["errors"]:
            out.append(f"ERROR {s['method']} {size_label(s['ram_mb'])} {e}")
        for k in s["skipped"]:
            out.append(f"skipped {s['method']} {size_label(s['ram_mb'])}: {k}")
    ov = doc.get("overhead")
    if ov and ov.get("full_case_s") and ov.get("bare_pair_s"):
        out.append(f"harness overhead ({ov['case']}, {size_label(ov['ram_mb'])}): full conformance "
                   f"case {_triple(ov['full_case_s'], 2)} s vs bare launch+transfer "
                   f"{_triple(ov['bare_pair_s'], 2)} s: +{ov['overhead_s']:.2f} s a case "
                   f"({ov['overhead_ratio']}x)")
        if ov.get("observe_s") is not None:
            out.append(f"  beyond the bare pair and the {ov['observe_s']:g} s observation window: "
                       f"+{ov['overhead_s'] - ov['observe_s']:.2f} s a case")
        if ov.get("breakdown"):
            out.append("where a full case's time goes (median s): " + ", ".join(
                f"{k} {v:.2f}" for k, v in ov["breakdown"].items()))
        if ov.get("breakdown_bare"):
            out.append("  ... and the bare pair's: " + ", ".join(
                f"{k} {v:.2f}" for k, v in ov["breakdown_bare"].items()))
    elif ov:
        out.append(f"harness overhead: not measured ({ov.get('note', 'errors')})")
    mx = doc.get("matrix")
    if mx and mx.get("runs"):
        out.append("conformance matrix wall time: " + "; ".join(
            f"{r['label']} {r['wall_s']} s ({r['summary'] or 'exit ' + str(r['exit_code'])})"
            for r in mx["runs"]) + (f"; speed-up {mx['speedup']}x" if mx.get("speedup") else ""))
    out.append(f"bench wall time {doc['wall_s']:.0f} s; {doc['qemu']['version']}, "
               f"accel {doc['accel']}, {doc['host']['cpus']} CPUs, load "
               f"{doc['host']['load_avg'][0]:.1f} at start, "
               f"{doc.get('load_avg_end', [0])[0]:.1f} at end")
    return out


_COLORS = {"cpr-transfer": "tab:blue", "cpr-transfer-prealloc": "tab:cyan",
           "precopy": "tab:red", "cpr-reboot": "tab:green"}
# Distinct markers: cpr-transfer with and without prealloc send the same bytes, so their
# lines lie on top of each other.
_MARKERS = {"cpr-transfer": "o", "cpr-transfer-prealloc": "D", "precopy": "s",
            "cpr-reboot": "^"}


def _series(doc: Dict[str, Any], method: str, key: str
            ) -> Tuple[List[int], List[float], List[float], List[float]]:
    """(sizes, medians, below, above) of one metric of one method."""
    xs, med, lo, hi = [], [], [], []
    for s in doc["summary"]:
        st = s["metrics"].get(key)
        if s["method"] == method and st is not None:
            xs.append(s["ram_mb"])
            med.append(st["median"])
            lo.append(st["median"] - st["min"])
            hi.append(st["max"] - st["median"])
    return xs, med, lo, hi


def _plot_pause(ax: Any, doc: Dict[str, Any], methods: List[str]) -> None:
    for i, method in enumerate(methods):
        c = _COLORS.get(method, f"C{i}")
        xs, med, lo, hi = _series(doc, method, "guest_pause_ms")
        if xs:
            ax.errorbar(xs, med, yerr=[lo, hi], marker=_MARKERS.get(method, "o"), color=c,
                        capsize=4, label=f"{method}: guest pause (measured)")
        xs, med, _, _ = _series(doc, method, "qemu_downtime_ms")
        if xs:
            ax.plot(xs, med, linestyle="--", marker="x", color=c, alpha=0.7,
                    label=f"{method}: QEMU downtime")
    noise = stats(r["noise_floor_ms"] for r in doc["rounds"] if r["status"] == "ok")
    if noise:
        ax.axhspan(0, noise["median"], color="grey", alpha=0.15,
                   label=f"noise floor, idle pair (median {noise['median']:.1f} ms)")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_ylabel("ms (median; bars: min..max over rounds)")
    ax.set_title("Guest pause vs RAM size")


def _plot_bytes(ax: Any, doc: Dict[str, Any], methods: List[str]) -> None:
    for i, method in enumerate(methods):
        xs, med, lo, hi = _series(doc, method, "main_bytes")
        if xs:
            ax.errorbar(xs, med, yerr=[lo, hi], marker=_MARKERS.get(method, "o"), capsize=4,
                        color=_COLORS.get(method, f"C{i}"), label=method,
                        markersize=9 if method == "cpr-transfer" else 6,
                        fillstyle="none" if method == "cpr-transfer" else "full")
    ax.set_yscale("log")
    ax.set_ylabel("bytes (ram.transferred; cpr-reboot: state file size)")
    ax.set_title("Bytes on the main channel vs RAM size")


def _plot_times(ax: Any, doc: Dict[str, Any], methods: List[str]) -> None:
    for i, method in enumerate(methods):
        c = _COLORS.get(method, f"C{i}")
        xs, med, lo, hi = _series(doc, method, "qemu_total_time_ms")
        if xs:
            ax.errorbar(xs, med, yerr=[lo, hi], marker=_MARKERS.get(method, "o"), capsize=4,
                        color=c, label=f"{method}: QEMU total-time")
        xs, med, lo, hi = _series(doc, method, "dst_start_ms")
        if xs:
            ax.plot(xs, med, linestyle=":", marker="s", color=c, alpha=0.7,
                    label=f"{method}: target start")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_ylabel("ms (median)")
    ax.set_title("QEMU total-time and target start vs RAM size")


def plot(doc: Dict[str, Any], path: str) -> None:
    """bench.png: guest pause, main-channel bytes and total-time vs RAM size."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(18, 6))
    sizes = sorted({s["ram_mb"] for s in doc["summary"]})
    methods = list(dict.fromkeys(s["method"] for s in doc["summary"]))
    for draw, ax in zip((_plot_pause, _plot_bytes, _plot_times), axes):
        draw(ax, doc, methods)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes)
        ax.set_xticklabels([size_label(s) for s in sizes])
        ax.set_xlabel("guest RAM (touched: every page resident)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"cpr-transfer vs precopy vs cpr-reboot: {doc['qemu']['version']}, "
                 f"accel {doc['accel']}, {doc['host']['cpus']} CPUs, "
                 f"{doc['config']['rounds']} round(s)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
