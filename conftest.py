"""pytest wiring for the cpr-transfer harness: options, fixtures, allure hooks, records.

Thin on purpose: the library (``harness/``) does the work; this file declares the
run's options from :data:`harness.run.config.OPTIONS` and resolves them into the one
frozen :class:`~harness.run.config.RunConfig`, turns the library's answers into pytest
outcomes (``Unsupported`` -> skip with its reason, a failed check -> a failure that
names the check), maps the library's phases onto Allure steps, and reads pytest's
phases into the verdicts the matrix (:mod:`harness.tools.report`) is built from.

What travels between xdist workers and the controller is the test report, including
its ``user_properties``: ``cpr_scenario`` (the scenario's parameters, set at
collection, so a skipped case carries them too) and ``cpr_result`` (the path of the
case's result.json, relative to the reports, set when the pair ran). junit.xml shows
the case id, that path and the deviation id (not the records), and each case's checks
one a line as its system-out.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import allure
import pytest

from harness.core.errors import ConformanceFailure, HarnessError, Unsupported, UsageError
from harness.core.observe import Observer
from harness.tools.report import verdicts
from harness.tools.report.allure_results import RUN_LABEL
from harness.run import config as run_config_mod
from harness.run import identity
from harness.run.config import RunConfig

ROOT = Path(__file__).resolve().parent
CONFIG_KEY = pytest.StashKey[RunConfig]()
CASES_KEY = pytest.StashKey[Dict[str, Dict[str, Any]]]()
START_KEY = pytest.StashKey[float]()
DEVIATIONS_KEY = pytest.StashKey[list]()
MATRIX_KEY = pytest.StashKey[Dict[str, Any]]()
RUN_KEY = pytest.StashKey[Any]()
SCENARIO_PROP, RESULT_PROP, DEVIATION_PROP = "cpr_scenario", "cpr_result", "cpr_deviation"
SELECTION_KEY = pytest.StashKey[Any]()


class ConformanceMismatch(ConformanceFailure, AssertionError):
    """A :class:`ConformanceFailure` that is also an AssertionError, so that Allure
    files it as a failed case (a defect of the QEMU under test), not a broken one (a
    defect of the harness, e.g. a WaitTimeout). pytest treats it the same either way."""


class AllureObserver(Observer):
    """The library's phases (``observer.step(title)``) as Allure steps.

    A missing capability (``Unsupported``) ends its step as skipped, not broken: the
    case becomes a skip, and the step should say so too. The exception itself goes on
    unchanged."""

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        ctx = allure.step(title)
        ctx.__enter__()
        try:
            yield
        except Unsupported as exc:
            skipped = pytest.skip.Exception(exc.reason)
            ctx.__exit__(type(skipped), skipped, exc.__traceback__)
            raise
        except BaseException as exc:
            ctx.__exit__(type(exc), exc, exc.__traceback__)
            raise
        ctx.__exit__(None, None, None)


ALLURE_OBSERVER = AllureObserver()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("cpr-transfer", "cpr-transfer conformance harness")
    for o in run_config_mod.OPTIONS:
        help_ = f"{o.help} [env {o.env}; default: {o.default}]"
        if o.switch:
            group.addoption(o.flag, dest=f"cprh_{o.name}", action="store_const", const=True,
                            default=None, help=help_)
        else:
            group.addoption(o.flag, dest=f"cprh_{o.name}", metavar=o.metavar, default=None,
                            help=help_)
    group.addoption("--scenario", dest="cprh_scenarios", metavar="ID", action="append",
                    default=[], help="run only this scenario id (repeatable); see "
                                     "'python -m harness list'")
    group.addoption("--suite", dest="cprh_suites", metavar="NAME", action="append",
                    default=[], help="run only the scenarios of this suite (repeatable): "
                                     "transfer, refusals, faults, devices, core")


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
    from harness.scenario import catalogue, expectations

    try:
        cfg = run_config_mod.resolve({o.name: config.getoption(f"cprh_{o.name}")
                                      for o in run_config_mod.OPTIONS})
        cfg = cfg.with_(reports=_reports_dir(cfg.reports))
        config.stash[DEVIATIONS_KEY] = expectations.load(Path(cfg.expectations),
                                                         catalogue.SCENARIOS)
    except UsageError as exc:
        raise pytest.UsageError(str(exc))
    # Bad ids are a usage error before anything runs (or clears the reports).
    from harness.scenario.selection import Selection

    try:
        config.stash[SELECTION_KEY] = Selection.of(config.getoption("cprh_scenarios"),
                                                   config.getoption("cprh_suites"))
    except UsageError as exc:
        raise pytest.UsageError(f"--scenario/--suite: {exc}")
    config.stash[CONFIG_KEY] = cfg
    config.stash[CASES_KEY] = {}
    config.stash[START_KEY] = time.monotonic()
    # One id for the whole run: made by the controller (exported for its xdist workers,
    # which start later and inherit it), a new one even when a run starts another.
    is_worker = hasattr(config, "workerinput")
    config.stash[RUN_KEY] = identity.establish(fresh=not is_worker)
    if not is_worker:
        config.pluginmanager.register(CaseCollector(config), "cprh-case-collector")
    if not is_worker and _wants_conformance(config) and not config.option.collectonly:
        from harness.run.setup import check_binaries
        from harness.tools.report import runs

        try:
            check_binaries(cfg)
        except UsageError as exc:
            raise pytest.UsageError(str(exc))
        # The previous run's matrix and cases go: a page never mixes two runs.
        runs.start(Path(cfg.reports))


def pytest_sessionstart(session: pytest.Session) -> None:
    """The run's identity in junit.xml (global properties)."""
    try:
        from _pytest.junitxml import xml_key
    except ImportError:  # pragma: no cover - pytest moved it
        return
    xml = session.config.stash.get(xml_key, None)
    if xml is not None and not hasattr(session.config, "workerinput"):
        for name, value in session.config.stash[RUN_KEY].to_dict().items():
            xml.add_global_property(f"cprh_{name}", value)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """The soak chain: its scenario and the run's number of hops, one case."""
    if "soak_hops" in metafunc.fixturenames:
        from harness.scenario import catalogue, selection

        hops = metafunc.config.stash[CONFIG_KEY].soak_hops
        metafunc.parametrize(("scenario", "soak_hops"),
                             [(catalogue.get(selection.SOAK_BASE), hops)],
                             ids=[selection.soak_id(hops).split("/", 1)[1]])


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    from harness.scenario.catalogue import SLOW_REASON

    _select_scenarios(config, items)
    _mark_known_deviations(config, items)
    _long_cases_first(items)
    cfg = config.stash[CONFIG_KEY]
    for item in items:
        if item.get_closest_marker("slow") is not None and not cfg.slow:
            item.add_marker(pytest.mark.skip(reason=SLOW_REASON))
        if "soak_hops" in getattr(item, "fixturenames", ()):
            # A chain's own deadline grows with its hops (harness.run.chain); the
            # runner's limit stays above it.
            item.add_marker(pytest.mark.timeout(
                int(cfg.case_timeout + cfg.soak_hops * (cfg.observe_s + 5.0) + 60)))
        sc = _scenario_of(item)
        if sc is not None:
            # Set before the case runs, so a report of any phase (a skip too) carries
            # the scenario, also from an xdist worker.
            params = _case_params(item, sc)
            item.user_properties.append((SCENARIO_PROP, json.dumps(params, default=str)))
            # Labels at collection: a case skipped before it runs keeps them too.
            item.add_marker(allure.feature(params["area"]))
            item.add_marker(allure.story(params["id"]))
            # Allure's Suites tab by area, not by pytest module; in an area as its grid
            # on conformance.html: transfers by main channel, the others by guest.
            item.add_marker(allure.parent_suite(params["area"]))
            item.add_marker(allure.suite(f"main channel {params.get('main')}"
                                         if params["area"] == "transfer"
                                         else f"guest {params.get('guest')}"))
            item.add_marker(allure.label(RUN_LABEL, config.stash[RUN_KEY].run_id))
            if item.get_closest_marker("slow") is not None:
                item.add_marker(allure.tag("slow"))


def _derived(item: pytest.Item) -> Optional[str]:
    """The derived case a test is (the soak chain), or None for a scenario's own test."""
    from harness.scenario import selection

    return selection.SOAK if "soak_hops" in getattr(item, "fixturenames", ()) else None


def _long_cases_first(items: List[pytest.Item]) -> None:
    """The library's order: the longest conformance cases first."""
    from harness.scenario.selection import cost

    def key(item: pytest.Item) -> int:
        sc = _scenario_of(item)
        return 3 if sc is None else cost(sc, _derived(item),
                                         "suites/conformance/" in item.nodeid)

    items.sort(key=key)


def _case_params(item: pytest.Item, sc: Any) -> Dict[str, Any]:
    """The scenario's parameters under the case's id (the library's rule)."""
    from harness.scenario import selection

    pid = item.callspec.id  # type: ignore[attr-defined]
    area = item.path.stem.removeprefix("test_")
    own = pid in (sc.id, sc.id.split("/", 1)[-1])
    name = getattr(item, "originalname", item.name)
    return selection.case_params(sc, sc.id if own else f"{area}/{pid}", area, f"{name}[{pid}]")


def _scenario_of(item: pytest.Item) -> Any:
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("scenario") if callspec is not None else None


def _mark_known_deviations(config: pytest.Config, items: List[pytest.Item]) -> None:
    """Known deviations become strict xfails: only a conformance failure satisfies them,
    and a pass is reported as XPASS(strict), i.e. a failure that says QEMU changed."""
    from harness.run.setup import known_deviation

    deviations = config.stash[DEVIATIONS_KEY]
    cfg = config.stash[CONFIG_KEY]
    for item in items:
        sc = _scenario_of(item)
        dev = known_deviation(deviations, sc, cfg) if sc is not None else None
        if dev is not None:
            item.add_marker(pytest.mark.xfail(strict=True, raises=ConformanceFailure,
                                              reason=dev.describe()))
            item.add_marker(allure.tag("known-deviation"))
            item.user_properties.append((DEVIATION_PROP, json.dumps(dev.to_dict())))


def _select_scenarios(config: pytest.Config, items: List[pytest.Item]) -> None:
    """Keep exactly the cases --scenario/--suite name (the library's selection)."""
    selection = config.stash[SELECTION_KEY]
    if selection.everything:
        return
    keep, drop = [], []
    for item in items:
        sc = _scenario_of(item)
        (keep if sc is not None and selection.holds(sc, _derived(item)) else drop).append(item)
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
def case_dir(request: pytest.FixtureRequest, run_config: RunConfig) -> str:
    """A fresh artifacts directory for this case under <reports>/cases/."""
    path = Path(run_config.reports) / "cases" / _case_dirname(request.node.nodeid)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return str(path)


def _side_kind(sc: Any, kind: str) -> str:
    src = sc.side_main("src") if kind == "main" else sc.side_cpr("src")
    dst = sc.side_main("dst") if kind == "main" else sc.side_cpr("dst")
    return src if src == dst else f"src {src} / dst {dst}"


def _allure_describe(sc: Any, cfg: RunConfig) -> None:
    """Title, labels and parameters of a case, set before it runs (a skip keeps them)."""
    allure.dynamic.title(sc.id)
    allure.dynamic.description(f"{sc.title}\n\nexpected: {sc.expect}")
    allure.dynamic.severity(allure.severity_level.NORMAL if sc.positive
                            else allure.severity_level.CRITICAL)
    # The Scenario object pytest parametrizes with reads badly; show its id instead.
    allure.dynamic.parameter("scenario", sc.id)
    for name, value in (("main channel", _side_kind(sc, "main")),
                        ("cpr channel", _side_kind(sc, "cpr")), ("backend", sc.backend),
                        ("incoming", sc.incoming), ("machine", sc.machine),
                        ("smp", sc.smp)):
        allure.dynamic.parameter(name, value)
    allure.dynamic.parameter("guest", sc.guest)
    from harness.run.setup import resolve_binaries

    try:
        bins = resolve_binaries(sc, cfg)  # what run_scenario will run
    except HarnessError:
        return  # the case fails or skips with its own reason
    allure.dynamic.parameter("accel", bins.accel)
    allure.dynamic.parameter("machine type", bins.machine + (" (pinned)" if bins.pinned else ""))
    # Excluded from Allure's history id: a case keeps its history across QEMU builds.
    allure.dynamic.parameter("qemu version", bins.versions, excluded=True)


_ATTACH_AS = {".jsonl": ("text/plain", "jsonl"), ".json": ("application/json", "json"),
              ".log": ("text/plain", "log"), ".serial": ("text/plain", "txt"),
              ".txt": ("text/plain", "txt"), ".png": ("image/png", "png")}
_ARTIFACT_KINDS = {"qmp": "QMP transcript", "log": "QEMU log", "serial": "serial console",
                   "backtrace": "crash backtrace (gdb)"}
_ARTIFACT_NAMES = {"timeline": "sampler timeline", "sampler.trace": "sampler timeline data",
                   "sampler.log": "pause sampler's own log", "chain.json": "soak chain (per hop)"}


#: Kept in the case directory, not worth an attachment (the picture shows it).
_NOT_ATTACHED = {"sampler.trace"}


def _artifact_name(key: str) -> str:
    """``src.qmp`` -> ``src QMP transcript``, ``dst-retry.log`` -> ``dst-retry QEMU log``."""
    if key in _ARTIFACT_NAMES:
        return _ARTIFACT_NAMES[key]
    side, _, kind = key.rpartition(".")
    return f"{side} {_ARTIFACT_KINDS[kind]}" if side and kind in _ARTIFACT_KINDS else key


def _attach_file(path: str, name: str) -> None:
    """Attach a file, unless it is missing or empty (an empty attachment says nothing)."""
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return
    ext = os.path.splitext(path)[1]
    mime, extension = _ATTACH_AS.get(ext, ("text/plain", ext.lstrip(".") or "txt"))
    allure.attach.file(path, name=name, attachment_type=mime, extension=extension)


def _allure_attach(result: Any, case_dir: str) -> None:
    """Command lines, QMP transcripts, logs, serial output, query-migrate, evidence.

    Also after an error (no result): whatever the pair left in the case directory."""
    attached = set()
    if result is not None:
        for side, argv in result.cmdlines.items():
            allure.attach(" ".join(_shell_quote(a) for a in argv),
                          name=f"{side} command line", attachment_type=allure.attachment_type.TEXT)
        for key, path in result.artifacts.items():
            path = os.path.join(case_dir, path)  # absolute paths stay as they are
            if key not in _NOT_ATTACHED:
                _attach_file(path, _artifact_name(key))
            attached.add(os.path.realpath(path))
        from harness.core.plain import plain

        if result.first is not None:
            allure.attach(json.dumps(result.first.query_migrate, indent=2, default=str),
                          name="query-migrate (src)",
                          attachment_type=allure.attachment_type.JSON)
            allure.attach(json.dumps(plain(result.first.evidence), indent=2, default=str),
                          name="evidence", attachment_type=allure.attachment_type.JSON)
    try:
        names = sorted(os.listdir(case_dir))
    except OSError:
        names = []
    for name in names:
        path = os.path.join(case_dir, name)
        if os.path.realpath(path) not in attached and name != "result.json":
            key = name[:-len(".jsonl")] if name.endswith(".qmp.jsonl") else name
            key = key[:-len(".txt")] if key.endswith(".backtrace.txt") else key
            _attach_file(path, _artifact_name(key))


def _shell_quote(arg: str) -> str:
    return arg if re.fullmatch(r"[A-Za-z0-9_./:=,@%+-]+", arg) else \
        "'" + arg.replace("'", "'\\''") + "'"


def _run_identity(request: pytest.FixtureRequest) -> Dict[str, str]:
    return request.config.stash[RUN_KEY].to_dict()


def _keep_record(request: pytest.FixtureRequest, cfg: RunConfig, case_dir: str,
                 rec: Dict[str, Any]) -> Dict[str, Any]:
    """Write result.json, hand the record to the controller, attach its check table."""
    from harness.tools import report
    from harness.tools.report import case_view

    rec["case_dir"] = Path(os.path.relpath(case_dir, cfg.reports)).as_posix()
    with open(os.path.join(case_dir, "result.json"), "w") as f:
        json.dump(rec, f, indent=2, default=str)
    # The controller reads the record from the file (junit.xml shows this path, not a
    # copy of the record).
    request.node.user_properties.append((RESULT_PROP, f"{rec['case_dir']}/result.json"))
    allure.attach(case_view.case_page(rec), name="checks and evidence",
                  attachment_type=allure.attachment_type.HTML)
    # junit's system-out: what a CI dashboard shows of the case.
    print(report.check_lines(rec.get("checks") or []))
    return rec


def _judged(title: str, judge: Any, result: Any) -> List[Any]:
    """``judge(result)`` inside an Allure step with each check a step of its own; the
    step fails (red in the tree) when a check does."""
    ctx = allure.step(title)
    ctx.__enter__()
    try:
        checks = judge(result)
        _checks_as_steps(checks)
    except BaseException as exc:
        ctx.__exit__(type(exc), exc, exc.__traceback__)
        raise
    bad = [c for c in checks if not c.ok]
    if bad:
        exc = AssertionError(f"{len(bad)} of {len(checks)} checks failed")
        ctx.__exit__(AssertionError, exc, None)
    else:
        ctx.__exit__(None, None, None)
    return checks


def _checks_as_steps(checks: List[Any]) -> None:
    """Each check as an Allure step under "judge the result": a failed one red."""
    for c in checks:
        title = f"{c.name}: {c.observed}" if c.ok else \
            f"{c.name}: expected {c.expected}, got {c.observed}"
        ctx = allure.step(title)
        ctx.__enter__()
        if c.ok:
            ctx.__exit__(None, None, None)
        else:
            exc = AssertionError(c.detail or f"expected {c.expected}, got {c.observed}")
            ctx.__exit__(AssertionError, exc, None)


@pytest.fixture
def cpr_case(request: pytest.FixtureRequest, run_config: RunConfig, case_dir: str):
    """Run a scenario on a real QEMU pair and judge it; returns the PairResult."""
    from harness.run.driver import run_scenario
    from harness.run.verdict import failed, judge, record

    def run(scenario):
        _allure_describe(scenario, run_config)
        result = None
        try:
            try:
                result = run_scenario(scenario, run_config, case_dir, observer=ALLURE_OBSERVER)
            except Unsupported as exc:
                pytest.skip(exc.reason)
            checks = _judged("judge the result", judge, result)
            if result.machine_type:
                allure.dynamic.parameter("machine type", result.machine_type
                                         + (" (pinned)" if result.machine_pinned else ""))
            _keep_record(request, run_config, case_dir,
                         record(result, checks, case_dir, _run_identity(request)))
            bad = failed(checks)
            if bad:
                raise ConformanceMismatch(scenario.id, bad)
            return result
        finally:
            _allure_attach(result, case_dir)

    return run


@pytest.fixture
def cpr_chain(request: pytest.FixtureRequest, run_config: RunConfig, case_dir: str):
    """Run a soak chain of live updates on real QEMU and judge it like a case."""
    from harness.run.chain import run_chain
    from harness.run.verdict import chain_record, failed, judge_chain

    def run(scenario, hops):
        result = None
        try:
            try:
                result = run_chain(scenario, run_config, case_dir, hops, ALLURE_OBSERVER)
            except Unsupported as exc:
                pytest.skip(exc.reason)
            checks = _judged("judge the chain", judge_chain, result)
            with open(os.path.join(case_dir, "chain.json"), "w") as f:
                json.dump(result.to_dict(), f, indent=2, default=str)
            _keep_record(request, run_config, case_dir,
                         chain_record(result, checks, case_dir, _run_identity(request)))
            bad = failed(checks)
            if bad:
                raise ConformanceMismatch(f"{scenario.id} ({hops}-hop chain)", bad)
            return result
        finally:
            _allure_attach(None, case_dir)

    return run


# --------------------------------------------------------------------------- verdicts


#: The library decides a case's verdict from its phases (harness.tools.report.verdicts).
Phase = verdicts.Phase


def _phase_message(rep: pytest.TestReport) -> str:
    """The one thing a reader needs from a phase: a skip's reason, a failure's line."""
    lr = rep.longrepr
    if lr is None:
        return ""
    if isinstance(lr, tuple) and len(lr) == 3:  # a skip: (path, lineno, "Skipped: why")
        msg = str(lr[2])
        return msg[len("Skipped: "):] if msg.startswith("Skipped: ") else msg
    if isinstance(lr, str):  # e.g. "[XPASS(strict)] reason"
        return lr
    crash = getattr(lr, "reprcrash", None)
    if crash is not None and getattr(crash, "message", None):
        return crash.message
    return rep.longreprtext


class CaseCollector:
    """Keeps each conformance case's phases; registered on the controller only (it
    sees the workers' reports, with their user_properties, under xdist)."""

    def __init__(self, config: pytest.Config):
        self.config = config

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props = dict(report.user_properties)
        if SCENARIO_PROP not in props and "suites/conformance/" not in report.nodeid:
            return
        cases = self.config.stash[CASES_KEY]
        case = cases.setdefault(report.nodeid, {"phases": [], "props": {}})
        case["props"].update(props)
        case["phases"].append(Phase(report.when, report.outcome, _phase_message(report),
                                    getattr(report, "wasxfail", None), report.duration))
        _readable_for_junit(report)


def _readable_for_junit(report: pytest.TestReport) -> None:
    """What junit.xml (written after this hook) shows of a case: its id, its record's
    path and its deviation as properties (the parameters are in the record), and a
    skip's location relative to this checkout, not the machine's path."""
    props = dict(report.user_properties)
    out = []
    if SCENARIO_PROP in props:
        out.append(("cpr_case", json.loads(props[SCENARIO_PROP]).get("id")))
    if RESULT_PROP in props:
        out.append((RESULT_PROP, props[RESULT_PROP]))
    if DEVIATION_PROP in props:
        out.append((DEVIATION_PROP, json.loads(props[DEVIATION_PROP]).get("id")))
    report.user_properties = out
    lr = report.longrepr
    if isinstance(lr, tuple) and len(lr) == 3 and os.path.isabs(str(lr[0])):
        report.longrepr = (os.path.relpath(str(lr[0]), ROOT), lr[1], lr[2])


def _run_meta(config: pytest.Config) -> Dict[str, Any]:
    from harness.run.setup import run_facts

    ident = config.stash[RUN_KEY]
    return {"run_id": ident.run_id, "harness_commit": ident.commit,
            "run_started": ident.started, **run_facts(config.stash[CONFIG_KEY])}


def _records(config: pytest.Config) -> List[Dict[str, Any]]:
    from harness.tools import report

    out = []
    for nodeid, case in config.stash[CASES_KEY].items():
        phases = case["phases"]
        sc = json.loads(case["props"][SCENARIO_PROP]) if SCENARIO_PROP in case["props"] else None
        res = _result_of(config, case["props"].get(RESULT_PROP))
        dev = json.loads(case["props"][DEVIATION_PROP]) if DEVIATION_PROP in case["props"] \
            else None
        verdict, reason = verdicts.of_pytest(phases, (res or {}).get("mismatches") or [])
        durations = {f"{p.when}_s": round(p.duration, 3) for p in phases}
        out.append(report.case_record(nodeid, verdict, reason, sc, res, durations, dev,
                                      reports=Path(config.stash[CONFIG_KEY].reports)))
    return out


def _result_of(config: pytest.Config, path: Optional[str]) -> Optional[Dict[str, Any]]:
    """A case's result record, read from its result.json (``path``: relative to the
    reports, as the worker handed it over)."""
    if not path:
        return None
    try:
        return json.loads((Path(config.stash[CONFIG_KEY].reports) / path).read_text())
    except (OSError, ValueError):
        return None


@pytest.hookimpl(trylast=True)  # after junitxml's: the page links junit.xml
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Tidy allure-results, write Allure's environment and categories, the conformance
    matrix (json/md/html) and run.json, each naming this run."""
    config = session.config
    if hasattr(config, "workerinput") or config.option.collectonly:
        return
    from harness.tools import report
    from harness.tools.report import allure_results, runs

    records = _records(config)
    alluredir = getattr(config.option, "allure_report_dir", None)
    if not records and not alluredir:
        return
    ident = config.stash[RUN_KEY]
    meta = _run_meta(config)
    reports = Path(config.stash[CONFIG_KEY].reports)
    if alluredir:
        started_ms = int(time.time() * 1000 - (time.monotonic() - config.stash[START_KEY]) * 1000)
        tidied = allure_results.tidy(Path(alluredir), ident.run_id, started_ms)
        if tidied.mixed:
            meta["warning"] = tidied.describe()
        report.write_allure_extras(Path(alluredir), meta,
                                   [d.to_dict() for d in config.stash[DEVIATIONS_KEY]])
    if records:
        wall = time.monotonic() - config.stash[START_KEY]
        runs.write_run(reports, ident.to_dict(), finished=time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime()), cases=len(records),
            counts=report.counts(records))
        doc = report.matrix(records, meta, wall)
        doc["meta"]["warnings"] = runs.disagreements(reports, doc)
        paths = report.write_matrix(doc, reports)
        config.stash[MATRIX_KEY] = {"doc": doc, "paths": paths}


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Print the matrix's case count and wall time, and where the reports are."""
    from harness.tools import report

    written = config.stash.get(MATRIX_KEY, None)
    if not written:
        return
    doc, paths = written["doc"], written["paths"]
    detail = ", ".join(f"{doc['counts'][k]} {k}" for k in
                       ("pass", "fail", "error", "xfail", "xpass", "skip") if doc["counts"][k])
    terminalreporter.write_sep("-", f"cpr-transfer conformance: {len(doc['cases'])} case(s), "
                                    f"{doc['wall_seconds']:.1f}s wall: {detail}")
    terminalreporter.write_line("conformance matrix: " + ", ".join(
        report.relpath(p) for p in (paths["json"], paths["html"], paths["md"])))
    meta = doc.get("meta") or {}
    terminalreporter.write_line(f"run {meta.get('run_id')}, harness {meta.get('harness_commit')}")
    for w in meta.get("warnings") or []:
        terminalreporter.write_line(f"WARNING: {w}", yellow=True)
