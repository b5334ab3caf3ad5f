"""A strict registry: unknown or duplicate names raise, and errors suggest the nearest known name."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


def did_you_mean(name: str, known: list[str] | tuple[str, ...] | set[str]) -> str:
    """Return ``"; did you mean 'x'?"`` for the closest entry of ``known``, or ``""`` when nothing is close."""
    match = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.5)
    return f"; did you mean {match[0]!r}?" if match else ""


class Registry(Generic[T]):
    """Name -> object map with strict registration and helpful look-up errors.

    Args:
        kind: what the registry holds, used in error messages (e.g. ``"positional encoding"``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name``; a second registration of the same name raises."""

        def decorator(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered (by {self._items[name]!r}); pick a new name")
        if name in self._aliases:
            raise ValueError(f"{self.kind} {name!r} is already registered (a former name of {self._aliases[name]!r})")
        self._items[name] = obj

    def add_alias(self, old: str, name: str) -> None:
        """Let ``old``, a former name of ``name``, still be looked up (saved artefacts name it); it is not listed."""
        if old in self._items or old in self._aliases:
            raise ValueError(f"{self.kind} {old!r} is already registered; pick another alias")
        self.get(name)
        self._aliases[old] = name

    def canonical(self, name: str) -> str:
        """The registered name behind ``name`` (itself, or what the alias ``name`` stands for); unknown names raise."""
        name = self._aliases.get(name, name)
        self.get(name)
        return name

    def get(self, name: str) -> T:
        try:
            return self._items[self._aliases.get(name, name)]
        except KeyError:
            hint = did_you_mean(name, [*self._items, *self._aliases])
            old = hint.split("'")[1] if hint else None
            if old in self._aliases:  # a former name: say what it is called now
                hint = f"; did you mean {old!r} (now named {self._aliases[old]!r})?"
            raise ValueError(f"unknown {self.kind} {name!r}{hint} (known: {', '.join(sorted(self._items))})") from None

    def names(self) -> list[str]:
        """Registered names, sorted; aliases are left out."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
