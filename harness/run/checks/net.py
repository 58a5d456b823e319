"""The guest's network carries on across the live update, measured from the host.

A scenario names how a management layer gives each side its NIC's back-end
(``Scenario.net``: an arrangement of :mod:`harness.cpr.netdevs`: user networking, a
forwarded host port, a tap by name, a multi-queue tap, one tap fd, a tap per side on a
bridge, vhost-net). The family, through the check protocol (checks/base.py):

* ``setup``: the arrangement, before the source starts (the case's own network
  namespace with its taps and bridge; a tap must exist when a QEMU opens it by name);
* ``qemu_args``/``launch``: each side's NIC back-end (the target's may differ: another
  tap, another host port), the fds it inherits (``fd=``), and the ``nsenter`` prefix
  that starts a QEMU inside the namespace (it execs in place: same pid);
* ``prepare`` (the first attempt, the source running the guest): the host's receiver,
  the guest's datagram stream to it (a numbered datagram every 50 ms) and one TCP
  connection to the guest's echo server, held through the transfer; it waits until
  the stream flows, so its usual interval is known before the hand-over;
* ``conclude``: when the transfer is over, on the QEMU that runs the guest then (the
  target; the source after a refused transfer): a client reconnects where the target
  forwards another host port, the last line on the held connection, the guest's own
  count of datagrams sent, the receiver stopped: a :class:`NetRecord`.

Its checks: ``net.stream`` (every datagram the guest sent arrived once and in order,
the stream went on after the switch-over; the gap across it is reported beside QEMU's
STOP-to-RESUME and its downtime, not judged: docs/same-arguments.md says why),
``net.tcp`` (the established connection carries on, or, where the target forwards
another port, clients reconnect there) and, where both QEMUs share one tap device and
the harness holds an fd of its own on it, ``net.tap-header`` (nothing changes the
device's vnet header size under the running source). docs/same-arguments.md has the
measurements behind the scenarios and the deviations.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Iterable, List, Optional, Tuple

from harness.core.errors import Check, HarnessError, UsageError, WaitTimeout
from harness.core.sides import Side
from harness.core.wait import wait_until
from harness.cpr import netdevs
from harness.evidence import devices, netstream
from harness.evidence.netstream import StreamRecord, TcpRecord
from harness.run.checks.base import (ArgsContext, ConcludeContext, Family, Launch,
                                     PrepareContext, SetupContext, define)
from harness.run.records import AttemptRecord
from harness.run.result import PairResult

STREAM = define("net.stream", "the guest's datagram stream carries on, nothing lost",
                "device")
TCP = define("net.tcp", "an established TCP connection to the guest carries on", "device")
HEADER = define("net.tap-header", "the running source's tap is left as it negotiated it "
                "(its vnet header size)", "device")

#: Datagrams the host must have before the hand-over (the stream's usual interval).
LEAD_DATAGRAMS = 10
LEAD_S = 60.0
#: How long the last line on the held connection (and a reconnection) may take.
LAST_ECHO_S = 5.0
RECONNECT_S = 20.0


@dataclass(frozen=True)
class NetRecord:
    """The guest's network through one case: where it was measured at the end
    (``dst``: the target after the switch-over; ``src``: the source after a refused
    transfer; "": no QEMU ran the guest), the stream (with the held TCP connection),
    QEMU's own STOP-to-RESUME of the switch-over (ms; None: no switch-over placed),
    a reconnection to the target's own forwarded port, and why anything was not
    measured."""
    arrangement: str
    title: str
    measured_on: str
    completed: bool
    stream: Optional[StreamRecord] = None
    stop_to_resume_ms: Optional[float] = None
    reconnect_to: str = ""
    reconnect: Optional[TcpRecord] = None
    #: Where the harness holds an fd of its own on the tap device both QEMUs share (the
    #: copy of ``fd=``'s, a detached queue of a multi-queue tap): the device's vnet
    #: header size at the first reading and at each change, with when (seconds from the
    #: source's STOP; None: no STOP placed); why it could not be read.
    tap_header: Tuple[Tuple[Optional[float], int], ...] = ()
    tap_header_error: str = ""
    note: str = ""

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


class NetCase:
    """One case's arrangement and its probe (started once, at the first attempt)."""

    def __init__(self, setup: netdevs.NetSetup):
        self.setup = setup
        self.probe: Optional[devices.NetProbe] = None
        self.header: Optional[devices.TapHeaderWatch] = None

    def start(self, console: devices.Console) -> None:
        if self.setup.watch_fd is not None:  # a fd of its own on the shared tap device
            self.header = devices.TapHeaderWatch(self.setup.watch_fd).start()
        self.probe = devices.NetProbe(self.setup).start(console)
        receiver = self.probe.receiver
        assert receiver is not None
        wait_until(lambda: len(receiver.arrivals), what=f"{LEAD_DATAGRAMS} of the guest's "
                   f"datagrams to reach the host before the transfer", timeout=LEAD_S,
                   goal=lambda n: n >= LEAD_DATAGRAMS, side="src", interval=0.1)

    def carry_on(self) -> None:
        """After a refused transfer, before the stream is stopped on the source: let
        :data:`LEAD_DATAGRAMS` more arrive, so the record shows it going on after the
        refusal (not asserted here: if they never come, the losses say so)."""
        receiver = self.probe.receiver if self.probe is not None else None
        if receiver is None:
            return
        seen = len(receiver.arrivals)
        try:
            wait_until(lambda: len(receiver.arrivals), what="the source's stream to go on "
                       "after the refused transfer", timeout=LEAD_S,
                       goal=lambda n: n >= seen + LEAD_DATAGRAMS, side="src", interval=0.1)
        except WaitTimeout:
            pass

    def close(self) -> None:
        """The host's side stopped (an error path), the namespace and fds gone."""
        try:
            if self.header is not None:
                self.header.stop()
            if self.probe is not None:
                self.probe.abandon()
        finally:
            self.setup.close()

    def header_changes(self, stop_ns: Optional[int]) -> Tuple[Tuple[Optional[float], int], ...]:
        if self.header is None:
            return ()
        return tuple((None if stop_ns is None else round((t - stop_ns) / 1e9, 3), n)
                     for t, n in self.header.stop())


def _console(ctx: ConcludeContext) -> Optional[devices.Console]:
    vm = ctx.running
    if vm is None:
        return None
    return lambda cmd: ctx.guest.command(vm.side, cmd, devices.COMMAND_S)


def _reconnect(addr: Tuple[str, int], ns: Any) -> TcpRecord:
    """A new connection where the target forwards: its first line and a last one."""
    try:
        client = netstream.EchoClient.connect(*addr, ns=ns, timeout=RECONNECT_S)
    except HarnessError as exc:
        return netstream.tcp_record([], {}, False, f"no connection echoed: {exc}", 0, 0)
    return client.finish(LAST_ECHO_S)


class Net(Family):
    name = "net"

    def setup(self, ctx: SetupContext) -> Optional[NetCase]:
        if not ctx.scenario.net:
            return None
        if "net" not in getattr(ctx.guest, "commands", {}):
            raise UsageError(f"{ctx.scenario.id}: a network scenario needs a guest with "
                             f"the network workload (linux-x86), not {ctx.scenario.guest}")
        return NetCase(netdevs.open_setup(ctx.scenario.net, tag="net"))

    def qemu_args(self, ctx: ArgsContext, side: Side) -> List[str]:
        return ctx.case.setup.side_args(side) if isinstance(ctx.case, NetCase) else []

    def launch(self, ctx: ArgsContext, side: Side) -> Launch:
        if not isinstance(ctx.case, NetCase):
            return Launch()
        s = ctx.case.setup
        return Launch(tuple(s.prefix()), s.side_fds(side))

    def prepare(self, ctx: PrepareContext) -> None:
        case = ctx.case
        if isinstance(case, NetCase) and case.probe is None:
            case.start(lambda cmd: ctx.guest.command("src", cmd, devices.COMMAND_S))

    def conclude(self, ctx: ConcludeContext) -> Optional[NetRecord]:
        case = ctx.case
        if not isinstance(case, NetCase) or case.probe is None:
            return None
        s, console = case.setup, _console(ctx)
        stop = ctx.switch_ns[0] if ctx.switch_ns is not None else None
        side = ctx.running.side if ctx.running is not None else ""
        reconnect, to = None, ""
        if side == "src" and not ctx.completed:
            case.carry_on()
        if s.dst_echo_addr is not None and side == "dst":
            to = f"{s.dst_echo_addr[0]}:{s.dst_echo_addr[1]}"
            reconnect = _reconnect(s.dst_echo_addr, s.socket_ns)
        stream = case.probe.stop(console, stop, LAST_ECHO_S)
        pause = None if ctx.switch_ns is None else \
            round((ctx.switch_ns[1] - ctx.switch_ns[0]) / 1e6, 1)
        return NetRecord(s.arrangement.id, s.arrangement.title, side, ctx.completed,
                         stream, pause, to, reconnect, case.header_changes(stop),
                         case.header.error if case.header is not None else "",
                         "" if console is not None else
                         "no QEMU ran the guest at the end: its count of datagrams sent "
                         "is unknown")

    def judge_case(self, r: PairResult) -> Iterable[Check]:
        rec = r.devices.get(self.name)
        if not isinstance(rec, NetRecord):
            return []
        out = [judge_stream(rec, r.first)]
        out += [c for c in (judge_tcp(rec), judge_header(rec)) if c is not None]
        return out


def _where(rec: NetRecord) -> str:
    if rec.completed:
        return "through the switch-over, on the target after it"
    return "on the source, which carried on after the refused transfer"


def _beside(rec: NetRecord, a: Optional[AttemptRecord]) -> str:
    """QEMU's own figures of the switch-over, to read the stream's gap against."""
    parts = []
    if rec.stop_to_resume_ms is not None:
        parts.append(f"QEMU's STOP to RESUME {rec.stop_to_resume_ms:g} ms")
    downtime = (a.query_migrate or {}).get("downtime") if a is not None else None
    if downtime is not None and rec.completed:
        parts.append(f"its downtime {downtime} ms")
    return "; ".join(parts)


def judge_stream(rec: NetRecord, a: Optional[AttemptRecord]) -> Check:
    st = rec.stream
    expected = (f"every datagram the guest sent arrived, once and in order, {_where(rec)}"
                + (" (the gap across the switch-over is reported, not judged)"
                   if rec.completed else ""))
    if st is None:
        return STREAM(False, expected, "not measured", rec.note)
    wrong = []
    if st.sent is None:
        wrong.append(rec.note or "the guest's count of datagrams sent is unknown")
    if st.lost:
        wrong.append(f"{st.lost} datagram(s) lost")
    if st.duplicated or st.reordered:
        wrong.append(f"{st.duplicated} duplicated, {st.reordered} out of order")
    gap = st.switch_gap
    if rec.completed and gap is not None and gap.before_seq == 0:
        wrong.append("nothing arrived after the switch-over")
    if st.truncated:
        wrong.append("the receiver reached its bounds")
    beside = _beside(rec, a)
    observed = st.describe() + (f"; {beside}" if beside else "")
    return STREAM(not wrong, expected, observed,
                  f"the guest's network did not carry on ({'; '.join(wrong)}): "
                  f"{rec.title}")


def judge_tcp(rec: NetRecord) -> Optional[Check]:
    st = rec.stream
    held = st.tcp if st is not None else None
    if rec.reconnect_to:
        got = rec.reconnect
        ok = got is not None and got.survived
        said = ("a new connection to the target's port " + rec.reconnect_to + ": "
                + (got.describe() if got is not None else "not tried"))
        if held is not None:
            said += "; the one held through the source's port: " + held.describe()
        return TCP(ok, f"clients reconnect to the target's own forwarded port "
                       f"{rec.reconnect_to} (a connection through the source's port ends "
                       f"with the source: the forwarded connections are not migrated)",
                   said, "the target's forwarded port did not answer")
    if held is None:
        return None  # no way in from the host (no forwarded port): nothing to hold
    return TCP(held.survived, f"the connection held through the transfer echoes its last "
                              f"line, {_where(rec)}", held.describe(),
               f"an established TCP connection did not carry on: {rec.title}")


def _header_words(changes: Tuple[Tuple[Optional[float], int], ...]) -> str:
    def when(t: Optional[float]) -> str:
        if t is None:
            return ""
        return f" from {abs(t):.3f} s {'after' if t >= 0 else 'before'} the source's STOP"
    first, *rest = changes
    return ", then ".join([f"{first[1]} at the start"] + [f"{n}{when(t)}" for t, n in rest])


def judge_header(rec: NetRecord) -> Optional[Check]:
    """Where the harness holds an fd on the shared tap device: nothing may change its
    vnet header size while the source runs the guest on it (before its STOP; with no
    STOP placed, at all)."""
    if not rec.tap_header and not rec.tap_header_error:
        return None
    if not rec.tap_header:
        return HEADER(False, "read", "not read", rec.tap_header_error)
    first = rec.tap_header[0][1]
    under = [(t, n) for t, n in rec.tap_header[1:] if t is None or t < 0]
    return HEADER(not under, f"{first} (what the running source negotiated) until the "
                             f"source stops for the switch-over",
                  _header_words(rec.tap_header),
                  "another QEMU changed the tap device under the running source: frames "
                  "sent and received meanwhile are misread (virtio-net's realize sets the "
                  "header size of a back-end it shares with the source)")
