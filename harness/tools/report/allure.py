"""What Allure gets beyond the test results: environment, categories, the executor
(history numbering), and building the HTML with ``scripts/allure-report.sh``."""
from __future__ import annotations

import json
import re
import socket
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from harness.tools.report.records import ROOT, default_paths, host_facts, _one_line

ALLURE_SCRIPT = ROOT / "scripts" / "allure-report.sh"

# --------------------------------------------------------------------------- Allure


def environment_properties(meta: Mapping[str, Any]) -> str:
    """Allure's environment.properties: the run's facts, one ``key = value`` a line."""
    keys = (("run.id", "run_id"), ("run.started", "run_started"),
            ("harness.commit", "harness_commit"), ("WARNING", "warning"),
            ("QEMU.src", "qemu_src"), ("QEMU.dst", "qemu_dst"),
            ("QEMU.aarch64.src", "qemu_aarch64_src"), ("QEMU.aarch64.dst", "qemu_aarch64_dst"),
            ("accel", "accel"), ("dialect", "dialect"),
            ("host.kernel", "kernel"), ("host", "host"), ("arch", "arch"),
            ("python", "python"), ("QEMU.src.path", "qemu_src_path"),
            ("QEMU.dst.path", "qemu_dst_path"))
    lines = []
    for label, key in keys:
        value = meta.get(key)
        if value is None:
            continue
        # .properties: escape backslashes, keep one line.
        lines.append(f"{label} = " + " ".join(str(value).split()).replace("\\", "\\\\"))
    return "\n".join(lines) + "\n"


# Allure puts a failed result into the *first* category whose status and regexes
# match, so the order says which cause wins when a case fails several checks (a target
# left paused also shows no guest progress: the run state is named). A regex must match
# the *whole* message (Java Pattern.matches): each one is ``(?s).*...``. The message of
# a failed case is pytest's ``exconly()``: "<module>.<Class>: <str(exc)>", where
# harness.core.errors.ConformanceFailure lists each failed check as
# "  - <title> [<check id>]: expected ..., got ...". Categories key on the check ids
# (harness.run.checks: each check's category is declared where it is defined), never
# on titles: rewording a title moves nothing. The outcome check is filed by what was
# observed instead.
_FAILED = ["failed", "broken"]
_OUTCOME = r"(?s).*\n  - [^\n]* \[outcome\]: expected '{exp}', got '{got}'.*"
OUTCOME_PATTERNS = {
    "crash": [_OUTCOME.format(exp="[^']*", got="(src|dst)-crashed")],
    "hang": [_OUTCOME.format(exp="[^']*", got="hung")],
    "refused-valid": [_OUTCOME.format(exp="completes", got="(src-refused|dst-refused|failed)")],
    "not-refused": [_OUTCOME.format(exp="(?:(src|dst)-refuses|fails|src-lost)",
                                    got="(completed|failed|src-refused|dst-refused|src-lost)")],
}


def _check_categories() -> List[Dict[str, Any]]:
    """One Allure category per check category, matching the ids of its checks."""
    from harness.run import checks

    out = []
    for cat in checks.CATEGORIES.values():
        ids = sorted(d.id for d in checks.REGISTRY.values()
                     if d.category == cat.id and d.id != "outcome")
        regexes = list(OUTCOME_PATTERNS.get(cat.id, ()))
        if ids:
            regexes.append(r"(?s).*\n  - [^\n]* \[(?:"
                           + "|".join(re.escape(i) for i in ids) + r")\]: expected .*")
        if not regexes:
            continue
        entry = {"name": cat.name, "matchedStatuses": _FAILED,
                 "messageRegex": regexes[0] if len(regexes) == 1 else
                 "(?s)(?:" + "|".join(r[len("(?s)"):] for r in regexes) + ")"}
        if cat.description:
            entry["description"] = cat.description
        out.append(entry)
    return out


_TAIL: List[Dict[str, Any]] = [
    {"name": "Harness timeout",
     "description": "a bounded harness wait ran out (WaitTimeout): see what it waited for",
     "matchedStatuses": _FAILED,
     "messageRegex": r"(?s).*WaitTimeout: .*timed out after .* waiting for .*"},
    {"name": "QEMU did not start",
     "matchedStatuses": ["broken"],
     "messageRegex": r"(?s).*VMLaunchFailure: .*"},
    {"name": "Known deviations (expected failures)",
     "matchedStatuses": ["skipped"],
     "messageRegex": r"(?s)XFAIL known deviation: .*"},
    {"name": "Opt-in cases not run (--slow)",
     "description": "slow cases the default run leaves out; tox -e nightly runs them",
     "matchedStatuses": ["skipped"],
     "messageRegex": r"(?s)(?:Skipped: )?a slow case: .*"},
    {"name": "Not supported here (skips)",
     "description": "a capability this QEMU or host lacks; a skip is never a pass",
     "matchedStatuses": ["skipped"],
     "messageRegex": r"(?s)(?!XFAIL).*"},
    {"name": "Other harness errors",
     "description": "broken for a reason none of the categories above names",
     "matchedStatuses": ["broken"],
     "messageRegex": r"(?s)(?!.*\n  - [^\n]*: expected )(?!.*WaitTimeout: )"
                     r"(?!.*VMLaunchFailure: ).*"},
]
#: Every category, in the order Allure tries them.
CATEGORIES: List[Dict[str, Any]] = _check_categories() + _TAIL


def categories(deviations: Sequence[Mapping[str, str]] = ()) -> List[Dict[str, Any]]:
    """:data:`CATEGORIES` with one category per known deviation (``id``, ``link``,
    ``reason``: :meth:`harness.scenario.expectations.Deviation.to_dict`), before the
    catch-all of known deviations; a case's xfail message names its deviation's link."""
    own = []
    seen = set()
    for d in deviations:
        if d["id"] in seen:
            continue
        seen.add(d["id"])
        own.append({"name": f"Known deviation: {d['id']}",
                    "description": f"{d['reason']} ({d['link']})",
                    "matchedStatuses": ["skipped"],
                    "messageRegex": r"(?s)XFAIL known deviation: .*\(" + re.escape(d["link"])
                                    + r"\).*"})
    at = next(i for i, c in enumerate(CATEGORIES)
              if c["name"] == "Known deviations (expected failures)")
    return CATEGORIES[:at] + own + CATEGORIES[at:]


def write_allure_extras(alluredir: Path, meta: Mapping[str, Any],
                        deviations: Sequence[Mapping[str, str]] = ()) -> None:
    """environment.properties and categories.json for an allure-results directory."""
    alluredir = Path(alluredir)
    alluredir.mkdir(parents=True, exist_ok=True)
    (alluredir / "environment.properties").write_text(
        environment_properties({**host_facts(), **dict(meta)}))
    (alluredir / "categories.json").write_text(
        json.dumps(categories(deviations), indent=2) + "\n")


REPORT_NAME = "cpr-transfer conformance"


def write_executor(results: Path, history: Path, build_name: str = "") -> int:
    """executor.json: names the report and numbers the run for Allure's trend graphs.

    The build number continues from the previous report's history (``history``, its
    ``history-trend.json``); returns the number given to this run."""
    order = 0
    try:
        trend = json.loads((Path(history) / "history-trend.json").read_text())
        order = max([int(t.get("buildOrder") or 0) for t in trend] + [len(trend)])
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    order += 1
    name = build_name or f"run #{order} on {socket.gethostname()}"
    executor = {"name": socket.gethostname(), "type": "cpr-harness", "buildOrder": order,
                "buildName": name, "reportName": REPORT_NAME}
    Path(results).mkdir(parents=True, exist_ok=True)
    (Path(results) / "executor.json").write_text(json.dumps(executor, indent=2) + "\n")
    return order


#: generate_allure's status values.
ALLURE_OK, ALLURE_SKIPPED, ALLURE_FAILED = "ok", "skipped", "failed"


def generate_allure(reports: Path, script: Path = ALLURE_SCRIPT,
                    timeout: float = 300.0) -> Tuple[str, str]:
    """Build the Allure HTML report from ``reports/allure-results``.

    Returns ``(status, one line)``: ``ok``; ``skipped`` when java, npm or the results
    are missing (the script's exit code 3); ``failed`` otherwise.
    """
    paths = default_paths(reports)
    if paths["allure-results"].is_dir() and any(paths["allure-results"].iterdir()):
        write_executor(paths["allure-results"], paths["allure-report"] / "history")
    try:
        p = subprocess.run(["bash", str(script), str(reports)], capture_output=True,
                           text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return ALLURE_FAILED, f"allure-report: failed: still running after {timeout:.0f}s"
    except OSError as exc:
        return ALLURE_FAILED, f"allure-report: failed: cannot run {script}: {exc}"
    last = (p.stdout.strip().splitlines() or [""])[-1]
    if p.returncode == 0:
        from harness.tools.report.render import refresh_pages

        finish_html(paths["allure-report"], paths["allure-single"])
        refresh_pages(Path(reports))  # conformance.html now links the Allure report
        return ALLURE_OK, last
    if p.returncode == 3:
        return ALLURE_SKIPPED, last
    err = " ".join(p.stderr.strip().splitlines()[-3:])
    return ALLURE_FAILED, (last or f"allure-report: failed (exit {p.returncode})") + \
        (f": {_one_line(err, 300)}" if err else "")




# --------------------------------------------------------------------------- the HTML

#: A trend panel with fewer than two runs says why it is empty, not "nothing to show".
_TREND_NOTE = ('[data-id*="trend"] .widget__noitems{font-size:0}'
               '[data-id*="trend"] .widget__noitems::after{font-size:13px;content:"The trend '
               'starts with the second run: keep allure-report/ (its history/) between runs"}')
#: The folder's index.html opened from disk: browsers refuse its data files there.
_FILE_NOTE = ("<div id=\"cprh-file-note\" style=\"display:none;background:#fff4d6;"
              "border:1px solid #e8c66a;color:#6b4e00;padding:8px 12px;font:14px sans-serif\">"
              "This folder's report must be served by a web server: opened from disk, the "
              "browser refuses its data files (Allure then says &quot;Failed to fetch&quot;). "
              "Run <code>node_modules/.bin/allure open allure-report</code>, or open "
              "<a href=\"../allure-report.html\">allure-report.html</a>: the same report in "
              "one file, which opens from disk.</div><script>if(location.protocol==='file:')"
              "{document.getElementById('cprh-file-note').style.display='block';}</script>")
_DATA_CALLS = re.compile(r"(Promise\.allSettled\(\[)(.*?)(\]\)\.then\()", re.S)


def single_file_from_folder(single_html: str, folder: Path) -> str:
    """The single-file report with the folder report's data (``d('path', base64)`` for
    each of its data, widgets, history and export files): one generation, so both carry
    the same test ids (two generations would number them apart)."""
    import base64

    folder = Path(folder)
    calls = []
    for sub in ("data", "widgets", "history", "export"):
        for path in sorted((folder / sub).rglob("*")):
            if path.is_file():
                rel = path.relative_to(folder).as_posix()
                calls.append(f"d('{rel}','{base64.b64encode(path.read_bytes()).decode()}')")
    body = "\n        " + ",\n        ".join(calls) + ",\n      "
    out, n = _DATA_CALLS.subn(lambda m: m.group(1) + body + m.group(3), single_html, count=1)
    if not n:
        raise ValueError("the single-file report has no data block to replace")
    return out


def finish_html(folder: Path, single: Path) -> None:
    """What the generated reports need beyond Allure's own output: the single file with
    the folder's data (the same ids), a note in an empty trend panel, and in the
    folder's index.html a note that it must be served when it is opened from disk."""
    folder, single = Path(folder), Path(single)
    style = f"<style>{_TREND_NOTE}</style></head>"
    index = folder / "index.html"
    if index.is_file():
        text = index.read_text()
        if "cprh-file-note" not in text:
            text = text.replace("</head>", style, 1).replace("<body>", "<body>" + _FILE_NOTE, 1)
            index.write_text(text)
    if single.is_file() and folder.is_dir():
        text = single_file_from_folder(single.read_text(), folder)
        if _TREND_NOTE not in text:
            text = text.replace("</head>", style, 1)
        tmp = single.with_name(single.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(single)
