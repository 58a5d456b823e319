"""The pause the guest lived through, as one record (evidence 5), read from the pause
sampler's run (:mod:`harness.evidence.sampler`) between its marks:

* ``baseline`` .. ``baseline-end``: the same guest before the transfer, under the same
  harness activity as the observation window (its QEMU polled as the window polls): the
  stalls a healthy guest lives through on this host, now;
* ``transfer`` .. ``resumed``: the switch-over, its pause an interval ``lower..upper``
  (the counter surely stood still ``lower``, and surely not longer than ``upper``),
  beside QEMU's own ``downtime``;
* ``resumed`` .. ``window-end``: the observation window, its stalls besides the
  switch-over's own.

:class:`Budgets` is what a case accepts: the switch-over's pause up to ``max_pause_ms``;
each stall after it up to ``stall_floor_ms``, or ``stall_factor`` times the baseline's
longest if that is more, never more than ``max_pause_ms``; the time stalled after it up
to the baseline's share of its window plus ``max_stutter`` (a guest frozen 150 ms of
every 300 has short stalls and a large share). docs/pause-budget.md has the figures.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional, Sequence, Tuple

#: Sampler marks (their order in a run). ``src-stop`` and ``dst-resume`` are placed
#: afterwards, at the times QEMU stamped on the source's STOP event and the target's
#: RESUME (each sent while the guest stands still: after the source paused its vCPUs,
#: before the target starts its own), so the switch-over's pause is the stall across
#: both, not merely the longest one between the harness's marks: under load the harness
#: may see the target running seconds after it resumed, and that span holds other stalls.
M_BASELINE, M_BASELINE_END = "baseline", "baseline-end"
M_TRANSFER, M_SRC_STOP, M_DST_RESUME = "transfer", "src-stop", "dst-resume"
M_RESUMED, M_WINDOW_END = "resumed", "window-end"


#: Stalls shorter than this are the host's scheduling of a busy machine (a vCPU thread
#: waiting its turn); the time stalled a stutter is judged by adds up the longer ones.
STUTTER_UNIT_MS = 10.0


@dataclass(frozen=True)
class Budgets:
    """What a case accepts of the guest's stalls (ms; ``max_stutter`` a share of the
    window)."""
    max_pause_ms: float
    stall_floor_ms: float
    stall_factor: float
    max_stutter: float

    def allowed_stall_ms(self, baseline_longest_ms: Optional[float]) -> float:
        """The longest a stall after the switch-over may be."""
        grown = self.stall_factor * (baseline_longest_ms or 0.0)
        return min(self.max_pause_ms, max(self.stall_floor_ms, grown))

    def allowed_share(self, baseline_share: Optional[float]) -> float:
        return min(1.0, (baseline_share or 0.0) + self.max_stutter)


def repeated_share(seconds: float, longest_ms: float, stalled_ms: float) -> float:
    """The share of a span spent in stalls of at least STUTTER_UNIT_MS *beyond its
    longest one*: a stutter is many stalls, and the longest alone is judged apart
    (pause.stalls). One hiccup of the host in a 0.5 s baseline (a 320 ms stall, seen
    under load) then licenses nothing: counted whole, it let a target that stalled the
    guest 70 % of its window pass as 'within the baseline plus 25 points'."""
    if seconds <= 0:
        return 0.0
    beyond = stalled_ms - (longest_ms if longest_ms >= STUTTER_UNIT_MS else 0.0)
    return max(0.0, beyond) / (seconds * 1000.0)


@dataclass(frozen=True)
class StallStats:
    """The guest's stalls in one span of the run: its length, the longest stall, the
    time stalled in stalls of at least STUTTER_UNIT_MS and how many, the longest few
    (ms); ``share``: the part of the span stalled beyond the longest
    (:func:`repeated_share`)."""
    seconds: float
    longest_ms: float
    stalled_ms: float
    count: int
    top_ms: Tuple[float, ...] = ()

    @property
    def share(self) -> float:
        return repeated_share(self.seconds, self.longest_ms, self.stalled_ms)

    def describe(self) -> str:
        top = ", ".join(f"{x:g}" for x in self.top_ms) or "none"
        return (f"{self.count} stall(s) of {STUTTER_UNIT_MS:g} ms or more in "
                f"{self.seconds:.2f} s, {self.stalled_ms:g} ms in all, "
                f"{self.share:.0%} beyond the longest; longest {top} ms")


@dataclass(frozen=True)
class PauseFigures:
    """Times in ms. ``error``: the pause could not be measured (the rest is empty)."""
    #: The switch-over's pause: surely stalled ``switch_ms``, surely not longer than
    #: ``switch_max_ms``; it began ``switch_at_ms`` after the source's ``migrate``.
    switch_ms: Optional[float] = None
    switch_max_ms: Optional[float] = None
    switch_at_ms: Optional[float] = None
    #: The same as spans, ms since migrate: (surely stalled) and (at most stalled).
    switch_span_ms: Optional[Tuple[float, float]] = None
    switch_max_span_ms: Optional[Tuple[float, float]] = None
    stalled_at_end: bool = False
    qemu_downtime_ms: Optional[float] = None
    qemu_total_time_ms: Optional[float] = None
    #: From the source's STOP to the target's RESUME, as QEMU stamped them: the guest
    #: surely stood still that long (the measured interval must reach it).
    qemu_span_ms: Optional[float] = None
    baseline: Optional[StallStats] = None
    window: Optional[StallStats] = None
    budgets: Optional[Budgets] = None
    #: The sampler: its reads, their spacing (slow; fast across the switch-over), its
    #: scheduling and CPU.
    samples: Optional[int] = None
    read_every_us: Optional[float] = None
    fast_read_every_us: Optional[float] = None
    scheduling: str = ""
    sampler_cpu_s: Optional[float] = None
    counter_went_back: Optional[bool] = None
    #: The console's silence across the switch-over (ConsoleGap as a dict), if tailed.
    console_gap: Optional[Mapping[str, Any]] = None
    timeline_error: str = ""
    error: str = ""

    @property
    def measured(self) -> bool:
        return not self.error and self.switch_ms is not None

    @property
    def covers_qemu_span(self) -> bool:
        """The measured pause reaches from QEMU's STOP to its RESUME (0.5 ms slack for
        reading two clocks): else the sampler missed part of it."""
        if self.qemu_span_ms is None or self.switch_max_ms is None:
            return True
        return self.switch_max_ms + 0.5 >= self.qemu_span_ms

    def interval(self) -> str:
        """``3.97..4.21 ms``: the switch-over's pause as the interval it was measured."""
        if self.switch_ms is None:
            return "not measured"
        hi = f"{self.switch_max_ms:g}" if self.switch_max_ms is not None else "?"
        return f"{self.switch_ms:g}..{hi} ms"

    @property
    def allowed_stall_ms(self) -> Optional[float]:
        if self.budgets is None:
            return None
        return self.budgets.allowed_stall_ms(self.baseline.longest_ms if self.baseline else None)

    @property
    def allowed_share(self) -> Optional[float]:
        if self.budgets is None:
            return None
        return self.budgets.allowed_share(self.baseline.share if self.baseline else None)


def _ms(ns: float) -> float:
    return round(ns / 1e6, 3)


def stall_stats(windows: Sequence[Any], exclude: Any = None) -> StallStats:
    """The stalls of consecutive sampler windows (:class:`~harness.evidence.sampler.Window`),
    leaving out ``exclude`` (the switch-over's own stall, when it reaches into them).
    ``longest`` is the longest of any length; ``count`` and ``stalled_ms`` are of the
    stalls of at least :data:`STUTTER_UNIT_MS` (shorter ones are the host's scheduling)."""
    seconds = sum(w.end_ns - w.start_ns for w in windows) / 1e9
    durations = sorted((d for w in windows for d in w.durations_ns), reverse=True)
    tops = sorted({x for w in windows for x in w.top if exclude is None
                   or x.start_ns != exclude.start_ns}, key=lambda x: -x.duration_ns)
    if exclude is not None:
        lo, hi = windows[0].start_ns, windows[-1].end_ns
        overlap = min(exclude.start_ns + exclude.duration_ns, hi) - max(exclude.start_ns, lo)
        if overlap > 0 and durations:
            durations.remove(min(durations, key=lambda d: abs(d - overlap)))
    long = [d for d in durations if d >= STUTTER_UNIT_MS * 1e6]
    return StallStats(round(seconds, 3), _ms(tops[0].duration_ns) if tops else 0.0,
                      _ms(sum(long)), len(long), tuple(_ms(d) for d in durations[:3]))


def _span(s: Any, zero_ns: int) -> Tuple[Tuple[float, float], Tuple[float, float]]:
    """A stall's two intervals, ms since ``zero_ns``: surely stalled, at most stalled."""
    sure = (_ms(s.start_ns - zero_ns), _ms(s.start_ns + s.duration_ns - zero_ns))
    end = s.end_ns if s.end_ns is not None else s.start_ns + s.duration_ns
    return sure, (_ms(end - s.max_ns - zero_ns), _ms(end - zero_ns))


def pause_figures(res: Any, query_migrate: Mapping[str, Any], budgets: Optional[Budgets],
                  baseline: bool = True, window: bool = True) -> PauseFigures:
    """The figures of one sampler run (a :class:`~harness.evidence.sampler.SamplerResult`
    marked as :data:`M_BASELINE` .. :data:`M_WINDOW_END` say).

    :raise SamplerError: a mark never arrived (the sampler stopped first)."""
    marks = {m.label: m.t_ns for m in res.marks}
    events = M_SRC_STOP in marks and M_DST_RESUME in marks \
        and marks[M_TRANSFER] <= marks[M_SRC_STOP] <= marks[M_DST_RESUME]
    pause = res.longest_between(M_SRC_STOP, M_DST_RESUME) if events else \
        res.longest_between(M_TRANSFER, M_RESUMED)
    base = stall_stats(res.windows_between(M_BASELINE, M_BASELINE_END)) \
        if baseline and M_BASELINE in marks else None
    after = stall_stats(res.windows_between(M_DST_RESUME if events else M_RESUMED,
                                            M_WINDOW_END), exclude=pause) if window else None
    gap = None
    if res.console:
        from harness.evidence.console_tail import ConsoleArrivals

        found = ConsoleArrivals.from_dict(res.console).gap()
        gap = asdict(found) if found is not None else None
    return PauseFigures(
        # No stall above the sampler's threshold: the pause was shorter than it.
        switch_ms=_ms(pause.duration_ns) if pause else 0.0,
        switch_max_ms=_ms(pause.max_ns) if pause else _ms(res.threshold_ns),
        switch_at_ms=_ms(pause.start_ns - marks[M_TRANSFER]) if pause else None,
        switch_span_ms=_span(pause, marks[M_TRANSFER])[0] if pause else None,
        switch_max_span_ms=_span(pause, marks[M_TRANSFER])[1] if pause else None,
        stalled_at_end=pause is not None and pause.end_ns is None,
        qemu_downtime_ms=query_migrate.get("downtime"),
        qemu_total_time_ms=query_migrate.get("total-time"),
        qemu_span_ms=_ms(marks[M_DST_RESUME] - marks[M_SRC_STOP]) if events else None,
        baseline=base, window=after, budgets=budgets, samples=res.samples,
        read_every_us=round(res.median_interval_ns / 1e3, 1),
        fast_read_every_us=round(res.fast_median_interval_ns / 1e3, 1) or None,
        scheduling=res.scheduling, sampler_cpu_s=res.cpu_s,
        counter_went_back=res.reset, console_gap=gap)
