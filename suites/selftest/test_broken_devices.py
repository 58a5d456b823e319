"""The device checks are strong enough: a target that breaks the guest's network or disk
after the switch-over fails the check named for it; a healthy pair passes them; and a
runner killed with ``kill -9`` in the middle of a network case leaves nothing behind
(QEMU, the case's network namespace with its taps, the temp dirs with the disk image).

The broken targets are wrappers around the real QEMU (suites/selftest/broken/devices.py),
used only here, never as a conformance subject. They act after the RESUME on a monitor
of their own and hold the observation window open until the damage is done, so no
result depends on who wins a race. The Linux guest boots under TCG (a minute or more on
a loaded host): those cases are slow (--slow, CPRH_SLOW=1).
"""
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from harness.core import netns
from harness.core.errors import ConformanceFailure
from harness.run.config import RunConfig
from harness.run.driver import run_scenario
from harness.run.verdict import failed, judge
from harness.scenario import catalogue

ROOT = Path(__file__).resolve().parents[2]
WRAPPER = Path(__file__).resolve().parent / "broken" / "devices.py"
REASON = netns.unsupported_reason(tap=True)
QEMU = shutil.which("qemu-system-x86_64")

pytestmark = [pytest.mark.selftest,
              pytest.mark.skipif(QEMU is None or REASON is not None,
                                 reason=REASON or "qemu-system-x86_64 not on PATH")]


def _module():
    sys.path.insert(0, str(WRAPPER.parent))  # it imports tamper.py beside it
    try:
        spec = importlib.util.spec_from_file_location("cprh_broken_devices", WRAPPER)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(WRAPPER.parent))
    return mod


#: mode -> (the check that must fail, words its message must hold), from the wrapper.
DEFECTS = _module().DEFECTS
#: The scenario each mode breaks.
CASES = {"link-down": "net/tap-bridge", "disk-write": "disk/io-in-flight"}


def wrapper(tmp_path, mode):
    path = tmp_path / f"qemu-{mode}"
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{WRAPPER}" {mode} "$@"\n')
    path.chmod(0o755)
    return str(path)


def text_of(check):
    return f"{check.expected} {check.observed} {check.detail}"


def device_checks(checks):
    return {c.id: c for c in checks if c.id.split(".")[0] in ("net", "disk")}


@pytest.mark.slow
@pytest.mark.parametrize("mode", sorted(DEFECTS))
def test_a_broken_device_fails_its_named_check(tmp_path, mode):
    sc = catalogue.get(CASES[mode])
    r = run_scenario(sc, RunConfig(qemu_dst=wrapper(tmp_path, mode)), str(tmp_path / "a"))
    bad = {c.id: c for c in failed(judge(r))}
    name, words = DEFECTS[mode]
    assert name in bad, (mode, {k: text_of(v) for k, v in bad.items()})
    for w in words:
        assert w in text_of(bad[name]), (mode, text_of(bad[name]))
    assert "window.hold" not in bad  # the wrapper acted
    assert f"[{name}]" in str(ConformanceFailure(sc.id, list(bad.values())))


@pytest.mark.slow
def test_healthy_devices_pass(tmp_path):
    """The control: the same wrapper, acting on nothing, on a bridge with the disk
    written too: every network and disk check is made and passes."""
    sc = catalogue.get("net/tap-bridge").with_(disk=True)
    r = run_scenario(sc, RunConfig(qemu_dst=wrapper(tmp_path, "none")), str(tmp_path / "a"))
    checks = device_checks(judge(r))
    assert set(checks) == {"net.stream", "net.tcp", "disk.intact", "disk.locks"}, checks
    assert all(c.ok for c in checks.values()), {k: text_of(v) for k, v in checks.items()}


def _inside_a_namespace(pid):
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return False


def _qemus(pid):
    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    out = []
    for k in kids:
        try:
            if k.name().startswith("qemu-system"):
                out.append(k.pid)
        except psutil.Error:
            pass
    return out


def alive(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def wait_until(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_kill9_of_the_runner_mid_network_case_leaves_nothing(tmp_path, short_base):
    """pytest runs net/tap-bridge; once its source QEMU runs inside the case's namespace,
    pytest gets SIGKILL: the janitor kills QEMU, deletes the namespace (its taps and
    bridge go with it) and removes the temp dirs (the guest's disk image among them)."""
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "suites" / "conformance"),
           "-p", "no:cacheprovider", "-p", "no:xdist", "--reports", str(tmp_path / "r"),
           "-q", "--scenario", "net/tap-bridge", "--slow"]
    proc = subprocess.Popen(cmd, cwd=str(ROOT), env=dict(os.environ, CPRH_TMPDIR=str(short_base)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    mine = f"{netns.PREFIX}net-{proc.pid}-"
    seen = set()
    try:
        wait_until(lambda: seen.update(p for p in _qemus(proc.pid) if _inside_a_namespace(p))
                   or bool(seen), 120, "the case's QEMU to run inside its namespace")
        assert [n for n in netns.leftovers() if n.startswith(mine)], netns.leftovers()
        assert os.listdir(short_base), "the case's temp dirs"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    wait_until(lambda: not any(alive(p) for p in seen), 30,
               f"QEMU {sorted(seen)} to die after kill -9 of pytest")
    wait_until(lambda: not [n for n in netns.leftovers() if n.startswith(mine)], 30,
               f"the namespace {mine}* to be deleted")
    wait_until(lambda: os.listdir(short_base) == [], 30,
               f"temp dirs under {short_base} to be removed")
