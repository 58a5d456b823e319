"""The two sides of a live update, named the same everywhere (``src``/``dst``)."""
from __future__ import annotations

import enum


class Side(enum.StrEnum):
    """Which QEMU of a pair: the one giving the guest away, or the one taking it."""
    SRC = "src"
    DST = "dst"

    @property
    def noun(self) -> str:
        """How a sentence names it: ``source`` or ``target``."""
        return "source" if self is Side.SRC else "target"
