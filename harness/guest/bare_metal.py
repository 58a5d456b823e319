"""Our bare-metal guests (x86 and aarch64 firmware): a work area in RAM, read through
QEMU with HMP ``xp`` (so it works for every memory back-end)."""
from __future__ import annotations

import re
from typing import Any, List

from harness.core.errors import HarnessError
from harness.guest.driver import GuestDriver, WorkArea
from harness.guest.images import GuestImage, WorkAreaLayout

_XP_LINE = re.compile(r"^[0-9a-fA-F]+:\s*((?:0x[0-9a-fA-F]+\s*)+)$")


def read_work_area_qmp(qmp: Any, layout: WorkAreaLayout) -> WorkArea:
    """Read the work area through QEMU's monitor."""
    words = (max(layout.off_heartbeats, layout.off_counter + 4) + 4) // 4
    out = qmp.cmd("human-monitor-command",
                  {"command-line": f"xp /{words}wx {layout.base:#x}"})
    vals: List[int] = []
    for line in str(out).splitlines():
        m = _XP_LINE.match(line.strip())
        if m:
            vals += [int(v, 16) for v in m.group(1).split()]
    if len(vals) < words:
        raise HarnessError(f"{qmp.side}: unexpected xp output: {out!r}")

    def u32(off: int) -> int:
        return vals[off // 4]

    magic = u32(layout.off_magic)
    return WorkArea(magic=magic, version=u32(layout.off_version),
                    counter=u32(layout.off_counter) | (u32(layout.off_counter + 4) << 32),
                    boots=u32(layout.off_boots), heartbeats=u32(layout.off_heartbeats),
                    valid=magic == layout.magic)


class BareMetalDriver(GuestDriver):
    leaves_ram_alone = True
    counter_in_ram = True
    progress_period_s = 0.04

    def __init__(self, image: GuestImage, workdir: str):
        super().__init__(image, workdir)
        assert image.layout is not None
        self.layout = image.layout

    def qemu_args(self, side: str, serial_path: str, sockdir: str,
                  append: bool = False) -> List[str]:
        return self.image.qemu_args(serial_path, append)

    def read(self, vm: Any) -> WorkArea:
        return read_work_area_qmp(vm.qmp, self.layout)
