"""cpr-transfer cases that must complete: the guest moves, RAM stays, the guest runs on."""
import os

import pytest

from harness import catalogue

pytestmark = pytest.mark.conformance

SLOW = pytest.mark.skipif(not os.environ.get("CPRH_SLOW"),
                          reason="a slow case: set CPRH_SLOW=1 (tox -e nightly) to run it")
POSITIVE = [pytest.param(s, id=s.id.split("/", 1)[1],
                         marks=[pytest.mark.slow, SLOW] if s.slow else [])
            for s in catalogue.select(positive=True)]


@pytest.mark.parametrize("scenario", POSITIVE)
def test_transfer(cpr_case, scenario):
    cpr_case(scenario)
