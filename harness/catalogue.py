"""Every scenario the suite knows, by id.

Ids read like a path (``transfer/unix-unix-memfd-immediate-q35``); the part before the
slash is the area a report groups by.
"""
from __future__ import annotations

from typing import Dict, Iterable, List

from harness.errors import UsageError
from harness.scenario import Outcome, Scenario


def _positive(main: str, cpr: str, backend: str, incoming: str, machine: str = "q35",
              **kw: object) -> Scenario:
    sid = f"transfer/{main}-{cpr}-{backend}-{incoming}-{machine}"
    extra = "-".join(f"{k}{'' if v is True else v}" for k, v in sorted(kw.items()))
    if extra:
        sid += "-" + extra
    return Scenario(id=sid, title=f"cpr-transfer, main {main}, cpr {cpr}, {backend}, "
                    f"incoming {incoming}, {machine}", main=main, cpr=cpr, backend=backend,
                    incoming=incoming, machine=machine, area="transfer", **kw)  # type: ignore[arg-type]


def _build() -> List[Scenario]:
    return [
        _positive("unix", "unix", "memfd", "immediate"),
        _positive("unix", "fd", "memfd", "immediate").with_(requires=("cpr-incoming-fd",)),
        _positive("unix", "unix", "memfd", "defer"),
    ]


SCENARIOS: Dict[str, Scenario] = {}
for _sc in _build():
    if _sc.id in SCENARIOS:
        raise RuntimeError(f"duplicate scenario id {_sc.id}")
    SCENARIOS[_sc.id] = _sc


def get(sid: str) -> Scenario:
    try:
        return SCENARIOS[sid]
    except KeyError:
        close = [k for k in SCENARIOS if sid in k][:5]
        hint = f"; did you mean: {', '.join(close)}" if close else \
            "; list them with: python -m harness list"
        raise UsageError(f"unknown scenario id {sid!r}{hint}") from None


def select(area: str = "", positive: object = None) -> List[Scenario]:
    out: Iterable[Scenario] = SCENARIOS.values()
    if area:
        out = (s for s in out if s.area == area)
    if positive is not None:
        out = (s for s in out if s.positive == positive)
    return list(out)
