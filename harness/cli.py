"""Command line: ``python -m harness {probe,list,plan,run,sizes,bench,report}`` (also
``cpr-harness``). An adapter: its options come from :data:`harness.run.config.OPTIONS`,
``run`` starts pytest as a child process (the library never imports pytest).

Errors the user can fix are one line on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from harness.core.errors import HarnessError
from harness.cpr.dialect import DIALECTS
from harness.run import config
from harness.scenario import catalogue
from harness.tools.sweep import DEFAULT_SIZES

ROOT = Path(__file__).resolve().parent.parent
EXIT_USAGE = 2
#: The pair options of ``run`` and ``sizes``.
RUN_OPTIONS = tuple(o.name for o in config.OPTIONS)
SIZES_OPTIONS = ("qemu_src", "qemu_dst", "accel", "reports")


def _err(msg: str) -> int:
    print(f"cpr-harness: error: {msg}", file=sys.stderr)
    return EXIT_USAGE


def cmd_probe(args: argparse.Namespace) -> int:
    from harness.qemu.features import FEATURES
    from harness.qemu.probe import probe

    caps = probe(args.qemu)
    if args.json:
        d = caps.to_dict()
        d["features"] = {k: f(caps.path)[0] for k, f in FEATURES.items()}
        print(json.dumps(d, indent=2, default=str))
    else:
        print(caps.summary())
        for name, fn in FEATURES.items():
            ok, reason = fn(caps.path)
            print(f"  feature {name}: {'yes' if ok else 'no'}" + (f" ({reason})" if reason else ""))
    # 0: supports cpr-transfer (in the dialect it speaks); 1: is QEMU but does not.
    return 0 if not caps.dialect_problems() else 1


def cmd_list(args: argparse.Namespace) -> int:
    from harness.scenario.selection import DERIVED

    for sc in catalogue.select(area=args.area or ""):
        print(f"{sc.id:60s} {sc.expect}")
    for cid, what in DERIVED.items():
        if not args.area or cid.startswith(args.area + "/"):
            print(f"{cid:60s} ({what})")
    return 0


def pytest_args(cfg: config.RunConfig, scenarios: Sequence[str], jobs: int,
                suites: Sequence[str] = ()) -> List[str]:
    """The pytest command line that runs the conformance suite with ``cfg``."""
    args = [sys.executable, "-m", "pytest", str(ROOT / "suites" / "conformance"),
            "-p", "no:cacheprovider", "--rootdir", str(ROOT), "-c", str(ROOT / "pyproject.toml"),
            "--junitxml", os.path.join(cfg.reports, "junit.xml")]
    values = config.option_values(cfg)
    for o in config.OPTIONS:
        if o.switch:
            if values[o.name]:
                args.append(o.flag)
        elif values[o.name] is not None:
            args += [o.flag, str(values[o.name])]
    if jobs != 1:
        args += ["-n", str(jobs)]
    for sid in scenarios:
        args += ["--scenario", sid]
    for name in suites:
        args += ["--suite", name]
    return args


def cmd_run(args: argparse.Namespace, extra: List[str]) -> int:
    """Run the conformance suite through pytest with this project's conftest.

    Writes the matrix (conformance.json/.html/.md), allure-results and, unless
    ``--no-allure-html``, the Allure HTML report, all under ``--reports``."""
    from harness.run.setup import check_binaries
    from harness.tools import report

    from harness.scenario.selection import check

    check(args.scenario or [], args.suite or [])  # unknown: UsageError before anything starts
    cfg = config.from_namespace(args, RUN_OPTIONS)
    check_binaries(cfg)
    if extra[:1] == ["--"]:  # `run [OPTIONS] -- [pytest args]`
        extra = extra[1:]
    paths = report.default_paths(Path(cfg.reports))
    # This run's outputs, not the last run's: a run that dies early leaves no stale
    # conformance.json for a compare to read.
    for key in ("json", "html", "md"):
        paths[key].unlink(missing_ok=True)
    own_alluredir = not any(a == "--alluredir" or a.startswith("--alluredir=") for a in extra)
    if own_alluredir:
        shutil.rmtree(paths["allure-results"], ignore_errors=True)
        extra = ["--alluredir", str(paths["allure-results"])] + extra
    code = subprocess.call(pytest_args(cfg, args.scenario or [], args.jobs, args.suite or [])
                           + extra, cwd=str(ROOT))
    if own_alluredir and not args.no_allure_html and paths["allure-results"].is_dir():
        _, line = report.generate_allure(Path(cfg.reports))
        print(line, flush=True)
    return code


def cmd_report(args: argparse.Namespace) -> int:
    """Regenerate the matrix pages and the Allure report, or compare with a baseline."""
    from harness.tools import report

    reports = Path(config.from_namespace(args, ("reports",)).reports)
    paths = report.default_paths(reports)
    current_path = Path(args.current) if args.current else paths["json"]
    baseline = args.baseline
    kept = reports / "baseline.json"
    if baseline == "auto":
        env = os.environ.get("CPRH_BASELINE")
        if env:
            baseline = env
        elif kept.is_file():
            baseline = str(kept)
        else:
            current = report.load_matrix(current_path)
            if args.keep_baseline:
                _keep_baseline(report, current_path, kept)
                print(f"no baseline: compare skipped (first night); "
                      f"{report.summary_line(current['cases'])}")
                return 0
            print(f"no baseline: compare skipped (set CPRH_BASELINE=FILE or put "
                  f"{report.relpath(kept)} in place); "
                  f"{report.summary_line(current['cases'])}")
            return 0
    if baseline:
        code = _compare(report, Path(baseline), current_path,
                        Path(args.output) if args.output else paths["regressions"])
        if args.keep_baseline:
            if Path(baseline).resolve() != kept.resolve():
                print(f"baseline {baseline} was given (CPRH_BASELINE or --baseline): kept "
                      f"as it is, {report.relpath(kept)} not written")
            elif code == 0:
                _keep_baseline(report, current_path, kept)
            else:
                print(f"baseline: {report.relpath(kept)} stays the last good night's")
        return code
    from harness.tools.report import runs

    current = report.load_matrix(current_path)
    current["meta"]["warnings"] = runs.disagreements(current_path.parent, current)
    written = report.write_matrix(current, current_path.parent)
    print(report.summary_line(current["cases"]))
    for w in current["meta"]["warnings"]:
        print(f"WARNING: {w}")
    print("conformance matrix: " + ", ".join(
        report.relpath(written[k]) for k in ("json", "html", "md")))
    if not args.no_allure_html:
        status, line = report.generate_allure(reports)
        print(line)
        if status == report.ALLURE_FAILED:
            return 1
    return 0


def _keep_baseline(report, current_path: Path, kept: Path) -> None:
    """This night's matrix becomes the next night's baseline (atomically)."""
    tmp = kept.with_name(kept.name + ".tmp")
    shutil.copyfile(current_path, tmp)
    tmp.replace(kept)
    print(f"baseline: {report.relpath(kept)} now holds this night's matrix for the next "
          f"night (reset: rm {report.relpath(kept)})")


def _compare(report, baseline: Path, current_path: Path, out: Path) -> int:
    base = report.load_matrix(baseline)
    current = report.load_matrix(current_path)
    cmp = report.compare(base, current)
    bname, cname = report.relpath(baseline), report.relpath(current_path)
    print(report.render_comparison_text(cmp, bname, cname))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report.render_comparison_md(cmp, bname, cname))
    print(f"written: {report.relpath(out)}")
    return cmp.exit_code


def cmd_plan(args: argparse.Namespace) -> int:
    import tempfile

    from harness.cpr import dialect
    from harness.run.plan import render_plan

    sc = catalogue.get(args.scenario)
    with tempfile.TemporaryDirectory(prefix="cprh-plan-") as wd:
        print(f"# {sc.id}: {dialect.get(args.dialect).describe(sc.id, sc.title)}")
        print(f"# expected: {sc.expect}")
        print(render_plan(sc, dialect.get(args.dialect), wd).text())
    return 0


def cmd_sizes(args: argparse.Namespace) -> int:
    from harness.tools.sweep import parse_size_mb, run_sweep, table

    sizes = [parse_size_mb(x) for x in args.sizes.split(",") if x.strip()]
    cfg = config.from_namespace(args, SIZES_OPTIONS)
    out = Path(cfg.reports) / "sizes"
    rows = run_sweep(sizes, cfg, str(out))
    print(table(rows))
    (Path(cfg.reports) / "sizes.json").write_text(
        json.dumps([r.to_dict() for r in rows], indent=2))
    print(f"written: {Path(cfg.reports) / 'sizes.json'}; per size: {out}/ram-*/")
    return 0 if all(r.verdict in ("pass",) or r.verdict.startswith("skip") for r in rows) else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cpr-harness",
                                description="cpr-transfer conformance harness for QEMU")
    sub = p.add_subparsers(dest="command", required=True)

    pp = sub.add_parser("probe", help="say what a QEMU binary supports for cpr-transfer")
    pp.add_argument("--qemu", default="qemu-system-x86_64", metavar="PATH")
    pp.add_argument("--json", action="store_true", help="machine-readable output")

    pl = sub.add_parser("list", help="list the scenario ids")
    pl.add_argument("--area", help="only this area (e.g. transfer)")

    pr = sub.add_parser("run", help="run the conformance suite (extra args go to pytest)")
    config.argparse_options(pr, RUN_OPTIONS)
    pr.add_argument("-j", "--jobs", type=int, default=2, metavar="N",
                    help="parallel pytest-xdist workers (default 2; 1 = no xdist)")
    pr.add_argument("--scenario", action="append", metavar="ID",
                    help="run only this scenario id (repeatable); see 'list'")
    pr.add_argument("--suite", action="append", metavar="NAME",
                    help="run only this suite's scenarios (repeatable): transfer, refusals, "
                         "faults, core (the x86 guest's cases), soak (the chain)")
    pr.add_argument("--no-allure-html", action="store_true",
                    help="write allure-results but do not build the Allure HTML report")

    pn = sub.add_parser("plan", help="show what a scenario renders to (a dry run: the "
                                     "command lines and QMP commands, nothing is started)")
    pn.add_argument("scenario", metavar="ID")
    pn.add_argument("--dialect", default="released-10x", choices=DIALECTS)

    ps = sub.add_parser("sizes", help="run the base case at several guest RAM sizes and "
                                      "print the main stream size and the guest pause")
    ps.add_argument("--sizes", default=",".join(DEFAULT_SIZES), metavar="LIST",
                    help="comma-separated RAM sizes (default: %(default)s)")
    config.argparse_options(ps, SIZES_OPTIONS)

    sub.add_parser("bench", help="benchmark cpr-transfer against precopy and cpr-reboot "
                                 "(options: python -m harness bench --help)", add_help=False)
    sub.add_parser("versions", help="the core matrix on each QEMU build and on every ordered "
                                    "pair (upgrades, downgrades), then the grid (options: "
                                    "python -m harness versions --help)", add_help=False)
    sub.add_parser("fleet", help="the nightly across hosts (docs/fleet.md): 'fleet job' runs "
                                 "one CI matrix entry, 'fleet merge' the cross-host grid and "
                                 "the compare with the last good night", add_help=False)
    sub.add_parser("repro", help="write a standalone script (bash + python3's standard "
                                 "library) that reproduces one scenario outside the harness, "
                                 "for a QEMU bug report (options: python -m harness repro "
                                 "--help)", add_help=False)

    _report_parsers(sub)
    return p


def _report_parsers(sub: argparse._SubParsersAction) -> None:
    rp = sub.add_parser("report", help="rebuild the matrix pages and the Allure report, "
                                       "or compare with a baseline (exit 1 on regressions)")
    config.argparse_options(rp, ("reports",))
    rp.add_argument("--current", metavar="FILE",
                    help="the matrix to report on (default: REPORTS/conformance.json)")
    rp.add_argument("--baseline", metavar="FILE|auto",
                    help="compare with this older conformance.json: list verdict changes, "
                         "write REPORTS/regressions.md, exit 1 on a regression. 'auto': "
                         "$CPRH_BASELINE, else REPORTS/baseline.json, else no compare")
    rp.add_argument("--keep-baseline", action="store_true",
                    help="with --baseline auto: when nothing regressed (or there was no "
                         "baseline yet), this matrix becomes REPORTS/baseline.json for the "
                         "next night")
    rp.add_argument("--output", metavar="FILE",
                    help="where the comparison goes (default: REPORTS/regressions.md)")
    rp.add_argument("--no-allure-html", action="store_true",
                    help="do not build the Allure HTML report")
    pp = sub.add_parser("pauses", help="the guest's stalls over many cases, from their "
                                       "result.json files: what the pause budgets are set "
                                       "from (docs/pause-budget.md)")
    pp.add_argument("dirs", nargs="+", metavar="DIR", help="directories searched for "
                                                            "result.json")
    pp.add_argument("--json", action="store_true", help="every case's figures as JSON")
    pg = sub.add_parser("grid", help="scenarios by builds and pairs, from result directories "
                                     "(grid.html, grid.md)")
    pg.add_argument("runs", nargs="+", metavar="RUNDIR",
                    help="result directories (each with a conformance.json)")
    pg.add_argument("-o", "--output", metavar="OUTDIR", default=".",
                    help="where grid.html and grid.md go (default: .)")



def cmd_grid(args: argparse.Namespace) -> int:
    from harness.tools.grid import write_grid

    paths = write_grid(args.runs, args.output)
    print(f"written: {paths['html']}, {paths['md']}")
    return 0


def cmd_pauses(args: argparse.Namespace) -> int:
    from harness.tools import pauses

    missing = [d for d in args.dirs if not Path(d).is_dir()]
    if missing:
        return _err(f"pauses: no such directory: {', '.join(missing)}")
    found = pauses.rows(args.dirs)
    if args.json:
        print(json.dumps({"summary": pauses.summary(found), "cases": found}, indent=1))
    else:
        print(pauses.table(found))
    return 0


COMMANDS = {"probe": cmd_probe, "list": cmd_list, "report": cmd_report, "plan": cmd_plan,
            "sizes": cmd_sizes, "grid": cmd_grid, "pauses": cmd_pauses}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        from harness.tools import bench
        return int(bench.main(argv[1:]) or 0)
    if argv[:1] == ["repro"]:
        from harness.tools import repro
        return int(repro.main(argv[1:]) or 0)
    if argv[:1] == ["fleet"]:
        from harness.tools import fleet
        return fleet.main(argv[1:])
    if argv[:1] == ["versions"]:
        from harness.tools import versions
        try:
            return versions.main(argv[1:])
        except HarnessError as exc:
            return _err(str(exc))
        except KeyboardInterrupt:
            return 130
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "run":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command == "run":
            return cmd_run(args, extra)
        return COMMANDS[args.command](args)
    except HarnessError as exc:
        return _err(str(exc))
    except KeyboardInterrupt:
        return 130
