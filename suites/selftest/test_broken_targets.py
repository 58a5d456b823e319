"""The checks are strong enough: broken targets fail, each with a message saying how.

These run real QEMU pairs. The broken targets are wrappers around the real QEMU
(suites/selftest/broken/tamper.py), used only here, never as a conformance subject.
"""
import shutil
import sys
from pathlib import Path

import pytest

from harness.core.errors import ConformanceFailure
from harness.evidence.memory import open_ram
from harness.run.config import RunConfig
from harness.run.driver import Hooks, run_scenario
from harness.run.verdict import failed, judge
from harness.scenario import catalogue

pytestmark = [pytest.mark.selftest,
              pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                                 reason="qemu-system-x86_64 not on PATH")]

TAMPER = Path(__file__).resolve().parent / "broken" / "tamper.py"
BASE = catalogue.get("transfer/unix-unix-memfd-immediate-q35")


def wrapper(tmp_path, mode):
    path = tmp_path / f"qemu-{mode}"
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{TAMPER}" {mode} "$@"\n')
    path.chmod(0o755)
    return str(path)


def failed_checks(result):
    return {m.check: m for m in failed(judge(result))}


def test_harness_corrupting_one_page_fails_and_names_it(tmp_path):
    gpa = 0x1234000

    def corrupt(ramfd):
        with open_ram(ramfd, writable=True, machine="q35") as g:
            g.write_u32(gpa + 8, g.read_u32(gpa + 8) ^ 1)

    r = run_scenario(BASE, RunConfig(), str(tmp_path / "a"), hooks=Hooks(before_verify=corrupt))
    bad = failed_checks(r)
    assert list(bad) == ["RAM pattern intact"], bad
    msg = str(ConformanceFailure(BASE.id, list(bad.values())))
    assert "1 page(s) changed" in msg and "0x1234000" in msg, msg


def test_a_target_that_leaves_the_guest_paused_fails(tmp_path):
    r = run_scenario(BASE, RunConfig(qemu_dst=wrapper(tmp_path, "paused")), str(tmp_path / "a"))
    bad = failed_checks(r)
    assert "target run state" in bad and bad["target run state"].actual == "paused", bad
    assert "guest progress" in bad, bad


def test_a_target_that_resets_the_guest_fails(tmp_path):
    r = run_scenario(BASE, RunConfig(qemu_dst=wrapper(tmp_path, "reset")), str(tmp_path / "a"))
    bad = failed_checks(r)
    assert "guest reset" in bad or "guest counter never went back" in bad, bad
    assert "RAM pattern intact" not in bad, "a reset of this guest must not touch RAM"


def test_a_target_that_changes_one_page_fails_and_names_it(tmp_path):
    r = run_scenario(BASE, RunConfig(qemu_dst=wrapper(tmp_path, "page")), str(tmp_path / "a"))
    bad = failed_checks(r)
    assert list(bad) == ["RAM pattern intact"], bad
    assert "0x200000" in str(bad["RAM pattern intact"].actual)


def test_an_unbroken_wrapper_passes(tmp_path):
    """Control: the wrapper itself (no tampering mode) does not break anything."""
    r = run_scenario(BASE, RunConfig(qemu_dst=wrapper(tmp_path, "none")), str(tmp_path / "a"))
    assert failed(judge(r)) == []
