"""Probe one QEMU binary for what it supports for cpr-transfer.

``probe(binary)`` runs the binary a few times, never for long:

1. ``BINARY --version``: must print ``QEMU emulator version X.Y.Z ...``, else
   :class:`~harness.core.errors.NotQemu`;
2. ``BINARY -accel help`` and ``BINARY -machine help``: accelerators and machine
   types (names and aliases);
3. one QMP session (``-machine none -nodefaults -display none -S``), the same
   :class:`~harness.qemu.process.QemuProcess` and :class:`~harness.qemu.qmp.QMPSession`
   the pairs use: ``qmp_capabilities``, ``query-version``, ``query-qmp-schema``,
   ``qom-list-types`` (required), then ``qom-list-properties`` of the concrete q35
   machine type (``pc-q35-10.0-machine`` on 10.0.2), ``query-command-line-options`` for
   ``run-with`` and ``machine``, then ``quit``. An optional question that kills QEMU
   (the cpr-transfer series' 9.1.50 segfaults on ``qom-list-properties``) is a note
   saying how it died, as read from its exit status (a crash's top frames from its
   core), and the rest are asked of a fresh QEMU.

The QMP schema names its types with opaque numbers, so nothing is looked up by a
type's documented name: ``MigMode`` is the enum that the ``mode`` member of
``migrate-set-parameters``'s argument type points to, ``MigrationChannelType`` the enum
of the ``channel-type`` member of the element type of ``migrate``'s ``channels``.

QEMU's output always goes to a pipe or its own log file, never to the caller's. Every
child runs in its own session and is killed (whole process group) when the probe's
time runs out; the ``timeout`` is one budget for the whole probe.

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
from typing import Any, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Tuple

from harness.core.cleanup import popen_guarded, private_tmpdir, released, remove_tmpdir
from harness.core.errors import (AbnormalShutdown, NotQemu, ProbeFailed, QemuNotFound,
                                 QMPCommandFailed, QMPConnectionLost, VMLaunchFailure,
                                 WaitTimeout)
from harness.core.logs import tail
from harness.qemu.capabilities import (DIALECT_NONE, DIALECT_RELEASED,  # noqa: F401
                                       DIALECT_RFC_V1, Capabilities)
from harness.qemu.crash import diagnose
from harness.qemu.process import QemuProcess, describe_exit
from harness.qemu.qmp import QMPSession
from harness.qemu.schema import Schema

__all__ = [
    "Capabilities",
    "probe",
    "clear_probe_cache",
    "DIALECT_RELEASED",
    "DIALECT_RFC_V1",
    "DIALECT_NONE",
]

KVM_DEVICE = "/dev/kvm"

# The QMP session's command line. -no-user-config keeps /etc/qemu/*.conf out.
QMP_ARGS = ("-no-user-config", "-machine", "none", "-nodefaults", "-display", "none",
            "-S")

_VERSION_RE = re.compile(r"QEMU emulator version\s+((\d+)\.(\d+)(?:\.(\d+))?\S*(?:\s.*)?)$")
_TAIL_LINES = 20
_TAIL_LINE_CHARS = 300
#: QMP answers the probe cannot do without.
_REQUIRED = ("query-version", "query-qmp-schema", "qom-list-types")
#: How long a QEMU that dropped its monitor gets to be seen exiting.
_EXIT_WAIT_S = 5.0


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

    def _left(self, what: str) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise ProbeFailed(self.binary, f"ran out of time ({self.timeout:g}s) during {what}")
        return left

    def _launch(self, vm: QemuProcess, what: str) -> None:
        self._left(what)
        try:
            vm.launch()
        except VMLaunchFailure as exc:
            raise ProbeFailed(self.binary, f"cannot start {what}: {exc.log_tail}") from None

    def _connect(self, vm: QemuProcess, what: str) -> QMPSession:
        try:
            return vm.connect_qmp(self._left(what))
        except VMLaunchFailure as exc:
            raise ProbeFailed(self.binary, f"QEMU {describe_exit(exc.exitcode)} before its "
                                           f"QMP monitor came up",
                              _tail(exc.log_tail) or None) from None
        except QMPConnectionLost as exc:
            raise ProbeFailed(self.binary, f"{what}: not a QMP monitor: {exc.detail}",
                              _tail(tail(vm.log_path)) or None) from None
        except WaitTimeout as exc:
            raise ProbeFailed(self.binary, f"{what}: no QMP monitor within the probe budget "
                                           f"({self.timeout:g}s; last: {exc.last_state}); "
                                           f"killed it",
                              _tail(tail(vm.log_path)) or None) from None

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

        schema = Schema(qmp["query-qmp-schema"])
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
            machines=tuple(machines), machine_aliases=tuple(sorted(aliases.items())),
            object_types=object_types,
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
        """Ask every QMP question; the required ones first. An optional question that
        kills QEMU is a note (how it died) and the rest go to a fresh QEMU."""
        pending: List[Tuple[str, str, Optional[Dict[str, Any]]]] = [
            ("query-version", "query-version", None),
            ("query-qmp-schema", "query-qmp-schema", None),
            ("qom-list-types", "qom-list-types", None),
        ]
        if props_machine:
            pending.append(("qom-list-properties", "qom-list-properties",
                            {"typename": f"{props_machine}-machine"}))
        pending += [
            ("query-command-line-options run-with", "query-command-line-options",
             {"option": "run-with"}),
            ("query-command-line-options machine", "query-command-line-options",
             {"option": "machine"}),
        ]
        results: Dict[str, Any] = {}
        errors: Dict[str, str] = {}
        while pending:
            self._session(pending, results, errors)
        for name in _REQUIRED:
            if name in errors:
                raise ProbeFailed(self.binary, f"QMP {name} failed: {errors[name]}")
        if not isinstance(results["query-qmp-schema"], list) or \
                not isinstance(results["qom-list-types"], list):
            raise ProbeFailed(self.binary, "QMP answers of the wrong shape "
                                           "(query-qmp-schema/qom-list-types not lists)")
        if props_machine and "qom-list-properties" in errors:
            self.notes.append(f"qom-list-properties {props_machine}-machine failed: "
                              f"{errors['qom-list-properties']}")
        results["_errors"] = errors
        return results

    def _session(self, pending: List[Tuple[str, str, Optional[Dict[str, Any]]]],
                 results: Dict[str, Any], errors: Dict[str, str]) -> None:
        """One probe QEMU: ask ``pending`` questions in turn, removing each answered one;
        return early (the rest still pending) when an optional question killed it."""
        what = "the QMP session (" + " ".join(QMP_ARGS) + " -qmp unix:...)"
        wd = private_tmpdir("probe")
        vm = QemuProcess("probe", self.path, QMP_ARGS, wd, wd)
        try:
            self._launch(vm, what)
            qmp = self._connect(vm, what)
            results["qmp_capabilities"] = {}
            while pending:
                name, command, args = pending.pop(0)
                try:
                    results[name] = qmp.cmd(command, args, timeout=self._left(what))
                except QMPCommandFailed as exc:
                    errors[name] = f"{exc.error_class}: {exc.desc}"
                except QMPConnectionLost:
                    death = self._death(vm, wd)
                    if name in _REQUIRED:
                        raise ProbeFailed(self.binary, f"QEMU {death} before answering QMP "
                                                       f"{name}",
                                          _tail(tail(vm.log_path)) or None) from None
                    shown = f"{command} {args['typename']}" if args and "typename" in args \
                        else name
                    self.notes.append(f"{shown} killed the probe QEMU: it {death}"
                                      + ("; the rest asked of a fresh QEMU" if pending else ""))
                    return
                except WaitTimeout:
                    raise ProbeFailed(self.binary, f"{what} timed out waiting for the reply "
                                                   f"to {name} (probe budget "
                                                   f"{self.timeout:g}s); killed it",
                                      _tail(tail(vm.log_path)) or None) from None
        finally:
            try:
                vm.shutdown(timeout=5.0)
            except AbnormalShutdown:
                self.notes.append("the probe QEMU ignored quit and was killed")
            remove_tmpdir(wd)

    def _death(self, vm: QemuProcess, wd: str) -> str:
        """How a probe QEMU that dropped its monitor ended, from its exit status as read
        (waited for, bounded): ``was killed by signal 11 (SIGSEGV); top frames: ...``.
        The backtrace of a crash is taken as for a pair's QEMU; its time is not charged
        to the probe's budget."""
        try:
            code = vm.wait_exit(min(_EXIT_WAIT_S, self._left("waiting for the probe QEMU "
                                                                 "to exit")))
        except WaitTimeout:
            vm.kill()
            return (f"closed its monitor and was still running {_EXIT_WAIT_S:g} s later "
                    f"(killed)")
        vm.expect_exit()
        text = describe_exit(code)
        t0 = time.monotonic()
        crash = diagnose("probe", vm.pid, code, vm.exe, vm.core_dir,
                         os.path.join(wd, "probe.backtrace.txt"))
        self.deadline += time.monotonic() - t0
        return text if crash is None else f"{text}; {crash.describe()}"

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



def _main(argv: Sequence[str]) -> int:
    """``python -m harness.qemu.probe [--json] [BINARY...]``: print each summary."""
    import sys
    from harness.core.errors import HarnessError

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
