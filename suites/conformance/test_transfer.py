"""cpr-transfer cases that must complete: the guest moves, RAM stays, the guest runs on."""
import pytest

from harness import catalogue

pytestmark = pytest.mark.conformance

SLOW = pytest.mark.skipif(not catalogue.slow_enabled(), reason=catalogue.SLOW_REASON)
POSITIVE = [pytest.param(s, id=s.id.split("/", 1)[1],
                         marks=[pytest.mark.slow, SLOW] if s.slow else [])
            for s in catalogue.suite("transfer")]


@pytest.mark.parametrize("scenario", POSITIVE)
def test_transfer(cpr_case, scenario):
    cpr_case(scenario)
