"""The same arguments plus -incoming: one option a user puts on a QEMU command line at a
time, the same on both sides (or, where a management layer must, the target's own),
judged as works, refused clearly while the source carries on, or breaks silently
(docs/same-arguments.md)."""
import pytest

from harness.scenario import catalogue

pytestmark = pytest.mark.conformance

ARGS = [pytest.param(s, id=s.id.split("/", 1)[1], marks=[pytest.mark.slow] if s.slow else [])
        for s in catalogue.suite("args")]


@pytest.mark.parametrize("scenario", ARGS)
def test_same_arguments(cpr_case, scenario):
    cpr_case(scenario)
