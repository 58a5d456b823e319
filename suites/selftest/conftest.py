"""Fixtures shared by the harness's self-tests."""
import shutil
import tempfile
from pathlib import Path

import pytest


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
