"""Self-tests of the reports: the matrix (json/md/html), the baseline compare, the
Allure extras (categories against real failure texts), one real run end to end, the
Allure HTML generation and a look at both HTML reports in a headless browser."""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest


from harness.core.errors import (ConformanceFailure, QMPConnectionLost, VMLaunchFailure,
                                 WaitTimeout)
from harness.tools import report
import harness.run.checks as C

pytestmark = pytest.mark.selftest
ROOT = Path(__file__).resolve().parents[2]

# The library reads a runner's phases into verdicts; the adapters only hand them over.
from harness.tools.report.verdicts import Phase, of_pytest as verdict_of  # noqa: E402


def case_record(nodeid, phases, sc, res):
    """What the adapter records for a case: its verdict from the phases, then the record."""
    verdict, reason = verdict_of(phases, (res or {}).get("mismatches") or [])
    return report.case_record(nodeid, verdict, reason, sc, res,
                              {f"{p.when}_s": round(p.duration, 3) for p in phases})
ALLURE = ROOT / "node_modules" / ".bin" / "allure"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def cli(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=str(ROOT),
                          capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})))


def allure_missing():
    if not shutil.which("java"):
        return "java is not installed (apt-get install openjdk-17-jre-headless)"
    if not ALLURE.exists() and not shutil.which("npm"):
        return "npm is not installed and node_modules/ has no allure (apt-get install npm)"
    return ""


# --------------------------------------------------------------------------- synthetic


def sc_params(sid, expect="completes", **kw):
    area = sid.split("/")[0]
    d = {"id": sid, "title": f"title of {sid}", "area": area, "main": "unix", "cpr": "unix",
         "src_main": None, "dst_main": None, "src_cpr": None, "dst_cpr": None,
         "backend": "memfd", "incoming": "immediate", "machine": "q35", "accel": "auto",
         "smp": 1, "expect": expect}
    d.update(kw)
    return d


def result(sid, observed="completed", message="", mismatches=(), evidence=None):
    first = {"role": "first", "tag": "first", "observed": observed, "message": message,
             "query_migrate": {"status": "completed", "downtime": 7, "total-time": 50},
             "evidence": evidence if evidence is not None else
             {"pause": {"max_ns": 1200000, "windows": [{"max_ns": 5}, {"max_ns": 9}]},
              "same_inode": True, "samples": list(range(100)), "label": "x"}}
    return {"id": sid, "accel": "kvm", "qemu_src_version": "10.0.2", "qemu_dst_version": "10.0.2",
            "observed": observed, "observed_message": message, "attempts": [first],
            "timings": {"src_start": 0.1}, "mismatches": [m.to_dict() for m in mismatches],
            "artifacts": {"src.log": "/nonexistent/src.log"}}


CALL_FAIL = C.states.PROGRESS(False, "> 10", "10", "the guest's counter must continue")


def case(kind):
    """(nodeid, phases, scenario, result) for one verdict kind."""
    ok = Phase("setup", "passed"), Phase("teardown", "passed")
    sid = f"transfer/{kind}-case"
    if kind == "pass":
        return sid, [ok[0], Phase("call", "passed", duration=1.5), ok[1]], sc_params(sid), \
            result(sid)
    if kind == "fail":
        return sid, [ok[0], Phase("call", "failed", "ConformanceMismatch: ..."), ok[1]], \
            sc_params(sid), result(sid, mismatches=[CALL_FAIL])
    if kind == "error":
        return sid, [ok[0], Phase("call", "failed", "harness.errors.WaitTimeout: src: timed "
                                                    "out after 30.0s"), ok[1]], \
            sc_params(sid), None
    if kind == "setup-error":
        return sid, [Phase("setup", "failed", "fixture blew up"), ok[1]], sc_params(sid), None
    if kind == "skip":
        sid = "memory/skip-case"
        return sid, [ok[0], Phase("call", "skipped", "no memory-backend-epc here"), ok[1]], \
            sc_params(sid, "src-refuses: x"), None
    if kind == "xfail":
        sid = "channel/xfail-case"
        m = C.outcome.OUTCOME(False, "dst-refuses", "failed", "Connection refused")
        return sid, [ok[0], Phase("call", "skipped", "", wasxfail="known deviation: port 0"),
                     ok[1]], sc_params(sid, "dst-refuses"), \
            result(sid, "failed", "Connection refused", [m])
    if kind == "xpass":
        sid = "channel/xpass-case"
        return sid, [ok[0], Phase("call", "failed", "[XPASS(strict)] known deviation: port 0"),
                     ok[1]], sc_params(sid, "dst-refuses"), result(sid, "dst-refused", "refused")
    raise AssertionError(kind)


KINDS = {"pass": "pass", "fail": "fail", "error": "error", "setup-error": "error",
         "skip": "skip", "xfail": "xfail", "xpass": "xpass"}


def records():
    out = []
    for kind in KINDS:
        sid, phases, sc, res = case(kind)
        out.append(case_record(f"suites/conformance/test_x.py::t[{sid}]", phases, sc, res))
    return out


def doc():
    return report.matrix(records(), {"qemu_src": "10.0.2", "qemu_dst": "10.0.2", "accel": "kvm"},
                         12.5)


def test_every_verdict_kind():
    recs = {r["id"]: r for r in records()}
    for kind, verdict in KINDS.items():
        sid = case(kind)[0]
        assert recs[sid]["verdict"] == verdict, (kind, recs[sid])
    assert "guest progress [guest.progress]: expected \u201c> 10\u201d, got \u201c10\u201d" \
        in recs["transfer/fail-case"]["reason"]
    assert recs["memory/skip-case"]["reason"] == "no memory-backend-epc here"
    assert recs["memory/skip-case"]["actual"] is None
    assert recs["memory/skip-case"]["parameters"]["expect"] == "src-refuses: x"
    assert recs["channel/xfail-case"]["reason"] == "known deviation: port 0"
    assert recs["channel/xfail-case"]["checks"][0]["check"] == "outcome"
    assert "expected to fail" in recs["channel/xpass-case"]["reason"]
    assert "WaitTimeout" in recs["transfer/error-case"]["reason"]
    assert recs["transfer/setup-error-case"]["reason"].startswith("set-up failed")
    assert recs["transfer/pass-case"]["actual"] == {"outcome": "completed", "message": ""}
    # A non-strict xfail that passes is an xpass too.
    phases = [Phase("setup", "passed"), Phase("call", "passed", wasxfail="flaky")]
    assert verdict_of(phases)[0] == "xpass"
    # A teardown failure after a pass is an error.
    phases = [Phase("setup", "passed"), Phase("call", "passed"),
              Phase("teardown", "failed", "boom")]
    assert verdict_of(phases) == ("error", "teardown failed: boom")


def test_evidence_is_flattened_with_every_scalar():
    r = {x["id"]: x for x in records()}["transfer/pass-case"]
    # Numbers, booleans and strings alike; a raw series (100 samples) is left out.
    assert r["evidence"] == {"pause.max_ns": 1200000, "pause.windows.0.max_ns": 5,
                             "pause.windows.1.max_ns": 9, "same_inode": True, "label": "x"}
    assert report.flatten_numbers(result("x")["attempts"][0]["evidence"]) == {
        "pause.max_ns": 1200000, "pause.windows.0.max_ns": 5, "pause.windows.1.max_ns": 9}
    assert r["timings"] == {"src_start": 0.1}
    assert r["durations"]["call_s"] == 1.5


def test_matrix_pages_list_every_case_grouped_by_area():
    d = doc()
    assert d["counts"] == {"fail": 1, "error": 2, "xpass": 1, "xfail": 1, "skip": 1, "pass": 1}
    md = report.render_markdown(d)
    page = report.render_html(d)
    summary = "7 case(s): 1 pass, 1 fail, 2 error, 1 xfail, 1 xpass, 1 skip"
    assert summary in md.splitlines()[2] and summary in page
    for text in (md, page):
        assert "QEMU 10.0.2" in text and "accel kvm" in text
        for r in d["cases"]:
            assert r["id"] in text
    for r in d["cases"]:
        assert f"| {r['verdict']} | `{r['id']}` |" in md
        assert f'data-verdict="{r["verdict"]}"' in page
    # Areas in order, each once; within an area the worst verdict first.
    heads = [ln for ln in md.splitlines() if ln.startswith("## ")]
    areas = [h.split()[1] for h in heads if h.split()[1] in ("channel", "memory", "transfer")]
    assert areas == ["channel", "memory", "transfer"]
    transfer = md.split("## transfer")[1].split("##")[0]
    assert transfer.index("fail-case") < transfer.index("error-case") < transfer.index("pass-case")
    # Skips and known deviations are explained, with their reasons.
    assert "## Skips" in md and "no memory-backend-epc here: `memory/skip-case`" in md
    assert "## Known deviations" in md and "known deviation: port 0" in md
    assert "## Needs attention" in md
    # Self-contained: one inline script (the filter), no external assets.
    assert page.count("<script") == 1 and "<script src" not in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page)
    assert "<style>" in page


def test_matrix_ids_are_unique():
    """Two records with one id (a test reusing another's scenario) stay two cases."""
    recs = records()
    twin = dict(recs[0], nodeid="suites/conformance/test_other.py::t[x]")
    d = report.matrix(recs + [twin], {})
    ids = [c["id"] for c in d["cases"]]
    assert len(ids) == len(set(ids)) == len(recs) + 1
    assert recs[0]["id"] in ids and f"{recs[0]['id']}@{recs[0]['nodeid']}" in ids


def test_write_and_load_matrix(tmp_path):
    paths = report.write_matrix(doc(), tmp_path)
    assert {p.name for p in paths.values()} == {"conformance.json", "conformance.md",
                                                "conformance.html"}
    back = report.load_matrix(paths["json"])
    assert [c["id"] for c in back["cases"]] == [c["id"] for c in doc()["cases"]]


def test_change_kinds():
    k = report.change_kind
    assert k("pass", "pass") is None
    assert k("pass", "fail") == k("pass", "error") == k("xfail", "fail") == "regression"
    assert k("skip", "fail") == "regression" and k("pass", "xfail") == "regression"
    assert k("pass", "skip") == k("xfail", "skip") == k("fail", "skip") == "coverage-loss"
    assert k("fail", "pass") == k("error", "pass") == k("xfail", "xpass") == "fix"
    assert k("skip", "pass") == "coverage-gain"
    assert k("fail", "error") == k("fail", "xfail") == "changed"


def test_compare_lists_changes():
    old, new = doc(), doc()
    by = {c["id"]: c for c in new["cases"]}
    by["transfer/pass-case"]["verdict"] = "fail"
    by["transfer/fail-case"].update(verdict="pass", reason="")
    new["cases"] = [c for c in new["cases"] if c["id"] != "memory/skip-case"]
    new["cases"].append({**by["transfer/pass-case"], "id": "transfer/brand-new",
                         "verdict": "pass"})
    cmp = report.compare(old, new)
    kinds = {c.id: c.kind for c in cmp.changes}
    assert kinds == {"transfer/pass-case": "regression", "transfer/fail-case": "fix",
                     "memory/skip-case": "removed", "transfer/brand-new": "new"}
    assert cmp.exit_code == 1 and cmp.unchanged == 4
    text = report.render_comparison_text(cmp, "old.json", "new.json")
    assert re.search(r"REGRESSION +transfer/pass-case +pass -> fail", text)
    md = report.render_comparison_md(cmp, "old.json", "new.json")
    assert "## Regressions (1)" in md and "`transfer/pass-case` | pass | fail" in md
    fix = [c for c in cmp.changes if c.kind == "fix"][0]
    assert fix.why.startswith("was: guest progress")  # nothing wrong now: say what was
    assert report.compare(old, doc()).exit_code == 0


# --------------------------------------------------------------------------- compare CLI


def test_report_cli_compare(tmp_path):
    current = tmp_path / "reports" / "conformance.json"
    report.write_matrix(doc(), current.parent)
    same = cli("report", "--reports", str(current.parent), "--baseline", str(current))
    assert same.returncode == 0, same.stdout + same.stderr
    assert "0 regression(s)" in same.stdout

    base = json.loads(current.read_text())
    for c in base["cases"]:
        if c["id"] == "transfer/fail-case":
            c["verdict"] = "pass"  # the baseline says it passed: now a regression
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps(base))
    p = cli("report", "--reports", str(current.parent), "--baseline", str(baseline))
    assert p.returncode == 1, p.stdout + p.stderr
    assert re.search(r"REGRESSION +transfer/fail-case +pass -> fail", p.stdout)
    regressions = (current.parent / "regressions.md").read_text()
    assert "## Regressions (1)" in regressions and "transfer/fail-case" in regressions

    # CPRH_BASELINE via --baseline auto; absent: the compare is skipped with a note.
    p = cli("report", "--reports", str(current.parent), "--baseline", "auto",
            env={"CPRH_BASELINE": str(baseline)})
    assert p.returncode == 1 and "REGRESSION" in p.stdout
    env = dict(os.environ)
    env.pop("CPRH_BASELINE", None)
    p = subprocess.run([sys.executable, "-m", "harness", "report", "--reports",
                        str(current.parent), "--baseline", "auto"], cwd=str(ROOT), env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "no baseline: compare skipped" in p.stdout, p.stdout + p.stderr


@pytest.mark.parametrize("content,needle", [
    (None, "no such file"),
    ("{not json", "not valid JSON"),
    ('{"cases": [{"id": "transfer/x", "observed": "completes"}]}', "no valid verdict"),
    ('[1, 2]', "not a conformance matrix"),
])
def test_report_cli_bad_input(tmp_path, content, needle):
    good = tmp_path / "conformance.json"
    report.write_matrix(doc(), tmp_path)
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_text(content)
    p = cli("report", "--reports", str(tmp_path), "--current", str(good),
            "--baseline", str(bad))
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stdout + p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and needle in p.stderr, p.stderr
    # The same for a bad current matrix.
    p = cli("report", "--reports", str(tmp_path), "--current", str(bad), "--no-allure-html")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_report_cli_regenerates_pages(tmp_path):
    report.write_matrix(doc(), tmp_path)
    (tmp_path / "conformance.html").unlink()
    (tmp_path / "conformance.md").unlink()
    p = cli("report", "--reports", str(tmp_path), "--no-allure-html")
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "conformance.html").is_file() and (tmp_path / "conformance.md").is_file()
    assert "7 case(s): 1 pass" in p.stdout


def test_allure_step_says_one_line_without_java(tmp_path):
    """No java on PATH: one line, exit 0 from `harness report`, the pages still written."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("bash", "dirname", "realpath"):
        os.symlink(shutil.which(tool), tools / tool)
    report.write_matrix(doc(), tmp_path)
    (tmp_path / "allure-results").mkdir()
    (tmp_path / "allure-results" / "x-result.json").write_text("{}")
    p = subprocess.run([sys.executable, "-m", "harness", "report", "--reports", str(tmp_path)],
                       cwd=str(ROOT), capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PATH=str(tools)))
    assert p.returncode == 0, p.stdout + p.stderr
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("allure-report")]
    assert lines == [lines[0]] and "skipped: java not found" in lines[0], p.stdout
    assert (tmp_path / "conformance.html").is_file()


# --------------------------------------------------------------------------- categories

def _exconly(exc):
    return f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}"


def failure(*mismatches):
    return _exconly(ConformanceFailure("transfer/x", list(mismatches)))


#: Real failure texts (as pytest's exconly() renders them, made by the very checks the
#: verdict uses) -> the categories they belong to.
FAILURES = {
    "crash": (failure(C.outcome.OUTCOME(False, "completes", "src-crashed",
                                        "src QEMU was killed by signal 11 (SIGSEGV)")),
              "failed", {"QEMU crashed"}),
    "hang": (failure(C.outcome.OUTCOME(False, "completes", "hung",
                                       "dst QEMU hung: no QMP monitor after 30.0 s")),
             "failed", {"QEMU hung"}),
    "refused": (failure(C.outcome.OUTCOME(False, "completes", "dst-refused",
                                          "qemu-system-x86_64: bad cpr channel socket type")),
                "failed", {"QEMU refused a transfer it should accept"}),
    "accepted": (failure(C.outcome.OUTCOME(False, "src-refuses", "completed", "")),
                 "failed", {"QEMU did not refuse as documented"}),
    "message": (failure(C.outcome.MESSAGE(False, "must be unix", "other words")),
                "failed", {"QEMU refused with another message"}),
    "split-brain": (failure(C.source.STOPPED(False, "postmigrate, no RESUME",
                                             "RESUME +0.30 s", "a split brain")),
                    "failed", {"The old QEMU ran after the switch-over"}),
    "pattern": (failure(C.ram.PATTERN(False, "every page unchanged",
                                      "page 0x2000 (gpa 0x2000) changed")), "failed",
                {"RAM changed"}),
    "src-ram": (failure(C.outcome.SURVIVES_RAM(False, "pattern intact", "1 page changed")),
                "failed", {"RAM changed"}),
    "inode": (failure(C.ram.SAME_MEMORY(False, "the source's RAM file",
                                        "src inode 1 dst inode 2")),
              "failed", {"RAM not kept in place"}),
    "stream": (failure(C.ram.STREAM(False, "ram.normal == 0", "ram.normal 3",
                                    attempt="retry")), "failed", {"RAM not kept in place"}),
    "went-back": (failure(C.pause.MONOTONIC(False, "never", "went back", "a reset")),
                  "failed", {"Guest reset"}),
    "pause": (failure(C.pause.MEASURED(False, "a stall", "sampler died")), "failed",
              {"Guest pause not measured"}),
    "stall": (failure(C.states.PROGRESS(False, "> 10", "10",
                                        "the guest's counter must continue past its "
                                        "pre-transfer value")), "failed", {"Guest stalled"}),
    "stall+state": (failure(C.states.DST_STATE(False, "running", "paused"),
                            C.states.PROGRESS(False, "> 1", "1", attempt="retry")),
                    "failed", {"Wrong run state after the transfer"}),
    "reset": (failure(C.states.GUEST_RESET(False, "1", "2")), "failed", {"Guest reset"}),
    "retry": (failure(C.outcome.RETRY(False, "completes", "not attempted")),
              "failed", {"Retry after a refusal failed"}),
    "timeout": (_exconly(WaitTimeout("migration to complete", 60.0, 60.2,
                                     "active (target alive)", "src", "/r/src.log")),
                "broken", {"Harness timeout"}),
    "launch": (_exconly(VMLaunchFailure("dst", 1, ["qemu"], "/r/dst.log", "boom")),
               "broken", {"QEMU did not start"}),
    "other": (_exconly(QMPConnectionLost("src", "query-status", "EOF")), "broken",
              {"Other harness errors"}),
    "xfail": ("XFAIL known deviation: port 0 (docs/deviations.md#port-0)\n\n" +
              failure(C.outcome.OUTCOME(False, "dst-refuses", "failed")), "skipped",
              {"Known deviations (expected failures)"}),
    "skip": ("Skipped: /usr/bin/qemu-system-x86_64 has no object type memory-backend-epc",
             "skipped", {"Not supported here (skips)"}),
}


def test_every_check_category_is_one_allure_category():
    """Categories key on check ids, declared where each check is defined: every check
    falls in one, and a reworded title moves nothing."""
    from harness.run.checks import REGISTRY

    for d in REGISTRY.values():
        if d.id == "outcome" or d.id.startswith("selftest."):
            continue  # the outcome has its own; a self-test's family registers its own
        msg = failure(d(False, "x", "y"))
        got = categories_of(msg, "failed")
        assert got == {C.CATEGORIES[d.category].name}, (d, got)
        renamed = msg.replace(d.title, "a title reworded")
        assert categories_of(renamed, "failed") == got


def categories_of(message, status):
    """Like Allure: the first category whose status and whole-message regex match."""
    for c in report.CATEGORIES:
        if status in c["matchedStatuses"] and re.fullmatch(c["messageRegex"], message):
            return {c["name"]}
    return set()


@pytest.mark.parametrize("cause", sorted(FAILURES))
def test_categories_match_real_failure_texts(cause):
    """Allure matches a category's regex against the whole message (Java's matches())
    and takes the first category that matches; Python's fullmatch reads these regexes
    the same way. (The Allure test below checks the same texts with Allure itself.)"""
    message, status, want = FAILURES[cause]
    assert categories_of(message, status) == want, message


def test_environment_properties():
    text = report.environment_properties({"qemu_src": "10.0.2 (Debian 1:10.0.2)",
                                          "qemu_dst": "10.0.2", "accel": "kvm",
                                          "kernel": "6.1.0", "python": "3.11.7"})
    assert "QEMU.src = 10.0.2 (Debian 1:10.0.2)\n" in text and "accel = kvm\n" in text
    assert "host.kernel = 6.1.0\n" in text and "python = 3.11.7\n" in text


# --------------------------------------------------------------------------- end to end

E2E_CASES = ("transfer/unix-unix-memfd-immediate-q35", "channel/cpr-missing")
#: This test is about the reports, not the guest's pause: budgets no host load reaches
#: (the pause checks have their own self-tests, with broken targets), so another QEMU run
#: on this 2-core host cannot fail it.
LOAD_PROOF = ("--max-pause-ms", "60000", "--stall-floor-ms", "60000", "--max-stutter", "1")


def test_end_to_end_run(tmp_path):
    """`harness run` on two real cases: allure-results, the matrix, the Allure HTML."""
    reports = tmp_path / "reports"
    args = ["run", "--reports", str(reports), *LOAD_PROOF]
    for sid in E2E_CASES:
        args += ["--scenario", sid]
    p = cli(*args, timeout=240)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]

    # The matrix: both cases, verdict pass, in all three forms.
    d = report.load_matrix(reports / "conformance.json")
    verdicts = {c["id"]: c["verdict"] for c in d["cases"]}
    # --scenario also selects other tests that run the same scenario (e.g. a soak
    # chain on the base transfer): they are listed under their own ids.
    assert set(E2E_CASES) <= set(verdicts) and set(verdicts.values()) == {"pass"}, verdicts
    assert d["meta"]["qemu_src"].startswith("10.") and d["meta"]["accel"]
    by = {c["id"]: c for c in d["cases"]}
    assert by["transfer/unix-unix-memfd-immediate-q35"]["actual"]["outcome"] == "completed"
    assert by["channel/cpr-missing"]["actual"]["outcome"] == "src-refused"
    assert by["channel/cpr-missing"]["parameters"]["area"] == "channel"
    # One run: its id on the matrix, run.json, every case record, junit and Allure.
    run = json.loads((reports / "run.json").read_text())
    assert run["run_id"] == d["meta"]["run_id"] and d["meta"]["harness_commit"]
    assert d["meta"]["warnings"] == []
    junit = (reports / "junit.xml").read_text()
    assert f'name="cprh_run_id" value="{run["run_id"]}"' in junit
    assert f"run.id = {run['run_id']}" in (reports / "allure-results" /
                                           "environment.properties").read_text()
    for c in by.values():
        assert c["run"]["run_id"] == run["run_id"]
        # Every check listed, passes included; paths relative to the reports.
        assert c["checks"] and all("ok" in x for x in c["checks"])
        assert any(x["ok"] for x in c["checks"])
        for path in c["artifacts"].values():
            assert not os.path.isabs(path) and (reports / path).is_file(), path
    t = by["transfer/unix-unix-memfd-immediate-q35"]
    assert "timeline" in t["artifacts"] and dict(t["highlights"])["RAM file"].endswith(
        "the same file")
    for name in ("conformance.md", "conformance.html"):
        text = (reports / name).read_text()
        assert f"{len(verdicts)} case(s): {len(verdicts)} pass" in text
        for sid in E2E_CASES:
            assert sid in text
    assert "conformance matrix:" in p.stdout

    # allure-results: one result per case, with steps, labels, parameters, attachments.
    results_dir = reports / "allure-results"
    results = [json.loads(f.read_text()) for f in results_dir.glob("*-result.json")]
    results = [r for r in results if r["name"] in E2E_CASES]
    assert sorted(r["name"] for r in results) == sorted(E2E_CASES)
    for r in results:
        assert r["status"] == "passed"
        labels = {(x["name"], x["value"]) for x in r["labels"]}
        assert ("feature", r["name"].split("/")[0]) in labels and ("story", r["name"]) in labels
        severity = "normal" if r["name"].startswith("transfer/") else "critical"
        assert ("severity", severity) in labels
        params = {x["name"]: x["value"] for x in r["parameters"]}
        for key in ("main channel", "cpr channel", "backend", "incoming", "accel", "machine",
                    "smp", "qemu version"):
            assert key in params, params
        steps = [s["name"] for s in r["steps"]]
        assert steps[0] == "probe QEMU binaries" and "transfer" in steps
        attached = {a["name"] for a in r["attachments"]}
        for want in ("checks and evidence", "src command line", "dst command line",
                     "src QMP transcript", "src QEMU log", "src serial console",
                     "query-migrate (src)", "evidence"):
            assert want in attached, attached
        # No empty attachment: a target that said nothing has no log attached.
        case_dir = reports / by[r["name"]]["case_dir"]
        assert ("dst QEMU log" in attached) == ((case_dir / "dst.log").stat().st_size > 0)
        for a in r["attachments"]:
            assert (results_dir / a["source"]).stat().st_size > 0, a
        assert ("run_id", d["meta"]["run_id"]) in labels
        assert not any(v.startswith("'") for v in params.values()), params
        # Each target's own transcript: a refused one never got a monitor, its retry did.
        assert {"dst QMP transcript", "dst-retry QMP transcript"} & attached, attached
        for a in r["attachments"]:
            assert (results_dir / a["source"]).is_file()
    assert "accel = " in (results_dir / "environment.properties").read_text()
    names = {c["name"] for c in json.loads((results_dir / "categories.json").read_text())}
    assert {"QEMU crashed", "Harness timeout", "RAM changed", "Guest stalled"} <= names

    # The Allure HTML report, or one line saying why not.
    missing = allure_missing()
    if missing:
        assert "allure-report: skipped" in p.stdout
    else:
        assert (reports / "allure-report" / "index.html").is_file(), p.stdout
        assert (reports / "allure-report.html").stat().st_size > 100_000


def _synthetic_allure_results(results):
    """One Allure result per failure text above, as allure-pytest writes them."""
    results.mkdir(parents=True)
    for i, (cause, (message, status, _)) in enumerate(sorted(FAILURES.items())):
        r = {"uuid": str(uuid.uuid4()), "historyId": f"h{i}", "name": f"case/{cause}",
             "fullName": f"suites.x#{cause}", "status": status, "stage": "finished",
             "statusDetails": {"message": message, "trace": "trace"},
             "start": 1_700_000_000_000 + i, "stop": 1_700_000_000_500 + i,
             "labels": [{"name": "feature", "value": "case"},
                        {"name": "story", "value": f"case/{cause}"}]}
        (results / f"{r['uuid']}-result.json").write_text(json.dumps(r))
    passed = {"uuid": str(uuid.uuid4()), "historyId": "hp", "name": "case/passes",
              "fullName": "suites.x#passes", "status": "passed", "stage": "finished",
              "start": 1_700_000_000_000, "stop": 1_700_000_000_100, "labels": []}
    (results / f"{passed['uuid']}-result.json").write_text(json.dumps(passed))
    report.write_allure_extras(results, {"qemu_src": "10.0.2", "qemu_dst": "10.0.2",
                                         "accel": "kvm"})


@pytest.mark.skipif(bool(allure_missing()), reason=allure_missing() or "-")
def test_allure_html_report_groups_failures_by_cause(tmp_path):
    """Allure itself (Java) puts each real failure text into the intended category;
    a second generation carries the first one's history (trend)."""
    reports = tmp_path / "reports"
    _synthetic_allure_results(reports / "allure-results")
    status, line = report.generate_allure(reports)
    assert status == report.ALLURE_OK, line
    out = reports / "allure-report"
    tree = json.loads((out / "data" / "categories.json").read_text())
    got = {}
    for cat in tree["children"]:
        for group in cat["children"]:
            for test in group["children"]:
                got.setdefault(test["name"].split("/", 1)[1], set()).add(cat["name"])
    for cause, (_, _, want) in FAILURES.items():
        assert got.get(cause) == want, (cause, got.get(cause))
    assert "passes" not in got
    env = json.loads((out / "widgets" / "environment.json").read_text())
    assert {"name": "accel", "values": ["kvm"]} in env
    assert (reports / "allure-report.html").is_file()

    # History: the next report's trend has two builds.
    status, line = report.generate_allure(reports)
    assert status == report.ALLURE_OK, line
    trend = json.loads((out / "widgets" / "history-trend.json").read_text())
    assert len(trend) == 2 and trend[0]["buildOrder"] == 2, trend


# --------------------------------------------------------------------------- a look


def chromium(url, *args, timeout=90):
    profile = tempfile.mkdtemp(prefix="cprh-chromium-")
    try:
        return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                               "--disable-quic", "--no-first-run",
                               "--disable-background-networking", "--disable-component-update",
                               "--disable-sync", f"--user-data-dir={profile}",
                               "--virtual-time-budget=5000", *args, url],
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def test_html_reports_render(tmp_path):
    """Both HTML reports, rendered by a real browser: a screenshot, and a DOM that
    shows the cases, their verdicts, and (Allure) the categories. Chromium comes from
    scripts/setup-report-tools.sh (./run tests): without it this fails, never skips."""
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: scripts/setup-report-tools.sh (./run tests "
                    "runs it)", pytrace=False)
    paths = report.write_matrix(doc(), tmp_path)
    shot = tmp_path / "conformance.png"
    p = chromium(paths["html"].as_uri(), f"--screenshot={shot}", "--window-size=1400,1000")
    assert shot.is_file() and shot.stat().st_size > 20_000, p.stderr[-2000:]
    dom = chromium(paths["html"].as_uri(), "--dump-dom").stdout
    assert "7 case(s): 1 pass, 1 fail, 2 error, 1 xfail, 1 xpass, 1 skip" in dom
    for r in doc()["cases"]:
        assert r["id"] in dom and f'data-verdict="{r["verdict"]}"' in dom

    if allure_missing():
        pytest.skip(f"Allure part: {allure_missing()}")
    reports = tmp_path / "reports"
    _synthetic_allure_results(reports / "allure-results")
    status, line = report.generate_allure(reports)
    assert status == report.ALLURE_OK, line
    single = (reports / "allure-report.html").as_uri()
    shot = tmp_path / "allure.png"
    p = chromium(single, f"--screenshot={shot}", "--window-size=1400,1000")
    assert shot.is_file() and shot.stat().st_size > 20_000, p.stderr[-2000:]
    dom = chromium(single + "#categories", "--dump-dom").stdout
    for name in ("cpr-transfer conformance", "QEMU crashed", "Harness timeout",
                 "RAM changed", "Guest stalled", "Known deviations (expected failures)"):
        assert name in dom, name
