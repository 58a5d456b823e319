"""Soak: one guest live-updated hop after hop (A -> B -> C -> ...), the same memory all
the way. The default run does a quick chain; ``CPRH_SOAK_HOPS=50`` (tox -e soak) the
long one. conftest parametrizes the scenario and the run's number of hops."""
import json
import os

import pytest

from harness.run.chain import run_chain

pytestmark = pytest.mark.conformance

#: Anonymous RSS the live QEMU may gain over the whole chain before it counts as a leak.
RSS_SLACK_KIB = 2048


def test_chain_of_live_updates(run_config, case_dir, scenario, soak_hops):
    hops = soak_hops
    c = run_chain(scenario, run_config, case_dir, hops)
    with open(os.path.join(case_dir, "chain.json"), "w") as f:
        json.dump(c.to_dict(), f, indent=2, default=str)
    assert c.failed_hop is None, f"hop {c.failed_hop} of {hops}: {c.failure}"
    assert len(c.hops) == hops
    assert c.pattern.get("ok") is True, c.pattern.get("description")
    inodes = {h["ram_inode"] for h in c.hops}
    assert inodes == {c.ram_inode}, f"the RAM file changed along the chain: {inodes}"
    counters = [h["counter_after"] for h in c.hops]
    assert counters == sorted(counters) and len(set(counters)) == hops, counters
    fds = [h["open_fds"] for h in c.hops]
    assert fds[-1] <= fds[0], f"open fds of the live QEMU grew hop by hop: {fds}"
    rss = [h["rss_anon_kib"] for h in c.hops]
    # Hop 1 is a warm-up (under TCG its QEMU is ~4 MiB smaller: the translation cache
    # fills on its first run); from hop 2 on, a leak shows as growth.
    base = rss[1] if len(rss) > 2 else rss[0]
    assert rss[-1] - base < max(RSS_SLACK_KIB, base // 20), \
        f"anonymous RSS of the live QEMU grew hop by hop (KiB): {rss}"
