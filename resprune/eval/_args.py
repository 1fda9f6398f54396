"""The bridge's settings: parsed and checked before any model is loaded (no lmms-eval, no transformers import).

Every error is a ``ValueError`` whose message starts with the argument's name and shows the bad value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

NEWLINES = ("drop", "keep", "prune")
QUERIES = ("auto", "full", "none")
DTYPES = ("auto", "float32", "float16", "bfloat16")

# Answer-format instructions the usual benchmarks append to the question (lmms-eval's ``post_prompt``s and the
# ones inside MME's questions). They tell the LLM how to answer; they say nothing about what to look at, so with
# ``query="auto"`` they stay out of the relevance query (they still reach the LLM).
ANSWER_FORMATS = (
    r"answer the question using a single word or phrase\.?",
    r"answer with the option'?s letter from the given choices directly\.?",
    r"answer the question with yes or no\.?",
    r"please answer (?:with )?yes or no\.?",
    r"when the provided information is insufficient, respond with '?unanswerable'?\.?",
    r"answer this question briefly\.?",
    r"your response must be concise\.?",
    r"answer:",
    r"请直接使用所提供的选项字母作为答案回答。",
)
_SUFFIX = re.compile(r"(?:\s|^)(?:" + "|".join(ANSWER_FORMATS) + r")\s*$", re.IGNORECASE)
_IMAGE_TAG = re.compile(r"<image>\s*")


def clean_context(context: str) -> str:
    """The benchmark's prompt without lmms-eval's ``<image>`` tags (the chat template places the image)."""
    return _IMAGE_TAG.sub("", context).strip()


def relevance_query(context: str, mode: str = "auto") -> str | None:
    """The text the relevance query is built from, for one benchmark prompt.

    ``"auto"``: the prompt without its trailing answer-format instructions; ``"full"``: the whole prompt;
    ``"none"``: no text query (text-aware methods fall back to their text-free score).

    >>> relevance_query("What colour is the bus?\\nAnswer the question using a single word or phrase.")
    'What colour is the bus?'
    >>> relevance_query("Is there a dog? Please answer yes or no.", "full")
    'Is there a dog? Please answer yes or no.'
    """
    if mode not in QUERIES:
        raise ValueError(f"query must be one of {QUERIES}, got {mode!r}")
    if mode == "none":
        return None
    text = clean_context(context)
    if mode == "auto":
        prev = None
        while prev != text:
            prev, text = text, _SUFFIX.sub("", text).rstrip()
    return text or None


@dataclass(frozen=True)
class Budget:
    """K per image: ``keep`` tokens, or ``keep_ratio`` of the N visual tokens (exactly one is set)."""

    keep: int | None = None
    keep_ratio: float | None = None

    def label(self) -> str:
        return f"{self.keep}" if self.keep is not None else f"r{self.keep_ratio:g}"

    def resolve(self, n: int) -> int:
        """K for an image of N visual tokens; a fixed ``keep`` above N is an error, not a silent "keep all"."""
        from resprune import keep_count

        if self.keep is not None:
            if self.keep > n:
                raise ValueError(f"keep={self.keep} is larger than the {n} visual tokens of this model's images")
            return self.keep
        return keep_count(n, self.keep_ratio)


def budget(keep: Any = None, keep_ratio: Any = None) -> Budget:
    """Check ``keep`` / ``keep_ratio`` (exactly one: a positive int, or a ratio in (0, 1])."""
    if (keep is None) == (keep_ratio is None):
        raise ValueError(f"keep / keep_ratio: give exactly one, got keep={keep!r}, keep_ratio={keep_ratio!r}")
    if keep is not None:
        k = _int(keep, "keep")
        if k < 1:
            raise ValueError(f"keep must be a positive number of visual tokens, got {keep!r}")
        return Budget(keep=k)
    r = _float(keep_ratio, "keep_ratio")
    if not 0 < r <= 1:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio!r}")
    return Budget(keep_ratio=r)


def method_hparams(method: str, hparams: dict[str, Any], *, strict: bool = True) -> dict[str, Any]:
    """The hyperparameters ``method`` takes, from ``hparams``.

    With ``strict`` a key the method does not take is an error naming it (lmms-eval's ``--model_args``); without,
    such keys are dropped (a sweep's ``--alpha`` applies to the methods that have an alpha).
    """
    import resprune

    info = resprune.method_info(method)  # ValueError "method: unknown method ..., available: ..."
    out = {}
    for k, v in hparams.items():
        if k in info.hparams:
            out[k] = v
        elif strict:
            took = ", ".join(info.hparams) or "none"
            raise ValueError(f"{k}: not a hyperparameter of method {method!r} (it takes: {took}); got {k}={v!r}")
    return out


@dataclass(frozen=True)
class BridgeArgs:
    """What ``--model_args`` of ``--model resprune`` says, checked."""

    pretrained: str = "scenes"
    method: str = "resprune"
    budget: Budget = field(default_factory=lambda: Budget(keep=64))
    newlines: str | None = None  # None: the method's declared default (prune's)
    query: str = "auto"
    dtype: str = "auto"
    device: str = "auto"
    batch_size: int = 1
    records: str | None = None
    hparams: dict[str, Any] = field(default_factory=dict)


def parse_model_args(
    pretrained: Any = "scenes",
    method: Any = None,
    keep: Any = None,
    keep_ratio: Any = None,
    newlines: Any = None,
    query: Any = "auto",
    dtype: Any = "auto",
    device: Any = "auto",
    batch_size: Any = 1,
    records: Any = None,
    **hparams: Any,
) -> BridgeArgs:
    """Check every model argument (``ValueError`` naming the first bad one). ``keep`` defaults to 64."""
    import resprune

    if not isinstance(pretrained, str) or not pretrained.strip():
        raise ValueError(f"pretrained must be a preset name, hub id or folder, got {pretrained!r}")
    method = resprune.DEFAULT_METHOD if method is None else method
    if not isinstance(method, str) or method not in resprune.list_methods():
        raise ValueError(f"method: unknown method {method!r}; available: {', '.join(resprune.list_methods())}")
    b = budget(64 if keep is None and keep_ratio is None else keep, keep_ratio)
    if newlines is not None and newlines not in NEWLINES:
        raise ValueError(f"newlines must be one of {NEWLINES}, got {newlines!r}")
    if query not in QUERIES:
        raise ValueError(f"query must be one of {QUERIES}, got {query!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if not isinstance(device, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", device):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}")
    bs = _int(batch_size, "batch_size")
    if bs < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if records is not None and (not isinstance(records, str) or not records.strip()):
        raise ValueError(f"records must be a folder path, got {records!r}")
    hp = method_hparams(method, hparams, strict=True)
    return BridgeArgs(pretrained, method, b, newlines, query, dtype, device, bs, records, hp)


def _int(v: Any, name: str) -> int:
    if isinstance(v, bool) or not (isinstance(v, int) or (isinstance(v, str) and v.strip().isdigit())):
        if isinstance(v, float) and v.is_integer():
            return int(v)
        raise ValueError(f"{name} must be an int, got {v!r}")
    return int(v)


def _float(v: Any, name: str) -> float:
    if isinstance(v, bool):
        raise ValueError(f"{name} must be a number, got {v!r}")
    try:
        return float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {v!r}") from None
