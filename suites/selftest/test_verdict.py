"""Self-tests of the verdict: each way a transfer can go wrong is named."""
import pytest

from harness.run.result import PairResult
from harness.run.verdict import failed, judge, window_checks
from harness.scenario import catalogue
from harness.scenario.model import Observed

COMPLETES, DST_REFUSES, SRC_REFUSES = Observed.COMPLETED, Observed.DST_REFUSED, Observed.SRC_REFUSED

pytestmark = pytest.mark.selftest

GOOD = catalogue.get("transfer/unix-unix-memfd-immediate-q35")
REFUSE = catalogue.get("channel/cpr-missing")


def good_result(**kw):
    r = PairResult(scenario=GOOD, observed=COMPLETES, src_status_after="postmigrate",
                   dst_status_after="running", query_migrate={"status": "completed"},
                   counter_before=100, counter_after=200, boots_before=1, boots_after=1,
                   counter_moved_on_dst=True)
    for k, v in kw.items():
        setattr(r, k, v)
    return r


def checks(r):
    return [m.check for m in failed(judge(r))]


def test_a_good_transfer_passes():
    assert failed(judge(good_result())) == []


@pytest.mark.parametrize("change,check", [
    ({"observed": SRC_REFUSES, "observed_message": "boom"}, "outcome"),
    ({"query_migrate": {"status": "failed"}}, "query-migrate status"),
    ({"src_status_after": "running"}, "source run state"),
    ({"dst_status_after": "paused"}, "target run state"),
    ({"boots_after": 2}, "guest reset"),
    ({"counter_after": 100}, "guest progress"),
    ({"counter_after": None}, "guest progress"),
    # above the pre-transfer value but not moving on the target: the source ran on
    # until it stopped, then nothing (a target that never resumed)
    ({"counter_moved_on_dst": False}, "guest progress"),
])
def test_each_failure_is_named(change, check):
    assert check in checks(good_result(**change))


def refusal(**kw):
    r = PairResult(scenario=REFUSE, observed=SRC_REFUSES,
                   observed_message="missing 'cpr' migration channel",
                   src_status_after="running", counter_before=5, src_counter_after_refusal=9,
                   boots_before=1,
                   retry={"observed": "completed", "dst_status_after": "running",
                          "src_status_after": "postmigrate", "boots_after": 1,
                          "counter_after": 20, "counter_moved_on_dst": True})
    for k, v in kw.items():
        setattr(r, k, v)
    return r


def test_a_correct_refusal_passes():
    assert failed(judge(refusal())) == []


@pytest.mark.parametrize("change,check", [
    ({"observed": DST_REFUSES}, "outcome"),
    ({"observed": COMPLETES}, "outcome"),
    ({"observed_message": "some other error"}, "error message"),
    ({"src_status_after": "postmigrate"}, "source survives refusal"),
    ({"src_counter_after_refusal": None}, "source guest progress after refusal"),
    ({"retry": None}, "retry of a valid transfer"),
    ({"retry": {"observed": "failed", "message": "x"}}, "retry of a valid transfer"),
    ({"retry": {"observed": "completed", "dst_status_after": "running",
                "src_status_after": "postmigrate", "boots_after": 1, "counter_after": 20,
                "counter_moved_on_dst": False}}, "retry: guest progress"),
])
def test_each_refusal_failure_is_named(change, check):
    assert check in checks(refusal(**change))


def _window(**kw):
    w = {"seconds": 1.0, "observed_s": 1.05, "want": "running", "statuses": {"running": 20},
         "wrong_status": None, "events": [], "resume_seen": True, "death": None,
         "held_s": 0.0, "counter_start": 10, "counter_end": 20, "boots_end": 1}
    w.update(kw)
    return w


def test_a_window_held_by_a_wrapper_that_never_acted_fails():
    # A self-test's tampering target holds the window until its damage is done; a hold
    # still there at the limit means it never acted, and the verdict must not pass.
    assert [c for c in window_checks(_window(), 1) if not c.ok] == []
    held = window_checks(_window(held_s=0.4), 1)
    assert [c.check for c in held if c.check == "hold file released" and c.ok]
    expired = [c for c in window_checks(_window(held_s=30.0, hold_expired="/x/qmp.sock.hold"), 1)
               if not c.ok]
    assert [c.check for c in expired] == ["hold file released"]
    assert "/x/qmp.sock.hold" in str(expired[0].actual) and "never acted" in expired[0].detail


def test_a_retry_that_cannot_exist_is_said_not_failed():
    why = "no valid transfer can follow from this source: it runs pc-q35-11.1, ..."
    r = refusal(retry={"tag": "retry", "observed": "", "not_applicable": why})
    assert failed(judge(r)) == []
    (c,) = [c for c in judge(r) if c.check == "retry of a valid transfer"]
    assert str(c.actual).startswith("not applicable: no valid transfer")
