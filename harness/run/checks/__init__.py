"""Every check a verdict is made of, one module per family, each with a stable id.

:data:`FAMILIES` is the registration: the driver asks each family what it adds to the
command line and what it watches during the observation window, the verdict asks each
to judge every completed attempt, in this order. Adding a device check is one module
(a :class:`~harness.run.checks.base.Family`) and one entry here; docs/architecture.md
shows how.
"""
from __future__ import annotations

from typing import Tuple

from harness.run.checks.base import (CATEGORIES, REGISTRY, ArgsContext, Category, CheckDef,
                                     ConcludeContext, Family, Launch, PrepareContext,
                                     SetupContext, TeardownContext, WatchContext, Watcher,
                                     category_of, define)
from harness.run.checks import chain, deaths, outcome, source  # noqa: F401  (registered)
from harness.run.checks.args import Args
from harness.run.checks.console import Console
from harness.run.checks.disk import Disk
from harness.run.checks.heartbeat import Heartbeat
from harness.run.checks.net import Net
from harness.run.checks.pause import Pause
from harness.run.checks.ram import Ram
from harness.run.checks.states import States
from harness.run.checks.window import Window

#: The registered families, in the order their checks are listed.
FAMILIES: Tuple[Family, ...] = (States(), Window(), Ram(), Console(), Heartbeat(), Pause(),
                                 Args(), Net(), Disk())

__all__ = ["FAMILIES", "CATEGORIES", "REGISTRY", "ArgsContext", "Category", "CheckDef",
           "ConcludeContext", "Family", "Launch", "PrepareContext", "SetupContext",
           "TeardownContext", "WatchContext", "Watcher", "category_of", "define"]
