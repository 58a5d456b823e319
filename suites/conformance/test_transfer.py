"""cpr-transfer cases that must complete: the guest moves, RAM stays, the guest runs on."""
import pytest

from harness import catalogue

pytestmark = pytest.mark.conformance

POSITIVE = catalogue.select(positive=True)


@pytest.mark.parametrize("scenario", POSITIVE, ids=[s.id.split("/", 1)[1] for s in POSITIVE])
def test_transfer(cpr_case, scenario):
    cpr_case(scenario)
