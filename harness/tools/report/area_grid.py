"""The matrix as grids: per area, one tile per case, placed by its parameters.

Transfers are laid out main channel (rows) x cpr channel and incoming mode (columns),
so a missing or failing combination stands out; other areas by guest (rows) x incoming
mode. A tile is the case's verdict colour and the part of its id the axes do not
already say; it links to the case's row in the table below."""
from __future__ import annotations

import html
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple

Axis = Callable[[Mapping[str, Any]], str]

CSS = """
table.grid{border-collapse:collapse;margin:6px 0 10px;width:auto;table-layout:auto}
table.grid th,table.grid td{border:1px solid #e1e5ec;padding:4px 6px;vertical-align:top;text-align:left;font-size:12px}
table.grid th{background:#f4f6f9;font-weight:600;color:#38404f;white-space:nowrap}
table.grid td{min-width:80px;max-width:340px}
a.tile{display:inline-block;margin:1px 2px;padding:1px 5px;border-radius:3px;font-family:ui-monospace,monospace;font-size:11.5px;text-decoration:none}
"""


def _summary(r: Mapping[str, Any], key: str) -> str:
    return str((r.get("summary") or {}).get(key) or "-")


def axes(area: str) -> Tuple[str, Axis, str, Axis]:
    """(row title, row key, column title, column key) of an area's grid."""
    if area == "transfer":
        return ("main channel", lambda r: _summary(r, "main"),
                "cpr channel, incoming",
                lambda r: f"cpr {_summary(r, 'cpr')}, {_summary(r, 'incoming')}")
    return ("guest", lambda r: _summary(r, "guest"), "incoming",
            lambda r: _summary(r, "incoming"))


def tile_label(r: Mapping[str, Any]) -> str:
    """The case id without its area and what the grid's axes already say."""
    rid = str(r["id"])
    name = rid.split("/", 1)[-1]
    if r.get("area") == "transfer":
        main, cpr, inc = _summary(r, "main"), _summary(r, "cpr"), _summary(r, "incoming")
        if name.startswith(f"{main}-{cpr}-"):
            name = name[len(f"{main}-{cpr}-"):]
        name = name.replace(f"-{inc}", "", 1)
    return name or rid


def _order(values: Sequence[str]) -> List[str]:
    counts: Dict[str, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return sorted(counts, key=lambda v: (-counts[v], v))


def render(area: str, records: Sequence[Mapping[str, Any]]) -> str:
    """The area's grid as an HTML table ('' when it would be a single cell)."""
    row_title, row_of, col_title, col_of = axes(area)
    rows = _order([row_of(r) for r in records])
    cols = sorted(set(col_of(r) for r in records))
    if len(rows) * len(cols) < 2:
        return ""
    cells: Dict[Tuple[str, str], List[Mapping[str, Any]]] = {}
    for r in sorted(records, key=lambda r: r["id"]):
        cells.setdefault((row_of(r), col_of(r)), []).append(r)
    e = html.escape
    out = [f"<table class=\"grid\"><thead><tr><th>{e(row_title)} \\ {e(col_title)}</th>"
           + "".join(f"<th>{e(c)}</th>" for c in cols) + "</tr></thead><tbody>"]
    for row in rows:
        out.append(f"<tr><th>{e(row)}</th>")
        for col in cols:
            tiles = "".join(
                f"<a class=\"tile {e(r['verdict'])}\" data-verdict=\"{e(r['verdict'])}\" "
                f"href=\"#row-{e(r['id'])}\" title=\"{e(r['id'])}: {e(r['verdict'])}\">"
                f"{e(tile_label(r))}</a>" for r in cells.get((row, col), []))
            out.append(f"<td>{tiles}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)
