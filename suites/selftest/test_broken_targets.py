"""The checks are strong enough: broken targets fail, each with a message saying how.

These run real QEMU pairs. The broken targets are wrappers around the real QEMU
(suites/selftest/broken/tamper.py), used only here, never as a conformance subject.
They break the guest at the switch-over or a moment after it (a late death, reset,
stop, frozen target, changed page); the wrapper holds the observation window open
until its damage is done, so no result depends on who wins a race.
"""
import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

from harness.core.errors import ConformanceFailure
from harness.evidence.memory import open_ram
from harness.run.config import RunConfig, Timeouts
from harness.run.driver import Hooks, run_scenario
from harness.run.verdict import failed, judge
from harness.scenario import catalogue

pytestmark = [pytest.mark.selftest,
              pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                                 reason="qemu-system-x86_64 not on PATH")]

TAMPER_PY = Path(__file__).resolve().parent / "broken" / "tamper.py"
BASE = catalogue.get("transfer/unix-unix-memfd-immediate-q35")



def _tamper_module():
    spec = importlib.util.spec_from_file_location("cprh_tamper", TAMPER_PY)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


TAMPER = _tamper_module()
#: mode -> (a check that must fail, words its message must hold), from the wrapper.
DEFECTS = TAMPER.DEFECTS


def wrapper(tmp_path, mode):
    path = tmp_path / f"qemu-{mode}"
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{TAMPER_PY}" {mode} "$@"\n')
    path.chmod(0o755)
    return str(path)


def failed_checks(result):
    """The failed checks by id."""
    return {m.id: m for m in failed(judge(result))}


def text_of(check):
    return f"{check.expected} {check.observed} {check.detail}"


#: A hung QEMU is given up on sooner here than in a real run (30 s for its monitor).
QUICK = Timeouts(start=12.0)


def broken_config(tmp_path, mode):
    """The wrapper on the side its mode breaks."""
    side = "qemu_src" if mode in TAMPER.SOURCE_MODES else "qemu_dst"
    return RunConfig(timeouts=QUICK, **{side: wrapper(tmp_path, mode)})


@pytest.mark.parametrize("mode", sorted(DEFECTS))
def test_a_broken_qemu_fails_and_names_its_defect(tmp_path, mode):
    """Each class of broken QEMU (target or source) ends as a failed check that names
    it: never a pass, never a harness error."""
    r = run_scenario(BASE, broken_config(tmp_path, mode), str(tmp_path / "a"))
    bad = failed_checks(r)
    name, words = DEFECTS[mode]
    assert name in bad, (mode, {k: text_of(v) for k, v in bad.items()})
    for w in words:
        assert w in text_of(bad[name]), (mode, text_of(bad[name]))
    msg = str(ConformanceFailure(BASE.id, list(bad.values())))
    assert name in msg


def test_a_wrapper_whose_monitor_comes_up_after_resume_still_acts(tmp_path, monkeypatch):
    """The wrapper's own monitor may connect after the target's RESUME was sent (CI once
    passed a late-kill that way: the wrapper waited for an event already gone). It then
    learns from query-status that the guest runs, and still kills the target."""
    monkeypatch.setenv("TAMPER_CONNECT_AFTER_S", "4")
    r = run_scenario(BASE, RunConfig(qemu_dst=wrapper(tmp_path, "late-kill")),
                     str(tmp_path / "a"))
    bad = failed_checks(r)
    name, words = DEFECTS["late-kill"]
    assert name in bad, {k: text_of(v) for k, v in bad.items()}
    assert "window.hold" not in bad


def test_a_late_reset_is_also_seen_on_the_guest(tmp_path):
    r = run_scenario(BASE, RunConfig(qemu_dst=wrapper(tmp_path, "late-reset")),
                     str(tmp_path / "a"))
    bad = failed_checks(r)
    assert "window.boots" in bad or "pause.monotonic" in bad, bad
    assert "ram.pattern" not in bad, "a reset of this guest must not touch RAM"


def test_a_frozen_target_names_both_pause_figures(tmp_path):
    r = run_scenario(BASE, RunConfig(qemu_dst=wrapper(tmp_path, "freeze")), str(tmp_path / "a"))
    pause = r.first.evidence.pause
    # The freeze falls in the switch-over's pause or just after it, in the window.
    stall = max(pause.guest_pause_ms, pause.window_stall_ms)
    assert stall >= 1400, pause
    assert pause.qemu_downtime_ms < 500, pause
    c = failed_checks(r)["pause.budget"]
    assert f"the guest stalled {stall:.0f} ms" in c.detail
    # What was seen sets the stall beside QEMU's own figure and the noise floor.
    assert c.observed.startswith(f"{stall:g} ms ")
    assert f"QEMU's downtime {pause.qemu_downtime_ms:g} ms" in c.observed


def test_harness_corrupting_one_page_fails_and_names_it(tmp_path):
    gpa = 0x1234000

    def corrupt(ramfd):
        with open_ram(ramfd, writable=True, machine="q35") as g:
            g.write_u32(gpa + 8, g.read_u32(gpa + 8) ^ 1)

    r = run_scenario(BASE, RunConfig(), str(tmp_path / "a"), hooks=Hooks(before_verify=corrupt))
    bad = failed_checks(r)
    assert list(bad) == ["ram.pattern"], bad
    msg = str(ConformanceFailure(BASE.id, list(bad.values())))
    assert "1 page(s) changed" in msg and "0x1234000" in msg, msg


def test_a_target_that_changes_one_page_fails_only_that_check(tmp_path):
    r = run_scenario(BASE, RunConfig(qemu_dst=wrapper(tmp_path, "page")), str(tmp_path / "a"))
    bad = failed_checks(r)
    assert list(bad) == ["ram.pattern"], bad


def test_an_unbroken_wrapper_passes(tmp_path):
    """Control: the wrapper itself (no tampering mode) does not break anything."""
    r = run_scenario(BASE, RunConfig(qemu_dst=wrapper(tmp_path, "none")), str(tmp_path / "a"))
    assert failed(judge(r)) == []
    target = r.window.target
    assert r.window.observed_s >= 1.0 and [s for s, _ in target.polls] == ["running"]
    assert [s for s, _ in r.window.source.polls] == ["postmigrate"]


def test_a_qemu_that_dies_after_the_window_fails_the_case(tmp_path):
    """Not killed on purpose (a plain signal, not QemuProcess.kill): a death before
    teardown is a failure naming the side, the signal and when."""
    import os
    import signal

    def kill_source(d, a):
        os.kill(d.source.pid, signal.SIGKILL)
        d.source.proc.wait(10)

    r = run_scenario(BASE, RunConfig(), str(tmp_path / "a"),
                     hooks=Hooks(after_transfer=kill_source))
    bad = failed_checks(r)
    assert list(bad) == ["deaths"], bad
    detail = bad["deaths"].observed
    assert detail.startswith("src QEMU was killed by signal 9 (SIGKILL)"), detail
    assert "s after the switch-over" in detail and "src.log" in detail


def test_every_qmp_event_and_the_negotiation_are_in_the_transcripts(tmp_path):
    import json

    run_scenario(BASE, RunConfig(), str(tmp_path / "a"))

    def entries(name):
        lines = (tmp_path / "a" / name).read_text().splitlines()
        return [json.loads(line) for line in lines]

    src, dst = entries("src.qmp.jsonl"), entries("dst.qmp.jsonl")
    for t in (src, dst):
        assert t[1] == {"t": t[1]["t"], "dir": "->", "msg": {"execute": "qmp_capabilities"}}
        assert all(isinstance(e["t"], float) for e in t)
    src_events = [e["msg"] for e in src if e["dir"] == "event"]
    dst_events = [e["msg"] for e in dst if e["dir"] == "event"]
    assert "STOP" in [e["event"] for e in src_events], src_events
    assert "RESUME" in [e["event"] for e in dst_events], dst_events
    assert all("seconds" in e["timestamp"] for e in src_events + dst_events)


def test_a_run_budget_below_every_pause_fails_the_stall_check(tmp_path):
    r = run_scenario(BASE, RunConfig(max_pause_ms=1.0), str(tmp_path / "a"))
    bad = failed_checks(r)
    assert list(bad) == ["pause.budget"], bad
    assert "budget 1 ms" in bad["pause.budget"].detail


def test_a_target_dying_while_its_evidence_is_read_is_a_verdict(tmp_path, monkeypatch):
    """Killed while the harness reads its /proc entries (the same-memory check), or
    while its RAM is verified: a failed check naming the death, the RAM verified
    through the source; never a harness error."""
    import os
    import signal

    from harness.evidence.collector import RamEvidence

    def kill(pid):  # not waited for: the harness finds it half-dead, as in real life
        os.kill(pid, signal.SIGKILL)

    original = RamEvidence.check_same_memory
    killed = []

    def kill_then_check(self, src_pid, dst_pid):
        kill(dst_pid)
        killed.append(dst_pid)
        return original(self, src_pid, dst_pid)

    monkeypatch.setattr(RamEvidence, "check_same_memory", kill_then_check)
    r = run_scenario(BASE, RunConfig(), str(tmp_path / "a"))
    monkeypatch.undo()
    bad = failed_checks(r)
    assert killed and "window.alive" in bad, bad
    assert "killed by signal 9" in text_of(bad["window.alive"])

    def kill_the_target(ramfd):  # first through the target's fd; then the source's
        if len(killed) == 1:
            killed.append(ramfd.pid)
            kill(ramfd.pid)

    r = run_scenario(BASE, RunConfig(), str(tmp_path / "b"),
                     hooks=Hooks(before_verify=kill_the_target))
    bad = failed_checks(r)
    assert len(killed) == 2 and "ram.pattern" not in bad, bad
    assert r.first.evidence.pattern.ok is True     # verified through the source instead
    assert "deaths" in bad or "window.alive" in bad, bad
