"""Soak: one guest live-updated hop after hop (A -> B -> C -> ...), the same memory all
the way, each hop watched for the observation window. The default run does a quick
chain; ``CPRH_SOAK_HOPS=50`` (tox -e soak) the long one. conftest parametrizes the
scenario and the run's number of hops; the checks are harness.run.verdict.judge_chain."""
import pytest

pytestmark = pytest.mark.conformance


def test_chain_of_live_updates(cpr_chain, scenario, soak_hops):
    cpr_chain(scenario, soak_hops)
