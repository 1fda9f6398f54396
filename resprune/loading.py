"""One call to load any supported model: ``model, processor = resprune.load_model(name_or_id)``.

``"scenes"`` is the offline default shipped under ``assets/scenes-model`` (trained on scene world 1) and
``"scenes-v2"`` the offline model v2 under ``assets/scenes-model-v2`` (scene world 2, LM width 192 > 144 visual
tokens); the other presets name real hub checkpoints
(downloaded by transformers on first use, where a network is available); a local folder saved with
``save_pretrained`` works too. ``trust_remote_code`` is never enabled. Processors use the PIL image backends
(there is no CPU torchvision wheel).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Preset:
    hub_id: str
    note: str
    family: str = "llava"  # the adapter family (``resprune.adapters.FAMILY_ADAPTERS``)
    tower: str = "clip"  # "clip" (a [CLS] token), "siglip" or "qwen-vit" (none)
    world: int | None = None  # a model of this repository trained on that scene world (``hub_id`` is its folder)

    @property
    def bundled(self) -> bool:
        """Shipped in this repository (an offline scenes model), not a hub checkpoint."""
        return self.world is not None


PRESETS: dict[str, Preset] = {
    "scenes": Preset("assets/scenes-model", "offline default, 7.4 MB, CPU", world=1),
    "scenes-v2": Preset("assets/scenes-model-v2", "offline model v2 (scene world 2, D = 192), 11.6 MB, CPU", world=2),
    "llava-1.5-7b": Preset("llava-hf/llava-1.5-7b-hf", "LLaVA-1.5-7B, ~14 GB download, GPU recommended"),
    "llava-interleave-0.5b": Preset(
        "llava-hf/llava-interleave-qwen-0.5b-hf",
        "LLaVA (Qwen2-0.5B LLM), ~1.8 GB download, CPU-friendly",
        tower="siglip",
    ),
    "llava-next-7b": Preset(
        "llava-hf/llava-v1.6-vicuna-7b-hf", "LLaVA-NeXT-7B (Vicuna), ~14 GB download, GPU", family="llava_next"
    ),
    "llava-next-mistral-7b": Preset(
        "llava-hf/llava-v1.6-mistral-7b-hf", "LLaVA-NeXT-7B (Mistral), ~15 GB, GPU", family="llava_next"
    ),
    "qwen2.5-vl-7b": Preset(
        "Qwen/Qwen2.5-VL-7B-Instruct", "Qwen2.5-VL-7B, ~16 GB download, GPU", family="qwen2_5_vl", tower="qwen-vit"
    ),
    "qwen2.5-vl-3b": Preset(
        "Qwen/Qwen2.5-VL-3B-Instruct",
        "Qwen2.5-VL-3B, ~7.5 GB download, the smallest Qwen2.5-VL",
        family="qwen2_5_vl",
        tower="qwen-vit",
    ),
    "smolvlm-256m": Preset(
        "HuggingFaceTB/SmolVLM-256M-Instruct",
        "SmolVLM-256M (Idefics3), ~0.5 GB download, CPU",
        family="idefics3",
        tower="siglip",
    ),
    "smolvlm-500m": Preset(
        "HuggingFaceTB/SmolVLM-500M-Instruct",
        "SmolVLM-500M (Idefics3), ~1 GB download, CPU",
        family="idefics3",
        tower="siglip",
    ),
    "llava-onevision-0.5b": Preset(
        "llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
        "LLaVA-OneVision-0.5B (SigLIP, Qwen2), ~1.8 GB download, CPU",
        family="llava_onevision",
        tower="siglip",
    ),
}


def preset_methods(name: str) -> tuple[str, ...]:
    """The registered methods that run on preset ``name`` (without loading it): those whose required internals
    its family offers; the [CLS]-based internals only with a CLIP tower."""
    from .adapters import FAMILY_ADAPTERS
    from .registry import list_methods, method_info

    if name not in PRESETS:
        raise ValueError(f"name must be one of {', '.join(PRESETS)}, got {name!r}")
    p = PRESETS[name]
    offered = (FAMILY_ADAPTERS[p.family].offers if p.tower == "clip" else frozenset()) | {"llm_attention"}
    return tuple(m for m in list_methods() if set(method_info(m).requires) <= offered)


class ModelLoadError(OSError):
    """A model could not be loaded; the message names it and suggests the offline default."""


def resolve_device(device: Any = "auto") -> Any:
    """``"auto"``: CUDA if present, else MPS, else the CPU; anything else is checked by torch (``ModelLoadError``)."""
    import torch

    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():  # pragma: no cover - Apple only
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ModelLoadError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r} ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device={device!r} but CUDA is not available on this machine; use device='auto'")
    return dev


def default_dtype(device: Any) -> Any:
    """float32 on the CPU; bfloat16 on a CUDA device that supports it, else float16; float16 on MPS."""
    import torch

    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float16 if device.type == "mps" else torch.float32


def load_model(name_or_id: str, *, dtype: Any = None, device: Any = "auto", device_map: Any = None) -> tuple[Any, Any]:
    """Load ``(model, processor)`` by preset name, hub id or local folder, on ``device`` in ``dtype``.

    Args:
        name_or_id: a preset (``PRESETS``), a hub id or a folder saved with ``save_pretrained``.
        dtype: the weights' dtype; default ``default_dtype(device)`` (float32 on the CPU, bfloat16/float16 on
            accelerators).
        device: ``"auto"`` (CUDA, else MPS, else CPU), or a torch device string.
        device_map: passed to ``from_pretrained`` for models that do not fit one device (needs ``accelerate``);
            the model is then not moved as a whole.

    Raises:
        ModelLoadError: unknown id, no network, missing or corrupt files, an unavailable device; the message names
            ``name_or_id``.
    """
    if not isinstance(name_or_id, str) or not name_or_id.strip():
        raise ModelLoadError(f"name_or_id must be a preset name, hub id or folder, got {name_or_id!r}")
    dev = resolve_device(device)
    if dtype is None:
        dtype = default_dtype(dev)
    if name_or_id in PRESETS and PRESETS[name_or_id].bundled:
        from .scenes.model import load_scenes_model

        model, processor = load_scenes_model(preset_path(name_or_id))
        return model.to(device=dev, dtype=dtype).eval(), processor
    target = PRESETS[name_or_id].hub_id if name_or_id in PRESETS else name_or_id
    try:
        from transformers import AutoModelForImageTextToText

        from .adapters import adapter_for

        local = os.path.isdir(target)
        kw: dict[str, Any] = {"local_files_only": local or os.environ.get("HF_HUB_OFFLINE") == "1"}
        model = AutoModelForImageTextToText.from_pretrained(
            target,
            dtype=dtype,
            trust_remote_code=False,
            **({"device_map": device_map} if device_map is not None else {}),
            **kw,
        )
        processor = adapter_for(model).load_processor(target, **kw)
    except Exception as e:  # noqa: BLE001 - one clear message instead of a stack of hub/network frames
        raise ModelLoadError(
            f"could not load model {name_or_id!r} ({target}): {type(e).__name__}: {str(e).splitlines()[0][:300]}. "
            "Without network access only local folders and the offline default load: "
            "use resprune.load_model('scenes')."
        ) from None
    if device_map is None:
        model = model.to(dev)
    model.eval()
    return model, processor


def preset_path(name: str) -> Path:
    """Folder of a preset that lives in this repository (the offline scenes models)."""
    return Path(__file__).resolve().parent.parent / PRESETS[name].hub_id


@dataclass(frozen=True)
class PresetStatus:
    """Whether a preset can load here, and from where; ``reason`` is written for a visitor of the web app."""

    available: bool
    where: str | None  # "bundled" (in this repository), "cache" (downloaded), "hub" (downloadable now), or None
    reason: str


_OFFLINE_VALUES = {"1", "on", "yes", "true"}
_PROBES: dict[str, tuple[float, bool | int]] = {}  # url -> (time, reachable or HTTP status)
_SILENT: dict[str, float] = {}  # endpoint -> when it last did not answer (then no repo on it is probed again)
_PROBE_TTL_S = 300.0
_NOT_HERE = "Pick the built-in 'scenes' model, or one marked available."


def _hub_cache() -> Path:
    """The hub cache folder as the environment says now (``HF_HUB_CACHE``, else ``HF_HOME``/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")), "huggingface"
    )
    return Path(home).expanduser() / "hub"


DOWNLOAD_PATTERNS = ("*.json", "*.safetensors", "*.jinja", "*.model", "*.txt", "*.tiktoken")
"""The files ``download_preset`` fetches: configs, safetensors weights, tokenizers and chat templates (no ``.bin``,
ONNX or GGUF copies of the weights)."""


def download_preset(name: str, on_bytes: Any = None) -> Path:  # noqa: ANN401
    """Fetch hub preset ``name`` into the local hub cache (``DOWNLOAD_PATTERNS``) and return its snapshot folder;
    ``on_bytes(done, total)`` is called as the bytes arrive (``total`` grows while the files start). Files already
    in the cache are not fetched again.

    Raises:
        ValueError: ``name`` is not a hub preset.
        ModelLoadError: the hub could not be reached or refused; the message names the preset.
    """
    if name not in PRESETS or PRESETS[name].bundled:
        hub = ", ".join(n for n, p in PRESETS.items() if not p.bundled)
        raise ValueError(f"name must be a hub preset ({hub}), got {name!r}")
    from huggingface_hub import snapshot_download
    from tqdm.std import tqdm

    repo = PRESETS[name].hub_id
    kw: dict[str, Any] = {"allow_patterns": list(DOWNLOAD_PATTERNS), "cache_dir": _hub_cache()}
    bars: list[Any] = []
    last = [-1]
    lock = threading.Lock()

    class _Bytes(tqdm):  # huggingface_hub's byte bars, reported instead of drawn
        def __init__(self, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401
            self._is_bytes, self._done = kwargs.get("unit") == "B", 0
            super().__init__(*args, **{**kwargs, "disable": True})
            bars.append(self)

        def update(self, n: float | None = 1) -> None:
            if self._is_bytes and n and on_bytes is not None:
                with lock:  # files arrive in parallel; each byte bar counts every byte once: report the furthest
                    self._done += n
                    done = min(int(max(b._done for b in bars)), total)
                    if done > last[0]:
                        last[0] = done
                        on_bytes(done, total)

    try:
        plan = snapshot_download(repo, dry_run=True, **kw)  # the file list and sizes first: a true total
        total = sum(int(f.file_size or 0) for f in plan if f.will_download)
        folder = snapshot_download(repo, tqdm_class=_Bytes, **kw)
    except Exception as e:  # noqa: BLE001 - one clear message instead of a stack of network frames
        raise ModelLoadError(
            f"could not download preset {name!r} ({repo}): {type(e).__name__}: "
            f"{str(e).splitlines()[0][:300] if str(e) else ''}"
        ) from None
    if on_bytes is not None and last[0] < total:  # everything was in the cache already, or the bars skipped the end
        on_bytes(total, total)
    return Path(folder)


def _in_cache(repo_id: str) -> bool:
    """config.json and every weight file of ``repo_id`` are in the local hub cache (no network)."""
    import json

    from huggingface_hub import try_to_load_from_cache

    cache = _hub_cache()

    def cached(name: str) -> str | None:
        f = try_to_load_from_cache(repo_id, name, cache_dir=cache)
        return f if isinstance(f, str) else None

    if cached("config.json") is None:
        return False
    index = cached("model.safetensors.index.json")
    if index is None:
        return cached("model.safetensors") is not None
    shards = set(json.loads(Path(index).read_text(encoding="utf-8")).get("weight_map", {}).values())
    return bool(shards) and all(cached(s) is not None for s in shards)


def _probe(url: str, timeout: float) -> bool | int:
    """HEAD ``url`` within ``timeout`` seconds in all (DNS included: the request runs in a daemon thread):
    True if it answers 2xx/3xx, its HTTP status if it refuses, False if it does not answer in time. Cached for
    ``_PROBE_TTL_S`` seconds."""
    now = time.monotonic()
    hit = _PROBES.get(url)
    if hit is not None and now - hit[0] < _PROBE_TTL_S:
        return hit[1]
    result: list[bool | int] = [False]

    def run() -> None:
        import urllib.error
        import urllib.request

        try:
            req = urllib.request.Request(url, method="HEAD")
            with urllib.request.urlopen(req, timeout=timeout):  # noqa: S310 - the hub endpoint, http(s) only
                result[0] = True
        except urllib.error.HTTPError as e:
            result[0] = e.code
        except (OSError, ValueError):
            result[0] = False

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    value = result[0] if not t.is_alive() else False
    _PROBES[url] = (now, value)
    return value


def preset_status(name: str, *, timeout: float = 2.0) -> PresetStatus:
    """Whether preset ``name`` can load here, without waiting on the network: bundled in this repository, complete
    in the local hub cache, or (only when ``HF_HUB_OFFLINE`` is not set) downloadable now, by one HEAD request of its
    config.json bounded by ``timeout`` seconds and remembered for 5 minutes.

    Raises:
        ValueError: ``name`` is not a preset, or ``timeout`` is not a positive number.
    """
    if name not in PRESETS:
        raise ValueError(f"name must be one of {', '.join(PRESETS)}, got {name!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 30:
        raise ValueError(f"timeout must be a number of seconds in (0, 30], got {timeout!r}")
    repo = PRESETS[name].hub_id
    if PRESETS[name].bundled:
        if (preset_path(name) / "config.json").is_file():
            return PresetStatus(True, "bundled", "Built into this app: loads in seconds and runs on the CPU.")
        return PresetStatus(False, None, "The built-in model's files are missing from this installation.")
    if _in_cache(repo):
        return PresetStatus(True, "cache", "Already downloaded on this server: ready to load.")
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _OFFLINE_VALUES:
        return PresetStatus(
            False,
            None,
            f"Not available here: this server works offline and {name} has not been downloaded. {_NOT_HERE}",
        )
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    silent = _SILENT.get(endpoint)
    if silent is not None and time.monotonic() - silent < _PROBE_TTL_S:
        probe: bool | int = False
    else:
        probe = _probe(f"{endpoint}/{repo}/resolve/main/config.json", timeout)
        if probe is False:
            _SILENT[endpoint] = time.monotonic()
    if probe is True:
        return PresetStatus(
            True, "hub", f"Downloads from the Hugging Face Hub on first use ({PRESETS[name].note}); that takes a while."
        )
    if probe is False:
        return PresetStatus(
            False,
            None,
            f"Not available right now: the Hugging Face Hub cannot be reached from this server and {name} has not "
            f"been downloaded. {_NOT_HERE}",
        )
    return PresetStatus(
        False,
        None,
        f"Not available: the Hugging Face Hub refuses to serve {name} to this server (it may be gated or moved; "
        f"HTTP {probe}). {_NOT_HERE}",
    )


def preset_statuses(*, timeout: float = 2.0) -> dict[str, PresetStatus]:
    """``preset_status`` of every preset, the hub probes in parallel (about ``timeout`` seconds in all, at most)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(PRESETS)) as pool:
        futures = {name: pool.submit(preset_status, name, timeout=timeout) for name in PRESETS}
        return {name: f.result() for name, f in futures.items()}
