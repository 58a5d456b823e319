"""Reading ``query-qmp-schema``: its types are named by opaque numbers, so members and
enum values are found by following the indirections from a command's name."""
from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, Optional, Sequence

class Schema:
    """``query-qmp-schema`` with its opaque type names followed properly."""

    def __init__(self, entities: Sequence[Mapping[str, Any]]):
        self.entities = [e for e in entities if isinstance(e, dict)]
        self.by_name = {e.get("name"): e for e in self.entities}
        self._text: Optional[str] = None

    def get(self, name: Optional[str]) -> Optional[Mapping[str, Any]]:
        return self.by_name.get(name) if name is not None else None

    def members(self, type_name: Optional[str]) -> Optional[Dict[str, str]]:
        """Member name -> type name of an object type, variants' members included."""
        t = self.get(type_name)
        if t is None or t.get("meta-type") != "object":
            return None
        out = {m["name"]: m.get("type", "") for m in t.get("members", []) if "name" in m}
        for v in t.get("variants", []) or []:
            sub = self.members(v.get("type"))
            for k, val in (sub or {}).items():
                out.setdefault(k, val)
        return out

    def enum_values(self, type_name: Optional[str]) -> Optional[List[str]]:
        t = self.get(type_name)
        if t is None:
            return None
        if t.get("meta-type") == "array":
            return self.enum_values(t.get("element-type"))
        if t.get("meta-type") == "alternate":
            for m in t.get("members", []):
                vals = self.enum_values(m.get("type"))
                if vals is not None:
                    return vals
            return None
        if t.get("meta-type") != "enum":
            return None
        if "values" in t and isinstance(t["values"], list):
            return [str(v) for v in t["values"]]
        return [m["name"] for m in t.get("members", []) if isinstance(m, dict) and "name" in m]

    def element(self, type_name: Optional[str]) -> Optional[str]:
        t = self.get(type_name)
        if t is not None and t.get("meta-type") == "array":
            return t.get("element-type")
        return type_name

    def command_args(self, command: str) -> Optional[Dict[str, str]]:
        c = self.get(command)
        if c is None or c.get("meta-type") != "command":
            return None
        return self.members(c.get("arg-type")) or {}

    def command_returns(self, command: str) -> Optional[Dict[str, str]]:
        c = self.get(command)
        if c is None or c.get("meta-type") != "command":
            return None
        return self.members(c.get("ret-type")) or {}

    def mig_modes(self) -> List[str]:
        for members in (self.command_args("migrate-set-parameters"),
                        self.command_returns("query-migrate-parameters")):
            if members and "mode" in members:
                vals = self.enum_values(members["mode"])
                if vals is not None:
                    return vals
        return []

    def channel_types(self) -> List[str]:
        for command in ("migrate", "migrate-incoming"):
            args = self.command_args(command)
            if not args or "channels" not in args:
                continue
            channel = self.members(self.element(args["channels"]))
            if channel and "channel-type" in channel:
                vals = self.enum_values(channel["channel-type"])
                if vals is not None:
                    return vals
        return []

    def mentions(self, word: str) -> bool:
        if self._text is None:
            self._text = json.dumps(self.entities)
        return word in self._text


