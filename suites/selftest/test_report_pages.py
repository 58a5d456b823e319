"""The pages as a reader gets them, read in headless Chromium from a small real run: a
pass (with its timeline), a refusal and its retry, a fault that kills the source, the
known deviation of a target killed mid-stream, a skip. conformance.html (also filtered
to one verdict), every case's own page and the Allure single file must hold no dead
link, no link out of the reports directory, no Python word or repr, no note cut
mid-word; the filter leaves no empty grid; the Allure folder and single file carry the
same test ids, each check a step.

Chromium and Java come from ``scripts/setup-report-tools.sh`` (``./run tests`` runs it):
a missing one fails these tests with that line, it never skips them."""
import html.parser
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from harness.core.errors import reads_like_python
from harness.tools.report.text import ELLIPSIS

pytestmark = pytest.mark.selftest
ROOT = Path(__file__).resolve().parents[2]

SCENARIOS = ("transfer/unix-unix-memfd-immediate-q35", "channel/cpr-missing",
             "fault/src-killed-during-main", "fault/dst-killed-during-main", "memory/epc")
SETUP = "scripts/setup-report-tools.sh (./run tests runs it)"
#: Chromium as the docs say to start it: headless, no sandbox (root), nothing from the
#: network, an empty profile of its own.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--virtual-time-budget=8000")


def chromium_binary() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail(f"chromium is not installed: {SETUP}", pytrace=False)
    return found


def chromium(url: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp(prefix="cprh-chromium-")
    try:
        return subprocess.run([chromium_binary(), *FLAGS, f"--user-data-dir={profile}",
                               *args, url], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def dom(url: str) -> str:
    p = chromium(url, "--dump-dom")
    assert p.returncode == 0 and "<html" in p.stdout, p.stderr[-2000:]
    return p.stdout


class Page(html.parser.HTMLParser):
    """What a rendered DOM shows and links: visible text (with the title of the element
    it sits in), hrefs and srcs, ids, and elements hidden by the filter."""
    VOID = {"br", "img", "input", "meta", "link", "col", "hr", "wbr", "source"}

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.links: List[str] = []
        self.ids = set()
        self.texts: List[Tuple[str, Optional[str]]] = []
        self.hidden: List[Dict[str, str]] = []
        self.code = set()
        self._stack: List[Tuple[str, Dict[str, str]]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        for key in ("href", "src"):
            if a.get(key):
                self.links.append(a[key])
        if a.get("id"):
            self.ids.add(a["id"])
        if "display: none" in a.get("style", ""):
            self.hidden.append(dict(a, tag=tag))
        if tag not in self.VOID:
            self._stack.append((tag, a))

    def handle_endtag(self, tag):
        while self._stack:
            if self._stack.pop()[0] == tag:
                break

    def handle_data(self, data):
        if not data.strip() or any(t in ("script", "style") for t, _ in self._stack):
            return
        title = next((a.get("title") for _, a in reversed(self._stack) if a.get("title")), None)
        self.texts.append((data, title))
        if any(t in ("code", "pre") for t, _ in self._stack):
            self.code.add(len(self.texts) - 1)  # QEMU's or QMP's own text: JSON is fine


def problems(page: Page, where: Path, reports: Path) -> List[str]:
    """Dead links, links out of the reports, Python words, notes cut mid-word."""
    out = []
    for link in page.links:
        if link.startswith("#"):
            if not (link[1:] in page.ids or re.fullmatch(r"#only-\w+", link)):
                out.append(f"{where.name}: link to a missing anchor {link}")
            continue
        if re.match(r"[a-z]+:", link):
            out.append(f"{where.name}: link out of the reports: {link}")
            continue
        target = (where.parent / link.split("#")[0]).resolve()
        if not target.is_file():
            out.append(f"{where.name}: dead link {link}")
        elif reports.resolve() not in target.parents:
            out.append(f"{where.name}: link out of the reports: {link}")
    for i, (text, title) in enumerate(page.texts):
        words = text.strip()
        if re.search(r"\b(None|True|False)\b|<[A-Za-z_.]+ object at ", words) or (
                i not in page.code and reads_like_python(words)):
            out.append(f"{where.name}: Python in the text: {words[:200]!r}")
        if re.search(r"(?<![\d.])\b1 (checks|cases|stalls|pages|reads)\b", words):
            out.append(f"{where.name}: a count that reads wrong: {words[:200]!r}")
        if re.search(r"\w\.\.\.(?!\.)", text):
            out.append(f"{where.name}: a text cut mid-word: {text.strip()[-120:]!r}")
        if ELLIPSIS in text and not (title and len(title) > len(text.strip())):
            out.append(f"{where.name}: shortened without its whole text: {text.strip()[-120:]!r}")
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """One small run of the real harness, with the Allure report."""
    reports = tmp_path_factory.mktemp("pages") / "reports"
    args = [sys.executable, "-m", "harness", "run", "--reports", str(reports)]
    for sid in SCENARIOS:
        args += ["--scenario", sid]
    p = subprocess.run(args, cwd=str(ROOT), capture_output=True, text=True, timeout=600)
    # Exit 1 is a case that failed its checks (on this loaded host, a guest stall can):
    # its pages must read as well as any other's. Anything else is not a run.
    assert p.returncode in (0, 1), p.stdout[-3000:] + p.stderr[-3000:]
    assert (reports / "conformance.json").is_file(), p.stdout[-3000:]
    if not shutil.which("java"):
        pytest.fail(f"java is not installed: {SETUP}", pytrace=False)
    assert (reports / "allure-report.html").is_file(), p.stdout[-2000:]
    return reports


def test_the_run_holds_exactly_the_named_scenarios(run):
    doc = json.loads((run / "conformance.json").read_text())
    assert sorted(c["id"] for c in doc["cases"]) == sorted(SCENARIOS)
    verdicts = {c["id"]: c["verdict"] for c in doc["cases"]}
    assert verdicts["memory/epc"] == "skip" and verdicts["fault/dst-killed-during-main"] in (
        "xfail", "fail"), verdicts


def test_the_matrix_page_in_chromium(run):
    path = run / "conformance.html"
    page = Page(dom(path.as_uri()))
    assert problems(page, path, run) == []
    for sid in SCENARIOS:
        assert f"row-{sid}" in page.ids
    text = " ".join(t for t, _ in page.texts)
    # The deviation's text is on the page; the run's files are linked; no "QEMU said".
    assert "How the fault is placed:" in text and "QEMU said" not in text
    for name in ("conformance.json", "junit.xml", "allure-report.html"):
        assert name in page.links
    # Filtered to the known deviations: every area, grid row and grid without one goes.
    only = Page(dom(path.as_uri() + "#only-xfail"))
    hidden_areas = {h.get("id") for h in only.hidden if h["tag"] == "section"}
    assert hidden_areas == {"area-transfer", "area-channel", "area-memory"}, hidden_areas
    assert not any(h.get("data-verdict") == "xfail" for h in only.hidden)
    # A link to a case's row opens its checks and evidence.
    opened = dom(path.as_uri() + "#row-fault/src-killed-during-main")
    assert '<details id="case-fault/src-killed-during-main" open' in opened


def test_every_case_page_in_chromium(run):
    pages = sorted(run.glob("cases/*/case.html"))
    assert len(pages) == len(SCENARIOS) - 1  # the skip ran nothing
    found = []
    for path in pages:
        page = Page(dom(path.as_uri()))
        found += problems(page, path, run)
        assert "result.json" in page.links and "../../conformance.html" in " ".join(page.links)
    assert found == []
    text = (run / "cases/test_fault_fault_src-killed-during-main/case.html").read_text()
    assert "ended by the case: dst QEMU exited with code 1" in text
    assert "src QEMU was killed by signal 9 (SIGKILL)" in text and "none died<" not in text


def _embedded_ids(single: str) -> set:
    return set(re.findall(r"d\('data/test-cases/([0-9a-f]+)\.json'", single))


def test_the_allure_single_file_in_chromium(run):
    single = run / "allure-report.html"
    folder = {p.stem for p in (run / "allure-report/data/test-cases").glob("*.json")}
    assert folder and _embedded_ids(single.read_text()) == folder
    overview = dom(single.as_uri())
    assert "Failed to fetch" not in overview and "cpr-transfer conformance" in overview
    assert "The trend starts with the second run" in single.read_text()
    # A case's steps: each check one of them, in words.
    case = next(json.loads(p.read_text()) for p in
                (run / "allure-report/data/test-cases").glob("*.json")
                if json.loads(p.read_text())["name"] == "fault/dst-killed-during-main")
    shown = dom(f"{single.as_uri()}#testresult/{case['uid']}")
    assert "judge the result" in shown
    assert "outcome: expected fails, got completed" in shown
    assert "Failed to fetch" not in shown
    # The folder, opened from disk, says it must be served.
    index = (run / "allure-report/index.html").read_text()
    assert "cprh-file-note" in index and 'href="../allure-report.html"' in index


def test_junit_is_small_and_says_the_checks(run):
    junit = (run / "junit.xml").read_text()
    assert len(junit) < 6000 * len(SCENARIOS), len(junit)
    assert '"checks"' not in junit and '{"' not in junit  # no record as JSON
    assert "ok      outcome [outcome]: completed" in junit
    assert 'name="cpr_result" value="cases/' in junit
    assert str(ROOT) not in junit and str(run) not in junit
