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
