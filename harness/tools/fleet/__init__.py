"""The nightly across a fleet of hosts (docs/fleet.md): :mod:`.job` runs the suite for one
matrix entry of the CI pipeline (a host class, a QEMU build or ordered pair, an accel)
into its own results directory; :mod:`.merge` builds the cross-host grid, the merged
matrix and its compare against the last good night, which it keeps as the next
baseline; :mod:`.allure_merge` puts every job's Allure results into one report.
``python -m harness fleet {job,merge}`` is the command line (:func:`main`)."""
from __future__ import annotations

from typing import Sequence


def main(argv: Sequence[str]) -> int:
    """``python -m harness fleet job|merge ...``. Bad input is one line and exit 2, an
    infrastructure failure a retry may cure exit 75, any other failure exit 1."""
    import sys

    from harness.core.errors import HarnessError, UsageError
    from harness.tools.fleet import job, merge

    argv = list(argv)
    commands = {"job": job.main, "merge": merge.main}
    try:
        if argv[:1] and argv[0] in commands:
            return commands[argv[0]](argv[1:])
        raise UsageError("fleet: say 'job' (one matrix entry) or 'merge' (the grid and the "
                         "compare); e.g. python -m harness fleet job --help")
    except UsageError as exc:
        print(f"cpr-harness: error: {exc}", file=sys.stderr)
        return 2
    except job.TempFail as exc:
        print(f"cpr-harness: temporary failure: {exc}", file=sys.stderr)
        return job.EX_TEMPFAIL
    except HarnessError as exc:
        print(f"cpr-harness: failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
