"""The method registry: one pure selection function per name, one signature.

Every selection function has the signature::

    fn(tokens: Tensor (N, D), keep: int, *, query: Tensor (Q, D) | None = None, **hparams) -> Selection

Methods that need model internals (CLS attention, ...) take them as extra keyword arguments, supplied by the
model adapters. ``requires`` records those names so callers can tell which methods they can run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .types import Selection

SelectFn = Callable[..., Selection]


@dataclass(frozen=True)
class MethodInfo:
    """Registry entry.

    Attributes:
        name: registry key.
        fn: the selection function.
        summary: one line for UIs and the README.
        text_aware: whether the method uses ``query``.
        requires: extra keyword arguments the method cannot run without (e.g. ``("cls_attention",)``).
        stage: where it acts: ``"pre-llm"`` (projected tokens), ``"encoder"`` (vision tower internals) or
            ``"in-llm"`` (inside the language model).
    """

    name: str
    fn: SelectFn
    summary: str
    text_aware: bool = False
    requires: tuple[str, ...] = ()
    stage: str = "pre-llm"


_METHODS: dict[str, MethodInfo] = {}


def register(
    name: str,
    *,
    summary: str,
    text_aware: bool = False,
    requires: tuple[str, ...] = (),
    stage: str = "pre-llm",
) -> Callable[[SelectFn], SelectFn]:
    """Decorator that registers a selection function under ``name``; a duplicate name raises ``ValueError``."""

    def deco(fn: SelectFn) -> SelectFn:
        if name in _METHODS:
            raise ValueError(f"method {name!r} is already registered")
        _METHODS[name] = MethodInfo(name, fn, summary, text_aware, tuple(requires), stage)
        return fn

    return deco


def list_methods(*, stage: str | None = None) -> list[str]:
    """Sorted names of the registered methods (optionally only those acting at ``stage``)."""
    return sorted(n for n, m in _METHODS.items() if stage is None or m.stage == stage)


def method_info(name: str) -> MethodInfo:
    """The registry entry of ``name``; an unknown name raises ``ValueError`` listing the available ones."""
    if not isinstance(name, str) or name not in _METHODS:
        raise ValueError(f"method: unknown method {name!r}; available: {', '.join(list_methods())}")
    return _METHODS[name]


def get_method(name: str) -> SelectFn:
    """The selection function registered as ``name`` (``ValueError`` listing the available names if unknown)."""
    return method_info(name).fn
