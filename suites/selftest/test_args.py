"""Self-tests of the same-arguments checks (harness/run/checks/args.py): the probes'
pure parts on synthetic input, the shared console file's bookkeeping on files a test
writes, the report's table per option, and real pairs: one args scenario that passes,
and targets broken on purpose (suites/selftest/broken/args_tamper.py: a console file
truncated, a wrong pid written) whose probe must fail and say how.

No timed assertion: the broken wrapper holds the observation window open until its
damage is done, and the probes look at the window's end."""
import hashlib
import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

from harness.core.errors import Check, UsageError
from harness.evidence.console import ConsoleFormat, write_position
from harness.run.checks import REGISTRY, args as args_checks
from harness.run.checks.args import (AFTER_QUIT, WINDOW, Args, ArgsRecord, Seen, describe_quit,
                                     judge_kept, judge_pidfile, listening_inode, parse,
                                     resolve, snapshot, whose)
from harness.run.checks.heartbeat import ConsoleWatch
from harness.run.config import RunConfig
from harness.run.driver import run_scenario
from harness.run.pair import free_loopback_ports
from harness.run.plan import ports_wanted, render_plan, template
from harness.run.verdict import failed, judge
from harness.cpr.dialect import get as dialect
from harness.scenario import catalogue
from harness.tools.report import same_args

pytestmark = pytest.mark.selftest

ARGS_TAMPER = Path(__file__).resolve().parent / "broken" / "args_tamper.py"
FMT = ConsoleFormat(r"^hb (?P<seq>[0-9a-f]{8})$", "CPRGUEST x86 v2 boot", 25)


def plain(text):
    for bad in ("None", "True", "False", "b'", "Seen(", "Probe("):
        assert bad not in text, (bad, text)
    return text


# ------------------------------------------------------------------------- the probes

def test_every_catalogue_probe_parses_and_every_args_case_says_its_option():
    cases = catalogue.suite("args")
    assert len(cases) >= 16
    for sc in cases:
        assert sc.option and sc.advice, sc.id
        for spec in sc.arg_checks:
            assert parse(spec).kind in args_checks.KINDS
    # Not in the transfer/refusal suites: one suite of its own.
    assert not {s.id for s in cases} & {s.id for s in catalogue.suite("transfer")
                                         + catalogue.suite("refusals")}


@pytest.mark.parametrize("spec", ["pidfile", "pidfile:", "nosuch:x", "image:/no/node",
                                  "tcp:eighty"])
def test_a_bad_probe_is_one_clear_line(spec):
    with pytest.raises(UsageError) as e:
        parse(spec)
    assert "\n" not in str(e.value) and spec in str(e.value)


def test_probes_are_templated_like_the_options():
    p = resolve("pidfile:{dir}/qemu.pid.{name}", "/s", "dst-retry", (), "/art")
    assert p.path == "/s/qemu.pid.dst-retry" and p.spec == "pidfile:{dir}/qemu.pid.{name}"
    assert resolve("kept:console.log", "/s", "dst", (), "/art").path == "/art/console.log"
    assert resolve("tcp:{port1}", "/s", "dst", (4000, 4001), "/art").arg == "4001"
    img = resolve("image:disk0:{dir}/d.img", "/s", "dst", (), "/art")
    assert img.arg == "disk0:/s/d.img" and img.path == "/s/d.img"
    assert template("x={port0},{dir}", "/d", "n", (7,)) == "x=7,/d"


def test_the_case_picks_as_many_distinct_ports_as_its_options_name():
    sc = catalogue.get("args/hostfwd-per-side")
    assert ports_wanted(sc) == 2 and ports_wanted(catalogue.get("args/name")) == 0
    ports = free_loopback_ports(2)
    assert len(set(ports)) == 2 and all(p > 0 for p in ports)
    plan = render_plan(sc, dialect("released-10x"), "/tmp/cprh-plan-test")
    assert any("127.0.0.1:40000-:22" in a for a in plan.src_args)
    assert any("127.0.0.1:40001-:22" in a for a in plan.dst_args)
    shutil.rmtree("/tmp/cprh-plan-test", ignore_errors=True)


def test_kept_judges_the_source_bytes_not_the_size():
    src = b"CPRGUEST x86 v2 boot\nhb 00000000\nhb 00000001\n"
    snap = snapshot("/x/console.log", src)
    assert snap.size == len(src) and snap.sha256 == hashlib.sha256(src).hexdigest()
    ok, text = judge_kept(snap, src + b"hb 00000002\n")
    assert ok and "begins with the" in plain(text)
    # Rewritten from the start (a target without append=on): same size, other bytes.
    ok, text = judge_kept(snap, b"hb 00000002\n".ljust(len(src) + 12, b"x"))
    assert not ok and "are gone" in plain(text) and "CPRGUEST" in text
    ok, text = judge_kept(snap, None)
    assert not ok and "is gone" in plain(text)
    # Nothing written before the target started: nothing to judge is a failure.
    ok, text = judge_kept(snapshot("/x/log", b""), b"anything")
    assert not ok and "nothing to judge" in plain(text)


def test_the_pid_file_must_hold_the_targets_pid():
    assert judge_pidfile("42\n", 42, 41) == (True, "holds 42, the target's pid")
    ok, text = judge_pidfile("41\n", 42, 41)
    assert not ok and "old QEMU" in plain(text)
    ok, text = judge_pidfile("1\n", 42, 41)
    assert not ok and "neither QEMU's pid" in plain(text)
    assert judge_pidfile(None, 42, 41) == (False, "no such file")
    assert "target" in whose(42, 42, 41) and "nobody" == whose(None, 42, 41)


PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5551 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F91 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 5552 1 0000000000000000 20 4 30 10 -1
   2: 0A000001:1F92 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5553 1 0000000000000000 100 0 0 10 0
"""


def test_the_listener_on_a_loopback_port_is_found_by_its_inode():
    assert listening_inode(PROC_NET_TCP, 0x1F90) == 5551
    assert listening_inode(PROC_NET_TCP, 0x1F91) is None   # established, not listening
    assert listening_inode(PROC_NET_TCP, 0x1F92) is None   # not on loopback
    assert listening_inode(PROC_NET_TCP, 1) is None


def test_quitting_the_old_qemu_is_judged_by_how_it_went():
    assert describe_quit(0, "") == (True, "the old QEMU quit (exit status 0)")
    assert not describe_quit(None, "killed (SIGKILL)")[0]
    assert not describe_quit(1, "")[0]


def test_the_records_judge_into_checks_in_words():
    """Every kind's check has a stable id and texts a page can show."""
    seen = [Seen("pidfile:x", "pidfile", WINDOW, True, "x holds the target's pid", "holds 9"),
            Seen("pidfile:x", "pidfile", AFTER_QUIT, False, "x holds the target's pid",
                 "no such file"),
            Seen("src-hmp:c", "src-hmp", args_checks.BEFORE, True, "'c' answers nothing",
                 "'c' answered nothing")]
    rec = ArgsRecord(tuple(seen), True, "the old QEMU quit (exit status 0)")

    class A:  # the attempt record's two fields the judge reads
        label = ""

        class window:
            devices = {"args": rec}

    checks = list(Args().judge(None, A()))
    assert [c.id for c in checks] == ["args.pidfile", "args.pidfile.after-quit",
                                      "args.src-hmp", "args.quit"]
    assert all(isinstance(c, Check) and REGISTRY[c.id].category == "arguments"
               for c in checks)
    bad = [c for c in checks if not c.ok]
    assert [c.id for c in bad] == ["args.pidfile.after-quit"]
    assert "after the old QEMU quit" in bad[0].observed and "took away" in bad[0].detail


# ----------------------------------------------------------- one console file, two QEMUs

def test_a_write_position_moves_only_with_the_process_own_writes(tmp_path):
    path = tmp_path / "console.log"
    with open(path, "ab") as mine:
        mine.write(b"hb 00000000\n")
        mine.flush()
        assert write_position(os.getpid(), str(path)) == 12
        with open(path, "ab") as other:  # another writer: the file grows, not my fd
            other.write(b"hb 00000001\n")
        assert os.path.getsize(path) == 24
        assert write_position(os.getpid(), str(path)) == 12
    assert write_position(os.getpid(), str(path)) is None  # closed: no fd on it


def test_a_shared_console_file_splits_where_the_source_stopped(tmp_path):
    """append=on: the source's lines, then the target's; the source's own fd says where
    one ends (the file's size would count the target's lines as the source's)."""
    path = tmp_path / "console.log"
    with open(path, "ab") as src:
        src.write(b"CPRGUEST x86 v2 boot\n" + b"".join(b"hb %08x\n" % i for i in range(5)))
        src.flush()
        with open(path, "ab") as dst:
            dst.write(b"".join(b"hb %08x\n" % i for i in range(5, 9)))
        watch = ConsoleWatch(FMT, str(path), str(path), os.getpid())
        c = watch.finish()
    assert (c.src_last, c.dst_first, c.dst_last) == (4, 5, 8) and c.unbroken, c.describe()


# ---------------------------------------------------------------- the report's tables

def _record(sid, verdict, option, outcome="completed", message="", checks=(), reason=""):
    return {"id": sid, "area": "args", "verdict": verdict, "title": sid, "reason": reason,
            "parameters": {"option": option, "advice": f"advice for {option}"},
            "actual": {"outcome": outcome, "message": message} if outcome else None,
            "checks": [dict(c) for c in checks]}


def test_the_report_has_a_table_per_option_in_words():
    recs = [
        _record("args/pidfile", "pass", "-pidfile", "dst-refused",
                "qemu-system-x86_64: warning: cpuid\nqemu-system-x86_64: Cannot lock pid file"),
        _record("args/pidfile-per-side", "pass", "-pidfile", checks=[
            {"id": "args.pidfile", "ok": True, "actual": "holds 7 (at the window's end)"},
            {"id": "args.pidfile.after-quit", "ok": True,
             "actual": "holds 7 (after the old QEMU quit)"},
            {"id": "args.quit", "ok": True, "actual": "quit"}]),
        _record("args/serial-file", "xfail", "-serial file:", checks=[
            {"id": "args.kept", "ok": False, "actual": "the 9 byte(s) are gone"},
            {"id": "args.kept.after-quit", "ok": False, "actual": "still gone"}]),
        _record("args/daemonize", "skip", "-daemonize", None, reason="cannot run here"),
        {"id": "transfer/x", "area": "transfer", "verdict": "pass"},
    ]
    groups = same_args.rows(recs)
    assert [g for g, _ in groups] == ["-daemonize", "-pidfile", "-serial file:"]
    md = "\n".join(same_args.markdown(recs))
    assert "### `-pidfile`" in md and "transfer/x" not in md
    assert "refused clearly, the source carries on" in md and "Cannot lock pid file" in md
    assert "warning" not in md                       # QEMU's words without its warnings
    assert "breaks silently" in md and "QEMU said nothing, but the 9 byte(s)" in md
    assert "still gone" not in md                    # lost at the window: said once
    assert "completed: holds 7 (after the old QEMU quit)" in md   # the last word only
    assert "not run here" in md and "advice for -pidfile" in md
    page = "\n".join(same_args.render_html(recs))
    assert "<h3><code>-pidfile</code></h3>" in page and "<script" not in page
    assert same_args.markdown([recs[-1]]) == [] and same_args.render_html([]) == []


# ------------------------------------------------------------------------ real pairs

live = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                          reason="qemu-system-x86_64 not on PATH")


def _failed(result):
    return {c.id: c for c in failed(judge(result))}


#: A busy host's stalls are its own (the pause checks have self-tests of their own).
LOAD_DEPENDENT = {"pause.switch-over", "pause.stalls", "pause.stutter"}


@live
def test_a_shared_appended_console_passes_every_check(tmp_path):
    """Both QEMUs on one console file with append=on: the source's lines kept, the
    heartbeat continuous across the one file, the source silent, the old QEMU quits."""
    sc = catalogue.get("args/serial-file-append")
    r = run_scenario(sc, RunConfig(), str(tmp_path / "a"))
    checks = {c.id: c for c in judge(r)}
    assert {"args.kept", "args.kept.after-quit", "args.quit", "console.continues",
            "source.stopped"} <= set(checks)
    assert set(_failed(r)) <= LOAD_DEPENDENT, {k: v.observed for k, v in _failed(r).items()}
    assert not (tmp_path / "a" / "dst.serial").exists()   # one file for both


def _args_tamper():
    spec = importlib.util.spec_from_file_location("cprh_args_tamper", ARGS_TAMPER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _wrapper(tmp_path, mode):
    path = tmp_path / f"qemu-{mode}"
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{ARGS_TAMPER}" {mode} "$@"\n')
    path.chmod(0o755)
    return str(path)


@live
@pytest.mark.parametrize("mode,case", [("truncate-console", "args/serial-file-append"),
                                       ("wrong-pid", "args/pidfile-per-side")])
def test_a_target_that_breaks_what_the_option_provides_fails_its_probe(tmp_path, mode, case):
    check_id, words = _args_tamper().DEFECTS[mode]
    r = run_scenario(catalogue.get(case), RunConfig(qemu_dst=_wrapper(tmp_path, mode)),
                     str(tmp_path / "a"))
    bad = _failed(r)
    assert check_id in bad and f"{check_id}.after-quit" in bad, sorted(bad)
    for w in words:
        assert w in bad[check_id].observed, bad[check_id].observed
    # Nothing else the wrapper did not break (the heartbeat reads the truncated file too).
    allowed = {check_id, f"{check_id}.after-quit", "console.continues"} | LOAD_DEPENDENT
    assert set(bad) <= allowed, {k: v.observed for k, v in bad.items()}
