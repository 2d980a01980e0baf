"""Name -> builder registry of the backbone zoo; a name can be registered once only.

Modelled on torchvision's ``models/_api.py``: builders register themselves with a decorator at
import time, and registering a name twice is an error instead of a silent overwrite (smp's
encoder dict overwrites silently, which is how name clashes go unnoticed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import nn

Builder = Callable[..., nn.Module]
B = TypeVar("B", bound=Builder)

_BUILDERS: dict[str, Builder] = {}


def register_backbone(name: str) -> Callable[[B], B]:
    """Decorator registering ``fn`` as the builder of backbone ``name``; duplicates raise."""

    def wrap(fn: B) -> B:
        if name in _BUILDERS:
            raise ValueError(
                f"backbone {name!r} is already registered (by {_BUILDERS[name].__module__})"
            )
        _BUILDERS[name] = fn
        return fn

    return wrap


def get_builder(name: str) -> Builder:
    try:
        return _BUILDERS[name]
    except KeyError:
        raise KeyError(f"unknown backbone {name!r}; known: {sorted(_BUILDERS)}") from None


def registered_names() -> list[str]:
    return sorted(_BUILDERS)
