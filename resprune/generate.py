"""Answers and their cost: ``answer`` (pruned and unpruned generation), ``count_visual_tokens``, the chat prompt,
KV-cache bytes and prefill FLOPs. (Named ``generate``, not ``answer``: a submodule ``answer`` would shadow the
function ``resprune.answer``.)"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .adapters import adapter_for
from .pipeline import prune
from .registry import DEFAULT_METHOD
from .timing import measure
from .types import PruneResult

__all__ = ["Answer", "answer", "chat_prompt", "count_visual_tokens", "kv_cache_bytes", "prefill_flops"]


def chat_prompt(processor: Any, prompt: str) -> str:
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    return processor.apply_chat_template(msgs, add_generation_prompt=True)


def _inputs(processor: Any, image: Any, prompt: str) -> Any:
    from .images import load_image

    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt must be a non-empty str, got {prompt!r}")
    img = load_image(image).image
    return img, processor(images=img, text=chat_prompt(processor, prompt), return_tensors="pt")


def count_visual_tokens(model: Any, processor: Any, image: Any, prompt: str) -> int:
    """N: the visual tokens the model makes of ``image`` (from the processor's placeholder expansion)."""
    adapter_for(model)
    _, inputs = _inputs(processor, image, prompt)
    return int((inputs["input_ids"] == model.config.image_token_id).sum())


@dataclass(frozen=True)
class Answer:
    """``pruned`` / ``unpruned`` answer texts, the ``PruneResult`` and the efficiency ``stats``."""

    pruned: str
    unpruned: str | None
    result: PruneResult
    stats: dict[str, Any]


def _cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def kv_cache_bytes(cache: Any) -> tuple[int, int]:
    """(bytes, sequence length of the last layer) of a transformers cache object (layers may differ in length
    when pruning happens inside the LLM)."""
    total, length = 0, 0
    layers = getattr(cache, "layers", None)
    if layers is not None:
        for layer in layers:
            for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
                if torch.is_tensor(t):
                    total += t.numel() * t.element_size()
                    length = t.shape[-2]
    return total, length


def prefill_flops(model: Any, seq_len: int, *, full_len: int | None = None, full_layers: int = 0) -> int:
    """Prefill FLOPs of the language model (2 x multiply-adds), from its config.

    Per layer: q/o projections ``2 L d d_q``, k/v ``2 L d d_kv``, SwiGLU MLP ``3 L d f``, attention scores and
    values ``2 L^2 d_q`` (full square, no causal halving); plus the LM head for the last position ``d V``. For
    in-LLM pruning (FastV) the first ``full_layers`` layers run on ``full_len`` tokens, the rest on ``seq_len``.
    """
    c = model.config.text_config
    d, f, nl, v = c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.vocab_size
    hd = getattr(c, "head_dim", None) or d // c.num_attention_heads
    dq, dkv = c.num_attention_heads * hd, (c.num_key_value_heads or c.num_attention_heads) * hd

    def per_layer(n: int) -> int:
        return 2 * n * d * dq + 2 * n * d * dkv + 3 * n * d * f + 2 * n**2 * dq

    k = min(full_layers, nl) if full_len is not None else 0
    return 2 * (k * per_layer(full_len or 0) + (nl - k) * per_layer(seq_len) + d * v)


@torch.no_grad()
def answer(
    model: Any,
    processor: Any,
    image: Any,
    prompt: str,
    *,
    method: str = DEFAULT_METHOD,
    keep: int = 64,
    max_new_tokens: int = 32,
    compare: bool = True,
    timing_repeats: int = 3,
    **hparams: Any,
) -> Answer:
    """Answer ``prompt`` about ``image`` with the pruned model (and the unpruned one when ``compare``).

    Prefill times in ``stats`` are the median of ``timing_repeats`` synchronised runs (``resprune.timing``);
    ``stats["timing_repeats"]`` says how many."""
    img, inputs = _inputs(processor, image, prompt)
    dev = model.device
    inputs = {k: v.to(dev) if torch.is_tensor(v) else v for k, v in inputs.items()}
    result = prune(model, inputs, method, keep, processor=processor, prompt=prompt, image_sizes=[img.size], **hparams)
    tok = processor.tokenizer
    gen_kw = dict(
        max_new_tokens=max_new_tokens, do_sample=False, return_dict_in_generate=True, pad_token_id=tok.pad_token_id
    )
    stats = dict(result.stats, timing_repeats=timing_repeats)
    with result.generation_context():
        t = measure(lambda: model(**result.generate_kwargs, use_cache=True), dev, repeats=timing_repeats)
        pre, stats["prefill_seconds_after"] = t.result, t.median
        t = measure(lambda: model.generate(**result.generate_kwargs, **gen_kw), dev)
        out, stats["generate_seconds_after"] = t.result, t.median
    n_prompt = result.generate_kwargs["input_ids"].shape[1] if "input_ids" in result.generate_kwargs else 0
    pruned = tok.decode(out.sequences[0, n_prompt:], skip_special_tokens=True).strip()
    stats["kv_cache_bytes_after"] = kv_cache_bytes(_cache_of(pre))[0]  # the prompt's cache, read after prefill
    stats["prefill_flops_after"] = prefill_flops(
        model, stats["seq_len_after"], full_len=stats["seq_len_before"], full_layers=stats.get("llm_layer", 0)
    )
    stats["prefill_flops_before"] = prefill_flops(model, stats["seq_len_before"])
    unpruned = None
    if compare:
        t = measure(lambda: model(**inputs, use_cache=True), dev, repeats=timing_repeats)
        pre, stats["prefill_seconds_before"] = t.result, t.median
        t = measure(lambda: model.generate(**inputs, **gen_kw), dev)
        full, stats["generate_seconds_before"] = t.result, t.median
        n_prompt = inputs["input_ids"].shape[1]
        unpruned = tok.decode(full.sequences[0, n_prompt:], skip_special_tokens=True).strip()
        stats["kv_cache_bytes_before"] = kv_cache_bytes(_cache_of(pre))[0]
    return Answer(pruned, unpruned, result, stats)
