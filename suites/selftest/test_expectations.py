"""Self-tests of the known-deviations file: strict validation and condition matching."""
import pytest

from harness.scenario import catalogue, expectations
from harness.core.errors import UsageError
from harness.scenario.expectations import RunInfo

pytestmark = pytest.mark.selftest

CASE = "channel/main-inet-port0-dst"
INFO = RunInfo(qemu_src="10.0.2", qemu_dst="10.0.2", accel="kvm", machine="q35",
               arch="x86_64", kernel="6.1.0")


def write(tmp_path, text):
    p = tmp_path / "dev.toml"
    p.write_text(text)
    return p


def entry(case=CASE, when='qemu = ">=10.0,<10.1"', extra=""):
    return (f'[[deviation]]\ncase = "{case}"\nreason = "r"\nlink = "l"\n{extra}'
            f'[deviation.when]\n{when}\n')


def test_the_shipped_file_is_valid_and_names_real_cases():
    import fnmatch

    devs = expectations.load(known_cases=catalogue.SCENARIOS)
    assert devs and all(fnmatch.filter(catalogue.SCENARIOS, c) for d in devs for c in d.case)
    assert all(d.reason and d.link for d in devs)


def test_every_entry_is_keyed_on_observed_versions_of_one_side():
    """No open ranges: a deviation is claimed only for versions it was seen on."""
    for d in expectations.load(known_cases=catalogue.SCENARIOS):
        keys = set(d.when) & {"qemu", "src_qemu", "dst_qemu"}
        assert keys, (d.case, "names no QEMU version")
        for k in keys:
            conds = [d.when[k]] if isinstance(d.when[k], str) else d.when[k]
            assert all(c.startswith("==") for c in conds), (d.case, k, conds)


def test_a_pattern_must_match_some_scenario(tmp_path):
    dev, = expectations.load(write(tmp_path, entry(case="transfer/fd-*")), catalogue.SCENARIOS)
    assert expectations.find([dev], "transfer/fd-unix-memfd-immediate-q35", INFO) is not None
    assert expectations.find([dev], "transfer/unix-unix-memfd-immediate-q35", INFO) is None
    with pytest.raises(UsageError, match="matches no scenario"):
        expectations.load(write(tmp_path, entry(case="nothing/*")), catalogue.SCENARIOS)


def test_entry_naming_no_case_is_an_error(tmp_path):
    with pytest.raises(UsageError, match="matches no scenario"):
        expectations.load(write(tmp_path, entry(case="channel/no-such")), catalogue.SCENARIOS)


@pytest.mark.parametrize("text,msg", [
    ('[[deviation]]\ncase = "x"\nlink = "l"\n', "'reason' is required"),
    ('[[deviation]]\nreason = "r"\nlink = "l"\n', "'case' is required"),
    (entry(when='qemu = "ten"'), "not a version range"),
    (entry(when='colour = "red"'), "unknown condition"),
    (entry(extra='severity = "high"\n'), "unknown keys"),
    ('[deviations]\n', "unknown top-level keys"),
    ('[[deviation]\n', "not valid TOML"),
])
def test_malformed_entries_are_errors(tmp_path, text, msg):
    with pytest.raises(UsageError, match=msg):
        expectations.load(write(tmp_path, text))


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        expectations.load(tmp_path / "nope.toml")


@pytest.mark.parametrize("when,info,hit", [
    ('qemu = ">=10.0,<10.1"', INFO, True),
    ('qemu = ">=10.1"', INFO, False),
    # ordered comparison, not string comparison: 10.0.10 > 10.0.9
    ('qemu = ">10.0.9"', RunInfo("10.0.10", "10.0.10", "kvm", "q35"), True),
    ('qemu = ">=10.0,<10.1"', RunInfo("10.0.2", "10.1.0", "kvm", "q35"), False),
    ('accel = "tcg"', INFO, False),
    ('accel = ["kvm", "tcg"]', INFO, True),
    ('machine = "pc"', INFO, False),
    ('kernel = ">=6.0"', INFO, True),
    ('kernel = "<6.0"', INFO, False),
    # per side: a source bug follows the source, a target behaviour the target
    ('src_qemu = "==11.1.3"', RunInfo("11.1.3", "10.0.2", "kvm", "q35"), True),
    ('src_qemu = "==11.1.3"', RunInfo("10.0.2", "11.1.3", "kvm", "q35"), False),
    ('dst_qemu = ["==10.0.2", "==11.1.3"]', RunInfo("10.2.2", "11.1.3", "kvm", "q35"), True),
    ('dst_qemu = ["==10.0.2", "==11.1.3"]', RunInfo("11.1.3", "10.2.2", "kvm", "q35"), False),
    ('src_qemu = ["==10.2.2", "==11.1.3"]\ndst_qemu = "==10.0.2"',
     RunInfo("11.1.3", "10.0.2", "kvm", "q35"), True),
    ('src_qemu = ["==10.2.2", "==11.1.3"]\ndst_qemu = "==10.0.2"',
     RunInfo("10.0.2", "10.0.2", "kvm", "q35"), False),
])
def test_conditions(tmp_path, when, info, hit):
    dev, = expectations.load(write(tmp_path, entry(when=when)))
    assert (expectations.find([dev], CASE, info) is not None) is hit
    assert expectations.find([dev], "transfer/other", info) is None
