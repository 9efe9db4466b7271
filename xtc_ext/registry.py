"""One registration style for everything the program picks by name: datasets, tasks, recipes, weightings,
optimizers.

A :class:`Registry` maps names to objects (classes, factories or spec instances), in registration order, and
is a read-only ``Mapping`` (``tuple(REG)`` gives the ``--help`` choices, ``REG[name]``, ``name in REG``). An
entry is added in one of two forms of the same method, next to its definition::

    WEIGHTINGS = Registry("weighting", expects=Weighting)

    @WEIGHTINGS.register("dwa")                     # a class or function, under one or more names
    class DWA(Weighting): ...

    FRAMES = DATASETS.register(DatasetSpec(name="frames", ...))   # an object, under its ``.name``
    OPTIMIZERS.register(torch.optim.Adam, "adam")                 # an object, under the names given

:meth:`Registry.lookup` is the checked access: an unknown name raises a ``ValueError`` that names the kind
and lists the registered names. This module imports nothing of the package, so every layer can use it
(docs/architecture.md).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Generic, Iterator, Mapping, Optional, TypeVar, Union, overload

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """Names -> objects of one kind, in registration order (a read-only ``Mapping``).

    Args:
        kind: what the entries are, in words, for messages (``"dataset"``, ``"weighting"``, ``"--model"``).
        expects: optional type: every entry must be an instance of it, or a subclass of it when the entry
            is a class.

    Raises:
        ValueError: ``kind`` is empty.
    """

    def __init__(self, kind: str, *, expects: Optional[type] = None) -> None:
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"Registry: kind must be a non-empty string, got {kind!r}")
        self.kind = kind
        self.expects = expects
        self._entries: Dict[str, T] = {}

    # ------------------------------------------------------------------ Mapping
    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries) or 'empty'})"

    # ------------------------------------------------------------------ registration
    @overload
    def register(self, name: str, *more_names: str) -> Callable[[T], T]: ...

    @overload
    def register(self, obj: T, *names: str) -> T: ...

    def register(self, first: Union[str, T], *names: str) -> Union[T, Callable[[T], T]]:
        """Register an entry; the two forms of the one registration style.

        * ``register("a", "b", ...)`` returns a decorator that registers the decorated class or function
          under every name given and returns it unchanged.
        * ``register(obj, *names)`` registers ``obj`` (not a string) under ``names``, or under ``obj.name``
          when no name is given, and returns ``obj``.

        Raises:
            ValueError: a name that is empty or already registered (nothing is registered then), or no name
                (``obj`` without ``names`` and without a string ``.name``).
            TypeError: an entry that is not of the registry's ``expects`` type.
        """
        if isinstance(first, str):
            all_names = (first,) + names

            def decorator(obj: T) -> T:
                return self._add(obj, all_names)

            return decorator
        self._check_type(first)
        if not names:
            name = getattr(first, "name", None)
            if not isinstance(name, str):
                raise ValueError(f"{self.kind} registry: {first!r} has no string .name; pass its name(s)")
            names = (name,)
        return self._add(first, names)

    def _check_type(self, obj: Any) -> None:
        if self.expects is not None:
            ok = issubclass(obj, self.expects) if isinstance(obj, type) else isinstance(obj, self.expects)
            if not ok:
                raise TypeError(f"{self.kind} registry expects a {self.expects.__name__}, got {obj!r}")

    def _add(self, obj: T, names: tuple) -> T:
        self._check_type(obj)
        for name in names:
            if not isinstance(name, str) or not name:
                raise ValueError(f"{self.kind} registry: a name must be a non-empty string, got {name!r}")
            if name in self._entries or names.count(name) > 1:
                raise ValueError(f"{self.kind} {name!r} is already registered")
        for name in names:
            self._entries[name] = obj
        return obj

    def unregister(self, name: str) -> T:
        """Remove ``name`` and return its entry (for tests that register a toy entry).

        Raises:
            ValueError: ``name`` is not registered (as :meth:`lookup`).
        """
        entry = self.lookup(name)
        del self._entries[name]
        return entry

    # ------------------------------------------------------------------ lookup
    def lookup(self, name: Any) -> T:
        """The entry registered as ``name``.

        Raises:
            ValueError: no such entry; the message names the kind and lists the registered names.
        """
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ValueError(f"unknown {self.kind} {name!r} (registered: {', '.join(self._entries) or 'none'})") \
                from None
