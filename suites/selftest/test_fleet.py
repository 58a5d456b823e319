"""The fleet nightly's own logic, without QEMU: a job's matrix entry (bad input is one
line), get-qemu's failures sorted into retried and not, the merge across jobs (grid,
merged matrix, compare, the baseline kept only after a good night, lost coverage), the
Allure results made one report, and the local nightly keeping its baseline by itself."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.core.errors import HarnessError, UsageError
from harness.tools.fleet import allure_merge, job, merge

pytestmark = pytest.mark.selftest
ROOT = Path(__file__).resolve().parents[2]
ENTRY = {"CPRH_HOST_CLASS": "kvm", "CPRH_SRC": "10.0.2", "CPRH_DST": "11.1.3",
         "CPRH_ACCEL": "kvm", "CPRH_SUITES": "core"}


def harness(*args, env=None):
    full = {k: v for k, v in os.environ.items() if not k.startswith(("CPRH_FLEET", "CI_"))}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=str(ROOT), env=full,
                          capture_output=True, text=True, timeout=120)


# --------------------------------------------------------------------------- the job


def test_entry_from_the_matrix_variables():
    e = job.entry_from_env(ENTRY)
    assert (e.run_name, e.suites, e.jobs) == ("10.0.2-to-11.1.3-kvm", ("core",), 2)
    alone = job.entry_from_env({**ENTRY, "CPRH_DST": "", "CPRH_SUITES": "all"})
    assert (alone.dst, alone.run_name, alone.suites) == ("10.0.2", "10.0.2-kvm", ())
    assert job.harness_command(e, "/a", "/b", Path("/r"))[3:] == [
        "run", "--qemu-src", "/a", "--qemu-dst", "/b", "--accel", "kvm", "--reports", "/r",
        "--no-allure-html", "-j", "2", "--suite", "core"]


@pytest.mark.parametrize("change,needle", [
    ({"CPRH_SRC": ""}, "CPRH_SRC is empty"),
    ({"CPRH_HOST_CLASS": " "}, "CPRH_HOST_CLASS is empty"),
    ({"CPRH_HOST_CLASS": "kvm intel"}, "is not a tag name"),
    ({"CPRH_DST": "11.1"}, "CPRH_DST '11.1' is not a QEMU version"),
    ({"CPRH_ACCEL": "hvf"}, "CPRH_ACCEL 'hvf'"),
    ({"CPRH_SUITES": ""}, "CPRH_SUITES is empty"),
    ({"CPRH_SUITES": "nightly"}, "unknown suite 'nightly'"),
    ({"CPRH_SCENARIOS": "transfer/nope"}, "unknown scenario id"),
    ({"CPRH_JOBS": "0"}, "CPRH_JOBS '0'"),
])
def test_a_bad_entry_is_one_line(change, needle):
    with pytest.raises(UsageError, match=needle):
        job.entry_from_env({**ENTRY, **change})


def test_local_stand_in_is_said_and_leads_nowhere_made_up():
    env = {"CI_JOB_NAME": "cprh:run: [kvm]", "CI_JOB_URL": "https://gitlab.com/fallback/-/jobs/1"}
    assert job.ci_facts(env)["job_url"] == env["CI_JOB_URL"]
    local = job.ci_facts({**env, "CPRH_FLEET_LOCAL": "1"})
    assert "job_url" not in local and local["job"] == "cprh:run: [kvm]"
    assert local["local_standin"].startswith("gitlab-ci-local on this machine")


def test_job_command_line_bad_input_and_dry_run():
    p = harness("fleet", "job", "--dry-run", env={**ENTRY, "CPRH_SRC": ""})
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.strip().splitlines() == [
        "cpr-harness: error: fleet: CPRH_SRC is empty: the matrix entry must set it "
        "(the source QEMU's version, e.g. 10.0.2)"]
    p = harness("fleet", "job", "--dry-run", env=ENTRY)
    assert p.returncode == 0, p.stderr
    assert "--qemu-dst $(get-qemu.sh 11.1.3)" in p.stdout and "--suite core" in p.stdout
    p = harness("fleet", "bogus")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr


def fake_get_qemu(tmp_path, body):
    script = tmp_path / "get-qemu.sh"
    script.write_text("#!/usr/bin/env bash\n" + body + "\n")
    return script


@pytest.mark.parametrize("body,error,needle", [
    ("echo \"get-qemu: no QEMU $1 in Debian's archive (binaries: 11.1.3): ask\" >&2; exit 1",
     UsageError, "no QEMU 9.9.9 in Debian's archive"),
    ("echo 'get-qemu: cannot reach deb.example: Could not resolve' >&2; exit 1",
     job.TempFail, "cannot reach"),
    ("echo 'get-qemu: make failed: error: x' >&2; exit 1", HarnessError, "could not be had"),
])
def test_get_qemu_failures_are_sorted(tmp_path, monkeypatch, body, error, needle):
    monkeypatch.setattr(job, "GET_QEMU", fake_get_qemu(tmp_path, body))
    with pytest.raises(error, match=needle) as info:
        job.qemu_path("9.9.9", 60)
    assert error is HarnessError or isinstance(info.value, error)
    if error is HarnessError:
        assert not isinstance(info.value, (UsageError, job.TempFail))


def test_a_fetch_over_its_limit_is_retried_and_leaves_nothing(tmp_path, monkeypatch):
    pids = tmp_path / "pids"
    monkeypatch.setattr(job, "GET_QEMU", fake_get_qemu(
        tmp_path, f"sleep 600 & echo $! > {pids}; wait"))
    with pytest.raises(job.TempFail, match="took over 1 s"):
        job.qemu_path("11.1.3", 1)
    child = int(pids.read_text())
    # The whole group was killed with SIGKILL and the script reaped: its child is gone
    # (or a zombie reparented to init, about to be reaped).
    stat = Path(f"/proc/{child}/stat")
    assert not stat.exists() or stat.read_text().split(") ")[1].startswith("Z"), child


# --------------------------------------------------------------------------- the merge


def write_run(results, host, src, dst, verdicts, accel="kvm"):
    name = (src if src == dst else f"{src}-to-{dst}") + f"-{accel}"
    d = results / host / name
    d.mkdir(parents=True, exist_ok=True)
    meta = {"qemu_src_version": src, "qemu_dst_version": dst, "qemu_src": f"{src} (Debian)",
            "qemu_dst": f"{dst} (Debian)", "accel": f"{accel} (auto)", "run_id": f"r-{name}"}
    cases = [{"id": sid, "verdict": v, "reason": "" if v == "pass" else f"why {sid}"}
             for sid, v in verdicts.items()]
    (d / "conformance.json").write_text(json.dumps({"schema": 1, "meta": meta, "cases": cases}))
    entry = {"host_class": host, "src": src, "dst": dst, "accel": accel}
    (d / "fleet.json").write_text(json.dumps({"entry": entry, "ci": {"hostname": "h1"},
                                              "status": "ran", "harness_exit": 0}))
    return d


GOOD = {"transfer/a": "pass", "transfer/b": "xfail", "memory/c": "skip"}


def fleet_merge(tmp_path, *extra):
    out = tmp_path / "fleet"
    return merge.main([str(tmp_path / "runs"), "--out", str(out), "--keep",
                       str(tmp_path / "keep"), "--no-allure-html", *extra], env={}), out


def test_first_night_then_the_same_then_a_regression(tmp_path, capsys):
    runs = tmp_path / "runs"
    for src, dst in (("10.0.2", "10.0.2"), ("11.1.3", "11.1.3"), ("10.0.2", "11.1.3")):
        write_run(runs, "kvm", src, dst, GOOD)
    code, out = fleet_merge(tmp_path)
    said = capsys.readouterr().out
    assert code == 0 and "no baseline: compare skipped" in said, said
    kept = tmp_path / "keep" / "merged.json"
    assert json.loads(kept.read_text())["counts"]["pass"] == 3
    grid = (out / "grid.md").read_text()
    assert "| scenario | 10.0.2 @kvm | 11.1.3 @kvm | 10.0.2 → 11.1.3 @kvm |" in grid, grid
    assert (out / "grid.html").is_file()
    merged = json.loads((out / "merged.json").read_text())
    assert "[kvm/10.0.2-to-11.1.3-kvm] transfer/a" in {c["id"] for c in merged["cases"]}

    assert fleet_merge(tmp_path)[0] == 0
    assert "0 regression(s)" in capsys.readouterr().out

    write_run(runs, "kvm", "11.1.3", "11.1.3", {**GOOD, "transfer/a": "fail"})
    before = kept.read_text()
    code, out = fleet_merge(tmp_path)
    said = capsys.readouterr().out
    assert code == 1 and "REGRESSION" in said and "stays" in said, said
    assert "`[kvm/11.1.3-kvm] transfer/a` | pass | fail" in (out / "regressions.md").read_text()
    assert kept.read_text() == before  # the baseline stays the last good night's

    code, _ = fleet_merge(tmp_path, "--accept")  # a person accepts the new state
    assert code == 0 and json.loads(kept.read_text())["counts"]["fail"] == 1
    assert fleet_merge(tmp_path)[0] == 0  # and the next night compares with it


def test_a_run_missing_or_without_results_is_lost_coverage(tmp_path, capsys):
    runs = tmp_path / "runs"
    write_run(runs, "kvm", "10.0.2", "10.0.2", GOOD)
    pair = write_run(runs, "amd", "10.0.2", "11.1.3", GOOD)
    assert fleet_merge(tmp_path)[0] == 0
    capsys.readouterr()
    (pair / "conformance.json").unlink()  # the job ran but wrote no matrix
    code, out = fleet_merge(tmp_path)
    said = capsys.readouterr().out
    assert code == 1 and "1 job(s) wrote no results: amd/10.0.2-to-11.1.3-kvm" in said, said
    assert "COVERAGE-LOSS" in said and "no results from amd/10.0.2-to-11.1.3-kvm" in said
    assert "10.0.2 → 11.1.3 @amd (no results)" in (out / "grid.md").read_text()
    (pair / "fleet.json").unlink()  # no trace of the job at all: its cases are lost
    code, _ = fleet_merge(tmp_path)
    assert code == 1 and "COVERAGE-LOSS" in capsys.readouterr().out
    for d in runs.glob("*/*"):
        for f in d.iterdir():
            f.unlink()
    code, _ = fleet_merge(tmp_path, "--baseline", str(tmp_path / "keep" / "merged.json"))
    assert code == 1 and "exit 1: no job wrote results" in capsys.readouterr().out


def test_merge_bad_input_is_one_line(tmp_path):
    p = harness("fleet", "merge", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"))
    assert p.returncode == 2 and "no such directory" in p.stderr, p.stderr
    write_run(tmp_path / "runs", "kvm", "10.0.2", "10.0.2", GOOD)
    p = harness("fleet", "merge", str(tmp_path / "runs"), "--out", str(tmp_path / "o"),
                "--keep", str(tmp_path / "k"), "--no-allure-html",
                env={"CPRH_FLEET_BASELINE": str(tmp_path / "missing.json")})
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "missing.json: no such file" in p.stderr


def test_allure_results_become_one_report_per_run(tmp_path):
    runs = tmp_path / "runs"
    for src in ("10.0.2", "11.1.3"):
        d = write_run(runs, "kvm", src, src, GOOD) / "allure-results"
        d.mkdir()
        (d / f"{src}-result.json").write_text(json.dumps({
            "name": "transfer/a", "historyId": "same", "testCaseId": "tc",
            "labels": [{"name": "parentSuite", "value": "suites.conformance"}],
            "parameters": [{"name": "accel", "value": "kvm"}]}))
        (d / f"{src}-attachment.txt").write_text("log")
        (d / "categories.json").write_text("[]")
        (d / "environment.properties").write_text("run.id=x\n")
    found = merge.find_runs(runs)
    out = tmp_path / "allure-results"
    assert allure_merge.copy_results(found, out) == 2
    allure_merge.write_environment(found, out)
    docs = [json.loads(f.read_text()) for f in sorted(out.glob("*-result.json"))]
    assert len({d["historyId"] for d in docs}) == 2  # two tests, not one retried
    assert [d["parameters"][0] for d in docs] == [
        {"name": "fleet run", "value": "10.0.2 @kvm"}, {"name": "fleet run", "value": "11.1.3 @kvm"}]
    assert {"name": "parentSuite", "value": "11.1.3 @kvm"} in docs[1]["labels"]
    assert len([x for x in docs[1]["labels"] if x["name"] == "parentSuite"]) == 1
    env = (out / "environment.properties").read_text()
    assert "fleet.runs=2" in env and "kvm/11.1.3-kvm=src 11.1.3 (Debian)" in env
    assert sorted(p.name for p in out.iterdir()) == [
        "10.0.2-attachment.txt", "10.0.2-result.json", "11.1.3-attachment.txt",
        "11.1.3-result.json", "categories.json", "environment.properties"]


# --------------------------------------------------------------------------- one machine


def matrix(verdict):
    return json.dumps({"schema": 1, "meta": {"run_id": "r"},
                       "cases": [{"id": "transfer/a", "verdict": verdict, "reason": ""}]})


def test_local_nightly_keeps_the_last_good_night_as_its_baseline(tmp_path):
    reports = tmp_path / "reports"
    reports.mkdir()
    current, kept = reports / "conformance.json", reports / "baseline.json"
    env = {"CPRH_BASELINE": ""}

    def night(verdict):
        current.write_text(matrix(verdict))
        return harness("report", "--reports", str(reports), "--baseline", "auto",
                       "--keep-baseline", env=env)

    p = night("pass")
    assert p.returncode == 0 and "no baseline: compare skipped (first night)" in p.stdout
    assert "now holds this night's matrix" in p.stdout and kept.read_text() == matrix("pass")
    p = night("fail")
    assert p.returncode == 1 and "stays the last good night's" in p.stdout, p.stdout
    assert kept.read_text() == matrix("pass")
    p = night("fail")  # still a regression against the last good night
    assert p.returncode == 1
    p = night("xpass")
    assert p.returncode == 0 and kept.read_text() == matrix("xpass"), p.stdout
    pinned = tmp_path / "pinned.json"
    pinned.write_text(matrix("pass"))
    p = harness("report", "--reports", str(reports), "--baseline", "auto", "--keep-baseline",
                env={"CPRH_BASELINE": str(pinned)})
    assert p.returncode == 0 and "kept as it is" in p.stdout, p.stdout
    assert kept.read_text() == matrix("xpass")


# --------------------------------------------------------------------------- ci/gitlab/qemu.sh


@pytest.fixture
def qemu_script(tmp_path):
    """ci/gitlab/qemu.sh in a copy of the repository's layout, with a fake get-qemu.sh
    (FAKE decides what it does) and a private get-qemu cache; returns a runner."""
    repo = tmp_path / "repo"
    (repo / "ci" / "gitlab").mkdir(parents=True)
    (repo / "scripts").mkdir()
    (repo / "ci" / "gitlab" / "qemu.sh").write_text((ROOT / "ci" / "gitlab" / "qemu.sh").read_text())
    (repo / "scripts" / "get-qemu.sh").write_text(
        "#!/usr/bin/env bash\nset -eu\nv=$1\n"
        'case "${FAKE:-ok}" in\n'
        '  ok) d=$CPRH_QEMU_CACHE/$v/x86_64; if [ ! -s "$d/stamp" ]; then mkdir -p "$d/bin"; '
        'echo "QEMU $v" > "$d/bin/qemu"; echo "path=$d/bin/qemu" > "$d/stamp"; '
        'echo "get-qemu: fetched $v" >&2; fi; echo "$d/bin/qemu" ;;\n'
        '  host) echo /usr/bin/qemu-system-x86_64 ;;\n'
        '  unknown) echo "get-qemu: no QEMU $v in Debian\'s archive (binaries: 11.1.3)" >&2; exit 1 ;;\n'
        '  offline) echo "get-qemu: cannot reach deb.debian.org: Temporary failure resolving" >&2; exit 1 ;;\n'
        '  broken) echo "get-qemu: make failed: error" >&2; exit 1 ;;\n'
        '  slow) sleep 600 & echo $! > "$PIDS"; wait ;;\n'
        "esac\n")
    cache = tmp_path / "cache"

    def run(*args, **env):
        full = dict(os.environ, CPRH_QEMU_CACHE=str(cache), PIDS=str(tmp_path / "pids"), **env)
        return subprocess.run(["bash", "ci/gitlab/qemu.sh", *args], cwd=str(repo), env=full,
                              capture_output=True, text=True, timeout=120)
    run.repo, run.cache, run.pids = repo, cache, tmp_path / "pids"
    return run


@pytest.mark.parametrize("fake,code,needle", [
    ("unknown", 2, "no QEMU 9.9.9 in Debian's archive"),
    ("offline", 75, "cannot reach deb.debian.org"),
    ("broken", 1, "make failed"),
])
def test_qemu_script_sorts_failures_for_retry(qemu_script, fake, code, needle):
    p = qemu_script("9.9.9", FAKE=fake)
    assert p.returncode == code and needle in p.stderr, (p.returncode, p.stderr)
    assert p.stderr.strip().splitlines()[-1].startswith("qemu: QEMU 9.9.9: ")


def test_qemu_script_bad_input_and_timeout(qemu_script):
    p = qemu_script("")
    assert p.returncode == 2 and p.stderr.strip() == (
        "qemu: an empty QEMU version: the matrix entry must name one (e.g. 11.1.3)")
    p = qemu_script("11.1.3", CPRH_FETCH_TIMEOUT="soon")
    assert p.returncode == 2 and "CPRH_FETCH_TIMEOUT 'soon'" in p.stderr
    p = qemu_script("11.1.3", FAKE="slow", CPRH_FETCH_TIMEOUT="1")
    assert p.returncode == 75 and "took over 1 s" in p.stderr, p.stderr
    child = int(qemu_script.pids.read_text())
    stat = Path(f"/proc/{child}/stat")
    assert not stat.exists() or stat.read_text().split(") ")[1].startswith("Z"), child


def test_qemu_script_packs_for_gitlab_and_unpacks_on_another_host(qemu_script):
    p = qemu_script("--save", "11.1.3")
    assert p.returncode == 0 and "packed for GitLab's cache" in p.stderr, p.stderr
    tar = qemu_script.repo / ".cprh-qemu-cache" / "11.1.3.tar"
    assert tar.is_file()
    p = qemu_script("--save", "11.1.3")  # the cache has this very build: left alone
    assert "already holds this build" in p.stderr and "fetched" not in p.stderr, p.stderr
    shutil.rmtree(qemu_script.cache)  # a host without it, GitLab's cache restored
    p = qemu_script("11.1.3")
    assert p.returncode == 0 and "unpacking GitLab's cached build" in p.stderr, p.stderr
    assert "fetched" not in p.stderr  # get-qemu found it in place
    p = qemu_script("--save", "10.0.2", FAKE="host")
    assert p.returncode == 0 and "is the host's own" in p.stderr, p.stderr
    assert not (qemu_script.repo / ".cprh-qemu-cache" / "10.0.2.tar").exists()
