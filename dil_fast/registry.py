"""One registry type for every extension point: DIL variants (:data:`dil_fast.meta.VARIANTS`),
confounder families (:data:`dil_fast.degrade.FAMILIES`) and architectures
(:data:`dil_fast.models.ARCHS`).

An entry is a name, the object it names (a class, a parser) and the facts the rest of the house needs
to know about it (which ops a variant runs, how a family's values are labelled, how an architecture
recognises its state_dict). Each extension registers itself in its own module; flags, choices, config
checks, the study's methods, the benchmarks' lists and ``eval``'s families are read from the
registries, so adding one is one file plus its test. Built-in entries are registered by the explicit
imports of their package's ``__init__``; one's own are imported with ``--plugin MODULE``
(:func:`load_plugins`), never found by scanning the file system.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

from .errors import FlagError

__all__ = ["Entry", "Registry", "UnknownEntry", "load_plugins"]


class UnknownEntry(ValueError):
    """A name no entry has: the message names the flag and the choices."""


@dataclass(frozen=True)
class Entry:
    """One registered extension: ``name``, the object ``obj`` and its ``facts`` (also readable as
    attributes: ``entry.ops``)."""

    name: str
    obj: Any
    facts: Mapping[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()

    def __call__(self, *args, **kwargs):
        """Call the registered object (a class entry builds an instance)."""
        return self.obj(*args, **kwargs)

    def __getattr__(self, key: str) -> Any:
        try:
            return self.facts[key]
        except KeyError:
            raise AttributeError(
                f"{self.name!r} has no fact {key!r} (it has {', '.join(self.facts) or 'none'})"
            ) from None


class Registry:
    """Names -> :class:`Entry`, in registration order, read like a dict of its names (``name in
    reg``, ``reg[name]``, ``for name in reg``); :meth:`entries` gives the entries. ``kind``
    ("variant") and ``flag`` ("--variant") word the refusals of unknown names."""

    def __init__(self, kind: str, flag: str):
        self.kind, self.flag = kind, flag
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, obj: Any = None, *, aliases: tuple[str, ...] = (), **facts):
        """Register ``obj`` under ``name`` (and ``aliases``) with ``facts``; without ``obj``, a
        decorator that registers what it decorates and returns it unchanged."""
        if obj is None:

            def deco(target):
                self.register(name, target, aliases=aliases, **facts)
                return target

            return deco
        for n in (name, *aliases):
            if not n or n != n.strip():
                raise ValueError(f"{self.kind} name {n!r} is empty or has surrounding spaces")
            if n in self._entries or n in self._aliases:
                raise ValueError(f"{self.kind} {n!r} is registered already")
        self._entries[name] = Entry(name, obj, dict(facts), tuple(aliases))
        for a in aliases:
            self._aliases[a] = name
        return obj

    def get(self, name: str) -> Entry:
        """The entry of ``name`` (or of an alias); :class:`UnknownEntry` naming the flag and the choices."""
        key = self._aliases.get(name, name)
        try:
            return self._entries[key]
        except (KeyError, TypeError):
            raise UnknownEntry(f"{self.flag} must be one of {', '.join(self.names())}, got {name!r}") from None

    __getitem__ = get

    def names(self, *, aliases: bool = False) -> tuple[str, ...]:
        """The registered names in order (with ``aliases``: every alias after its entry's name)."""
        if not aliases:
            return tuple(self._entries)
        return tuple(n for e in self._entries.values() for n in (e.name, *e.aliases))

    def where(self, predicate: Callable[[Entry], bool]) -> tuple[str, ...]:
        """The names of the entries for which ``predicate(entry)`` holds."""
        return tuple(e.name for e in self._entries.values() if predicate(e))

    def entries(self) -> list[Entry]:
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def unregister(self, name: str) -> None:
        """Remove ``name`` and its aliases (tests that register a toy entry clean up with it)."""
        entry = self._entries.pop(name)
        for a in entry.aliases:
            self._aliases.pop(a, None)


def load_plugins(modules, flag: str = "--plugin") -> list[str]:
    """Import each module of ``modules`` (dotted names); importing a plugin registers its entries.
    A module that cannot be imported is one :class:`~dil_fast.errors.FlagError` naming it."""
    loaded = []
    for name in modules or ():
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - a plugin's own import error, reported in one line
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise FlagError(f"{flag} {name}: cannot import it ({type(exc).__name__}: {first})") from None
        loaded.append(name)
    return loaded
