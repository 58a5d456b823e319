"""In-place RAM evidence for one transfer, gathered around the pair driver's phases.

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
outside its work area (the bare-metal guests); :attr:`RamEvidence.applicable` says so.
What is gathered at all is the run's :class:`EvidencePlan` (the bench switches the
checks off and keeps the samplers).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, Mapping, Optional

from harness.core.errors import HarnessError
from harness.core.plain import plain
from harness.core.wait import sleep
from harness.cpr.backends import BACKENDS
from harness.evidence.layout import WorkArea, offset_of_gpa
from harness.evidence.memory import (GuestRam, RamFd, Region, SameMemfdEvidence,
                                     compare_mappings, find_ram_fd, mapped_regions, open_ram)
from harness.evidence.pattern import PatternReport, fill_pattern, verify_pattern
from harness.evidence.pause import PauseFigures
from harness.evidence.sampler import RELAX_WAIT_S, Sampler, SamplerResult
from harness.evidence.stream import StreamFigures
from harness.guest.images import GuestImage

#: How long the bench's sampler watches the idle pair before the transfer (its noise
#: floor; conformance runs take theirs from the observation window instead).
NOISE_WINDOW_S = 0.5
#: Mark labels in the sampler's timeline.
M_NOISE, M_IDLE_END, M_TRANSFER, M_RESUMED = "noise", "idle-end", "transfer", "resumed"
M_WINDOW_END = "window-end"
#: The sampler of the memory file the source runs on (for cpr-transfer: both sides).
SRC = "src"


@dataclass(frozen=True)
class EvidencePlan:
    """What a run gathers. ``checks``: same memory, stream, pattern verify (the
    conformance evidence); ``fill``: write the seeded pattern (every page resident);
    ``sampler``: the pause sampler; ``noise_s``: an idle window before the transfer for
    the noise floor (0: the noise floor comes from the observation window);
    ``observe``: watch the target for the run's observation window after each
    switch-over; ``timeline``: draw the sampler's timeline (``timeline.png``, with its
    series in ``sampler.trace.json``)."""
    checks: bool = True
    fill: bool = True
    sampler: bool = True
    noise_s: float = 0.0
    observe: bool = True
    timeline: bool = True


#: Conformance runs: everything.
FULL = EvidencePlan()
#: The bench: RAM touched and the pause measured, no conformance checks.
MEASURE = EvidencePlan(checks=False, noise_s=NOISE_WINDOW_S, observe=False, timeline=False)
#: The bare pair (the bench's baseline): nothing but launch and transfer.
OFF = EvidencePlan(checks=False, fill=False, sampler=False, observe=False, timeline=False)


@dataclass(frozen=True)
class RamSetup:
    """The case's RAM evidence set-up: whether it applies (guest RAM is a shareable
    file; the guest also leaves it alone: the pattern), the seed, the fill, the source's
    RAM fd; ``note``: why a piece does not apply."""
    applicable: bool = False
    pattern_applicable: bool = False
    note: str = ""
    seed: str = ""
    fill: Mapping[str, Any] = field(default_factory=dict)
    src_ram_fd: Mapping[str, Any] = field(default_factory=dict)


def work_area(guest: GuestImage) -> WorkArea:
    lay = guest.layout
    if lay is None:
        return WorkArea()
    return WorkArea(base=lay.base, size=lay.size, magic_offset=lay.off_magic,
                    magic=lay.magic, version_offset=lay.off_version,
                    counter_offset=lay.off_counter, boots_offset=lay.off_boots,
                    heartbeats_offset=lay.off_heartbeats)


class RamEvidence:
    def __init__(self, backend: str, machine: str, ram_mb: int, guest: GuestImage,
                 artifacts: str, mem_path: Optional[str], sample_pause: bool,
                 max_seconds: float, pattern: bool = True, plan: EvidencePlan = FULL):
        kind = BACKENDS[backend]
        self.plan = plan
        self.size = ram_mb << 20
        self.machine = machine
        self.guest = guest
        self.work = work_area(guest)
        self.exclude = list(guest.own_ranges)
        self.hint = mem_path or kind.fd_hint or None
        self.artifacts = artifacts
        #: Guest RAM is a shareable file: same-memory and stream evidence apply.
        self.applicable = kind.share and kind.qom_type is not None and kind.name != "epc"
        #: ... and the guest leaves RAM alone outside its own ranges: the pattern applies.
        self.pattern = self.applicable and pattern
        self.sample_pause = sample_pause and self.pattern and plan.sampler
        self.max_seconds = max_seconds
        self.seed = int.from_bytes(os.urandom(8), "little") or 1
        #: What the case's evidence is (filled by :meth:`prepare`).
        self.setup = RamSetup(self.applicable and plan.checks, self.pattern and plan.checks)
        #: Samplers by label (SRC; the bench's precopy adds "dst").
        self.samplers: Dict[str, Sampler] = {}
        #: Their results, once stopped.
        self.results: Dict[str, SamplerResult] = {}
        self.src_fd: Optional[RamFd] = None
        #: Files this evidence wrote, by artifact name (the timeline...).
        self.files: Dict[str, str] = {}

    # -- before the transfer --------------------------------------------------------

    def prepare(self, src_pid: int) -> None:
        """Find the RAM file; start the sampler (its child starts while the pattern is
        written); fill guest RAM (outside the work area) with the pattern."""
        if not self.applicable:
            self.setup = replace(self.setup,
                                 note="guest RAM is not a shareable file: no RAM evidence")
            return
        self.src_fd = find_ram_fd(src_pid, self.size, self.hint)
        if not self.pattern:
            self.setup = replace(self.setup, note="the guest uses all of its RAM: no pattern")
            return
        if not self.plan.fill:
            return
        with self.open(self.src_fd, writable=True) as g:
            rep = fill_pattern(g, self.seed, self.exclude)
        self.setup = replace(self.setup, seed=f"{self.seed:#018x}", fill=rep.to_dict(),
                             src_ram_fd={"fd": self.src_fd.fd, "link": self.src_fd.link,
                                         "inode": self.src_fd.inode})

    def spawn_sampler(self, label: str = SRC) -> None:
        """Start a sampler's child early, before the file it will read exists (its
        interpreter starts while the source boots); :meth:`start_sampler` aims it."""
        if self.sample_pause and label not in self.samplers:
            name = "sampler.log" if label == SRC else f"sampler-{label}.log"
            self.samplers[label] = Sampler("", 0, self.max_seconds,
                                           log_path=os.path.join(self.artifacts, name)).spawn()

    def start_sampler(self, label: str = SRC, path: Optional[str] = None) -> None:
        """Start (or aim a spawned) pause sampler on ``path`` (default: the source's RAM
        file) and wait for its first read."""
        if not self.sample_pause or (path is None and self.src_fd is None):
            return
        where = path or (self.src_fd.path if self.src_fd else "")
        offset = offset_of_gpa(self.work.counter_gpa, self.machine, self.size)
        self.spawn_sampler(label)
        self.samplers[label].aim(where, offset)

    def noise_window(self) -> None:
        """The idle window: its longest stall is the run's noise floor."""
        if not self.samplers or self.plan.noise_s <= 0:
            return
        self.mark(M_NOISE)
        sleep(self.plan.noise_s)
        # The noise window ends here, not at the transfer mark: the target's start-up
        # lies between the two, so a stall at the switch-over cannot also be counted
        # as noise.
        self.mark(M_IDLE_END)

    def mark(self, label: str) -> None:
        for s in self.samplers.values():
            if s.running():
                s.mark(label)

    def relax(self) -> None:
        """The switch-over's pause is over (the guest moves on the target): the
        samplers read at a few kHz from now on, so the observation window does not burn
        a core per case (its stalls are timed to ~0.2 ms, against a budget in seconds)."""
        for s in self.samplers.values():
            if s.running():
                s.relax()

    # -- after the transfer ---------------------------------------------------------

    def samplers_ready(self) -> None:
        for s in self.samplers.values():
            s.wait_ready()

    def stop_samplers(self, query_migrate: Mapping[str, Any],
                      budget_ms: Optional[float] = None) -> Optional[PauseFigures]:
        """Stop every sampler; the source's gives the pause figures: the switch-over's
        stall, the longest stall in the observation window (also the noise floor of a run
        without an idle window: the guest ran normally there), and the budget both are
        judged against. None: no sampler ran."""
        if not self.samplers:
            return None
        error = ""
        for label, s in list(self.samplers.items()):
            try:
                self.results[label] = s.stop()
            except HarnessError as exc:  # died, timed out, or a mark never arrived
                if label == SRC:
                    error = str(exc)
            finally:
                s.close()
                del self.samplers[label]
        if error:
            return PauseFigures(error=error)
        res = self.results.get(SRC)
        if res is None:
            return None
        try:
            pause = res.longest_between(M_TRANSFER, M_RESUMED)
            window = res.longest_between(M_RESUMED, M_WINDOW_END) if self.plan.observe \
                else None
            noise = res.longest_between(M_NOISE, M_IDLE_END) if self.plan.noise_s > 0 \
                else window
        except HarnessError as exc:
            return PauseFigures(error=str(exc))

        def ms(stall: Any) -> float:
            # No stall of at least the sampler's threshold (50 us): count it as 0.
            return round(stall.duration_ms, 3) if stall is not None else 0.0

        figures = PauseFigures(
            guest_pause_ms=round(pause.duration_ms, 3) if pause else None,
            guest_pause_max_ms=round(pause.max_ms, 3) if pause else None,
            window_stall_ms=ms(window) if self.plan.observe else None,
            window_stall=window.describe() if window is not None else "",
            noise_floor_ms=ms(noise) if (noise is not None or self.plan.observe) else None,
            noise_from="idle window before the transfer" if self.plan.noise_s > 0 else
                       "the observation window (the guest running on the target)",
            budget_ms=budget_ms,
            qemu_downtime_ms=query_migrate.get("downtime"),
            qemu_total_time_ms=query_migrate.get("total-time"),
            sample_rate_hz=round(res.rate_hz),
            window_read_every_us=round(RELAX_WAIT_S * 1e6) if res.relaxed_at_ns else None,
            median_interval_us=round(res.median_interval_ns / 1e3, 2),
            samples=res.samples,
            counter_went_back=res.reset,
            stalled_at_end=pause is not None and pause.end_ns is None)
        if self.plan.timeline:
            figures = replace(figures, timeline_error=self.draw_timeline(res, figures))
        return figures

    def draw_timeline(self, res: SamplerResult, figures: PauseFigures) -> str:
        """The sampler's timeline beside the other artifacts; a plot that cannot be
        drawn is said (the returned text), it is no verdict."""
        from harness.evidence import timeline

        paths = {"sampler.trace": os.path.join(self.artifacts, "sampler.trace.json"),
                 "timeline": os.path.join(self.artifacts, "timeline.png")}
        try:
            written = timeline.write(res.timeline(), plain(figures), paths["sampler.trace"],
                                     paths["timeline"])
        except (OSError, ImportError, ValueError, RuntimeError) as exc:
            return f"{type(exc).__name__}: {exc}"
        self.files.update({k: p for k, p in paths.items() if p in written})
        return ""

    def check_stream(self, query_migrate: Mapping[str, Any],
                     state_file_bytes: Optional[int] = None) -> Optional[StreamFigures]:
        """What went through the main channel: the source's RAM counters, or (cpr-exec,
        whose source is gone) the size of the state file against the RAM's."""
        if not self.plan.checks:
            return None
        return StreamFigures.of(query_migrate, state_file_bytes, self.size)

    def check_same_memory_across_exec(self, pid: int) -> Optional[SameMemfdEvidence]:
        """cpr-exec: the process maps, after its exec, the RAM file it held before."""
        if not self.applicable or not self.plan.checks or self.src_fd is None:
            return None
        after = find_ram_fd(pid, self.size, self.hint)
        regions = tuple(Region(*r) for r in mapped_regions(pid, after.inode, after.dev))
        before = self.src_fd
        return SameMemfdEvidence(self.size, pid, before.fd, before.link, before.inode,
                                 before.dev, regions, pid, after.fd, after.link, after.inode,
                                 after.dev, regions, across_exec=True)

    def check_same_memory(self, src_pid: int, dst_pid: int) -> Optional[SameMemfdEvidence]:
        """The target maps the very RAM file the source used."""
        if not self.applicable or not self.plan.checks:
            return None
        return compare_mappings(src_pid, dst_pid, self.size, self.hint)

    def verify_after(self, src_pid: int, dst_pid: Optional[int],
                     hook: Optional[Callable[[RamFd], None]] = None
                     ) -> Optional[PatternReport]:
        """Intact content, read through the side now running the guest (the target, or
        after a refusal the source). None: not applicable."""
        if not self.applicable or not self.plan.checks:
            return None
        fd = find_ram_fd(dst_pid if dst_pid is not None else src_pid, self.size, self.hint)
        if hook is not None:
            hook(fd)
        if not self.pattern:
            return None
        with self.open(fd, writable=False) as g:
            return verify_pattern(g, self.seed, self.exclude, self.machine, self.size)

    def verify_pattern_at(self, pid: int) -> PatternReport:
        """The pattern verified through ``pid``'s RAM file (the soak's last hop)."""
        fd = find_ram_fd(pid, self.size, self.hint)
        with self.open(fd, writable=False) as g:
            return verify_pattern(g, self.seed, self.exclude, self.machine, self.size)

    def ram_inode(self, pid: int) -> int:
        return find_ram_fd(pid, self.size, self.hint).inode

    def close(self) -> None:
        for s in self.samplers.values():
            s.close()

    def open(self, fd: Any, writable: bool) -> GuestRam:
        return open_ram(fd, writable, machine=self.machine, work=self.work)
