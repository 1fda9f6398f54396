"""The adapter contract: what a model family supplies to ``prune``.

Per image, an adapter gives (``ImageTokens``):

- ``tokens``: the `(N, D)` visual tokens in the LLM's input-embedding space, in placeholder order (what reaches the
  LLM);
- ``geometry``: their ``TokenGeometry`` (pixel box, grid row/column, view kind of every token);
- ``internals``: the model internals a method declared (``types.INTERNALS``) that this family ``offers``, computed
  from the same vision-tower pass that made the tokens (the tower runs once).

And per batch: the ``position_ids`` of the pruned, left-padded sequence (``None``: let ``generate`` number them).

A family's adapter declares the HF classes it serves, the position modes it supports (the first is the default),
the processor outputs its ``get_image_features`` needs, and the internals it offers (with the reason for those
it does not). ``llm_attention`` is not an adapter's concern: ``prune`` computes it on the language model, the same
for every family.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..types import TokenGeometry


@dataclass(frozen=True)
class ImageTokens:
    """The visual tokens of ONE image as the LLM receives them."""

    tokens: torch.Tensor  # (N, D) on the model's device and dtype
    geometry: TokenGeometry | None  # None when the image size is unknown and cannot be derived
    view: torch.Tensor  # (N,) VIEW_BASE / VIEW_HIRES / VIEW_NEWLINE
    internals: Mapping[str, Any] = field(default_factory=dict)  # the requested internals, aligned with tokens


def field_int(d: Any, key: str) -> int | None:
    """``d[key]`` (a dict or an attribute) as an int, or None."""
    v = d.get(key) if isinstance(d, dict) else getattr(d, key, None)
    return int(v) if v is not None else None


def layer_index(cfg: Any) -> int:
    """The vision feature layer of a LLaVA-style config (the last one when several are concatenated)."""
    idx = cfg.vision_feature_layer
    return idx if isinstance(idx, int) else idx[-1]


class Adapter:
    """Base class; one subclass per model family (one file each in ``resprune.adapters``)."""

    classes: tuple[str, ...] = ()  # the transformers class names this adapter serves
    family: str = ""  # the key of its tiny model in ``resprune.testing.FAMILIES``
    positions: tuple[str, ...] = ("compact", "original")  # the first is the default
    image_kwargs_keys: tuple[str, ...] = ()  # processor outputs ``get_image_features`` needs besides pixel_values
    offers: frozenset[str] = frozenset()  # internals this family can supply
    no_internals_reason: str = "this model family does not expose it"
    defaults: Mapping[str, Any] = {}  # method hyperparameters for this family when the caller gives none (alpha)

    def for_model(self, model: Any) -> Adapter:
        """The adapter for this model instance: ``self``, or a variant where the family's checkpoints differ in what
        they offer (LLaVA with a SigLIP tower has no [CLS] token)."""
        return self

    def missing(self, model: Any, internal: str) -> str:
        """Why ``internal`` is not offered, for error messages."""
        return f"{type(model).__name__} does not offer {internal}: {self.no_internals_reason}"

    def load_processor(self, target: str, **kw: Any) -> Any:
        """The family's processor for a checkpoint (PIL image backend: there is no CPU torchvision wheel)."""
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(target, trust_remote_code=False, backend="pil", **kw)

    def image_kwargs(self, inputs: Any) -> dict[str, Any]:
        """Extra arguments of ``get_image_features`` besides ``pixel_values``."""
        return {k: inputs[k] for k in self.image_kwargs_keys}

    def check_inputs(self, inputs: Any) -> None:
        for key in self.image_kwargs_keys:
            if inputs.get(key) is None:
                raise ValueError(f"inputs: {key!r} is missing (pass everything the model's processor returned)")

    def features(self, model: Any, inputs: Any, hidden_states: bool = False) -> tuple[list[torch.Tensor], Any]:
        """`(N_i, D)` visual tokens of each image in placeholder order, and (when ``hidden_states``) the vision
        tower's hidden states of that same pass (for [CLS] attention and other internals)."""
        dev = model.device
        kw = {k: v.to(dev) if torch.is_tensor(v) else v for k, v in self.image_kwargs(inputs).items()}
        if hidden_states:  # every layer's hidden states (by default transformers keeps only the selected one)
            kw["output_hidden_states"] = True
        out = model.model.get_image_features(pixel_values=inputs["pixel_values"].to(dev), return_dict=True, **kw)
        feats = out.pooler_output
        feats = list(feats) if not torch.is_tensor(feats) else list(feats.unbind(0))
        return feats, (getattr(out, "hidden_states", None) if hidden_states else None)

    def images(
        self, model: Any, processor: Any, inputs: Any, image_sizes: list | None, want: frozenset[str] = frozenset()
    ) -> list[ImageTokens]:
        """The visual tokens of each image with their geometry and the internals in ``want`` (a subset of
        ``offers``), from one vision-tower pass."""
        raise NotImplementedError

    def position_ids(
        self, model: Any, inputs: Any, keeps: list[torch.Tensor], lmax: int, positions: str
    ) -> torch.Tensor | None:
        """Position ids of the left-padded pruned batch (``None``: let ``generate`` number 0..L'-1)."""
        if positions == "compact":
            return None
        pos = torch.zeros(len(keeps), lmax, dtype=torch.long)
        for i, kp in enumerate(keeps):
            pos[i, lmax - kp.numel() :] = kp - kp[0]
        return pos


def anyres_canvas(h: int, w: int, pinpoints: Any) -> tuple[int, int, int, int, int, int]:
    """LLaVA-NeXT / OneVision any-resolution canvas of an ``h x w`` image: the best pinpoint ``(bh, bw)``, the
    fitted image size ``(new_h, new_w)`` and the padding ``(px, py)`` left and on top (``get_patch_output_size``:
    scale to fit, then centre-pad), as transformers' processors do."""
    import math

    from transformers.image_processing_utils import select_best_resolution

    bh, bw = select_best_resolution((h, w), pinpoints)
    sw, sh = bw / w, bh / h
    if sw < sh:
        new_w, new_h = bw, min(math.ceil(h * sw), bh)
    else:
        new_h, new_w = bh, min(math.ceil(w * sh), bw)
    return bh, bw, new_h, new_w, (bw - new_w) // 2, (bh - new_h) // 2
