"""Which run an artifact belongs to: its id, the harness commit, its start.

One run (a `harness run`, a pytest session with its xdist workers, an avocado job)
has one :class:`RunIdentity`. The first process of the run makes it and exports it in
the environment (``CPRH_RUN_ID``, ``CPRH_RUN_STARTED``), so its children (workers, the
pytest of `harness run`) carry the same one; every artifact records it.
"""
from __future__ import annotations

import datetime as _dt
import os
import secrets
import subprocess
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, MutableMapping, Optional

ROOT = Path(__file__).resolve().parents[2]
ENV_ID, ENV_STARTED = "CPRH_RUN_ID", "CPRH_RUN_STARTED"


@dataclass(frozen=True)
class RunIdentity:
    run_id: str
    commit: str
    started: str

    def to_dict(self) -> Dict[str, str]:
        return asdict(self)

    def describe(self) -> str:
        return f"run {self.run_id}, harness {self.commit}, started {self.started}"


@lru_cache(maxsize=None)
def harness_commit() -> str:
    """``git describe``-like: the short commit of this checkout, ``+dirty`` when it has
    uncommitted changes; ``unknown`` outside a git checkout."""
    def git(*args: str) -> Optional[str]:
        try:
            p = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True,
                               text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return p.stdout.strip() if p.returncode == 0 else None

    commit = git("rev-parse", "--short=12", "HEAD")
    if not commit:
        return "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return commit + ("+dirty" if dirty else "")


def establish(environ: Optional[MutableMapping[str, str]] = None,
              fresh: bool = False) -> RunIdentity:
    """This run's identity: the one in the environment, else (or when ``fresh``: the
    first process of a run, whatever its parent ran) a new one, exported."""
    env = os.environ if environ is None else environ
    run_id, started = env.get(ENV_ID), env.get(ENV_STARTED)
    if fresh or not run_id or not started:
        now = _dt.datetime.now(_dt.timezone.utc)
        started = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        run_id = now.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
        env[ENV_ID], env[ENV_STARTED] = run_id, started
    return RunIdentity(run_id, harness_commit(), started)
