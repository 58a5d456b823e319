"""A known deviation's text, carried with the reports.

Each entry of ``expectations/known-deviations.toml`` links a section of
``docs/deviations.md`` (``docs/deviations.md#port-0``). A reports directory is copied
to a CI artifact store, mailed, archived: a link out of it to the repository's raw
Markdown dangles there (and a Markdown anchor does nothing in a browser). So the
section's text goes into the case's record (:func:`section`, at the time the record is
made, from this checkout) and the page shows it in full (:func:`to_html`: the little
Markdown those sections use: paragraphs, ``code``, **bold**, indented code)."""
from __future__ import annotations

import html
import re
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parents[3]


def section(link: str, root: Path = ROOT) -> str:
    """The Markdown of the section ``link`` names (``docs/deviations.md#port-0``): from
    its ``## port-0`` heading (excluded) to the next ``## `` heading; "" when there is
    none (a link elsewhere, a file that is not there)."""
    if "://" in link or "#" not in link:
        return ""
    path, _, anchor = link.partition("#")
    try:
        lines = (Path(root) / path).read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return ""
    out: List[str] = []
    inside = False
    for line in lines:
        if line.startswith("## "):
            if inside:
                break
            inside = _anchor(line[3:]) == anchor
            continue
        if inside:
            out.append(line)
    return "\n".join(out).strip()


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


_INLINE = re.compile(r"\*\*([^*]+)\*\*|`([^`]+)`|\[([^\]]+)\]\([^)]*\)")


def _inline(text: str) -> str:
    """`code`, **bold** and [a link](target) (its words only: the target would leave
    the reports) in escaped HTML."""
    out, at = [], 0
    for m in _INLINE.finditer(text):
        out.append(html.escape(text[at:m.start()]))
        bold, code, link = m.groups()
        if code is not None:
            out.append(f"<code>{html.escape(code)}</code>")
        elif bold is not None:
            out.append(f"<b>{_inline(bold)}</b>")
        else:
            out.append(html.escape(link or ""))
        at = m.end()
    out.append(html.escape(text[at:]))
    return "".join(out)


def to_html(markdown: Optional[str]) -> str:
    """A deviation section as HTML: paragraphs, inline code and bold, indented code
    blocks kept as they are."""
    if not markdown:
        return ""
    blocks: List[str] = []
    para: List[str] = []
    code: List[str] = []

    def flush() -> None:
        if para:
            blocks.append("<p>" + _inline(" ".join(para)) + "</p>")
            para.clear()
        if code:
            blocks.append("<pre>" + html.escape("\n".join(code)) + "</pre>")
            code.clear()

    for line in markdown.splitlines():
        if line.startswith("    ") and not para:
            code.append(line[4:])
        elif not line.strip():
            flush()
        else:
            if code:
                flush()
            para.append(line.strip())
    flush()
    return "".join(blocks)
