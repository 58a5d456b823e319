"""Self-tests of what a reader sees of one run: every check (passes included), the
evidence digest and a soak chain's hops, the grid and the verdict filter of
conformance.html, links to each deviation's doc, one run per reports directory (its
id everywhere, a warning when inputs disagree), Allure's results tidied and its
categories per deviation, and the sampler's timeline picture."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.run.identity import RunIdentity, establish
from harness.scenario import catalogue, expectations
from harness.scenario.catalogue import SLOW_REASON
from harness.tools import report
from harness.tools.report import allure_results, area_grid, case_view, digest, runs

pytestmark = pytest.mark.selftest
ROOT = Path(__file__).resolve().parents[2]

CHECKS = [
    {"check": "same memory mapped by the target", "ok": True,
     "expected": "the source's RAM file (same inode)", "actual": "src inode 474, dst inode 474",
     "detail": ""},
    {"check": "RAM pattern intact", "ok": True, "expected": "every page unchanged",
     "actual": "pattern intact: 65535 page(s)", "detail": ""},
    {"check": "guest progress", "ok": False, "expected": "> 192057", "actual": 192057,
     "detail": "the guest's counter must keep increasing"},
]
def _result():
    """A result record as the pair driver writes it (built from the very records)."""
    from harness.core.sides import Side
    from harness.evidence.memory import Region, SameMemfdEvidence
    from harness.evidence.pattern import PatternReport
    from harness.evidence.pause import Budgets, PauseFigures, StallStats
    from harness.evidence.stream import StreamFigures
    from harness.qemu.states import RunState
    from harness.run.records import (AttemptEvidence, AttemptRecord, GuestSeen, Role,
                                     WatchRecord, WindowRecord)
    from harness.run.result import PairResult
    from harness.scenario.model import Observed

    region = (Region(0x7f00, 0x8f00, 0),)
    same = SameMemfdEvidence(256 << 20, 10, 11, "/memfd:x (deleted)", 474, 1, region, 20, 13,
                             "/memfd:x (deleted)", 474, 1, region)
    pattern = PatternReport(1, "q35", 256 << 20, 65535, 268431360, 0, (), (), (), 1.3, ())
    window = WindowRecord(1.0, 1.01, (
        WatchRecord("target", "dst", Side.DST, RunState.RUNNING, ((RunState.RUNNING, 21),),
                    anchor_seen=True, observed_s=1.01, guest=GuestSeen(226714, 559723, 1)),
        WatchRecord("source", "src", Side.SRC, RunState.POSTMIGRATE,
                    ((RunState.POSTMIGRATE, 21),), anchor_seen=True, observed_s=1.01,
                    vcpu_ms=0.0, console_bytes_after=0)))
    a = AttemptRecord(Role.FIRST, "first", Observed.COMPLETED, "", {"status": "completed"},
                      src_state=RunState.POSTMIGRATE, dst_state=RunState.RUNNING,
                      counter_reference=192057, counter_after=226714, boots_after=1,
                      counter_moved=True, window=window, evidence=AttemptEvidence(
                          True, True, same, StreamFigures(0, 0, 77719), pattern,
                          pause=PauseFigures(
                              switch_ms=9.88, switch_max_ms=10.41, switch_at_ms=402.5,
                              qemu_downtime_ms=5, baseline=StallStats(0.5, 4.0, 0.0, 0, (4.0,)),
                              window=StallStats(1.05, 4.0, 0.0, 0, (4.0, 2.1)),
                              budgets=Budgets(250.0, 50.0, 2.0, 0.2))))
    r = PairResult(catalogue.get("transfer/unix-unix-memfd-immediate-q35"),
                   src_state_before=RunState.RUNNING, counter_before=192057, boots_before=1,
                   attempts=[a], artifacts={"src.log": "src.log", "timeline": "timeline.png"})
    d = json.loads(json.dumps(r.to_dict()))
    d.update({"id": r.scenario.id, "checks": CHECKS, "mismatches": [CHECKS[2]],
              "case_dir": "cases/test_transfer_unix",
              "run": {"run_id": "r1", "commit": "abc", "started": "2026-12-01T00:00:00Z"}})
    return d


RESULT = _result()
DEVIATION = {"id": "port-0", "link": "docs/deviations.md#port-0", "reason": "no refusal"}


def rec(verdict="fail", result=RESULT, sid=None, **kw):
    params = {"id": sid or result["id"], "area": (sid or result["id"]).split("/")[0],
              "main": "unix", "cpr": "unix", "backend": "memfd", "incoming": "immediate",
              "machine": "q35", "guest": "x86-bios", "expect": "completes"}
    params.update(kw)
    return report.case_record(f"t[{params['id']}]", verdict, "why", params, result)


def test_every_check_is_listed_with_expected_and_observed():
    r = rec()
    assert [c["ok"] for c in r["checks"]] == [True, True, False]
    table = case_view.checks_table(r["checks"])
    assert "3 checks, 1 failed" in table
    assert table.count(">ok<") == 2 and table.count(">FAILED<") == 1
    assert "src inode 474, dst inode 474" in table and "65535 page(s)" in table
    assert "the guest&#x27;s counter must keep increasing" in table


def test_the_digest_says_the_evidence_in_labelled_lines():
    h = dict(rec()["highlights"])
    assert h["guest counter"].startswith("192057 before -> 226714 on the target")
    assert h["RAM file"].endswith("inode 474; dst inode 474: the same file"), h
    assert h["main stream"].startswith("0 RAM pages")
    assert "switch-over 9.88..10.41 ms" in h["guest pause"], h["guest pause"]
    assert "QEMU's downtime 5 ms" in h["guest pause"]
    assert h["baseline before the transfer"].startswith("0 stall(s) in 0.5 s")
    assert "longest 4, 2.1 ms" in h["stalls after the switch-over"]
    assert h["window on the target"].startswith("1.01 s, query-status running x21")
    assert h["window on the source"].startswith("1.01 s, query-status postmigrate x21")
    assert "vCPU threads ran 0 ms" in h["window on the source"]
    assert h["run states"] == "src before running, src after postmigrate, dst after running"


def test_a_soak_record_has_one_row_per_hop():
    window = {"watches": [{"role": "target", "observed_s": 1.0, "polls": [["running", 20]],
                           "guest": {"counter_start": 100, "counter_end": 150}}]}
    hops = [{"hop": i, "ram_inode": 7, "open_fds": 25, "rss_anon_kib": 11932, "threads": 5,
             "attempt": {"observed": "completed", "query_migrate": {"downtime": 2 + i},
                         "counter_after": 100 * i, "boots_after": 1, "window": window}}
            for i in (1, 2, 3)]
    res = {"id": "transfer/x", "observed": "completed", "hops": hops, "checks": CHECKS[:1]}
    r = rec("pass", res, sid="soak/chain-3-hops")
    assert [h["hop"] for h in r["hops"]] == [1, 2, 3]
    assert r["hops"][1]["downtime ms"] == 4 and r["hops"][1]["RAM inode"] == 7
    assert r["hops"][0]["window"] == "1 s, query-status running x20; counter 100 -> 150; " \
        "no forbidden event"
    assert r["actual"] == {"outcome": "completed", "message": ""}
    html = case_view.details(r)
    assert html.count("<tr><td>") == 3 and "RSS anon KiB" in html


def test_artifact_paths_are_relative_to_the_reports():
    r = rec()
    assert r["artifacts"] == {"src.log": "cases/test_transfer_unix/src.log",
                              "timeline": "cases/test_transfer_unix/timeline.png"}
    html = case_view.details(r)
    assert 'src="cases/test_transfer_unix/timeline.png"' in html
    assert 'href="cases/test_transfer_unix/src.log"' in html


def _doc(warnings=()):
    recs = [rec("pass", sid="transfer/unix-unix-memfd-immediate-q35"),
            rec("xfail", sid="transfer/fd-unix-memfd-immediate-q35", main="fd"),
            rec("pass", sid="transfer/unix-fd-memfd-defer-q35", cpr="fd", incoming="defer"),
            rec("skip", sid="memory/epc", backend="epc")]
    # As the adapters hand it over: the record carries the doc section's text.
    recs[1]["deviation"] = report.case_record("t", "xfail", "why", recs[1]["parameters"], None,
                                              deviation=DEVIATION)["deviation"]
    d = report.matrix(recs, {"run_id": "r1", "harness_commit": "abc",
                             "run_started": "2026-12-01T00:00:00Z"})
    d["meta"]["warnings"] = list(warnings)
    return d


def test_the_matrix_page_has_a_grid_per_area_and_a_verdict_filter(tmp_path):
    page = report.render_html(_doc(), base=ROOT / "reports")
    grid = page.split('<table class="grid">')[1].split("</table>")[0]
    assert "main channel \\ cpr channel, incoming" in grid
    assert "<th>cpr fd, defer</th>" in grid and "<th>cpr unix, immediate</th>" in grid
    assert re.search(r'<a class="tile xfail" data-verdict="xfail" '
                     r'href="#row-transfer/fd-unix-memfd-immediate-q35"[^>]*>memfd-q35</a>', grid)
    # A filter checkbox per verdict, a search box; every row and tile carries its verdict.
    for v in report.VERDICTS:
        assert f'data-v="{v}"' in page
    assert 'id="q"' in page and 'id="row-memory/epc"' in page
    # The deviation links its text on this page, carried in the record from
    # docs/deviations.md: nothing links out of the reports directory.
    assert 'href="#deviation-port-0"' in page and '<li id="deviation-port-0">' in page
    assert "the target listens on an ephemeral port" not in DEVIATION["reason"]
    assert "tcp:127.0.0.1:0" in page  # from the doc's section, in the page
    assert "deviations.md#" not in page.replace("(docs/deviations.md)", "")
    assert "run r1, harness abc, started 2026-12-01T00:00:00Z" in page
    for other in (tmp_path, None):
        assert "href=\"../docs" not in report.render_html(_doc(), base=other)


def test_a_page_warns_when_its_inputs_disagree():
    page = report.render_html(_doc(["the matrix is of run r0, run.json of run r1"]))
    assert '<div class="warn"><b>Warning:</b> the matrix is of run r0' in page
    md = report.render_markdown(_doc(["x"]))
    assert "> **Warning:** x" in md and "run r1, harness abc" in md


def test_disagreements_between_run_json_matrix_cases_and_allure(tmp_path):
    runs.write_run(tmp_path, {"run_id": "r1", "commit": "abc", "started": "s"})
    doc = _doc()
    assert runs.disagreements(tmp_path, doc) == []
    (tmp_path / "cases" / "old").mkdir(parents=True)
    (tmp_path / "cases" / "old" / "result.json").write_text(json.dumps({"run": {"run_id": "r0"}}))
    alluredir = tmp_path / "allure-results"
    alluredir.mkdir()
    (alluredir / "environment.properties").write_text("run.id = r0\n")
    (alluredir / "a-result.json").write_text(json.dumps(
        {"labels": [{"name": "run_id", "value": "r0"}]}))
    doc["meta"]["run_id"] = "r0"
    found = runs.disagreements(tmp_path, doc)
    assert "the matrix is of run r0, run.json of run r1" in found
    assert any(w.startswith("1 case directories of another run") for w in found)
    assert "allure-results' environment is of run r0, not r1" in found
    assert "allure-results holds results of other runs: r0 (1)" in found
    runs.start(tmp_path)
    assert not (tmp_path / "cases").exists() and not (tmp_path / "run.json").exists()
    assert alluredir.is_dir()  # not this function's unless asked


def test_run_identity_is_made_once_and_inherited():
    env = {}
    a = establish(env)
    assert env["CPRH_RUN_ID"] == a.run_id and re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{6}", a.run_id)
    b = establish(dict(env))
    assert (b.run_id, b.started) == (a.run_id, a.started)
    c = establish(env, fresh=True)  # a run started from within another is its own
    assert c.run_id != a.run_id and env["CPRH_RUN_ID"] == c.run_id
    assert isinstance(a, RunIdentity) and a.commit


def _write(path, doc):
    path.write_text(json.dumps(doc))


def test_allure_results_are_tidied(tmp_path):
    (tmp_path / "att-empty.txt").write_text("")
    (tmp_path / "att-full.txt").write_text("x")
    _write(tmp_path / "1-result.json", {
        "name": "test_transfer[fd-unix]", "status": "skipped", "start": 2000,
        "statusDetails": {"message": "XFAIL known deviation: r (docs/deviations.md#port-0)"
                                     "\n\nconftest.ConformanceMismatch: case-specific text",
                          "trace": "tb"},
        "labels": [{"name": "story", "value": "transfer/fd-unix"}],
        "parameters": [{"name": "scenario", "value": "Scenario(id='transfer/fd-unix', ...)"},
                       {"name": "main channel", "value": "'fd'"},
                       {"name": "machine type", "value": "'q35'"},
                       {"name": "smp", "value": "1"},
                       {"name": "machine type", "value": "'pc-q35-11.1'"}],
        "attachments": [{"name": "empty", "source": "att-empty.txt"},
                        {"name": "full", "source": "att-full.txt"},
                        {"name": "gone", "source": "nope.txt"}]})
    _write(tmp_path / "2-result.json", {"name": "old", "status": "passed", "start": 10})
    _write(tmp_path / "3-container.json", {
        "befores": [{"name": "case_dir"}],
        "afters": [{"name": "case_dir::<lambda>", "status": "passed"},
                   {"name": "cpr_case::<lambda>", "status": "broken"}]})
    t = allure_results.tidy(tmp_path, "r1", 1000)
    r = json.loads((tmp_path / "1-result.json").read_text())
    assert r["name"] == "transfer/fd-unix"
    assert [(p["name"], p["value"]) for p in r["parameters"]] == [
        ("scenario", "transfer/fd-unix"), ("main channel", "fd"), ("smp", "1"),
        ("machine type", "pc-q35-11.1")]
    assert r["statusDetails"]["message"] == "XFAIL known deviation: r (docs/deviations.md#port-0)"
    assert "case-specific text" in r["statusDetails"]["trace"]
    assert [a["name"] for a in r["attachments"]] == ["full"]
    assert not (tmp_path / "att-empty.txt").exists()
    c = json.loads((tmp_path / "3-container.json").read_text())
    assert [a["name"] for a in c["afters"]] == ["cpr_case::<lambda>"]  # a failed one stays
    assert t.runs == {"r1": 1, "(older run)": 1} and t.mixed and "2 runs" in t.describe()


def _matches(cat, status, message):
    # Allure matches a category's regex against the whole message (Java's matches()).
    return status in cat["matchedStatuses"] and re.fullmatch(cat["messageRegex"], message)


def test_allure_has_a_category_per_known_deviation_and_opt_in_skips_apart():
    devs = [d.to_dict() for d in expectations.load(expectations.DEFAULT_FILE,
                                                   catalogue.SCENARIOS)]
    # One deviation may have several entries (the same defect seen from either side).
    assert len({d["id"] for d in devs}) >= 4
    assert len({c["name"] for c in report.allure.categories(devs)}) == \
        len(report.allure.categories(devs)), "a category per deviation, once"
    cats = report.allure.categories(devs)

    def first(status, message):
        return next(c["name"] for c in cats if _matches(c, status, message))

    for d in devs:
        msg = f"XFAIL known deviation: {d['reason']} ({d['link']})"
        assert first("skipped", msg) == f"Known deviation: {d['id']}"
    assert first("skipped", "XFAIL known deviation: new (docs/x.md#y)") == \
        "Known deviations (expected failures)"
    assert first("skipped", f"Skipped: {SLOW_REASON}") == "Opt-in cases not run (--slow)"
    assert first("skipped", "Skipped: no memory-backend-epc here") == "Not supported here (skips)"


def test_the_timeline_picture_is_drawn(tmp_path):
    from harness.evidence import timeline

    ms = 1_000_000
    tl = {"t0_ns": 0, "trace": [[i * ms, i * 10 if i < 100 or i > 110 else 1000]
                                for i in range(300)],
          "spans": [[5 * ms, 7 * ms, 50], [100 * ms, 110 * ms, 1000]],
          "marks": [{"label": "transfer", "t_ns": 80 * ms},
                    {"label": "src-stop", "t_ns": 101 * ms},
                    {"label": "dst-resume", "t_ns": 109 * ms},
                    {"label": "resumed", "t_ns": 115 * ms},
                    {"label": "window-end", "t_ns": 290 * ms}], "threshold_ns": 50_000}
    # Time zero is the source's migrate: the pause is drawn where the check says it is.
    pause = {"switch_ms": 10.0, "switch_max_ms": 10.4, "switch_span_ms": [20.0, 30.0],
             "switch_max_span_ms": [19.8, 30.2], "qemu_downtime_ms": 8}
    assert timeline.switch_spans(pause) == ((20.0, 30.0), (19.8, 30.2))
    assert timeline.zoom_range(tl, pause, -80.0, 219.0) == pytest.approx((-20.2, 190.2))
    written = timeline.write(tl, pause, str(tmp_path / "t.json"), str(tmp_path / "t.png"),
                             "case")
    assert written == [str(tmp_path / "t.json"), str(tmp_path / "t.png")]
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "t.json").read_text())["pause"]["switch_ms"] == 10.0
    assert timeline.caption(pause).startswith("switch-over pause 10..10.4 ms")
    # Nothing to draw: the series only.
    assert timeline.write({**tl, "trace": []}, {}, str(tmp_path / "e.json"),
                          str(tmp_path / "e.png")) == [str(tmp_path / "e.json")]


def test_a_conformance_run_replaces_only_its_own_reports(tmp_path):
    """A run clears the last run's matrix and cases in *its* reports directory and
    nowhere else (``./run tests`` points its own at .test-reports/)."""
    mine, users = tmp_path / "mine", tmp_path / "users"
    for d in (mine, users):
        (d / "cases" / "stale").mkdir(parents=True)
        (d / "conformance.json").write_text("{}")
    p = subprocess.run([sys.executable, "-m", "pytest", "suites/conformance", "-p",
                        "no:cacheprovider", "-q", "--reports", str(mine), "--scenario",
                        "version/unpinned-machine-q35"], cwd=str(ROOT), capture_output=True,
                       text=True, timeout=240, env=dict(os.environ, CPRH_REPORTS=str(users)))
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert not (mine / "cases" / "stale").exists()
    doc = report.load_matrix(mine / "conformance.json")
    assert [c["id"] for c in doc["cases"]] == ["version/unpinned-machine-q35"]
    assert doc["meta"]["run_id"] == json.loads((mine / "run.json").read_text())["run_id"]
    assert (users / "cases" / "stale").is_dir() and (users / "conformance.json").read_text() == "{}"
    run_script = (ROOT / "run").read_text()
    assert "--reports .test-reports" in run_script


def test_grid_tiles_say_what_the_axes_do_not():
    r = rec("pass", sid="transfer/unix-unix-file-shm-immediate-q35-linux", backend="file-shm")
    assert area_grid.tile_label(r) == "file-shm-q35-linux"
    assert area_grid.render("memory", [rec("skip", sid="memory/epc")]) == ""  # one cell
    assert digest.HOP_COLUMNS[0] == "hop"


def test_the_pause_distribution_reads_result_records(tmp_path):
    """`harness pauses` (what the budgets are set from) reads the records a run writes;
    a case failing another check is left out (its stalls are not the host's)."""
    from harness.tools import pauses

    good = dict(RESULT, accel="kvm", checks=[c for c in CHECKS if c["ok"]])
    bad = dict(RESULT, accel="kvm", id="transfer/x")
    for name, rec in (("a", good), ("b", bad)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "result.json").write_text(json.dumps(rec))
    found = pauses.rows([str(tmp_path)])
    assert [r["id"] for r in found] == [RESULT["id"]]
    r = found[0]
    assert r["switch_ms"] == 9.88 and r["width_ms"] == pytest.approx(0.53)
    assert r["window_longest_ms"] == 4.0 and r["share_over_baseline"] == 0.0
    text = pauses.table(found)
    assert text.startswith("kvm: 1 case(s), 0 failing a pause check"), text
    p = subprocess.run([sys.executable, "-m", "harness", "pauses", str(tmp_path / "nope")],
                       cwd=str(ROOT), capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "no such directory" in p.stderr
