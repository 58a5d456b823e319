"""The harness's exception tree.

One root, :class:`HarnessError`. Subclasses keep their facts as fields and build
their message from them, so a caller can both print ``str(err)`` (one actionable
line, then context) and inspect the fields.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence


class HarnessError(Exception):
    """Root of every error the harness raises on purpose."""


class UsageError(HarnessError):
    """Bad input from the user: an option value, a scenario id, a path."""


class QemuNotFound(HarnessError):
    def __init__(self, binary: str):
        self.binary = binary
        super().__init__(
            f"QEMU binary {binary!r} not found or not executable; install QEMU >= 10.0 "
            f"(scripts/setup-host.sh) or pass --qemu-src/--qemu-dst PATH")


class NotQemu(HarnessError):
    def __init__(self, binary: str, detail: str):
        self.binary = binary
        self.detail = detail
        super().__init__(f"{binary!r} does not behave like QEMU: {detail}")


class ProbeFailed(HarnessError):
    def __init__(self, binary: str, detail: str, log: Optional[str] = None):
        self.binary = binary
        self.detail = detail
        self.log = log
        msg = f"probing {binary!r} failed: {detail}"
        if log:
            msg += f"\n--- output ---\n{log}"
        super().__init__(msg)


class Unsupported(HarnessError):
    """The QEMU binary or the host lacks a capability the case needs.

    Adapters turn this into a skip with :attr:`reason`, never a pass.
    """

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


class WaitTimeout(HarnessError):
    """A bounded wait ran out. Names what was awaited, the last state and the time."""

    def __init__(self, what: str, timeout: float, elapsed: float,
                 last_state: object = None, side: Optional[str] = None,
                 log_path: Optional[str] = None, deadline: str = ""):
        self.what = what
        self.timeout = timeout
        self.elapsed = elapsed
        self.last_state = last_state
        self.side = side
        self.log_path = log_path
        #: Non-empty when the case's deadline (named here), not the wait's own limit, ran out.
        self.deadline = deadline
        who = f"{side}: " if side else ""
        limit = f"{deadline}'s deadline" if deadline else f"limit {timeout:.1f}s"
        msg = (f"{who}timed out after {elapsed:.1f}s ({limit}) "
               f"waiting for {what}; last state: {last_state!r}")
        if log_path:
            msg += f"; log: {log_path}"
        super().__init__(msg)


#: What QEMU says when it cannot find its firmware (a build tree run in place, or a
#: private root without its -L): the launch failure then names the fix.
_FIRMWARE = re.compile(r"could not load PC BIOS|could not find ROM|failed to find romfile|"
                       r"Could not open option rom|could not load ROM|Failed to load firmware",
                       re.IGNORECASE)
FIRMWARE_HINT = ("this QEMU cannot find its firmware: run an installed one (make install, "
                 "then PREFIX/bin/qemu-system-*), or a wrapper that passes -L <the "
                 "directory with its firmware> (a build tree: -L <build>/pc-bios -L "
                 "/usr/share/seabios); see docs/qemu-builds.md")


class VMLaunchFailure(HarnessError):
    """A QEMU process exited when it should have been running."""

    def __init__(self, side: str, exitcode: Optional[int], cmdline: Sequence[str],
                 log_path: str, log_tail: str, when: str = "during start-up"):
        self.side = side
        self.exitcode = exitcode
        self.cmdline = list(cmdline)
        self.log_path = log_path
        self.log_tail = log_tail
        self.when = when
        #: The fix, when the log says what is wrong with the binary (its firmware).
        self.hint = FIRMWARE_HINT if _FIRMWARE.search(log_tail or "") else ""
        super().__init__(
            f"{side}: QEMU exited with code {exitcode} {when}; log: {log_path}"
            + (f"\n{self.hint}" if self.hint else "") + "\n"
            f"--- last lines of the log ---\n{log_tail}\n"
            f"--- command line ---\n{' '.join(self.cmdline)}")


class AbnormalShutdown(HarnessError):
    """A QEMU did not quit when asked and had to be killed (QEMUMachine's name for it).

    Raised by :meth:`harness.qemu.process.QemuProcess.shutdown` after the process is
    gone and everything is cleaned up; the pair driver records it and tears down the
    other side anyway."""

    def __init__(self, side: str, how: str, log_path: str):
        self.side = side
        self.how = how
        self.log_path = log_path
        super().__init__(f"{side}: QEMU did not quit on request and was {how}; "
                         f"log: {log_path}")


class QMPCommandFailed(HarnessError):
    """QEMU answered a QMP command with an error."""

    def __init__(self, side: str, command: str, args: object, error_class: str,
                 desc: str, log_path: Optional[str] = None):
        self.side = side
        self.command = command
        self.args = args
        self.error_class = error_class
        self.desc = desc
        self.log_path = log_path
        msg = f"{side}: QMP {command} failed: {error_class}: {desc}"
        if log_path:
            msg += f" (log: {log_path})"
        super().__init__(msg)


class QMPConnectionLost(HarnessError):
    def __init__(self, side: str, command: str, detail: str):
        self.side = side
        self.command = command
        self.detail = detail
        super().__init__(f"{side}: QMP connection lost during {command}: {detail}")


#: What a reader must never see in a check's text: Python's words and reprs.
_PYTHONISMS = re.compile(r"\b(None|True|False)\b|^[\[{]|\{'|<[A-Za-z_.]+ object at ")


def reads_like_python(text: str) -> bool:
    """Whether ``text`` shows Python's words or a repr (``None``, ``True``, ``{'a'``...):
    what a check, an evidence line or a page must never show a reader."""
    return bool(_PYTHONISMS.search(text))


@dataclass(frozen=True)
class Check:
    """One check of a verdict, as judged: a stable ``id`` (what categories, self-tests
    and reports key on), its ``title`` (what a reader reads), whether it conforms, and
    what was expected and observed, in words.

    ``attempt`` names the attempt it judged ("" for the scenario's own transfer,
    ``retry``, ``hop003``). The texts are checked at birth: a ``None``, ``True``,
    ``False`` or another Python repr is a bug of the check that made it (raised here,
    so no page ever shows one)."""
    id: str
    title: str
    ok: bool
    expected: str
    observed: str
    detail: str = ""
    attempt: str = ""

    def __post_init__(self) -> None:
        for name in ("id", "title", "expected", "observed", "detail", "attempt"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise TypeError(f"check {self.id!r}: {name} must be text, not "
                                f"{type(value).__name__} ({value!r})")
            if type(value) is not str:  # a str enum (a run state): its text
                object.__setattr__(self, name, value := str(value))
            if name != "id" and _PYTHONISMS.search(value):
                raise ValueError(f"check {self.id!r}: {name} reads like Python: {value!r}")
        if not isinstance(self.ok, bool):
            raise TypeError(f"check {self.id!r}: ok must be a bool")

    @property
    def name(self) -> str:
        """The title as a reader sees it, with the attempt it judged (``retry: ...``)."""
        return f"{self.attempt}: {self.title}" if self.attempt else self.title

    def to_dict(self) -> dict:
        return {"id": self.id, "check": self.name, "ok": self.ok, "expected": self.expected,
                "actual": self.observed, "detail": self.detail, "attempt": self.attempt}


class ConformanceFailure(HarnessError):
    """The QEMU pair did not behave as the scenario requires."""

    def __init__(self, scenario_id: str, mismatches: Sequence[Check]):
        self.scenario_id = scenario_id
        self.mismatches = [m for m in mismatches if not m.ok]
        lines = [f"{scenario_id}: {len(self.mismatches)} check(s) failed"]
        for m in self.mismatches:
            line = f"  - {m.name} [{m.id}]: expected {m.expected!r}, got {m.observed!r}"
            if m.detail:
                line += f" ({m.detail})"
            lines.append(line)
        super().__init__("\n".join(lines))
