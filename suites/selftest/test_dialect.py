"""Self-tests of the interface dialects: what each renders, for every scenario, and the
mixed pair (each side in its own dialect).

Both dialects also run live: the released one on 10.x/11.x, rfc-v1 on the cpr-transfer
series' build (`scripts/get-qemu.sh rfc-v3 --from ...`; docs/versions.md); these
renderings cover every scenario without a QEMU.
"""
import json
import re

import pytest

from harness.cpr import dialect
from harness.scenario import catalogue
from harness.qemu.probe import Capabilities
from harness.core.errors import Unsupported, UsageError
from harness.run.config import RunConfig
from harness.run.plan import render_plan
from harness.run.setup import choose_dialect

pytestmark = pytest.mark.selftest

SCENARIOS = list(catalogue.SCENARIOS.values())
SCHEME = {"unix": "unix:", "tcp": "tcp:", "tcp0": "tcp:", "fd": "fd:", "exec": "exec:",
          "file": "file:"}


def plan(sc, name, tmp_path):
    return render_plan(sc, dialect.get(name), str(tmp_path))


def machine_arg(args):
    return args[args.index("-machine") + 1]


def executes(p):
    return [c["execute"] for c in p.src_commands]


@pytest.mark.parametrize("sc", SCENARIOS, ids=[s.id for s in SCENARIOS])
def test_released_rendering(sc, tmp_path):
    p = plan(sc, dialect.RELEASED, tmp_path)
    text = json.dumps(p.src_commands + p.dst_commands) + " ".join(p.src_args + p.dst_args)
    assert "cpr-uri" not in text and "anon-alloc" not in text
    for args in (p.src_args, p.dst_args):
        assert ("aux-ram-share=on" in machine_arg(args)) is sc.aux_ram_share
    same = [a.replace("cprh-dst", "cprh-src") for a in p.dst_args[:len(p.src_args)]]
    if sc.dst_extra_args is not None:  # the target's own options, where a layer must
        n = len(sc.extra_args)
        assert len(sc.dst_extra_args) == n, "a per-side option replaces the source's"
        cut = len(p.src_args) - n
        same, src = same[:cut] + same[cut + n:], p.src_args[:cut]
    else:
        src = p.src_args
    assert src == same, "the target repeats the source's line"
    incoming = p.dst_args[len(p.src_args):]
    cpr_in = [json.loads(a) for a in incoming[1::2] if a.startswith("{") and '"cpr"' in a]
    assert len(cpr_in) == (0 if sc.side_cpr("dst") == "none" else 1)
    assert incoming[1] == "defer" if sc.incoming == "defer" else incoming[1] != "defer"
    assert executes(p)[0] == "migrate-set-parameters" and executes(p)[-1] == "migrate"
    chans = p.src_commands[-1]["arguments"]["channels"]
    types = [c["channel-type"] for c in chans]
    assert types == (["main"] if sc.side_cpr("src") == "none" else ["main", "cpr"])
    if sc.incoming == "defer":
        assert p.dst_commands[0]["execute"] == "migrate-incoming"
        assert p.dst_commands[0]["arguments"]["channels"][0]["channel-type"] == "main"


@pytest.mark.parametrize("sc", SCENARIOS, ids=[s.id for s in SCENARIOS])
def test_rfc_v1_rendering(sc, tmp_path):
    if sc.side_cpr("dst") == "fd":
        with pytest.raises(Unsupported, match="rfc-v1"):
            plan(sc, dialect.RFC_V1, tmp_path)
        return
    p = plan(sc, dialect.RFC_V1, tmp_path)
    text = json.dumps(p.src_commands + p.dst_commands)
    assert "channels" not in text and "aux-ram-share" not in " ".join(p.src_args)
    for args in (p.src_args, p.dst_args):
        assert ("anon-alloc=memfd" in machine_arg(args)) is sc.aux_ram_share
    incoming = p.dst_args[len(p.src_args):]
    has_cpr_uri = "-cpr-uri" in incoming
    assert has_cpr_uri is (sc.side_cpr("dst") != "none")
    if has_cpr_uri:
        uri = incoming[incoming.index("-cpr-uri") + 1]
        assert uri.startswith(SCHEME[sc.side_cpr("dst")])
    set_uri = [c for c in p.src_commands if c["execute"] == "migrate-set-parameters"
               and "cpr-uri" in c["arguments"]]
    # The released "missing cpr channel" requirement is "missing cpr-uri" here.
    assert len(set_uri) == (0 if sc.side_cpr("src") == "none" else 1)
    if set_uri:
        assert set_uri[0]["arguments"]["cpr-uri"].startswith(SCHEME[sc.side_cpr("src")])
    mig = p.src_commands[-1]
    assert mig["execute"] == "migrate"
    assert mig["arguments"]["uri"].startswith(SCHEME[sc.side_main("src")])
    assert executes(p).index("migrate-set-parameters") < executes(p).index("migrate")
    if sc.incoming == "defer":
        assert incoming[1] == "defer"
        assert p.dst_commands[0]["arguments"]["uri"].startswith(SCHEME[sc.side_main("dst")])
    else:
        assert incoming[1].startswith(SCHEME[sc.side_main("dst")])


def test_exec_uri_is_quoted_fixed_arguments():
    addr = {"transport": "exec", "args": ["/bin/dd", "of=/tmp/a b", "status=none"]}
    assert dialect.uri_of(addr) == "exec:/bin/dd 'of=/tmp/a b' status=none"


def test_one_requirement_row_per_dialect():
    sid = "channel/cpr-missing"
    texts = {d: dialect.get(d).describe(sid, catalogue.get(sid).title) for d in dialect.DIALECTS}
    assert "cpr-uri" in texts[dialect.RFC_V1] and "channels" in texts[dialect.RELEASED]


def caps(d):
    flags = {"released-10x": dict(mig_modes=("normal", "cpr-transfer"), migrate_has_channels=True,
                                  channel_types=("main", "cpr"),
                                  machine_props=frozenset({"aux-ram-share"})),
             "rfc-v1": dict(mig_modes=("normal", "cpr-transfer"), migparams_has_cpr_uri=True,
                            machine_props=frozenset({"anon-alloc"}))}[d]
    return Capabilities(binary="q", path="/q", version=(9, 1, 0), version_str="9.1.0", **flags)


def test_dialect_is_chosen_from_capabilities():
    assert caps("rfc-v1").dialect == dialect.RFC_V1
    assert caps("released-10x").dialect == dialect.RELEASED
    assert choose_dialect(RunConfig(), caps("rfc-v1"), caps("rfc-v1")).name == dialect.RFC_V1
    assert choose_dialect(RunConfig(dialect="released-10x"), caps("rfc-v1"),
                          caps("rfc-v1")).name == dialect.RELEASED
    mixed = choose_dialect(RunConfig(), caps("rfc-v1"), caps("released-10x"))
    assert mixed.name == "rfc-v1→released-10x"
    assert dialect.get(mixed.name).name == mixed.name   # the name a result keeps
    assert choose_dialect(RunConfig(dialect="rfc-v1"), caps("rfc-v1"),
                          caps("released-10x")).name == dialect.RFC_V1
    with pytest.raises(UsageError, match="unknown dialect"):
        RunConfig(dialect="rfc-v2")
    with pytest.raises(Unsupported, match="no known cpr-transfer dialect"):
        dialect.choose("none", None, "rfc-v1")


MIXED = [sc for sc in SCENARIOS if sc.side_cpr("dst") != "fd" and sc.mode == "cpr-transfer"]


@pytest.mark.parametrize("sc", MIXED, ids=[s.id for s in MIXED])
def test_mixed_pair_speaks_each_side_its_own(sc, tmp_path):
    """The series' source and a released target: the source's set-up as rfc-v1 renders
    it, the target's command line as released renders it, machine props per side."""
    mixed = dialect.get("rfc-v1→released-10x")
    p = plan(sc, mixed.name, tmp_path)
    rfc = plan(sc, dialect.RFC_V1, tmp_path / "r")
    rel = plan(sc, dialect.RELEASED, tmp_path / "d")

    def norm(x):  # the three plans differ only in their dirs and free tcp ports
        t = json.dumps(x).replace(str(tmp_path / "r"), "W").replace(str(tmp_path / "d"), "W")
        t = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:P", t.replace(str(tmp_path), "W"))
        return re.sub(r'(port\\*"\s*:\s*\\*")\d+', r"\1P", t)

    assert norm(rfc.src_commands) == norm(p.src_commands)
    assert norm(rel.dst_commands) == norm(p.dst_commands)
    assert machine_arg(p.src_args) == machine_arg(rfc.src_args)
    assert machine_arg(p.dst_args) == machine_arg(rel.dst_args)
    assert norm(rel.dst_args[len(rel.src_args):]) == norm(p.dst_args[len(p.src_args):])


def test_mixed_pair_expects_the_refusing_sides_words():
    from harness.run.setup import in_dialect
    src_side, dst_side = catalogue.get("channel/cpr-missing"), catalogue.get("channel/cpr-inet-dst")
    rfc_to_rel = dialect.get("rfc-v1→released-10x")
    rel_to_rfc = dialect.get("released-10x→rfc-v1")
    assert in_dialect(src_side, rfc_to_rel).expect.message == dialect.MSG_RFC_CPR_URI_MISSING
    assert in_dialect(src_side, rel_to_rfc).expect.message == src_side.expect.message
    assert in_dialect(dst_side, rfc_to_rel).expect.message == dst_side.expect.message
    assert in_dialect(dst_side, rel_to_rfc).expect.message == dialect.MSG_RFC_CPR_URI_UNIX


def test_memory_backend_ram_is_a_documented_skip_where_rfc_v1_is_spoken():
    assert dialect.get(dialect.RFC_V1).unsupported("ram-share")
    assert dialect.get("released-10x→rfc-v1").unsupported("ram-share")
    assert dialect.get(dialect.RELEASED).unsupported("ram-share") is None
    assert dialect.get(dialect.RFC_V1).unsupported("memfd") is None
