"""Self-tests of scripts/get-qemu.sh's tree route (LABEL --from TREE|TARBALL) without
building a QEMU: bad input is one line, a cached label is answered offline, and the
recipe (the copy, Debian's subprojects only where missing, configure's arguments) is
read off a fake tree whose `configure` records its arguments and stops the build.

The real build of the cpr-transfer series (~15 min on 2 busy cores) runs in
`tox -e versions` (scripts/versions.sh), not here.
"""
import os
import shlex
import subprocess
import tarfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.selftest
ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "get-qemu.sh"
PREFIX = "get-qemu: "
SUBPROJECTS = ("keycodemapdb", "berkeley-softfloat-3", "berkeley-testfloat-3")


def get_qemu(cache, *args, timeout=120):
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=str(ROOT), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                          env=dict(os.environ, CPRH_QEMU_CACHE=str(cache)))


def lines(p):
    return [ln for ln in p.stderr.splitlines() if ln.strip()]


def assert_one_line_error(p, code, *needles):
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    assert p.stdout == ""
    ls = lines(p)
    assert ls and all(ln.startswith(PREFIX) for ln in ls), p.stderr
    for n in needles:
        assert n in ls[-1], p.stderr
    for bad in ("Traceback", "syntax error", "command not found", "unbound variable"):
        assert bad not in p.stderr, p.stderr


def fake_tree(root: Path, configure_log: Path, with_subprojects=True) -> Path:
    """A QEMU-shaped tree: VERSION, pythondeps.toml with its meson wheel, firmware, and a
    configure that writes its arguments to ``configure_log`` and fails."""
    t = root / "qemu"
    (t / "python" / "wheels").mkdir(parents=True)
    (t / "pc-bios").mkdir()
    (t / "subprojects").mkdir()
    (t / "scripts").mkdir()
    (t / "VERSION").write_text("9.1.50\n")
    (t / "pythondeps.toml").write_text('[meson]\nmeson = { accepted = ">=1.5.0", '
                                       'installed = "1.5.0", canary = "meson" }\n')
    (t / "python" / "wheels" / "meson-1.5.0-py3-none-any.whl").write_text("")
    (t / "pc-bios" / "bios-256k.bin").write_text("")
    (t / "scripts" / "meson-buildoptions.sh").write_text("    --disable-rust) ;;\n")
    for s in SUBPROJECTS if with_subprojects else ():
        (t / "subprojects" / s).mkdir()
        (t / "subprojects" / s / "README").write_text(s)
    (t / "build-old").mkdir()          # a developer's build dir: never copied
    (t / "build-old" / "build.ninja").write_text("")
    (t / "configure").write_text(
        "#!/bin/sh\n"
        f"printf '%s\\n' \"$@\" > {shlex.quote(str(configure_log))}\n"
        "pwd >> " + shlex.quote(str(configure_log)) + "\n"
        "echo 'ERROR: fake configure, no build here'\nexit 1\n")
    (t / "configure").chmod(0o755)
    return t


@pytest.mark.parametrize("args,needle", [
    (("rfc-v3", "--from", "/nonexistent/qemu"), "no such file or directory"),
    (("rfc-v3", "--from", "/etc"), "not a QEMU source tree"),
    (("rfc-v3", "--from", "/etc/hostname"), "neither a directory nor a tarball"),
    (("9lives", "--from", "/etc"), "is not a label"),
    (("rfc-v3", "--from", "/etc", "--source"), "give one of them"),
    (("rfc-v3", "--from", "/etc", "--arch", "aarch64"), "x86_64 only"),
    (("never-built",), "nor a label built before"),
    (("rfc-v3", "--from"), "--from needs a path"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, args, needle):
    p = get_qemu(tmp_path / "cache", *args, timeout=30)
    assert_one_line_error(p, 2, needle)
    assert len(lines(p)) == 1, p.stderr


def test_a_tarball_that_is_not_qemu_is_one_line(tmp_path):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "README").write_text("not QEMU")
    tarball = tmp_path / "junk.tar.gz"
    with tarfile.open(tarball, "w:gz") as tf:
        tf.add(junk, arcname="junk")
    p = get_qemu(tmp_path / "cache", "junk", "--from", str(tarball), timeout=120)
    if p.returncode == 1 and "needs packages" in p.stderr:
        pytest.skip(lines(p)[-1])
    assert_one_line_error(p, 1, "is not a tarball of a QEMU source tree")


def _stamp(cache: Path, label: str, binary: Path, source: str, source_id: str) -> None:
    d = cache / "tree" / label / "x86_64"
    d.mkdir(parents=True)
    (d / "stamp").write_text(f"version=9.1.50\narch=x86_64\nroute=tree\npath={binary}\n"
                             f"source={source}\nsource_id={source_id}\n")


def _fake_binary(path: Path) -> Path:
    path.write_text("#!/bin/sh\necho 'QEMU emulator version 9.1.50 (fake: a stamp test)'\n")
    path.chmod(0o755)
    return path


def test_a_cached_label_is_answered_without_its_source(tmp_path):
    binary = _fake_binary(tmp_path / "qemu-system-x86_64")
    _stamp(tmp_path / "cache", "mine", binary, "/gone", "tarball:0")
    p = get_qemu(tmp_path / "cache", "mine", timeout=30)
    assert p.returncode == 0, p.stderr
    assert p.stdout == f"{binary}\n" and p.stderr == ""


def test_the_same_source_is_answered_from_the_cache(tmp_path):
    tarball = tmp_path / "src.tar.xz"
    with tarfile.open(tarball, "w:xz") as tf:
        tf.add(__file__, arcname="x/README")
    import hashlib
    sha = hashlib.sha256(tarball.read_bytes()).hexdigest()
    binary = _fake_binary(tmp_path / "qemu-system-x86_64")
    _stamp(tmp_path / "cache", "mine", binary, str(tarball), f"tarball:{sha}")
    p = get_qemu(tmp_path / "cache", "mine", "--from", str(tarball), timeout=30)
    assert p.returncode == 0, p.stderr
    assert p.stdout == f"{binary}\n" and p.stderr == ""


def test_the_recipe_on_a_changed_tree(tmp_path):
    """A stamp from another source: it says so, copies the tree (not its build dirs),
    keeps its own subprojects and firmware, and configures for x86_64 into the cache."""
    log = tmp_path / "configure.args"
    tree = fake_tree(tmp_path, log)
    before = sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))
    cache = tmp_path / "cache"
    _stamp(cache, "mine", _fake_binary(tmp_path / "qemu-system-x86_64"), str(tree), "dir:old")
    p = get_qemu(cache, "mine", "--from", str(tree), timeout=120)
    if p.returncode == 1 and "needs packages" in p.stderr:
        pytest.skip(lines(p)[-1])
    assert_one_line_error(p, 1, "configure failed", "fake configure")
    assert "source of the build labelled mine changed" in p.stderr, p.stderr
    assert "subprojects" not in p.stderr, "the tree has them: nothing taken from Debian"
    args = log.read_text().splitlines()
    cwd = args.pop()
    build = cache / "tree" / "mine" / "x86_64" / "build"
    assert cwd == str(build / "build"), "configured in the cache's copy"
    for want in ("--target-list=x86_64-softmmu", "--disable-download", "--enable-kvm",
                 "--enable-tcg", "--disable-rust",
                 f"--prefix={cache / 'tree' / 'mine' / 'x86_64' / 'prefix'}"):
        assert want in args, (want, args)
    pkgv = next(a for a in args if a.startswith("--with-pkgversion="))
    assert pkgv.startswith("--with-pkgversion=mine: qemu") and "get-qemu.sh" in pkgv
    assert "--disable-install-blobs" not in args, "the tree has its firmware: installed"
    assert not (build / "build-old").exists(), "a build dir of the tree was copied"
    assert (build / "subprojects" / "keycodemapdb" / "README").is_file()
    assert sorted(str(p.relative_to(tree)) for p in tree.rglob("*")) == before, \
        "the given tree was written to"
    assert not (cache / "tree" / "mine" / "x86_64" / "stamp").exists(), \
        "a failed build must not leave a stamp"
