"""The pause the guest lived through, as one record (evidence 5): the switch-over's
stall measured by the host-side sampler (:mod:`harness.evidence.sampler`), the longest
stall after it, the noise floor it is read against, QEMU's own figures, and the budget a
case judges them by."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class PauseFigures:
    """Times in ms. ``error``: the pause could not be measured (the rest is empty)."""
    guest_pause_ms: Optional[float] = None
    guest_pause_max_ms: Optional[float] = None
    window_stall_ms: Optional[float] = None
    window_stall: str = ""
    noise_floor_ms: Optional[float] = None
    noise_from: str = ""
    budget_ms: Optional[float] = None
    qemu_downtime_ms: Optional[float] = None
    qemu_total_time_ms: Optional[float] = None
    sample_rate_hz: Optional[float] = None
    window_read_every_us: Optional[float] = None
    median_interval_us: Optional[float] = None
    samples: Optional[int] = None
    counter_went_back: Optional[bool] = None
    stalled_at_end: bool = False
    timeline_error: str = ""
    error: str = ""

    @property
    def measured(self) -> bool:
        return not self.error and self.guest_pause_ms is not None
