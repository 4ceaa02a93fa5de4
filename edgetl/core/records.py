"""Typed report rows that also read like the JSON rows they are written as."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any


class Record:
    """Mixin for report dataclasses: row["key"] and row.get("key") read fields, to_dict() gives the JSON row.

    Tables, JSON reports and tests read rows by key; the code that fills them sets typed attributes.
    A field named `extra` (a dict) holds figures of optional checks and is flattened into the row.
    """

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)  # type: ignore[call-overload]
        extra = d.pop("extra", None) or {}
        hidden = {f.name for f in fields(self) if f.metadata.get("hidden")}  # type: ignore[arg-type]
        return {k: v for k, v in {**d, **extra}.items() if k not in hidden}

    def __getitem__(self, key: str) -> Any:
        extra = getattr(self, "extra", None)
        if isinstance(extra, dict) and key in extra:
            return extra[key]
        if key.startswith("_") or key not in {f.name for f in fields(self)}:  # type: ignore[arg-type]
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default
