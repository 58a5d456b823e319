"""What a pair left behind, once it is over or a QEMU is gone: the backtrace of a QEMU
that crashed, the deaths nobody asked for, each QEMU's QMP transcript. A mix-in of
:class:`harness.run.pair.Pair` (it uses the pair's result ``r``, its ``artifacts``
directory and ``resumed_at``)."""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Set

from harness.core.logs import tail
from harness.core.sides import Side
from harness.qemu.crash import Crash, diagnose
from harness.qemu.process import QemuProcess, describe_exit
from harness.qemu.states import Intent
from harness.run.records import Death

#: Why an end before teardown was the case's own doing, by the intent it recorded.
_ENDED = {Intent.KILLED: "killed on purpose: the scenario's fault",
          Intent.REFUSED: "expected to exit: the scenario's outcome"}


class Aftermath:
    r: Any
    artifacts: str
    resumed_at: Optional[float]
    _diagnosed: Dict[int, Optional[Crash]]
    #: QEMUs whose death an observation window already reported.
    window_deaths: Set[int]

    def diagnose(self, vm: QemuProcess) -> Optional[Crash]:
        """The backtrace of a QEMU that died by a core-dumping signal, once, attached
        beside its log (``src.backtrace``...)."""
        if id(vm) in self._diagnosed:
            return self._diagnosed[id(vm)]
        path = os.path.join(self.artifacts, f"{vm.name}.backtrace.txt")
        crash = diagnose(vm.side, vm.pid, vm.poll(), vm.exe, vm.core_dir, path)
        self._diagnosed[id(vm)] = crash
        if crash is not None:
            self.r.crashes.append(crash)
            if crash.backtrace_path:
                self.r.artifacts[f"{vm.name}.backtrace"] = crash.backtrace_path
        return crash

    def death_of(self, vm: QemuProcess, noticed: str) -> Death:
        """The record of ``vm``'s death: side, how (with its backtrace), when, its log."""
        since = None
        if self.resumed_at is not None and vm.exited_at is not None:
            since = round(vm.exited_at - self.resumed_at, 3)
        crash = self.diagnose(vm)
        how = describe_exit(vm.exitcode) + (f" ({crash.describe()})" if crash else "")
        return Death(vm.name, Side(vm.side), vm.exitcode, how, since, tail(vm.log_path, 5),
                     vm.log_path, noticed)

    def record_deaths(self, vms: List[QemuProcess]) -> None:
        """A QEMU that died before teardown, neither ended by the harness nor expected to
        end, is a failure of the case: record side, how, when, and its log."""
        for vm in vms:
            if vm.died_unexpectedly() and id(vm) not in self.window_deaths:
                self.r.deaths.append(self.death_of(vm, "noticed at teardown"))
            elif vm.proc is not None and vm.poll() is not None and vm.intent in _ENDED:
                self.r.ended.append(f"{vm.name} QEMU {describe_exit(vm.exitcode)} "
                                    f"({_ENDED[vm.intent]})")

    def write_transcripts(self, vms: List[QemuProcess]) -> None:
        """Each QEMU's QMP transcript beside its log (``dst-retry.qmp.jsonl``...)."""
        for vm in vms:
            if vm.qmp is None:
                continue
            text = vm.qmp.transcript_text()
            self.r.transcripts[vm.name] = text
            path = os.path.join(self.artifacts, f"{vm.name}.qmp.jsonl")
            with open(path, "w") as f:
                f.write(text)
            self.r.artifacts[f"{vm.name}.qmp"] = path
