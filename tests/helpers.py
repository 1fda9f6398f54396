"""Shared test data: synthetic tokens and queries, test images, processor inputs (imported by the test modules)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

PROMPT = "What colour is the circle?"


def tokens(n: int = 40, d: int = 16, seed: int = 0) -> torch.Tensor:
    """`(N, D)` standard-normal tokens."""
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def query(d: int = 16, q: int = 3, seed: int = 1) -> torch.Tensor:
    """`(Q, D)` standard-normal query embeddings."""
    return torch.randn(q, d, generator=torch.Generator().manual_seed(seed))


def make_image(w: int = 640, h: int = 480, seed: int = 0) -> Image.Image:
    """A random image of 10 x 10 pixel blocks (so that every crop and patch differs)."""
    small = np.random.default_rng(seed).integers(0, 255, (h // 10, w // 10, 3), dtype=np.uint8)
    return Image.fromarray(small.repeat(10, 0).repeat(10, 1))


def make_inputs(proc, img, text: str = PROMPT):  # noqa: ANN001, ANN201
    """The processor's outputs for one image and a chat-formatted instruction."""
    from resprune.generate import chat_prompt

    return proc(images=img, text=chat_prompt(proc, text), return_tensors="pt")


def n_visual(model, inp) -> int:  # noqa: ANN001
    """N: the image placeholders in the prompt."""
    return int((inp["input_ids"] == model.config.image_token_id).sum())


def noise_image(w: int = 80, h: int = 64, seed: int = 0) -> Image.Image:
    """Per-pixel random noise (every patch differs)."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))
