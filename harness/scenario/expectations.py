"""Known deviations: where a given QEMU does not do what its documentation says.

A case stays strict. An entry here marks it as a *known* failure under stated
conditions, with a reason and a link; adapters run it as a strict expected failure, so
an unexpected pass (QEMU got fixed) is reported. An entry naming a case that does not
exist is an error, not silently ignored.

File format (TOML), one table per entry::

    [[deviation]]
    case = "channel/main-inet-port0-dst"      # a scenario id, a pattern ("transfer/*"),
                                              # or a list of them
    reason = "QEMU 10.0.2 accepts port 0 on the target's main channel"
    link = "docs/deviations.md#port-0"
    [deviation.when]                          # all conditions must hold; all optional
    dst_qemu = ["==10.0.2", "==11.1.3"]       # the target's QEMU (a PEP 440 set, or a
                                              # list of them: any one matches)
    src_qemu = ">=10.0,<10.1"                 # the source's QEMU
    qemu = "==10.0.2"                         # both sides'
    accel = ["kvm", "tcg"]                    # one value or a list
    machine = "q35"
    arch = "x86_64"
    kernel = ">=6.0"                          # host kernel release (major.minor.patch)

A source bug follows the source's version, a target behaviour the target's: key each
entry on the side it belongs to, with the versions it was observed on. A ``case``
pattern (``fnmatch``) must match at least one scenario; so must a plain id.
"""
from __future__ import annotations

import fnmatch
import platform
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import Version

from harness.core.errors import UsageError

DEFAULT_FILE = Path(__file__).resolve().parents[2] / "expectations" / "known-deviations.toml"
_VERSIONED = ("qemu", "src_qemu", "dst_qemu", "kernel")
_EXACT = ("accel", "machine", "arch")


@dataclass(frozen=True)
class RunInfo:
    """What an expectation may be conditioned on, for one case in one run."""
    qemu_src: str          # "10.0.2"
    qemu_dst: str
    accel: str
    machine: str
    arch: str = field(default_factory=platform.machine)
    kernel: str = field(default_factory=lambda: _kernel_version(platform.release()))


def _kernel_version(release: str) -> str:
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release)
    return ".".join(x or "0" for x in m.groups()) if m else "0"


def _specs(cond: Any) -> List[SpecifierSet]:
    return [SpecifierSet(c) for c in ([cond] if isinstance(cond, str) else list(cond))]


def _in(version: str, cond: Any) -> bool:
    """``version`` is in the set, or in any set of a list of them."""
    return any(Version(version) in spec for spec in _specs(cond))


@dataclass(frozen=True)
class Deviation:
    #: Scenario ids or fnmatch patterns ("transfer/*"); any one matches.
    case: Tuple[str, ...]
    reason: str
    link: str
    when: Dict[str, Any]
    source: str

    def matches(self, case: str, info: RunInfo) -> bool:
        if not any(fnmatch.fnmatchcase(case, pattern) for pattern in self.case):
            return False
        for key, cond in self.when.items():
            if key == "qemu":
                if not (_in(info.qemu_src, cond) and _in(info.qemu_dst, cond)):
                    return False
            elif key == "src_qemu":
                if not _in(info.qemu_src, cond):
                    return False
            elif key == "dst_qemu":
                if not _in(info.qemu_dst, cond):
                    return False
            elif key == "kernel":
                if not _in(info.kernel, cond):
                    return False
            else:
                allowed = [cond] if isinstance(cond, str) else list(cond)
                if getattr(info, key) not in allowed:
                    return False
        return True

    @property
    def id(self) -> str:
        """Its short name: the anchor of its link (``docs/deviations.md#port-0`` ->
        ``port-0``), else the link itself."""
        return self.link.rsplit("#", 1)[-1] if "#" in self.link else self.link

    def describe(self) -> str:
        return f"known deviation: {self.reason} ({self.link})"

    def to_dict(self) -> Dict[str, str]:
        return {"id": self.id, "link": self.link, "reason": self.reason}


def load(path: Path = DEFAULT_FILE, known_cases: Optional[Iterable[str]] = None) -> List[Deviation]:
    """Read and validate an expectations file. Any problem is a UsageError."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"expectations file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from None
    unknown_top = set(data) - {"deviation"}
    if unknown_top:
        raise UsageError(f"{path}: unknown top-level keys {sorted(unknown_top)}; "
                         f"use [[deviation]] tables")
    known = set(known_cases) if known_cases is not None else None
    out: List[Deviation] = []
    for i, raw in enumerate(data.get("deviation", []), 1):
        where = f"{path}: deviation #{i}"
        for key in ("reason", "link"):
            if not isinstance(raw.get(key), str) or not raw[key].strip():
                raise UsageError(f"{where}: '{key}' is required (a non-empty string)")
        cases = raw.get("case")
        cases = (cases,) if isinstance(cases, str) else tuple(cases or ())
        if not cases or not all(isinstance(c, str) and c.strip() for c in cases):
            raise UsageError(f"{where}: 'case' is required (an id, a pattern, or a list)")
        extra = set(raw) - {"case", "reason", "link", "when"}
        if extra:
            raise UsageError(f"{where}: unknown keys {sorted(extra)}")
        when = raw.get("when", {})
        for key, cond in when.items():
            if key in _VERSIONED:
                try:
                    if not _specs(cond):
                        raise TypeError("empty")
                except (InvalidSpecifier, TypeError):
                    raise UsageError(f"{where}: when.{key} = {cond!r} is not a version "
                                     f"range like '>=10.0,<10.1' (or a list of them)") from None
            elif key not in _EXACT:
                raise UsageError(f"{where}: unknown condition when.{key}; known: "
                                 f"{', '.join(_VERSIONED + _EXACT)}")
        for pattern in cases:
            if known is not None and not fnmatch.filter(known, pattern):
                raise UsageError(f"{where}: case {pattern!r} matches no scenario "
                                 f"(see 'python -m harness list')")
        out.append(Deviation(cases, raw["reason"].strip(), raw["link"], dict(when),
                             str(path)))
    return out


def find(deviations: Sequence[Deviation], case: str, info: RunInfo) -> Optional[Deviation]:
    for d in deviations:
        if d.matches(case, info):
            return d
    return None
