"""Self-tests of process life cycle: QEMU logs to its own file, dies with its runner,
and nothing (process, socket, temp dir) is left behind, even after ``kill -9``."""
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from harness.core.errors import VMLaunchFailure, WaitTimeout
from harness.qemu.process import QemuProcess

pytestmark = pytest.mark.selftest

ROOT = Path(__file__).resolve().parents[2]
QEMU = shutil.which("qemu-system-x86_64")
needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not on PATH")
IDLE_ARGS = ["-machine", "none", "-nodefaults", "-display", "none", "-S"]


def wait_until(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def qemu_descendants(pid):
    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    out = []
    for k in kids:
        try:
            if k.name().startswith("qemu-system"):
                out.append(k)
        except psutil.Error:
            pass
    return out


def gone(pids):
    return all(not psutil.pid_exists(p) or psutil.Process(p).status() == psutil.STATUS_ZOMBIE
               for p in pids)


@needs_qemu
def test_qemu_output_goes_to_its_log_not_ours(tmp_path):
    vm = QemuProcess("src", QEMU, IDLE_ARGS, str(tmp_path), str(tmp_path))
    vm.launch()
    try:
        vm.connect_qmp(20.0)
        for fd in (1, 2):
            assert os.readlink(f"/proc/{vm.pid}/fd/{fd}") == vm.log_path
        assert os.readlink(f"/proc/{vm.pid}/fd/0") == "/dev/null"
        # Dies with its parent: PR_SET_PDEATHSIG is SIGKILL (field 'PPid' aside,
        # /proc does not show it; the kill -9 tests below show the effect).
        assert vm.qmp.cmd("query-status")["status"] == "prelaunch"
    finally:
        code = vm.shutdown()
    assert code == 0 and vm.intent == "quit"
    assert vm.shutdown() == 0  # idempotent


def test_missing_binary_is_a_launch_failure(tmp_path):
    vm = QemuProcess("src", str(tmp_path / "no-such-qemu"), [], str(tmp_path), str(tmp_path))
    with pytest.raises(VMLaunchFailure, match="executable not found"):
        vm.launch()


@needs_qemu
def test_bad_arguments_fail_fast_with_the_log(tmp_path):
    vm = QemuProcess("dst", QEMU, IDLE_ARGS + ["-object", "no-such-type,id=x"],
                     str(tmp_path), str(tmp_path))
    vm.launch()
    start = time.monotonic()
    with pytest.raises(VMLaunchFailure) as info:
        vm.connect_qmp(30.0)
    assert time.monotonic() - start < 10, "a dead QEMU must not wait out the timeout"
    assert "no-such-type" in str(info.value) and info.value.exitcode == 1
    assert vm.log_path in str(info.value)
    vm.shutdown()


@needs_qemu
def test_qmp_waits_are_bounded(tmp_path):
    with QemuProcess("src", QEMU, IDLE_ARGS, str(tmp_path), str(tmp_path)) as vm:
        vm.launch()
        qmp = vm.connect_qmp(20.0)
        start = time.monotonic()
        with pytest.raises(WaitTimeout) as info:
            qmp.wait_event("NO_SUCH_EVENT", timeout=0.5)
        assert 0.4 < time.monotonic() - start < 5
        assert info.value.side == "src" and "NO_SUCH_EVENT" in str(info.value)


RUNNER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from harness.core.cleanup import private_tmpdir
    from harness.qemu.process import QemuProcess
    d = private_tmpdir()
    vm = QemuProcess("src", {qemu!r}, {args!r}, d, d)
    vm.launch()
    vm.connect_qmp(20.0)
    print(vm.pid, d, flush=True)
    time.sleep(120)
""")


@needs_qemu
@pytest.mark.parametrize("wrapper", ["direct", "forking-wrapper"])
def test_kill9_of_runner_leaves_nothing(tmp_path, short_base, wrapper):
    qemu = QEMU
    if wrapper == "forking-wrapper":
        # A wrapper that forks instead of exec'ing: PDEATHSIG only reaches the shell,
        # the janitor must still find QEMU through its process group.
        qemu = str(tmp_path / "qemu-wrapper")
        Path(qemu).write_text(f'#!/bin/sh\n"{QEMU}" "$@"\n')
        os.chmod(qemu, 0o755)
    base = short_base
    env = dict(os.environ, CPRH_TMPDIR=str(base))
    runner = subprocess.Popen(
        [sys.executable, "-c", RUNNER.format(root=str(ROOT), qemu=qemu, args=IDLE_ARGS)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    try:
        line = runner.stdout.readline().split()
        assert len(line) == 2, "runner did not start its QEMU"
        workdir = line[1]
        qemus = [p.pid for p in qemu_descendants(runner.pid)]
        assert qemus and os.path.isdir(workdir)
    finally:
        runner.send_signal(signal.SIGKILL)
        runner.wait(10)
    wait_until(lambda: gone(qemus), 15, f"QEMU {qemus} to die with its runner")
    wait_until(lambda: not os.path.exists(workdir), 15, f"{workdir} to be removed")
    assert os.listdir(base) == []


JANITOR_RUNNER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from harness.core.cleanup import janitor, private_tmpdir
    d = private_tmpdir()
    print(janitor().proc.pid, d, flush=True)
    time.sleep(120)
""")


def test_a_janitor_outlives_a_pkill_and_still_cleans_up(short_base):
    """`pkill -f python` reaches the janitor too: it ignores SIGTERM, SIGINT and SIGHUP
    and still removes the runner's temp dir when the runner is killed after it."""
    env = dict(os.environ, CPRH_TMPDIR=str(short_base))
    runner = subprocess.Popen([sys.executable, "-c", JANITOR_RUNNER.format(root=str(ROOT))],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                              text=True)
    try:
        jpid, workdir = runner.stdout.readline().split()

        def ignoring():  # its interpreter has started and set the signals aside
            with open(f"/proc/{jpid}/status") as f:
                mask = int(next(ln for ln in f if ln.startswith("SigIgn:")).split()[1], 16)
            return all(mask >> (s - 1) & 1 for s in (signal.SIGTERM, signal.SIGINT,
                                                     signal.SIGHUP))
        wait_until(ignoring, 15, "the janitor to ignore SIGTERM, SIGINT and SIGHUP")
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            os.kill(int(jpid), sig)
        assert os.path.isdir(workdir)
    finally:
        runner.send_signal(signal.SIGKILL)
        runner.wait(10)
    wait_until(lambda: not os.path.exists(workdir), 15, f"{workdir} to be removed")
    wait_until(lambda: gone([int(jpid)]), 15, "the janitor to exit once done")


@needs_qemu
@pytest.mark.parametrize("jobs", [0, 2], ids=["serial", "xdist-2"])
def test_kill9_of_pytest_mid_case_leaves_nothing(tmp_path, short_base, jobs):
    """The issue's own check: kill -9 the pytest process while a case runs."""
    base = short_base
    env = dict(os.environ, CPRH_TMPDIR=str(base))
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "suites" / "conformance"),
           "-p", "no:cacheprovider", "--reports", str(tmp_path / "reports"), "-q"]
    if jobs:
        cmd += ["-n", str(jobs)]
    proc = subprocess.Popen(cmd, cwd=str(ROOT), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    seen = set()
    try:
        wait_until(lambda: seen.update(p.pid for p in qemu_descendants(proc.pid)) or
                   bool(seen), 60, "a QEMU of the pytest run to start")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    wait_until(lambda: gone(seen), 30, f"QEMU {sorted(seen)} to die after kill -9 of pytest")
    wait_until(lambda: os.listdir(base) == [], 30, f"temp dirs under {base} to be removed")


def sigint_as_at_a_terminal():
    """For a child the test will Ctrl-C: SIGINT at its default, as at a terminal. A
    runner started in the background of a non-interactive shell (`cmd &`, nohup) has it
    ignored, and a Python started so never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_pytest(base, reports, *extra):
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "suites" / "conformance"),
           "-p", "no:cacheprovider", "--reports", str(reports), "-q", *extra]
    return subprocess.Popen(cmd, cwd=str(ROOT), env=dict(os.environ, CPRH_TMPDIR=str(base)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=sigint_as_at_a_terminal)


def all_qemus_seen(proc, seen):
    seen.update(p.pid for p in qemu_descendants(proc.pid))
    return bool(seen)


@needs_qemu
def test_ctrl_c_mid_case_leaves_nothing(tmp_path, short_base):
    proc = start_pytest(short_base, tmp_path / "r")
    seen = set()
    try:
        wait_until(lambda: all_qemus_seen(proc, seen), 60, "a QEMU of the run to start")
        proc.send_signal(signal.SIGINT)
        proc.wait(60)  # pytest stops after the interrupted case's teardown
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 2, f"pytest's exit code for an interrupted run: {proc.returncode}"
    wait_until(lambda: gone(seen), 30, f"QEMU {sorted(seen)} to be gone after Ctrl-C")
    wait_until(lambda: os.listdir(short_base) == [], 30, "temp dirs to be removed")


@needs_qemu
def test_kill9_of_an_xdist_worker_leaves_nothing(tmp_path, short_base):
    proc = start_pytest(short_base, tmp_path / "r", "-n", "2",
                        "--scenario", "transfer/unix-unix-memfd-immediate-q35",
                        "--scenario", "transfer/unix-unix-memfd-defer-q35",
                        "--scenario", "transfer/tcp-unix-memfd-immediate-q35",
                        "--scenario", "transfer/unix-unix-memfd-immediate-pc")
    victim_qemus = set()
    try:
        def worker_with_qemu():
            for q in qemu_descendants(proc.pid):
                try:
                    chain = q.parents()
                except psutil.Error:
                    continue
                workers = [p for p in chain if p.ppid() == proc.pid]
                if workers:
                    victim_qemus.add(q.pid)
                    return workers[0]
            return None

        worker = None
        deadline = time.monotonic() + 120
        while worker is None and time.monotonic() < deadline:
            worker = worker_with_qemu()
            time.sleep(0.02)
        assert worker is not None, "no xdist worker ran a QEMU"
        worker.kill()
        wait_until(lambda: gone(victim_qemus), 30,
                   f"QEMU {sorted(victim_qemus)} to die with its killed worker")
        proc.wait(180)  # the controller carries on with the other worker, then ends
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    wait_until(lambda: os.listdir(short_base) == [], 30, "temp dirs to be removed")
    assert not qemu_descendants(proc.pid)


@needs_qemu
def test_a_failing_case_leaves_nothing(tmp_path, short_base):
    wrapper = tmp_path / "qemu-page"
    tamper = ROOT / "suites" / "selftest" / "broken" / "tamper.py"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{tamper}" page "$@"\n')
    wrapper.chmod(0o755)
    proc = start_pytest(short_base, tmp_path / "r", "--qemu-dst", str(wrapper),
                        "--scenario", "transfer/unix-unix-memfd-immediate-q35")
    seen = set()
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        seen.update(p.pid for p in qemu_descendants(proc.pid))
        time.sleep(0.02)
    assert proc.poll() == 1, "the tampered case must fail"
    wait_until(lambda: gone(seen), 30, "QEMUs of the failed case to be gone")
    assert os.listdir(short_base) == []


PROBER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from harness.qemu.probe import clear_probe_cache, probe
    print("ready", flush=True)
    while True:  # probe again and again: the kill lands mid-probe
        clear_probe_cache()
        probe({qemu!r})
""")


@needs_qemu
def test_kill9_of_a_runner_mid_probe_leaves_no_qemu(short_base):
    """Probe QEMUs get the same guard as the pairs': a probe QEMU (-S, its monitor on
    probe.qmp) whose runner died would otherwise stay, paused, forever."""
    runner = subprocess.Popen([sys.executable, "-c", PROBER.format(root=str(ROOT), qemu=QEMU)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                              env=dict(os.environ, CPRH_TMPDIR=str(short_base)))
    seen = set()
    try:
        assert runner.stdout.readline().strip() == "ready"

        def probe_qemu_running():
            for q in qemu_descendants(runner.pid):
                try:
                    if "probe.qmp" in " ".join(q.cmdline()):
                        seen.add(q.pid)
                except psutil.Error:
                    pass
            return bool(seen)

        wait_until(probe_qemu_running, 60, "a probe QEMU (-qmp unix:.../probe.qmp) to run")
    finally:
        runner.kill()
        runner.wait(10)
    wait_until(lambda: gone(seen), 30, f"probe QEMU {sorted(seen)} to die with its runner")


def test_a_qemu_that_cannot_find_its_firmware_is_told_the_fix(tmp_path):
    """A build tree run in place (or a private root without its -L) cannot load its
    BIOS: the launch failure names the fix, not just the exit code."""
    fake = tmp_path / "qemu-build-tree"
    fake.write_text("#!/bin/sh\necho \"qemu-system-x86_64: could not load PC BIOS "
                    "'bios-256k.bin'\" >&2\nexit 1\n")
    fake.chmod(0o755)
    vm = QemuProcess("src", str(fake), [], str(tmp_path), str(tmp_path))
    vm.launch()
    with pytest.raises(VMLaunchFailure) as info:
        vm.connect_qmp(10.0)
    assert "cannot find its firmware" in str(info.value) and "-L" in str(info.value)
    assert "docs/qemu-builds.md" in info.value.hint
    vm.shutdown()


def test_reserved_huge_pages_go_back_when_the_runner_is_killed(short_base):
    """As root a case reserves the huge pages it needs; a kill -9 of its runner must not
    leave them reserved (the janitor gives them back)."""
    if os.geteuid() != 0:
        pytest.skip("only root can reserve huge pages")
    # 1 GiB pages: no case uses them, so no xdist neighbour changes the count meanwhile.
    path = Path("/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages")
    if not path.exists():
        pytest.skip("no 1 GiB huge pages in this kernel")
    before = int(path.read_text())
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from harness.core.errors import Unsupported
        from harness.core.cleanup import reserved_hugepages as reserved
        try:
            with reserved({before} + 1, size_kb=1048576):
                print("reserved", flush=True)
                time.sleep(60)
        except Unsupported as exc:
            print("unsupported", exc, flush=True)
    """)
    runner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True,
                              env=dict(os.environ, CPRH_TMPDIR=str(short_base)))
    try:
        line = runner.stdout.readline().strip()
        if line.startswith("unsupported"):
            pytest.skip(f"the kernel could not make a 1 GiB huge page: {line}")
        assert line == "reserved"
        assert int(path.read_text()) > before
    finally:
        runner.kill()
        runner.wait(10)
    wait_until(lambda: int(path.read_text()) == before, 15, "the huge pages to be given back")


@needs_qemu
def test_a_qemu_killed_by_a_core_signal_gets_a_backtrace(tmp_path):
    """A QEMU that dies by SIGABRT (as an assert would kill it) leaves a core in its
    working directory; the diagnosis names the signal, says whether the binary has debug
    symbols, writes gdb's backtrace and removes the core."""
    from harness.qemu.crash import diagnose

    if shutil.which("gdb") is None:
        pytest.skip("gdb is not installed (scripts/setup-host.sh installs it)")
    pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
    if pattern.startswith("|") and "systemd-coredump" not in pattern:
        pytest.skip(f"cores go to a program here ({pattern.split()[0]})")
    work = tmp_path / "work"
    work.mkdir()
    vm = QemuProcess("src", QEMU, IDLE_ARGS, str(work), str(tmp_path))
    vm.launch()
    try:
        vm.connect_qmp(20.0)
        assert vm.exe and os.path.basename(vm.exe).startswith("qemu-system")
        os.kill(vm.pid, signal.SIGABRT)
        code = vm.wait_exit(30.0)
    finally:
        vm.shutdown()
    assert code == -signal.SIGABRT
    out = tmp_path / "src.backtrace.txt"
    crash = diagnose("src", vm.pid, code, vm.exe, vm.core_dir, str(out))
    assert crash is not None and crash.signal == "SIGABRT"
    assert crash.backtrace_path == str(out), crash.note
    text = out.read_text()
    assert text.startswith("# src QEMU killed by SIGABRT; binary " + vm.exe)
    assert "debug symbols" in text.splitlines()[1]
    # Wherever the signal found it, the crashing thread has a stack of named frames.
    assert crash.frames and all(crash.frames), crash.frames
    assert "=== crashing thread ===" in text and "Thread" in text
    assert not [n for n in os.listdir(work) if n.startswith("core")], "the core is removed"


def test_a_clean_exit_or_sigkill_is_no_crash(tmp_path):
    from harness.qemu.crash import diagnose

    for code in (0, 1, -signal.SIGKILL, -signal.SIGTERM, None):
        assert diagnose("dst", 1, code, "/bin/true", str(tmp_path), str(tmp_path / "x")) is None
