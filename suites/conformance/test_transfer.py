"""cpr-transfer cases that must complete: the guest moves, RAM stays, the guest runs on."""
import pytest

from harness.scenario import catalogue

pytestmark = pytest.mark.conformance

# Slow cases carry the mark; conftest skips them unless the run asks for them.
POSITIVE = [pytest.param(s, id=s.id.split("/", 1)[1], marks=[pytest.mark.slow] if s.slow else [])
            for s in catalogue.suite("transfer")]


@pytest.mark.parametrize("scenario", POSITIVE)
def test_transfer(cpr_case, scenario):
    cpr_case(scenario)
