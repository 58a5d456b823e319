"""Hostile and wrong input: a clear one-line error and a non-zero exit (or a skip with
its reason, where it is a host capability), never a traceback. And the security basics:
private 0700 directories, nothing world-writable left behind."""
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from harness.scenario import catalogue
from harness.qemu.probe import Capabilities
from harness.core.cleanup import private_tmpdir, remove_tmpdir
from harness.core.errors import Unsupported
from harness.run.setup import resolve_accel

pytestmark = pytest.mark.selftest
ROOT = Path(__file__).resolve().parents[2]
QEMU = shutil.which("qemu-system-x86_64")
needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not on PATH")
ONE_CASE = "transfer/unix-unix-memfd-immediate-q35"


def pytest_run(*args, env=None, timeout=180):
    return subprocess.run([sys.executable, "-m", "pytest", "suites/conformance", "-q",
                           "-p", "no:cacheprovider", *args], cwd=str(ROOT),
                          capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})))


def assert_usage_error(p, needle):
    assert p.returncode == 4, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    assert needle in p.stderr, p.stderr
    assert "Traceback" not in p.stderr + p.stdout


@pytest.fixture(scope="module")
def qemu72(old_qemu_dir):
    p = subprocess.run(["bash", str(ROOT / "scripts" / "fetch-old-qemu.sh"), str(old_qemu_dir)],
                       capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        pytest.skip(f"QEMU 7.2 not available: {p.stderr.strip().splitlines()[-1:]}")
    return p.stdout.strip().splitlines()[-1]


def test_qemu_72_is_refused_plainly_by_pytest(qemu72):
    assert_usage_error(pytest_run("--qemu-src", qemu72), "does not support cpr-transfer")


def test_qemu_72_is_refused_plainly_by_the_cli(qemu72):
    p = subprocess.run([sys.executable, "-m", "harness", "run", "--qemu-dst", qemu72],
                       cwd=str(ROOT), capture_output=True, text=True, timeout=180)
    assert p.returncode == 2 and "does not support cpr-transfer" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("where", ["/proc/cprh-reports", "a-file"])
def test_unwritable_reports_dir(tmp_path, where):
    path = where
    if where == "a-file":
        path = str(tmp_path / "file")
        Path(path).write_text("")
    assert_usage_error(pytest_run("--reports", path), "--reports: cannot write")


def test_too_long_socket_base(tmp_path):
    base = tmp_path / ("d" * 90)
    base.mkdir()
    assert_usage_error(pytest_run("--scenario", ONE_CASE, env={"CPRH_TMPDIR": str(base)}),
                       "too long")


def test_missing_tmp_base():
    assert_usage_error(pytest_run(env={"CPRH_TMPDIR": f"/tmp/no-such-dir-{os.getpid()}"}),
                       "not a writable directory")


def test_kvm_forced_without_kvm_is_a_skip_with_reason():
    caps = Capabilities(binary="q", path="/q", version=(10, 0, 2), version_str="10.0.2",
                        accels=("tcg", "kvm"), kvm_usable=False,
                        kvm_reason="cannot open /dev/kvm read-write: Permission denied")
    sc = catalogue.get(ONE_CASE)
    with pytest.raises(Unsupported, match="Permission denied"):
        resolve_accel("kvm", sc, caps, caps)
    assert resolve_accel("auto", sc, caps, caps) == "tcg"


@needs_qemu
def test_a_user_without_kvm_access_is_told_why():
    """As 'nobody' (no /dev/kvm access), the probe says KVM is not usable and why."""
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs root and runuser to switch to an unprivileged user")
    # The venv's interpreter lives under /root, which nobody cannot enter: run the
    # system Python (the same minor version) on the venv's packages.
    py = "/usr/bin/python3"
    site = ROOT / ".venv" / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" \
        / "site-packages"
    p = subprocess.run(["runuser", "-u", "nobody", "--", "env", f"PYTHONPATH={ROOT}:{site}",
                        py, "-m", "harness.qemu.probe", QEMU],
                       capture_output=True, text=True, timeout=120)
    if p.returncode != 0 and ("Permission denied" in p.stderr and "harness" in p.stderr
                              or "No module named" in p.stderr):
        pytest.skip(f"user nobody cannot read this checkout: {p.stderr.strip()[-200:]}")
    assert "KVM not usable" in p.stdout and "Permission denied" in p.stdout, p.stdout
    assert "Traceback" not in p.stderr


def test_private_dirs_are_0700():
    d = private_tmpdir()
    try:
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    finally:
        remove_tmpdir(d)


@needs_qemu
def test_a_run_leaves_nothing_world_writable_and_no_temp_files(tmp_path, short_base):
    base = short_base
    reports = tmp_path / "reports"
    p = pytest_run("--scenario", ONE_CASE, "--scenario", "channel/cpr-missing",
                   "--reports", str(reports), env={"CPRH_TMPDIR": str(base)})
    assert p.returncode == 0, p.stdout[-3000:]
    assert os.listdir(base) == [], "temp dirs left behind"
    bad = []
    for dirpath, dirnames, filenames in os.walk(reports):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & stat.S_IWOTH:
                bad.append(path)
    assert bad == [], f"world-writable: {bad}"
