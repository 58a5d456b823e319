"""Fixtures shared by the harness's self-tests."""
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def own_reports_dir(tmp_path_factory, monkeypatch):
    """Every run a self-test starts (pytest, `harness run`, avocado) that does not name
    its reports directory writes into a fresh one of its own, never into the user's
    reports/ nor the outer run's .test-reports/ (a run clears its reports directory's
    last run when it starts)."""
    monkeypatch.setenv("CPRH_REPORTS", str(tmp_path_factory.mktemp("reports")))


@pytest.fixture
def load_proof(monkeypatch):
    """Pause budgets no host load reaches, for the child runs of a self-test that is about
    something else (verdicts under two runners, versions): the pause checks are judged,
    and their own self-tests prove them, under the real budgets (test_broken_targets)."""
    for name, value in (("CPRH_MAX_PAUSE_MS", "60000"), ("CPRH_STALL_FLOOR_MS", "60000"),
                        ("CPRH_MAX_STUTTER", "1")):
        monkeypatch.setenv(name, value)


@pytest.fixture
def short_base():
    """A short private base dir for a child run's temp dirs (CPRH_TMPDIR).

    pytest's tmp_path can be too long for unix socket paths under it (the harness
    refuses such a base up front), especially under xdist.
    """
    d = tempfile.mkdtemp(prefix="st-", dir="/tmp")
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def old_qemu_dir(request, tmp_path_factory):
    """Where scripts/fetch-old-qemu.sh unpacks QEMU 7.2: the pytest cache when there is
    one (kept across runs), else this session's temp dir (-p no:cacheprovider)."""
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir("old-qemu-7.2"))
    return tmp_path_factory.mktemp("old-qemu-7.2")


@pytest.fixture(scope="session")
def qemu_11_1_3():
    """scripts/get-qemu.sh 11.1.3, once per session (a no-op when already cached: the
    script serialises concurrent calls); a skip with the script's own one-line reason
    when it cannot be fetched (no network, a different archive)."""
    try:
        p = subprocess.run(["bash", str(ROOT / "scripts" / "get-qemu.sh"), "11.1.3"],
                           cwd=str(ROOT), capture_output=True, text=True, timeout=300,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.skip("get-qemu.sh 11.1.3 took over 300 s")
    if p.returncode != 0:
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        pytest.skip(lines[-1] if lines else f"get-qemu.sh exited {p.returncode}")
    path = p.stdout.strip()
    assert p.stdout.count("\n") == 1 and os.path.isabs(path), p.stdout
    return path
