"""Self-tests of the verdict: each way a transfer can go wrong is named, by its check id."""
from dataclasses import replace

import pytest

from harness.core.errors import Check
from harness.core.sides import Side
from harness.qemu.states import RunState
from harness.run.checks.window import judge_window
from harness.run.records import (AttemptRecord, Death, EventSeen, GuestSeen, Role, StateSeen,
                                 Survival, WatchRecord, WindowRecord)
from harness.run.result import PairResult
from harness.run.verdict import failed, judge
from harness.scenario import catalogue
from harness.scenario.model import Observed

pytestmark = pytest.mark.selftest

GOOD = catalogue.get("transfer/unix-unix-memfd-immediate-q35")
REFUSE = catalogue.get("channel/cpr-missing")
RUNNING, POSTMIGRATE = RunState.RUNNING, RunState.POSTMIGRATE


def completed(role=Role.FIRST, **kw):
    a = AttemptRecord(role, role.value, Observed.COMPLETED, "", {"status": "completed"},
                      src_state=POSTMIGRATE, dst_state=RUNNING, counter_reference=100,
                      counter_after=200, boots_after=1, counter_moved=True)
    return replace(a, **kw)


def good_result(**kw):
    return PairResult(scenario=GOOD, counter_before=100, boots_before=1,
                      attempts=[completed(**kw)])


def ids(r):
    return [c.id for c in failed(judge(r))]


def test_a_good_transfer_passes():
    assert failed(judge(good_result())) == []


@pytest.mark.parametrize("change,check", [
    ({"observed": Observed.SRC_REFUSED, "message": "boom"}, "outcome"),
    ({"query_migrate": {"status": "failed"}}, "states.migration"),
    ({"src_state": RUNNING}, "states.source"),
    ({"dst_state": RunState.PAUSED}, "states.target"),
    ({"boots_after": 2}, "guest.boots"),
    ({"counter_after": 100}, "guest.progress"),
    ({"counter_after": None}, "guest.progress"),
    # above the pre-transfer value but not moving on the target: the source ran on
    # until it stopped, then nothing (a target that never resumed)
    ({"counter_moved": False}, "guest.progress"),
])
def test_each_failure_is_named(change, check):
    assert check in ids(good_result(**change))


def refusal(retry=None, survival=None, **first):
    a = AttemptRecord(Role.FIRST, "first", Observed.SRC_REFUSED,
                      "missing 'cpr' migration channel")
    rt = completed(Role.RETRY, counter_reference=9, counter_after=20) if retry is None \
        else retry
    return PairResult(scenario=REFUSE, counter_before=5, boots_before=1,
                      attempts=[replace(a, **first)] + ([rt] if rt else []),
                      survival=survival or Survival(RUNNING, 9))


def test_a_correct_refusal_passes():
    assert failed(judge(refusal())) == []
    assert "retry: guest progress" in [c.name for c in judge(refusal())]


@pytest.mark.parametrize("kw,check", [
    ({"observed": Observed.DST_REFUSED}, "outcome"),
    ({"observed": Observed.COMPLETED}, "outcome"),
    ({"message": "some other error"}, "refusal.message"),
    ({"survival": Survival(POSTMIGRATE, 9)}, "survival.state"),
    ({"survival": Survival(RUNNING, None)}, "survival.progress"),
    ({"retry": False}, "retry.completes"),
    ({"retry": AttemptRecord(Role.RETRY, "retry", Observed.FAILED, "x")}, "retry.completes"),
    ({"retry": completed(Role.RETRY, counter_reference=9, counter_after=20,
                         counter_moved=False)}, "guest.progress"),
])
def test_each_refusal_failure_is_named(kw, check):
    assert check in ids(refusal(**kw))


def test_a_retry_that_cannot_exist_is_said_not_failed():
    why = "no valid transfer can follow from this source: it runs pc-q35-11.1, ..."
    r = refusal(retry=AttemptRecord(Role.RETRY, "retry", not_applicable=why))
    assert failed(judge(r)) == []
    (c,) = [c for c in judge(r) if c.id == "retry.completes"]
    assert c.observed.startswith("not applicable: no valid transfer")


# --------------------------------------------------------------------------- windows

def watch(role="target", **kw):
    w = WatchRecord(role, "dst" if role == "target" else "src",
                    Side.DST if role == "target" else Side.SRC,
                    RUNNING if role == "target" else POSTMIGRATE,
                    polls=((RUNNING if role == "target" else POSTMIGRATE, 20),),
                    anchor_seen=True, observed_s=1.05,
                    guest=GuestSeen(10, 20, 1) if role == "target" else None,
                    vcpu_ms=0.0 if role == "source" else None,
                    console_bytes_after=0 if role == "source" else None)
    return replace(w, **kw)


def window(*watches):
    return WindowRecord(1.0, 1.05, tuple(watches) or (watch(), watch("source")))


def bad_ids(w):
    return [c.id for c in judge_window(w, 1) if not c.ok]


def test_a_good_window_passes_on_both_qemus():
    assert bad_ids(window()) == []
    assert {c.id for c in judge_window(window(), 1)} >= {"window.alive", "source.stopped"}


def test_a_window_held_by_a_wrapper_that_never_acted_fails():
    # A self-test's tampering wrapper holds the window until its damage is done; a hold
    # still there at the limit means it never acted, and the verdict must not pass.
    held = judge_window(window(watch(held_s=0.4)), 1)
    assert [c for c in held if c.id == "window.hold" and c.ok]
    expired = [c for c in judge_window(window(watch(held_s=30.0,
                                                    hold_expired="/x/qmp.sock.hold")), 1)
               if not c.ok]
    assert [c.id for c in expired] == ["window.hold"]
    assert "/x/qmp.sock.hold" in expired[0].observed and "never acted" in expired[0].detail


@pytest.mark.parametrize("change,words", [
    ({"events": (EventSeen("RESUME", 0.3),), "first_wrong": StateSeen(RUNNING, 0.31),
      "polls": ((POSTMIGRATE, 6), (RUNNING, 14))}, ["RESUME +0.30 s", "running 0.31 s"]),
    ({"vcpu_ms": 690.0}, ["vCPU threads ran 690 ms"]),
    ({"console_bytes_after": 120}, ["printed 120 byte(s)"]),
])
def test_a_source_that_runs_after_the_switch_over_is_a_split_brain(change, words):
    checks = [c for c in judge_window(window(watch(), watch("source", **change)), 1)
              if not c.ok]
    assert [c.id for c in checks] == ["source.stopped"]
    for w in words:
        assert w in checks[0].observed, checks[0].observed
    assert "split brain" in checks[0].detail


def test_a_source_that_dies_after_the_switch_over_fails_as_a_death():
    death = Death("src", Side.SRC, -9, "was killed by signal 9 (SIGKILL)", 0.4, "", "/r/src.log",
                  "seen in the observation window")
    assert bad_ids(window(watch(), watch("source", death=death))) == ["source.alive"]


def test_check_text_is_never_python():
    with pytest.raises(ValueError):
        Check("x", "x", False, "expected", "None")
    with pytest.raises(TypeError):
        Check("x", "x", False, "expected", 3)  # type: ignore[arg-type]
    for c in judge(good_result(counter_after=None, boots_after=None)):
        assert "None" not in f"{c.expected} {c.observed} {c.detail}", c
