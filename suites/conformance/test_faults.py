"""Faults at each stage of the cpr-transfer handshake: nothing hangs, the source guest
(where it lives) carries on with its RAM intact, and a fresh target then completes."""
import pytest

from harness.scenario import catalogue

pytestmark = pytest.mark.conformance

FAULTS = catalogue.suite("faults")


@pytest.mark.parametrize("scenario", FAULTS, ids=[s.id for s in FAULTS])
def test_fault(cpr_case, scenario):
    cpr_case(scenario)
