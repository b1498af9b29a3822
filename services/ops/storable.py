"""Text the database cannot store: a NUL character (PostgreSQL refuses it in ``text`` and ``jsonb``) or a
lone UTF-16 surrogate (no driver encodes it to UTF-8), refused as a 422 naming the field, on SQLite and
PostgreSQL alike. The gateway checks every request's parameters and bodies with these
(:mod:`services.gateway.strings`); an operation checks the JSON it stores (a model card) itself.
"""

from __future__ import annotations

import re
from typing import Any

#: The message of the 422.
UNSTORABLE = "must not contain a NUL character or an unpaired surrogate (the database cannot store them)"

_BAD = re.compile("[\x00\ud800-\udfff]")


def has_unstorable(text: str) -> bool:
    """True when ``text`` holds a NUL character or an unpaired surrogate."""
    return _BAD.search(text) is not None


def find_unstorable(data: Any, path: str = "") -> str | None:
    """The dotted path (``card.class_names[3]``) of the first string in ``data`` (keys included) that
    the database cannot store, or None."""
    if isinstance(data, str):
        return path or "body" if has_unstorable(data) else None
    if isinstance(data, dict):
        for key, value in data.items():
            where = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and has_unstorable(key):
                return path or "body"
            found = find_unstorable(value, where)
            if found is not None:
                return found
    elif isinstance(data, list):
        for i, value in enumerate(data):
            found = find_unstorable(value, f"{path}[{i}]")
            if found is not None:
                return found
    return None


__all__ = ["UNSTORABLE", "find_unstorable", "has_unstorable"]
