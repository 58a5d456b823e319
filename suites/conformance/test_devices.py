"""The guest's devices across the live update, measured from the host: its network
(one arrangement of the NIC's back-end each: user networking, a forwarded port, taps,
vhost-net) and its disk with writes in flight (docs/same-arguments.md). A target that
cannot open a back-end the source still holds must refuse it clearly while the source
and its network carry on; a transfer that completes must lose nothing."""
import pytest

from harness.scenario import catalogue

pytestmark = pytest.mark.conformance

DEVICES = [pytest.param(s, id=s.id, marks=[pytest.mark.slow] if s.slow else [])
           for s in catalogue.suite("devices")]


@pytest.mark.parametrize("scenario", DEVICES)
def test_device(cpr_case, scenario):
    cpr_case(scenario)
