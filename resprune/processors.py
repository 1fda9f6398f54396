"""Processors that build without torchvision.

transformers' ``Qwen2_5_VLProcessor`` and ``LlavaOnevisionProcessor`` cannot be constructed (or loaded with
``AutoProcessor``) when torchvision is missing, even for images only: the argument check reaches the
video-processor registry, which is a dummy without torchvision. ``QwenImageProcessor`` and
``OnevisionImageProcessor`` are the same processors for images only: ``ProcessorMixin`` reads the attributes from
the ``__init__`` signature, which here has no ``video_processor``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import ProcessorMixin
from transformers.models.llava_onevision.processing_llava_onevision import LlavaOnevisionProcessor
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor


def _special_tokens(processor: Any, tokenizer: Any, image_token: str, video_token: str) -> None:
    """The image / video placeholder tokens and ids of an images-only processor: the tokenizer's own where it
    declares them, else the family's defaults."""
    processor.image_token = getattr(tokenizer, "image_token", None) or image_token
    processor.video_token = getattr(tokenizer, "video_token", None) or video_token
    processor.image_token_id = getattr(tokenizer, "image_token_id", None) or tokenizer.convert_tokens_to_ids(
        processor.image_token
    )
    processor.video_token_id = getattr(tokenizer, "video_token_id", None) or tokenizer.convert_tokens_to_ids(
        processor.video_token
    )


class QwenImageProcessor(Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` for images only (no video processor, so no torchvision needed)."""

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None) -> None:
        _special_tokens(self, tokenizer, "<|image_pad|>", "<|video_pad|>")
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> QwenImageProcessor:  # type: ignore[override]
        """Load the image processor (PIL backend) and the tokenizer of a Qwen2.5-VL checkpoint separately."""
        from transformers import AutoImageProcessor, AutoTokenizer

        kwargs.pop("backend", None)
        kwargs.pop("trust_remote_code", None)
        ip = AutoImageProcessor.from_pretrained(path, backend="pil", **kwargs)
        tok = AutoTokenizer.from_pretrained(path, **kwargs)
        return cls(ip, tok, chat_template=getattr(tok, "chat_template", None) or _chat_template(path, **kwargs))


class OnevisionImageProcessor(LlavaOnevisionProcessor):
    """``LlavaOnevisionProcessor`` for images only (no video processor, so no torchvision needed)."""

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        num_image_tokens: int | None = None,
        vision_feature_select_strategy: str | None = None,
        chat_template: str | None = None,
        image_token: str = "<image>",
        video_token: str = "<video>",
        vision_aspect_ratio: str = "anyres_max_9",
        **kwargs: Any,
    ) -> None:
        self.num_image_tokens = num_image_tokens
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.vision_aspect_ratio = vision_aspect_ratio
        _special_tokens(self, tokenizer, image_token, video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> OnevisionImageProcessor:  # type: ignore[override]
        """The image processor (PIL backend), the tokenizer and ``processor_config.json``'s settings of a
        LLaVA-OneVision checkpoint, loaded separately."""
        import json

        from transformers import AutoImageProcessor, AutoTokenizer
        from transformers.utils import cached_file

        kwargs.pop("backend", None)
        kwargs.pop("trust_remote_code", None)
        ip = AutoImageProcessor.from_pretrained(path, backend="pil", **kwargs)
        tok = AutoTokenizer.from_pretrained(path, **kwargs)
        f = cached_file(str(path), "processor_config.json", _raise_exceptions_for_missing_entries=False, **kwargs)
        cfg = json.loads(Path(f).read_text(encoding="utf-8")) if f else {}
        keys = ("num_image_tokens", "vision_feature_select_strategy", "vision_aspect_ratio")
        settings = {k: cfg[k] for k in keys if k in cfg}
        template = getattr(tok, "chat_template", None) or _chat_template(path, **kwargs)
        return cls(ip, tok, chat_template=template, **settings)


def _chat_template(path: str | Path, **kwargs: Any) -> str | None:
    """The checkpoint's ``chat_template.jinja`` (or the ``chat_template`` of ``chat_template.json``), if any."""
    import json

    from transformers.utils import cached_file

    for name in ("chat_template.jinja", "chat_template.json"):
        f = cached_file(str(path), name, _raise_exceptions_for_missing_entries=False, **kwargs)
        if f:
            text = Path(f).read_text(encoding="utf-8")
            return json.loads(text)["chat_template"] if name.endswith(".json") else text
    return None
