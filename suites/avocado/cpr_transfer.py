"""cpr-transfer conformance scenarios as avocado-instrumented tests.

One test, parametrized by avocado params; it runs one scenario of
:mod:`harness.scenario.catalogue` on a real QEMU pair with the same library calls as the pytest
adapter (``harness.run.driver.run_scenario``, ``harness.run.verdict.judge``), so there is no
second copy of any check. One scenario::

    avocado run suites/avocado/cpr_transfer.py -p scenario=transfer/unix-unix-memfd-immediate-q35 \\
        [-p qemu_src=PATH] [-p qemu_dst=PATH] [-p accel=auto|kvm|tcg] [-p expectations=FILE]
        [-p qemu_aarch64_src=PATH] [-p qemu_aarch64_dst=PATH] [-p dialect=NAME] [-p slow=1]

Many: a runnables recipe from ``suites/avocado/cprh_avocado.py recipe`` (docs/avocado.md).

Outcomes (the same verdicts as the pytest run):

==========================================  =================================
case                                        avocado status
==========================================  =================================
conforms                                    PASS
a conformance check failed                  FAIL (the ConformanceFailure text)
harness error (timeout, QEMU launch, ...)   ERROR
a capability missing (``Unsupported``)      CANCEL (its reason)
known deviation, fails as recorded          WARN ("known deviation: ..." and the checks)
known deviation, but passed                 FAIL ("XPASS(strict) known deviation: ...")
==========================================  =================================
"""
import json
from contextlib import contextmanager
from typing import Iterator

from avocado import Test
from avocado.core.exceptions import TestWarn

import cprh_avocado as adapter
from harness.core.errors import ConformanceFailure, Unsupported, UsageError
from harness.core.observe import Observer
from harness.scenario import catalogue


class LogObserver(Observer):
    """The library's phases as lines in the test's avocado log (debug.log)."""

    def __init__(self, log):
        self.log = log

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        self.log.info("step: %s", title)
        try:
            yield
        except BaseException as exc:
            self.log.info("step ended by %s: %s", type(exc).__name__,
                          str(exc).splitlines()[0] if str(exc) else "")
            raise


class CprTransfer(Test):
    """Run one cpr-transfer scenario on a real QEMU pair and judge it.

    :avocado: tags=cpr-transfer,conformance
    """

    #: Harness waits (tens of seconds) < this per-test limit, as under pytest.
    timeout = 300

    def _board(self, **fields) -> None:
        """The whiteboard (in results.json): the scenario id, then the verdict in the
        matrix's terms, so a job's results map back to scenarios."""
        self.whiteboard = json.dumps(fields)

    def test_scenario(self):
        from harness.run.driver import run_scenario
        from harness.run.verdict import failed, judge

        sid = self.params.get("scenario")
        if not sid:
            self.error("no 'scenario' parameter: pass -p scenario=ID (ids: python -m "
                       "harness list), or run a recipe (suites/avocado/cprh_avocado.py "
                       "recipe). Note that -p replaces the parameters a recipe gives "
                       "each test.")
        self._board(scenario=sid)
        try:
            sc = catalogue.get(sid)
            cfg = adapter.run_config(self.params.get)
            deviations = adapter.load_deviations(cfg)
        except UsageError as exc:
            self.error(str(exc))
        if adapter.slow_skipped(sc, cfg):
            self._board(scenario=sc.id, verdict="skip", reason=adapter.SLOW_REASON)
            self.cancel(adapter.SLOW_REASON)
        deviation = adapter.known_deviation(cfg, sc, deviations)
        self.log.info("scenario %s: %s; expected: %s", sc.id, sc.title, sc.expect)
        self.log.info("qemu_src=%s qemu_dst=%s other_arch=%s accel=%s dialect=%s",
                      cfg.qemu_src, cfg.qemu_dst, cfg.other_arch, cfg.accel, cfg.dialect)
        if deviation is not None:
            self.log.info("%s: runs as a strict expected failure", deviation.describe())
        try:
            result = run_scenario(sc, cfg, self.outputdir, observer=LogObserver(self.log))
        except Unsupported as exc:
            self._board(scenario=sc.id, verdict="skip", reason=exc.reason)
            self.cancel(exc.reason)
        checks = judge(result)
        mismatches = failed(checks)
        path = adapter.write_record(adapter.case_record(result, checks, self.outputdir,
                                                        adapter.run_identity(self.outputdir)),
                                    self.outputdir)
        self.log.info("observed %s; %d failed check(s); record: %s", result.observed,
                      len(mismatches), path)
        failure = ConformanceFailure(sc.id, mismatches) if mismatches else None
        if deviation is None:
            if failure is not None:
                self._board(scenario=sc.id, verdict="fail", reason=str(failure))
                self.fail(str(failure))
            self._board(scenario=sc.id, verdict="pass")
            return
        if failure is not None:
            # One line: avocado's status line and results.json show it whole.
            reason = "; ".join([deviation.describe()] +
                               [line.strip() for line in str(failure).splitlines()])
            self._board(scenario=sc.id, verdict="xfail", reason=reason)
            raise TestWarn(reason)
        reason = (f"{adapter.XPASS_PREFIX} {deviation.describe()}: the case passed, so "
                  f"this QEMU no longer deviates (or the entry in {deviation.source} is "
                  f"stale)")
        self._board(scenario=sc.id, verdict="xpass", reason=reason)
        self.fail(reason)
