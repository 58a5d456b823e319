"""Interface dialects: how a scenario becomes commands for one generation of QEMU.

Scenarios stay the same; a dialect renders the machine properties, the source's QMP
commands and the target's ``-incoming`` arguments, and says in its own QEMU's words
what an error path must print where those differ from the released ones.

``released-10x`` (QEMU >= 10.0): ``-machine aux-ram-share=on``; the cpr channel is a
second entry in ``migrate``'s ``channels`` (``"channel-type": "cpr"``) and a second
``-incoming`` with a JSON ``MigrationChannel`` on the target.

``rfc-v1`` (the 2024 RFC patch this project started from, and the "Live update:
cpr-transfer" series that continued it, v3 of 2024-11-01): ``-machine anon-alloc=memfd``;
the cpr channel is the ``cpr-uri`` migration parameter on the source and ``-cpr-uri
URI`` on the target; channels are URIs. It runs live on the series' own build
(``scripts/get-qemu.sh rfc-v3 --from ...``, QEMU 9.1.50): its messages below are that
build's, read in its source and seen in its runs (docs/versions.md). A cpr channel
passed as an fd has no URI form there, so such cases are skips.

A dialect is chosen from the probed capabilities (QMP schema), never from a version
number; ``--dialect`` overrides.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from harness.cpr.channels import Channel
from harness.core.errors import Unsupported, UsageError

RELEASED = "released-10x"
RFC_V1 = "rfc-v1"
DIALECTS = (RELEASED, RFC_V1)


@dataclass(frozen=True)
class Command:
    name: str
    args: Dict[str, Any] = field(default_factory=dict)


def uri_of(addr: Dict[str, Any]) -> str:
    """A QAPI MigrationAddress as the URI string older interfaces take."""
    t = addr.get("transport")
    if t == "socket":
        kind = addr.get("type")
        if kind == "unix":
            return f"unix:{addr['path']}"
        if kind == "inet":
            return f"tcp:{addr['host']}:{addr['port']}"
        if kind == "fd":
            return f"fd:{addr['str']}"
    if t == "file":
        off = addr.get("offset", 0)
        return f"file:{addr['filename']}" + (f",offset={off}" if off else "")
    if t == "exec":
        # Our own fixed argument lists (harness.cpr.channels), quoted: nothing from input.
        return "exec:" + shlex.join(addr["args"])
    raise UsageError(f"no URI form for migration address {addr!r}")


class Dialect:
    name = ""
    #: Per requirement (scenario id), how this dialect phrases it, where it differs.
    requirement_text: Dict[str, str] = {}
    #: Whether QEMU's error messages are known for this dialect (checked if so).
    messages_known = True
    #: Per requirement (scenario id, without an ``-aarch64`` suffix), the words this
    #: dialect's QEMU says it in, where they differ from the scenario's.
    messages: Dict[str, str] = {}
    #: Memory back-end kinds (harness.cpr.backends) its QEMU documents as unsupported.
    unsupported_backends: Dict[str, str] = {}

    def machine_suffix(self, aux_ram_share: bool) -> str:
        raise NotImplementedError

    def source_prepare(self, cpr: Channel) -> List[Command]:
        """Commands after ``migrate-set-parameters mode=cpr-transfer``, before migrate."""
        return []

    def source_migrate(self, main: Channel, cpr: Channel) -> Command:
        raise NotImplementedError

    def target_incoming(self, main: Channel, cpr: Channel, defer: bool) -> List[str]:
        raise NotImplementedError

    def target_migrate_incoming(self, main: Channel) -> Command:
        raise NotImplementedError

    def describe(self, scenario_id: str, default: str) -> str:
        return self.requirement_text.get(scenario_id, default)

    def message(self, scenario_id: str, default: str, side: str = "") -> str:
        """The substring QEMU's error must contain for ``scenario_id`` in this dialect
        (``side``: the side that must refuse, for a pair that speaks two)."""
        base = scenario_id[:-len("-aarch64")] if scenario_id.endswith("-aarch64") \
            else scenario_id
        return self.messages.get(base, default)

    def for_side(self, side: str) -> "Dialect":
        """The dialect ``side`` (``src`` or ``dst``) speaks: this one, but in a
        :class:`Mixed` pair."""
        return self

    def unsupported(self, backend: str) -> Optional[str]:
        """Why a memory back-end kind cannot carry guest RAM across in this dialect's
        QEMU, as its documentation says; None when it can."""
        return self.unsupported_backends.get(backend)


class Released(Dialect):
    name = RELEASED
    requirement_text = {
        "channel/cpr-missing": "no cpr entry in migrate's channels",
        "memory/no-aux-ram-share": "-machine without aux-ram-share=on",
    }

    def machine_suffix(self, aux_ram_share: bool) -> str:
        return ",aux-ram-share=on" if aux_ram_share else ""

    def source_migrate(self, main: Channel, cpr: Channel) -> Command:
        return Command("migrate", {"channels": [c for c in (main.qapi(), cpr.qapi())
                                                if c is not None]})

    def target_incoming(self, main: Channel, cpr: Channel, defer: bool) -> List[str]:
        args = ["-incoming", "defer" if defer else str(main.dst_incoming)]
        if cpr.dst_incoming is not None:
            args += ["-incoming", cpr.dst_incoming]
        return args

    def target_migrate_incoming(self, main: Channel) -> Command:
        return Command("migrate-incoming", {"channels": [main.dst_qapi()]})


#: The series' words (v3: migration/migration.c, migration/cpr-transfer.c): a missing
#: cpr-uri, and a cpr-uri that is not unix: on either side ("bad cpr-uri tcp:...; must
#: be unix:").
MSG_RFC_CPR_URI_MISSING = "cpr-transfer mode requires setting cpr-uri"
MSG_RFC_CPR_URI_UNIX = "; must be unix:"


class RfcV1(Dialect):
    name = RFC_V1
    messages = {
        "channel/cpr-missing": MSG_RFC_CPR_URI_MISSING,
        "channel/cpr-inet-src": MSG_RFC_CPR_URI_UNIX,
        "channel/cpr-file-src": MSG_RFC_CPR_URI_UNIX,
        "channel/cpr-inet-dst": MSG_RFC_CPR_URI_UNIX,
        "channel/cpr-file-dst": MSG_RFC_CPR_URI_UNIX,
    }
    unsupported_backends = {
        # Its CPR.rst: "memory-backend-epc and memory-backend-ram are not supported".
        # memory-backend-ram,share=on there is an anonymous shared mapping: no fd that
        # could cross (the harness finds none to check either).
        "ram-share": "the cpr-transfer series documents memory-backend-ram as not "
                     "supported (CPR.rst: 'memory-backend-epc and memory-backend-ram are "
                     "not supported'; its share=on RAM is anonymous shared memory, no fd "
                     "to pass)",
    }
    requirement_text = {
        "channel/cpr-missing": "no cpr-uri migration parameter set",
        "memory/no-aux-ram-share": "-machine without anon-alloc=memfd",
        "channel/cpr-inet-src": "cpr-uri tcp: on the source",
        "channel/cpr-file-src": "cpr-uri file: on the source",
        "channel/cpr-inet-dst": "-cpr-uri tcp: on the target",
        "channel/cpr-file-dst": "-cpr-uri file: on the target",
    }

    def machine_suffix(self, aux_ram_share: bool) -> str:
        return ",anon-alloc=memfd" if aux_ram_share else ""

    def source_prepare(self, cpr: Channel) -> List[Command]:
        if cpr.src_addr is None:
            return []  # the "missing cpr-uri" error path
        return [Command("migrate-set-parameters", {"cpr-uri": uri_of(cpr.src_addr)})]

    def source_migrate(self, main: Channel, cpr: Channel) -> Command:
        assert main.src_addr is not None
        return Command("migrate", {"uri": uri_of(main.src_addr)})

    def target_incoming(self, main: Channel, cpr: Channel, defer: bool) -> List[str]:
        addr = main.dst_addr or main.src_addr
        assert addr is not None
        args = ["-incoming", "defer" if defer else uri_of(addr)]
        if cpr.src_addr is not None:
            caddr = cpr.dst_addr or cpr.src_addr
            if caddr.get("type") == "fd":
                raise Unsupported("the rfc-v1 dialect takes the target's cpr channel as a "
                                  "URI; an fd-passed cpr listener has no URI form there")
            args += ["-cpr-uri", uri_of(caddr)]
        return args

    def target_migrate_incoming(self, main: Channel) -> Command:
        addr = main.dst_addr or main.src_addr
        assert addr is not None
        return Command("migrate-incoming", {"uri": uri_of(addr)})


#: Between a mixed pair's two dialects in its name: ``rfc-v1→released-10x``.
ARROW = "→"


class Mixed(Dialect):
    """A pair whose sides speak different dialects (the cpr-transfer series and a
    released QEMU): each side is spoken to in its own. The source's set-up and
    ``migrate`` come from ``src``, the target's ``-incoming`` and ``migrate-incoming``
    from ``dst``, each side's machine properties from its own; an error path expects
    the refusing side's words."""

    def __init__(self, src: Dialect, dst: Dialect):
        self.src, self.dst = src, dst
        self.name = f"{src.name}{ARROW}{dst.name}"
        self.messages_known = src.messages_known and dst.messages_known
        self.requirement_text = {**dst.requirement_text, **src.requirement_text}
        self.unsupported_backends = {**dst.unsupported_backends, **src.unsupported_backends}

    def for_side(self, side: str) -> Dialect:
        return self.dst if side == "dst" else self.src

    def message(self, scenario_id: str, default: str, side: str = "") -> str:
        return self.for_side(side or "src").message(scenario_id, default)

    def machine_suffix(self, aux_ram_share: bool) -> str:
        raise NotImplementedError("a mixed pair's machine properties differ per side: "
                                  "ask for_side(side)")

    def source_prepare(self, cpr: Channel) -> List[Command]:
        return self.src.source_prepare(cpr)

    def source_migrate(self, main: Channel, cpr: Channel) -> Command:
        return self.src.source_migrate(main, cpr)

    def target_incoming(self, main: Channel, cpr: Channel, defer: bool) -> List[str]:
        return self.dst.target_incoming(main, cpr, defer)

    def target_migrate_incoming(self, main: Channel) -> Command:
        return self.dst.target_migrate_incoming(main)


_BY_NAME = {RELEASED: Released(), RFC_V1: RfcV1()}


def get(name: str) -> Dialect:
    """A dialect by name; ``SRC→DST`` names a :class:`Mixed` pair."""
    if ARROW in name:
        src, _, dst = name.partition(ARROW)
        return Mixed(get(src), get(dst))
    try:
        return _BY_NAME[name]
    except KeyError:
        raise UsageError(f"unknown dialect {name!r}; known: {', '.join(DIALECTS)} "
                         f"(or auto)") from None


def choose(probed: str, override: Optional[str] = None, probed_dst: str = "") -> Dialect:
    """The dialect to speak: the override if given (both sides), else the probed one;
    a target that speaks another (``probed_dst``) makes a :class:`Mixed` pair."""
    if override and override != "auto":
        return get(override)
    for p in (probed, probed_dst or probed):
        if p not in _BY_NAME:
            raise Unsupported(f"the binary speaks no known cpr-transfer dialect ({p})")
    if probed_dst and probed_dst != probed:
        return Mixed(_BY_NAME[probed], _BY_NAME[probed_dst])
    return _BY_NAME[probed]
