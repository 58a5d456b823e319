#!/usr/bin/env python3
"""A deliberately broken cpr-transfer target, for the harness's self-tests only.

NOT a conformance subject: it execs the real QEMU and then tampers with it, so the
self-tests can show that the harness notices. Usage, as a --qemu-dst wrapper:

    tamper.py MODE [QEMU ARGS...]

Modes (each acts on the target, timed from the RESUME of its own second monitor: the
event, or query-status saying running when that monitor came up after the event):

    none        run QEMU unchanged (the control)
    paused      add -S: the target never resumes the guest
    reset       system_reset right at RESUME
    page        flip one byte of guest RAM (guest-physical TAMPER_GPA) right at RESUME
    freeze      SIGSTOP the QEMU process right at RESUME, SIGCONT after FREEZE_S
    late-freeze SIGSTOP it for LATE_FREEZE_S (300 ms: QEMU's own default downtime limit
                for a whole precopy migration), LATE_S after RESUME
    stutter     SIGSTOP it STUTTER_S (70 ms) out of every STUTTER_PERIOD_S (80), STUTTER_TIMES
                times (6 s), from LATE_S after RESUME: each stall under the floor a
                single stall is judged by, their sum most of the window
    late-kill   SIGKILL QEMU LATE_S after RESUME
    late-reset  system_reset LATE_S after RESUME
    late-stop   stop (pause the guest) LATE_S after RESUME
    late-page   flip one byte of guest RAM LATE_S after RESUME
    late-mute   the guest's console silenced LATE_S after RESUME (chardev-change of the
                serial's chardev to a null back-end: the guest prints on, nothing
                reaches the host)

Modes that break the *source* (as a --qemu-src wrapper; a target runs unchanged), and
one more for the target:

    src-cont    `cont` on the source LATE_S after its migration completed: the old QEMU
                runs the guest again on the RAM the target runs it on (a split brain)
    src-hang    SIGSTOP the source when the harness sends it `migrate` (our QMP proxy
                sits between the harness and QEMU and holds the command): it hangs
                inside the transfer
    dst-hang    SIGSTOP the target once it holds the guest's RAM memfd (it has read the
                CPR state); the harness's monitor socket is ours and never comes up, so
                the target hangs where its monitor should have appeared

Determinism: before exec'ing QEMU the wrapper creates ``<the harness's QMP socket>.hold``
and removes it once the damage is done. The harness's observation window stays open
while that file exists (harness/run/observe.py), so the damage always lands inside the
window, however loaded the host is: nothing here races the harness.

One wrapper for many cases: mode ``by-case`` reads the JSON object in $TAMPER_MODES
(scenario-id tail -> mode) and picks the mode whose key names the case's artifacts
directory (in the serial console's path; pytest and avocado both name it after the
scenario), so one pytest run and one avocado job can each hold every broken target.

Anything that is not a cpr-transfer target (no -incoming) just runs QEMU unchanged, so
probing the wrapper works.
"""
import json
import os
import re
import select
import shutil
import signal
import socket
import sys
import time
import traceback

TAMPER_GPA = 0x200000
RAM_MEMFDS = ("/memfd:memory-backend-memfd", "/memfd:ram0")
LATE_S = 0.3
FREEZE_S = 1.5
LATE_FREEZE_S = 0.3
#: 70 ms of every 80: each stall under the 150 ms floor, about 0.7 of the window
#: stalled, above the stutter budget (the baseline's share plus 0.25) for any baseline
#: seen under load (its share up to 0.38); 40 of 80 (a measured share of 0.41) escaped
#: once beside a baseline a loaded host had stalled 16 %.
STUTTER_S, STUTTER_PERIOD_S, STUTTER_TIMES = 0.07, 0.08, 75
#: Wait this long before connecting our monitor (a self-test sets it so the monitor comes
#: up after the guest resumed, as it can on a loaded host).
CONNECT_AFTER_S = float(os.environ.get("TAMPER_CONNECT_AFTER_S") or 0)
QEMU = os.environ.get("TAMPER_QEMU") or shutil.which("qemu-system-x86_64")
MODES = ("none", "paused", "reset", "page", "freeze", "late-freeze", "stutter", "late-kill",
         "late-reset",
         "late-stop", "late-page", "late-mute", "src-cont", "src-hang", "dst-hang")
#: Modes that act on the source (a QEMU without -incoming that runs a guest).
SOURCE_MODES = ("src-cont", "src-hang")
#: What each mode breaks, as the harness must name it: the id of a check that must fail
#: (or ids, any of which: a freeze at RESUME falls in the switch-over's pause or just
#: after it), and words its message must hold, or per id where the ids differ (the
#: self-tests assert exactly this, under pytest and avocado).
DEFECTS = {
    "paused": ("states.target", ["paused"]),
    "reset": ("window.boots", ["2"]),
    "page": ("ram.pattern", ["0x200000"]),
    "freeze": (("pause.switch-over", "pause.stalls"),
               {"pause.switch-over": ["the guest stood still", "at the switch-over"],
                "pause.stalls": ["the guest stalled", "after the switch-over"]}),
    "late-freeze": ("pause.stalls", ["the guest stalled", "after the switch-over",
                                     "baseline allows"]),
    "stutter": ("pause.stutter", ["stuttering target", "of the window"]),
    "late-kill": ("window.alive", ["killed by signal 9 (SIGKILL)", "after the switch-over"]),
    "late-reset": ("window.events", ["RESET"]),
    "late-stop": ("window.run-state", ["paused"]),
    "late-page": ("ram.pattern", ["0x200000"]),
    "late-mute": ("console.continues", ["never reached the console file"]),
    "src-cont": ("source.stopped", ["RESUME +0.", "running"]),
    "src-hang": ("outcome", ["hung", "src QEMU hung", "process stopped", "reply to migrate"]),
    "dst-hang": ("outcome", ["hung", "dst QEMU hung", "process stopped", "QMP monitor"]),
}


def qmp_path(args):
    for i, a in enumerate(args[:-1]):
        if a == "-qmp" and args[i + 1].startswith("unix:"):
            return args[i + 1][5:].split(",")[0]
    return None


def connect(sock_path, qemu_pid, deadline):
    """Our own monitor on QEMU (created once the target has read CPR state)."""
    while time.monotonic() < deadline:
        try:
            os.kill(qemu_pid, 0)
        except OSError:
            return None
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(sock_path)
            return s
        except OSError:
            s.close()
            time.sleep(0.01)
    return None


def wait_resume(f):
    """True once the guest runs on this target: its RESUME event, or (when our monitor
    came up after RESUME had been sent, as on a loaded host) query-status saying so.
    Both replies are read first, so the next command's reply is its own."""
    f.readline()  # greeting
    f.write(json.dumps({"execute": "qmp_capabilities"}) + "\n")
    f.write(json.dumps({"execute": "query-status"}) + "\n")
    f.flush()
    replies, resumed = 0, False
    while True:
        line = f.readline()
        if not line:
            return False
        msg = json.loads(line)
        if msg.get("event") == "RESUME":
            resumed = True
        if "return" in msg or "error" in msg:
            replies += 1
            if replies == 2 and (msg.get("return") or {}).get("status") == "running":
                resumed = True
        if replies == 2 and resumed:
            return True


def command(f, name, **arguments):
    """Run a QMP command and return its reply (by its id: an event or an earlier reply is
    never taken for it). The reply is awaited because QEMU drops the requests it has not
    yet dispatched when the client hangs up."""
    tag = f"tamper-{name}-{time.monotonic_ns()}"
    f.write(json.dumps({"execute": name, "arguments": arguments, "id": tag}) + "\n")
    f.flush()
    while True:  # skip events and others' replies until ours
        line = f.readline()
        if not line:
            return {}
        msg = json.loads(line)
        if msg.get("id") == tag:
            return msg


def done(reply):
    """A command's reply must be a success: anything else leaves the hold (the case fails
    'hold released' instead of passing an unbroken target), with the reply in the log."""
    if "return" not in reply:
        raise RuntimeError(f"tamper.py: the damage failed: {reply}")


def flip_byte(qemu_pid):
    for fd in os.listdir(f"/proc/{qemu_pid}/fd"):
        try:
            link = os.readlink(f"/proc/{qemu_pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile: QEMU closes its channels around RESUME
        if link.startswith("/memfd:memory-backend-memfd"):
            with open(f"/proc/{qemu_pid}/fd/{fd}", "r+b") as ram:
                ram.seek(TAMPER_GPA)  # below 2 GiB on q35: offset == GPA
                b = ram.read(1)
                ram.seek(TAMPER_GPA)
                ram.write(bytes([b[0] ^ 0xFF]))
            return
    raise RuntimeError(f"tamper.py: no guest RAM memfd among QEMU {qemu_pid}'s fds")


def damage(mode, f, qemu_pid):
    if mode.startswith("late-"):
        time.sleep(LATE_S)
    kind = mode.replace("late-", "")
    if kind == "reset":
        done(command(f, "system_reset"))
    elif kind == "stop":
        done(command(f, "stop"))
    elif kind == "page":
        flip_byte(qemu_pid)
    elif kind == "mute":  # the bare-metal guests' console is chardev ser0
        done(command(f, "chardev-change", id="ser0", backend={"type": "null", "data": {}}))
    elif kind == "kill":
        os.kill(qemu_pid, signal.SIGKILL)
    elif kind == "freeze":
        os.kill(qemu_pid, signal.SIGSTOP)
        time.sleep(LATE_FREEZE_S if mode == "late-freeze" else FREEZE_S)
        os.kill(qemu_pid, signal.SIGCONT)
    elif kind == "stutter":
        time.sleep(LATE_S)
        for _ in range(STUTTER_TIMES):
            os.kill(qemu_pid, signal.SIGSTOP)
            time.sleep(STUTTER_S)
            os.kill(qemu_pid, signal.SIGCONT)
            time.sleep(STUTTER_PERIOD_S - STUTTER_S)


def tamperer(sock_path, mode, qemu_pid, hold):
    """Wait for RESUME on our own monitor, do the damage, release the hold.

    The hold is released only once the damage is done: a wrapper that could not act
    leaves it, and the harness fails the case ("hold file released") instead of passing
    a target that was never broken."""
    time.sleep(CONNECT_AFTER_S)
    s = connect(sock_path, qemu_pid, time.monotonic() + 120)
    if s is None:
        return
    f = s.makefile("rw")
    if wait_resume(f):
        damage(mode, f, qemu_pid)
        os.unlink(hold)


def source_cont(f, hold):
    """Once the source's migration completed: LATE_S later, `cont` (a split brain)."""
    f.readline()  # greeting
    command(f, "qmp_capabilities")
    while (command(f, "query-migrate").get("return") or {}).get("status") != "completed":
        time.sleep(0.01)
    time.sleep(LATE_S)
    done(command(f, "cont"))
    os.unlink(hold)


def holds_ram(qemu_pid):
    try:
        fds = os.listdir(f"/proc/{qemu_pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            # The guest's RAM by its name (memory-backend-memfd, or the RAMBlock ram0
            # of a shared memory-backend-ram), not any memfd: QEMU's start-up probe
            # (qemu_memfd_check) opens one of its own before it reads the CPR state.
            if os.readlink(f"/proc/{qemu_pid}/fd/{fd}").startswith(RAM_MEMFDS):
                return True
        except OSError:
            continue
    return False


def stop_after_cpr_state(qemu_pid):
    """The target holds the guest's RAM (it read the CPR state): stop it for good."""
    while not holds_ram(qemu_pid):
        time.sleep(0.001)
    os.kill(qemu_pid, signal.SIGSTOP)


def proxy_until_migrate(front, back, qemu_pid):
    """Relay the harness's QMP session (socket ``front``) to QEMU's (``back``), until the
    harness sends ``migrate``: then stop QEMU, the command never delivered."""
    lsock = socket.socket(socket.AF_UNIX)
    lsock.bind(front)
    lsock.listen(1)
    client, _ = lsock.accept()
    qemu = connect(back, qemu_pid, time.monotonic() + 120)
    if qemu is None:
        return
    text, decoder = "", json.JSONDecoder()
    while True:
        ready, _, _ = select.select([client, qemu], [], [])
        if qemu in ready:
            data = qemu.recv(65536)
            if not data:
                return
            client.sendall(data)
        if client in ready:
            data = client.recv(65536)
            if not data:
                return
            text += data.decode()
            # qemu.qmp sends JSON objects without a newline: split them as QEMU does.
            while text.strip():
                text = text.lstrip()
                try:
                    msg, end = decoder.raw_decode(text)
                except ValueError:
                    break  # not whole yet
                if msg.get("execute") == "migrate":
                    os.kill(qemu_pid, signal.SIGSTOP)
                    while True:  # hold the harness's connection open, silent
                        time.sleep(3600)
                qemu.sendall(text[:end].encode())
                text = text[end:]


def is_case(args):
    """A QEMU that runs a case's guest (a probe has no guest console)."""
    return any("serial" in a for a in args)


def wrap_source(mode, args):
    """A source mode: our monitor (src-cont) or our QMP proxy (src-hang) beside QEMU."""
    harness_qmp = qmp_path(args)
    pid = os.getpid()
    if mode == "src-hang":
        back = harness_qmp + ".real"
        args = [a.replace(f"unix:{harness_qmp},", f"unix:{back},") for a in args]
        child(lambda: proxy_until_migrate(harness_qmp, back, pid))
        os.execv(QEMU, [QEMU, *args])
    side, hold = harness_qmp + ".tamper", harness_qmp + ".hold"
    open(hold, "w").close()

    def act():
        s = connect(side, pid, time.monotonic() + 120)
        if s is not None:
            source_cont(s.makefile("rw"), hold)

    child(act)
    os.execv(QEMU, [QEMU, *args, "-qmp", f"unix:{side},server=on,wait=off"])


def child(work):
    """Run ``work`` in a child of the process that becomes QEMU (it dies with QEMU's
    process group); what goes wrong goes into QEMU's log (our stderr is its)."""
    if os.fork() == 0:
        try:
            work()
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(0)


def mode_by_case(args):
    """The mode whose key (a scenario id's tail) names this case's artifacts directory."""
    modes = json.loads(os.environ.get("TAMPER_MODES") or "{}")
    serial = next((a for a in args if "path=" in a and "serial" in a), "")
    for key, mode in modes.items():
        if re.search(re.escape(key) + r"(?![-a-z0-9])", serial):
            return mode
    return "none"


def main():
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "by-case":
        mode = mode_by_case(args)
    if mode not in MODES:
        sys.exit(f"tamper.py: unknown mode {mode!r}; known: {', '.join(MODES)}")
    target = "-incoming" in args
    if mode in SOURCE_MODES and not target and is_case(args):
        wrap_source(mode, args)
    if not target or mode == "none" or mode in SOURCE_MODES:
        os.execv(QEMU, [QEMU, *args])
    if mode == "paused":
        os.execv(QEMU, [QEMU, *args, "-S"])
    harness_qmp = qmp_path(args)
    pid = os.getpid()
    if mode == "dst-hang":
        # The harness's monitor socket stays ours, never bound: QEMU's is elsewhere.
        args = [a.replace(f"unix:{harness_qmp},", f"unix:{harness_qmp}.real,") for a in args]
        child(lambda: stop_after_cpr_state(pid))
        os.execv(QEMU, [QEMU, *args])
    side = harness_qmp + ".tamper"
    hold = harness_qmp + ".hold"
    open(hold, "w").close()
    # Why a hold was left in place goes into QEMU's log.
    child(lambda: tamperer(side, mode, pid, hold))
    os.execv(QEMU, [QEMU, *args, "-qmp", f"unix:{side},server=on,wait=off"])


if __name__ == "__main__":
    main()
