"""FastV (Chen et al., ECCV 2024): prune visual tokens INSIDE the language model.

Layers ``0 .. layer-1`` see every token; the visual tokens that the LAST position attends to least in layer
``layer - 1`` (attention averaged over heads) are dropped from layer ``layer`` on, for the prompt's hidden states
and therefore for those layers' KV cache. Decoding keeps the original positions (the cache of the first layers is
full length).

How it is done without breaking SDPA / FlashAttention and without storing anything on the model:

- ``last_query_attention`` runs the model up to the attention of layer ``layer - 1`` (a forward pre-hook captures
  that attention's input and position embeddings, then stops the forward) and recomputes the last query's
  attention row from the layer's own ``q_proj`` / ``k_proj`` and rotary function: O(L) memory, any kernel.
- ``FastVContext`` is a context manager around ``model.generate`` (or a forward). Forward pre-hooks on the decoder
  layers ``>= layer`` slice, at prefill, the hidden states, position ids, rotary cos/sin and (when there is one)
  the 4-D attention mask to the kept positions; at decode steps they slice the mask's key axis the same way. The
  hooks are removed in ``finally``.

Batch size 1 only (the kept positions differ per sample). Works for every family of ``resprune.adapters``: the
decoder layers of Llama-style and Qwen2.5-VL language models take the same keyword arguments.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from .._checks import check_keep, check_query, check_tokens
from ..registry import register
from ..types import Selection
from ._common import finish, per_token


class _Stop(Exception):
    """Raised by the capture hook to end a forward early."""


@torch.no_grad()
def last_query_attention(model: Any, inputs: dict[str, Any], layer: int) -> torch.Tensor:
    """`(L,)` attention of the last position to every position in decoder layer ``layer`` (mean over heads)."""
    layers = model.get_decoder().layers
    if not 0 <= layer < len(layers):
        raise ValueError(f"layer must be in [0, {len(layers) - 1}] for this model, got {layer}")
    attn = layers[layer].self_attn
    captured: dict[str, Any] = {}

    def capture(_mod: Any, args: tuple, kwargs: dict) -> None:
        captured["x"] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        captured["pe"] = kwargs["position_embeddings"]
        raise _Stop

    handle = attn.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        model(**inputs, use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    x = captured["x"]
    cos, sin = captured["pe"]
    b, n, _ = x.shape
    hd = attn.head_dim
    rotary = sys.modules[type(attn).__module__].apply_rotary_pos_emb
    q = attn.q_proj(x[:, -1:]).view(b, 1, -1, hd).transpose(1, 2)  # (B, H, 1, hd)
    k = attn.k_proj(x).view(b, n, -1, hd).transpose(1, 2)  # (B, Hkv, L, hd)
    q, _ = rotary(q, q, cos[..., -1:, :], sin[..., -1:, :])
    _, k = rotary(k, k, cos, sin)
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scores = (q @ k.transpose(-1, -2)).float() * attn.scaling  # (B, H, 1, L)
    return scores.softmax(-1).mean(1)[0, 0]


class FastVContext:
    """Hooks that drop the prompt positions not in ``keep`` from decoder layer ``layer`` on (batch size 1).

    Args:
        model: the LVLM.
        keep: `(L',)` sorted positions of the prompt to keep from layer ``layer`` on.
        prompt_len: L, the full prompt length.
        layer: the first decoder layer that sees the pruned sequence.
    """

    def __init__(self, model: Any, keep: torch.Tensor, prompt_len: int, layer: int) -> None:
        self.model = model
        self.keep = keep
        self.prompt_len = prompt_len
        self.layer = layer
        self._handles: list[Any] = []

    def _columns(self, total: int, device: torch.device) -> torch.Tensor:
        """Kept key positions among ``total``: ``keep`` plus everything after the prompt (generated tokens)."""
        return torch.cat(
            [self.keep.to(device), torch.arange(self.prompt_len, max(total, self.prompt_len), device=device)]
        )

    def _hook(self, _mod: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        kwargs = dict(kwargs)
        if args:
            kwargs["hidden_states"], args = args[0], args[1:]
        h = kwargs["hidden_states"]
        dev = h.device
        if h.shape[0] != 1:
            raise ValueError(f"FastV supports batch size 1, got {h.shape[0]}")
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        # this layer's cache is updated after this hook: empty means this forward is the prefill
        prefill = cache is None or cache.get_seq_length(_mod.self_attn.layer_idx) == 0
        q = h.shape[1]
        if prefill:  # the query rows to keep: prompt positions in ``keep`` and anything after the prompt
            pe = kwargs.get("position_embeddings")
            full = pe[0].shape[-2] if pe is not None else q  # the decoder hands every layer full-length inputs
            rows = self._columns(full, dev)
            if q == full:  # the first pruned layer; later ones receive already-pruned hidden states
                kwargs["hidden_states"] = h[:, rows]
            if torch.is_tensor(kwargs.get("position_ids")) and kwargs["position_ids"].shape[-1] == full:
                kwargs["position_ids"] = kwargs["position_ids"][..., rows]
            if pe is not None:
                kwargs["position_embeddings"] = tuple(t[..., rows, :] for t in pe)
        mask = kwargs.get("attention_mask")
        if torch.is_tensor(mask) and mask.dim() == 4:
            cols = self._columns(mask.shape[-1], dev)
            mask = mask[..., cols]
            if prefill and mask.shape[-2] > 1:
                mask = mask[..., self._columns(mask.shape[-2], dev), :]
            kwargs["attention_mask"] = mask
        return args, kwargs

    def __enter__(self) -> FastVContext:
        layers = self.model.get_decoder().layers
        try:
            for layer in layers[self.layer :]:
                self._handles.append(layer.register_forward_pre_hook(self._hook, with_kwargs=True))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def _layer(model: Any, hparams: dict[str, Any]) -> int:
    layer = hparams.get("layer", 2)
    n_layers = len(model.get_decoder().layers)
    if not isinstance(layer, int) or isinstance(layer, bool) or not 1 <= layer < n_layers:
        raise ValueError(f"layer must be an int in [1, {n_layers - 1}] for this model, got {layer!r}")
    return layer


class FastVHooks:
    """What ``prune`` calls for FastV (the registry's ``in_llm``): the score, the generation context, the stats."""

    def attention(self, model: Any, inputs: dict[str, Any], hparams: dict[str, Any]) -> torch.Tensor:
        """`(L,)` attention of the last prompt position in layer ``layer - 1`` (the internal ``llm_attention``)."""
        return last_query_attention(model, inputs, _layer(model, hparams) - 1)

    def context(self, model: Any, keep: torch.Tensor, prompt_len: int, hparams: dict[str, Any]) -> FastVContext:
        return FastVContext(model, keep, prompt_len, _layer(model, hparams))

    def stats(self, model: Any, n: int, k: int, hparams: dict[str, Any]) -> dict[str, Any]:
        """``llm_layer`` and the layer-averaged visual tokens (the first ``layer`` layers see all N)."""
        layer, n_layers = _layer(model, hparams), len(model.get_decoder().layers)
        return {"llm_layer": layer, "visual_tokens_equivalent": (layer * n + (n_layers - layer) * k) / n_layers}


@register(
    "fastv",
    summary="FastV: drop the visual tokens least attended by the last position, inside the LLM after layer 2",
    requires=("llm_attention",),
    stage="llm",
    in_llm=FastVHooks(),
)
@torch.no_grad()
def select_fastv(
    tokens: torch.Tensor,
    keep: int,
    *,
    query: torch.Tensor | None = None,
    llm_attention: torch.Tensor | None = None,
    layer: int = 2,
) -> Selection:
    """FastV (Chen et al., ECCV 2024): the K visual tokens with the highest attention from the last prompt position
    in LLM layer ``layer - 1`` (mean over heads); ``prune`` drops the others from layer ``layer`` on (``fastv``
    module). ``gain`` is that attention. Default ``layer=2`` as in the paper (its ``K``)."""
    v = check_tokens(tokens)
    check_query(query, v.shape[1])
    k = check_keep(keep, v.shape[0])
    a = per_token(llm_attention, v.shape[0], "llm_attention", "fastv", "the LLM's attention to the visual tokens")
    if not isinstance(layer, int) or isinstance(layer, bool) or layer < 1:
        raise ValueError(f"layer must be an int >= 1 (the first LLM layer without the pruned tokens), got {layer!r}")
    order = torch.sort(a, descending=True, stable=True).indices[:k]
    return finish(tokens, order, a[order], "fastv", {"layer": layer}, v32=v.cpu())
