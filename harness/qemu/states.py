"""What a QEMU process is doing, and why it ended, as enums.

:class:`RunState` is QEMU's own ``RunState`` (QAPI ``query-status``), plus the few states
the harness itself gives a process it can no longer ask (dead, exec'd into another
QEMU, quit on request, not answering). A state a newer QEMU adds that is not listed here
still parses: it becomes a pseudo-member with that value, so nothing is lost and no
string comparison is needed elsewhere. :class:`Intent` is why a process ended when the
harness ended it or expected it to end.
"""
from __future__ import annotations

import enum
from typing import Optional


class RunState(enum.StrEnum):
    # QEMU's (qapi/run-state.json)
    DEBUG = "debug"
    INMIGRATE = "inmigrate"
    INTERNAL_ERROR = "internal-error"
    IO_ERROR = "io-error"
    PAUSED = "paused"
    POSTMIGRATE = "postmigrate"
    PRELAUNCH = "prelaunch"
    FINISH_MIGRATE = "finish-migrate"
    RESTORE_VM = "restore-vm"
    RUNNING = "running"
    SAVE_VM = "save-vm"
    SHUTDOWN = "shutdown"
    SUSPENDED = "suspended"
    WATCHDOG = "watchdog"
    GUEST_PANICKED = "guest-panicked"
    COLO = "colo"
    # The harness's own, for a process it can no longer ask.
    DEAD = "dead"
    EXECED = "exec'd"
    QUIT = "quit"
    NO_ANSWER = "no answer"
    #: Not read (yet).
    UNKNOWN = ""

    @classmethod
    def _missing_(cls, value: object) -> Optional["RunState"]:
        if not isinstance(value, str):
            return None
        member = str.__new__(cls, value)
        member._name_ = value.upper().replace("-", "_")
        member._value_ = value
        return member

    @property
    def transient(self) -> bool:
        """A state QEMU passes through on its way to its final one."""
        return self in (RunState.INMIGRATE, RunState.FINISH_MIGRATE)


class Intent(enum.StrEnum):
    """Why a process ended, when the harness ended it or expected it to end."""
    QUIT = "quit"          # asked to quit at teardown
    KILLED = "killed"      # killed on purpose (a fault, or a forced teardown)
    REFUSED = "refused"    # a refusing target, expected to exit
    EXECED = "execed"      # became another QEMU in place (cpr-exec); that object lives on
