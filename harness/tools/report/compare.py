"""What changed since an accepted run: verdict changes by case, and which of them are
regressions."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, List, Mapping, Optional

from harness.tools.report.records import _BAD, _one_line
from harness.tools.report.render import _md_cell, facts_line

# --------------------------------------------------------------------------- compare

#: Change kinds, in report order. The first two make ``harness report`` exit 1.
REGRESSION_KINDS = ("regression", "coverage-loss")
CHANGE_KINDS = REGRESSION_KINDS + ("fix", "coverage-gain", "changed", "new", "removed")
CHANGE_TITLES = {
    "regression": "Regressions",
    "coverage-loss": "Coverage lost (ran before, skipped now)",
    "fix": "Fixes",
    "coverage-gain": "Coverage gained (skipped before, runs now)",
    "changed": "Other verdict changes",
    "new": "New cases",
    "removed": "Removed cases",
}


def change_kind(old: str, new: str) -> Optional[str]:
    """How a verdict change reads; None when unchanged. See docs/reports.md."""
    if old == new:
        return None
    if new in _BAD:
        return "changed" if old in _BAD else "regression"
    if new == "skip":
        return "coverage-loss"
    if old == "skip":
        return "coverage-gain"
    if new == "xfail":
        # pass/xpass -> xfail: it worked before, now it is a (recorded) failure.
        return "regression" if old in ("pass", "xpass") else "changed"
    if new in ("pass", "xpass"):
        return "fix" if old in _BAD + ("xfail",) else "changed"
    return "changed"


@dataclass
class Change:
    kind: str
    id: str
    old: Optional[str]
    new: Optional[str]
    reason: str = ""       # the current record's reason (skip reason, failed checks...)
    old_reason: str = ""   # the baseline record's

    @property
    def why(self) -> str:
        """What a reader needs: the reason now, or what it was (a fix has none now)."""
        if self.reason:
            return self.reason
        return f"was: {self.old_reason}" if self.old_reason else ""


@dataclass
class Comparison:
    baseline: Mapping[str, Any]
    current: Mapping[str, Any]
    changes: List[Change] = field(default_factory=list)
    unchanged: int = 0

    @property
    def regressions(self) -> List[Change]:
        return [c for c in self.changes if c.kind in REGRESSION_KINDS]

    @property
    def exit_code(self) -> int:
        return 1 if self.regressions else 0

    def of(self, kind: str) -> List[Change]:
        return [c for c in self.changes if c.kind == kind]


def compare(baseline: Mapping[str, Any], current: Mapping[str, Any]) -> Comparison:
    """Which cases changed verdict from ``baseline`` to ``current`` (both matrices)."""
    old = {c["id"]: c for c in baseline["cases"]}
    new = {c["id"]: c for c in current["cases"]}
    cmp = Comparison(baseline, current)
    for sid in sorted(set(old) | set(new)):
        o, n = old.get(sid), new.get(sid)
        if o is None:
            cmp.changes.append(Change("new", sid, None, n["verdict"], n.get("reason") or ""))
        elif n is None:
            cmp.changes.append(Change("removed", sid, o["verdict"], None, "",
                                      o.get("reason") or ""))
        else:
            kind = change_kind(o["verdict"], n["verdict"])
            if kind is None:
                cmp.unchanged += 1
            else:
                cmp.changes.append(Change(kind, sid, o["verdict"], n["verdict"],
                                          n.get("reason") or "", o.get("reason") or ""))
    rank = {k: i for i, k in enumerate(CHANGE_KINDS)}
    cmp.changes.sort(key=lambda c: (rank[c.kind], c.id))
    return cmp


def _arrow(c: Change) -> str:
    return f"{c.old or '(absent)'} -> {c.new or '(absent)'}"


def render_comparison_text(cmp: Comparison, baseline_name: str, current_name: str) -> str:
    n = len({c["id"] for c in cmp.current["cases"]})
    lines = [f"compared {current_name} ({n} cases) with baseline {baseline_name}: "
             f"{len(cmp.changes)} changed, {cmp.unchanged} unchanged"]
    width = max([len(c.id) for c in cmp.changes] + [10])
    for c in cmp.changes:
        lines.append(f"  {c.kind.upper():14s} {c.id:{width}s} {_arrow(c):18s} "
                     f"{_one_line(c.why, 160)}".rstrip())
    r = cmp.regressions
    lines.append(f"{len(r)} regression(s)" + (" (regressions and lost coverage)" if r else
                                              ": no case got worse"))
    return "\n".join(lines)


def render_comparison_md(cmp: Comparison, baseline_name: str, current_name: str,
                         describe: Callable[[Mapping[str, Any]], str] = facts_line) -> str:
    """The compare in Markdown; ``describe`` says in one line which run a matrix's meta
    is (a merged fleet matrix has its own)."""
    bm, cm = cmp.baseline.get("meta", {}), cmp.current.get("meta", {})
    r = cmp.regressions
    lines = ["# cpr-transfer conformance: changes since the baseline", "",
             f"**{len(r)} regression(s)**, {len(cmp.of('fix'))} fix(es), "
             f"{len(cmp.changes)} change(s), {cmp.unchanged} unchanged", "",
             "| | file | run |", "|---|---|---|",
             f"| baseline | `{baseline_name}` | {_md_cell(describe(bm))} |",
             f"| current | `{current_name}` | {_md_cell(describe(cm))} |", ""]
    for kind in CHANGE_KINDS:
        cs = cmp.of(kind)
        if not cs:
            continue
        lines += [f"## {CHANGE_TITLES[kind]} ({len(cs)})", "",
                  "| case | baseline | current | why |", "|---|---|---|---|"]
        for c in cs:
            lines.append(f"| `{c.id}` | {c.old or '-'} | {c.new or '-'} | {_md_cell(c.why)} |")
        lines.append("")
    if not cmp.changes:
        lines += ["No case changed verdict.", ""]
    lines += ["A regression is a case that is now `fail`/`error` but was not, or that "
              "passed and is now a known deviation (`xfail`); lost coverage is a case "
              "that ran and is now skipped. Either makes `harness report --baseline` "
              "exit 1. See docs/reports.md.", ""]
    return "\n".join(lines)


