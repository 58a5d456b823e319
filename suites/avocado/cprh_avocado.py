"""The avocado adapter's plain half: no avocado import, so tools and self-tests use it too.

The avocado test (``cpr_transfer.py``) is thin; what it shares with the tools lives
here:

* :func:`run_config`: avocado params (else ``CPRH_*`` env, else the defaults) -> the
  library's frozen :class:`harness.run.config.RunConfig`, resolved by the library from
  the same option table (:data:`harness.run.config.OPTIONS`) ``conftest.py`` uses;
* :func:`known_deviation`: the expectations entry that applies to a scenario in this
  run (the same lookup ``conftest.py`` does at collection);
* :func:`case_record`: the ``result.json`` a case leaves beside its evidence;
* :func:`recipe`: an avocado *runnables recipe* (plain JSON that ``avocado run FILE``
  resolves into one test per scenario), built from :mod:`harness.scenario.catalogue`;
* :func:`verdict_of_test` and :func:`compare`: avocado statuses back to the matrix's
  verdicts, and a per-scenario comparison with a pytest run's ``conformance.json``.

Command line (run from the repository root)::

    python suites/avocado/cprh_avocado.py recipe [--suite S] [--scenario ID] \\
        [--qemu-src P] [--qemu-dst P] [--qemu-aarch64-src P] [--qemu-aarch64-dst P] \
        [--accel A] [--dialect D] [--expectations F] [--slow] [-o FILE]
    python suites/avocado/cprh_avocado.py compare AVOCADO_RESULTS_JSON PYTEST_CONFORMANCE_JSON

See docs/avocado.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `python suites/avocado/cprh_avocado.py` from a checkout
    sys.path.insert(0, str(ROOT))

from harness.core.errors import UsageError  # noqa: E402
from harness.run import config, identity, setup, verdict  # noqa: E402
from harness.run.config import RunConfig  # noqa: E402
from harness.scenario import catalogue, expectations  # noqa: E402
from harness.scenario.model import Scenario  # noqa: E402
from harness.tools.report import verdicts  # noqa: E402

TEST_FILE = Path(__file__).resolve().parent / "cpr_transfer.py"
TEST_METHOD = "CprTransfer.test_scenario"

#: The avocado parameters a case reads: the run options, by name (each falls back to its
#: ``CPRH_*`` variable, then its default, exactly as the pytest options do).
PARAMS = tuple(o.name for o in config.OPTIONS)

#: A scenario marked ``slow`` runs only when asked (non-empty ``slow`` param or
#: CPRH_SLOW), else it is skipped with this reason: the library's rule, as pytest's.
SLOW_REASON = catalogue.SLOW_REASON

#: The scenario sets, exactly as the pytest suites in suites/conformance/ select them.
SUITES = catalogue.SUITES

#: How a strict expected failure that passed announces itself in avocado's fail_reason
#: (pytest says ``[XPASS(strict)]``), and avocado status -> the matrix's verdict: the
#: library's (harness.tools.report.verdicts).
XPASS_PREFIX = verdicts.XPASS_PREFIX
VERDICT_OF_STATUS = {k: v.value for k, v in verdicts.AVOCADO_STATUS.items()}


# --------------------------------------------------------------------------- the case


def run_config(get: Callable[[str], Any]) -> RunConfig:
    """The run's frozen config from avocado params; a bad value is a UsageError."""
    return config.resolve({name: get(name) for name in PARAMS})


def slow_skipped(sc: Scenario, cfg: RunConfig) -> bool:
    return sc.slow and not cfg.slow


def load_deviations(cfg: RunConfig) -> List[expectations.Deviation]:
    return expectations.load(Path(cfg.expectations), catalogue.SCENARIOS)


#: The library decides these for every adapter: no second copy here.
known_deviation = lambda cfg, sc, deviations: setup.known_deviation(deviations, sc, cfg)  # noqa: E731
case_record = verdict.record


def run_identity(outputdir: str) -> Dict[str, str]:
    """The job's run identity: ``CPRH_RUN_ID`` when the caller set one, else the
    avocado job's own (its ``job-...`` results directory, which each test's output
    directory lies in), so every test of one job names the same run."""
    env = dict(os.environ)
    if not env.get(identity.ENV_ID):
        parts = Path(outputdir).resolve().parts
        for i, part in enumerate(parts):
            if part.startswith("job-"):
                job = Path(*parts[:i + 1])
                env[identity.ENV_ID] = part
                env[identity.ENV_STARTED] = time.strftime(
                    "%Y-%m-%dT%H:%M:%SZ", time.gmtime(job.stat().st_ctime))
                break
    return identity.establish(env).to_dict()


def write_record(record: Mapping[str, Any], directory: str) -> str:
    path = os.path.join(directory, "result.json")
    with open(path, "w") as f:
        json.dump(record, f, indent=2, default=str)
    return path


# --------------------------------------------------------------------------- recipes


def select(suites: Sequence[str] = (), scenario_ids: Sequence[str] = ()) -> List[Scenario]:
    """Scenarios in catalogue order: the named suites plus the named ids (all suites
    when neither is given). Unknown names are a UsageError."""
    wanted: Dict[str, Scenario] = {}
    for name in suites:
        if name not in SUITES:
            raise UsageError(f"unknown suite {name!r}; use one of: {', '.join(SUITES)}")
        wanted.update((s.id, s) for s in SUITES[name]())
    for sid in scenario_ids:
        sc = catalogue.get(sid)
        wanted[sc.id] = sc
    if not suites and not scenario_ids:
        for name in SUITES:
            wanted.update((s.id, s) for s in SUITES[name]())
    return [s for s in catalogue.SCENARIOS.values() if s.id in wanted]


def _uri(cwd: Optional[str] = None) -> str:
    """The test's reference, relative to ``cwd`` when it lies below it (shorter test
    names in avocado's output), else absolute."""
    cwd = os.path.abspath(cwd or os.getcwd())
    path = str(TEST_FILE)
    if path.startswith(cwd.rstrip("/") + "/"):
        path = os.path.relpath(path, cwd)
    return f"{path}:{TEST_METHOD}"


def runnable(sc: Scenario, params: Mapping[str, str], uri: str) -> Dict[str, Any]:
    """One avocado-instrumented runnable: the test with this scenario's params.

    ``variant`` is avocado's own serialized form of a parameter set (one tree node at
    ``/``, as ``-p`` builds it); its ``variant_id`` (the scenario id) ends the test's
    name."""
    env = [["/", "scenario", sc.id]] + [["/", k, v] for k, v in params.items()]
    return {"kind": "avocado-instrumented", "uri": uri,
            "kwargs": {"variant": {"paths": ["/"], "variant_id": sc.id,
                                   "variant": [["/", env]]}}}


def recipe(scenarios: Sequence[Scenario], params: Mapping[str, str],
           cwd: Optional[str] = None) -> List[Dict[str, Any]]:
    uri = _uri(cwd)
    return [runnable(sc, params, uri) for sc in scenarios]


def dump_recipe(runnables: Sequence[Mapping[str, Any]]) -> str:
    """JSON, one runnable a line: readable, and a diff shows which scenario changed."""
    return "[\n" + ",\n".join(json.dumps(r) for r in runnables) + "\n]\n"


check_binaries = setup.check_binaries


# --------------------------------------------------------------------------- verdicts


def verdict_of_test(test: Mapping[str, Any]) -> Tuple[str, str]:
    """(verdict, reason) of one entry of avocado's results.json, in the matrix's terms."""
    verdict, reason = verdicts.of_avocado(test)
    return verdict.value, reason


def scenario_of_test(test: Mapping[str, Any]) -> Optional[str]:
    """The scenario id of an avocado test: from its whiteboard (set first thing by the
    test), else from the variant id that ends its name."""
    try:
        sid = json.loads(test.get("whiteboard") or "{}").get("scenario")
    except (ValueError, AttributeError):
        sid = None
    if not sid and ";" in str(test.get("name", "")):
        sid = str(test["name"]).rsplit(";", 1)[1]
    return sid or None


def avocado_verdicts(results: Mapping[str, Any]) -> Dict[str, Tuple[str, str]]:
    out = {}
    for test in results.get("tests", []):
        sid = scenario_of_test(test) or str(test.get("name"))
        out[sid] = verdict_of_test(test)
    return out


def pytest_verdicts(matrix: Mapping[str, Any]) -> Dict[str, Tuple[str, str]]:
    """The verdict of each scenario's own test in a pytest run's conformance.json (a
    test that reuses a scenario under another id, like the soak chain, is left out)."""
    return {c["id"]: (c["verdict"], c.get("reason") or "") for c in matrix.get("cases", [])
            if c.get("id") in catalogue.SCENARIOS}


def compare(avocado: Mapping[str, Tuple[str, str]], pytest: Mapping[str, Tuple[str, str]]
            ) -> List[Dict[str, Any]]:
    """One row per scenario in either run: both verdicts and whether they agree."""
    order = {sid: i for i, sid in enumerate(catalogue.SCENARIOS)}
    rows = []
    for sid in sorted(set(avocado) | set(pytest), key=lambda s: (order.get(s, 1 << 30), s)):
        a, p = avocado.get(sid), pytest.get(sid)
        rows.append({"id": sid, "avocado": a[0] if a else None,
                     "pytest": p[0] if p else None, "same": bool(a and p and a[0] == p[0]),
                     "avocado_reason": a[1] if a else "", "pytest_reason": p[1] if p else ""})
    return rows


# --------------------------------------------------------------------------- CLI


def _cmd_recipe(args: argparse.Namespace) -> int:
    cfg = config.from_namespace(args, PARAMS)
    # Every value resolved now (option, else CPRH_* env, else default), so the recipe
    # says exactly what its tests ran with; ``slow`` only when set.
    params = {k: str(v) for k, v in config.option_values(cfg).items()
              if v not in (None, False) and k != "reports"}
    params["expectations"] = os.path.abspath(cfg.expectations)
    if cfg.slow:
        params["slow"] = "1"
    load_deviations(cfg)
    scenarios = select(args.suite or (), args.scenario or ())
    if not args.no_probe:
        check_binaries(cfg)
    text = dump_recipe(recipe(scenarios, params))
    if args.output in (None, "-"):
        sys.stdout.write(text)
    else:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            f.write(text)
        print(f"{args.output}: {len(scenarios)} scenario(s); run it with: "
              f"avocado run {args.output}", file=sys.stderr)
    return 0


def _load_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise UsageError(f"{path}: not JSON: {exc}") from None


def _cmd_compare(args: argparse.Namespace) -> int:
    rows = compare(avocado_verdicts(_load_json(args.avocado)),
                   pytest_verdicts(_load_json(args.pytest)))
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        width = max([len(r["id"]) for r in rows] + [8])
        print(f"{'scenario':{width}s}  {'avocado':8s} {'pytest':8s}")
        for r in rows:
            mark = "" if r["same"] else "   <-- differs"
            print(f"{r['id']:{width}s}  {r['avocado'] or '-':8s} {r['pytest'] or '-':8s}{mark}")
        same = sum(r["same"] for r in rows)
        print(f"{same}/{len(rows)} scenario(s) with the same verdict")
    return 0 if rows and all(r["same"] for r in rows) else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cprh_avocado.py", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("recipe", help="write an avocado runnables recipe: one test per "
                                      "scenario (default: every suite)")
    r.add_argument("--suite", action="append", choices=list(SUITES),
                   help="a scenario set, as the pytest suite of that name selects it "
                        "(repeatable)")
    r.add_argument("--scenario", action="append", metavar="ID",
                   help="a scenario id (repeatable); see 'python -m harness list'")
    config.argparse_options(r, [n for n in PARAMS if n not in ("reports",)])
    r.add_argument("--no-probe", action="store_true",
                   help="do not check now that both binaries support cpr-transfer")
    r.add_argument("-o", "--output", metavar="FILE", help="where to write it (default: "
                                                          "stdout)")
    c = sub.add_parser("compare", help="per-scenario verdicts of an avocado run against a "
                                       "pytest run; exit 1 when any differs")
    c.add_argument("avocado", metavar="AVOCADO_RESULTS_JSON")
    c.add_argument("pytest", metavar="PYTEST_CONFORMANCE_JSON")
    c.add_argument("--json", action="store_true", help="rows as JSON")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _cmd_recipe(args) if args.cmd == "recipe" else _cmd_compare(args)
    except UsageError as exc:
        print(f"cprh_avocado.py {args.cmd}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
