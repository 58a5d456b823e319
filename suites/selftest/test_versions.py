"""Across QEMU versions, in the default run: the installed 10.0.2 and 11.1.3 (fetched by
scripts/get-qemu.sh in ~15 s; a skip with its reason when it cannot be), an upgrade and
a downgrade with the pinned machine type, and the grid of all four."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.selftest
ROOT = Path(__file__).resolve().parents[2]
BASE = "transfer/unix-unix-memfd-immediate-q35"


def test_upgrade_downgrade_and_the_grid(tmp_path, short_base, qemu_11_1_3, load_proof):
    import os

    out = tmp_path / "versions"
    p = subprocess.run([sys.executable, "-m", "harness", "versions", "/usr/bin/qemu-system-x86_64",
                        qemu_11_1_3, "--scenario", BASE, "--scenario",
                        "version/unpinned-machine-q35", "--reports", str(out), "-j", "1"],
                       cwd=str(ROOT), capture_output=True, text=True, timeout=280,
                       env=dict(os.environ, CPRH_TMPDIR=str(short_base)))
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    runs = {d.name: json.loads((d / "conformance.json").read_text())
            for d in out.iterdir() if (d / "conformance.json").is_file()}
    assert set(runs) == {"10.0.2", "11.1.3", "10.0.2-to-11.1.3", "11.1.3-to-10.0.2"}, runs

    def case(run, sid):
        return next(c for c in runs[run]["cases"] if c["id"] == sid)

    up = case("10.0.2-to-11.1.3", BASE)
    assert up["verdict"] == "pass", up["reason"]
    assert up["machine"] == "pc-q35-10.0 (pinned)", up
    # The documented rule across versions: an unpinned machine is refused by the target.
    unpinned = case("10.0.2-to-11.1.3", "version/unpinned-machine-q35")
    assert unpinned["verdict"] == "pass", unpinned["reason"]
    assert "Machine type received is" in unpinned["actual"]["message"]
    # Same version: nothing to compare, a skip saying so.
    assert case("11.1.3", "version/unpinned-machine-q35")["verdict"] == "skip"
    # The downgrade: refused at the target, a known deviation keyed on both versions.
    down = case("11.1.3-to-10.0.2", BASE)
    assert down["verdict"] == "xfail", down
    assert "vmstate_load_state error -2" in down["actual"]["message"]
    grid = (out / "grid.md").read_text()
    assert "| 10.0.2 | 11.1.3 | 10.0.2 → 11.1.3 | 11.1.3 → 10.0.2 |" in grid, grid
    assert (out / "grid.html").is_file()
