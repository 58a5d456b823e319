"""Records into plain data, at the one place they are written (result.json, a page).

:func:`plain` turns frozen records (dataclasses) into dicts, enums into their values,
tuples into lists, recursively; a record with a ``to_dict`` of its own (one that adds
what it derives, like ``ok`` and ``description``) is written that way."""
from __future__ import annotations

import dataclasses
import enum
from typing import Any, Mapping


def plain(obj: Any) -> Any:
    if isinstance(obj, enum.Enum):
        return obj.value
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        to_dict = getattr(obj, "to_dict", None)
        if callable(to_dict):
            return plain(to_dict())
        return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(plain(k)): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj
