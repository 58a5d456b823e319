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
import hashlib
import json
import os
import shutil
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
            f"unknown image {name!r}; known images: {', '.join(sorted(IMAGES))}")


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
        int_keys=("WORK_BASE", "WORK_SIZE", "MAGIC", "VERSION", "HEARTBEAT_SHIFT",
                  "SERIAL_PORT", "ROM_BASE", "ROM_SIZE"),
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
        int_keys=("WORK_BASE", "WORK_SIZE", "MAGIC", "VERSION", "HEARTBEAT_SHIFT",
                  "SERIAL_BASE", "RAM_BASE", "ROM_BASE", "ROM_SIZE"),
        # mrs x0, mpidr_el1: the boot-CPU check that starts _start
        entry_check=(0, bytes.fromhex("a00038d5"), "mrs x0, mpidr_el1 at 0x0"),
    ),
}


# --------------------------------------------------------------------------
# layout


_STR_KEYS = ("BOOT_MARKER", "HEARTBEAT")
_FIELDS = ("magic", "version", "counter", "boots", "heartbeats")


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
    if not 1 <= d["HEARTBEAT_SHIFT"] <= 31:
        raise bad("HEARTBEAT_SHIFT must be in 1..31")
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


def layout(name: str) -> dict:
    """The guest/harness contract of image ``name`` (a fresh dict each call)."""
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
    for macro, key in (("BOOT_MARKER_BYTES", "BOOT_MARKER"), ("HEARTBEAT_BYTES", "HEARTBEAT")):
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
    for key in _STR_KEYS:
        if data.find(lay[key].encode("ascii")) < 0:
            raise bad(f"{key} string {lay[key]!r} not found in the image")


def _log(msg: str) -> None:
    print(f"build.py: {msg}", file=sys.stderr)


def build(name: str, out_dir: Optional[Path] = None, force: bool = False) -> Path:
    """Build image ``name`` if its cached file is missing (or ``force``).

    Returns the absolute path of ``<out_dir>/<name>-<hash16>.bin``.
    Raises :class:`BuildError` (:class:`UnknownImage`, :class:`ToolMissing`).
    """
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
        for n in sorted(IMAGES):
            print(f"{n}\t{IMAGES[n].description}")
        return 0
    if not args.name:
        _log(f"error: no image name given; known images: {', '.join(sorted(IMAGES))}")
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
