"""The offline default model: a small, real ``LlavaForConditionalGeneration`` for the scene world.

Everything is built without any download: a byte-fallback BPE tokenizer trained in memory on the question
templates (so any unseen word still tokenizes), a PIL CLIP image processor, a ``LlavaProcessor`` with a chat
template, and a CLIP-style vision tower + Llama-style language model. Saved with ``save_pretrained`` and loaded
with ``from_pretrained``, it goes through exactly the adapter code path of real LLaVA-1.5 checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .world import COLOURS, IMAGE_SIZE, NUMBERS, SHAPES

PATCH = 16  # 192 / 16 = 12 x 12 = 144 visual tokens
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: "
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<image>\n{% elif c['type'] == 'text' %}"
    "{{ c['text'] }}{% endif %}{% endfor %}{% if message['content'] is string %}{{ message['content'] }}{% endif %}"
    " {% else %}ASSISTANT: {% for c in message['content'] %}{{ c['text'] }}{% endfor %}</s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
DEFAULT_DIR = Path(__file__).resolve().parent.parent.parent / "assets" / "scenes-model"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer_config.json", "processor_config.json")


def _corpus() -> list[str]:
    import random

    from .world import questions, render, sample  # noqa: F401  (the templates' words, many times)

    lines = []
    for seed in range(400):
        for q in sample(seed).questions:
            lines.append(f"USER: {q.text} ASSISTANT: {q.answer}")
    words = list(SHAPES) + list(COLOURS) + list(NUMBERS) + ["yes", "no", "left", "right", "above", "below"]
    rng = random.Random(0)
    lines += [" ".join(rng.choice(words) for _ in range(6)) for _ in range(200)]
    return lines


def build_tokenizer():  # noqa: ANN201
    """A LlamaTokenizer (BPE with byte fallback) trained in memory on the scene-world texts."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AddedToken, LlamaTokenizer

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tok.train_from_iterator(
        _corpus(), trainers.BpeTrainer(vocab_size=420, special_tokens=specials, show_progress=False)
    )
    m = json.loads(tok.to_str())["model"]
    llama = LlamaTokenizer(
        vocab=m["vocab"], merges=[tuple(x.split(" ")) if isinstance(x, str) else tuple(x) for x in m["merges"]]
    )
    llama.add_tokens([AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
    llama.add_special_tokens({"pad_token": "<pad>"})
    return llama


def build_processor():  # noqa: ANN201
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    ip = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    return LlavaProcessor(
        image_processor=ip,
        tokenizer=build_tokenizer(),
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )


def build_config(
    tokenizer: Any,
    *,
    vision_width: int = 128,
    vision_layers: int = 4,
    text_width: int = 128,
    text_layers: int = 4,
) -> Any:
    """The shipped architecture: CLIP-style vision tower (192 px, 16-px patches: 144 visual tokens + CLS), LLaVA-1.5
    2-layer GELU projector, Llama-style language model (RoPE, SwiGLU, grouped-query attention)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        hidden_size=vision_width,
        intermediate_size=4 * vision_width,
        num_hidden_layers=vision_layers,
        num_attention_heads=vision_width // 32,
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
        projection_dim=vision_width,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=text_width,
        intermediate_size=3 * text_width,
        num_hidden_layers=text_layers,
        num_attention_heads=text_width // 32,
        num_key_value_heads=text_width // 64,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    cfg = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    cfg.pad_token_id = tokenizer.pad_token_id
    return cfg


class ScenesModelError(OSError):
    """The scenes checkpoint folder is missing or unusable; the message names the file."""


class ScenesModelMissing(ScenesModelError, FileNotFoundError):
    """The checkpoint folder or one of its files does not exist."""


class ScenesModelCorrupt(ScenesModelError, ValueError):
    """A checkpoint file exists but cannot be read."""


def _check_files(path: Path) -> None:
    """Raise ``ScenesModelMissing`` / ``ScenesModelCorrupt`` naming the first unusable file of ``path``."""
    if not path.is_dir():
        raise ScenesModelMissing(
            f"offline model folder not found: {str(path)!r} (expected the checkpoint under "
            "assets/scenes-model; train it with `python -m resprune.scenes.train`)"
        )
    for name in REQUIRED_FILES:
        if not (path / name).is_file():
            raise ScenesModelMissing(f"offline model file missing: {name!r} in {str(path)!r}")
    for name in ("config.json", "tokenizer_config.json", "processor_config.json"):
        try:
            json.loads((path / name).read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise ScenesModelCorrupt(f"offline model file {name!r} in {str(path)!r} is not valid JSON: {e}") from None
    raw = (path / "model.safetensors").read_bytes()[:8]
    header = int.from_bytes(raw, "little") if len(raw) == 8 else -1
    if not 0 < header < (path / "model.safetensors").stat().st_size:
        raise ScenesModelCorrupt(f"offline model file 'model.safetensors' in {str(path)!r} is not a safetensors file")


def trained_world(path: str | Path = DEFAULT_DIR) -> int:
    """The scene world the checkpoint in ``path`` was trained on (its ``training.json``; 1 when it says none)."""
    meta = Path(path) / "training.json"
    if not meta.is_file():
        return 1
    return int(json.loads(meta.read_text()).get("world", 1))


def load_scenes_model(path: str | Path = DEFAULT_DIR):  # noqa: ANN201
    """Load the shipped offline model and its processor (no network), float32, in eval mode.

    Raises:
        ScenesModelMissing: (a ``FileNotFoundError``) the folder or a required file is missing; names it.
        ScenesModelCorrupt: (a ``ValueError``) a file is unreadable; names it.
    """
    import torch
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    path = Path(path)
    _check_files(path)
    try:
        model = LlavaForConditionalGeneration.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    except Exception as e:  # noqa: BLE001 - a corrupt file must be named, not a stack of library frames
        raise ScenesModelCorrupt(
            f"offline model file 'model.safetensors' or 'config.json' in {str(path)!r} is "
            f"corrupt: {type(e).__name__}: {e}"
        ) from None
    try:
        processor = LlavaProcessor.from_pretrained(path, local_files_only=True)
    except Exception as e:  # noqa: BLE001
        raise ScenesModelCorrupt(
            f"offline processor files ('tokenizer.json', 'tokenizer_config.json', 'processor_config.json') in "
            f"{str(path)!r} are corrupt: {type(e).__name__}: {e}"
        ) from None
    model.eval()
    return model, processor
