"""``python -m harness repro``: the standalone reproducer for upstream bug reports.

The generated script imports nothing but the standard library and runs under the
*system* python3 (not the venv), from a directory outside the repository; it reproduces
the fd main-channel segfault, a completed transfer (immediate and defer) and a refusal,
and leaves no QEMU and no temp dir behind, after Ctrl-C too.
"""
import ast
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.tools import repro

pytestmark = pytest.mark.selftest

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"
QEMU = shutil.which("qemu-system-x86_64")
FD_CASE = "transfer/fd-unix-memfd-immediate-q35"
needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")
needs_system_python = pytest.mark.skipif(
    not os.access(SYSTEM_PYTHON, os.X_OK), reason=f"no system python at {SYSTEM_PYTHON}")


def generate(tmp_path: Path, sid: str, *extra: str) -> Path:
    out = tmp_path / (sid.replace("/", "_") + ".py")
    p = subprocess.run([sys.executable, "-m", "harness.tools.repro", sid, "-o", str(out),
                        *extra], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"wrote {out}") and p.stdout.count("\n") == 1, p.stdout
    assert os.stat(out).st_mode & stat.S_IXUSR
    return out


def clean_env(**extra: str) -> dict:
    """No venv, no PYTHONPATH: the script must not find the harness even by accident."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if ".venv" not in p)
    env.update(extra)
    return env


def processes_mentioning(text: str) -> list:
    hits = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmd:
            hits.append(pid + ": " + cmd.replace(b"\0", b" ").decode(errors="replace")[:200])
    return hits


def assert_cleaned_up(out: str) -> None:
    """The script's temp dir is gone and no process (QEMU or wrapper) names it."""
    m = re.search(r"workdir: (/tmp/cprr-\S+),", out)
    assert m, out
    wd = m.group(1)
    assert not os.path.exists(wd), f"{wd} left behind"
    deadline = time.monotonic() + 3
    while processes_mentioning(wd) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not processes_mentioning(wd), processes_mentioning(wd)


def run_script(path: Path, via: str = SYSTEM_PYTHON, **env: str):
    p = subprocess.run([via, str(path)], cwd=str(path.parent), capture_output=True, text=True,
                       timeout=120, stdin=subprocess.DEVNULL, env=clean_env(**env))
    out = p.stdout + p.stderr
    assert "Traceback" not in out, out
    return p.returncode, out


# -- generation ---------------------------------------------------------------------------

def test_unknown_id_is_one_line_and_exit_2(tmp_path):
    out = tmp_path / "r.py"
    p = subprocess.run([sys.executable, "-m", "harness.tools.repro", "no/such-case", "-o",
                        str(out)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert p.stderr.startswith("cpr-harness repro: error: unknown scenario id 'no/such-case'")
    assert p.stderr.count("\n") == 1 and p.stdout == ""
    assert not out.exists()


@pytest.mark.parametrize("sid", ["transfer/unix-unix-memfd-immediate-q35-linux",
                                 "fault/dst-killed-during-main",
                                 "transfer/cpr-exec-file-memfd-immediate-q35"])
def test_what_it_cannot_reproduce_is_one_line(sid, tmp_path, capsys):
    assert repro.main([sid, "-o", str(tmp_path / "r.py")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cpr-harness repro: error: repro reproduces cpr-transfer scenarios")
    assert err.count("\n") == 1 and not (tmp_path / "r.py").exists()


def test_parses_exactly_its_options(capsys):
    with pytest.raises(SystemExit) as exc:
        repro.main(["--help"])
    assert exc.value.code == 0
    usage = capsys.readouterr().out
    assert usage.startswith("usage: python -m harness repro")
    for opt in ("-o FILE", "--qemu-src P", "--qemu-dst P", "--accel {kvm,tcg}"):
        assert opt in usage


@needs_qemu
@pytest.mark.parametrize("sid", [FD_CASE, "transfer/fd-unix-memfd-defer-q35",
                                 "transfer/unix-fd-memfd-immediate-q35",
                                 "transfer/exec-unix-memfd-immediate-q35",
                                 "transfer/tcp-unix-memfd-defer-q35",
                                 "transfer/unix-unix-file-shm-immediate-q35",
                                 "channel/cpr-missing"])
def test_the_script_imports_only_the_standard_library(sid, tmp_path):
    path = generate(tmp_path, sid)
    text = path.read_text()
    tree = ast.parse(text, str(path))
    mods = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "a relative import"
            mods.add(node.module.split(".")[0])
    assert mods and mods <= set(sys.stdlib_module_names), mods - set(sys.stdlib_module_names)
    assert "harness" not in mods
    # The header says what it reproduces and how to run it; bash runs it too.
    head = text.split('""":"')[0]
    assert text.startswith("#!/usr/bin/env python3\n")
    assert f"scenario {sid}" in head and "Expected" in head and f"bash {path.name}" in head
    assert 'exec python3 "$0" "$@"' in text
    # fd numbers and paths are the script's own at run time, never the generator's.
    assert "/tmp/cprh-repro-" not in text and "cprh-PLAN" not in text
    if sid.split("/")[1].startswith("fd-"):
        assert "{MAIN_FD}" in text and "getfd" in text


# -- live runs (system python, outside the repository) ----------------------------------

@needs_qemu
@needs_system_python
def test_fd_main_channel_segfault_reproduces(tmp_path):
    rc, out = run_script(generate(tmp_path, FD_CASE))
    assert rc == 1, out
    assert "observed:  src-crashed: the source QEMU was killed by signal 11 (SIGSEGV)" in out
    assert "source QEMU (pid" in out and ") was killed by signal 11 (SIGSEGV)" in out
    # The harness's order: the target first, ready, then getfd (fd attached), then migrate.
    order = [out.index(s) for s in ("dst: launch (passing fds", "dst: ready",
                                    '"getfd", "arguments": {"fdname": "migmain"}}   [fd',
                                    'src -> {"execute": "migrate"')]
    assert order == sorted(order), out
    assert_cleaned_up(out)


@needs_qemu
@needs_system_python
def test_fd_main_channel_segfault_reproduces_on_11_1_3(tmp_path, qemu_11_1_3):
    path = generate(tmp_path, FD_CASE, "--qemu-src", qemu_11_1_3, "--qemu-dst", qemu_11_1_3)
    assert "11.1.3" in path.read_text().split('""":"')[0]
    rc, out = run_script(path)
    assert rc == 1, out
    assert "QEMU emulator version 11.1.3" in out and "-run-with exit-with-parent=on" in out
    assert "observed:  src-crashed: the source QEMU was killed by signal 11 (SIGSEGV)" in out
    assert_cleaned_up(out)


@needs_qemu
@needs_system_python
def test_a_healthy_transfer_completes(tmp_path):
    rc, out = run_script(generate(tmp_path, "transfer/unix-unix-memfd-immediate-q35"))
    assert rc == 0, out
    assert "observed:  completed: the source is postmigrate, the target running" in out
    assert '"status": "completed"' in out and "dst: guest counter" in out
    assert_cleaned_up(out)


@needs_qemu
@needs_system_python
def test_defer_sends_migrate_incoming_to_the_target_after_migrate(tmp_path):
    rc, out = run_script(generate(tmp_path, "transfer/unix-unix-memfd-defer-q35"))
    assert rc == 0, out
    assert "-incoming defer" in out and "observed:  completed" in out
    assert out.index('src -> {"execute": "migrate"') < \
        out.index('dst -> {"execute": "migrate-incoming"')
    assert_cleaned_up(out)


@needs_qemu
def test_a_refusal_is_reported_cleanly_under_bash(tmp_path):
    rc, out = run_script(generate(tmp_path, "channel/cpr-missing"), via="bash")
    assert rc == 1, out
    assert "observed:  src-refused: migrate: missing 'cpr' migration channel" in out
    assert '"error": {"class": "GenericError"' in out
    assert_cleaned_up(out)


@needs_qemu
@needs_system_python
def test_a_missing_qemu_is_exit_2(tmp_path):
    rc, out = run_script(generate(tmp_path, FD_CASE), QEMU_SRC="/nonexistent/qemu")
    assert rc == 2, out
    assert "observed:  cannot-run: src QEMU '/nonexistent/qemu' not found" in out
    assert "workdir:" not in out


@needs_qemu
@needs_system_python
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_it_still_kills_both_and_removes_its_dir(sig, code, tmp_path):
    """A target wrapper that hangs before exec'ing QEMU: the script is signalled while
    it waits for the target; it reports, kills the wrapper's group and cleans up."""
    wrapper = tmp_path / "slow-qemu"
    wrapper.write_text(f'#!/bin/sh\ncase "$*" in *-incoming*) sleep 60;; esac\n'
                       f'exec {QEMU} "$@"\n')
    wrapper.chmod(0o755)
    path = generate(tmp_path, "transfer/unix-unix-memfd-immediate-q35")
    # SIGINT at its default, as at a terminal (a runner in the background of a
    # non-interactive shell has it ignored, and so would the script).
    proc = subprocess.Popen([SYSTEM_PYTHON, str(path)], cwd=str(tmp_path), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=clean_env(QEMU_DST=str(wrapper)),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if not line or "dst: pid" in line:
                break
        assert "dst: pid" in lines[-1], "".join(lines)
        time.sleep(0.3)
        proc.send_signal(sig)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = "".join(lines) + rest
    assert proc.returncode == code, out
    assert "interrupted" in out or "terminated by signal" in out
    assert "target QEMU (pid" in out and "killed now by this script" in out
    assert_cleaned_up(out)
