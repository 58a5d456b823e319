"""Command line: ``python -m harness {probe,list,run,report}`` (also ``cpr-harness``).

Errors the user can fix are one line on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from harness import catalogue
from harness.dialect import DIALECTS
from harness.sweep import DEFAULT_SIZES
from harness.errors import HarnessError

ROOT = Path(__file__).resolve().parent.parent
EXIT_USAGE = 2


def _err(msg: str) -> int:
    print(f"cpr-harness: error: {msg}", file=sys.stderr)
    return EXIT_USAGE


def cmd_probe(args: argparse.Namespace) -> int:
    from harness.capabilities import probe
    from harness.features import FEATURES

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
    # 0: supports cpr-transfer; 1: is QEMU but does not.
    return 0 if not caps.cpr_transfer_problems() else 1


def cmd_list(args: argparse.Namespace) -> int:
    for sc in catalogue.select(area=args.area or ""):
        print(f"{sc.id:60s} {sc.expect}")
    return 0


def cmd_run(args: argparse.Namespace, extra: List[str]) -> int:
    """Run the conformance suite through pytest with this project's conftest.

    Writes the matrix (conformance.json/.html/.md), allure-results and, unless
    ``--no-allure-html``, the Allure HTML report, all under ``--reports``."""
    from harness import report

    for sid in args.scenario or []:
        catalogue.get(sid)  # unknown id: UsageError before anything starts
    from harness.pair import RunConfig, check_binaries

    check_binaries(RunConfig(qemu_src=args.qemu_src, qemu_dst=args.qemu_dst,
                             dialect=args.dialect))
    import pytest

    if extra[:1] == ["--"]:  # `run [OPTIONS] -- [pytest args]`
        extra = extra[1:]
    paths = report.default_paths(Path(args.reports))
    # This run's outputs, not the last run's: a run that dies early leaves no stale
    # conformance.json for a compare to read.
    for key in ("json", "html", "md"):
        paths[key].unlink(missing_ok=True)
    own_alluredir = not any(a == "--alluredir" or a.startswith("--alluredir=") for a in extra)
    if own_alluredir:
        shutil.rmtree(paths["allure-results"], ignore_errors=True)
        extra = ["--alluredir", str(paths["allure-results"])] + extra
    pargs = [str(ROOT / "suites" / "conformance"), "-p", "no:cacheprovider",
             "--rootdir", str(ROOT), "-c", str(ROOT / "pyproject.toml"),
             "--qemu-src", args.qemu_src, "--qemu-dst", args.qemu_dst,
             "--dialect", args.dialect, "--qemu-aarch64-src", args.qemu_aarch64_src,
             "--qemu-aarch64-dst", args.qemu_aarch64_dst,
             "--accel", args.accel, "--reports", args.reports,
             "--junitxml", os.path.join(args.reports, "junit.xml")]
    if args.jobs != 1:
        pargs += ["-n", str(args.jobs)]
    for sid in args.scenario or []:
        pargs += ["--scenario", sid]
    code = int(pytest.main(pargs + extra))
    if own_alluredir and not args.no_allure_html and paths["allure-results"].is_dir():
        _, line = report.generate_allure(Path(args.reports))
        print(line, flush=True)
    return code


def cmd_report(args: argparse.Namespace) -> int:
    """Regenerate the matrix pages and the Allure report, or compare with a baseline."""
    from harness import report

    reports = Path(args.reports)
    paths = report.default_paths(reports)
    current_path = Path(args.current) if args.current else paths["json"]
    baseline = args.baseline
    if baseline == "auto":
        env = os.environ.get("CPRH_BASELINE")
        if env:
            baseline = env
        elif (reports / "baseline.json").is_file():
            baseline = str(reports / "baseline.json")
        else:
            current = report.load_matrix(current_path)
            print(f"no baseline: compare skipped (set CPRH_BASELINE=FILE or put "
                  f"{report.relpath(reports / 'baseline.json')} in place); "
                  f"{report.summary_line(current['cases'])}")
            return 0
    if baseline:
        base = report.load_matrix(Path(baseline))
        current = report.load_matrix(current_path)
        cmp = report.compare(base, current)
        bname, cname = report.relpath(Path(baseline)), report.relpath(current_path)
        print(report.render_comparison_text(cmp, bname, cname))
        out = Path(args.output) if args.output else paths["regressions"]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report.render_comparison_md(cmp, bname, cname))
        print(f"written: {report.relpath(out)}")
        return cmp.exit_code
    current = report.load_matrix(current_path)
    written = report.write_matrix(current, current_path.parent)
    print(report.summary_line(current["cases"]))
    print("conformance matrix: " + ", ".join(
        report.relpath(written[k]) for k in ("json", "html", "md")))
    if not args.no_allure_html:
        status, line = report.generate_allure(reports)
        print(line)
        if status == report.ALLURE_FAILED:
            return 1
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    import tempfile

    from harness import dialect
    from harness.pair import render_plan

    sc = catalogue.get(args.scenario)
    with tempfile.TemporaryDirectory(prefix="cprh-plan-") as wd:
        print(f"# {sc.id}: {dialect.get(args.dialect).describe(sc.id, sc.title)}")
        print(f"# expected: {sc.expect}")
        print(render_plan(sc, dialect.get(args.dialect), wd).text())
    return 0


def cmd_sizes(args: argparse.Namespace) -> int:
    import json

    from harness.pair import RunConfig
    from harness.sweep import parse_size_mb, run_sweep, table

    sizes = [parse_size_mb(x) for x in args.sizes.split(",") if x.strip()]
    cfg = RunConfig(qemu_src=args.qemu_src, qemu_dst=args.qemu_dst, accel=args.accel)
    out = Path(args.reports) / "sizes"
    rows = run_sweep(sizes, cfg, str(out))
    print(table(rows))
    (Path(args.reports) / "sizes.json").write_text(
        json.dumps([r.to_dict() for r in rows], indent=2))
    print(f"written: {Path(args.reports) / 'sizes.json'}; per size: {out}/ram-*/")
    return 0 if all(r.verdict in ("pass",) or r.verdict.startswith("skip") for r in rows) else 1


def _pair_options(p: argparse.ArgumentParser) -> None:
    """The QEMU pair, accel and reports options (with their CPRH_* environment)."""
    p.add_argument("--qemu-src", default=os.environ.get("CPRH_QEMU_SRC", "qemu-system-x86_64"),
                   metavar="PATH")
    p.add_argument("--qemu-dst", default=os.environ.get("CPRH_QEMU_DST", "qemu-system-x86_64"),
                   metavar="PATH")
    p.add_argument("--accel", choices=("auto", "kvm", "tcg"),
                   default=os.environ.get("CPRH_ACCEL", "auto"))
    p.add_argument("--reports", default=os.environ.get("CPRH_REPORTS", str(ROOT / "reports")),
                   metavar="DIR")


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
    _pair_options(pr)
    pr.add_argument("-j", "--jobs", type=int, default=2, metavar="N",
                    help="parallel pytest-xdist workers (default 2; 1 = no xdist)")
    pr.add_argument("--scenario", action="append", metavar="ID",
                    help="run only this scenario id (repeatable); see 'list'")
    pr.add_argument("--no-allure-html", action="store_true",
                    help="write allure-results but do not build the Allure HTML report")
    pr.add_argument("--dialect", default=os.environ.get("CPRH_DIALECT", "auto"),
                    choices=("auto",) + DIALECTS,
                    help="cpr-transfer interface: auto (from the QMP schema) or forced")
    pr.add_argument("--qemu-aarch64-src", metavar="PATH",
                    default=os.environ.get("CPRH_QEMU_AARCH64_SRC", "qemu-system-aarch64"))
    pr.add_argument("--qemu-aarch64-dst", metavar="PATH",
                    default=os.environ.get("CPRH_QEMU_AARCH64_DST", "qemu-system-aarch64"))

    pn = sub.add_parser("plan", help="show what a scenario renders to (a dry run: the "
                                     "command lines and QMP commands, nothing is started)")
    pn.add_argument("scenario", metavar="ID")
    pn.add_argument("--dialect", default="released-10x", choices=DIALECTS)

    ps = sub.add_parser("sizes", help="run the base case at several guest RAM sizes and "
                                      "print the main stream size and the guest pause")
    ps.add_argument("--sizes", default=",".join(DEFAULT_SIZES), metavar="LIST",
                    help="comma-separated RAM sizes (default: %(default)s)")
    _pair_options(ps)

    sub.add_parser("bench", help="benchmark cpr-transfer against precopy and cpr-reboot "
                                 "(options: python -m harness bench --help)", add_help=False)

    rp = sub.add_parser("report", help="rebuild the matrix pages and the Allure report, "
                                       "or compare with a baseline (exit 1 on regressions)")
    rp.add_argument("--reports", default=os.environ.get("CPRH_REPORTS", str(ROOT / "reports")),
                    metavar="DIR", help="the run's reports directory (default: reports/)")
    rp.add_argument("--current", metavar="FILE",
                    help="the matrix to report on (default: REPORTS/conformance.json)")
    rp.add_argument("--baseline", metavar="FILE|auto",
                    help="compare with this older conformance.json: list verdict changes, "
                         "write REPORTS/regressions.md, exit 1 on a regression. 'auto': "
                         "$CPRH_BASELINE, else REPORTS/baseline.json, else no compare")
    rp.add_argument("--output", metavar="FILE",
                    help="where the comparison goes (default: REPORTS/regressions.md)")
    rp.add_argument("--no-allure-html", action="store_true",
                    help="do not build the Allure HTML report")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        try:
            from harness import bench
        except ImportError as exc:
            return _err(f"the benchmark is not available: {exc}")
        return int(bench.main(argv[1:]) or 0)
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "run":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command == "probe":
            return cmd_probe(args)
        if args.command == "list":
            return cmd_list(args)
        if args.command == "report":
            return cmd_report(args)
        if args.command == "plan":
            return cmd_plan(args)
        if args.command == "sizes":
            return cmd_sizes(args)
        return cmd_run(args, extra)
    except HarnessError as exc:
        return _err(str(exc))
    except KeyboardInterrupt:
        return 130
