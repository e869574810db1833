"""One registry shape for every "choose by name" table: optimizers, losses, callbacks, metrics,
datasets and pruners.

A :class:`Registry` maps lower-cased names to entries. ``register`` refuses to replace a name
unless ``overwrite=True``; ``get`` raises :class:`~fasttricks._validate.ChoiceError` (both a
``KeyError`` and a ``ValueError``) that lists the known names and the closest match;
``names(pattern)`` filters with shell-style globs; ``view`` is a read-only live mapping.
The shape follows timm's optimizer registry (register / list / get), with a better error.

Example:
    >>> reg = Registry("colour")
    >>> reg.register("Red", 1)
    >>> reg.get("red"), reg.names("r*")
    (1, ['red'])
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from fasttricks._validate import check_choice

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of entries of one kind.

    Args:
        kind: what an entry is, used in messages (``"optimizer"``, ``"loss"``, ...).
        check: optional ``check(name, entry)`` run on every ``register`` (raise to refuse).
    """

    def __init__(self, kind: str, check: Callable[[str, T], None] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._check = check
        self.view: Mapping[str, T] = MappingProxyType(self._entries)

    @staticmethod
    def key(name: Any) -> Any:
        """The registry spelling of ``name``: stripped and lower-cased (non-strings unchanged)."""
        return name.strip().lower() if isinstance(name, str) else name

    def register(self, name: str, entry: T, *, overwrite: bool = False) -> None:
        """Add ``entry`` under ``name``; ``ValueError`` if taken and ``overwrite`` is False."""
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")
        key = self.key(name)
        if self._check is not None:
            self._check(key, entry)
        if key in self._entries and not overwrite:
            raise ValueError(f"{self.kind} {key!r} is already registered; pass overwrite=True "
                             "to replace it")
        self._entries[key] = entry

    def get(self, name: Any) -> T:
        """The entry for ``name``; an unknown name lists the known ones and the closest."""
        key = self.key(name)
        check_choice(self.kind, key, sorted(self._entries))
        return self._entries[key]

    def names(self, pattern: str | None = None) -> list[str]:
        """Sorted names, optionally filtered by a glob ``pattern`` (e.g. ``"ranger*"``)."""
        names = sorted(self._entries)
        if pattern is None:
            return names
        return [n for n in names if fnmatch.fnmatchcase(n, pattern.lower())]

    def __contains__(self, name: object) -> bool:
        return self.key(name) in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
