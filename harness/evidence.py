"""In-place RAM evidence for one transfer, gathered around the pair runner's phases.

The five pieces (see docs/ram-evidence.md):

1. same memory: the target maps the very file (memfd inode) the source used;
2. no RAM in the stream: ``ram.normal == 0`` in the source's ``query-migrate``;
3. content: all guest RAM outside the guest's own work area is filled with a seeded
   pattern through the memory file before the transfer and verified in full after
   it, through the *target's* file descriptor; a changed page is named by its
   guest-physical address;
4. continuity: the guest's counter continues (sampled from the host, it never goes
   back), boot count unchanged;
5. the pause: a separate sampler process reads the guest's counter through the
   shared memory during an idle "noise" window and during the transfer; the longest
   stall in each window is reported beside QEMU's ``downtime`` and ``total-time``.

Only applies where guest RAM is a shareable file and the guest leaves RAM alone
outside its work area (the bare-metal guests); :attr:`applicable` says so.
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable, Dict, Optional

from harness import ram
from harness.backends import BACKENDS
from harness.guest import GuestImage
from harness.errors import HarnessError
from harness.sampler import Sampler

#: How long the sampler watches the idle pair before the transfer (noise floor).
NOISE_WINDOW_S = 0.5
#: Mark labels in the sampler's timeline.
M_NOISE, M_IDLE_END, M_TRANSFER, M_RESUMED = "noise", "idle-end", "transfer", "resumed"


def work_area(guest: GuestImage) -> ram.WorkArea:
    lay = guest.layout
    return ram.WorkArea(base=lay.base, size=lay.size, magic_offset=lay.off_magic,
                        magic=lay.magic, version_offset=lay.off_version,
                        counter_offset=lay.off_counter, boots_offset=lay.off_boots,
                        heartbeats_offset=lay.off_heartbeats)


class RamEvidence:
    def __init__(self, backend: str, machine: str, ram_mb: int, guest: GuestImage,
                 artifacts: str, mem_path: Optional[str], sample_pause: bool,
                 max_seconds: float, pattern: bool = True):
        kind = BACKENDS[backend]
        self.size = ram_mb << 20
        self.machine = machine
        self.guest = guest
        self.work = work_area(guest) if guest.layout is not None else ram.WorkArea()
        self.exclude = list(guest.own_ranges)
        self.hint = mem_path or kind.fd_hint or None
        self.artifacts = artifacts
        #: Guest RAM is a shareable file: same-memory and stream evidence apply.
        self.applicable = kind.share and kind.qom_type is not None and kind.name != "epc"
        #: ... and the guest leaves RAM alone outside its own ranges: the pattern applies.
        self.pattern = self.applicable and pattern
        self.sample_pause = sample_pause and self.pattern
        self.max_seconds = max_seconds
        self.seed = int.from_bytes(os.urandom(8), "little") or 1
        self.data: Dict[str, Any] = {"applicable": self.applicable,
                                     "pattern_applicable": self.pattern}
        self.sampler: Optional[Sampler] = None
        self._src_fd: Optional[ram.RamFd] = None

    # -- before the transfer --------------------------------------------------------

    def prepare(self, src_pid: int) -> None:
        """Fill guest RAM (outside the work area) with the seeded pattern."""
        if not self.applicable:
            self.data["note"] = "guest RAM is not a shareable file: no RAM evidence"
            return
        self._src_fd = ram.find_ram_fd(src_pid, self.size, self.hint)
        if not self.pattern:
            self.data["note"] = "the guest uses all of its RAM: no pattern"
            return
        with self._open(self._src_fd, writable=True) as g:
            rep = ram.fill_pattern(g, self.seed, self.exclude)
        self.data["seed"] = f"{self.seed:#018x}"
        self.data["fill"] = rep.to_dict()
        self.data["src_ram_fd"] = {"fd": self._src_fd.fd, "link": self._src_fd.link,
                                   "inode": self._src_fd.inode}

    def start_sampler(self) -> None:
        """Start the pause sampler and take the noise floor on the idle pair."""
        if not self.sample_pause or self._src_fd is None:
            return
        offset = ram.offset_of_gpa(self.work.counter_gpa, self.machine, self.size)
        self.sampler = Sampler(self._src_fd.path, offset, self.max_seconds,
                               log_path=os.path.join(self.artifacts, "sampler.log"))
        self.sampler.start()
        self.sampler.mark(M_NOISE)
        time.sleep(NOISE_WINDOW_S)
        # The noise window ends here, not at the transfer mark: the target's start-up
        # lies between the two, so a stall at the switch-over cannot also be counted
        # as noise.
        self.sampler.mark(M_IDLE_END)

    def mark(self, label: str) -> None:
        if self.sampler is not None and self.sampler.running():
            self.sampler.mark(label)

    # -- after the transfer ---------------------------------------------------------

    def stop_sampler(self, query_migrate: Dict[str, Any]) -> None:
        if self.sampler is None:
            return
        try:
            res = self.sampler.stop()
            noise = res.longest_between(M_NOISE, M_IDLE_END)
            pause = res.longest_between(M_TRANSFER, M_RESUMED)
        except HarnessError as exc:  # died, timed out, or a mark never arrived
            self.data["pause"] = {"error": str(exc)}
            return
        finally:
            self.sampler.close()
        self.data["pause"] = {
            "guest_pause_ms": round(pause.duration_ms, 3) if pause else None,
            "guest_pause_max_ms": round(pause.max_ms, 3) if pause else None,
            "noise_floor_ms": round(noise.duration_ms, 3) if noise else None,
            "qemu_downtime_ms": query_migrate.get("downtime"),
            "qemu_total_time_ms": query_migrate.get("total-time"),
            "sample_rate_hz": round(res.rate_hz),
            "median_interval_us": round(res.median_interval_ns / 1e3, 2),
            "samples": res.samples,
            "counter_went_back": res.reset,
            "stalled_at_end": pause is not None and pause.end_ns is None,
        }
        self.data["sampler"] = res.to_dict()

    def check_stream(self, query_migrate: Dict[str, Any]) -> None:
        r = query_migrate.get("ram", {})
        self.data["stream"] = {k: r.get(k) for k in
                               ("normal", "normal-bytes", "transferred", "total", "duplicate")}

    def verify_after(self, src_pid: int, dst_pid: Optional[int],
                     hook: Optional[Callable[[ram.RamFd], None]] = None) -> None:
        """Same memory and intact content, read through the side now running the guest."""
        if not self.applicable:
            return
        if dst_pid is not None:
            same = ram.compare_mappings(src_pid, dst_pid, self.size, self.hint)
            self.data["same_memory"] = same.to_dict()
            fd = ram.find_ram_fd(dst_pid, self.size, self.hint)
        else:
            fd = ram.find_ram_fd(src_pid, self.size, self.hint)
        if hook is not None:
            hook(fd)
        if not self.pattern:
            return
        with self._open(fd, writable=False) as g:
            rep = ram.verify_pattern(g, self.seed, self.exclude, self.machine, self.size)
            snap = g.snapshot()
        key = "pattern" if dst_pid is not None else "pattern_src_after_refusal"
        self.data[key] = rep.to_dict()
        self.data["work_area_" + ("dst" if dst_pid is not None else "src")] = {
            "counter": snap.counter, "boots": snap.boots, "magic_ok": snap.magic_ok}

    def close(self) -> None:
        if self.sampler is not None:
            self.sampler.close()

    def _open(self, fd: ram.RamFd, writable: bool) -> ram.GuestRam:
        return ram.open_ram(fd, writable, machine=self.machine, work=self.work)
