"""Which cases a run holds, under which ids, in which order: one answer for every
adapter (pytest's conftest, avocado's recipe, the command line).

A *case* is a scenario's own test (its id is the scenario's) or a test that reuses a
scenario under an id of its own: the soak chain runs :data:`SOAK_BASE` hop after hop
and is the case ``soak/chain-N-hops``. ``--scenario ID`` names exactly the cases it
says (a scenario's own test, or ``soak/chain`` for the chain, whatever its hops); a
``--suite`` names its scenarios' own tests (and ``soak`` the chain). Naming a scenario
never brings along another test that merely reuses it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence

from harness.core.errors import UsageError
from harness.scenario import catalogue
from harness.scenario.model import Scenario

#: The soak chain's base scenario, and its case id (whatever its number of hops).
SOAK_BASE = "transfer/unix-unix-memfd-immediate-q35"
SOAK = "soak/chain"
#: Cases that are not a scenario's own test: their id (as ``--scenario`` takes it),
#: what they are.
DERIVED = {SOAK: f"the soak chain: {SOAK_BASE} live-updated hop after hop (--soak-hops)"}
#: Suites of derived cases only.
DERIVED_SUITES = {"soak": (SOAK,)}


def soak_id(hops: int) -> str:
    return f"{SOAK}-{hops}-hops"


def check(ids: Sequence[str] = (), suites: Sequence[str] = ()) -> None:
    """:raise UsageError: an unknown scenario id or suite, said in one line."""
    for sid in ids:
        if sid not in DERIVED:
            catalogue.get(sid)
    for name in suites:
        if name not in DERIVED_SUITES:
            catalogue.suite(name)


@dataclass(frozen=True)
class Selection:
    """What a run was asked to hold (nothing asked: everything)."""
    ids: frozenset = frozenset()
    suites: tuple = ()

    @classmethod
    def of(cls, ids: Sequence[str] = (), suites: Sequence[str] = ()) -> "Selection":
        check(ids, suites)
        return cls(frozenset(ids), tuple(suites))

    @property
    def everything(self) -> bool:
        return not self.ids and not self.suites

    def holds(self, sc: Scenario, derived: Optional[str] = None) -> bool:
        """Whether the case of ``sc`` (``derived``: the derived case reusing it, e.g.
        :data:`SOAK`) is selected."""
        if self.everything:
            return True
        if derived is not None:
            return derived in self.ids or any(derived in DERIVED_SUITES.get(s, ())
                                              for s in self.suites)
        if sc.id in self.ids:
            return True
        return any(sc.id in {x.id for x in catalogue.suite(s)}
                   for s in self.suites if s not in DERIVED_SUITES)


def cost(sc: Scenario, derived: Optional[str] = None, conformance: bool = True) -> int:
    """The order cases run in, longest first (so that under xdist no worker is left with
    one of them while the other idles): the Linux guest, the soak chain, TCG, the rest.
    Self-tests (``conformance`` False) run with the rest."""
    if not conformance:
        return 3
    if sc.guest == "linux-x86":
        return 0
    if derived is not None:
        return 1
    return 2 if sc.accel == "tcg" else 3


def case_params(sc: Scenario, case_id: str, area: str, title: str) -> Dict[str, Any]:
    """The scenario's parameters under the id the matrix lists the case by: a
    scenario's own test by the scenario's id; a test reusing it (the chain) by its own
    id and area, naming the scenario it runs."""
    params = sc.params()
    if case_id == sc.id:
        return params
    return {**params, "id": case_id, "area": area, "scenario": sc.id,
            "title": f"{title} on {sc.id}: {sc.title}"}
