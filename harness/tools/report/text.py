"""Typed text for the pages: everything a page shows of a case goes through here.

:func:`words` is a value as a reader reads it (nothing as ``not read``, never
``None``, ``True`` or ``False``); :class:`Line` is one labelled evidence line, checked at
birth like a :class:`harness.core.errors.Check` (a Python word or repr in it is a bug of
the code that made it, raised there, so no page shows one); :func:`clip` shortens a
text at a word boundary and says so with an ellipsis (the full text stays in the page);
:func:`plural` counts things in English; :func:`expected_words` says a scenario's
expected outcome (``src-refuses: pc.ram``) as a sentence."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

from harness.core.errors import reads_like_python

#: What :func:`clip` ends a shortened text with.
ELLIPSIS = "\u2026"


def words(value: Any, none: str = "not read") -> str:
    """A value as a reader reads it: numbers and words as they are (a float without
    trailing zeros), nothing as ``none``, a boolean as yes/no, a list joined by commas."""
    if value is None or value == "":
        return none
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".")
    if isinstance(value, (list, tuple)):
        return ", ".join(words(v, none) for v in value) or "none"
    return str(value)


def plural(n: int, thing: str, things: str = "") -> str:
    """``1 check``, ``2 checks``."""
    return f"{n} {thing if n == 1 else (things or thing + 's')}"


def one_line(text: Any) -> str:
    return " ".join(str(text if text is not None else "").split())


def clip(text: Any, limit: int) -> str:
    """``text`` on one line, at most about ``limit`` characters: cut at a word boundary
    and ended with an ellipsis when it is longer (never mid-word)."""
    flat = one_line(text)
    if len(flat) <= limit:
        return flat
    cut = flat[:limit].rsplit(" ", 1)[0].rstrip(" ,;:(")
    return (cut or flat[:limit]) + " " + ELLIPSIS


@dataclass(frozen=True)
class Line:
    """One labelled evidence line (``guest counter``: ``123 before -> 456 on the
    target``). It iterates as ``(label, text)``, the shape the matrix stores."""
    label: str
    text: str

    def __post_init__(self) -> None:
        for name in ("label", "text"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise TypeError(f"evidence line {self.label!r}: {name} must be text, not "
                                f"{type(value).__name__}")
            if reads_like_python(value):
                raise ValueError(f"evidence line {self.label!r}: {name} reads like Python: "
                                 f"{value!r}")

    def __iter__(self) -> Iterator[str]:
        return iter((self.label, self.text))


#: An expected outcome's kind in words (harness.scenario.model.Expect's values).
_EXPECT_WORDS = {"completes": "completes",
                 "src-refuses": "the source refuses",
                 "dst-refuses": "the target refuses",
                 "fails": "the transfer fails (whoever notices)",
                 "src-lost": "the target gives up on its lost source"}


def expected_words(expected: Any) -> str:
    """A scenario's expected outcome (``src-refuses: pc.ram``: the kind, then a part of
    QEMU's message it must contain) as a reader reads it."""
    kind, _, fragment = str(expected or "").partition(": ")
    said = _EXPECT_WORDS.get(kind, kind) or "not stated"
    return said + (f", its message containing \u201c{fragment}\u201d" if fragment else "")
