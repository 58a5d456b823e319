"""Faults as data: what to break, on which side, at which named stage of a transfer.

The pair driver (:mod:`harness.run.driver`) passes each stage of the hand-over through
``at_stage(stage)``; a scenario's :class:`Fault` fires at its own stage. Nothing in the
driver tests fault names.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Dict

from harness.core.errors import UsageError


class Stage(str, enum.Enum):
    """Named points of one transfer attempt, in the order they are reached."""
    #: The target is launched (an action here changes its command line).
    LAUNCH = "launch"
    #: The target listens on its cpr channel, before the source's ``migrate``.
    LISTENING = "listening"
    #: The target has read CPR state (its monitor is up), before the main channel.
    CPR_READ = "cpr-read"
    #: The main channel carries data and is held mid-stream by the relay.
    MID_STREAM = "mid-stream"


class Action(str, enum.Enum):
    #: SIGKILL the victim (recorded as intended: not a crash).
    KILL = "kill"
    #: Launch the victim with an argument it refuses after reading CPR state, so it
    #: exits on its own ("-device cprh-no-such-device").
    BAD_ARGUMENT = "bad-argument"


BAD_DEVICE_ARGS = ("-device", "cprh-no-such-device")


@dataclass(frozen=True)
class Fault:
    stage: Stage
    victim: str              # "src" or "dst"
    action: Action
    title: str = ""

    def __post_init__(self) -> None:
        if self.victim not in ("src", "dst"):
            raise UsageError(f"fault victim must be src or dst, not {self.victim!r}")
        if self.action is Action.BAD_ARGUMENT and self.stage is not Stage.LAUNCH:
            raise UsageError("a bad-argument fault acts at launch")

    @property
    def name(self) -> str:
        """The id part: ``dst-killed-before-cpr`` and the like."""
        for name, f in FAULTS.items():
            if f == self:
                return name
        return f"{self.victim}-{self.action.value}-at-{self.stage.value}"

    @property
    def needs_relay(self) -> bool:
        """The main channel must go through the harness's relay to place it."""
        return self.stage is Stage.MID_STREAM

    @property
    def src_dies(self) -> bool:
        return self.victim == "src"

    def __str__(self) -> str:
        return self.name


FAULTS: Dict[str, Fault] = {
    "dst-killed-before-cpr": Fault(Stage.LISTENING, "dst", Action.KILL,
                                   "target killed while listening, before it reads the "
                                   "cpr channel"),
    "dst-killed-after-cpr": Fault(Stage.CPR_READ, "dst", Action.KILL,
                                  "target killed after reading CPR state, before the main "
                                  "channel"),
    "dst-killed-during-main": Fault(Stage.MID_STREAM, "dst", Action.KILL,
                                    "target killed while the main channel streams"),
    "dst-fails-after-cpr": Fault(Stage.LAUNCH, "dst", Action.BAD_ARGUMENT,
                                 "target exits on a bad argument after reading CPR state"),
    "src-killed-during-main": Fault(Stage.MID_STREAM, "src", Action.KILL,
                                    "source killed while the main channel streams"),
}


def get(name: str) -> Fault:
    try:
        return FAULTS[name]
    except KeyError:
        raise UsageError(f"unknown fault {name!r}; known: {', '.join(FAULTS)}") from None
