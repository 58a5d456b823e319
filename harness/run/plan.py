"""What a scenario renders to: the shared QEMU command line, the channels of an
attempt, and a dry run of the whole case (``python -m harness plan``)."""
from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from harness.cpr import backends, channels
from harness.cpr.dialect import Dialect
from harness.scenario.model import Scenario


def template(text: str, shared_dir: str, name: str, ports: Sequence[int] = ()) -> str:
    """``text`` with ``{dir}`` (the directory both sides share), ``{name}`` (the QEMU's
    own name) and ``{port0}``, ``{port1}``... (loopback ports the case picked) filled in."""
    text = text.replace("{dir}", shared_dir).replace("{name}", name)
    for i, port in enumerate(ports):
        text = text.replace(f"{{port{i}}}", str(port))
    return text


def ports_wanted(sc: Scenario) -> int:
    """How many ``{portN}`` the scenario's options and checks name."""
    texts = (*sc.extra_args, *(sc.dst_extra_args or ()), *sc.arg_checks)
    return max((i + 1 for i in range(8) for t in texts if f"{{port{i}}}" in t), default=0)


def render_extra_args(sc: Scenario, side: str, shared_dir: str, name: str = "",
                      ports: Sequence[int] = ()) -> List[str]:
    """The scenario's extra options for ``side``, templated (:func:`template`)."""
    return [template(a, shared_dir, name or side, ports) for a in sc.args_of(side)]


def render_vm_args(sc: Scenario, dialect: Dialect, mem: backends.MemoryArgs, accel: str,
                   guest_args: List[str], side: str, machine: Optional[str] = None,
                   extra: Sequence[str] = ()) -> List[str]:
    """The QEMU command line both sides share (the target adds its -incoming).

    ``machine``: the machine type to run (default: the scenario's); ``extra``: the
    scenario's extra options, rendered (:func:`render_extra_args`)."""
    m = (machine or sc.machine) + mem.machine_props + \
        dialect.for_side(side).machine_suffix(sc.aux_ram_share)
    return ["-name", f"cprh-{side},debug-threads=on", "-nodefaults", "-display", "none",
            "-machine", m, "-accel", accel, "-smp", str(sc.smp),
            "-m", f"{sc.ram_mb}M", *mem.object_args, *guest_args, *extra]


def render_channels(src_main: str, dst_main: str, src_cpr: str, dst_cpr: str,
                    wd: str) -> Tuple[channels.Channel, channels.Channel,
                                      channels.Channel, channels.Channel]:
    """(src main, dst main, src cpr, dst cpr); one object where both sides agree.

    When the sides differ (error paths), the source's channel lives in ``wd/s``.
    """
    dm = channels.main_channel(dst_main, wd)
    sm = dm if src_main == dst_main else channels.main_channel(src_main, os.path.join(wd, "s"))
    dc = channels.cpr_channel(dst_cpr, wd)
    scpr = dc if src_cpr == dst_cpr else channels.cpr_channel(src_cpr, os.path.join(wd, "s"))
    return sm, dm, scpr, dc


def side_kinds(sc: Scenario) -> Tuple[str, str, str, str]:
    """The scenario's (src main, dst main, src cpr, dst cpr) channel kinds."""
    return (sc.side_main("src"), sc.side_main("dst"), sc.side_cpr("src"), sc.side_cpr("dst"))


#: The first of the example ports a dry run shows for ``{port0}``... (a run picks free ones).
PLAN_PORT = 40000

#: The channels of a retry (and of every soak hop): the plain valid transfer.
VALID_KINDS = ("unix", "unix", "unix", "unix")


def source_setup_commands(sc: Scenario) -> List[Dict[str, Any]]:
    """The source's commands before any channel: the mode, then the capabilities."""
    cmds = [{"execute": "migrate-set-parameters", "arguments": {"mode": "cpr-transfer"}}]
    if sc.capabilities:
        cmds.append({"execute": "migrate-set-capabilities", "arguments": {
            "capabilities": [{"capability": c, "state": True} for c in sc.capabilities]}})
    return cmds


@dataclass
class Plan:
    """What a scenario renders to, without running anything (a dry run)."""
    dialect: str
    src_args: List[str]
    dst_args: List[str]
    src_commands: List[Dict[str, Any]]
    dst_commands: List[Dict[str, Any]]

    def text(self) -> str:
        lines = [f"# dialect: {self.dialect}", "# source:", shlex.join(self.src_args),
                 "# target:", shlex.join(self.dst_args), "# source QMP, in order:"]
        lines += [json.dumps(c) for c in self.src_commands]
        if self.dst_commands:
            lines += ["# target QMP, after the source's migrate:"]
            lines += [json.dumps(c) for c in self.dst_commands]
        return "\n".join(lines)


def render_plan(sc: Scenario, dialect: Dialect, workdir: str, accel: str = "kvm",
                guest_args: Optional[List[str]] = None) -> Plan:
    """Render ``sc`` in ``dialect`` as the pair driver would (channels are allocated:
    sockets pre-created for fd kinds are closed again before returning)."""
    mem = backends.render(sc.backend, sc.ram_mb, sc.prealloc, "/dev/shm/cprh-PLAN",
                          check_host=False)
    gargs = guest_args if guest_args is not None else ["-bios", "GUEST.bin"]
    os.makedirs(os.path.join(workdir, "s"), exist_ok=True)
    sm, dm, scpr, dc = render_channels(*side_kinds(sc), workdir)
    try:
        cmds = source_setup_commands(sc)
        cmds += [{"execute": "getfd", "arguments": {"fdname": n}}
                 for n in {**sm.src_getfd, **scpr.src_getfd}]
        cmds += [{"execute": c.name, "arguments": c.args} for c in dialect.source_prepare(scpr)]
        m = dialect.source_migrate(sm, scpr)
        cmds.append({"execute": m.name, "arguments": m.args})
        dst_cmds = []
        if sc.incoming == "defer":
            c = dialect.target_migrate_incoming(dm)
            dst_cmds.append({"execute": c.name, "arguments": c.args})
        shared = os.path.join(workdir, "shared")
        ports = tuple(range(PLAN_PORT, PLAN_PORT + ports_wanted(sc)))
        src_args = render_vm_args(sc, dialect, mem, accel, gargs, "src",
                                  extra=render_extra_args(sc, "src", shared, ports=ports))
        dst_args = render_vm_args(sc, dialect, mem, accel, gargs, "dst",
                                  extra=render_extra_args(sc, "dst", shared, ports=ports)) + \
            dialect.target_incoming(dm, dc, sc.incoming == "defer")
        return Plan(dialect.name, src_args, dst_args, cmds, dst_cmds)
    finally:
        for c in {id(x): x for x in (sm, dm, scpr, dc)}.values():
            c.close()
