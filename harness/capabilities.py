"""Probe one QEMU binary for what it supports for cpr-transfer.

``probe(binary)`` runs the binary a few times, never for long:

1. ``BINARY --version``: must print ``QEMU emulator version X.Y.Z ...``, else
   :class:`~harness.errors.NotQemu`;
2. ``BINARY -accel help`` and ``BINARY -machine help``: accelerators and machine
   types (names and aliases);
3. one QMP session over the child's stdin/stdout (``-machine none -nodefaults
   -display none -qmp stdio``), every command sent at once, ``quit`` last:
   ``qmp_capabilities``, ``query-version``, ``query-qmp-schema``, ``qom-list-types``,
   ``qom-list-properties`` of the concrete q35 machine type
   (``pc-q35-10.0-machine`` on 10.0.2), ``query-command-line-options`` for
   ``run-with`` and ``machine``.

The QMP schema names its types with opaque numbers, so nothing is looked up by a
type's documented name: ``MigMode`` is the enum that the ``mode`` member of
``migrate-set-parameters``'s argument type points to, ``MigrationChannelType`` the enum
of the ``channel-type`` member of the element type of ``migrate``'s ``channels``.

QEMU's stderr always goes to a pipe, never to the caller's. Every child runs in its
own session and is killed (whole process group) when the probe's time runs out; the
``timeout`` is one budget for the whole probe.

This module imports nothing from pytest, allure or avocado.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Tuple

from harness.cleanup import popen_guarded, released
from harness.errors import NotQemu, ProbeFailed, QemuNotFound

__all__ = [
    "Capabilities",
    "probe",
    "clear_probe_cache",
    "DIALECT_RELEASED",
    "DIALECT_RFC_V1",
    "DIALECT_NONE",
]

DIALECT_RELEASED = "released-10x"
DIALECT_RFC_V1 = "rfc-v1"
DIALECT_NONE = "none"

KVM_DEVICE = "/dev/kvm"

# The QMP session's command line. -no-user-config keeps /etc/qemu/*.conf out.
QMP_ARGS = ("-no-user-config", "-machine", "none", "-nodefaults", "-display", "none",
            "-S", "-qmp", "stdio")

_VERSION_RE = re.compile(r"QEMU emulator version\s+((\d+)\.(\d+)(?:\.(\d+))?\S*(?:\s.*)?)$")
_TAIL_LINES = 20
_TAIL_LINE_CHARS = 300


# --------------------------------------------------------------------------- result


@dataclass(frozen=True)
class Capabilities:
    """What one QEMU binary offers for cpr-transfer. Immutable; build it with :func:`probe`.

    Every field after ``version_str`` has a default so that tests and reports can
    build one by hand (``Capabilities(binary=..., path=..., version=..., version_str=...,
    mig_modes=(...))``).
    """

    binary: str
    """The name or path as the caller gave it."""
    path: str
    """Absolute path of the file that was run (looked up on PATH when ``binary`` has no
    ``/``); a wrapper script stays the script."""
    version: Tuple[int, int, int]
    version_str: str
    """All of ``--version``'s first line after ``QEMU emulator version``."""
    accels: Tuple[str, ...] = ()
    kvm_usable: bool = False
    kvm_reason: str = ""
    machines: Tuple[str, ...] = ()
    object_types: FrozenSet[str] = frozenset()
    mig_modes: Tuple[str, ...] = ()
    migrate_has_channels: bool = False
    channel_types: Tuple[str, ...] = ()
    migparams_has_cpr_uri: bool = False
    machine_props: FrozenSet[str] = frozenset()
    has_exit_with_parent: bool = False
    # Beyond the brief: where the facts came from.
    props_machine: str = ""
    """The machine type whose properties ``machine_props`` lists, e.g. ``pc-q35-10.0``."""
    default_machine: str = ""
    notes: Tuple[str, ...] = ()
    """Oddities met on the way that did not stop the probe."""

    # -- derived ---------------------------------------------------------------

    @property
    def has_cpr_transfer(self) -> bool:
        return "cpr-transfer" in self.mig_modes

    @property
    def dialect(self) -> str:
        """``released-10x``, ``rfc-v1`` or ``none``: which cpr-transfer interface the
        binary speaks (whether it is complete is :meth:`cpr_transfer_problems`)."""
        if not self.has_cpr_transfer:
            return DIALECT_NONE
        if self.migrate_has_channels and "cpr" in self.channel_types:
            return DIALECT_RELEASED
        if self.migparams_has_cpr_uri or "anon-alloc" in self.machine_props:
            return DIALECT_RFC_V1
        return DIALECT_NONE

    def has_object_type(self, name: str) -> bool:
        return name in self.object_types

    def cpr_transfer_problems(self) -> List[str]:
        """Why this binary cannot run the released (QEMU >= 10.0) cpr-transfer
        interface; empty when it can."""
        problems: List[str] = []
        if not self.mig_modes:
            problems.append(
                "no 'cpr-transfer' migration mode: the QMP schema has no MigMode enum "
                "(migrate-set-parameters has no 'mode' parameter), so this QEMU "
                "predates CPR")
        elif not self.has_cpr_transfer:
            problems.append(
                f"MigMode has no 'cpr-transfer' (modes: {', '.join(self.mig_modes)})")
        if self.dialect == DIALECT_RFC_V1:
            rfc_bits = []
            if self.migparams_has_cpr_uri:
                rfc_bits.append("migrate-set-parameters 'cpr-uri'")
            if "anon-alloc" in self.machine_props:
                rfc_bits.append("-machine anon-alloc")
            problems.append(
                "this is the RFC v1 cpr-transfer dialect (" + ", ".join(rfc_bits) +
                "), not the released 10.x interface (a 'cpr' channel in migrate's "
                "'channels', -machine aux-ram-share)")
        if not self.migrate_has_channels:
            problems.append("the 'migrate' command has no 'channels' argument")
        elif "cpr" not in self.channel_types:
            shown = ", ".join(self.channel_types) if self.channel_types else "none found"
            problems.append(
                f"MigrationChannelType has no 'cpr' channel type (types: {shown})")
        if "aux-ram-share" not in self.machine_props:
            where = f"machine type {self.props_machine!r}" if self.props_machine \
                else "the machine"
            extra = " (it has 'anon-alloc', the RFC v1 spelling)" \
                if "anon-alloc" in self.machine_props else ""
            if not self.machine_props:
                extra = " (no machine properties could be listed)"
            problems.append(f"{where} has no 'aux-ram-share' property{extra}")
        return problems

    @property
    def cpr_transfer_supported(self) -> bool:
        return not self.cpr_transfer_problems()

    # -- output ----------------------------------------------------------------

    def to_dict(self) -> Dict[str, Any]:
        """JSON-serialisable; frozensets become sorted lists, derived facts included."""
        d: Dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, frozenset):
                v = sorted(v)
            elif isinstance(v, tuple):
                v = list(v)
            d[f.name] = v
        d["has_cpr_transfer"] = self.has_cpr_transfer
        d["dialect"] = self.dialect
        d["cpr_transfer_problems"] = self.cpr_transfer_problems()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Capabilities":
        """Inverse of :meth:`to_dict` (derived keys are ignored)."""
        kw: Dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in d:
                continue
            v = d[f.name]
            if f.name in ("object_types", "machine_props"):
                v = frozenset(v)
            elif isinstance(v, list):
                v = tuple(v)
            kw[f.name] = v
        return cls(**kw)

    def summary(self) -> str:
        """A few readable lines for the CLI; the last says whether cpr-transfer works."""

        def yn(b: bool) -> str:
            return "yes" if b else "no"

        def lst(xs: Iterable[str]) -> str:
            xs = list(xs)
            return ", ".join(xs) if xs else "(none)"

        where = self.path if self.path == self.binary else f"{self.binary} -> {self.path}"
        kvm = "usable" if self.kvm_usable else f"not usable: {self.kvm_reason}"
        backends = sorted(t for t in self.object_types if t.startswith("memory-backend-"))
        lines = [
            f"QEMU {self.version_str}",
            f"  binary:            {where}",
            f"  accelerators:      {lst(self.accels)} (KVM {kvm})",
            f"  machine types:     {len(self.machines)}"
            + (f" (default {self.default_machine})" if self.default_machine else "")
            + (f"; properties read from {self.props_machine}" if self.props_machine else ""),
            f"  machine props:     aux-ram-share: {yn('aux-ram-share' in self.machine_props)}, "
            f"anon-alloc: {yn('anon-alloc' in self.machine_props)}",
            f"  migration modes:   {lst(self.mig_modes)}",
            f"  migrate channels:  {yn(self.migrate_has_channels)}"
            + (f" (channel types: {lst(self.channel_types)})" if self.migrate_has_channels else ""),
            f"  cpr-uri parameter: {yn(self.migparams_has_cpr_uri)}",
            f"  memory backends:   {lst(backends)}",
            f"  exit-with-parent:  {yn(self.has_exit_with_parent)}",
            f"  dialect:           {self.dialect}",
        ]
        for n in self.notes:
            lines.append(f"  note: {n}")
        problems = self.cpr_transfer_problems()
        if problems:
            lines.append("cpr-transfer: NOT supported: " + "; ".join(problems))
        else:
            lines.append("cpr-transfer: supported")
        return "\n".join(lines)

    def __str__(self) -> str:  # pragma: no cover - convenience
        return self.summary()


# --------------------------------------------------------------------------- memo

_cache: Dict[Tuple[str, int, int], Capabilities] = {}
_cache_by_name: Dict[Tuple[Tuple[str, int, int], str, str], Capabilities] = {}
_cache_lock = threading.Lock()


def clear_probe_cache() -> None:
    """Forget every memoized probe (tests, or after replacing a binary in place)."""
    with _cache_lock:
        _cache.clear()
        _cache_by_name.clear()


# --------------------------------------------------------------------------- probe


def probe(binary: str, timeout: float = 30.0) -> Capabilities:
    """Probe ``binary`` (a name on PATH or a path; a wrapper script that execs QEMU
    is fine) and return its :class:`Capabilities`.

    Memoized per process on (realpath, st_mtime_ns, st_size): a second call for an
    unchanged file returns the same object. ``timeout`` (seconds) bounds the whole
    probe.

    Raises QemuNotFound (missing, or not executable), NotQemu (runs, but is not
    QEMU), ProbeFailed (QEMU that dies, hangs or answers nonsense).
    """
    path = _resolve(binary)
    try:
        st = os.stat(path)
    except OSError:
        raise QemuNotFound(binary) from None
    key = (os.path.realpath(path), st.st_mtime_ns, st.st_size)
    name_key = (key, binary, path)
    with _cache_lock:
        hit = _cache_by_name.get(name_key)
        if hit is not None:
            return hit
        base = _cache.get(key)
    if base is None:
        base = _Prober(binary, path, timeout).run()
        with _cache_lock:
            base = _cache.setdefault(key, base)
    caps = base if (base.binary, base.path) == (binary, path) \
        else dataclasses.replace(base, binary=binary, path=path)
    with _cache_lock:
        return _cache_by_name.setdefault(name_key, caps)


def _resolve(binary: str) -> str:
    if not binary:
        raise QemuNotFound(binary)
    if os.sep in binary:
        path = os.path.abspath(binary)
    else:
        found = shutil.which(binary)
        if found is None:
            raise QemuNotFound(binary)
        path = os.path.abspath(found)
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise QemuNotFound(binary)
    return path


def _kvm_state(accels: Sequence[str]) -> Tuple[bool, str]:
    if "kvm" not in accels:
        return False, f"the binary has no kvm accelerator (accelerators: {', '.join(accels) or 'none'})"
    try:
        fd = os.open(KVM_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return False, f"cannot open {KVM_DEVICE} read-write: {e.strerror or e}"
    os.close(fd)
    return True, ""


def _tail(*texts: str) -> str:
    lines: List[str] = []
    for t in texts:
        if t:
            lines.extend(t.splitlines())
    lines = [ln if len(ln) <= _TAIL_LINE_CHARS else ln[:_TAIL_LINE_CHARS] + " [...]"
             for ln in lines if ln.strip()]
    return "\n".join(lines[-_TAIL_LINES:])


class _Prober:
    def __init__(self, binary: str, path: str, timeout: float):
        self.binary = binary
        self.path = path
        self.deadline = time.monotonic() + max(float(timeout), 0.1)
        self.timeout = timeout
        self.notes: List[str] = []
        self._qmp_lines: List[str] = []

    # -- processes -------------------------------------------------------------

    def _run(self, args: Sequence[str], what: str, input_text: Optional[str] = None
             ) -> Tuple[int, str, str]:
        """Run the binary with ``args``; return (exit code, stdout, stderr)."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise ProbeFailed(self.binary,
                              f"ran out of time ({self.timeout:g}s) before {what}")
        try:
            proc = popen_guarded(
                [self.path, *args],
                stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, errors="replace")
        except PermissionError:
            raise QemuNotFound(self.binary) from None
        except FileNotFoundError:
            raise QemuNotFound(self.binary) from None
        except OSError as e:
            if e.errno == errno.ENOEXEC:
                raise NotQemu(self.binary, "cannot be executed: not a program or script "
                                           f"this system can run ({e.strerror})") from None
            raise ProbeFailed(self.binary, f"cannot start {what}: {e}") from None
        try:
            out, err = proc.communicate(input=input_text, timeout=remaining)
        except subprocess.TimeoutExpired:
            self._kill(proc)
            try:
                out, err = proc.communicate(timeout=5)
            except (subprocess.TimeoutExpired, ValueError, OSError):
                out, err = "", ""
            raise ProbeFailed(
                self.binary, f"{what} timed out after {remaining:.2f}s "
                             f"(probe budget {self.timeout:g}s); killed it",
                _tail(err or "", out or "") or None) from None
        except BaseException:
            self._kill(proc)
            proc.wait()
            raise
        finally:
            released(proc)
        return proc.returncode, out or "", err or ""

    def _qmp_session(self, cmds: List[Tuple[str, Dict[str, Any]]], what: str
                     ) -> Tuple[int, str, str]:
        """Send every command but the last (``quit``), read until each has its reply,
        then send ``quit``. Sending ``quit`` with the rest lets QEMU exit with replies
        still unflushed in its monitor buffer when the reader is slow (a loaded host):
        the last line comes out cut."""
        import selectors
        import tempfile

        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise ProbeFailed(self.binary, f"ran out of time ({self.timeout:g}s) before {what}")
        errf = tempfile.TemporaryFile()
        try:
            proc = popen_guarded([self.path, *QMP_ARGS], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=errf)
        except (PermissionError, FileNotFoundError):
            errf.close()
            raise QemuNotFound(self.binary) from None
        except OSError as e:
            errf.close()
            raise ProbeFailed(self.binary, f"cannot start {what}: {e}") from None
        assert proc.stdin is not None and proc.stdout is not None
        want = set(range(len(cmds) - 1))
        buf = b""
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        timed_out = False
        try:
            try:
                proc.stdin.write("".join(json.dumps(dict(c, id=i)) + "\n"
                                         for i, (_, c) in enumerate(cmds[:-1])).encode())
                proc.stdin.flush()
            except OSError:
                pass  # it exited already (not QEMU, or dead): judged by what it printed
            while want:
                left = self.deadline - time.monotonic()
                if left <= 0:
                    timed_out = True
                    break
                if not sel.select(timeout=min(left, 1.0)):
                    if proc.poll() is not None:
                        break
                    continue
                chunk = os.read(proc.stdout.fileno(), 1 << 16)
                if not chunk:
                    break  # QEMU closed stdout: it died; the caller reports what is missing
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    try:
                        msg = json.loads(line)
                    except ValueError:
                        msg = None
                    if isinstance(msg, dict) and msg.get("id") in want:
                        want.discard(msg["id"])
                    self._qmp_lines.append(line.decode(errors="replace"))
            if not timed_out and proc.poll() is None:
                try:
                    proc.stdin.write((json.dumps(dict(cmds[-1][1], id=len(cmds) - 1))
                                      + "\n").encode())
                    proc.stdin.close()
                except OSError:
                    pass
                rest_deadline = max(1.0, self.deadline - time.monotonic())
                end = time.monotonic() + rest_deadline
                while time.monotonic() < end:
                    if not sel.select(timeout=min(1.0, end - time.monotonic())):
                        if proc.poll() is not None:
                            break
                        continue
                    chunk = os.read(proc.stdout.fileno(), 1 << 16)
                    if not chunk:
                        break
                    buf += chunk
                else:
                    timed_out = True
        finally:
            sel.close()
            if timed_out or proc.poll() is None:
                try:
                    proc.wait(timeout=5 if not timed_out else 0.01)
                except subprocess.TimeoutExpired:
                    self._kill(proc)
                    proc.wait()
            for stream in (proc.stdin, proc.stdout):
                try:
                    if stream is not None:
                        stream.close()
                except OSError:
                    pass
            released(proc)
            errf.seek(0)
            err = errf.read().decode(errors="replace")
            errf.close()
        out = "\n".join(self._qmp_lines + ([buf.decode(errors="replace")] if buf else []))
        self._qmp_lines = []
        if timed_out:
            raise ProbeFailed(self.binary, f"{what} timed out (probe budget "
                                           f"{self.timeout:g}s); killed it",
                              _tail(err, out) or None)
        return proc.returncode, out, err

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.kill()
        except ProcessLookupError:
            pass

    # -- steps -----------------------------------------------------------------

    def run(self) -> Capabilities:
        version, version_str = self._version()
        accels = self._accels()
        machines, aliases, default_machine = self._machines()
        props_machine = self._props_machine(machines, aliases, default_machine)
        qmp = self._qmp(props_machine)
        kvm_usable, kvm_reason = _kvm_state(accels)

        qv = qmp.get("query-version")
        if isinstance(qv, dict):
            qver = qv.get("qemu", {})
            qtuple = (qver.get("major"), qver.get("minor"), qver.get("micro"))
            if qtuple != version:
                self.notes.append(f"--version says {version} but query-version says {qtuple}")

        schema = _Schema(qmp["query-qmp-schema"])
        mig_modes = schema.mig_modes()
        migrate_args = schema.command_args("migrate")
        migrate_has_channels = migrate_args is not None and "channels" in migrate_args
        channel_types = schema.channel_types()
        set_params = schema.command_args("migrate-set-parameters") or {}
        query_params = schema.command_returns("query-migrate-parameters") or {}
        has_cpr_uri = "cpr-uri" in set_params or "cpr-uri" in query_params

        object_types = frozenset(t["name"] for t in qmp["qom-list-types"]
                                 if isinstance(t, dict) and "name" in t)

        machine_props = self._machine_props(qmp, props_machine)

        run_with = qmp.get("query-command-line-options run-with")
        run_with_params = _cmdline_option_params(run_with)
        has_ewp = "exit-with-parent" in run_with_params or schema.mentions("exit-with-parent")

        return Capabilities(
            binary=self.binary, path=self.path, version=version, version_str=version_str,
            accels=tuple(accels), kvm_usable=kvm_usable, kvm_reason=kvm_reason,
            machines=tuple(machines), object_types=object_types,
            mig_modes=tuple(mig_modes), migrate_has_channels=migrate_has_channels,
            channel_types=tuple(channel_types), migparams_has_cpr_uri=has_cpr_uri,
            machine_props=machine_props, has_exit_with_parent=has_ewp,
            props_machine=props_machine or "", default_machine=default_machine or "",
            notes=tuple(self.notes))

    def _version(self) -> Tuple[Tuple[int, int, int], str]:
        rc, out, err = self._run(["--version"], "`--version`")
        first = next((ln.strip() for ln in out.splitlines() if ln.strip()), "")
        m = _VERSION_RE.match(first)
        if m is None:
            if not out.strip() and not err.strip():
                detail = f"`--version` printed nothing (exit code {rc})"
            else:
                shown = first or _tail(err).splitlines()[-1]
                detail = (f"`--version` printed {shown[:120]!r} (exit code {rc}), "
                          f"not 'QEMU emulator version X.Y.Z'")
            raise NotQemu(self.binary, detail)
        if rc != 0:
            self.notes.append(f"`--version` exited with code {rc}")
        ver = (int(m.group(2)), int(m.group(3)), int(m.group(4) or 0))
        return ver, m.group(1).strip()

    def _help(self, args: Sequence[str], header: str) -> List[str]:
        what = "`" + " ".join(args) + "`"
        rc, out, err = self._run(list(args), what)
        lines = out.splitlines()
        idx = next((i for i, ln in enumerate(lines) if ln.strip().startswith(header)), None)
        if rc != 0 or idx is None:
            raise ProbeFailed(self.binary,
                              f"{what} exited with code {rc} without its "
                              f"{header!r} list", _tail(err, out) or None)
        return [ln for ln in lines[idx + 1:] if ln.strip()]

    def _accels(self) -> List[str]:
        body = self._help(["-accel", "help"], "Accelerators supported")
        return _unique(ln.split()[0] for ln in body)

    def _machines(self) -> Tuple[List[str], Dict[str, str], Optional[str]]:
        body = self._help(["-machine", "help"], "Supported machines are")
        names: List[str] = []
        aliases: Dict[str, str] = {}
        default = None
        for ln in body:
            parts = ln.split(None, 1)
            name = parts[0]
            desc = parts[1] if len(parts) > 1 else ""
            names.append(name)
            m = re.search(r"\(alias of (\S+?)\)", desc)
            if m:
                aliases[name] = m.group(1)
            if "(default)" in desc:
                default = name
        return _unique(names), aliases, default

    @staticmethod
    def _props_machine(machines: Sequence[str], aliases: Mapping[str, str],
                       default: Optional[str]) -> Optional[str]:
        """The concrete machine type whose properties to list: q35's target."""
        for cand in ("q35", default, "pc", "virt"):
            if cand and cand in aliases:
                return aliases[cand]
            if cand and cand in machines and cand not in aliases:
                return cand
        real = [m for m in machines if m != "none" and m not in aliases]
        return real[0] if real else None

    def _qmp(self, props_machine: Optional[str]) -> Dict[str, Any]:
        cmds: List[Tuple[str, Dict[str, Any]]] = [
            ("qmp_capabilities", {"execute": "qmp_capabilities"}),
            ("query-version", {"execute": "query-version"}),
            ("query-qmp-schema", {"execute": "query-qmp-schema"}),
            ("qom-list-types", {"execute": "qom-list-types"}),
            ("query-command-line-options run-with",
             {"execute": "query-command-line-options", "arguments": {"option": "run-with"}}),
            ("query-command-line-options machine",
             {"execute": "query-command-line-options", "arguments": {"option": "machine"}}),
        ]
        if props_machine:
            cmds.append(("qom-list-properties",
                         {"execute": "qom-list-properties",
                          "arguments": {"typename": f"{props_machine}-machine"}}))
        cmds.append(("quit", {"execute": "quit"}))
        what = "the QMP session (" + " ".join(QMP_ARGS) + ")"
        rc, out, err = self._qmp_session(cmds, what)

        lines = [ln for ln in out.splitlines() if ln.strip()]
        msgs: List[Dict[str, Any]] = []
        for ln in lines:
            try:
                obj = json.loads(ln)
            except ValueError:
                raise ProbeFailed(self.binary,
                                  f"{what} printed something that is not QMP JSON "
                                  f"(exit code {rc})", _tail(err, out) or None) from None
            if not isinstance(obj, dict):
                raise ProbeFailed(self.binary, f"{what} printed a non-object JSON value",
                                  _tail(err, out) or None)
            msgs.append(obj)
        if not msgs or "QMP" not in msgs[0]:
            raise ProbeFailed(self.binary,
                              f"no QMP greeting from {what} (exit code {rc})",
                              _tail(err, out) or None)

        results: Dict[str, Any] = {}
        errors: Dict[str, str] = {}
        by_id = {i: name for i, (name, _) in enumerate(cmds)}
        for msg in msgs[1:]:
            if "id" not in msg:
                continue  # events, or an error about a line we did not send
            name = by_id.get(msg["id"])
            if name is None:
                continue
            if "return" in msg:
                results[name] = msg["return"]
            elif "error" in msg:
                e = msg["error"] if isinstance(msg["error"], dict) else {}
                errors[name] = f"{e.get('class', '?')}: {e.get('desc', msg['error'])}"

        required = ("qmp_capabilities", "query-version", "query-qmp-schema", "qom-list-types")
        for name in required:
            if name in errors:
                raise ProbeFailed(self.binary, f"QMP {name} failed: {errors[name]}",
                                  _tail(err) or None)
            if name not in results:
                raise ProbeFailed(self.binary,
                                  f"QEMU exited with code {rc} before answering QMP {name}",
                                  _tail(err, out) or None)
        if not isinstance(results["query-qmp-schema"], list) or \
                not isinstance(results["qom-list-types"], list):
            raise ProbeFailed(self.binary, "QMP answers of the wrong shape "
                                           "(query-qmp-schema/qom-list-types not lists)",
                              _tail(err, out) or None)
        if "quit" not in results and rc != 0:
            self.notes.append(f"the QMP session ended with exit code {rc} without "
                              f"answering quit")
        if props_machine and "qom-list-properties" in errors:
            self.notes.append(f"qom-list-properties {props_machine}-machine failed: "
                              f"{errors['qom-list-properties']}")
        results["_errors"] = errors
        return results

    def _machine_props(self, qmp: Mapping[str, Any], props_machine: Optional[str]
                       ) -> FrozenSet[str]:
        props = qmp.get("qom-list-properties")
        if isinstance(props, list):
            return frozenset(p["name"] for p in props if isinstance(p, dict) and "name" in p)
        # Fallback: -machine's command-line options (the union over machine types).
        fallback = _cmdline_option_params(qmp.get("query-command-line-options machine"))
        if fallback:
            self.notes.append("machine properties taken from query-command-line-options "
                              "(machine), not from one machine type")
            return frozenset(fallback)
        return frozenset()


def _cmdline_option_params(ret: Any) -> List[str]:
    names: List[str] = []
    if isinstance(ret, list):
        for opt in ret:
            if isinstance(opt, dict):
                for p in opt.get("parameters", []):
                    if isinstance(p, dict) and "name" in p:
                        names.append(p["name"])
    return names


def _unique(xs: Iterable[str]) -> List[str]:
    seen = set()
    out = []
    for x in xs:
        if x not in seen:
            seen.add(x)
            out.append(x)
    return out


# --------------------------------------------------------------------------- schema


class _Schema:
    """``query-qmp-schema`` with its opaque type names followed properly."""

    def __init__(self, entities: Sequence[Mapping[str, Any]]):
        self.entities = [e for e in entities if isinstance(e, dict)]
        self.by_name = {e.get("name"): e for e in self.entities}
        self._text: Optional[str] = None

    def get(self, name: Optional[str]) -> Optional[Mapping[str, Any]]:
        return self.by_name.get(name) if name is not None else None

    def members(self, type_name: Optional[str]) -> Optional[Dict[str, str]]:
        """Member name -> type name of an object type, variants' members included."""
        t = self.get(type_name)
        if t is None or t.get("meta-type") != "object":
            return None
        out = {m["name"]: m.get("type", "") for m in t.get("members", []) if "name" in m}
        for v in t.get("variants", []) or []:
            sub = self.members(v.get("type"))
            for k, val in (sub or {}).items():
                out.setdefault(k, val)
        return out

    def enum_values(self, type_name: Optional[str]) -> Optional[List[str]]:
        t = self.get(type_name)
        if t is None:
            return None
        if t.get("meta-type") == "array":
            return self.enum_values(t.get("element-type"))
        if t.get("meta-type") == "alternate":
            for m in t.get("members", []):
                vals = self.enum_values(m.get("type"))
                if vals is not None:
                    return vals
            return None
        if t.get("meta-type") != "enum":
            return None
        if "values" in t and isinstance(t["values"], list):
            return [str(v) for v in t["values"]]
        return [m["name"] for m in t.get("members", []) if isinstance(m, dict) and "name" in m]

    def element(self, type_name: Optional[str]) -> Optional[str]:
        t = self.get(type_name)
        if t is not None and t.get("meta-type") == "array":
            return t.get("element-type")
        return type_name

    def command_args(self, command: str) -> Optional[Dict[str, str]]:
        c = self.get(command)
        if c is None or c.get("meta-type") != "command":
            return None
        return self.members(c.get("arg-type")) or {}

    def command_returns(self, command: str) -> Optional[Dict[str, str]]:
        c = self.get(command)
        if c is None or c.get("meta-type") != "command":
            return None
        return self.members(c.get("ret-type")) or {}

    def mig_modes(self) -> List[str]:
        for members in (self.command_args("migrate-set-parameters"),
                        self.command_returns("query-migrate-parameters")):
            if members and "mode" in members:
                vals = self.enum_values(members["mode"])
                if vals is not None:
                    return vals
        return []

    def channel_types(self) -> List[str]:
        for command in ("migrate", "migrate-incoming"):
            args = self.command_args(command)
            if not args or "channels" not in args:
                continue
            channel = self.members(self.element(args["channels"]))
            if channel and "channel-type" in channel:
                vals = self.enum_values(channel["channel-type"])
                if vals is not None:
                    return vals
        return []

    def mentions(self, word: str) -> bool:
        if self._text is None:
            self._text = json.dumps(self.entities)
        return word in self._text


def _main(argv: Sequence[str]) -> int:
    """``python -m harness.capabilities [--json] [BINARY...]``: print each summary."""
    import sys
    from harness.errors import HarnessError

    as_json = "--json" in argv
    binaries = [a for a in argv if a != "--json"] or ["qemu-system-x86_64"]
    rc = 0
    for i, b in enumerate(binaries):
        try:
            caps = probe(b)
        except HarnessError as e:
            print(f"error: {e}", file=sys.stderr)
            rc = 2
            continue
        if as_json:
            print(json.dumps(caps.to_dict(), indent=2))
        else:
            if i:
                print()
            print(caps.summary())
    return rc


if __name__ == "__main__":  # pragma: no cover
    import sys
    raise SystemExit(_main(sys.argv[1:]))
