"""What the pair driver needs from a guest, whatever its kind, and the progress it
reads: :class:`WorkArea` (magic, counter, boot count)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from harness.core.wait import wait_until
from harness.guest.images import GuestImage


@dataclass(frozen=True)
class WorkArea:
    """The guest's progress as last read: ``counter`` moves while it runs, ``boots``
    counts its starts (a reset shows as a new boot)."""
    magic: int
    version: int
    counter: int
    boots: int
    heartbeats: int
    valid: bool = True


class GuestDriver:
    """Base of the guest drivers (bare-metal, Linux)."""
    #: The guest writes no RAM outside ``image.own_ranges``: the RAM pattern applies.
    leaves_ram_alone = False
    #: The guest's progress counter lives in RAM at a known place: the sampler applies.
    counter_in_ram = False
    #: How often its progress can be seen to change (seconds): bounds the window check.
    progress_period_s = 0.05

    def __init__(self, image: GuestImage, workdir: str):
        self.image = image
        self.workdir = workdir

    def qemu_args(self, side: str, serial_path: str, sockdir: str) -> List[str]:
        raise NotImplementedError

    def read(self, vm: Any) -> WorkArea:
        """The progress now, read through ``vm`` (a running QemuProcess)."""
        raise NotImplementedError

    def alive_check(self, vm: Any) -> None:
        """Raise when ``vm`` died (called between reads)."""
        vm.check_alive("while the guest runs")

    def wait_moving(self, vm: Any, timeout: float, above: Optional[int] = None) -> WorkArea:
        """Wait until the progress is valid and moves (past ``above`` when given).

        :raise WaitTimeout: it did not.
        """
        first: Dict[str, Optional[int]] = {"counter": None}

        def moved(wa: WorkArea) -> bool:
            if not wa.valid:
                return False
            if first["counter"] is None:
                first["counter"] = wa.counter
                return False
            return wa.counter != first["counter"] and (above is None or wa.counter > above)

        def probe() -> WorkArea:
            self.alive_check(vm)
            return self.read(vm)

        what = "the guest's counter to move" + (f" past {above}" if above is not None else "")
        return wait_until(probe, what=what, timeout=timeout, goal=moved, side=vm.side,
                          interval=self.progress_period_s / 2, log_path=vm.log_path).value

    def after_transfer(self, vm: Any, timeout: float) -> Any:
        """What the guest says on the target's console after the switch-over (a frozen
        record; None: this guest is not asked)."""
        return None
