"""Tiny random-weight models of every supported family, built from transformers config classes (no download).

They have the real model classes, processors and token layouts at a small scale, for tests and for trying the
adapters without a checkpoint::

    model, processor = resprune.testing.tiny_model("qwen2_5_vl")

``sensitive=True`` (the default) scales the language model's weights so that logits depend visibly on positions
and masks: with the default initialisation a wrong position id changes the logits by ~1e-3 only.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import torch

QWEN_SPECIAL = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


IDEFICS3_SPECIAL = (
    "<|endoftext|>",
    "<|im_start|>",
    "<end_of_utterance>",
    "<fake_token_around_image>",
    "<image>",
    "<global-img>",
    *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)),
)
IDEFICS3_TEMPLATE = (  # SmolVLM-Instruct's chat template (images and text)
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def _text_config(vocab: int, pad: int, **extra: Any) -> dict[str, Any]:
    return dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        pad_token_id=pad,
        **extra,
    )


def _clip(image_size: int, patch: int) -> Any:
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch,
    )


def _sensitise(model: Any) -> Any:
    with torch.no_grad():
        for n, p in model.get_decoder().named_parameters():
            if p.dim() == 2 and "embed" not in n:
                p.mul_(10)
    return model


def qwen_tokenizer() -> Any:
    """A ``Qwen2Tokenizer`` from an in-memory byte-level BPE with Qwen's special tokens."""
    from transformers import Qwen2Tokenizer

    return _byte_level_tokenizer(Qwen2Tokenizer, QWEN_SPECIAL)


def idefics3_tokenizer() -> Any:
    """A ``GPT2Tokenizer`` (SmolVLM's tokenizer class) from an in-memory byte-level BPE with SmolVLM's special
    tokens: ``<image>``, ``<fake_token_around_image>``, ``<global-img>``, the 36 ``<row_i_col_j>`` tile tags."""
    from transformers import GPT2Tokenizer

    tok = _byte_level_tokenizer(GPT2Tokenizer, IDEFICS3_SPECIAL)
    tok.pad_token = "<|endoftext|>"
    return tok


def _byte_level_tokenizer(cls: Any, special: tuple[str, ...]) -> Any:
    """``cls(vocab, merges)`` of a byte-level BPE trained in memory on the scenes corpus, ``special`` added."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, trainers

    from .scenes.model import _corpus

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(
        _corpus(),
        trainers.BpeTrainer(
            vocab_size=500,
            special_tokens=list(special),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    m = json.loads(tok.to_str())["model"]
    qt = cls(vocab=m["vocab"], merges=[tuple(x) for x in m["merges"]])
    qt.add_tokens([AddedToken(t, special=True, normalized=False) for t in special], special_tokens=True)
    return qt


def tiny_model(family: str, *, sensitive: bool = True, seed: int = 0) -> tuple[Any, Any]:
    """``(model, processor)`` of ``family`` (a key of ``FAMILIES``) with random weights, in eval mode.

    ``sensitive``: scale the language model's weights so that positions and masks visibly change the logits.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {tuple(FAMILIES)}, got {family!r}")
    torch.manual_seed(seed)
    model, proc = FAMILIES[family]()
    model.eval()
    return (_sensitise(model) if sensitive else model), proc


def _llama_text() -> tuple[Any, Any]:
    from transformers import LlamaConfig

    from .scenes.model import build_tokenizer

    tok = build_tokenizer()
    return tok, LlamaConfig(**_text_config(len(tok), tok.pad_token_id))


def _tiny_llava() -> tuple[Any, Any]:
    """CLIP 64 px / 8 px patches: 64 visual tokens; a Llama LM."""
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    from .scenes.model import CHAT_TEMPLATE

    tok, text = _llama_text()
    cfg = LlavaConfig(vision_config=_clip(64, 8), text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"))
    model = LlavaForConditionalGeneration(cfg)
    ip = CLIPImageProcessorPil(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    proc = LlavaProcessor(
        image_processor=ip,
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    return model, proc


def _tiny_llava_next() -> tuple[Any, Any]:
    """CLIP 56 px / 14 px: 16 tokens per crop, pinpoints (56, 112), (112, 56), (112, 112): a 640 x 480 image gives
    16 base + 8 x 8 hi-res - padding rows + one newline per row; a Llama LM."""
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
    )

    from .scenes.model import CHAT_TEMPLATE

    tok, text = _llama_text()
    pins = [[56, 112], [112, 56], [112, 112]]
    cfg = LlavaNextConfig(
        vision_config=_clip(56, 14),
        text_config=text,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pins,
    )
    model = LlavaNextForConditionalGeneration(cfg)
    with torch.no_grad():  # the newline parameter starts at zero-mean noise; make it a distinct vector
        model.model.image_newline.normal_(0, 1)
    ip = LlavaNextImageProcessorPil(
        size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}, image_grid_pinpoints=pins
    )
    proc = LlavaNextProcessor(
        image_processor=ip,
        tokenizer=tok,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    return model, proc


def _tiny_qwen() -> tuple[Any, Any]:
    """14 px patches, 2 x 2 merge, at most 64 merged tokens per image; a Qwen2.5-VL LM with M-RoPE."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessorPil

    from .processors import QwenImageProcessor

    tok = qwen_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL}
    cfg = Qwen2_5_VLConfig(
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=64,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=56,
            fullatt_block_indexes=[1],
        ),
        text_config=_text_config(
            len(tok),
            ids["<|endoftext|>"],
            rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e6},
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    model = Qwen2_5_VLForConditionalGeneration(cfg)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.bos_token_id = ids["<|endoftext|>"]
    ip = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 64)
    proc = QwenImageProcessor(ip, tok, chat_template=QWEN_TEMPLATE)
    return model, proc


def _tiny_idefics3() -> tuple[Any, Any]:
    """SmolVLM's architecture (``Idefics3ForConditionalGeneration``): a SigLIP tower on 64 px tiles of 4 px patches
    (16 x 16), pixel shuffle with scale factor 4 (as SmolVLM): 4 x 4 = 16 tokens per tile; the image's longest edge
    resized to 128 px, split into 64 px tiles plus the global image (a 640 x 480 image: 2 x 2 tiles + global = 80
    tokens); a Llama LM."""
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
        LlamaConfig,
    )

    tok = idefics3_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<end_of_utterance>", "<image>")}
    text = LlamaConfig(
        **_text_config(
            len(tok), ids["<|endoftext|>"], bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<end_of_utterance>"]
        )
    )
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    cfg = Idefics3Config(
        vision_config=dict(vision, image_size=64, patch_size=4),
        text_config=text,
        scale_factor=4,
        image_token_id=ids["<image>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    model = Idefics3ForConditionalGeneration(cfg)
    model.generation_config.eos_token_id = ids["<end_of_utterance>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.bos_token_id = ids["<|endoftext|>"]
    ip = Idefics3ImageProcessorPil(
        do_image_splitting=True, size={"longest_edge": 128}, max_image_size={"longest_edge": 64}
    )
    proc = Idefics3Processor(ip, tok, image_seq_len=16, chat_template=IDEFICS3_TEMPLATE)
    return model, proc


FAMILIES: dict[str, Callable[[], tuple[Any, Any]]] = {
    "llava": _tiny_llava,
    "llava_next": _tiny_llava_next,
    "qwen2_5_vl": _tiny_qwen,
    "idefics3": _tiny_idefics3,
}
"""Family key -> builder of its tiny ``(model, processor)``; the test suite is parametrized over this table (the key
is the family's adapter's ``family``)."""


def generate_checking_first_step(model: Any, result: Any, new_tokens: int) -> Any:
    """Greedy ``model.generate`` of exactly ``new_tokens`` tokens on a pre-LLM ``PruneResult``'s
    ``generate_kwargs``, with per-step logits; asserts that the first step equals a plain forward on the pruned
    sequence (float32 tolerance) and returns the generate output (for the cache and the later steps)."""
    import torch

    out = model.generate(
        **result.generate_kwargs,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
    )
    with torch.no_grad():
        plain = model(**result.generate_kwargs).logits[:, -1]
    torch.testing.assert_close(out.logits[0], plain, rtol=1e-5, atol=1e-5)
    return out
