"""Error paths cpr-transfer must refuse: the documented refusal, at the right side,
with QEMU's message; afterwards the source guest still runs, and (where the source's
own set-up is valid) a retried valid transfer from it completes."""
import pytest

from harness.scenario import catalogue

pytestmark = pytest.mark.conformance

REFUSALS = catalogue.suite("refusals")


@pytest.mark.parametrize("scenario", REFUSALS, ids=[s.id for s in REFUSALS])
def test_refusal(cpr_case, scenario):
    cpr_case(scenario)
