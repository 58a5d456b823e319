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
    devs = expectations.load(known_cases=catalogue.SCENARIOS)
    assert devs and all(d.case in catalogue.SCENARIOS for d in devs)
    assert all(d.reason and d.link for d in devs)


def test_entry_naming_no_case_is_an_error(tmp_path):
    with pytest.raises(UsageError, match="matches no scenario"):
        expectations.load(write(tmp_path, entry(case="channel/no-such")), catalogue.SCENARIOS)


@pytest.mark.parametrize("text,msg", [
    ('[[deviation]]\ncase = "x"\nlink = "l"\n', "'reason' is required"),
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
])
def test_conditions(tmp_path, when, info, hit):
    dev, = expectations.load(write(tmp_path, entry(when=when)))
    assert (expectations.find([dev], CASE, info) is not None) is hit
    assert expectations.find([dev], "transfer/other", info) is None
