"""Input validation shared by every selection method (errors name the argument and the value)."""

from __future__ import annotations

import math
import numbers
import operator
import warnings

import torch

_F32_MAX = float(torch.finfo(torch.float32).max)


def check_tokens(tokens: object, name: str = "tokens") -> torch.Tensor:
    """Validate a `(N, D)` token matrix; return it as float32 (a copy only when the dtype differs)."""
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, D), got {type(tokens).__name__}")
    if tokens.dim() != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {tuple(tokens.shape)}")
    if tokens.shape[0] == 0:
        raise ValueError(f"{name} is empty: got shape {tuple(tokens.shape)}, need at least one token (N >= 1)")
    if tokens.shape[1] == 0:
        raise ValueError(f"{name} has no features: got shape {tuple(tokens.shape)}, need D >= 1")
    if not (tokens.is_floating_point()):
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {tokens.dtype}")
    lo, hi = torch.aminmax(tokens.detach())  # one pass, no |x| copy: NaN propagates (to both), inf stays inf
    amax_in = float(torch.maximum(lo.abs(), hi.abs()))
    if not math.isfinite(amax_in):
        bad = int((~torch.isfinite(tokens.detach())).any(dim=1).sum())
        raise ValueError(f"{name} contains NaN or inf values (in {bad} of {tokens.shape[0]} tokens)")
    # Energies are float32 sums of D squares (and dot products of two tokens): refuse magnitudes whose squared norm
    # could exceed float32's range instead of letting it turn into inf / NaN inside a method.
    d = tokens.shape[1]
    if amax_in * amax_in * d > _F32_MAX / 16:
        limit = math.sqrt(_F32_MAX / 16 / d)
        raise ValueError(
            f"{name} has entries of magnitude up to {amax_in:.3g}; squared norms over D={d} features would overflow "
            f"float32 (entries must stay below {limit:.3g}): rescale the tokens"
        )
    return tokens.detach().to(torch.float32)


def float64(v: torch.Tensor) -> torch.Tensor:
    """A float64 copy of ``v``, on its device. On the CPU through NumPy, which converts a `(576, 4096)` float32
    matrix about 3x faster than ``Tensor.double()`` here (2.7 vs 9.1 ms, one thread): it is on every method's hot
    path. The values are the same (float32 to float64 is exact)."""
    if v.device.type == "cpu" and v.dtype in (torch.float32, torch.float16, torch.float64):
        import numpy as np

        return torch.from_numpy(v.detach().numpy().astype(np.float64))
    return v.detach().double()


def check_query(query: object, dim: int) -> torch.Tensor | None:
    """Validate an optional `(Q, D)` query; an empty query (Q = 0) is returned as ``None``."""
    if query is None:
        return None
    if not isinstance(query, torch.Tensor):
        raise TypeError(f"query must be a torch.Tensor of shape (Q, D) or None, got {type(query).__name__}")
    if query.dim() == 1:
        query = query[None]
    if query.dim() != 2:
        raise ValueError(f"query must be 2-D (Q, D), got shape {tuple(query.shape)}")
    if query.shape[1] != dim:
        raise ValueError(
            f"query has feature dimension D={query.shape[1]} but tokens have D={dim} (query shape {tuple(query.shape)})"
        )
    if query.shape[0] == 0:
        return None
    q = query.detach().to(torch.float32)
    if not torch.isfinite(q).all():
        raise ValueError("query contains NaN or inf values")
    return q


def check_keep(keep: object, n: int) -> int:
    """Validate the budget ``keep`` against ``N``; ``keep >= N`` warns and returns ``N``."""
    if isinstance(keep, bool) or not isinstance(keep, int):
        # numpy / torch integer scalars are fine, floats are not (a ratio must be converted with keep_count)
        if isinstance(keep, torch.Tensor) and keep.dim() == 0 and not keep.is_floating_point():
            keep = int(keep)
        elif type(keep).__name__ in ("int64", "int32", "int16", "int8", "uint8"):
            keep = int(keep)  # numpy integers
        else:
            raise TypeError(f"keep must be an int (number of tokens), got {keep!r} of type {type(keep).__name__}")
    if keep <= 0:
        raise ValueError(f"keep must be a positive number of tokens, got keep={keep}")
    if keep >= n:
        warnings.warn(f"keep={keep} >= N={n} visual tokens: every token is kept", stacklevel=3)
        return n
    return keep


def keep_count(n: int, ratio: float) -> int:
    """Convert a kept fraction ``ratio`` in (0, 1] of ``n`` tokens to a token count (at least 1).

    >>> keep_count(576, 1 / 9)
    64
    """
    try:
        count = None if isinstance(n, bool) else operator.index(n)  # ints, numpy and 0-d torch integers
    except TypeError:
        count = None
    if count is None or count < 1:
        raise ValueError(f"n must be a positive int (the number of tokens), got {n!r}")
    if isinstance(ratio, bool) or not (isinstance(ratio, numbers.Real) and 0 < ratio <= 1):
        raise ValueError(f"ratio must be in (0, 1], got {ratio!r} (the kept fraction, a number)")
    return max(1, int(round(count * float(ratio))))
