"""The avocado entry points give the same verdicts as the pytest run, on the same QEMU.

The live tests run a small set of scenarios twice, under ``avocado run`` (a recipe from
suites/avocado/cprh_avocado.py) and under ``python -m pytest suites/conformance``, and
compare the verdicts per scenario: two positive, two error paths, a known deviation
(xfail), a stale known deviation (xpass: it must fail loudly), a missing capability and
a gated slow case (skips), and a broken target (fail).
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ADAPTER = ROOT / "suites" / "avocado" / "cprh_avocado.py"
TEST_FILE = ROOT / "suites" / "avocado" / "cpr_transfer.py"
TAMPER = ROOT / "suites" / "selftest" / "broken" / "tamper.py"
HAVE_AVOCADO = importlib.util.find_spec("avocado") is not None

pytestmark = [pytest.mark.selftest,
              pytest.mark.skipif(not HAVE_AVOCADO, reason="avocado-framework is not "
                                 "installed (pip install -e '.[avocado]')")]
needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                                reason="qemu-system-x86_64 not on PATH")


def _load_adapter():
    spec = importlib.util.spec_from_file_location("cprh_avocado", ADAPTER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


adapter = _load_adapter()

POSITIVE = ["transfer/unix-unix-memfd-defer-q35", "transfer/tcp-unix-memfd-immediate-q35"]
ERROR_PATHS = ["channel/cpr-missing", "memory/ram-noshare"]
KNOWN_DEVIATION = "channel/main-inet-port0-dst"     # xfail on QEMU 10.0.x
STALE_DEVIATION = "memory/file-noshare"             # an entry this test adds: xpass
UNSUPPORTED = "transfer/unix-fd-memfd-immediate-q35"  # skip: 10.0.x has no fd cpr channel
SLOW = "transfer/unix-unix-memfd-defer-q35-linux"    # skip unless CPRH_SLOW
RUN_TIMEOUT = 240


def _env(base):
    env = dict(os.environ, CPRH_TMPDIR=str(base), PYTHONDONTWRITEBYTECODE="1")
    env.pop("CPRH_SLOW", None)
    return env


def _expectations(tmp_path):
    """The project's file plus a stale entry for a case that conforms."""
    path = tmp_path / "expectations.toml"
    path.write_text(adapter.expectations.DEFAULT_FILE.read_text() + f'''
[[deviation]]
case = "{STALE_DEVIATION}"
reason = "a stale entry (self-test): the case conforms"
link = "suites/selftest/test_avocado.py"
''')
    return path


def run_avocado(tmp_path, base, scenarios, *extra):
    out = tmp_path / "avocado"
    recipe = out / "recipe.json"
    args = [a for sid in scenarios for a in ("--scenario", sid)]
    p = subprocess.run([sys.executable, str(ADAPTER), "recipe", *args, *extra,
                        "-o", str(recipe)], cwd=str(ROOT), env=_env(base),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    p = subprocess.run([sys.executable, "-m", "avocado", "run", str(recipe),
                        "--job-results-dir", str(out), "--disable-sysinfo",
                        "--json", str(out / "results.json"), "--xunit", str(out / "results.xml")],
                       cwd=str(ROOT), env=_env(base), capture_output=True, text=True,
                       timeout=RUN_TIMEOUT)
    assert (out / "results.json").is_file(), p.stdout + p.stderr
    return p, json.loads((out / "results.json").read_text())


def run_pytest(tmp_path, base, scenarios, *extra):
    reports = tmp_path / "pytest"
    args = [a for sid in scenarios for a in ("--scenario", sid)]
    p = subprocess.run([sys.executable, "-m", "pytest", "suites/conformance", *args, *extra,
                        "-p", "no:cacheprovider", "-q", "-n", "2", "--reports", str(reports)],
                       cwd=str(ROOT), env=_env(base), capture_output=True, text=True,
                       timeout=RUN_TIMEOUT)
    assert (reports / "conformance.json").is_file(), p.stdout + p.stderr
    return p, json.loads((reports / "conformance.json").read_text())


def verdicts(avocado_results, pytest_matrix):
    rows = adapter.compare(adapter.avocado_verdicts(avocado_results),
                           adapter.pytest_verdicts(pytest_matrix))
    return {r["id"]: r for r in rows}


@needs_qemu
def test_same_verdicts_under_avocado_and_pytest(tmp_path, short_base, load_proof):
    scenarios = POSITIVE + ERROR_PATHS + [KNOWN_DEVIATION, STALE_DEVIATION, UNSUPPORTED, SLOW]
    exp = _expectations(tmp_path)
    av_proc, av = run_avocado(tmp_path, short_base, scenarios, "--expectations", str(exp))
    _, py = run_pytest(tmp_path, short_base, scenarios, "--expectations", str(exp))

    rows = verdicts(av, py)
    assert set(rows) == set(scenarios), rows
    differ = {sid: r for sid, r in rows.items() if not r["same"]}
    assert not differ, json.dumps(differ, indent=1)
    got = {sid: r["avocado"] for sid, r in rows.items()}
    for sid in POSITIVE + ERROR_PATHS:
        assert got[sid] == "pass", rows[sid]
    assert got[STALE_DEVIATION] == "xpass" and got[SLOW] == "skip", got
    # The stale entry fails the avocado job loudly, and says why.
    assert av_proc.returncode != 0
    by_id = {adapter.scenario_of_test(t): t for t in av["tests"]}
    stale = by_id[STALE_DEVIATION]
    assert stale["status"] == "FAIL" and stale["fail_reason"].startswith("XPASS(strict)")
    assert by_id[SLOW]["status"] == "CANCEL" and "CPRH_SLOW" in by_id[SLOW]["fail_reason"]
    if got[KNOWN_DEVIATION] == "xfail":
        dev = by_id[KNOWN_DEVIATION]
        assert dev["status"] == "WARN" and dev["fail_reason"].startswith("known deviation: ")

    # The same evidence as a pytest case directory, in the avocado test's data dir.
    data = Path(by_id[POSITIVE[0]]["logdir"]) / "data"
    for name in ("src.log", "dst.log", "src.serial", "dst.serial", "src.qmp.jsonl",
                 "dst.qmp.jsonl", "result.json"):
        assert (data / name).is_file(), sorted(os.listdir(data))
    record = json.loads((data / "result.json").read_text())
    assert record["id"] == POSITIVE[0] and record["mismatches"] == []
    cases = ET.parse(tmp_path / "avocado" / "results.xml").getroot().iter("testcase")
    assert len(list(cases)) == len(scenarios)


#: One broken target per case (tamper.py by-case): each class of defect, one pytest run
#: and one avocado job for all of them.
BROKEN_BY_CASE = {
    "unix-unix-memfd-immediate-q35": "late-kill",
    "unix-unix-memfd-defer-q35": "late-reset",
    "tcp-unix-memfd-immediate-q35": "late-stop",
    "tcp-unix-memfd-defer-q35": "late-page",
    "unix-unix-memfd-immediate-pc": "freeze",
    "unix-unix-memfd-defer-pc": "reset",
    "exec-unix-memfd-immediate-q35": "page",
    "exec-unix-memfd-defer-q35": "paused",
    "unix-unix-memfd-immediate-q35-prealloc": "late-freeze",
    "unix-unix-file-shm-immediate-q35-prealloc": "stutter",
    # The wrapper sits on both sides: these break the source, or hang a side.
    "unix-unix-shm-immediate-q35": "src-cont",
    "unix-unix-file-shm-immediate-q35": "src-hang",
    "unix-unix-ram-share-immediate-q35": "dst-hang",
}
QEMU_MODES = ("src-cont", "src-hang", "dst-hang")


#: The broken QEMUs in two halves, each its own test (xdist runs them side by side; a
#: hung QEMU costs its case the start timeout): what the guest lives through, and the
#: QEMUs themselves (a resumed source, a hung one).
HALVES = {"guest": [t for t, m in BROKEN_BY_CASE.items() if m not in QEMU_MODES],
          "qemus": [t for t, m in BROKEN_BY_CASE.items() if m in QEMU_MODES]}


@needs_qemu
@pytest.mark.timeout(540)  # two runners one after the other, each bounded by RUN_TIMEOUT
@pytest.mark.parametrize("half", sorted(HALVES))
def test_every_broken_target_fails_and_names_its_defect_under_both(tmp_path, short_base,
                                                                   monkeypatch, half):
    spec = importlib.util.spec_from_file_location("cprh_tamper", TAMPER)
    tamper = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tamper)
    DEFECTS = tamper.DEFECTS

    wrapper = tmp_path / "qemu-by-case"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{TAMPER}" by-case "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("TAMPER_MODES", json.dumps(BROKEN_BY_CASE))
    scenarios = [f"transfer/{tail}" for tail in HALVES[half]]
    both = ("--qemu-src", str(wrapper), "--qemu-dst", str(wrapper))
    _, av = run_avocado(tmp_path, short_base, scenarios, *both)
    _, py = run_pytest(tmp_path, short_base, scenarios, *both)
    rows = verdicts(av, py)
    by_av = {adapter.scenario_of_test(t): t for t in av["tests"]}
    by_py = {c["id"]: c for c in py["cases"]}
    for tail in HALVES[half]:
        sid, mode = f"transfer/{tail}", BROKEN_BY_CASE[tail]
        av_reason, py_reason = by_av[sid]["fail_reason"], by_py[sid]["reason"]
        assert rows[sid]["avocado"] == rows[sid]["pytest"] == "fail", \
            (mode, rows[sid], av_reason, py_reason)
        ids, words = DEFECTS[mode]
        ids = (ids,) if isinstance(ids, str) else ids
        assert av_reason.startswith(f"{sid}: ")  # the ConformanceFailure text
        for reason in (av_reason, py_reason):
            named = [i for i in ids if f"[{i}]" in reason]
            assert named, (mode, reason)
            said = [words[i] for i in named] if isinstance(words, dict) else [words]
            assert any(all(w in reason for w in ws) for ws in said), (mode, reason)


def test_missing_scenario_param_is_an_error_that_says_how(tmp_path):
    p = subprocess.run([sys.executable, "-m", "avocado", "run", str(TEST_FILE),
                        "--job-results-dir", str(tmp_path), "--disable-sysinfo",
                        "--json", str(tmp_path / "results.json")],
                       cwd=str(ROOT), capture_output=True, text=True, timeout=120)
    test = json.loads((tmp_path / "results.json").read_text())["tests"][0]
    assert p.returncode != 0 and test["status"] == "ERROR", test
    assert "-p scenario=ID" in test["fail_reason"]


def test_recipe_is_one_valid_runnable_per_scenario():
    from avocado.core.nrunner.runnable import Runnable

    recipe = adapter.recipe(adapter.select(), {"accel": "tcg"}, cwd=str(ROOT))
    assert [r["kwargs"]["variant"]["variant_id"] for r in recipe] == \
        list(adapter.catalogue.SCENARIOS)
    for r in recipe:
        runnable = Runnable.from_dict(r)
        assert runnable.kind == "avocado-instrumented"
        assert runnable.uri == "suites/avocado/cpr_transfer.py:CprTransfer.test_scenario"
        env = {k: v for _, k, v in runnable.variant["variant"][0][1]}
        assert env == {"scenario": runnable.variant["variant_id"], "accel": "tcg"}


def test_suites_select_as_the_pytest_suites_do():
    ids = {name: [s.id for s in adapter.select([name])] for name in adapter.SUITES}
    everything = [s.id for s in adapter.select()]
    # The suites of suites/conformance/ partition the catalogue; "core" (what the
    # versions matrix runs) is a selection across them.
    parts = ids["transfer"] + ids["refusals"] + ids["faults"] + ids["args"] + ids["devices"]
    assert sorted(parts) == sorted(everything) == sorted(adapter.catalogue.SCENARIOS)
    assert all(sid.startswith("fault/") for sid in ids["faults"])
    assert all(sid.startswith("args/") for sid in ids["args"])
    assert all(sid.split("/")[0] in ("net", "disk") for sid in ids["devices"])
    assert set(ids["core"]) < set(everything)


def test_status_maps_back_to_the_matrix_verdicts():
    cases = {("PASS", ""): "pass", ("FAIL", "x: 1 check(s) failed"): "fail",
             ("FAIL", "XPASS(strict) known deviation: y"): "xpass",
             ("ERROR", "timed out"): "error", ("INTERRUPTED", "timeout"): "error",
             ("WARN", "known deviation: z"): "xfail", ("CANCEL", "no KVM"): "skip",
             ("SKIP", ""): "skip"}
    for (status, reason), verdict in cases.items():
        assert adapter.verdict_of_test({"status": status, "fail_reason": reason})[0] \
            == verdict, status
    from harness.tools.report import VERDICTS

    assert set(adapter.VERDICT_OF_STATUS.values()) | {"xpass"} == set(VERDICTS)
