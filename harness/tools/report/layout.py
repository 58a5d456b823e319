"""What a reports directory and a case directory hold, decided in one place, so that a
page links only files that are there and says no path of the machine it ran on.

* :func:`report_files`: the run's own files a page links (the matrix as JSON and
  Markdown, junit.xml, the Allure report), each only when it is there;
* :func:`case_files`: a case's files (relative to the reports), only those there;
* :data:`CASE_PAGE`: each case directory's own page (``cases/<case>/case.html``);
* :func:`unmachine`: a message without the machine's absolute paths (the reports
  directory, this checkout, the harness's private temporary directories).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

ROOT = Path(__file__).resolve().parents[3]
#: Each case directory's own page: its checks, evidence and files.
CASE_PAGE = "case.html"

#: (file below the reports, what it is), in the order a page lists them.
_RUN_FILES: Tuple[Tuple[str, str], ...] = (
    ("conformance.json", "the matrix as data"),
    ("conformance.md", "the matrix in Markdown"),
    ("junit.xml", "junit, for CI dashboards"),
    ("allure-report.html", "the Allure report, one file"),
    ("allure-report/index.html", "the Allure report as a folder: serve it "
                                 "(node_modules/.bin/allure open allure-report)"),
)


def report_files(reports: Optional[Path]) -> List[Tuple[str, str]]:
    """(relative path, what it is) of each run file in ``reports`` that is there."""
    if reports is None:
        return []
    return [(name, what) for name, what in _RUN_FILES if (Path(reports) / name).is_file()]


def case_files(rec: Mapping[str, Any], reports: Optional[Path]) -> Dict[str, str]:
    """The case's files as the record lists them (relative to the reports), those that
    are there when ``reports`` is given: its own page first, its record (result.json)
    last."""
    files = dict(rec.get("artifacts") or {})
    case_dir = rec.get("case_dir")
    if case_dir:
        files = {"case page": f"{case_dir}/{CASE_PAGE}", **files,
                 "result.json": f"{case_dir}/result.json"}
    if reports is None:
        return {k: v for k, v in files.items() if k not in ("case page", "result.json")}
    base = Path(reports)
    return {k: v for k, v in files.items()
            if (Path(v) if os.path.isabs(v) else base / v).is_file()}


#: The harness's private temporary directories (harness.core.cleanup): a QEMU's message
#: names its socket or state file in one.
_PRIVATE_TMP = re.compile(r"/(?:[\w.-]+/)*cprh-[A-Za-z0-9_]{6,}(?=/)")


def unmachine(text: Any, reports: Optional[Path] = None) -> str:
    """``text`` with the reports directory's absolute path made relative (``cases/x/
    src.log``), this checkout's too (``conftest.py``), and a private temporary
    directory said as ``<case tmp>``."""
    out = str(text if text is not None else "")
    for base in [b for b in (reports, ROOT) if b is not None]:
        for form in {str(Path(base)), str(Path(base).resolve())}:
            out = out.replace(form.rstrip("/") + "/", "")
    return _PRIVATE_TMP.sub("<case tmp>", out)
