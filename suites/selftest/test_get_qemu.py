"""Self-tests of scripts/get-qemu.sh: bad usage, unknown versions, the installed 10.0.2,
and the cache (a second call for a fetched version answers from the cache, offline, and
prints the same path). The source route (10.2.2, ~11 min of compiling) is not exercised
here.

The 11.1.3 fetch (binary route, ~15-25 s and ~40 MB from Debian's archive the first time)
happens once per session in the cache the script uses by default, or CPRH_QEMU_CACHE;
without network those tests skip with the script's own one-line reason.
"""
import fcntl
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.selftest
ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "get-qemu.sh"
PREFIX = "get-qemu: "


def get_qemu(*args, timeout=120, env=None):
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=str(ROOT), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                          env=dict(os.environ, **(env or {})))


def stderr_lines(p):
    return [line for line in p.stderr.splitlines() if line.strip()]


def reason(p):
    """The script's one-line reason (its last stderr line)."""
    lines = stderr_lines(p)
    return lines[-1] if lines else f"exit {p.returncode}, no message"


def assert_one_line_error(p, code, *needles):
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    assert p.stdout == "", p.stdout
    lines = stderr_lines(p)
    assert lines and all(line.startswith(PREFIX) for line in lines), p.stderr
    for n in needles:
        assert n in lines[-1], p.stderr
    for bad in ("Traceback", "syntax error", "command not found", "unbound variable"):
        assert bad not in p.stderr, p.stderr


def test_no_args_is_a_usage_error():
    p = get_qemu(timeout=30)
    assert_one_line_error(p, 2, "usage:")
    assert len(stderr_lines(p)) == 1, p.stderr


def test_help_prints_usage():
    p = get_qemu("--help", timeout=30)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.startswith(PREFIX + "usage:"), p.stderr


@pytest.mark.parametrize("args", [("abc",), ("11.1",), ("11.1.3", "--arch", "riscv64"),
                                  ("11.1.3", "--frobnicate"), ("11.1.3", "10.2.2")])
def test_bad_input_exits_2_with_one_line(args):
    p = get_qemu(*args, timeout=30)
    assert_one_line_error(p, 2)
    assert len(stderr_lines(p)) == 1, p.stderr


def test_cache_inside_the_repository_is_refused(tmp_path):
    inside = ROOT / "qemu-cache-selftest"
    p = get_qemu("11.1.3", env={"CPRH_QEMU_CACHE": str(inside)}, timeout=30)
    assert_one_line_error(p, 1, "inside the repository")
    assert not inside.exists()


def test_installed_10_0_2():
    system = Path("/usr/bin/qemu-system-x86_64")
    p = get_qemu("10.0.2", timeout=60)
    installed = ""
    if system.exists():
        installed = subprocess.run([str(system), "--version"], capture_output=True, text=True,
                                   timeout=30).stdout
    if "version 10.0.2" in installed:
        assert p.returncode == 0, p.stderr
        assert p.stdout == f"{system}\n"
    else:  # not installed, or another version: it says so and names the set-up script
        assert_one_line_error(p, 1, "scripts/setup-host.sh")


def test_unknown_version_names_what_the_archive_has():
    p = get_qemu("9.9.9", timeout=300)
    if p.returncode == 1 and "cannot reach" in reason(p):
        pytest.skip(reason(p))
    assert_one_line_error(p, 1, "no QEMU 9.9.9 in Debian's archive", "binaries:", "sources:")
    assert "11.1.3" in reason(p), reason(p)


def test_fetched_version_is_runnable(qemu_11_1_3):
    assert os.access(qemu_11_1_3, os.X_OK)
    assert not qemu_11_1_3.startswith(str(ROOT) + os.sep)
    out = subprocess.run([qemu_11_1_3, "--version"], capture_output=True, text=True, timeout=30)
    assert out.stdout.startswith("QEMU emulator version 11.1.3"), out.stdout + out.stderr


def _cache_dir():
    env = os.environ
    return Path(env.get("CPRH_QEMU_CACHE") or Path(
        env.get("XDG_CACHE_HOME") or Path(env["HOME"]) / ".cache") / "cpr-harness" / "qemu")


def test_second_call_answers_from_the_cache_and_prints_the_same_path(qemu_11_1_3):
    # Answered from the cache, it never reaches the fetch: with the fetch's lock held
    # here, a call that went past the cache would say it waits for it and block.
    lock = _cache_dir().resolve() / "locks" / "11.1.3-x86_64.lock"
    assert lock.parent.is_dir(), lock
    with open(lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        p = get_qemu("11.1.3", timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout == qemu_11_1_3 + "\n"
    assert p.stderr == "", p.stderr


def test_second_call_works_offline(qemu_11_1_3):
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare for a network namespace with no network")
    p = subprocess.run(["unshare", "-n", "bash", str(SCRIPT), "11.1.3"], capture_output=True,
                       text=True, timeout=60, stdin=subprocess.DEVNULL, cwd=str(ROOT))
    if p.returncode != 0 and "unshare" in p.stderr:
        pytest.skip(f"unshare -n does not work here: {p.stderr.strip()[:200]}")
    assert p.returncode == 0, p.stderr
    assert p.stdout == qemu_11_1_3 + "\n"


def test_wrapper_execs_qemu_in_place(qemu_11_1_3):
    """The wrapper keeps its PID: the process it starts becomes QEMU itself."""
    proc = subprocess.Popen([qemu_11_1_3, "-machine", "none", "-nodefaults", "-display", "none",
                             "-qmp", "stdio"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        exe, deadline = "", time.monotonic() + 15
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                exe = os.readlink(f"/proc/{proc.pid}/exe")
            except OSError:
                exe = ""
            if os.path.basename(exe) == "qemu-system-x86_64":
                break
            time.sleep(0.02)
        assert os.path.basename(exe) == "qemu-system-x86_64", exe
        out, _ = proc.communicate('{"execute":"qmp_capabilities"}\n{"execute":"query-version"}\n'
                                  '{"execute":"quit"}\n', timeout=30)
        versions = [json.loads(line)["return"]["qemu"] for line in out.splitlines()
                    if '"return"' in line and '"qemu"' in line]
        assert versions == [{"major": 11, "minor": 1, "micro": 3}], out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
