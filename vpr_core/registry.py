"""A small name -> builder registry, like timm's model registry.

Configs name components (backbones, aggregators, dataset layouts, index types) by string; each
family registers its builder once, so adding one never grows an if-chain elsewhere.
"""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Dict, Generic, Iterable, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to builders and builds them with keyword arguments checked against the signature."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: Dict[str, Callable[..., T]] = {}

    def register(self, *names: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            for name in names or (fn.__name__,):
                if name in self._builders:
                    raise ValueError(f"{self.kind} '{name}' is registered twice")
                self._builders[name] = fn
            return fn
        return deco

    def names(self) -> Iterable[str]:
        return sorted(self._builders)

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._builders[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._builders, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise KeyError(f"unknown {self.kind} '{name}'{hint} Known: {', '.join(self.names())}") from None

    def build(self, key: str, /, **kwargs: Any) -> T:
        """Build `key`, rejecting keyword arguments the builder does not take (typos in configs)."""
        fn = self.get(key)
        params = inspect.signature(fn).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            unknown = sorted(set(kwargs) - set(params))
            if unknown:
                raise ValueError(f"{self.kind} '{key}' got unknown option(s) {unknown}; "
                                 f"it accepts {sorted(params)}")
        return fn(**kwargs)
