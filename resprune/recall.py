"""Ground-truth measures of a selection: which tokens cover the objects a question is about, and how many were kept.

A token is *relevant* when at least ``min_overlap`` of its pixel box (clipped to the image) lies on the object
mask. Relevant-token recall is the share of relevant tokens that the selection kept.
"""

from __future__ import annotations

import numpy as np
import torch

from .types import Selection, TokenGeometry


def mask_coverage(geometry: TokenGeometry, mask: np.ndarray) -> np.ndarray:
    """Fraction of each token's pixel box (clipped to the image) covered by ``mask``.

    Args:
        geometry: token geometry of one image (boxes in original-image pixels).
        mask: `(H, W)` boolean mask in the same image's pixels.

    Returns:
        `(N,)` float64 in [0, 1] (0 for tokens without a box, such as LLaVA-NeXT's newline tokens).

    >>> g = TokenGeometry(torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long),
    ...                   torch.tensor([0, 1]), torch.tensor([[0., 0, 2, 2], [2, 0, 4, 2]]), (4, 2))
    >>> m = np.zeros((2, 4), bool); m[:, 3] = True
    >>> mask_coverage(g, m).tolist()
    [0.0, 0.5]
    """
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    if (w, h) != tuple(geometry.image_size):
        raise ValueError(
            f"mask is {w}x{h} but the geometry's image is {geometry.image_size[0]}x{geometry.image_size[1]}"
        )
    integral = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))  # (H+1, W+1) summed-area table
    box = geometry.box.detach().cpu().double().numpy()
    out = np.zeros(box.shape[0])
    ok = np.isfinite(box).all(1)
    x0 = np.clip(np.floor(box[ok, 0]), 0, w).astype(int)
    y0 = np.clip(np.floor(box[ok, 1]), 0, h).astype(int)
    x1 = np.clip(np.ceil(box[ok, 2]), 0, w).astype(int)
    y1 = np.clip(np.ceil(box[ok, 3]), 0, h).astype(int)
    area = (x1 - x0) * (y1 - y0)
    inside = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    out[ok] = np.where(area > 0, inside / np.maximum(area, 1), 0.0)
    return out


def relevant_tokens(geometry: TokenGeometry, mask: np.ndarray, *, min_overlap: float = 0.25) -> torch.Tensor:
    """`(N,)` bool: tokens whose box is at least ``min_overlap`` covered by ``mask``."""
    if not 0 < min_overlap <= 1:
        raise ValueError(f"min_overlap must be in (0, 1], got {min_overlap}")
    return torch.from_numpy(mask_coverage(geometry, mask) >= min_overlap)


def token_recall(selection: Selection, relevant: torch.Tensor) -> float:
    """Share of the relevant tokens that ``selection`` kept (NaN when no token is relevant)."""
    relevant = relevant.bool().cpu()
    total = int(relevant.sum())
    if total == 0:
        return float("nan")
    kept = torch.zeros_like(relevant)
    kept[selection.keep_idx.cpu()] = True
    return float((kept & relevant).sum()) / total
