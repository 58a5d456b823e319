"""The run's config: one table of options, resolved once (given, else CPRH_* env, else
default), with a clear error naming the option or variable for a bad value."""
import pytest

from harness.core.errors import UsageError
from harness.run import config
from harness.run.config import DEFAULT_BUDGETS, RunConfig, resolve

pytestmark = pytest.mark.selftest


def test_given_beats_env_beats_default():
    env = {"CPRH_ACCEL": "tcg", "CPRH_OBSERVE_S": "3", "CPRH_SOAK_HOPS": "7"}
    cfg = resolve({"accel": "kvm"}, env)
    assert cfg.accel == "kvm" and cfg.observe_s == 3.0 and cfg.soak_hops == 7
    assert resolve({}, {}).observe_s == config.DEFAULT_OBSERVE_S
    assert resolve({}, {"CPRH_SLOW": "1"}).slow is True
    assert resolve({}, {"CPRH_SLOW": "0"}).slow is False


@pytest.mark.parametrize("given,env,needle", [
    ({"accel": "hvf"}, {}, "--accel: 'hvf' is not valid: expected one of auto, kvm, tcg"),
    ({}, {"CPRH_OBSERVE_S": "0.1"}, "CPRH_OBSERVE_S: '0.1' is not valid: expected a number"),
    ({"max_pause_ms": "fast"}, {}, "--max-pause-ms: 'fast' is not valid"),
    ({"soak_hops": "0"}, {}, "--soak-hops: '0' is not valid"),
    ({"nope": 1}, {}, "unknown run option"),
])
def test_bad_values_name_the_option(given, env, needle):
    with pytest.raises(UsageError) as info:
        resolve(given, env)
    assert needle in str(info.value)


def test_the_pause_budget_is_the_runs_else_the_scenarios_else_the_default():
    assert RunConfig().budgets("kvm") == DEFAULT_BUDGETS["kvm"]
    assert RunConfig().budgets("tcg") == DEFAULT_BUDGETS["tcg"]
    assert RunConfig().budgets("kvm", 900.0).max_pause_ms == 900.0
    assert RunConfig(max_pause_ms=50.0).budgets("kvm", 900.0).max_pause_ms == 50.0
    b = RunConfig(stall_floor_ms=20.0, max_stutter=0.1).budgets("tcg")
    assert (b.stall_floor_ms, b.max_stutter, b.stall_factor) == \
        (20.0, 0.1, DEFAULT_BUDGETS["tcg"].stall_factor)


def test_every_adapter_declares_the_same_options():
    """conftest, the command line and avocado all take their options from OPTIONS."""
    import argparse

    from harness.cli import build_parser

    run = next(a for a in build_parser()._subparsers._group_actions[0].choices.items()
               if a[0] == "run")[1]
    flags = {s for a in run._actions for s in a.option_strings}
    assert {o.flag for o in config.OPTIONS} <= flags
    p = argparse.ArgumentParser()
    config.argparse_options(p)
    ns = p.parse_args(["--observe", "2", "--slow"])
    cfg = config.from_namespace(ns)
    assert cfg.observe_s == 2.0 and cfg.slow is True
    values = config.option_values(cfg)
    assert set(values) == {o.name for o in config.OPTIONS}
