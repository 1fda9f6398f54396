"""The CLIP-style vision tower internals shared by the LLaVA family ([CLS] attention, features, keys, [CLS] feature)
and the projector as a function. Relies on transformers' CLIP encoder layers (``layer_norm1``, ``self_attn.q_proj /
k_proj / num_heads / scale``), tested with transformers 5.x.
"""

from __future__ import annotations

from typing import Any

import torch

CLIP_INTERNALS = frozenset({"cls_attention", "vision_features", "vision_keys", "cls_feature", "crops", "projector"})
"""What a LLaVA-family adapter with a [CLS]-token tower offers."""


@torch.no_grad()
def clip_internals(
    tower: Any, pixel_values: torch.Tensor, layer_idx: int, hidden_states: tuple | None = None
) -> tuple[torch.Tensor, ...]:
    """The [CLS] -> patch attention `(B, T - 1)` (mean over heads, float32) of the CLIP layer whose output is
    ``hidden_states[layer_idx]``, recomputed from that layer's ``layer_norm1`` / ``q_proj`` / ``k_proj`` on its
    input hidden states (the tower keeps its SDPA kernel); the patch features `(B, T - 1, C)` of that output (the vision
    tower's output that the projector receives, before the projector), the patch keys of that layer averaged over
    heads `(B, T - 1, C / H)` (VisionZip's similarity metric) and the [CLS] feature `(B, C)`.

    ``hidden_states``: the tower's hidden states for these ``pixel_values`` when the caller already has them (the
    pass that made the visual tokens), so the tower does not run twice."""
    hs = hidden_states
    if hs is None:
        hs = tower(pixel_values.to(tower.dtype), output_hidden_states=True).hidden_states
    # (layers + 1) x (B, 1 + N, C); hidden_states[i] is the input of layer i
    n_layers = len(hs) - 1
    produce = (layer_idx % (n_layers + 1)) - 1  # the layer whose output is hidden_states[layer_idx]
    if produce < 0:
        raise ValueError(f"vision_feature_layer={layer_idx} selects the embeddings; there is no attention there")
    encoder = tower.vision_model.encoder if hasattr(tower, "vision_model") else tower.encoder
    layer = encoder.layers[produce]
    h = layer.layer_norm1(hs[produce])
    attn = layer.self_attn
    b, t, _ = h.shape
    heads = attn.num_heads
    q = attn.q_proj(h).view(b, t, heads, -1).transpose(1, 2)  # (B, H, T, c/H)
    k = attn.k_proj(h).view(b, t, heads, -1).transpose(1, 2)
    scores = (q[:, :, :1] @ k.transpose(-1, -2)) * attn.scale  # (B, H, 1, T)
    probs = scores.float().softmax(-1).mean(1)[:, 0]  # (B, T)
    feats = hs[layer_idx].float()
    return probs[:, 1:], feats[:, 1:], k.float().mean(1)[:, 1:], feats[:, 0]


def projector(model: Any) -> Any:
    """The model's multimodal projector as a function of pre-projector features (on the model's device/dtype)."""
    proj = model.model.multi_modal_projector

    def project(x: torch.Tensor) -> torch.Tensor:
        return proj(x.to(device=model.device, dtype=proj.linear_1.weight.dtype))

    return project
