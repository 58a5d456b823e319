"""pytest wiring for the cpr-transfer harness: options, fixtures, result collection.

Thin on purpose: the library (``harness/``) does the work; this file turns pytest's
settings into one frozen :class:`harness.pair.RunConfig` and turns the library's
answers into pytest outcomes (``Unsupported`` -> skip with its reason, a failed check
-> a failure that names the check).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

from harness.errors import ConformanceFailure, HarnessError, Unsupported, UsageError
from harness.pair import ACCELS, RunConfig

ROOT = Path(__file__).resolve().parent
CONFIG_KEY = pytest.StashKey[RunConfig]()
RESULTS_KEY = pytest.StashKey[List[Dict[str, Any]]]()
START_KEY = pytest.StashKey[float]()
DEVIATIONS_KEY = pytest.StashKey[list]()


def _accel(value: str) -> str:
    if value not in ACCELS:
        raise pytest.UsageError(f"--accel: expected one of {', '.join(ACCELS)}, got {value!r}")
    return value


def _reports_dir(value: str) -> str:
    path = Path(value).resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise pytest.UsageError(f"--reports: cannot write to {path}: {exc.strerror or exc}")
    return str(path)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("cpr-transfer", "cpr-transfer conformance harness")
    group.addoption("--qemu-src", dest="qemu_src", metavar="PATH",
                    default=os.environ.get("CPRH_QEMU_SRC", "qemu-system-x86_64"),
                    help="QEMU binary (or wrapper that execs it) for the source side "
                         "[env CPRH_QEMU_SRC; default: qemu-system-x86_64 on PATH]")
    group.addoption("--qemu-dst", dest="qemu_dst", metavar="PATH",
                    default=os.environ.get("CPRH_QEMU_DST", "qemu-system-x86_64"),
                    help="QEMU binary for the target side [env CPRH_QEMU_DST]")
    group.addoption("--accel", dest="cprh_accel", metavar="auto|kvm|tcg", type=_accel,
                    default=_accel(os.environ.get("CPRH_ACCEL", "auto")),
                    help="accelerator: kvm when /dev/kvm opens else tcg (auto), or forced "
                         "[env CPRH_ACCEL; default: auto]")
    group.addoption("--scenario", dest="cprh_scenarios", metavar="ID", action="append",
                    default=[], help="run only this scenario id (repeatable); see "
                                     "'python -m harness list'")
    group.addoption("--expectations", dest="cprh_expectations", metavar="FILE",
                    default=os.environ.get("CPRH_EXPECTATIONS",
                                           str(ROOT / "expectations" / "known-deviations.toml")),
                    help="known deviations (TOML): matching cases run as strict expected "
                         "failures [env CPRH_EXPECTATIONS]")
    group.addoption("--reports", dest="cprh_reports", metavar="DIR",
                    default=os.environ.get("CPRH_REPORTS", str(ROOT / "reports")),
                    help="where case artifacts and conformance.json go [env CPRH_REPORTS; "
                         "default: reports/]")


def _wants_conformance(config: pytest.Config) -> bool:
    conf = ROOT / "suites" / "conformance"
    args = [a.split("::")[0] for a in config.args] or [str(ROOT)]
    for a in args:
        p = Path(a).resolve()
        if p == conf or conf in p.parents or p in conf.parents:
            return True
    return False


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "selftest: tests of the harness itself (no conformance verdict)")
    config.addinivalue_line("markers", "conformance: a cpr-transfer conformance case on real QEMU")
    config.addinivalue_line("markers", "slow: long cases kept out of the default run")
    reports = _reports_dir(config.getoption("cprh_reports"))
    config.option.cprh_reports = reports
    try:
        cfg = RunConfig(qemu_src=config.getoption("qemu_src"),
                        qemu_dst=config.getoption("qemu_dst"),
                        accel=config.getoption("cprh_accel"))
    except UsageError as exc:
        raise pytest.UsageError(str(exc))
    config.stash[CONFIG_KEY] = cfg
    from harness import catalogue, expectations

    try:
        config.stash[DEVIATIONS_KEY] = expectations.load(
            Path(config.getoption("cprh_expectations")), catalogue.SCENARIOS)
    except UsageError as exc:
        raise pytest.UsageError(f"--expectations: {exc}")
    config.stash[RESULTS_KEY] = []
    config.stash[START_KEY] = time.monotonic()
    is_worker = hasattr(config, "workerinput")
    if not is_worker and _wants_conformance(config) and not config.option.collectonly:
        _check_binaries(cfg)


def _check_binaries(cfg: RunConfig) -> None:
    """A missing, foreign or too old QEMU is a usage error, not 40 failing cases."""
    from harness.capabilities import probe

    for side, binary in (("src", cfg.qemu_src), ("dst", cfg.qemu_dst)):
        try:
            caps = probe(binary)
        except HarnessError as exc:
            raise pytest.UsageError(f"--qemu-{side}: {exc}")
        problems = caps.cpr_transfer_problems()
        if problems:
            raise pytest.UsageError(
                f"--qemu-{side}: {caps.path} ({caps.version_str}) does not support "
                f"cpr-transfer: {'; '.join(problems)}. Install QEMU >= 10.0 "
                f"(scripts/setup-host.sh) or point --qemu-{side} at one.")


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    _select_scenarios(config, items)
    _mark_known_deviations(config, items)


def _mark_known_deviations(config: pytest.Config, items: List[pytest.Item]) -> None:
    """Known deviations become strict xfails: only a conformance failure satisfies them,
    and a pass is reported as XPASS(strict), i.e. a failure that says QEMU changed."""
    from harness import expectations
    from harness.capabilities import probe
    from harness.pair import resolve_accel

    deviations = config.stash[DEVIATIONS_KEY]
    cfg = config.stash[CONFIG_KEY]
    if not deviations:
        return
    for item in items:
        sc = getattr(item, "callspec", None) and item.callspec.params.get("scenario")
        if sc is None:
            continue
        try:
            src, dst = probe(cfg.qemu_src), probe(cfg.qemu_dst)
            accel = resolve_accel(cfg.accel, sc, src, dst)
        except HarnessError:
            continue  # the case will skip or fail with its own reason
        info = expectations.RunInfo(qemu_src=".".join(map(str, src.version)),
                                    qemu_dst=".".join(map(str, dst.version)),
                                    accel=accel, machine=sc.machine)
        dev = expectations.find(deviations, sc.id, info)
        if dev is not None:
            item.add_marker(pytest.mark.xfail(strict=True, raises=ConformanceFailure,
                                              reason=dev.describe()))


def _select_scenarios(config: pytest.Config, items: List[pytest.Item]) -> None:
    wanted = config.getoption("cprh_scenarios")
    if not wanted:
        return
    from harness import catalogue

    for sid in wanted:
        try:
            catalogue.get(sid)
        except UsageError as exc:
            raise pytest.UsageError(f"--scenario: {exc}")
    keep, drop = [], []
    for item in items:
        sc = getattr(item, "callspec", None) and item.callspec.params.get("scenario")
        (keep if sc is not None and sc.id in wanted else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep


@pytest.fixture(scope="session")
def run_config(request: pytest.FixtureRequest) -> RunConfig:
    return request.config.stash[CONFIG_KEY]


def _case_dirname(nodeid: str) -> str:
    name = nodeid.split("::", 1)[-1]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")[:150]


@pytest.fixture
def case_dir(request: pytest.FixtureRequest) -> str:
    """A fresh artifacts directory for this case under <reports>/cases/."""
    path = Path(request.config.option.cprh_reports) / "cases" / _case_dirname(request.node.nodeid)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return str(path)


@pytest.fixture
def cpr_case(request: pytest.FixtureRequest, run_config: RunConfig, case_dir: str):
    """Run a scenario on a real QEMU pair and judge it; returns the PairResult."""
    from harness.pair import run_scenario
    from harness.verdict import judge

    def run(scenario):
        try:
            result = run_scenario(scenario, run_config, case_dir)
        except Unsupported as exc:
            pytest.skip(exc.reason)
        mismatches = judge(result)
        record = result.to_dict()
        record["id"] = scenario.id
        record["mismatches"] = [m.__dict__ for m in mismatches]
        with open(os.path.join(case_dir, "result.json"), "w") as f:
            json.dump(record, f, indent=2, default=str)
        request.node.user_properties.append(("cpr_result", json.dumps(record, default=str)))
        if mismatches:
            raise ConformanceFailure(scenario.id, mismatches)
        return result

    return run


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Print the matrix's case count and wall time; write conformance.json."""
    outcome_of: Dict[str, str] = {}
    records = []
    for key in ("error", "failed", "xpassed", "xfailed", "skipped", "passed"):
        for r in terminalreporter.stats.get(key, []):
            nodeid = getattr(r, "nodeid", "")
            if "suites/conformance/" not in nodeid:
                continue
            outcome_of.setdefault(nodeid, key)
            for name, value in getattr(r, "user_properties", []):
                if name == "cpr_result" and getattr(r, "when", "") == "call":
                    records.append(json.loads(value))
    if not outcome_of:
        return
    wall = time.monotonic() - config.stash[START_KEY]
    counts: Dict[str, int] = {}
    for key in outcome_of.values():
        counts[key] = counts.get(key, 0) + 1
    detail = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    terminalreporter.write_sep("-", f"cpr-transfer conformance: {len(outcome_of)} case(s), "
                                    f"{wall:.1f}s wall: {detail}")
    if records:
        out = Path(config.option.cprh_reports) / "conformance.json"
        out.write_text(json.dumps({"cases": records, "wall_seconds": round(wall, 2)},
                                  indent=2, default=str))
        terminalreporter.write_line(f"conformance records: {out}")
