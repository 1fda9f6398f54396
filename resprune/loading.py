"""One call to load any supported model: ``model, processor = resprune.load_model(name_or_id)``.

``"scenes"`` is the offline default shipped under ``assets/scenes-model``; the presets name real hub checkpoints
(downloaded by transformers on first use, where a network is available); a local folder saved with
``save_pretrained`` works too. ``trust_remote_code`` is never enabled. Processors use the PIL image backends
(there is no CPU torchvision wheel).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Preset:
    hub_id: str
    note: str


PRESETS: dict[str, Preset] = {
    "scenes": Preset("assets/scenes-model", "offline default, 7.4 MB, CPU"),
    "llava-1.5-7b": Preset("llava-hf/llava-1.5-7b-hf", "LLaVA-1.5-7B, ~14 GB download, GPU recommended"),
    "llava-interleave-0.5b": Preset(
        "llava-hf/llava-interleave-qwen-0.5b-hf", "LLaVA (Qwen2-0.5B LLM), ~1.8 GB download, CPU-friendly"
    ),
    "llava-next-7b": Preset("llava-hf/llava-v1.6-vicuna-7b-hf", "LLaVA-NeXT-7B (Vicuna), ~14 GB download, GPU"),
    "llava-next-mistral-7b": Preset("llava-hf/llava-v1.6-mistral-7b-hf", "LLaVA-NeXT-7B (Mistral), ~15 GB, GPU"),
    "qwen2.5-vl-7b": Preset("Qwen/Qwen2.5-VL-7B-Instruct", "Qwen2.5-VL-7B, ~16 GB download, GPU"),
    "qwen2.5-vl-3b": Preset("Qwen/Qwen2.5-VL-3B-Instruct", "Qwen2.5-VL-3B, ~7.5 GB download, the smallest Qwen2.5-VL"),
}


class ModelLoadError(OSError):
    """A model could not be loaded; the message names it and suggests the offline default."""


def load_model(name_or_id: str, *, dtype: Any = None, device: str | None = None) -> tuple[Any, Any]:
    """Load ``(model, processor)`` by preset name, hub id or local folder.

    Raises:
        ModelLoadError: unknown id, no network, missing or corrupt files; the message names ``name_or_id``.
    """
    if not isinstance(name_or_id, str) or not name_or_id.strip():
        raise ModelLoadError(f"name_or_id must be a preset name, hub id or folder, got {name_or_id!r}")
    if name_or_id == "scenes":
        from .scenes.model import load_scenes_model

        return load_scenes_model()
    target = PRESETS[name_or_id].hub_id if name_or_id in PRESETS else name_or_id
    try:
        import torch
        from transformers import AutoModelForImageTextToText

        from .adapters import adapter_for

        local = os.path.isdir(target)
        kw: dict[str, Any] = {"local_files_only": local or os.environ.get("HF_HUB_OFFLINE") == "1"}
        model = AutoModelForImageTextToText.from_pretrained(
            target,
            dtype=dtype or (torch.float16 if torch.cuda.is_available() else torch.float32),
            trust_remote_code=False,
            **kw,
        )
        processor = adapter_for(model).load_processor(target, **kw)
    except Exception as e:  # noqa: BLE001 - one clear message instead of a stack of hub/network frames
        raise ModelLoadError(
            f"could not load model {name_or_id!r} ({target}): {type(e).__name__}: {str(e).splitlines()[0][:300]}. "
            "Without network access only local folders and the offline default load: "
            "use resprune.load_model('scenes')."
        ) from None
    if device:
        model = model.to(device)
    model.eval()
    return model, processor


def preset_path(name: str) -> Path:
    """Folder of a preset that lives in this repository (the offline default)."""
    return Path(__file__).resolve().parent.parent / PRESETS[name].hub_id
