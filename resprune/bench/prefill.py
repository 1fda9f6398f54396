"""``python -m resprune.bench prefill``: pruned vs unpruned prefill on a LLaVA-1.5-7B-shaped language model.

The model is a real ``LlavaForConditionalGeneration`` with random weights: LLaVA-1.5-7B's language model shape
(Vicuna-7B: hidden 4096, 32 heads, SwiGLU 11008, vocabulary 32064), but only ``--layers`` decoder layers (default 2:
what fits a laptop's memory and time; the output says how many), and a small CLIP tower at LLaVA-1.5's 336 px /
14 px, so one image gives the real 576 visual tokens. The prompt is LLaVA-1.5's system prompt plus a question
(``TEXT_TOKENS`` text tokens in all).

For each budget K, in one run, with the timings interleaved (so that load from other processes hits all alike):

- ``resprune.prune`` (the real path: projector features, selection, gather) and one prefill forward of the pruned
  sequence (``use_cache=True``, last-position logits, as ``generate`` does); the unpruned prefill is K = 576;
- measured speedup = unpruned / pruned prefill time, next to the FLOPs bound = FLOPs(unpruned) / FLOPs(pruned)
  (``resprune.generate.prefill_flops``, same layer count);
- KV-cache bytes read from the cache after prefill, and the same extrapolated to the 32 layers of the real model in
  float16;
- GEMM ceiling = the speedup of one bare FFN-shaped product ``(L x hidden) @ (hidden x ffn)`` at the unpruned vs
  the pruned length L, timed in the same rounds: what this machine's matrix multiply gives for that shrink of the
  token count (small products run at lower FLOP/s, on a CPU especially), so ``measured / ceiling`` near 100 % says
  the pruned path adds no overhead of its own;
- selection overhead = ResPrune's selection time (no text query: the benchmark has no tokenizer) / the unpruned
  prefill time extrapolated to 32 layers (per-layer
  time x 32; the embedding and head are not scaled).

Targets (issue #3): measured speedup >= 0.9 x the FLOPs bound at K = 64; selection overhead <= 2 %.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import warnings
from typing import Any

import torch

from ..generate import _cache_of, kv_cache_bytes, prefill_flops
from ..pipeline import prune
from ..timing import measure

TEXT_TOKENS = 58  # LLaVA-1.5's system prompt (~35 tokens with BOS and USER:) + a question + " ASSISTANT:"
REAL_LAYERS = 32
QUESTION = "What is the man in the red shirt holding?"


def build(
    layers: int = 2,
    hidden: int = 4096,
    heads: int = 32,
    ffn: int = 11008,
    vocab: int = 32064,
    image_size: int = 336,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Any:
    """A ``LlavaForConditionalGeneration`` with LLaVA-1.5-7B's LM shape and ``layers`` layers (random weights) on
    ``device``; ``image_size`` 336 gives LLaVA-1.5's 576 visual tokens, 756 gives 2916 (LLaVA-NeXT-7B's ~2880)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(0)
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=14,
        ),
        text_config=LlamaConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=ffn,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            max_position_embeddings=4096,
        ),
        image_token_id=vocab - 1,
        vision_feature_layer=-2,
    )
    cfg.text_config._attn_implementation = "sdpa"
    with torch.device(device):  # random init where the model lives (a 32-layer 7B model would be slow on the CPU)
        model = LlavaForConditionalGeneration(cfg)
    return model.to(dtype).eval()


def inputs_for(model: Any, text_tokens: int = TEXT_TOKENS, seed: int = 0) -> dict[str, torch.Tensor]:
    """Processor-like inputs: ``text_tokens`` random text ids around 576 image placeholders, one 336 px image."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    n = (cfg.vision_config.image_size // cfg.vision_config.patch_size) ** 2
    before = 35
    ids = torch.randint(3, cfg.text_config.vocab_size - 2, (1, text_tokens), generator=g)
    ids = torch.cat([ids[:, :before], torch.full((1, n), cfg.image_token_id), ids[:, before:]], 1)
    pv = torch.randn(1, 3, cfg.vision_config.image_size, cfg.vision_config.image_size, generator=g)
    dev, dtype = model.device, model.dtype
    return {"input_ids": ids.to(dev), "attention_mask": torch.ones_like(ids).to(dev), "pixel_values": pv.to(dev, dtype)}


def run(
    keeps: tuple[int, ...] = (576, 192, 128, 64), layers: int = 2, repeats: int = 5, model: Any = None
) -> dict[str, Any]:
    """Measure every budget; returns ``{"rows": [...], "setup": {...}}``."""
    model = model if model is not None else build(layers)
    layers = model.config.text_config.num_hidden_layers
    inputs = inputs_for(model)
    n = int((inputs["input_ids"] == model.config.image_token_id).sum())
    keeps = tuple(sorted({min(k, n) for k in keeps} | {n}, reverse=True))  # the unpruned prefill is the reference
    results = {}
    cfg = model.config.text_config
    g = torch.Generator().manual_seed(1)
    dev, dtype = model.device, model.dtype
    w = torch.randn(cfg.hidden_size, cfg.intermediate_size, generator=g).to(dev, dtype)  # one FFN-shaped weight
    with torch.no_grad():
        for k in keeps:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # keep = N: "every token is kept"
                res = prune(model, inputs, "resprune", k, prompt=QUESTION)
            out = model(**res.generate_kwargs, use_cache=True, logits_to_keep=1)
            nbytes, length = kv_cache_bytes(_cache_of(out))
            seq = res.stats["seq_len_after"]
            results[k] = {"res": res, "kv_bytes": nbytes, "kv_len": length, "prefill": [], "select": [], "gemm": []}
            results[k]["x"] = torch.randn(seq, cfg.hidden_size, generator=g).to(dev, dtype)
        for _ in range(repeats):  # interleaved: every budget once per round
            for k in keeps:
                r = results[k]
                r["gemm"].append(measure(lambda: torch.mm(r["x"], w), dev).seconds[0])  # noqa: B023
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    res = prune(model, inputs, "resprune", k, prompt=QUESTION)
                r["select"].append(res.stats["selection_seconds"])
                gen = r["res"].generate_kwargs
                r["prefill"].append(measure(lambda: model(**gen, use_cache=True, logits_to_keep=1), dev).seconds[0])  # noqa: B023
    base = statistics.median(results[n]["prefill"])
    base_gemm = statistics.median(results[n]["gemm"])
    base_len = results[n]["res"].stats["seq_len_after"]
    per_layer_kv = 2 * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads)  # K and V values
    rows = []
    for k in keeps:
        r = results[k]
        t = statistics.median(r["prefill"])
        seq = r["res"].stats["seq_len_after"]
        sel = statistics.median(r["select"]) if k < n else 0.0
        bound = prefill_flops(model, base_len) / prefill_flops(model, seq)
        rows.append(
            {
                "keep": k,
                "seq_len": seq,
                "prefill_s": t,
                "speedup": base / t,
                "flops_bound": bound,
                "efficiency": (base / t) / bound,
                "gemm_ceiling": base_gemm / statistics.median(r["gemm"]),
                "vs_ceiling": (base / t) / (base_gemm / statistics.median(r["gemm"])),
                "kv_bytes": r["kv_bytes"],
                "kv_bytes_32l_fp16": per_layer_kv * seq * REAL_LAYERS * 2,
                "selection_s": sel,
                "selection_overhead": sel / (base / layers * REAL_LAYERS),
            }
        )
    setup = {
        "layers": layers,
        "real_layers": REAL_LAYERS,
        "hidden": cfg.hidden_size,
        "heads": cfg.num_attention_heads,
        "ffn": cfg.intermediate_size,
        "visual_tokens": n,
        "text_tokens": inputs["input_ids"].shape[1] - n,
        "repeats": repeats,
        "machine": _machine(dev),
        "dtype": str(dtype).replace("torch.", ""),
        "torch": torch.__version__,
    }
    return {"rows": rows, "setup": setup}


def _machine(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)}, torch {torch.__version__}"
    return f"{platform.machine()}, {torch.get_num_threads()} torch threads"


def format_table(summary: dict[str, Any]) -> str:
    s = summary["setup"]
    lines = [
        f"LLaVA-1.5-7B LM shape (hidden {s['hidden']}, {s['heads']} heads, FFN {s['ffn']}), {s['layers']} of "
        f"{s['real_layers']} layers, {s['visual_tokens']} visual + {s['text_tokens']} text tokens, median of "
        f"{s['repeats']}; {s.get('dtype', 'float32')} on {s['machine']}",
        "",
        "| keep K | sequence | prefill speedup (measured) | FLOPs bound | measured / bound | GEMM ceiling | "
        f"measured / ceiling | KV cache (measured, {s['layers']} layers fp32) | KV cache (32 layers fp16) | "
        "ResPrune selection / 32-layer prefill |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["rows"]:
        lines.append(
            f"| {r['keep']} | {r['seq_len']} | {r['speedup']:.2f}x | {r['flops_bound']:.2f}x | "
            f"{100 * r['efficiency']:.0f} % | {r['gemm_ceiling']:.2f}x | {100 * r['vs_ceiling']:.0f} % | "
            f"{r['kv_bytes'] / 2**20:.1f} MiB | "
            f"{r['kv_bytes_32l_fp16'] / 2**20:.0f} MiB | "
            + ("-" if r["selection_s"] == 0 else f"{100 * r['selection_overhead']:.2f} %")
            + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m resprune.bench prefill", description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=2, help="decoder layers to build (the real model has 32)")
    p.add_argument("--keep", type=int, nargs="+", default=[576, 192, 128, 64])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--hidden", type=int, default=4096, help="(smaller only for a quick check)")
    p.add_argument("--ffn", type=int, default=11008)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps or auto")
    p.add_argument("--dtype", default=None, choices=("float32", "float16", "bfloat16"), help="default: by device")
    p.add_argument("--image-size", type=int, default=336, help="336: 576 visual tokens; 756: 2916 (LLaVA-NeXT size)")
    a = p.parse_args(argv)
    from ..loading import ModelLoadError, default_dtype, resolve_device

    try:
        dev = resolve_device(a.device)
    except ModelLoadError as e:
        p.error(f"--device: {e}")
    if a.image_size < 14 or a.image_size % 14:
        p.error(f"--image-size must be a positive multiple of 14 (the patch size), got {a.image_size}")
    dtype = getattr(torch, a.dtype) if a.dtype else default_dtype(dev)
    model = build(a.layers, a.hidden, a.heads, a.ffn, image_size=a.image_size, device=str(dev), dtype=dtype)
    summary = run(tuple(sorted(set(a.keep), reverse=True)), a.layers, a.repeats, model=model)
    print(format_table(summary))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(summary, f, indent=1)
    return 0
