"""Judge what a pair did against what the scenario requires.

:func:`judge` returns every check it made (passes too), each a
:class:`~harness.core.errors.Check` with a stable id; the failed ones (:func:`failed`)
are the case's verdict (none: it conforms). It never runs anything: it reads the
:class:`~harness.run.result.PairResult`'s records. Its shape: the outcome (and QEMU's
message, the source's survival and the retry for a refusal), then every registered
check family (:data:`harness.run.checks.FAMILIES`) on each completed attempt the
scenario asks about, then on the case as a whole (its devices, measured from before
the transfer to after it), then the deaths. :func:`record` writes it all as plain data.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

from harness.core.errors import Check
from harness.run.checks import FAMILIES
from harness.run.checks.chain import judge_chain  # noqa: F401  (the chain's judge, for adapters)
from harness.run.checks.deaths import judge_deaths
from harness.run.checks.outcome import (judge_outcome, judge_refusal, judge_survival,
                                        source_lives_on)
from harness.run.records import AttemptRecord
from harness.run.result import PairResult
from harness.scenario.model import Expect, Observed


def failed(checks: List[Check]) -> List[Check]:
    return [c for c in checks if not c.ok]


def judge_attempt(r: PairResult, a: AttemptRecord) -> List[Check]:
    """Every registered family's checks of one completed attempt."""
    return [c for fam in FAMILIES for c in fam.judge(r, a)]


def judge_case(r: PairResult) -> List[Check]:
    """Every registered family's checks of the case as a whole (its case records)."""
    return [c for fam in FAMILIES for c in fam.judge_case(r)]


def judge(r: PairResult) -> List[Check]:
    exp = r.scenario.expect
    out = [judge_outcome(r)]
    if not exp.kind.accepts(r.observed):
        # Later checks of this kind would only restate the same failure; but whatever
        # refused or failed, the source must still run its guest with its RAM intact.
        if source_lives_on(r):
            out += judge_survival(r)
        return out
    if exp.kind is Expect.COMPLETES:
        assert r.first is not None
        out += judge_attempt(r, r.first)
    elif exp.kind is not Expect.SRC_LOST:  # src-lost: the outcome itself says it
        out += judge_refusal(r)
        retry = r.retry
        if r.scenario.retry and retry is not None and retry.observed is Observed.COMPLETED:
            out += judge_attempt(r, retry)
    out += judge_case(r)
    out.append(judge_deaths(r.deaths, r.ended))
    return out


def record(r: PairResult, checks: List[Check], base: Optional[str] = None,
           run: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The case's result record (result.json), the same for every adapter: every check
    (``checks``, passes included) and the failed ones (``mismatches``). ``base``: the
    case's directory; artifact paths below it are made relative to it (the record
    moves with its directory). ``run``: the run's identity (harness.run.identity)."""
    rec = r.to_dict()
    rec["id"] = r.scenario.id
    rec["checks"] = [c.to_dict() for c in checks]
    rec["mismatches"] = [c.to_dict() for c in failed(checks)]
    return relative_paths(rec, base, run)


def relative_paths(rec: Dict[str, Any], base: Optional[str],
                   run: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """``rec`` with its artifact and backtrace paths relative to ``base`` where they lie
    below it, and the run's identity."""
    if run is not None:
        rec["run"] = dict(run)
    if base is None:
        return rec

    def rel(path: Any) -> Any:
        if not isinstance(path, str) or not os.path.isabs(path):
            return path
        r = os.path.relpath(path, base)
        return path if r.startswith("..") else r

    # Only files that are there: a QEMU that never got as far as opening its console
    # leaves none, and a link to it would dangle.
    rec["artifacts"] = {k: rel(v) for k, v in (rec.get("artifacts") or {}).items()
                        if not isinstance(v, str) or os.path.exists(
                            v if os.path.isabs(v) else os.path.join(base, v))}
    # And every other file the case left there (the sampler's log, chain.json...).
    known = set(rec["artifacts"].values())
    try:
        names = sorted(os.listdir(base))
    except OSError:
        names = []
    for name in names:
        if name not in known and name != "result.json" and os.path.isfile(os.path.join(base, name)):
            rec["artifacts"][name] = name
    for c in rec.get("crashes") or []:
        c["backtrace"] = rel(c.get("backtrace"))
    return rec


def chain_record(c: Any, checks: List[Check], base: Optional[str] = None,
                 run: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """A soak chain's result record, in the shape of a case's (result.json), with one
    entry per hop in ``hops``."""
    rec = c.to_dict()
    rec["id"] = c.scenario.id if c.scenario is not None else ""
    rec["observed"] = "completed" if c.failed_hop is None else "failed"
    rec["observed_message"] = c.failure
    rec["checks"] = [x.to_dict() for x in checks]
    rec["mismatches"] = [x.to_dict() for x in failed(checks)]
    return relative_paths(rec, base, run)
