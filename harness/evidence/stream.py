"""What went through the main migration channel (evidence 2): the source's RAM counters
from ``query-migrate``, or for cpr-exec (whose source is gone) the state file's size."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional


@dataclass(frozen=True)
class StreamFigures:
    """``normal``/``normal_bytes``: RAM pages sent whole (cpr-transfer sends none);
    ``state_file_bytes``/``ram_bytes``: cpr-exec's state file against the RAM's size."""
    normal: Optional[int] = None
    normal_bytes: Optional[int] = None
    transferred: Optional[int] = None
    total: Optional[int] = None
    duplicate: Optional[int] = None
    state_file_bytes: Optional[int] = None
    ram_bytes: Optional[int] = None

    @classmethod
    def of(cls, query_migrate: Mapping[str, Any], state_file_bytes: Optional[int] = None,
           ram_bytes: Optional[int] = None) -> "StreamFigures":
        r = query_migrate.get("ram") or {}
        return cls(r.get("normal"), r.get("normal-bytes"), r.get("transferred"),
                   r.get("total"), r.get("duplicate"), state_file_bytes,
                   ram_bytes if state_file_bytes is not None else None)

    @property
    def from_state_file(self) -> bool:
        return self.state_file_bytes is not None

    def describe(self) -> str:
        if self.from_state_file:
            return f"state file {self.state_file_bytes} bytes for {self.ram_bytes} bytes of RAM"
        if self.normal is None:
            return "no RAM counters in query-migrate"
        return (f"{self.normal} RAM pages ({self.normal_bytes} bytes), "
                f"{self.transferred} bytes transferred")
