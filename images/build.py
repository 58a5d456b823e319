#!/usr/bin/env python3
"""Build the harness's guest images from source, cached by content hash.

Command line (stdout carries only the result, diagnostics go to stderr)::

    python images/build.py x86-bios          # build if needed, print the image path
    python images/build.py --force x86-bios  # rebuild even if cached
    python images/build.py --out DIR x86-bios
    python images/build.py --list            # known images, one per line

As a module (stdlib only, importable as ``images.build`` or by path)::

    from images.build import build, layout
    path = build("x86-bios")          # -> absolute Path of the 64 KiB image
    lay = layout("x86-bios")          # -> dict from images/x86/layout.json

The cached file is ``<out>/<name>-<hash16>.bin`` where hash16 is the first 16 hex
digits of a sha256 over the sources, the linker script, the layout JSON, the
generated constants and the build recipe (tool arguments). A build runs in a
private temporary directory inside ``<out>`` and the result is renamed into
place, so parallel builders never see a partial file.

Exit codes: 0 ok, 1 build failed, 2 usage error / unknown image / missing tool.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
DEFAULT_OUT_DIR = HERE / "build"
TOOL_TIMEOUT_S = 60.0
_MAX_TOOL_LINES = 40
# Bump when the recipe changes in a way the hashed inputs do not show.
RECIPE_REV = "1"


class BuildError(Exception):
    """A build could not be done. ``str()`` is one line, then optional context."""

    exit_code = 1


class UnknownImage(BuildError):
    exit_code = 2

    def __init__(self, name: str):
        self.name = name
        super().__init__(
            f"unknown image {name!r}; known images: {', '.join(_names())}")


class ToolMissing(BuildError):
    exit_code = 2

    def __init__(self, what: str, candidates: Sequence[str], package: str):
        self.what = what
        self.candidates = tuple(candidates)
        self.package = package
        super().__init__(
            f"{what} not found (looked for {', '.join(candidates)} on PATH); "
            f"install the '{package}' package (Debian: apt-get install {package})")


@dataclass(frozen=True)
class Tool:
    role: str            # placeholder name in the recipe: "as", "ld", "objcopy"
    what: str            # human name for errors
    candidates: Tuple[str, ...]
    package: str


# x86_64-linux-gnu-* first: on Debian x86 hosts binutils ships both names, and on
# other hosts binutils-x86-64-linux-gnu ships only the prefixed ones.
BINUTILS_X86 = (
    Tool("as", "GNU assembler (as)", ("x86_64-linux-gnu-as", "as"), "binutils"),
    Tool("ld", "GNU linker (ld)", ("x86_64-linux-gnu-ld", "ld"), "binutils"),
    Tool("objcopy", "objcopy", ("x86_64-linux-gnu-objcopy", "objcopy"), "binutils"),
)
# Cross binutils for the aarch64 guest: only the prefixed names exist on an x86 host.
BINUTILS_AARCH64 = (
    Tool("as", "GNU assembler for aarch64", ("aarch64-linux-gnu-as",),
         "binutils-aarch64-linux-gnu"),
    Tool("ld", "GNU linker for aarch64", ("aarch64-linux-gnu-ld",),
         "binutils-aarch64-linux-gnu"),
    Tool("objcopy", "objcopy for aarch64", ("aarch64-linux-gnu-objcopy",),
         "binutils-aarch64-linux-gnu"),
)


@dataclass(frozen=True)
class ImageSpec:
    name: str
    description: str
    src_dir: Path
    sources: Tuple[str, ...]       # hashed, in this order
    layout_file: str
    tools: Tuple[Tool, ...]
    # argv templates; {as} {ld} {objcopy} = tools, {src} {gen} {obj} {elf} {bin} = paths
    recipe: Tuple[Tuple[str, ...], ...]
    output: str                    # file in the temp dir that is the image
    # integer layout keys: validated, and emitted as `.set` constants in this order
    int_keys: Tuple[str, ...] = ()
    # (offset in the image, expected bytes, what they are): checked after the link
    entry_check: Tuple[int, bytes, str] = (0, b"", "")


IMAGES: Dict[str, ImageSpec] = {
    "x86-bios": ImageSpec(
        name="x86-bios",
        description="bare-metal x86 firmware for -bios (64 KiB ROM at 0xFFFF0000)",
        src_dir=HERE / "x86",
        sources=("guest.S", "link.ld", "layout.json"),
        layout_file="layout.json",
        tools=BINUTILS_X86,
        recipe=(
            ("{as}", "--32", "--fatal-warnings", "-I", "{gen}", "-o", "{obj}",
             "{src}/guest.S"),
            ("{ld}", "-m", "elf_i386", "-T", "{src}/link.ld", "-nostdlib",
             "--build-id=none", "--fatal-warnings", "-o", "{elf}", "{obj}"),
            ("{objcopy}", "-O", "binary", "--gap-fill", "0xff", "{elf}", "{bin}"),
        ),
        output="guest.bin",
        int_keys=("WORK_BASE", "WORK_SIZE", "MAGIC", "VERSION", "HEARTBEAT_MS",
                  "CLOCK_CHECK_SHIFT", "CALIBRATE_MS", "SERIAL_PORT", "ROM_BASE",
                  "ROM_SIZE"),
        entry_check=(-16, b"\xfa", "cli at the reset vector"),
    ),
    "aarch64-virt": ImageSpec(
        name="aarch64-virt",
        description="bare-metal aarch64 firmware for -machine virt -bios (64 KiB at 0x0)",
        src_dir=HERE / "aarch64",
        sources=("guest.S", "link.ld", "layout.json"),
        layout_file="layout.json",
        tools=BINUTILS_AARCH64,
        recipe=(
            ("{as}", "--fatal-warnings", "-I", "{gen}", "-o", "{obj}", "{src}/guest.S"),
            ("{ld}", "-m", "aarch64elf", "-T", "{src}/link.ld", "-nostdlib",
             "--build-id=none", "--fatal-warnings", "-o", "{elf}", "{obj}"),
            ("{objcopy}", "-O", "binary", "{elf}", "{bin}"),
        ),
        output="guest.bin",
        int_keys=("WORK_BASE", "WORK_SIZE", "MAGIC", "VERSION", "HEARTBEAT_MS",
                  "CLOCK_CHECK_SHIFT", "SERIAL_BASE", "RAM_BASE", "ROM_BASE", "ROM_SIZE"),
        # mrs x0, mpidr_el1: the boot-CPU check that starts _start
        entry_check=(0, bytes.fromhex("a00038d5"), "mrs x0, mpidr_el1 at 0x0"),
    ),
}


# --------------------------------------------------------------------------
# layout


_STR_KEYS = ("BOOT_MARKER",)
_FIELDS = ("magic", "version", "counter", "boots", "heartbeats", "clock_khz", "hb_due")
#: The heartbeat's sequence number: the u32 ``heartbeats`` field in lowercase hex,
#: zero-padded to this many digits (the guests print it so; HEARTBEAT_REGEX must agree).
HEARTBEAT_DIGITS = 8
#: Bounds on the layout's timing keys (the guests' arithmetic relies on them).
_HEARTBEAT_MS_RANGE = (1, 500)      # period ticks stay below 2^32 up to a 8 GHz clock
_CHECK_SHIFT_RANGE = (0, 20)
_CALIBRATE_MS_RANGE = (1, 54)       # the PIT's 16-bit count at 1.193182 MHz
_UART_FIFO = 16                     # bytes a 16550's transmit FIFO holds


def _names() -> List[str]:
    return sorted(list(IMAGES) + list(LINUX_IMAGES))


def _spec(name: str) -> ImageSpec:
    try:
        return IMAGES[name]
    except KeyError:
        raise UnknownImage(name) from None


def _load_layout(spec: ImageSpec) -> dict:
    path = spec.src_dir / spec.layout_file
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise BuildError(f"{spec.name}: cannot read {path}: {e.strerror}") from None
    except ValueError as e:
        raise BuildError(f"{spec.name}: {path} is not valid JSON: {e}") from None
    _validate_layout(spec, path, data)
    return data


def _validate_layout(spec: ImageSpec, path: Path, d: dict) -> None:
    name = spec.name
    def bad(msg: str) -> BuildError:
        return BuildError(f"{name}: {path}: {msg}")

    if not isinstance(d, dict):
        raise bad("top level must be an object")
    for k in spec.int_keys:
        v = d.get(k)
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 2**32:
            raise bad(f"{k} must be an integer in [0, 2^32)")
    for k in _STR_KEYS:
        v = d.get(k)
        if (not isinstance(v, str) or not v.endswith("\n") or not v.isascii()
                or not v[:-1].isprintable()):
            raise bad(f"{k} must be a printable ASCII line ending in \\n")
    offs, sizes = d.get("OFFSETS"), d.get("FIELD_SIZES")
    if not isinstance(offs, dict) or not isinstance(sizes, dict):
        raise bad("OFFSETS and FIELD_SIZES must be objects")
    if set(offs) != set(_FIELDS) or set(sizes) != set(_FIELDS):
        raise bad(f"OFFSETS and FIELD_SIZES must have exactly the keys {', '.join(_FIELDS)}")
    spans = []
    for f in _FIELDS:
        o, s = offs[f], sizes[f]
        if not isinstance(o, int) or not isinstance(s, int) or o < 0 or s not in (4, 8):
            raise bad(f"field {f}: bad offset/size")
        if o % s or o + s > d["WORK_SIZE"]:
            raise bad(f"field {f}: misaligned or outside the work area")
        spans.append((o, o + s, f))
    spans.sort()
    for (a0, a1, fa), (b0, _b1, fb) in zip(spans, spans[1:]):
        if b0 < a1:
            raise bad(f"fields {fa} and {fb} overlap")
    if d["WORK_BASE"] % 4096 or d["WORK_SIZE"] != 4096:
        raise bad("the work area must be one page-aligned 4 KiB page")
    _validate_heartbeat(d, bad)
    if "RAM_BASE" in d and not (
            d["RAM_BASE"] <= d["WORK_BASE"] and d["RAM_BASE"] % 4096 == 0):
        raise bad("the work area must lie in RAM (WORK_BASE >= RAM_BASE, page-aligned)")
    if d["ROM_SIZE"] == 0 or d["ROM_SIZE"] % 65536:
        raise bad("ROM_SIZE must be a non-zero multiple of 64 KiB")
    writes = d.get("QEMU_WRITES", [])
    if not isinstance(writes, list):
        raise bad("QEMU_WRITES must be a list")
    for w in writes:
        if (not isinstance(w, dict) or not isinstance(w.get("base"), int)
                or not isinstance(w.get("size"), int) or w["size"] <= 0
                or not isinstance(w.get("what"), str)):
            raise bad("each QEMU_WRITES entry needs an integer base and size and a 'what'")
        if w["base"] < d["WORK_BASE"] + d["WORK_SIZE"] and d["WORK_BASE"] < w["base"] + w["size"]:
            raise bad(f"the work area overlaps RAM that QEMU writes ({w['what']})")


def _validate_heartbeat(d: dict, bad) -> None:
    """The heartbeat keys: period, clock check, the line's prefix and its regex."""
    for key, (lo, hi) in (("HEARTBEAT_MS", _HEARTBEAT_MS_RANGE),
                          ("CLOCK_CHECK_SHIFT", _CHECK_SHIFT_RANGE),
                          ("CALIBRATE_MS", _CALIBRATE_MS_RANGE)):
        if key in d and not lo <= d[key] <= hi:
            raise bad(f"{key} must be in {lo}..{hi}")
    prefix, rx = d.get("HEARTBEAT_PREFIX"), d.get("HEARTBEAT_REGEX")
    room = _UART_FIFO - HEARTBEAT_DIGITS - 1
    if (not isinstance(prefix, str) or not prefix or not prefix.isascii()
            or not prefix.isprintable() or len(prefix) > room):
        raise bad(f"HEARTBEAT_PREFIX must be 1..{room} printable ASCII characters "
                  f"(a whole line goes into the UART's {_UART_FIFO}-byte FIFO at once)")
    try:
        pattern = re.compile(rx) if isinstance(rx, str) else None
    except re.error as e:
        raise bad(f"HEARTBEAT_REGEX does not compile: {e}") from None
    if pattern is None or "seq" not in pattern.groupindex:
        raise bad("HEARTBEAT_REGEX must be a regex with a group named 'seq'")
    for seq in (0, 0x2A, 0xFFFFFFFF):
        text = f"{seq:0{HEARTBEAT_DIGITS}x}"
        m = pattern.fullmatch(prefix + text)
        if not m or m.group("seq") != text:
            raise bad(f"HEARTBEAT_REGEX must match the line the guest prints, "
                      f"{prefix + text!r}, with 'seq' = {text!r}")
    if pattern.fullmatch(d["BOOT_MARKER"].rstrip("\n")):
        raise bad("HEARTBEAT_REGEX must not match the BOOT_MARKER")


def layout(name: str) -> dict:
    """The guest/harness contract of image ``name`` (a fresh dict each call).

    For a bare-metal image: its layout.json (work area, markers, addresses). For a
    Linux image (``kind: "linux"``): its layout.json (kernel command line, console
    markers and regexes, packages); the built files are in :func:`build`'s manifest.
    """
    if name in LINUX_IMAGES:
        return _load_linux_layout(LINUX_IMAGES[name])
    return _load_layout(_spec(name))


def _gen_include(spec: ImageSpec, d: dict) -> str:
    """Assembler constants for guest.S, generated from the layout JSON."""
    lines = [
        "/* Generated by images/build.py from layout.json. Do not edit. */",
    ]
    for k in spec.int_keys:
        lines.append(f"\t.set {k}, {d[k]:#x}")
    for f in _FIELDS:
        lines.append(f"\t.set OFF_{f.upper()}, {d['OFFSETS'][f]:#x}")
    lines.append(f"\t.set HEARTBEAT_DIGITS, {HEARTBEAT_DIGITS}")
    lines.append(f"\t.set HEARTBEAT_PREFIX_LEN, {len(d['HEARTBEAT_PREFIX'])}")
    for macro, key in (("BOOT_MARKER_BYTES", "BOOT_MARKER"),
                       ("HEARTBEAT_PREFIX_BYTES", "HEARTBEAT_PREFIX")):
        data = d[key].encode("ascii")
        lines.append(f"\t.macro {macro}")
        lines.append("\t.byte " + ", ".join(f"{b:#04x}" for b in data))
        lines.append("\t.endm")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# build


def _hash_inputs(spec: ImageSpec, include: str) -> str:
    h = hashlib.sha256()

    def put(tag: str, data: bytes) -> None:
        h.update(f"{tag}\0{len(data)}\0".encode())
        h.update(data)

    put("recipe-rev", RECIPE_REV.encode())
    put("recipe", json.dumps(spec.recipe).encode())
    for src in spec.sources:
        p = spec.src_dir / src
        try:
            put(f"src:{src}", p.read_bytes())
        except OSError as e:
            raise BuildError(f"{spec.name}: cannot read source {p}: {e.strerror}") from None
    put("gen:layout.inc", include.encode())
    return h.hexdigest()[:16]


def _find_tools(spec: ImageSpec) -> Dict[str, str]:
    found = {}
    for tool in spec.tools:
        for cand in tool.candidates:
            path = shutil.which(cand)
            if path:
                found[tool.role] = path
                break
        else:
            raise ToolMissing(tool.what, tool.candidates, tool.package)
    return found


def _run(spec: ImageSpec, argv: List[str], cwd: Path) -> None:
    tool = os.path.basename(argv[0])
    try:
        r = subprocess.run(argv, cwd=str(cwd), stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=TOOL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise BuildError(
            f"{spec.name}: {tool} timed out after {TOOL_TIMEOUT_S:.0f}s") from None
    except OSError as e:
        raise BuildError(f"{spec.name}: cannot run {argv[0]}: {e.strerror}") from None
    if r.returncode != 0:
        out = r.stdout.decode(errors="replace").strip().splitlines()
        msg = f"{spec.name}: {tool} failed (exit {r.returncode}): {' '.join(argv)}"
        if len(out) > _MAX_TOOL_LINES:
            out = out[:_MAX_TOOL_LINES] + [f"... ({len(out) - _MAX_TOOL_LINES} more lines)"]
        if out:
            msg += "\n" + "\n".join(out)
        raise BuildError(msg)


def _check_image(spec: ImageSpec, lay: dict, data: bytes) -> None:
    def bad(msg: str) -> BuildError:
        return BuildError(f"{spec.name}: built image is wrong: {msg}")

    size = lay["ROM_SIZE"]
    if len(data) != size:
        raise bad(f"size {len(data)} bytes, expected exactly {size}")
    if size % 65536:
        raise bad(f"size {size} is not a multiple of 64 KiB (QEMU -bios needs that)")
    off, want, what = spec.entry_check
    off %= size
    got = data[off:off + len(want)]
    if got != want:
        raise bad(f"no {what} (bytes {got.hex()} at offset {off:#x}, expected {want.hex()})")
    for key in _STR_KEYS + ("HEARTBEAT_PREFIX",):
        if data.find(lay[key].encode("ascii")) < 0:
            raise bad(f"{key} string {lay[key]!r} not found in the image")


def _log(msg: str) -> None:
    print(f"build.py: {msg}", file=sys.stderr)


def build(name: str, out_dir: Optional[Path] = None, force: bool = False) -> Path:
    """Build image ``name`` if its cached file is missing (or ``force``).

    Returns the absolute path of ``<out_dir>/<name>-<hash16>.bin`` for a bare-metal
    image, or of the JSON manifest ``<out_dir>/<name>-<hash16>.json`` for a Linux
    image (it names the kernel and initrd files next to it).
    Raises :class:`BuildError` (:class:`UnknownImage`, :class:`ToolMissing`).
    """
    if name in LINUX_IMAGES:
        return _build_linux(LINUX_IMAGES[name], out_dir, force)
    spec = _spec(name)
    lay = _load_layout(spec)
    include = _gen_include(spec, lay)
    digest = _hash_inputs(spec, include)
    out = Path(out_dir if out_dir is not None else DEFAULT_OUT_DIR).resolve()
    final = out / f"{name}-{digest}.bin"

    if not force and final.is_file() and final.stat().st_size == lay["ROM_SIZE"]:
        return final

    tools = _find_tools(spec)
    try:
        out.mkdir(parents=True, exist_ok=True)
        tmp_ctx = tempfile.TemporaryDirectory(prefix=f".{name}-", dir=str(out))
    except OSError as e:
        raise BuildError(f"{name}: cannot use build directory {out}: {e.strerror}") from None
    with tmp_ctx as tmp_s:
        tmp = Path(tmp_s)
        (tmp / "layout.inc").write_text(include, encoding="ascii")
        paths = {"src": str(spec.src_dir), "gen": str(tmp), "obj": str(tmp / "guest.o"),
                 "elf": str(tmp / "guest.elf"), "bin": str(tmp / spec.output)}
        for step in spec.recipe:
            argv = [a.format(**tools, **paths) for a in step]
            _run(spec, argv, tmp)
        result = tmp / spec.output
        _check_image(spec, lay, result.read_bytes())
        os.chmod(result, 0o644)
        os.replace(result, final)  # atomic: readers see the old file or the new one
    _log(f"built {final}")
    return final


# --------------------------------------------------------------------------
# Linux guests: a Debian kernel and a busybox initramfs, from Debian packages


@dataclass(frozen=True)
class LinuxSpec:
    name: str
    description: str
    src_dir: Path
    sources: Tuple[str, ...]       # hashed, in this order
    layout_file: str
    init: str                      # the /init script, in src_dir


LINUX_IMAGES: Dict[str, LinuxSpec] = {
    "linux-x86": LinuxSpec(
        name="linux-x86",
        description="Debian x86-64 kernel + busybox initramfs (-kernel/-initrd), "
                    "console workload on ttyS0",
        src_dir=HERE / "linux",
        sources=("init", "layout.json"),
        layout_file="layout.json",
        init="init",
    ),
}

# Bump when the Linux recipe below changes in a way the hashed inputs do not show.
LINUX_RECIPE_REV = "1"
APT_TIMEOUT_S = 600.0
_LINUX_STR_KEYS = ("BOOT_MARKER", "READY_MARKER")
_LINUX_REGEX_KEYS = ("MODULES_REGEX", "DEVICES_REGEX", "BUFFER_REGEX", "STATUS_REGEX")
_LINUX_INT_KEYS = ("MIN_RAM_MIB", "BUFFER_MIB", "STATUS_PERIOD_S", "SUM_EVERY")
_PKG_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_MOD_NAME = re.compile(r"^[a-z0-9_-]+$")


def _load_linux_layout(spec: LinuxSpec) -> dict:
    path = spec.src_dir / spec.layout_file
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise BuildError(f"{spec.name}: cannot read {path}: {e.strerror}") from None
    except ValueError as e:
        raise BuildError(f"{spec.name}: {path} is not valid JSON: {e}") from None

    def bad(msg: str) -> BuildError:
        return BuildError(f"{spec.name}: {path}: {msg}")

    if not isinstance(d, dict):
        raise bad("top level must be an object")
    for k in _LINUX_STR_KEYS:
        v = d.get(k)
        if (not isinstance(v, str) or not v.endswith("\n") or not v.isascii()
                or not v[:-1].isprintable() or "'" in v):
            raise bad(f"{k} must be a printable ASCII line ending in \\n, without '")
    for k in _LINUX_INT_KEYS:
        v = d.get(k)
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 65536:
            raise bad(f"{k} must be an integer in 1..65536")
    for k in ("KERNEL_METAPACKAGE", "BUSYBOX_PACKAGE"):
        if not isinstance(d.get(k), str) or not _PKG_NAME.match(d[k]):
            raise bad(f"{k} must be a Debian package name")
    suite = d.get("KERNEL_SUITE", "")
    if not isinstance(suite, str) or (suite and not _PKG_NAME.match(suite)):
        raise bad("KERNEL_SUITE must be empty or a suite name")
    mods = d.get("MODULES")
    if not isinstance(mods, list) or not all(isinstance(m, str) and _MOD_NAME.match(m)
                                             for m in mods):
        raise bad("MODULES must be a list of kernel module names")
    if not isinstance(d.get("APPEND"), str) or not d["APPEND"].isprintable():
        raise bad("APPEND must be a printable string")
    cmds = d.get("COMMANDS")
    if not isinstance(cmds, dict) or not {"ping", "check"} <= set(cmds):
        raise bad("COMMANDS must map (at least) ping and check to reply regexes")
    for k, v in list(((k, d.get(k)) for k in _LINUX_REGEX_KEYS)) + list(cmds.items()):
        try:
            re.compile(v)
        except (TypeError, re.error) as e:
            raise bad(f"{k} is not a regular expression: {e}")
    return d


def _gen_conf(d: dict) -> str:
    """/etc/cprlinux.conf: shell constants for /init, generated from layout.json."""
    lines = ["# Generated by images/build.py from layout.json. Do not edit."]
    for k in _LINUX_STR_KEYS:
        lines.append(f"{k}='{d[k][:-1]}'")
    for k in _LINUX_INT_KEYS:
        lines.append(f"{k}={d[k]}")
    return "\n".join(lines) + "\n"


def _apt(spec: LinuxSpec, argv: List[str], cwd: Optional[Path] = None) -> str:
    try:
        r = subprocess.run(argv, cwd=str(cwd) if cwd else None, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=APT_TIMEOUT_S, env={**os.environ, "LC_ALL": "C"})
    except FileNotFoundError:
        raise ToolMissing(argv[0], (argv[0],), "apt" if argv[0].startswith("apt") else "dpkg")
    except subprocess.TimeoutExpired:
        raise BuildError(f"{spec.name}: {argv[0]} timed out after {APT_TIMEOUT_S:.0f}s") from None
    if r.returncode != 0:
        err = r.stderr.decode(errors="replace").strip().splitlines()
        msg = f"{spec.name}: {' '.join(argv)} failed (exit {r.returncode})"
        if err:
            msg += ": " + " / ".join(err[-3:])
        raise BuildError(msg)
    return r.stdout.decode(errors="replace")


def _candidates(spec: LinuxSpec, pkgs: Sequence[str], suite: str) -> Dict[str, str]:
    """The versions apt would install of ``pkgs`` (from ``suite`` if given)."""
    argv = ["apt-cache"] + (["-t", suite] if suite else []) + ["policy"] + list(pkgs)
    out = _apt(spec, argv)
    found = dict(re.findall(r"^(\S+):\n\s+Installed:.*\n\s+Candidate:\s*(\S+)\s*$", out, re.M))
    for pkg in pkgs:
        if found.get(pkg, "(none)") == "(none)":
            raise BuildError(f"{spec.name}: apt knows no installable version of {pkg}"
                             f"{' in ' + suite if suite else ''} (run apt-get update)")
    return {p: found[p] for p in pkgs}


def _apt_state() -> str:
    """A fingerprint of what apt-cache answers from: package lists, pins, sources."""
    h = hashlib.sha256()
    paths: List[Path] = []
    for d, pat in ((Path("/var/lib/apt/lists"), "*"), (Path("/etc/apt/preferences.d"), "*"),
                   (Path("/etc/apt/sources.list.d"), "*")):
        if d.is_dir():
            paths += sorted(d.glob(pat))
    paths += [Path("/etc/apt/preferences"), Path("/etc/apt/sources.list")]
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            continue
        h.update(f"{p}\0{st.st_mtime_ns}\0{st.st_size}\n".encode())
    return h.hexdigest()


def _resolve_packages(spec: LinuxSpec, lay: dict, out: Path) -> Dict[str, str]:
    """{package: version} for the kernel image package and busybox.

    apt-cache takes seconds, so the answer is remembered in ``<out>/.resolved-<name>.json``
    for as long as apt's package lists, pins and sources (and the query) are unchanged.
    """
    key = hashlib.sha256(json.dumps(
        [_apt_state(), lay["KERNEL_METAPACKAGE"], lay.get("KERNEL_SUITE", ""),
         lay["BUSYBOX_PACKAGE"]]).encode()).hexdigest()
    memo = out / f".resolved-{spec.name}.json"
    try:
        m = json.loads(memo.read_text())
        if m.get("key") == key and isinstance(m.get("packages"), dict):
            return m["packages"]
    except (OSError, ValueError, AttributeError):
        pass
    pkgs = _resolve_packages_apt(spec, lay)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".resolved-", dir=str(out))
        with os.fdopen(fd, "w") as f:
            json.dump({"key": key, "packages": pkgs}, f)
        os.replace(tmp, memo)
    except OSError:
        pass  # only a speed-up
    return pkgs


def _resolve_packages_apt(spec: LinuxSpec, lay: dict) -> Dict[str, str]:
    suite = lay.get("KERNEL_SUITE", "")
    meta = lay["KERNEL_METAPACKAGE"]
    out = _apt(spec, ["apt-cache"] + (["-t", suite] if suite else [])
               + ["depends", "--important", meta])
    kernels = re.findall(r"^\s*Depends:\s*(linux-image-\S+)\s*$", out, re.M)
    if not kernels:
        raise BuildError(f"{spec.name}: cannot find the kernel package that {meta} "
                         f"depends on (apt-cache depends said: {out.strip()[:200]!r})")
    # -t suite only raises the suite's priority: busybox comes from the same call
    return _candidates(spec, [kernels[0], lay["BUSYBOX_PACKAGE"]], suite)


def _fetch_deb(spec: LinuxSpec, pkg: str, version: str, debs: Path) -> Path:
    """``apt-get download pkg=version`` into the deb cache (atomic), once."""
    def matches(p: Path) -> bool:
        # apt names the file pkg_<version with ':' as %3a>_<arch>.deb
        return p.name.startswith(f"{pkg}_{version.replace(':', '%3a')}_")

    debs.mkdir(parents=True, exist_ok=True)
    for p in debs.glob(f"{pkg}_*.deb"):
        if matches(p):
            return p
    with tempfile.TemporaryDirectory(prefix=f".dl-{pkg}-", dir=str(debs)) as tmp_s:
        tmp = Path(tmp_s)
        os.chmod(tmp, 0o755)  # lets apt's _apt user write there (no "unsandboxed" warning)
        _apt(spec, ["apt-get", "download", "-q", f"{pkg}={version}"], cwd=tmp)
        got = [p for p in tmp.glob("*.deb") if matches(p)]
        if len(got) != 1:
            raise BuildError(f"{spec.name}: apt-get download {pkg}={version} left "
                             f"{[p.name for p in tmp.iterdir()]}")
        final = debs / got[0].name
        os.replace(got[0], final)
    return final


def _elf_modinfo(data: bytes) -> Dict[str, str]:
    """The .modinfo key=value strings of a (64-bit little-endian) kernel module."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def sh(i: int) -> Tuple[int, int, int]:
        name, _typ, _flags, _addr, off, size = struct.unpack_from(
            "<IIQQQQ", data, shoff + i * shentsize)
        return name, off, size

    _n, stroff, _s = sh(shstrndx)
    for i in range(shnum):
        name, off, size = sh(i)
        end = data.index(b"\0", stroff + name)
        if data[stroff + name:end] == b".modinfo":
            info = {}
            for item in data[off:off + size].split(b"\0"):
                if b"=" in item:
                    k, v = item.decode(errors="replace").split("=", 1)
                    info.setdefault(k, v)
            return info
    return {}


def _elf_is_static(data: bytes) -> bool:
    """True for a 64-bit little-endian ELF executable without a program interpreter."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return False
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    return all(struct.unpack_from("<I", data, phoff + i * phentsize)[0] != 3  # PT_INTERP
               for i in range(phnum))


def _module_closure(spec: LinuxSpec, tree: Path, wanted: Sequence[str]) -> List[Path]:
    """The .ko files for ``wanted`` and their dependencies, dependencies first."""
    index: Dict[str, Path] = {}
    for p in tree.glob("lib/modules/*/kernel/**/*.ko"):
        index.setdefault(p.name[:-3].replace("-", "_"), p)
    if not index:
        raise BuildError(f"{spec.name}: the kernel package has no modules (*.ko) "
                         "(compressed modules are not supported)")
    order: List[Path] = []
    state: Dict[str, str] = {}

    def visit(name: str, chain: Tuple[str, ...]) -> None:
        key = name.replace("-", "_")
        if state.get(key) == "done":
            return
        if state.get(key) == "busy":
            raise BuildError(f"{spec.name}: module dependency cycle: {' -> '.join(chain)}")
        if key not in index:
            raise BuildError(f"{spec.name}: module {name} not in the kernel package"
                             + (f" (needed by {chain[-2]})" if len(chain) > 1 else ""))
        state[key] = "busy"
        try:
            info = _elf_modinfo(index[key].read_bytes())
        except (ValueError, struct.error) as e:
            raise BuildError(f"{spec.name}: cannot read {index[key].name}: {e}") from None
        for dep in filter(None, info.get("depends", "").split(",")):
            visit(dep, chain + (dep,))
        state[key] = "done"
        order.append(index[key])

    for m in wanted:
        visit(m, (m,))
    return order


def _cpio_newc(entries: Sequence[Tuple[str, int, bytes, int]]) -> bytes:
    """A cpio "newc" archive of (path, mode, data, rdev) with owner 0 and mtime 0."""
    out = bytearray()

    def pad4() -> None:
        out.extend(b"\0" * (-len(out) % 4))

    for ino, (path, mode, data, rdev) in enumerate(
            list(entries) + [("TRAILER!!!", 0, b"", 0)], start=1):
        name = path.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(mode) else 1
        fields = (ino if path != "TRAILER!!!" else 0, mode, 0, 0, nlink, 0, len(data),
                  0, 0, (rdev >> 8) & 0xFFF, rdev & 0xFF, len(name), 0)
        out.extend(b"070701" + "".join(f"{f:08X}" for f in fields).encode())
        out.extend(name)
        pad4()
        out.extend(data)
        pad4()
    return bytes(out)


def _linux_inputs_hash(spec: LinuxSpec, lay: dict, pkgs: Dict[str, str], conf: str) -> str:
    h = hashlib.sha256()

    def put(tag: str, data: bytes) -> None:
        h.update(f"{tag}\0{len(data)}\0".encode())
        h.update(data)

    put("recipe-rev", LINUX_RECIPE_REV.encode())
    put("packages", json.dumps(sorted(pkgs.items())).encode())
    for src in spec.sources:
        p = spec.src_dir / src
        try:
            put(f"src:{src}", p.read_bytes())
        except OSError as e:
            raise BuildError(f"{spec.name}: cannot read source {p}: {e.strerror}") from None
    put("gen:cprlinux.conf", conf.encode())
    return h.hexdigest()[:16]


def _cached_packages(spec: LinuxSpec, lay: dict, debs: Path) -> Optional[Dict[str, str]]:
    """Offline fallback: the newest kernel and busybox debs already in the cache."""
    def newest(prefix: str) -> Optional[Path]:
        found = sorted(debs.glob(f"{prefix}*.deb"), key=lambda p: p.stat().st_mtime)
        return found[-1] if found else None

    k = newest("linux-image-")
    b = newest(f"{lay['BUSYBOX_PACKAGE']}_")
    if not k or not b:
        return None
    out = {}
    for p in (k, b):
        pkg, ver, _arch = p.name[:-4].split("_")
        out[pkg] = ver.replace("%3a", ":")
    return out


def _build_linux(spec: LinuxSpec, out_dir: Optional[Path], force: bool) -> Path:
    lay = _load_linux_layout(spec)
    conf = _gen_conf(lay)
    out = Path(out_dir if out_dir is not None else DEFAULT_OUT_DIR).resolve()
    debs = out / "debs"
    try:
        pkgs = _resolve_packages(spec, lay, out)
    except BuildError as e:  # no apt lists, no apt-cache, ...: try the deb cache
        cached = _cached_packages(spec, lay, debs) if debs.is_dir() else None
        if cached is None:
            raise
        _log(f"warning: {e}; using the cached {', '.join(f'{k}={v}' for k, v in cached.items())}")
        pkgs = cached
    digest = _linux_inputs_hash(spec, lay, pkgs, conf)
    stem = out / f"{spec.name}-{digest}"
    manifest_path = Path(f"{stem}.json")
    if not force and manifest_path.is_file():
        try:
            m = json.loads(manifest_path.read_text())
            if Path(m["kernel"]).is_file() and Path(m["initrd"]).is_file():
                return manifest_path
        except (OSError, ValueError, KeyError, TypeError):
            pass

    if not shutil.which("dpkg-deb"):
        raise ToolMissing("dpkg-deb", ("dpkg-deb",), "dpkg")
    kpkg = next(p for p in pkgs if p.startswith("linux-image-"))
    bpkg = lay["BUSYBOX_PACKAGE"]
    try:
        out.mkdir(parents=True, exist_ok=True)
        kdeb = _fetch_deb(spec, kpkg, pkgs[kpkg], debs)
        bdeb = _fetch_deb(spec, bpkg, pkgs[bpkg], debs)
        tmp_ctx = tempfile.TemporaryDirectory(prefix=f".{spec.name}-", dir=str(out))
    except OSError as e:
        raise BuildError(f"{spec.name}: cannot use build directory {out}: {e.strerror}") from None
    with tmp_ctx as tmp_s:
        tmp = Path(tmp_s)
        ktree, btree = tmp / "kernel", tmp / "busybox"
        _run(spec, ["dpkg-deb", "-x", str(kdeb), str(ktree)], tmp)
        _run(spec, ["dpkg-deb", "-x", str(bdeb), str(btree)], tmp)
        vmlinuz = sorted((ktree / "boot").glob("vmlinuz-*"))
        if len(vmlinuz) != 1:
            raise BuildError(f"{spec.name}: expected one boot/vmlinuz-* in {kdeb.name}, "
                             f"found {[p.name for p in vmlinuz]}")
        release = vmlinuz[0].name[len("vmlinuz-"):]
        busybox = btree / "bin" / "busybox"
        if not busybox.is_file():
            raise BuildError(f"{spec.name}: {bdeb.name} has no bin/busybox")
        bb = busybox.read_bytes()
        if not _elf_is_static(bb):
            raise BuildError(f"{spec.name}: {bdeb.name}'s busybox is not a static ELF binary")
        modules = _module_closure(spec, ktree, lay["MODULES"])
        mod_names = [p.name[:-3] for p in modules]
        try:
            init = (spec.src_dir / spec.init).read_bytes()
        except OSError as e:
            raise BuildError(f"{spec.name}: cannot read {spec.init}: {e.strerror}") from None

        d, x, r = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o755, stat.S_IFREG | 0o644
        entries: List[Tuple[str, int, bytes, int]] = [
            (p, d, b"", 0) for p in ("bin", "dev", "etc", "etc/cprlinux", "lib",
                                     "lib/modules", "proc", "sys", "tmp", "run", "buf",
                                     "sbin", "usr", "usr/bin", "usr/sbin")]
        entries += [
            ("dev/console", stat.S_IFCHR | 0o600, b"", (5 << 8) | 1),
            ("bin/busybox", x, bb, 0),
            ("init", x, init, 0),
            ("etc/cprlinux.conf", r, conf.encode(), 0),
            ("etc/cprlinux/modules", r, "".join(f"{n}\n" for n in mod_names).encode(), 0),
        ]
        entries += [(f"lib/modules/{p.name}", r, p.read_bytes(), 0) for p in modules]
        initrd = tmp / "initrd"
        with open(initrd, "wb") as f:
            with gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0,
                               compresslevel=9) as gz:
                gz.write(_cpio_newc(entries))
        kernel = tmp / "vmlinuz"
        shutil.copyfile(vmlinuz[0], kernel)

        final_kernel, final_initrd = Path(f"{stem}.vmlinuz"), Path(f"{stem}.initrd.gz")
        manifest = {
            "name": spec.name, "kind": "linux", "arch": lay.get("arch", "x86_64"),
            "kernel": str(final_kernel), "initrd": str(final_initrd),
            "append": lay["APPEND"],
            "qemu_args": ["-kernel", str(final_kernel), "-initrd", str(final_initrd),
                          "-append", lay["APPEND"]],
            "kernel_release": release,
            "packages": pkgs,
            "modules": mod_names,
            "sha256": {"kernel": hashlib.sha256(kernel.read_bytes()).hexdigest(),
                       "initrd": hashlib.sha256(initrd.read_bytes()).hexdigest()},
            "layout": {k: v for k, v in lay.items() if not k.startswith("_")},
        }
        mtmp = tmp / "manifest.json"
        mtmp.write_text(json.dumps(manifest, indent=1) + "\n")
        for p in (kernel, initrd, mtmp):
            os.chmod(p, 0o644)
        # kernel and initrd first, the manifest last: a manifest names complete files
        os.replace(kernel, final_kernel)
        os.replace(initrd, final_initrd)
        os.replace(mtmp, manifest_path)
    _log(f"built {manifest_path}")
    return manifest_path


# --------------------------------------------------------------------------
# command line


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        prog="build.py",
        description="Build a guest image (if needed) and print its absolute path.")
    ap.add_argument("name", nargs="?", help="image name (see --list)")
    ap.add_argument("--force", action="store_true", help="rebuild even if cached")
    ap.add_argument("--out", metavar="DIR", type=Path,
                    help=f"build directory (default: {DEFAULT_OUT_DIR})")
    ap.add_argument("--list", action="store_true", help="list known images and exit")
    args = ap.parse_args(argv)

    if args.list:
        for n in _names():
            print(f"{n}\t{(IMAGES.get(n) or LINUX_IMAGES[n]).description}")
        return 0
    if not args.name:
        _log(f"error: no image name given; known images: {', '.join(_names())}")
        return 2
    try:
        path = build(args.name, out_dir=args.out, force=args.force)
    except BuildError as e:
        _log(f"error: {e}")
        return e.exit_code
    except KeyboardInterrupt:
        _log("interrupted")
        return 130
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
