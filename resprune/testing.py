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


OV_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>")
OV_TEMPLATE = (  # llava-onevision-qwen2-*-ov-hf's chat template (images first, then text); also LLaVA-Interleave's
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + ' ' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\\n' + content['text'] }}"
    "{% endfor %}{{ '<|im_end|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% endif %}"
)


def ov_tokenizer() -> Any:
    """A ``Qwen2Tokenizer`` with the special tokens of LLaVA-OneVision / LLaVA-Interleave (Qwen2 LM):
    ``<|im_start|>``, ``<|im_end|>``, ``<image>``, ``<video>``."""
    from transformers import Qwen2Tokenizer

    tok = _byte_level_tokenizer(Qwen2Tokenizer, OV_SPECIAL)
    tok.pad_token = "<|endoftext|>"
    return tok


def _ov_pinpoints(crop: int, most: int) -> list[list[int]]:
    """OneVision's any-resolution pinpoints: every (a * crop, b * crop) for a, b in 1..most."""
    return [[a * crop, b * crop] for a in range(1, most + 1) for b in range(1, most + 1)]


def _tiny_llava_onevision() -> tuple[Any, Any]:
    """LLaVA-OneVision's architecture at a small scale: SigLIP 56 px / 14 px (16 tokens per crop, strategy "full"),
    pinpoints up to 3 x 3 crops, ``anyres_max_4`` (a 640 x 480 image: 16 base + the unpadded 10 x 12 grid
    interpolated to 7 x 8, + 7 newlines = 79 tokens); a Qwen2 LM."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessorPil,
        Qwen2Config,
    )

    from .processors import OnevisionImageProcessor

    tok = ov_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in OV_SPECIAL}
    pins = _ov_pinpoints(56, 3)
    vision = dict(
        model_type="siglip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=56,
        patch_size=14,
    )
    text = Qwen2Config(**_text_config(len(tok), ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"]))
    cfg = LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=ids["<image>"],
        video_token_id=ids["<video>"],
        image_grid_pinpoints=pins,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_4",
    )
    model = LlavaOnevisionForConditionalGeneration(cfg)
    with torch.no_grad():
        model.model.image_newline.normal_(0, 1)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    ip = LlavaOnevisionImageProcessorPil(size={"height": 56, "width": 56}, image_grid_pinpoints=pins)
    proc = OnevisionImageProcessor(
        ip,
        tok,
        num_image_tokens=16,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_4",
        chat_template=OV_TEMPLATE,
    )
    return model, proc


FAMILIES: dict[str, Callable[[], tuple[Any, Any]]] = {
    "llava": _tiny_llava,
    "llava_next": _tiny_llava_next,
    "qwen2_5_vl": _tiny_qwen,
    "idefics3": _tiny_idefics3,
    "llava_onevision": _tiny_llava_onevision,
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


# ---------------------------------------------------------------------------------------------------------------
# Architecture twins of the presets: the published configuration of each checkpoint (its config.json,
# preprocessor_config.json / processor_config.json and chat template, written down here as facts from the hub's
# files), with only depth and width shrunk; the token counts, token geometry and processor path are the real ones.
# No hub file could be read here (no network): values marked "unsure" are recalled with the least confidence, and a
# note says where a public copy of the file (in another repository) was found to agree.

CLIP_L_336 = dict(  # openai/clip-vit-large-patch14-336, as in the LLaVA-1.5 / LLaVA-NeXT configs
    model_type="clip_vision_model",
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=336,
    patch_size=14,
    projection_dim=768,
)
SIGLIP_SO400M_384 = dict(  # google/siglip-so400m-patch14-384 (26 of its 27 layers), as in LLaVA-Interleave / OneVision
    model_type="siglip_vision_model",
    hidden_size=1152,
    intermediate_size=4304,
    num_hidden_layers=26,
    num_attention_heads=16,
    image_size=384,
    patch_size=14,
)
QWEN2_05B = dict(  # Qwen/Qwen2-0.5B(-Instruct), the LM of LLaVA-Interleave-0.5B and LLaVA-OneVision-0.5B
    model_type="qwen2",
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    max_position_embeddings=32768,
    rope_theta=1000000.0,
    tie_word_embeddings=True,
    vocab_size=152000,
)
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
OV_PINPOINTS = _ov_pinpoints(384, 6)  # 384 .. 2304 in both directions, 36 resolutions
LLAVA_TEMPLATE = (  # llava-1.5-*-hf: "USER: <image>\n{question} ASSISTANT:"
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' ' }}"
    "{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
VICUNA_TEMPLATE = (  # llava-v1.6-vicuna-7b-hf (unsure: the system line is recalled)
    "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'][0]['text'] }}"
    "{% else %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' ' }}"
    "{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
MISTRAL_TEMPLATE = (  # llava-v1.6-mistral-7b-hf: "[INST] <image>\n{question} [/INST]"
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{{ ' [/INST]' }}{% else %}{% for content in message['content'] %}{{ ' ' + content['text'] }}{% endfor %}"
    "{% endif %}{% endfor %}"
)
QWEN_VL_TEMPLATE = (  # Qwen2.5-VL-*-Instruct (images only): the default system prompt, then the turns
    "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ m['role'] }}\n"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN25_VL_VISION = dict(  # Qwen2.5-VL-3B / 7B vision config (the same ViT; out_hidden_size = the LM's width)
    depth=32,
    hidden_size=1280,
    intermediate_size=3420,
    num_heads=16,
    hidden_act="silu",
    in_chans=3,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31],
    tokens_per_second=2,
)
QWEN25_VL_IMAGES = dict(  # preprocessor_config.json of Qwen2.5-VL-*-Instruct
    min_pixels=3136,
    max_pixels=12845056,
    patch_size=14,
    temporal_patch_size=2,
    merge_size=2,
    image_mean=CLIP_MEAN,
    image_std=CLIP_STD,
)
SMOLVLM_VISION = dict(  # SmolVLM-256M / 500M: SigLIP base patch16 at 512 px (93 M parameters)
    model_type="idefics3_vision",
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    image_size=512,
    patch_size=16,
)
SMOLVLM_IMAGES = dict(  # preprocessor_config.json (Idefics3ImageProcessor, longest_edge 2048 = 4 x 512, tiles of 512:
    # as in public copies of the SmolVLM-500M-Instruct and SmolVLM2-500M files and of ibm-granite/granite-docling-
    # 258M's, a SmolVLM-256M derivative; the 256M model card: "64 visual tokens to encode image patches of size
    # 512x512". No copy of the SmolVLM-256M file itself was found)
    do_image_splitting=True,
    size={"longest_edge": 2048},
    max_image_size={"longest_edge": 512},
    image_mean=[0.5, 0.5, 0.5],
    image_std=[0.5, 0.5, 0.5],
)

PRESET_FACTS: dict[str, dict[str, Any]] = {
    "llava-1.5-7b": dict(
        config=dict(
            model_type="llava",
            vision_config=CLIP_L_336,
            text_config=dict(
                model_type="llama",
                hidden_size=4096,
                intermediate_size=11008,
                num_hidden_layers=32,
                num_attention_heads=32,
                num_key_value_heads=32,
                max_position_embeddings=4096,
                rms_norm_eps=1e-5,
                vocab_size=32064,
            ),
            image_token_index=32000,
            pad_token_id=32001,
            projector_hidden_act="gelu",
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
        ),
        processor=dict(
            cls="LlavaProcessor",
            image_processor=dict(
                cls="CLIPImageProcessorPil",
                size={"shortest_edge": 336},
                crop_size={"height": 336, "width": 336},
                image_mean=CLIP_MEAN,
                image_std=CLIP_STD,
            ),
            patch_size=14,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
        ),
        tokenizer="llama",
        chat_template=LLAVA_TEMPLATE,
    ),
    "llava-interleave-0.5b": dict(
        config=dict(
            model_type="llava",
            vision_config=SIGLIP_SO400M_384,
            text_config=QWEN2_05B,
            image_token_index=151646,
            projector_hidden_act="gelu",
            vision_feature_layer=-1,
            vision_feature_select_strategy="full",
            tie_word_embeddings=True,
        ),
        processor=dict(
            cls="LlavaProcessor",
            image_processor=dict(
                cls="SiglipImageProcessorPil",
                size={"height": 384, "width": 384},
                image_mean=[0.5, 0.5, 0.5],
                image_std=[0.5, 0.5, 0.5],
            ),
            patch_size=14,
            vision_feature_select_strategy="full",
            num_additional_image_tokens=0,  # SigLIP: no [CLS] (unsure whether the hub file states 0 or omits it)
        ),
        tokenizer="qwen2",
        chat_template=OV_TEMPLATE,  # unsure: recalled as the OneVision template's layout
    ),
    "llava-next-7b": dict(
        config=dict(
            model_type="llava_next",
            vision_config=CLIP_L_336,
            text_config=dict(
                model_type="llama",
                hidden_size=4096,
                intermediate_size=11008,
                num_hidden_layers=32,
                num_attention_heads=32,
                num_key_value_heads=32,
                max_position_embeddings=4096,
                rms_norm_eps=1e-5,
                vocab_size=32064,
            ),
            image_grid_pinpoints=NEXT_PINPOINTS,
            image_token_index=32000,
            pad_token_id=32001,
            projector_hidden_act="gelu",
            use_image_newline_parameter=True,
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
        ),
        processor=dict(
            cls="LlavaNextProcessor",
            image_processor=dict(
                cls="LlavaNextImageProcessorPil",
                size={"shortest_edge": 336},
                crop_size={"height": 336, "width": 336},
                image_grid_pinpoints=NEXT_PINPOINTS,
                image_mean=CLIP_MEAN,
                image_std=CLIP_STD,
            ),
            patch_size=14,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
        ),
        tokenizer="llama",
        chat_template=VICUNA_TEMPLATE,
    ),
    "llava-next-mistral-7b": dict(
        config=dict(
            model_type="llava_next",
            vision_config=CLIP_L_336,
            text_config=dict(
                model_type="mistral",
                hidden_size=4096,
                intermediate_size=14336,
                num_hidden_layers=32,
                num_attention_heads=32,
                num_key_value_heads=8,
                max_position_embeddings=32768,
                rms_norm_eps=1e-5,
                rope_theta=1000000.0,
                sliding_window=None,
                vocab_size=32064,
            ),
            image_grid_pinpoints=NEXT_PINPOINTS,
            image_token_index=32000,
            pad_token_id=32001,
            projector_hidden_act="gelu",
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
        ),
        processor=dict(
            cls="LlavaNextProcessor",
            image_processor=dict(
                cls="LlavaNextImageProcessorPil",
                size={"shortest_edge": 336},
                crop_size={"height": 336, "width": 336},
                image_grid_pinpoints=NEXT_PINPOINTS,
                image_mean=CLIP_MEAN,
                image_std=CLIP_STD,
            ),
            patch_size=14,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
        ),
        tokenizer="llama",
        chat_template=MISTRAL_TEMPLATE,
    ),
    "qwen2.5-vl-7b": dict(
        config=dict(
            model_type="qwen2_5_vl",
            vision_config=dict(QWEN25_VL_VISION, out_hidden_size=3584),
            text_config=dict(
                hidden_size=3584,
                intermediate_size=18944,
                num_hidden_layers=28,
                num_attention_heads=28,
                num_key_value_heads=4,
                max_position_embeddings=128000,
                rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1000000.0},
                tie_word_embeddings=False,
                vocab_size=152064,
            ),
            image_token_id=151655,
            video_token_id=151656,
            vision_start_token_id=151652,
            vision_end_token_id=151653,
        ),
        processor=dict(
            cls="QwenImageProcessor", image_processor=dict(cls="Qwen2VLImageProcessorPil", **QWEN25_VL_IMAGES)
        ),
        tokenizer="qwen2_vl",
        chat_template=QWEN_VL_TEMPLATE,
    ),
    "qwen2.5-vl-3b": dict(
        config=dict(
            model_type="qwen2_5_vl",
            vision_config=dict(QWEN25_VL_VISION, out_hidden_size=2048),
            text_config=dict(
                hidden_size=2048,
                intermediate_size=11008,
                num_hidden_layers=36,
                num_attention_heads=16,
                num_key_value_heads=2,
                max_position_embeddings=128000,
                rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1000000.0},
                tie_word_embeddings=True,
                vocab_size=151936,
            ),
            image_token_id=151655,
            video_token_id=151656,
            vision_start_token_id=151652,
            vision_end_token_id=151653,
        ),
        processor=dict(
            cls="QwenImageProcessor", image_processor=dict(cls="Qwen2VLImageProcessorPil", **QWEN25_VL_IMAGES)
        ),
        tokenizer="qwen2_vl",
        chat_template=QWEN_VL_TEMPLATE,
    ),
    "smolvlm-256m": dict(
        config=dict(
            model_type="idefics3",
            vision_config=SMOLVLM_VISION,
            text_config=dict(
                model_type="llama",
                hidden_size=576,
                intermediate_size=1536,
                num_hidden_layers=30,
                num_attention_heads=9,
                num_key_value_heads=3,
                max_position_embeddings=8192,
                rms_norm_eps=1e-5,
                rope_theta=100000.0,
                tie_word_embeddings=False,
                vocab_size=49280,
            ),
            scale_factor=4,
            image_token_id=49190,  # as in public copies of SmolVLM configs and Idefics3 test fixtures
        ),
        processor=dict(
            cls="Idefics3Processor",
            image_processor=dict(cls="Idefics3ImageProcessorPil", **SMOLVLM_IMAGES),
            image_seq_len=64,
        ),
        tokenizer="smolvlm",
        chat_template=IDEFICS3_TEMPLATE,
    ),
    "smolvlm-500m": dict(
        config=dict(
            model_type="idefics3",
            vision_config=SMOLVLM_VISION,
            text_config=dict(
                model_type="llama",
                hidden_size=960,  # SmolLM2-360M's shape, as in public copies of the SmolVLM(2)-500M config
                intermediate_size=2560,
                num_hidden_layers=32,
                num_attention_heads=15,
                num_key_value_heads=5,
                max_position_embeddings=8192,
                rms_norm_eps=1e-5,
                rope_theta=100000.0,
                tie_word_embeddings=False,
                vocab_size=49280,
            ),
            scale_factor=4,
            image_token_id=49190,  # as in public copies of SmolVLM configs and Idefics3 test fixtures
        ),
        processor=dict(
            cls="Idefics3Processor",
            image_processor=dict(cls="Idefics3ImageProcessorPil", **SMOLVLM_IMAGES),
            image_seq_len=64,
        ),
        tokenizer="smolvlm",
        chat_template=IDEFICS3_TEMPLATE,
    ),
    "llava-onevision-0.5b": dict(
        config=dict(
            model_type="llava_onevision",
            vision_config=SIGLIP_SO400M_384,
            text_config=QWEN2_05B,
            image_grid_pinpoints=OV_PINPOINTS,
            image_token_index=151646,
            video_token_index=151647,
            projector_hidden_act="gelu",
            vision_aspect_ratio="anyres_max_9",
            vision_feature_layer=-1,
            vision_feature_select_strategy="full",
            tie_word_embeddings=True,
        ),
        processor=dict(
            cls="OnevisionImageProcessor",
            image_processor=dict(
                cls="LlavaOnevisionImageProcessorPil",
                size={"height": 384, "width": 384},
                image_grid_pinpoints=OV_PINPOINTS,
                image_mean=[0.5, 0.5, 0.5],
                image_std=[0.5, 0.5, 0.5],
            ),
            num_image_tokens=729,
            vision_feature_select_strategy="full",
            vision_aspect_ratio="anyres_max_9",
        ),
        tokenizer="qwen2",
        chat_template=OV_TEMPLATE,
    ),
}
"""Preset name (``resprune.loading.PRESETS``) -> the published facts of its checkpoint: ``config`` (config.json, the
keys that matter), ``processor`` (processor class and settings, its image processor's), the ``tokenizer`` kind
(whose special tokens the twin's tiny tokenizer carries) and the ``chat_template``."""

# text: 3 layers (FastV prunes after layer K = 2 by default)
_SHRINK_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4)
_SHRINK_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
_SHRINK_QWEN_VISION = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, fullatt_block_indexes=[1])


_EOS = {"qwen2": "<|im_end|>", "qwen2_vl": "<|im_end|>", "smolvlm": "<end_of_utterance>", "llama": "</s>"}


def _twin_tokenizer(kind: str) -> Any:
    if kind == "llama":
        from .scenes.model import build_tokenizer

        return build_tokenizer()  # LlamaTokenizer with <image> and <pad>, as the llava-hf checkpoints
    return {"qwen2": ov_tokenizer, "qwen2_vl": qwen_tokenizer, "smolvlm": idefics3_tokenizer}[kind]()


def twin_config(name: str, tokenizer: Any) -> Any:
    """The published config of preset ``name`` with depth and width shrunk (text: 3 layers of width 64; vision: 2
    layers of width 32), everything else as published; token ids re-pointed at ``tokenizer``'s special tokens."""
    from transformers import AutoConfig

    facts = PRESET_FACTS[name]["config"]
    cfg = {k: v for k, v in facts.items() if k not in ("vision_config", "text_config")}
    text = dict(facts["text_config"], **_SHRINK_TEXT, vocab_size=len(tokenizer))
    pub = facts["text_config"]
    text["num_key_value_heads"] = 4 if pub["num_key_value_heads"] == pub["num_attention_heads"] else 2  # MHA or GQA
    if "rope_parameters" in text:  # Qwen's M-RoPE sections must sum to head_dim / 2 (16 / 2): [16, 24, 24] / 8
        text["rope_parameters"] = dict(text["rope_parameters"], mrope_section=[2, 3, 3])
    kind = PRESET_FACTS[name]["tokenizer"]
    text["pad_token_id"] = tokenizer.pad_token_id
    text["bos_token_id"] = tokenizer.convert_tokens_to_ids("<s>" if kind == "llama" else "<|endoftext|>")
    text["eos_token_id"] = tokenizer.convert_tokens_to_ids(_EOS[kind])
    vision = dict(facts["vision_config"])
    if cfg["model_type"] == "qwen2_5_vl":
        vision.update(_SHRINK_QWEN_VISION, out_hidden_size=text["hidden_size"])
        text.pop("model_type", None)
    else:
        vision.update(_SHRINK_VISION)
    ids = {
        "image_token_index": "<image>",
        "image_token_id": "<image>" if "<image>" in tokenizer.get_vocab() else "<|image_pad|>",
        "video_token_index": "<video>",
        "video_token_id": "<|video_pad|>",
        "vision_start_token_id": "<|vision_start|>",
        "vision_end_token_id": "<|vision_end|>",
    }
    for key, token in ids.items():
        if key in cfg:
            cfg[key] = tokenizer.convert_tokens_to_ids(token)
    if "pad_token_id" in cfg:
        cfg["pad_token_id"] = tokenizer.pad_token_id
    model_type = cfg.pop("model_type")
    return AutoConfig.for_model(model_type, vision_config=vision, text_config=text, **cfg)


def twin_processor(name: str, tokenizer: Any) -> Any:
    """The published processor of preset ``name`` (class, settings, image processor, chat template) around
    ``tokenizer``."""
    import transformers

    from . import processors

    facts = dict(PRESET_FACTS[name]["processor"])
    ip_facts = dict(facts.pop("image_processor"))
    ip = getattr(transformers, ip_facts.pop("cls"))(**ip_facts)
    cls_name = facts.pop("cls")
    cls = getattr(processors, cls_name, None) or getattr(transformers, cls_name)
    return cls(ip, tokenizer, chat_template=PRESET_FACTS[name]["chat_template"], **facts)


def build_twin(name: str, folder: Any, *, seed: int = 0) -> Any:
    """Save the architecture twin of preset ``name`` (random weights, ``twin_config`` / ``twin_processor``) in the
    hub's folder layout under ``folder`` (``save_pretrained`` of model and processor); ``load_model(folder)``
    loads it. Returns the folder as a ``Path``."""
    from pathlib import Path

    from transformers import AutoModelForImageTextToText

    if name not in PRESET_FACTS:
        raise ValueError(f"name must be one of {tuple(PRESET_FACTS)}, got {name!r}")
    tok = _twin_tokenizer(PRESET_FACTS[name]["tokenizer"])
    torch.manual_seed(seed)
    cfg = twin_config(name, tok)
    model = AutoModelForImageTextToText.from_config(cfg)
    newline = getattr(model.model, "image_newline", None)
    if newline is not None:  # a distinct vector, as trained (the init is near zero)
        with torch.no_grad():
            newline.normal_(0, 1)
    _sensitise(model)
    gen = model.generation_config
    gen.eos_token_id = tok.convert_tokens_to_ids(_EOS[PRESET_FACTS[name]["tokenizer"]])
    gen.pad_token_id = tok.pad_token_id
    folder = Path(folder)
    model.save_pretrained(folder)
    twin_processor(name, tok).save_pretrained(folder)
    return folder


class LoopbackHub:
    """A Hugging Face Hub on 127.0.0.1 that serves local folders as model repositories, for tests of the download
    path without a network: the routes ``huggingface_hub`` and ``transformers`` use (repository info, the file
    tree, HEAD and GET of ``resolve`` with commit, ETag and length headers, ranges, ``EntryNotFound`` 404s).

        with LoopbackHub({"org/model": folder}) as hub:   # hub.url -> HF_ENDPOINT
            ...

    ``hub.requests`` records ``(method, path)`` of every request."""

    SHA = "0123456789abcdef0123456789abcdef01234567"

    def __init__(self, repos: dict[str, Any]) -> None:
        from pathlib import Path

        self.repos = {k: Path(v) for k, v in repos.items()}
        self.requests: list[tuple[str, str]] = []
        self.url = ""

    def _files(self, repo: str) -> dict[str, Any]:
        root = self.repos[repo]
        return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}

    def __enter__(self) -> LoopbackHub:
        import hashlib
        import re
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import unquote, urlsplit

        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # noqa: ANN401 - quiet
                pass

            def _send(self, code: int, body: bytes, headers: dict[str, str], head: bool) -> None:
                self.send_response(code)
                for k, v in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(k, v)
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _missing(self, code: str, head: bool) -> None:
                self._send(
                    404, b'{"error": "not found"}', {"X-Error-Code": code, "Content-Type": "application/json"}, head
                )

            def _route(self, head: bool) -> None:
                path = unquote(urlsplit(self.path).path)
                hub.requests.append((self.command, path))
                m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/[^/]+)?", path)
                if m:
                    if m[1] not in hub.repos:
                        return self._missing("RepoNotFound", head)
                    info = {"id": m[1], "sha": hub.SHA, "siblings": [{"rfilename": f} for f in hub._files(m[1])]}
                    return self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, head)
                m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/[^/]+(?:/(.+))?", path)
                if m:
                    if m[1] not in hub.repos:
                        return self._missing("RepoNotFound", head)
                    under = f"{m[2].strip('/')}/" if m[2] else ""
                    tree = [
                        {
                            "type": "file",
                            "path": f,
                            "size": p.stat().st_size,
                            "oid": hashlib.sha1(p.read_bytes()).hexdigest(),
                        }
                        for f, p in hub._files(m[1]).items()
                        if f.startswith(under)
                    ]
                    if under and not tree:  # no such folder
                        return self._missing("EntryNotFound", head)
                    return self._send(200, json.dumps(tree).encode(), {"Content-Type": "application/json"}, head)
                m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/[^/]+/(.+)", path)
                if not m or m[1] not in hub.repos:
                    return self._missing("RepoNotFound", head)
                f = hub._files(m[1]).get(m[2])
                if f is None:
                    return self._missing("EntryNotFound", head)
                data = f.read_bytes()
                headers = {
                    "ETag": f'"{hashlib.sha1(data).hexdigest()}"',
                    "X-Repo-Commit": hub.SHA,
                    "Content-Type": "application/octet-stream",
                    "Accept-Ranges": "bytes",
                }
                rng = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
                if rng and not head:
                    start = int(rng[1])
                    end = int(rng[2]) + 1 if rng[2] else len(data)
                    headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
                    return self._send(206, data[start:end], headers, head)
                return self._send(200, data, headers, head)

            def do_HEAD(self) -> None:  # noqa: N802
                self._route(head=True)

            def do_GET(self) -> None:  # noqa: N802
                self._route(head=False)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self

    def __exit__(self, *exc: Any) -> None:  # noqa: ANN401
        self._server.shutdown()
        self._server.server_close()
