"""Explicit name -> component registries (scorers, selectors, posteriors, encoders).

An unknown name raises `UnknownNameError` listing the valid names, like baal's
`get_heuristic`.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Generic, Iterator, TypeVar

from alkit.errors import UnknownNameError

T = TypeVar("T")


@dataclass
class Registry(Generic[T]):
    """A named collection of components of one kind."""

    kind: str
    _items: dict[str, T] = field(default_factory=dict)
    _descriptions: dict[str, str] = field(default_factory=dict)

    def register(self, name: str, item: T, description: str = "") -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = item
        self._descriptions[name] = description
        return item

    def decorator(self, name: str, description: str = ""):
        """`@REGISTRY.decorator("name", "one-line description")` registers a function."""

        def wrap(item: T) -> T:
            return self.register(name, item, description)

        return wrap

    @contextmanager
    def scoped(self) -> Iterator["Registry[T]"]:
        """`with REGISTRY.scoped():` -- names registered inside the block are removed when it
        ends, so a test or an example that registers a component leaves the registry as it was."""
        before = set(self._items)
        try:
            yield self
        finally:
            for name in set(self._items) - before:
                del self._items[name], self._descriptions[name]

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            valid = ", ".join(sorted(self._items)) or "(none registered)"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; valid: {valid}") from None

    def describe(self, name: str) -> str:
        self.get(name)
        return self._descriptions[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
