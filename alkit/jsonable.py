"""One conversion to JSON-ready values for every `--json` result."""

from __future__ import annotations

import dataclasses
from enum import Enum
from pathlib import Path
from typing import Any


def jsonable(value: Any) -> Any:
    """`value` as plain JSON types: results via their `as_json`, dataclasses field by field,
    numpy arrays and scalars as lists and numbers, paths as strings, enums as their values."""
    if isinstance(value, Enum):
        return value.value
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "as_json") and callable(value.as_json):
        return value.as_json()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: jsonable(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return value.tolist()
    return str(value)


class JsonResult:
    """Mixin for result dataclasses: `as_json()` is every field, converted by `jsonable`.
    Fields listed in `json_exclude` stay out (e.g. large arrays); `json_names` renames fields."""

    json_exclude: tuple[str, ...] = ()
    json_names: dict[str, str] = {}

    def as_json(self) -> dict:
        return {
            self.json_names.get(field.name, field.name): jsonable(getattr(self, field.name))
            for field in dataclasses.fields(self)  # type: ignore[arg-type]
            if field.name not in self.json_exclude
        }
