"""Self-tests of harness.qemu.probe: real probes of the installed QEMU (10.0.x) and of
Debian's QEMU 7.2 (fetched by scripts/fetch-old-qemu.sh), and the error paths.

Fast: a real probe takes ~0.3 s; the 7.2 download (~11 MB) is cached under the pytest
cache and skipped, with the script's reason, when it cannot be done.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness.qemu.probe import (DIALECT_NONE, DIALECT_RELEASED, DIALECT_RFC_V1,
                                  Capabilities, clear_probe_cache, probe)
from harness.core.errors import HarnessError, NotQemu, ProbeFailed, QemuNotFound
import harness.qemu.probe as probe_module

pytestmark = pytest.mark.selftest

QEMU = "qemu-system-x86_64"
REPO = Path(__file__).resolve().parents[2]
FETCH_OLD = REPO / "scripts" / "fetch-old-qemu.sh"


def _script(path: Path, body: str, mode: int = 0o755) -> Path:
    path.write_text(textwrap.dedent(body).lstrip())
    path.chmod(mode)
    return path


@pytest.fixture(scope="module")
def qemu_on_path() -> str:
    found = shutil.which(QEMU)
    if found is None:
        pytest.skip(f"{QEMU} is not on PATH (scripts/setup-host.sh installs QEMU 10.0)")
    return found


@pytest.fixture(scope="module")
def caps10(qemu_on_path) -> Capabilities:
    return probe(QEMU)


# --------------------------------------------------------------------------- 10.0.x


def test_real_probe_released_cpr_transfer(caps10: Capabilities, qemu_on_path):
    c = caps10
    assert c.binary == QEMU
    assert c.path == os.path.abspath(qemu_on_path)
    assert c.version >= (10, 0, 0)
    assert c.version_str.startswith("%d.%d.%d" % c.version)
    assert "cpr-transfer" in c.mig_modes
    assert c.has_cpr_transfer
    assert c.migrate_has_channels
    assert "cpr" in c.channel_types and "main" in c.channel_types
    assert not c.migparams_has_cpr_uri
    assert "aux-ram-share" in c.machine_props
    assert "anon-alloc" not in c.machine_props
    assert c.dialect == DIALECT_RELEASED
    assert c.cpr_transfer_problems() == []
    for t in ("memory-backend-memfd", "memory-backend-file", "memory-backend-ram"):
        assert c.has_object_type(t), t
    assert not c.has_object_type("no-such-type")
    assert {"q35", "pc", "none"} <= set(c.machines)
    assert any(m.startswith("pc-q35-") for m in c.machines)
    assert c.props_machine.startswith("pc-q35-")
    assert "tcg" in c.accels


def test_real_probe_summary_says_supported(caps10: Capabilities):
    text = caps10.summary()
    assert text.splitlines()[-1] == "cpr-transfer: supported"
    assert "NOT supported" not in text
    assert caps10.version_str in text


def test_exit_with_parent_matches_facts(caps10: Capabilities):
    # FACTS.md: -run-with in 10.0.2 has only async-teardown, chroot, user.
    if caps10.version[:2] == (10, 0):
        assert caps10.has_exit_with_parent is False


def test_kvm_fields_consistent(caps10: Capabilities):
    if caps10.kvm_usable:
        assert "kvm" in caps10.accels and caps10.kvm_reason == ""
    else:
        assert caps10.kvm_reason
    if "kvm" in caps10.accels:
        try:
            os.close(os.open("/dev/kvm", os.O_RDWR))
            opens = True
        except OSError:
            opens = False
        assert caps10.kvm_usable == opens


def test_to_dict_is_json_and_round_trips(caps10: Capabilities):
    d = json.loads(json.dumps(caps10.to_dict()))
    assert d["dialect"] == DIALECT_RELEASED
    assert d["cpr_transfer_problems"] == []
    assert d["version"] == list(caps10.version)
    assert Capabilities.from_dict(d) == caps10


def test_memo_returns_same_object_without_running_qemu(caps10: Capabilities, monkeypatch):
    first = probe(QEMU)  # caps10 itself, unless another test cleared the memo
    assert first == caps10

    def no_second_probe(*_a, **_k):
        raise AssertionError("the memo ran QEMU again")
    monkeypatch.setattr(probe_module._Prober, "run", no_second_probe)
    again = probe(QEMU)
    assert again is first


def test_wrapper_script_probes_like_qemu(tmp_path, caps10: Capabilities):
    wrapper = _script(tmp_path / "qemu-wrapper", f"""
        #!/bin/sh
        exec {QEMU} "$@"
    """)
    c = probe(str(wrapper))
    assert c.path == str(wrapper)

    def strip(x):
        d = x.to_dict()
        d.pop("binary"), d.pop("path")
        return d

    assert strip(c) == strip(caps10)
    # The memo key is (realpath, mtime, size): editing the file means probing anew.
    wrapper.write_text(wrapper.read_text() + "# edited\n")
    assert probe(str(wrapper)) is not c


def test_memo_cleared_probes_again(tmp_path, qemu_on_path):
    wrapper = _script(tmp_path / "w", f'#!/bin/sh\nexec {QEMU} "$@"\n')
    first = probe(str(wrapper))
    clear_probe_cache()
    second = probe(str(wrapper))
    assert second is not first and second == first


# --------------------------------------------------------------------------- errors


def _one_clean_line(err: Exception) -> None:
    text = str(err)
    assert "\n" not in text and "Traceback" not in text
    assert isinstance(err, HarnessError)


def test_missing_path(tmp_path):
    with pytest.raises(QemuNotFound) as ei:
        probe(str(tmp_path / "no-such-qemu"))
    _one_clean_line(ei.value)


def test_missing_name_on_path():
    with pytest.raises(QemuNotFound):
        probe("qemu-system-does-not-exist-anywhere")


def test_not_executable_file(tmp_path):
    f = _script(tmp_path / "qemu-noexec", "#!/bin/sh\nexit 0\n", mode=0o644)
    with pytest.raises(QemuNotFound) as ei:
        probe(str(f))
    _one_clean_line(ei.value)


def test_directory_is_not_found(tmp_path):
    with pytest.raises(QemuNotFound):
        probe(str(tmp_path))


@pytest.mark.parametrize("prog", ["/bin/true", "/bin/echo", "/bin/false"])
def test_system_programs_are_not_qemu(prog):
    if not os.access(prog, os.X_OK):
        pytest.skip(f"{prog} not here")
    with pytest.raises(NotQemu) as ei:
        probe(prog)
    _one_clean_line(ei.value)
    assert ei.value.detail


def test_garbage_script_is_not_qemu(tmp_path):
    f = _script(tmp_path / "garbage", """
        #!/bin/sh
        echo "zorglub 42 frobnicate"
    """)
    with pytest.raises(NotQemu) as ei:
        probe(str(f))
    _one_clean_line(ei.value)
    assert "zorglub" in ei.value.detail


def test_no_exec_format_is_not_qemu(tmp_path):
    f = tmp_path / "binary-blob"
    f.write_bytes(b"\x00\x01\x02garbage")
    f.chmod(0o755)
    with pytest.raises((NotQemu, QemuNotFound)) as ei:
        probe(str(f))
    _one_clean_line(ei.value)


FAKE_HEAD = """
    #!/bin/sh
    case "$1" in
      --version) echo "QEMU emulator version 10.0.2 (fake)"; exit 0 ;;
      -accel) printf 'Accelerators supported in QEMU binary:\\ntcg\\n'; exit 0 ;;
      -machine) printf 'Supported machines are:\\nnone                 empty machine\\n'; exit 0 ;;
    esac
"""


def test_qemu_that_dies_is_probe_failed(tmp_path):
    f = _script(tmp_path / "dies", FAKE_HEAD + """
    echo "boom: cannot initialise the frobnicator" >&2
    exit 1
    """)
    with pytest.raises(ProbeFailed) as ei:
        probe(str(f))
    assert "boom: cannot initialise the frobnicator" in str(ei.value)
    assert ei.value.log and "boom" in ei.value.log
    assert "\n" not in ei.value.detail


#: The rest of a fake QEMU: listen on the -qmp unix socket it is given, answer every
#: connection with LINES, then (MODE "exit") exit 3 or (MODE "stay") keep running.
FAKE_MONITOR = """
    exec "{python}" - "$@" <<'EOF'
    import socket, sys, time
    args = sys.argv[1:]
    path = args[args.index("-qmp") + 1][len("unix:"):].split(",")[0]
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.listen(4)
    print("fake monitor up", flush=True)
    end = time.monotonic() + 20
    while time.monotonic() < end:
        c, _ = s.accept()
        c.sendall({lines!r})
        if {mode!r} == "exit":
            sys.exit(3)
        time.sleep(0.2)
        c.close()
    EOF
"""


def _fake_monitor(path, lines, mode):
    return _script(path, FAKE_HEAD + FAKE_MONITOR.format(python=sys.executable, lines=lines,
                                                          mode=mode))


def test_qemu_answering_nonsense_is_probe_failed(tmp_path):
    f = _fake_monitor(tmp_path / "nonsense", b'{"QMP": {"version": {}}}\nnot JSON at all\n',
                      "stay")
    t0 = time.monotonic()
    with pytest.raises(ProbeFailed) as ei:
        probe(str(f))
    assert time.monotonic() - t0 < 15, "a monitor that does not speak QMP fails fast"
    assert "not a QMP monitor" in ei.value.detail and "negotiation failed" in ei.value.detail
    assert "fake monitor up" in ei.value.log


def test_qemu_that_stops_answering_is_probe_failed(tmp_path):
    f = _fake_monitor(tmp_path / "mute", b'{"QMP": {"version": {}}}\n', "exit")
    with pytest.raises(ProbeFailed) as ei:
        probe(str(f))
    assert "QEMU exited with code 3" in ei.value.detail, ei.value.detail


#: A monitor that greets, accepts qmp_capabilities, and exits at once: qemu.qmp then
#: either fails the connect or (a race) asserts its session is RUNNING while it is
#: already DISCONNECTING; a target refusing its stream right after its monitor is up
#: did that (11.1.3 refusing 9.1.50's machine type).
HANGS_UP = """
    exec "{python}" - "$@" <<'EOF'
    import json, socket, sys
    args = sys.argv[1:]
    path = args[args.index("-qmp") + 1][len("unix:"):].split(",")[0]
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.listen(4)
    c, _ = s.accept()
    c.sendall(b'{{"QMP": {{"version": {{"qemu": {{"micro": 0, "minor": 0, "major": 10}}, '
              b'"package": ""}}, "capabilities": []}}}}\\n')
    req = json.loads(c.recv(65536))   # qemu.qmp sends no newline: one chunk
    c.sendall(json.dumps({{"return": {{}}, "id": req.get("id")}}).encode() + b"\\n")
    c.close()
    sys.exit(3)
    EOF
"""


def test_a_monitor_that_hangs_up_as_the_session_begins_is_a_typed_error(tmp_path):
    f = _script(tmp_path / "hangs-up", FAKE_HEAD + HANGS_UP.format(python=sys.executable))
    for _ in range(5):   # the race goes either way; both ways are a ProbeFailed
        clear_probe_cache()
        with pytest.raises(ProbeFailed) as ei:
            probe(str(f), timeout=30)
        assert "exited with code 3" in ei.value.detail, ei.value.detail


def test_hanging_binary_times_out_and_is_killed(tmp_path):
    pidfile = tmp_path / "child.pid"
    f = _script(tmp_path / "hangs", f"""
        #!/bin/sh
        sleep 60 &
        echo $! > {pidfile}
        wait
    """)
    t0 = time.monotonic()
    with pytest.raises(ProbeFailed) as ei:
        probe(str(f), timeout=1.0)
    assert time.monotonic() - t0 < 10
    assert "`--version` timed out" in ei.value.detail
    # The whole process group was killed, the backgrounded child included.
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        except FileNotFoundError:
            break
        if state == "Z":
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"the probe left pid {pid} running")


#: A QEMU whose monitor is relayed to the real one (the installed QEMU answers), and that
#: dies by SIGKILL, the real QEMU with it, when asked ``qom-list-properties``: the shape
#: of the cpr-transfer series' build, which segfaults there (test below).
RELAY = """
    #!/bin/sh
    case "$1" in --version|-accel|-machine) exec {qemu} "$@" ;; esac
    exec "{python}" - "$@" <<'EOF'
    import os, signal, socket, subprocess, sys, threading, time
    args = sys.argv[1:]
    i = args.index("-qmp")
    path = args[i + 1][len("unix:"):].split(",")[0]
    inner = path + ".in"
    q = subprocess.Popen(["{qemu}", *args[:i], "-qmp", f"unix:{{inner}},server=on,wait=off"])
    up = socket.socket(socket.AF_UNIX)
    for _ in range(400):
        try:
            up.connect(inner)
            break
        except OSError:
            time.sleep(0.05)
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.listen(1)
    c, _ = s.accept()
    def back():
        while True:
            data = up.recv(65536)
            if not data:
                os._exit(0)
            c.sendall(data)
    threading.Thread(target=back, daemon=True).start()
    while True:
        data = c.recv(65536)   # qemu.qmp ends no message with a newline: relay chunks
        if not data:
            break
        if b"qom-list-properties" in data:
            q.kill()
            os.kill(os.getpid(), signal.SIGKILL)
        up.sendall(data)
    q.wait()
    EOF
"""


def test_an_optional_question_that_kills_qemu_is_a_note(tmp_path, qemu_on_path):
    """The probe reads how QEMU died, notes it, and asks the rest of a fresh QEMU."""
    f = _script(tmp_path / "relay", RELAY.format(qemu=qemu_on_path, python=sys.executable))
    c = probe(str(f), timeout=60)
    note = next((n for n in c.notes if n.startswith("qom-list-properties ")), None)
    assert note is not None, c.notes
    assert "killed the probe QEMU: it was killed by signal 9 (SIGKILL)" in note, note
    assert "the rest asked of a fresh QEMU" in note, note
    # The rest was answered (by the fresh QEMU): the released interface, whole.
    assert c.dialect == DIALECT_RELEASED and c.cpr_transfer_problems() == []
    assert "aux-ram-share" in c.machine_props
    assert any("query-command-line-options" in n for n in c.notes), c.notes


def test_a_required_question_that_kills_qemu_says_how_it_died(tmp_path, qemu_on_path):
    body = RELAY.format(qemu=qemu_on_path, python=sys.executable).replace(
        'b"qom-list-properties"', 'b"query-qmp-schema"')
    f = _script(tmp_path / "relay-schema", body)
    with pytest.raises(ProbeFailed) as ei:
        probe(str(f), timeout=60)
    assert "QEMU was killed by signal 9 (SIGKILL) before answering QMP query-qmp-schema" \
        in ei.value.detail, ei.value.detail


# --------------------------------------------------------------------------- derived logic


def _fake(**kw) -> Capabilities:
    base = dict(binary="fake", path="/fake", version=(9, 9, 9), version_str="9.9.9 (fake)")
    base.update(kw)
    return Capabilities(**base)


def test_rfc_v1_dialect_is_named():
    c = _fake(mig_modes=("normal", "cpr-reboot", "cpr-transfer"),
              migparams_has_cpr_uri=True, machine_props=frozenset({"anon-alloc"}),
              props_machine="pc-q35-9.1")
    assert c.has_cpr_transfer
    assert c.dialect == DIALECT_RFC_V1
    problems = c.cpr_transfer_problems()   # the released interface's, which it lacks
    assert any("RFC v1" in p for p in problems)
    assert any("aux-ram-share" in p and "anon-alloc" in p for p in problems)
    # ...but it speaks its own dialect completely: supported, and says in which.
    assert c.dialect_problems() == []
    assert c.dialect_problems(DIALECT_RELEASED) == problems
    assert c.summary().splitlines()[-1].startswith("cpr-transfer: supported, in the rfc-v1")


def test_rfc_v1_without_cpr_uri_is_not_supported():
    c = _fake(mig_modes=("normal", "cpr-transfer"), machine_props=frozenset({"anon-alloc"}))
    assert c.dialect == DIALECT_RFC_V1
    assert c.dialect_problems() == ["migrate-set-parameters has no 'cpr-uri' (the rfc-v1 "
                                    "cpr channel)"]
    assert "cpr-transfer: NOT supported: " in c.summary()


def test_cpr_reboot_only_names_missing_mode():
    c = _fake(mig_modes=("normal", "cpr-reboot"), migrate_has_channels=True,
              channel_types=("main",))
    assert c.dialect == DIALECT_NONE
    problems = c.cpr_transfer_problems()
    assert problems[0] == "MigMode has no 'cpr-transfer' (modes: normal, cpr-reboot)"
    assert any("has no 'cpr' channel type (types: main)" in p for p in problems)


def test_released_interface_complete():
    c = _fake(mig_modes=("normal", "cpr-reboot", "cpr-transfer"), migrate_has_channels=True,
              channel_types=("main", "cpr"), machine_props=frozenset({"aux-ram-share"}))
    assert c.dialect == DIALECT_RELEASED and c.cpr_transfer_problems() == []
    assert c.summary().endswith("cpr-transfer: supported")
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.version = (1, 2, 3)  # type: ignore[misc]


def test_library_imports_no_test_framework():
    code = ("import sys, harness.qemu.probe; "
            "bad = [m for m in ('pytest', 'allure', 'avocado') if m in sys.modules]; "
            "sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr


# --------------------------------------------------------------------------- QEMU 7.2


@pytest.fixture(scope="session")
def qemu72(old_qemu_dir) -> str:
    cache_dir = old_qemu_dir
    try:
        r = subprocess.run(["bash", str(FETCH_OLD), str(cache_dir)], capture_output=True,
                           text=True, timeout=600, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.skip("scripts/fetch-old-qemu.sh timed out after 600s")
    if r.returncode != 0:
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        pytest.skip(lines[-1] if lines else f"fetch-old-qemu.sh exited {r.returncode}")
    return r.stdout.strip().splitlines()[-1]


def test_qemu72_probes_and_lacks_cpr_transfer(qemu72):
    c = probe(qemu72)
    assert c.version[:2] == (7, 2)
    assert c.has_cpr_transfer is False
    assert c.dialect == DIALECT_NONE
    assert "cpr-transfer" not in c.mig_modes
    problems = c.cpr_transfer_problems()
    assert problems
    assert "cpr-transfer" in problems[0]  # names the missing mode
    assert any("channels" in p for p in problems)
    assert any("aux-ram-share" in p for p in problems)
    assert "aux-ram-share" not in c.machine_props
    assert c.has_object_type("memory-backend-memfd")
    last = c.summary().splitlines()[-1]
    assert last.startswith("cpr-transfer: NOT supported: ")
    json.dumps(c.to_dict())


def test_qemu72_is_not_said_to_take_an_fd_cpr_channel(qemu72):
    """A behavioural feature probe must not claim a feature for a QEMU without the mode."""
    from harness.qemu import features

    ok, reason = features.cpr_incoming_fd(qemu72)
    assert not ok and "has no cpr-transfer mode" in reason, reason
    p = subprocess.run([sys.executable, "-m", "harness", "probe", "--qemu", qemu72],
                       cwd=str(REPO), capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stderr
    assert "feature cpr-incoming-fd: no (" in p.stdout, p.stdout


def test_the_installed_qemu_is_judged_by_what_it_says_about_the_fd(caps10):
    """10.0.x refuses an fd cpr channel ("must be unix"); a later QEMU names the fd it
    could not find, which is the only answer taken as support."""
    from harness.qemu import features

    ok, reason = features.cpr_incoming_fd(caps10.path)
    if caps10.version[:2] == (10, 0):
        assert not ok and "must be unix" in reason, reason
    else:
        assert ok, reason


def test_a_target_feature_is_asked_of_the_target_only(caps10: Capabilities):
    """An fd cpr channel is the target's business: a 10.0.2 source may upgrade to a
    target that takes one (the case runs), a 10.0.2 target skips it with the reason."""
    from harness.core.errors import Unsupported
    from harness.cpr import dialect
    from harness.qemu import features
    from harness.run.setup import check_supported
    from harness.scenario import catalogue

    if caps10.version[:2] != (10, 0):
        pytest.skip(f"the installed QEMU is {caps10.version_str}, not 10.0.x")
    sc = catalogue.get("transfer/unix-fd-memfd-immediate-q35")
    assert sc.requires == ("cpr-incoming-fd",)
    assert features.needed_on("cpr-incoming-fd", "dst")
    assert not features.needed_on("cpr-incoming-fd", "src")
    released = dialect.get(dialect.RELEASED)
    check_supported(caps10, sc, released, "src")
    with pytest.raises(Unsupported, match="accepts only a unix cpr channel on the target"):
        check_supported(caps10, sc, released, "dst")


def test_no_valid_retry_from_a_newer_unpinned_source(caps10: Capabilities):
    """An unpinned 11.1 source runs pc-q35-11.1: an older target lacks it, so after its
    refusal no valid transfer can follow (the retry is said not applicable, not failed);
    an older unpinned source's type the newer target has, so its retry runs."""
    from harness.run.config import RunConfig
    from harness.run.setup import Binaries
    from harness.scenario import catalogue
    from harness.cpr.dialect import get as dialect_of

    newer = dataclasses.replace(
        caps10, version=(11, 1, 3), machines=tuple(caps10.machines) + ("pc-q35-11.1",),
        machine_aliases=(("q35", "pc-q35-11.1"),))
    sc = catalogue.get("version/unpinned-machine-q35")

    def bins(src, dst):
        return Binaries(sc, "x86_64", RunConfig(), src, dst, dialect_of(DIALECT_RELEASED),
                        "kvm", machine="q35")
    why = bins(newer, caps10).no_valid_retry()
    assert why and "pc-q35-11.1" in why and caps10.version_str in why, why
    assert bins(caps10, newer).no_valid_retry() is None
    assert bins(caps10, caps10).no_valid_retry() is None
