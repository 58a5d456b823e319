"""Self-tests of the benchmark (harness/bench.py): its statistics, the precopy pause
computed from two synthetic sampler results, its output, and one quick live run."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.tools import bench
from harness.core.errors import UsageError
from harness.evidence.sampler import SamplerResult, Stall, Window

pytestmark = pytest.mark.selftest
ROOT = Path(__file__).resolve().parents[2]
MS = 1_000_000


# --------------------------------------------------------------------------- statistics

def test_stats_min_median_max_and_none():
    assert bench.stats([]) is None
    assert bench.stats([None, None]) is None
    assert bench.stats([3, None, 1, 2]) == {"min": 1.0, "median": 2.0, "max": 3.0, "n": 3}
    assert bench.stats([4, 1, 3, 2])["median"] == 2.5
    assert bench.stats([7])["min"] == bench.stats([7])["max"] == 7.0


def _round(method="cpr-transfer", mb=256, i=1, status="ok", **kw):
    base = dict(guest_pause_ms=5.0, qemu_downtime_ms=3, noise_floor_ms=2.0,
                qemu_total_time_ms=40, main_bytes=77_000, dst_start_ms=40.0)
    if status != "ok":
        base = {}
    base.update(kw)
    return bench.RoundResult(method, mb, i, status=status, **base)


def test_summarize_groups_and_counts_only_ok_rounds():
    rounds = [_round(i=1, guest_pause_ms=4.0), _round(i=2, guest_pause_ms=8.0),
              _round(i=3, status="error", reason="boom", guest_pause_ms=999.0),
              _round("precopy", 256, 1, guest_pause_ms=100.0, qemu_downtime_ms=99),
              _round("precopy", 8192, 1, status="skip", reason="needs 16384 MiB")]
    s = bench.summarize(rounds)
    assert [(x["method"], x["ram_mb"]) for x in s] == [
        ("cpr-transfer", 256), ("precopy", 256), ("precopy", 8192)]
    cpr = s[0]
    assert (cpr["rounds"], cpr["ok"]) == (3, 2)
    assert cpr["errors"] == ["round 3: boom"]
    assert cpr["metrics"]["guest_pause_ms"] == {"min": 4.0, "median": 6.0, "max": 8.0, "n": 2}
    assert cpr["metrics"]["fill_s"] is None
    skipped = s[2]
    assert skipped["ok"] == 0 and skipped["skipped"] == ["needs 16384 MiB"]
    assert skipped["metrics"]["guest_pause_ms"] is None and skipped["disagreement"] is None


def test_disagreement_uses_noise_floor_and_downtime_resolution():
    st = bench.stats
    agree = bench.disagreement("cpr-transfer", {"guest_pause_ms": st([6.0]),
                                                "qemu_downtime_ms": st([3]),
                                                "noise_floor_ms": st([4.0])})
    assert not agree["disagrees"] and agree["tolerance_ms"] == 4.0 and agree["ratio"] == 2.0
    # No noise measured: the 1 ms resolution of downtime is still the tolerance.
    tiny = bench.disagreement("cpr-transfer", {"guest_pause_ms": st([1.8]),
                                               "qemu_downtime_ms": st([1]),
                                               "noise_floor_ms": None})
    assert not tiny["disagrees"] and tiny["tolerance_ms"] == 1.0
    far = bench.disagreement("cpr-reboot", {"guest_pause_ms": st([150.0, 160.0, 170.0]),
                                            "qemu_downtime_ms": st([10, 12, 14]),
                                            "noise_floor_ms": st([2.0, 3.0, 90.0])})
    # Median noise (3 ms), not the one starved round (90 ms).
    assert far["disagrees"] and far["tolerance_ms"] == 3.0
    assert far["difference_ms"] == 148.0 and far["ratio"] == 13.33
    assert "148.0 ms longer" in far["text"] and "quitting the source" in far["text"]
    # Within 10% of a long downtime: agrees, though beyond the noise floor.
    close = bench.disagreement("precopy", {"guest_pause_ms": st([292.0]),
                                           "qemu_downtime_ms": st([283]),
                                           "noise_floor_ms": st([8.8])})
    assert not close["disagrees"] and close["tolerance_ms"] == 28.3
    assert bench.disagreement("x", {"guest_pause_ms": None, "qemu_downtime_ms": st([1]),
                                    "noise_floor_ms": None}) is None
    shorter = bench.disagreement("cpr-transfer", {"guest_pause_ms": st([3.5]),
                                                  "qemu_downtime_ms": st([21]),
                                                  "noise_floor_ms": st([1.8])})
    assert shorter["disagrees"] and "17.5 ms shorter" in shorter["text"]
    assert "already ran on the target" in shorter["text"]
    zero = bench.disagreement("cpr-transfer", {"guest_pause_ms": st([9.0]),
                                               "qemu_downtime_ms": st([0]),
                                               "noise_floor_ms": st([2.0])})
    assert zero["ratio"] is None and zero["disagrees"] and "9.0 ms longer" in zero["text"]


# --------------------------------------------------------------------------- the precopy pause

def _stall(start, dur, end, value, before=None):
    """A stall in ns; ``before``: the read before its first (default 100 ns earlier)."""
    before = start - 100 if before is None else before
    last = start + dur
    return Stall(start_ns=start, end_ns=end, duration_ns=dur,
                 max_ns=(last if end is None else end) - before, value=value,
                 mark="transfer", since_mark_ns=0)


def _result(stalls, last_value, t0=0, t_end=10_000 * MS, windows_longest=None):
    """A SamplerResult whose stalls are named only through its windows (as in a run)."""
    wl = stalls if windows_longest is None else windows_longest
    windows = tuple(Window(f"w{i}", f"w{i + 1}", 0, 0, s, 1, 0) for i, s in enumerate(wl))
    top = tuple(sorted(stalls, key=lambda s: s.duration_ns, reverse=True)[:5])
    return SamplerResult(
        stopped_by="stop", samples=10**6, t0_ns=t0, t_end_ns=t_end, rate_hz=5e6,
        median_interval_ns=200, max_interval_ns=1000, threshold_ns=50_000, first_value=0,
        last_value=last_value, changes=1000, reset=False, backward_steps=(),
        longest=top[0] if top else None, top=top, marks=(), windows=windows,
        stalls_recorded=len(stalls), stalls_dropped=0)


def test_precopy_pause_from_two_samplers():
    t_stop = 1000 * MS
    # Source: a noise stall, then stopped for good at value 500 (read before: 2 us earlier).
    src = _result([_stall(200 * MS, 3 * MS, 203 * MS, 120),
                   _stall(t_stop, 400 * MS, None, 500, before=t_stop - 2000)], last_value=500)
    # Target: 0 until the first pass, older values from later passes, then 500 from
    # the final page until the guest runs there 130 ms after the source stopped.
    resume = t_stop + 130 * MS
    dst = _result([_stall(0, 900 * MS, 900 * MS + 10, 0),
                   _stall(950 * MS, 80 * MS, 1060 * MS, 480),
                   _stall(1060 * MS, 70 * MS - 30_000, resume, 500),
                   _stall(1200 * MS, 1 * MS, 1201 * MS, 530)], last_value=600)
    p = bench.precopy_pause(src, dst)
    assert not p.problem and not p.note
    assert p.final_value == 500 and p.src_stop_ns == t_stop and p.dst_resume_ns == resume
    assert p.pause_ms == 129.97                 # last target read of 500 - first source read
    assert p.pause_max_ms == 130.002            # first new value - the source read before


def test_precopy_pause_found_only_through_a_window():
    """The target's stall at the final value is short and not in the top five: the
    split marks made it the longest of a window, which is enough."""
    t_stop = 1000 * MS
    src = _result([_stall(t_stop, 400 * MS, None, 500)], last_value=500)
    long_ones = [_stall(i * 100 * MS, 50 * MS, i * 100 * MS + 50 * MS, i) for i in range(6)]
    short = _stall(1100 * MS, 300_000, 1100 * MS + 300_100, 500)
    dst = _result(long_ones + [short], last_value=900,
                  windows_longest=long_ones + [short])
    assert short not in dst.top
    p = bench.precopy_pause(src, dst)
    assert p.dst_resume_ns == short.end_ns and p.pause_ms == 100.3


def test_precopy_pause_below_the_sampler_threshold():
    """No stall at the final value (shorter than 50 us): its arrival, the end of the
    last stall below it, bounds the resume."""
    t_stop = 1000 * MS
    src = _result([_stall(t_stop, 400 * MS, None, 500, before=t_stop - 1000)], last_value=500)
    arrived = t_stop + 90 * MS
    dst = _result([_stall(0, 900 * MS, 900 * MS, 0),
                   _stall(950 * MS, 140 * MS - 10, arrived, 470),
                   _stall(1300 * MS, 1 * MS, 1301 * MS, 700)], last_value=800)
    p = bench.precopy_pause(src, dst)
    assert not p.problem and "threshold" in p.note
    assert p.pause_ms == 90.0 and p.pause_max_ms == 90.051


def test_precopy_pause_problems():
    never_stopped = _result([_stall(5 * MS, 1 * MS, 6 * MS, 3)], last_value=9)
    p = bench.precopy_pause(never_stopped, never_stopped)
    assert p.pause_ms is None and "never stopped" in p.problem
    src = _result([_stall(1000 * MS, 400 * MS, None, 500)], last_value=500)
    dst_stuck = _result([_stall(0, 900 * MS, 900 * MS, 0)], last_value=500)
    p = bench.precopy_pause(src, dst_stuck)
    assert p.pause_ms is None and "never ran on the target" in p.problem


def test_final_stall_is_the_ongoing_one():
    s_end = _stall(10 * MS, 1 * MS, 11 * MS, 4)
    s_on = _stall(50 * MS, 9 * MS, None, 8)
    assert bench.final_stall(_result([s_end, s_on], 8)) == s_on
    assert bench.final_stall(_result([s_end], 8)) is None


def test_split_marks_fine_around_running_coarse_before():
    stop, running = 1000 * MS, 1400 * MS
    marks = bench.split_marks(stop, running)
    times = [t for _, t in marks]
    assert times == sorted(set(times)) and len({lbl for lbl, _ in marks}) == len(marks)
    assert times[0] == stop - MS and times[-1] == running + bench.SPLIT_FINE_AFTER_NS
    fine = [t for t in times if t >= running - bench.SPLIT_FINE_BEFORE_NS]
    assert all(b - a == bench.SPLIT_FINE_NS for a, b in zip(fine, fine[1:]))
    coarse = [t for t in times if t < running - bench.SPLIT_FINE_BEFORE_NS]
    assert 1 <= len(coarse) <= bench.SPLIT_COARSE_MAX
    assert min(b - a for a, b in zip(coarse, coarse[1:])) >= bench.SPLIT_COARSE_MIN_NS
    # The target seen running soon after the stop: only fine marks, from the stop on.
    close = [t for _, t in bench.split_marks(stop, stop + 5 * MS)]
    assert close[0] == stop - MS and all(b - a == bench.SPLIT_FINE_NS
                                         for a, b in zip(close, close[1:]))


# --------------------------------------------------------------------------- options, output

def test_parse_args_quick_and_overrides():
    a = bench.parse_args(["--quick"])
    assert a.sizes_mb == [256, 1024] and a.rounds == 1
    a = bench.parse_args(["--quick", "--rounds", "2", "--sizes", "512M"])
    assert a.sizes_mb == [512] and a.rounds == 2
    a = bench.parse_args([])
    assert a.sizes_mb == [256, 1024, 4096] and a.rounds == 3
    assert a.method_list == list(bench.METHODS) and a.bandwidth == bench.PRECOPY_BANDWIDTH
    assert bench.parse_args(["--precopy-bandwidth", "default"]).bandwidth is None
    for bad in (["--methods", "postcopy"], ["--sizes", "12X"], ["--rounds", "0"],
                ["--precopy-bandwidth", "fast"]):
        with pytest.raises(UsageError):
            bench.parse_args(bad)


def test_bad_input_is_one_line_exit_2():
    p = subprocess.run([sys.executable, "-m", "harness.tools.bench", "--methods", "postcopy"],
                       cwd=str(ROOT), capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "unknown method" in p.stderr
    assert "Traceback" not in p.stderr


def _doc(rounds):
    return {"summary": bench.summarize(rounds), "rounds": [r.to_dict() for r in rounds],
            "qemu": {"version": "10.0.2"}, "accel": "kvm", "wall_s": 12.0,
            "host": {"cpus": 2, "load_avg": [1.0, 1.0, 1.0]}, "load_avg_end": [2.0],
            "config": {"rounds": 1},
            "overhead": {"case": bench.OVERHEAD_CASE, "ram_mb": 256,
                         "full_case_s": bench.stats([1.3]), "bare_pair_s": bench.stats([0.3]),
                         "overhead_s": 1.0, "overhead_ratio": 4.33},
            "matrix": {"runs": [{"label": "-n 1 (no xdist)", "wall_s": 80.0, "exit_code": 0,
                                 "summary": "48 passed"},
                                {"label": "-n 2", "wall_s": 50.0, "exit_code": 0,
                                 "summary": "48 passed"}], "speedup": 1.6}}


def test_table_and_plot_from_synthetic_rounds(tmp_path):
    rounds = []
    for m in bench.METHODS:
        for mb in (256, 1024):
            pause = 150.0 if m == "cpr-reboot" else 5.0
            rounds.append(_round(m, mb, 1, guest_pause_ms=pause, qemu_downtime_ms=4,
                                 dst_start_until="QMP ready"))
    rounds.append(_round("precopy", 4096, 1, status="skip", reason="not enough memory"))
    doc = _doc(rounds)
    text = bench.table(doc)
    assert "cpr-transfer-prealloc" in text and "256M" in text and "1G" in text
    assert "DISAGREES" in text and "1G cpr-reboot: the guest's pause (150.0 ms)" in text
    assert "skipped precopy 4G: not enough memory" in text
    assert "+1.00 s a case" in text and "speed-up 1.6x" in text
    png = tmp_path / "b.png"
    bench.plot(doc, str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- live

@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                    reason="qemu-system-x86_64 not installed (scripts/setup-host.sh)")
def test_quick_bench_writes_every_method_json_and_png(tmp_path):
    out = tmp_path / "reports"
    p = subprocess.run([sys.executable, "-m", "harness.tools.bench", "--quick", "--rounds", "1",
                        "--sizes", "256M", "--skip-matrix", "--out", str(out)],
                       cwd=str(ROOT), capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stdout + p.stderr
    doc = json.loads((out / "bench.json").read_text())
    assert (out / "bench.png").read_bytes()[:4] == b"\x89PNG"
    assert doc["qemu"]["version"] and doc["host"]["cpus"] and "matrix" not in doc
    by_method = {s["method"]: s for s in doc["summary"]}
    assert set(by_method) == set(bench.METHODS)
    for name, s in by_method.items():
        assert s["ram_mb"] == 256 and s["ok"] == 1, (name, s["errors"])
        m = s["metrics"]
        for key in ("guest_pause_ms", "qemu_downtime_ms", "qemu_total_time_ms",
                    "main_bytes", "dst_start_ms", "noise_floor_ms"):
            assert m[key] is not None and m[key]["median"] >= 0, (name, key)
    # The shape the benchmark exists to show, robust to a busy host.
    bytes_ = {n: s["metrics"]["main_bytes"]["median"] for n, s in by_method.items()}
    assert bytes_["precopy"] > 200e6 > 1e6 > bytes_["cpr-transfer"]
    assert bytes_["cpr-reboot"] < 1e6
    ov = doc["overhead"]
    assert ov["full_case_s"] and ov["bare_pair_s"] and "overhead_s" in ov
    assert "guest pause ms" in p.stdout and "bench.png" in p.stdout
    # The bench's cpr-transfer pause is the conformance case's: the same record (the
    # stall across QEMU's STOP and RESUME, harness.evidence.pause), not a second reading.
    rounds = [r for r in doc["rounds"] if r["method"] == "cpr-transfer" and r["status"] == "ok"]
    assert rounds
    for r in rounds:
        rec = r["extra"]["pause_record"]
        assert r["guest_pause_ms"] == rec["switch_ms"], r
        assert r["guest_pause_max_ms"] == rec["switch_max_ms"], r
