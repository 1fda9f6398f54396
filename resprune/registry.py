"""The method registry: one selection function per name, one signature, and what each method needs.

Every selection function has the signature::

    fn(tokens: Tensor (N, D), keep: int, *, query: Tensor (Q, D) | None = None, **kwargs) -> Selection

A method declares in its registration the model internals it takes (``requires``: cannot run without them;
``optional``: keyword -> internal, used when the model offers it) and where it acts (``stage``). ``prune`` passes
exactly the declared internals, so no code outside a method's own file needs to know its name. ``hparams`` (the
tunable keyword arguments) are read from the function's signature, for UIs that show only the settings a method
uses.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, get_args

from .types import INTERNALS, NEWLINE_POLICIES, PRUNE_OPTIONS, Selection, Stage

SelectFn = Callable[..., Selection]

DEFAULT_METHOD = "resprune"
"""The method ``select``, ``prune``, ``answer`` and the app use when none is named."""


@dataclass(frozen=True)
class MethodInfo:
    """Registry entry.

    Attributes:
        name: registry key.
        fn: the selection function.
        summary: one line for UIs and the README.
        text_aware: whether the method uses ``query``.
        requires: internals (``types.INTERNALS``) the method cannot run without, passed as keyword arguments of
            the same name (e.g. ``("cls_attention",)``).
        optional: ``{keyword: internal}`` the method uses when the model offers the internal (e.g. ResPrune's
            ``{"seed_prior": "cls_attention"}``); a keyword the caller passes explicitly wins.
        stage: where it acts: ``"pre-llm"`` (projected tokens), ``"encoder"`` (vision tower internals) or
            ``"llm"`` (inside the language model).
        hparams: the method's tunable keyword arguments (its signature minus tokens, keep, query and internals).
        newlines: the LLaVA-NeXT newline policies (``prune``'s ``newlines``) the method supports.
        prune_defaults: the method's defaults for ``prune``'s options (``types.PRUNE_OPTIONS``: ``query``,
            ``newlines``, ``budget``) where they differ from the global ones (e.g. a peer's released code keeps
            LLaVA-NeXT's newlines and splits K per crop).
        in_llm: for ``stage="llm"`` methods, the object ``prune`` asks for the in-LLM part: ``attention(model,
            inputs, hparams)`` -> `(L,)` score of every prompt position (the internal ``llm_attention``),
            ``context(model, keep_positions, prompt_len, hparams)`` -> the generation context manager, and
            ``stats(model, n, k, hparams)`` -> extra stats.
    """

    name: str
    fn: SelectFn
    summary: str
    text_aware: bool = False
    requires: tuple[str, ...] = ()
    optional: Mapping[str, str] = field(default_factory=dict)
    stage: Stage = "pre-llm"
    hparams: tuple[str, ...] = ()
    newlines: tuple[str, ...] = NEWLINE_POLICIES
    in_llm: Any = None
    prune_defaults: Mapping[str, str] = field(default_factory=dict)

    def internals(self) -> tuple[str, ...]:
        """Every internal the method may receive (required first)."""
        return self.requires + tuple(i for i in self.optional.values() if i not in self.requires)


_METHODS: dict[str, MethodInfo] = {}


def register(
    name: str,
    *,
    summary: str,
    text_aware: bool = False,
    requires: tuple[str, ...] = (),
    optional: Mapping[str, str] | None = None,
    stage: Stage = "pre-llm",
    newlines: tuple[str, ...] = NEWLINE_POLICIES,
    in_llm: Any = None,
    prune_defaults: Mapping[str, str] | None = None,
) -> Callable[[SelectFn], SelectFn]:
    """Decorator that registers a selection function under ``name``.

    Raises ``ValueError`` for a duplicate name, an unknown internal, stage or newline policy, a declared keyword the
    function does not accept, or an in-LLM method without its ``in_llm`` part.
    """
    optional = dict(optional or {})
    if stage not in get_args(Stage):
        raise ValueError(f"stage must be one of {get_args(Stage)}, got {stage!r}")
    if (stage == "llm") != (in_llm is not None):
        raise ValueError(f"method {name!r}: in_llm is required for stage='llm' methods and only for them")
    prune_defaults = dict(prune_defaults or {})
    for opt, value in prune_defaults.items():
        if opt not in PRUNE_OPTIONS or value not in PRUNE_OPTIONS[opt]:
            raise ValueError(f"method {name!r}: prune_defaults {opt}={value!r} is not one of {PRUNE_OPTIONS}")
    if not newlines or any(p not in NEWLINE_POLICIES for p in newlines):
        raise ValueError(f"method {name!r}: newlines must be a non-empty subset of {NEWLINE_POLICIES}, got {newlines}")
    for internal in (*requires, *optional.values()):
        if internal not in INTERNALS:
            raise ValueError(f"method {name!r}: unknown internal {internal!r}; known: {', '.join(INTERNALS)}")

    def deco(fn: SelectFn) -> SelectFn:
        if name in _METHODS:
            raise ValueError(f"method {name!r} is already registered")
        params = inspect.signature(inspect.unwrap(fn)).parameters
        for kw in (*requires, *optional):
            if kw not in params:
                raise ValueError(f"method {name!r} declares {kw!r} but its function has no such keyword argument")
        taken = {"tokens", "keep", "query", *requires, *optional}
        hparams = tuple(
            p.name for p in params.values() if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in taken
        )
        _METHODS[name] = MethodInfo(
            name,
            fn,
            summary,
            text_aware,
            tuple(requires),
            MappingProxyType(optional),
            stage,
            hparams,
            tuple(newlines),
            in_llm,
            MappingProxyType(prune_defaults),
        )
        return fn

    return deco


_BATCH: dict[str, Callable[..., list]] = {}


def register_batch(name: str, fn: Callable[..., list]) -> None:
    """Register a batched variant of method ``name``: ``fn(tokens, keep, queries, internals, **hparams)`` ->
    one ``Selection`` per image, each equal to the single call (``tokens``, ``queries``, ``internals``: lists,
    one entry per image; ``internals``: dicts of the per-image keyword arguments). ``select_batch`` and ``prune``
    use it on accelerators and with ``workers=1`` (``batching.run_batch``); methods without one are run image by
    image."""
    if name in _BATCH:
        raise ValueError(f"method {name!r} already has a batched variant")
    _BATCH[name] = fn


def batch_variant(name: str) -> Callable[..., list] | None:
    """The batched variant of ``name``, or None."""
    method_info(name)
    return _BATCH.get(name)


def unregister(name: str) -> None:
    """Remove ``name`` from the registry (for tests that register a throwaway method)."""
    _METHODS.pop(name, None)
    _BATCH.pop(name, None)


def list_methods(*, stage: Stage | None = None) -> list[str]:
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
