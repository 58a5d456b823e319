"""Self-tests of bad input: one clear line and a non-zero exit, never a traceback."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.scenario import catalogue

pytestmark = pytest.mark.selftest
ROOT = Path(__file__).resolve().parents[2]


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=str(ROOT),
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, **(env or {})))


def assert_clean_error(p, *needles):
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr + p.stdout
    for n in needles:
        assert n in p.stderr, p.stderr


def test_probe_missing_binary():
    assert_clean_error(cli("probe", "--qemu", "/no/such/qemu"), "not found")


def test_probe_not_qemu():
    assert_clean_error(cli("probe", "--qemu", "/bin/true"), "does not behave like QEMU")


def test_run_unknown_scenario():
    assert_clean_error(cli("run", "--scenario", "transfer/nope"), "unknown scenario id")


def test_run_bad_accel():
    assert_clean_error(cli("run", "--accel", "hvf"), "--accel", "expected one of auto, kvm, tcg")


def test_run_missing_qemu():
    assert_clean_error(cli("run", "--qemu-dst", "/no/such/qemu"), "not found")


def test_pytest_bad_option_values():
    for args, needle in ((["--accel", "foo"], "--accel"),
                         (["--scenario", "nope"], "unknown scenario id"),
                         (["--qemu-src", "/no/such/qemu"], "not found")):
        p = subprocess.run([sys.executable, "-m", "pytest", "suites/conformance", "-q",
                            "-p", "no:cacheprovider", *args], cwd=str(ROOT),
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 4, (args, p.stdout, p.stderr)
        assert needle in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_list_names_every_scenario():
    p = cli("list")
    assert p.returncode == 0
    listed = {line.split()[0] for line in p.stdout.splitlines()}
    assert listed == set(catalogue.SCENARIOS) | {"soak/chain"}


def test_catalogue_ids_are_unique_and_readable():
    for sid, sc in catalogue.SCENARIOS.items():
        assert sid == sc.id and "/" in sid and " " not in sid
        assert sc.area == sid.split("/")[0]


def test_plan_unknown_scenario():
    assert_clean_error(cli("plan", "transfer/nope"), "unknown scenario id")


def test_plan_renders_both_dialects():
    for d, needle in (("released-10x", '"channel-type": "cpr"'), ("rfc-v1", "-cpr-uri")):
        p = cli("plan", "transfer/unix-unix-memfd-immediate-q35", "--dialect", d)
        assert p.returncode == 0 and needle in p.stdout, p.stdout


def test_sizes_bad_value():
    assert_clean_error(cli("sizes", "--sizes", "12K"), "bad RAM size")


def test_run_bad_dialect():
    assert_clean_error(cli("run", "--dialect", "rfc-v9"), "--dialect", "expected one of")
