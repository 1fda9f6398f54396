"""resprune demo: what does a vision-language model see, and say, when most of its visual tokens are pruned?

Run ``python app.py`` (offline default model, CPU) and open the printed address. ``build_demo()`` builds the
Blocks; nothing is loaded at import; every handler below is a plain function over the library
(``resprune.load_model``, ``resprune.answer``, ``viz.*``), so tests and notebooks can call them directly.

Reliability rules (README, "Limits and safety"): every image goes through ``resprune.images.load_image`` (pixel,
aspect-ratio and file-size limits checked from the header; the upload component hands over the raw file);
instructions are limited in characters and in tokens for the chosen model; model load and inference hold one lock
(one model, one writer); every handler runs inside one error boundary (library errors become their message,
anything else a generic message and a server log line); per-run files live in gradio's cache, bounded in number
and removed by ``delete_cache``.

Teaching rules (issue 18): the page opens with the first example of ``assets/examples`` already run
(``on_first_screen``, computed once per process, before the server starts: ``warm_first_screen``); a new image
clears every old output (``cleared_outputs``); for an offline scenes model, an input outside its scene world is said to
be so where the answers are (``world_notes``), and the verdict then draws no conclusion; the examples and New scene
come from the selected model's scene world (``model_world``: 2 for ``scenes-v2``, else 1); the settings shown are those
the chosen method takes (``method_settings``, from the registry); only plain data crosses the ``spaces.GPU``
boundary (``_answer``).
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import math
import re
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import gradio as gr

try:  # ZeroGPU on Hugging Face Spaces: only the GPU-bound function is decorated
    import spaces  # type: ignore[import-not-found]

    gpu = spaces.GPU
except Exception:  # noqa: BLE001 - not on a Space

    def gpu(fn):  # noqa: ANN001, ANN201
        return fn


DEFAULT_MODEL = "scenes"
DEFAULT_KEEP_PERCENT = 25
MAX_INSTRUCTION_CHARS = 1000
MAX_NEW_TOKENS = 24
PROBE_SECONDS = 2.0  # the longest the model list waits on the hub (once; remembered 5 minutes)
ALPHA_RANGE = (0.0, 2.0)  # the alpha slider's range; the API is held to it too
DELETE_CACHE = (600, 3600)  # gradio's cache: every 10 min, delete the files this app made more than 1 h ago
MAX_RUN_DIRS = 200  # per-run download folders kept at most (oldest removed first), on top of DELETE_CACHE
EXAMPLES_DIR = Path(__file__).parent / "assets" / "examples"
TITLE = "resprune: what does the model still see after visual-token pruning?"

log = logging.getLogger("resprune.app")

# One model, one writer: a model's load and everything that runs it (token counts, answers, FastV hooks) hold that
# model's lock (model_lock(name)); figures are drawn outside it. Visitors of different models do not wait for each
# other (a large model loading does not block the offline one). Re-entrant so a handler may call another one.
_MODEL_LOCKS: dict[str, threading.RLock] = {}
_MODEL_LOCKS_GUARD = threading.Lock()


def model_lock(name: str) -> threading.RLock:
    """The lock of model ``name`` (one per model name, created on first use)."""
    with _MODEL_LOCKS_GUARD:
        return _MODEL_LOCKS.setdefault(name, threading.RLock())


_IMPORT_LOCK = threading.Lock()
_LOADED: set[str] = set()  # model names loaded at least once in this process
_RUN_DIR_LOCK = threading.Lock()
FIGURE_THREADS = 2  # figures are drawn on this many threads: in parallel, with bounded per-thread font caches
_FIGURE_POOL: list[Any] = []


def __getattr__(name: str) -> Any:  # noqa: ANN401 - lazy constants that need the library (torch) to be imported
    if name == "DEFAULT_METHOD":
        import resprune

        return resprune.DEFAULT_METHOD
    raise AttributeError(f"module 'app' has no attribute {name!r}")


def _imports() -> None:
    """Import the library and viz once, under a lock: concurrent first imports in worker threads race."""
    with _IMPORT_LOCK:
        import resprune  # noqa: F401
        import resprune.images  # noqa: F401
        import viz  # noqa: F401


# ---------------------------------------------------------------------------------------------------------------
# The error boundary

_PATH_RE = re.compile(r"(?<![\w.:/])(?:[A-Za-z]:)?(?:[/\\][\w.\-~+@]+)+[/\\]?")


def _scrub(msg: str, limit: int = 600) -> str:
    """Drop folders from any path in ``msg`` (a file keeps its base name) and cap its length."""

    def base(m: re.Match) -> str:
        parts = [p for p in re.split(r"[/\\]", m.group(0)) if p]
        return parts[-1] if parts and "." in parts[-1] else "…"

    msg = _PATH_RE.sub(base, str(msg))
    return msg if len(msg) <= limit else msg[: limit - 1] + "…"


def _library_error(e: BaseException) -> bool:
    """An error the library raised on purpose (its messages name the argument): shown to the user."""
    from resprune.images import ImageInputError
    from resprune.loading import ModelLoadError

    if isinstance(e, (ImageInputError, ModelLoadError)):
        return True
    if not isinstance(e, (ValueError, TypeError)):
        return False
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    origin = Path(tb.tb_frame.f_code.co_filename).resolve() if tb is not None else None
    import resprune

    lib = Path(resprune.__file__).resolve().parent
    return origin is not None and lib in origin.parents


def guarded(fn: Any) -> Any:  # noqa: ANN401
    """The error boundary around a handler's whole body: ``gr.Error`` passes; a library error becomes a ``gr.Error``
    with its (path-free) message; anything else a generic message, with the traceback in the server log."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:  # noqa: ANN401
        try:
            _imports()
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as e:  # noqa: BLE001 - the boundary
            if _library_error(e):
                raise gr.Error(_scrub(str(e)), title="Cannot run this input") from None
            ref = uuid.uuid4().hex[:8]
            log.exception("unexpected error in %s (ref %s)", fn.__name__, ref)
            raise gr.Error(
                f"Something went wrong on the server (reference {ref}); the error has been logged. "
                "Try another input or setting.",
                title="Internal error",
            ) from None

    return wrapper


# ---------------------------------------------------------------------------------------------------------------
# Plain handlers (no gradio state inside; errors are gr.Error with a message the user can act on)


def model_choices() -> list[tuple[str, str]]:
    """(label, value) pairs: the offline default first, then the other bundled scenes models (``scenes-v2``), their
    labels saying which scene world they know, then the real checkpoints' presets with their notes; a preset that
    cannot load here (offline and not downloaded, hub unreachable) says so in its label, found without
    waiting on the network (``resprune.loading.preset_statuses``: the local cache, then at most one bounded probe)."""
    from resprune.loading import PRESETS, preset_statuses

    statuses = preset_statuses(timeout=PROBE_SECONDS)
    default = f"{DEFAULT_MODEL}: offline default (small LLaVA trained on scene world {default_world()}, CPU)"
    choices = [(default, DEFAULT_MODEL)]
    for name, preset in PRESETS.items():
        if name == DEFAULT_MODEL:
            continue
        note = getattr(preset, "note", None) or (preset.get("note") if isinstance(preset, dict) else "")
        world = getattr(preset, "world", None)
        if world is not None:  # another bundled scenes model: which world it knows, first
            note = f"the world-{world} model ({WORLD_SUMMARY.get(world, 'scene world ' + str(world))}); {note}"
        label = f"{name}: {note}" if note else name
        if not statuses[name].available:
            label = f"{label} (not available on this server)"
        choices.append((label, name))
    return choices


def model_world(name: Any) -> int | None:  # noqa: ANN401
    """The scene world model ``name`` was trained on (``Preset.world``: 1 for ``scenes``, 2 for ``scenes-v2``);
    None for the real checkpoints and unknown names."""
    from resprune.loading import PRESETS

    preset = PRESETS.get(name) if isinstance(name, str) else None
    return getattr(preset, "world", None)


def default_world() -> int:
    """The scene world of the app's default model (``DEFAULT_MODEL``): what New scene, the gallery and the
    ``/new_scene`` endpoint draw from when no model is named."""
    return model_world(DEFAULT_MODEL) or 1


def check_available(name: str) -> Any:  # noqa: ANN401
    """A preset that cannot load here fails at once with the reason, written for a web visitor (no 25 s wait
    behind a spinner, no queue held for the other visitors); returns its ``PresetStatus`` (None for other names)."""
    from resprune.loading import PRESETS, preset_status

    if name not in PRESETS:
        return None
    status = preset_status(name, timeout=PROBE_SECONDS)
    if not status.available:
        raise gr.Error(f"{status.reason}", title=f"Model {name} not available")
    return status


def _size(n: int) -> str:
    """``n`` bytes for a visitor: ``"1.23 GB"`` from a gigabyte on, else ``"12.3 MB"``."""
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def _download(name: str, progress: Any) -> None:  # noqa: ANN401
    """A preset that must come from the hub: its files first, the bytes on the progress bar (a 7B checkpoint is
    about 14 GB: minutes, which a visitor sees pass instead of a frozen spinner)."""
    from resprune.loading import download_preset

    def on_bytes(done: int, total: int) -> None:
        progress(0.05 + 0.85 * done / max(total, 1), desc=f"Downloading {name}: {_size(done)} of {_size(total)}")

    progress(0.05, desc=f"Downloading {name} from the Hugging Face Hub (first run only)…")
    try:
        download_preset(name, on_bytes)
    except Exception as e:  # noqa: BLE001 - the message names the preset; no paths reach the page
        raise gr.Error(f"Could not download model {name!r}: {_scrub(str(e))}", title="Model not available") from None


def method_choices() -> list[tuple[str, str]]:
    """(label, value) pairs for every registered method, from the registry."""
    import resprune

    out = []
    for name in resprune.list_methods():
        info = resprune.method_info(name)
        out.append((f"{name}: {info.summary}", name))
    return out


@functools.lru_cache(maxsize=2)
def get_model(name: str) -> tuple[Any, Any]:
    """Load (once per process) and return ``(model, processor)``; call it under ``model_lock(name)``."""
    import resprune

    return resprune.load_model(name)


def _load(name: str, progress: Any = None) -> tuple[Any, Any]:  # noqa: ANN401
    status = check_available(name)  # before the lock: an unavailable preset never makes other visitors wait
    with _IMPORT_LOCK:  # the model classes are imported once, by one thread
        import transformers  # noqa: F401
    with model_lock(name):  # concurrent first requests of one model load it once; other models do not wait
        if progress is not None and name not in _LOADED:
            if status is not None and status.where == "hub":
                _download(name, progress)
            progress(
                0.9 if status is not None and status.where == "hub" else 0.05,
                desc=f"Loading model {name!r} (first run only)…",
            )
        try:
            loaded = get_model(name)
            _LOADED.add(name)
            return loaded
        except Exception as e:  # noqa: BLE001 - the loader's message names the model and what to do
            raise gr.Error(f"Could not load model {name!r}: {_scrub(str(e))}", title="Model not available") from None


def check_image(image: Any) -> tuple[Any, tuple[str, ...]]:  # noqa: ANN401
    """Validate an image (path, data: URL, bytes, PIL or array): ``(rgb_pil, notes)`` or a ``gr.Error``."""
    from resprune.images import ImageInputError, load_image

    try:
        loaded = load_image(image)
    except ImageInputError as e:
        raise gr.Error(_scrub(str(e)), title="Image problem") from None
    return loaded.image, loaded.notes


def check_instruction(text: Any) -> str:  # noqa: ANN401
    """A non-empty instruction of at most ``MAX_INSTRUCTION_CHARS`` characters of valid text, or a ``gr.Error``."""
    text = (text or "").strip() if isinstance(text, str) else ""
    if not text:
        raise gr.Error("The instruction is empty: type a question about the image.", title="No instruction")
    if len(text) > MAX_INSTRUCTION_CHARS:
        raise gr.Error(
            f"The instruction has {len(text):,} characters; the limit is {MAX_INSTRUCTION_CHARS:,}.",
            title="Instruction too long",
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise gr.Error(
            f"The instruction contains an invalid character (an unpaired surrogate, U+{ord(text[e.start]):04X}, "
            f"at position {e.start}); retype or paste it again.",
            title="Instruction problem",
        ) from None
    return text


def _chat_text(processor: Any, prompt: str) -> str:  # noqa: ANN401
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    return processor.apply_chat_template(msgs, add_generation_prompt=True)


def check_markers(processor: Any, prompt: str, model_name: str) -> None:  # noqa: ANN401
    """Refuse an instruction holding one of the model's reserved markers (image placeholder, special or added
    tokens of its chat format): the processor would count it as an image or the template would break."""
    tok = processor.tokenizer
    markers = {str(t) for t in getattr(tok, "added_tokens_decoder", {}).values()}
    markers |= set(getattr(tok, "all_special_tokens", ()))
    markers |= {getattr(processor, a, None) for a in ("image_token", "video_token")}
    found = sorted(m for m in markers if isinstance(m, str) and m.strip() and m in prompt)
    if found:
        raise gr.Error(
            f"The instruction contains {found[0]!r}, a marker model {model_name!r} reserves for the image or the chat "
            "format; remove it.",
            title="Instruction problem",
        )


def check_prompt_fits(model: Any, processor: Any, prompt: str, n_visual: int, model_name: str) -> None:  # noqa: ANN401
    """Refuse an instruction that does not fit the model's context with its ``n_visual`` image tokens, the chat
    template and ``MAX_NEW_TOKENS`` answer tokens."""
    tok = processor.tokenizer
    cfg = model.config
    ctx = getattr(getattr(cfg, "text_config", cfg), "max_position_embeddings", None)
    if not ctx:
        return
    ids = tok(_chat_text(processor, prompt)).input_ids
    placeholders = sum(1 for i in ids if i == getattr(cfg, "image_token_id", None))
    total = len(ids) - placeholders + n_visual + MAX_NEW_TOKENS
    if total > ctx:
        q = len(tok(prompt, add_special_tokens=False).input_ids)
        room = max(0, q - (total - ctx))
        raise gr.Error(
            f"The instruction is {q:,} tokens long for model {model_name!r}; with its {n_visual} image tokens, the "
            f"chat template and up to {MAX_NEW_TOKENS} answer tokens that makes {total:,}, more than the model's "
            f"context of {ctx:,} tokens. Shorten it to at most {room:,} tokens.",
            title="Instruction too long",
        )


def _number(value: Any, name: str, lo: float, hi: float, *, integer: bool = False) -> float:  # noqa: ANN401
    """``value`` as a finite number in ``[lo, hi]`` (booleans, text and non-integers refused), or a ``gr.Error``."""
    what = "a whole number" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise gr.Error(f"{name} must be {what} between {lo:g} and {hi:g}, got {value!r}.", title="Bad setting")
    if integer and not float(value).is_integer():
        raise gr.Error(f"{name} must be a whole number of tokens, got {value!r}.", title="Bad budget")
    if not lo <= value <= hi:
        raise gr.Error(f"{name} must be between {lo:g} and {hi:g}, got {value!r}.", title="Bad setting")
    return float(value)


def budget(n_tokens: int, keep_percent: Any, keep_tokens: Any) -> int:  # noqa: ANN401
    """The token budget K: ``keep_tokens`` when given (> 0), else ``keep_percent`` % of ``n_tokens``.

    Booleans, text, NaN / inf and non-integer token counts are refused, never rounded."""
    import resprune

    if keep_tokens is not None and not (type(keep_tokens) in (int, float) and keep_tokens == 0):
        if isinstance(keep_tokens, bool) or not isinstance(keep_tokens, (int, float)) or not math.isfinite(keep_tokens):
            raise gr.Error(
                f"The budget must be a whole number of tokens, got {keep_tokens!r}.",
                title="Bad budget",
            )
        k = keep_tokens
        if isinstance(k, float):
            if not k.is_integer():
                raise gr.Error(f"The budget must be a whole number of tokens, got {k}.", title="Bad budget")
            k = int(k)
        if k < 1:
            raise gr.Error(f"The budget must be at least 1 token, got {k}.", title="Bad budget")
        if k > n_tokens:
            raise gr.Error(
                f"The budget of {k} tokens is more than the {n_tokens} visual tokens of this image.",
                title="Bad budget",
            )
        return int(k)
    if (
        isinstance(keep_percent, bool)
        or not isinstance(keep_percent, (int, float))
        or not (0 < float(keep_percent) <= 100)  # NaN fails this too
    ):
        raise gr.Error(f"The budget must be between 1 and 100 %, got {keep_percent!r}.", title="Bad budget")
    return resprune.keep_count(n_tokens, float(keep_percent) / 100)


def check_alpha(alpha: Any) -> float | None:  # noqa: ANN401
    """``None`` (the method's default) or a number in ``ALPHA_RANGE``."""
    return None if alpha is None else _number(alpha, "alpha", *ALPHA_RANGE)


QUERY_DEFAULT = "method default"


def query_choices() -> list[str]:
    """The query-word modes of ``prune`` (``types.PRUNE_OPTIONS``), after the method's own default."""
    from resprune.types import PRUNE_OPTIONS

    return [QUERY_DEFAULT, *PRUNE_OPTIONS["query"]]


def check_query_mode(mode: Any) -> str | None:  # noqa: ANN401
    """``None`` (the method's default) or one of ``prune``'s query modes; a ``gr.Error`` otherwise."""
    if mode in (None, "", QUERY_DEFAULT):
        return None
    if mode not in query_choices():
        raise gr.Error(f"Query words must be one of {', '.join(query_choices())}; got {mode!r}.", title="Bad setting")
    return mode


def method_params(
    method: str, alpha: float | None, seed_rule: str | None, query_mode: str | None = None
) -> dict[str, Any]:
    """The UI's settings that ``method`` takes, from the registry: ``alpha`` where it is a hparam, the seed rule
    where ``seed`` is a hparam whose default is a rule name (a string), not a random seed (an int), and the query
    words (``prune``'s ``query`` option) for text-aware methods."""
    takes = method_settings(method)
    params: dict[str, Any] = {}
    if alpha is not None and takes["alpha"]:
        params["alpha"] = float(alpha)
    if seed_rule and takes["seed"]:
        params["seed"] = seed_rule
    if query_mode and takes["query"]:
        params["query"] = query_mode
    return params


def method_settings(method: str) -> dict[str, bool]:
    """Which of the UI's settings ``method`` uses, from the registry (``MethodInfo.hparams``): ``alpha``, and the
    seed rule where ``seed`` is a hparam whose default is a rule name (a string), not a random seed (an int)."""
    import resprune

    info = resprune.method_info(method)
    seed = "seed" in info.hparams and isinstance(inspect.signature(info.fn).parameters["seed"].default, str)
    return {"alpha": "alpha" in info.hparams, "seed": seed, "query": info.text_aware}


@guarded
def on_method(method: str) -> tuple:
    """Show the settings accordion and the settings in it only for a method that uses them."""
    try:
        takes = method_settings(_check_method(method))
    except gr.Error:
        takes = {"alpha": False, "seed": False, "query": False}
    return (
        gr.update(visible=any(takes.values())),
        gr.update(visible=takes["alpha"]),
        gr.update(visible=takes["seed"]),
        gr.update(visible=takes["query"]),
    )


@gpu
def _answer(model_name: str, image: Any, prompt: str, method: str, keep: int, compare: bool, **hp: Any):  # noqa: ANN201, ANN401
    """The one GPU-bound call (``spaces.GPU`` on a Space). Only plain data crosses it: the model's name, a PIL
    image, text, numbers and hyperparameters in; the answers, stats and the CPU selection record out (the model
    is looked up inside; no model inputs, hooks or model-holding objects come back)."""
    import dataclasses

    import resprune

    with model_lock(model_name):  # FastV puts hooks on the shared model for the length of a call
        model, processor = get_model(model_name)
        ans = resprune.answer(
            model,
            processor,
            image,
            prompt,
            method=method,
            keep=keep,
            max_new_tokens=MAX_NEW_TOKENS,
            compare=compare,
            **hp,
        )
    res = dataclasses.replace(ans.result, generate_kwargs={}, context=None)
    return dataclasses.replace(ans, result=res)


def _n_visual_tokens(model_name: str, model: Any, processor: Any, image: Any, prompt: str) -> int:  # noqa: ANN401
    """Visual tokens the model makes of ``image`` (a keep-all dry run would be too slow; ask the processor)."""
    import resprune

    with model_lock(model_name):
        return resprune.count_visual_tokens(model, processor, image, prompt)


def _check_method(method: Any) -> str:  # noqa: ANN401
    import resprune

    if not isinstance(method, str) or method not in resprune.list_methods():
        raise gr.Error(
            f"Unknown method {method!r}; choose one of {', '.join(resprune.list_methods())}.", title="Bad setting"
        )
    return method


def _prepare(image: Any, instruction: Any, model_name: str, keep_percent: Any, keep_tokens: Any, progress: Any):  # noqa: ANN202, ANN401
    """The shared front half of every model endpoint: image, instruction, model, N, token fit and budget K."""
    img, notes = check_image(image)
    prompt = check_instruction(instruction)
    model, processor = _load(model_name, progress)
    check_markers(processor, prompt, model_name)
    n = _n_visual_tokens(model_name, model, processor, img, prompt)
    check_prompt_fits(model, processor, prompt, n, model_name)
    keep = budget(n, keep_percent, keep_tokens)
    return img, notes, prompt, model, processor, n, keep


@guarded
def run_answer(
    image: Any,  # noqa: ANN401
    instruction: Any,  # noqa: ANN401
    model_name: str,
    method: str,
    keep_percent: Any,  # noqa: ANN401
    keep_tokens: Any,  # noqa: ANN401
    alpha: Any,  # noqa: ANN401
    seed_rule: str | None,
    *,
    compare: bool = True,
    progress: Any = None,  # noqa: ANN401
    query_mode: Any = None,  # noqa: ANN401
) -> dict[str, Any]:
    """Validate the inputs, run the pruned (and unpruned) model; returns a dict with the answer and the record."""
    method = _check_method(method)
    alpha = check_alpha(alpha)
    query_mode = check_query_mode(query_mode)
    img, notes, prompt, model, processor, n, keep = _prepare(
        image, instruction, model_name, keep_percent, keep_tokens, progress
    )
    if progress is not None:
        progress(0.3, desc=f"Running {method} at {keep}/{n} tokens…")
    t0 = time.perf_counter()
    try:
        ans = _answer(
            model_name, img, prompt, method, keep, compare, **method_params(method, alpha, seed_rule, query_mode)
        )
    except (ValueError, TypeError) as e:
        if not _library_error(e):
            raise
        raise gr.Error(_scrub(str(e)), title="Cannot run this setting") from None
    world = tuple(world_notes(model_name, img, prompt))
    notes = notes + world
    return {
        "image": img,
        "prompt": prompt,
        "answer": ans,
        "keep": keep,
        "n": n,
        "notes": notes,
        "outside_world": world,
        "seconds": time.perf_counter() - t0,
        "model": model_name,
        "method": method,
    }


SCENE_FIT_MIN = 0.85  # world 1: share of pixels that must match the scene world's palette for an image to be "a scene"
# World 2: the same share for its palette (scene_world_fit(image, 2)). Measured on the first 200 test scenes of each
# world, the example photos, seven other photos (matplotlib's grace_hopper.jpg; gradio's cheetah, lion, groot and
# tower images) and uniform noise:
#   world-2 scenes min 0.984 (median 1.000); after JPEG q85 min 0.960; enlarged to 500 px min 0.980
#   world-1 scenes min 1.000 (JPEG q85 0.971): in world 2's palette, and the world-2 model answers them (913 of 920
#     questions right on the first 200 world-1 test scenes, 99.2 %), so they get no note
#   photos 0.12-0.66: astronaut 0.52, chelsea 0.46, coffee 0.24, grace_hopper 0.15, cheetah 0.30 / 0.57 / 0.66,
#     lion 0.52, groot 0.39, tower 0.12; noise 0.35
# 0.80 leaves 0.16 below the lowest scene (JPEG) and 0.14 above the highest photo. (World 1's check on world-2
# scenes: median 0.33, max 0.97: most get the world-1 model's note, a few plain ones do not.)
SCENE_FIT_MIN_V2 = 0.80
SCENE_FIT_MINS = {1: SCENE_FIT_MIN, 2: SCENE_FIT_MIN_V2}
# What each scene world is (resprune.scenes.world), for the model list and the notes. Objects per scene: world 1's
# _objects draws 2-5, world 2's _render_v2 2-7 (tested against rendered scenes).
OBJECTS_PER_SCENE = {1: (2, 5), 2: (2, 7)}
WORLD_SUMMARY = {
    1: "flat scenes of 2-5 objects",
    2: "textured, cluttered scenes of 2-7 objects that may overlap",
}
WORLD_LOOKS = {
    1: "flat background, red/green/blue/yellow circles, squares and triangles",
    2: "textured, unevenly lit background with small grey/brown/white/black/purple clutter; shaded "
    "red/green/blue/yellow circles, squares and triangles that may overlap",
}


def _scene_pixels(image: Any) -> Any:  # noqa: ANN401
    """``image`` at the scene world's size as ``(H * W, 3)`` float32 RGB."""
    import numpy as np
    from PIL import Image

    from resprune.scenes import world as sw

    side = sw.IMAGE_SIZE
    a = np.asarray(image.convert("RGB").resize((side, side), Image.Resampling.BILINEAR), dtype=np.float32)
    return a.reshape(-1, 3)


def _scaled_distance(a: Any, rgb: tuple[int, int, int], lo: float, hi: float) -> Any:  # noqa: ANN401
    """Per pixel of ``a``, the distance to colour ``rgb`` times the scale in ``[lo, hi]`` that fits it best
    (clipped to the 0-255 range, as the renderer clips a bright yellow or red)."""
    import numpy as np

    c = np.asarray(rgb, dtype=np.float32)
    scale = np.clip(a @ c / (c @ c), lo, hi)
    return np.linalg.norm(a - np.clip(scale[:, None] * c, 0, 255), axis=1)


def scene_world_fit(image: Any, world: int = 1) -> float:  # noqa: ANN401
    """The share of ``image``'s pixels (at the scene world's size) that scene world ``world`` could have drawn.

    World 1: its backgrounds (with their grey gradient), its four object colours (with their shading) or its grey
    clutter; rendered scenes score 1.0 (0.96-0.99 after JPEG q85), the project's example photos 0.0-0.23.

    World 2 (``world=2``): a muted background (a base colour pulled halfway to grey, gratings, a smooth noise field
    and a striped or checked region: chroma below 45, brightness above 90), the four object colours under shading
    and uneven lighting (times 0.5-1.35), and the distractor clutter's five colours (under the same lighting),
    counted up to 3 % of the image: clutter is a few small marks (at most 1.2 % of a rendered scene's pixels outside
    the other two), while brown fur or purple cloth can fill a photo. Measured scores: ``SCENE_FIT_MIN_V2``."""
    import numpy as np

    from resprune.scenes import world as sw

    if world not in SCENE_FIT_MINS:
        raise ValueError(f"world must be one of {tuple(SCENE_FIT_MINS)}, got {world!r}")
    a = _scene_pixels(image)
    if world == 2:
        grey = a.mean(1)
        ok = (np.linalg.norm(a - grey[:, None], axis=1) < 45) & (grey > 90)  # the background
        for rgb in sw.COLOURS.values():  # an object colour times its gain, shading and lighting
            ok |= _scaled_distance(a, rgb, 0.5, 1.35) < 24
        clutter = np.zeros(len(a), dtype=bool)
        for rgb in sw.DISTRACTOR_COLOURS:
            clutter |= _scaled_distance(a, rgb, 0.55, 1.35) < 24
        return float(ok.mean() + min(float((clutter & ~ok).mean()), 0.03))
    ok = np.zeros(len(a), dtype=bool)
    for bg in sw.BACKGROUNDS:  # background + a grey offset (the gradient, up to about +-24) + noise
        d = a - np.asarray(bg, dtype=np.float32)
        ok |= np.linalg.norm(d - np.clip(d.mean(1, keepdims=True), -26, 26), axis=1) < 14
    for rgb in sw.COLOURS.values():  # an object colour times its shade (0.9-1.05; never above 255 here)
        ok |= _scaled_distance(a, rgb, 0.88, 1.07) < 20
    grey = a.mean(1)
    ok |= (a.max(1) - a.min(1) < 10) & (grey > 95) & (grey < 180)  # clutter strokes and specks
    return float(ok.mean())


def world_vocabulary(world: int) -> str:
    """What a model of scene world ``world`` can be asked about, in words (from ``resprune.scenes.world``)."""
    from resprune.scenes import world as sw

    def listed(words: list[str]) -> str:
        return ", ".join(words[:-1]) + " and " + words[-1]

    lo, hi = OBJECTS_PER_SCENE[world]
    return (
        f"scene world {world}: scenes of {lo} to {hi} objects; {listed([s + 's' for s in sw.SHAPES])}; "
        f"{listed(list(sw.COLOURS))}; how many of one shape, {sw.NUMBERS[0]} to {sw.NUMBERS[-1]}; whether an "
        "object is there; left/right and above/below"
    )


def world_notes(model_name: str, image: Any, prompt: str) -> list[str]:  # noqa: ANN401
    """Why an offline scenes model's answers mean nothing for this input (an image or words outside the scene
    world it was trained on, ``model_world``); empty for other models and for inputs of its world."""
    world = model_world(model_name)
    if world not in SCENE_FIT_MINS:
        return []
    out = []
    fit = scene_world_fit(image, world)
    if fit < SCENE_FIT_MINS[world]:
        out.append(
            f"This image is outside the offline model's world (scene world {world}): only {fit:.0%} of its pixels "
            f"look like that world's scenes ({WORLD_LOOKS[world]})."
        )
    return out + _vocabulary_notes(model_name, prompt)


def _vocabulary_notes(model_name: str, prompt: str) -> list[str]:
    world = model_world(model_name)
    if world not in OBJECTS_PER_SCENE:
        return []
    try:
        from resprune.scenes import unknown_words
    except ImportError:
        return []
    unknown = unknown_words(prompt)
    if not unknown:
        return []
    return [
        f"The offline model only knows its scene world ({world_vocabulary(world)}); it has never seen: "
        + ", ".join(repr(w) for w in unknown[:8])
        + "."
    ]


def draw(fn: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: ANN401
    """Run a drawing function on the figure threads and return its result.

    Matplotlib keeps font caches per thread; drawn on gradio's many worker threads they made the server's RSS grow
    with every new thread. A small fixed pool (made on first use) bounds that and still draws in parallel."""
    from concurrent.futures import ThreadPoolExecutor

    with _IMPORT_LOCK:
        if not _FIGURE_POOL:
            _FIGURE_POOL.append(ThreadPoolExecutor(FIGURE_THREADS, thread_name_prefix="resprune-figures"))
    return _FIGURE_POOL[0].submit(fn, *args, **kwargs).result()


def fig_to_image(fig: Any) -> Any:  # noqa: ANN401
    """Render a matplotlib Figure to a PIL image and release it (``viz.to_image``, the one helper)."""
    import viz

    return viz.to_image(fig)


def stats_rows(stats: dict[str, Any], *, method: str | None = None) -> list[list[str]]:
    """The stats dict of ``answer`` as table rows: quantity, unpruned, pruned, pruned/unpruned.

    Prefill times are medians of ``stats["timing_repeats"]`` runs (the label says how many); for a method that
    prunes inside the LLM (registry stage ``"llm"``), a row with the layer-averaged visual tokens."""
    rows = []
    repeats = stats.get("timing_repeats")
    for label, key, fmt in _STAT_ROWS:
        before, after = stats.get(f"{key}_before"), stats.get(f"{key}_after")
        if before is None and after is None:
            continue
        if key == "prefill_seconds" and repeats:
            label = f"{label} (median of {repeats} runs)"
        ratio = f"{after / before:.3f}" if isinstance(before, (int, float)) and before and after is not None else ""
        rows.append([label, fmt(before), fmt(after), ratio])
    if stats.get("selection_seconds") is not None:
        rows.append(["selection time", "", _ms(stats["selection_seconds"]), ""])
    if stats.get("prefill_seconds_before") and stats.get("prefill_seconds_after"):
        rows.append(
            ["prefill speedup", "", f"{stats['prefill_seconds_before'] / stats['prefill_seconds_after']:.2f}x", ""]
        )
    n, eq = stats.get("visual_tokens_before"), stats.get("visual_tokens_equivalent")
    if method is not None and _in_llm(method) and eq is not None and n:
        rows.append(["visual tokens, averaged over layers", _num(n), f"{eq:,.1f}", f"{eq / n:.3f}"])
    return rows


def _in_llm(method: str) -> bool:
    import resprune

    return resprune.method_info(method).stage == "llm"


def efficiency_note(method: str, stats: dict[str, Any]) -> str:
    """One paragraph under the efficiency table: how its numbers were measured, and what an in-LLM method's rows
    mean (its first layers see every visual token)."""
    repeats = stats.get("timing_repeats")
    out = []
    if repeats:
        out.append(
            f"Prefill times are the median of {repeats} runs each; on a busy CPU single timings vary by several "
            "times, so compare ratios, not milliseconds."
        )
    if _in_llm(method):
        layer = stats.get("llm_layer")
        first = f"its first {layer} layers" if layer is not None else "its first layers"
        out.append(
            f"**{method}** prunes inside the language model: {first} see all "
            f"{stats.get('visual_tokens_before', 'N')} visual tokens and the later ones only the kept ones. The "
            "sequence length above is the later layers'; the KV cache holds every token in the first layers (so "
            "its ratio is above K / N) and the FLOPs count the full first layers. Its timed prefill includes the "
            "attention scores it computes to choose, which on a model this small can cost more than it saves."
        )
    return " ".join(out)


def _num(x: Any) -> str:  # noqa: ANN401
    return "" if x is None else f"{x:,}" if isinstance(x, int) else f"{x:,.4g}"


def _ms(x: Any) -> str:  # noqa: ANN401
    return "" if x is None else f"{1000 * x:.1f} ms"


def _bytes(x: Any) -> str:  # noqa: ANN401
    return "" if x is None else f"{x / 2**20:.2f} MiB" if x >= 2**20 else f"{x / 1024:.1f} KiB"


_STAT_ROWS = [
    ("visual tokens", "visual_tokens", _num),
    ("sequence length", "seq_len", _num),
    ("KV-cache bytes", "kv_cache_bytes", _bytes),
    ("prefill FLOPs", "prefill_flops", lambda x: "" if x is None else f"{x / 1e9:,.3f} G"),
    ("prefill time", "prefill_seconds", _ms),
    ("generation time", "generate_seconds", _ms),
]


def selection_record(run: dict[str, Any]) -> dict[str, Any]:
    """The JSON record of a run: settings, answers, kept indices, order, gains, residual curve, relevance."""
    ans = run["answer"]
    res = ans.result
    return {
        "model": run["model"],
        "method": run["method"],
        "instruction": run["prompt"],
        "keep": run["keep"],
        "visual_tokens": run["n"],
        "params": {
            k: (v if isinstance(v, (int, float, str, bool, type(None))) else repr(v))
            for k, v in dict(res.params).items()
        },
        "pruned_answer": ans.pruned,
        "unpruned_answer": ans.unpruned,
        "query_words": [list(w) for w in res.query_words],
        "selections": [s.to_dict() for s in res.selections],
        "stats": _jsonable(ans.stats),
        "notes": list(run["notes"]),
    }


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if isinstance(v, (int, float, str, bool, type(None), list))}


EMPTY_ANSWER = "(empty answer)"


def shown(answer: str | None) -> str:
    """An answer as the page shows it: ``EMPTY_ANSWER`` for an empty one (a blank box looks like a failure)."""
    return answer if (answer or "").strip() else EMPTY_ANSWER


def agreement_markdown(
    pruned: str, unpruned: str | None, *, outside: tuple[str, ...] = (), expected: str | None = None
) -> str:
    """The verdict line: agree / differ, or why there is nothing to conclude (an empty answer; an input outside
    the model's world, ``outside``, whose answers are meaningless); with ``expected``, the ground truth's marks."""
    if outside:
        return (
            "**Not a finding: this input is outside what the model knows.** "
            + " ".join(outside)
            + " Its answers here are meaningless, so whether they agree says nothing about pruning; the pictures "
            "still show what the method keeps of this image."
        )
    if unpruned is None:
        return ""
    if not pruned.strip() or not unpruned.strip():
        which = "Both answers are" if not pruned.strip() and not unpruned.strip() else "One answer is"
        return f"**{which} empty**: nothing to compare."
    same = _norm(pruned) == _norm(unpruned)
    line = "**The answers agree.**" if same else "**The answers differ**: pruning changed what the model says."
    if expected:
        marks = [
            f"{who} {'✓ right' if _norm(a) == _norm(expected) else '✗ wrong'}"
            for who, a in (("pruned", pruned), ("unpruned", unpruned))
        ]
        line += f" Expected answer **{expected}**: " + ", ".join(marks) + "."
    return line


def _norm(s: str) -> str:
    return " ".join(s.lower().strip().strip(".").split())


def figures_for(run: dict[str, Any]) -> dict[str, Any]:
    """Every figure of one run, as PIL images: overlay, residual-energy curves, relevance heatmap."""
    import viz

    res, img, ans = run["answer"].result, run["image"], run["answer"]
    answer = figure_answer(ans.pruned, bool(run.get("outside_world")))
    return {
        "overlay": draw(lambda: fig_to_image(viz.plot_kept_tokens(img, res, answer=answer))),
        "curves": draw(lambda: fig_to_image(viz.plot_residual_energy(res))),
        "relevance_map": draw(lambda: fig_to_image(viz.plot_relevance(img, res))),
    }


def figure_answer(answer: str, outside: bool) -> str:
    """An answer as a figure's title shows it: ``EMPTY_ANSWER`` for an empty one, and marked as meaningless for an
    input outside the offline model's world (the picture still shows what the method kept of the image)."""
    return shown(answer) + (" (meaningless: outside the model's world)" if outside else "")


def runs_root() -> Path:
    """Where per-run files go: a folder inside gradio's cache, so ``delete_cache`` removes them (made on first use,
    never at import)."""
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder()) / "resprune-runs"


def new_run_dir() -> Path:
    """A fresh folder for one run's files; keeps at most ``MAX_RUN_DIRS`` of them (oldest and empty ones go)."""
    root = runs_root()
    with _RUN_DIR_LOCK:
        root.mkdir(parents=True, exist_ok=True)
        dirs = []
        for d in root.iterdir():
            try:
                if not any(d.iterdir()):  # emptied by gradio's delete_cache
                    d.rmdir()
                    continue
                dirs.append((d.stat().st_mtime, d))
            except OSError:
                continue
        dirs.sort()
        for _, d in dirs[: max(0, len(dirs) - MAX_RUN_DIRS + 1)]:
            shutil.rmtree(d, ignore_errors=True)
        out = root / uuid.uuid4().hex
        out.mkdir()
    return out


def write_downloads(run: dict[str, Any], figures: dict[str, Any]) -> list[str]:
    """PNG of every figure and the selection JSON, in a fresh run folder (``new_run_dir``); returns the file paths."""
    out = new_run_dir()
    paths = []
    for name, im in figures.items():
        p = out / f"{run['method']}_{name}.png"
        im.save(p)
        paths.append(str(p))
    p = out / f"{run['method']}_selection.json"
    p.write_text(json.dumps(selection_record(run), indent=1))
    paths.append(str(p))
    return paths


def _need_state(state: Any) -> dict[str, Any]:  # noqa: ANN401
    if not isinstance(state, dict) or "answer" not in state or "image" not in state:
        raise gr.Error("Run the model first; the step-through replays its selection.", title="Nothing to show")
    return state


@guarded
def step_image(state: dict[str, Any] | None, step: Any) -> Any:  # noqa: ANN401
    """The greedy step-through figure after ``step`` picks, from the stored run (no model call)."""
    import viz

    state = _need_state(state)
    res = state["answer"].result
    k = res.selections[0].keep
    step = 0 if step is None else _number(step, "step", -math.inf, math.inf)
    t = int(max(0, min(k, step)))
    return draw(lambda: fig_to_image(viz.plot_greedy_step(state["image"], res, t)))


@guarded
def gif_file(state: dict[str, Any] | None) -> str:
    """The whole greedy selection as a GIF file (in a run folder), from the stored run."""
    import viz

    state = _need_state(state)
    data = draw(viz.greedy_animation, state["image"], state["answer"].result, max_frames=24)
    p = new_run_dir() / "greedy.gif"
    p.write_bytes(data)
    return str(p)


def _slim_state(run: dict[str, Any]) -> dict[str, Any]:
    """What the step-through needs, kept per session: the run as ``_answer`` returned it (no model inputs and no
    hooks: those never cross its boundary)."""
    return dict(run)


NO_IMAGE = (
    "**No image yet.** Pick one of the examples (scenes with their expected answer, or photos), press **New scene**, "
    "or upload an image; then press **Run**."
)


def _expected_answer(expected: Any, prompt: str) -> str | None:  # noqa: ANN401
    """The ground truth of ``expected`` (``{"question", "answer"}``, set by an example or New scene) when the
    instruction is still its question; None once the question was edited or the image replaced."""
    if not isinstance(expected, dict) or not isinstance(expected.get("answer"), str):
        return None
    return expected["answer"] if str(expected.get("question", "")).strip() == prompt else None


def cleared_outputs(message: str = "") -> tuple:
    """What every output of ``on_run`` shows before a run (or after a new image): nothing of an old run."""
    return (
        "",  # pruned
        "",  # unpruned
        message,  # verdict
        "",  # info
        None,  # overlay
        None,  # curves
        None,  # relevance
        [],  # stats
        gr.update(value=0, maximum=1, interactive=False),  # step
        None,  # step image
        None,  # downloads
        None,  # state
        None,  # API JSON
        "",  # token under the click
    )


@guarded
def on_run(
    image: Any,  # noqa: ANN401
    instruction: Any,  # noqa: ANN401
    model_name: str,
    method: str,
    keep_percent: Any,  # noqa: ANN401
    keep_tokens: Any,  # noqa: ANN401
    alpha: Any,  # noqa: ANN401
    seed_rule: str | None,
    expected: Any = None,  # noqa: ANN401
    query_mode: Any = None,  # noqa: ANN401
    progress: Any = gr.Progress(),  # noqa: B008, ANN401 - gradio injects progress through the default
) -> tuple:
    """The Run button: answers, verdict, figures, stats, downloads, the state for the step-through and the overlay
    clicks, and the API record. With no image yet: a message where the answers go (not an error on every output).

    ``expected`` is ``{"question", "answer"}`` of an example or a New scene: the verdict marks the answers against
    it while the instruction is still that question. ``query_mode``: the query words of text-aware methods
    (``prune``'s ``query``: nouns, keywords or instruction; None or "method default": the method's own)."""
    if image is None:
        return cleared_outputs(NO_IMAGE)
    run = run_answer(
        image,
        instruction,
        model_name,
        method,
        keep_percent,
        keep_tokens,
        alpha,
        seed_rule,
        progress=progress,
        query_mode=query_mode,
    )
    progress(0.7, desc="Drawing the figures…")
    ans = run["answer"]
    figs = figures_for(run)
    k = run["keep"]
    files = write_downloads(run, figs)
    for note in run["notes"]:
        if note not in run["outside_world"]:  # those are shown where the answers are
            gr.Warning(note, duration=8)
    words = ", ".join(w for ws in ans.result.query_words for w in ws) or "(none: text-free score)"
    info = (
        f"**{run['method']}** kept **{k} of {run['n']}** visual tokens · query words: {words} · {run['seconds']:.2f} s"
    )
    notes = "\n".join(f"- {n}" for n in run["notes"] if n not in run["outside_world"])
    hint = "Click a patch on the overlay to see its index, relevance, residual energy at pick and pick order."
    state = dict(_slim_state(run), overlay=figs["overlay"])
    verdict = agreement_markdown(
        ans.pruned,
        ans.unpruned,
        outside=run["outside_world"],
        expected=_expected_answer(expected, run["prompt"]),
    )
    first = min(k, max(1, k // 4))
    return (
        shown(ans.pruned),
        "" if ans.unpruned is None else shown(ans.unpruned),
        verdict,
        info + ("\n\n" + notes if notes else "") + f"\n\n*{hint}*",
        figs["overlay"],
        figs["curves"],
        figs["relevance_map"],
        stats_rows(ans.stats, method=run["method"]),
        gr.update(maximum=k, value=first, interactive=True),
        step_image(state, first),
        files,
        state,
        api_record(run),
        "",
    )


@guarded
def on_token_click(state: dict[str, Any] | None, evt: gr.SelectData) -> str:
    """A click on the overlay: the token under it (``viz.token_at`` on the overlay figure) and what the selection
    did with it."""
    import viz

    state = _need_state(state)
    x, y = evt.index
    t = viz.token_at(state["answer"].result, x, y, figure=state["overlay"])
    if t is None:
        return "No token under this point: click a patch of the image."
    facts = [f"**token {t['index']}** ({t['view']}, row {t['row']}, column {t['col']})"]
    facts.append(f"kept, pick **#{t['pick']}**" if t["kept"] else "**pruned**")
    for key, value in t.items():  # the numbers (text relevance in [0, 1], energies), labelled by their keys
        if isinstance(value, float) and not (t["kept"] and key == "energy_left"):
            facts.append(f"{_FACT_LABELS.get(key, key.replace('_', ' '))} {value:.3g}")
    return " · ".join(facts)


_FACT_LABELS = {
    "energy_at_pick": "residual energy at its pick",
    "energy_left": "share of its energy outside the kept tokens' span",
}


@guarded
def on_compare(
    image: Any,  # noqa: ANN401
    instruction: Any,  # noqa: ANN401
    model_name: str,
    keep_percent: Any,  # noqa: ANN401
    keep_tokens: Any,  # noqa: ANN401
    expected: Any = None,  # noqa: ANN401
    progress: Any = gr.Progress(),  # noqa: B008, ANN401 - gradio injects progress through the default
) -> tuple:
    """All methods at the same budget on the same input: a grid of overlays with their answers, and a table with
    each answer marked against the ground truth (``expected``, while the instruction is its question)."""
    import resprune
    import viz

    img, _, prompt, model, processor, _, keep = _prepare(
        image, instruction, model_name, keep_percent, keep_tokens, progress
    )
    truth = _expected_answer(expected, prompt)
    outside = world_notes(model_name, img, prompt)
    results, answers, rows = {}, {}, []
    methods = resprune.list_methods()
    for i, m in enumerate(methods):
        progress((i + 1) / (len(methods) + 1), desc=f"{m}…")
        try:
            a = _answer(model_name, img, prompt, m, keep, False)
        except (ValueError, TypeError) as e:
            if not _library_error(e):
                raise
            rows.append([m, "", f"not available: {_scrub(str(e), 200)}", ""])
            continue
        results[m], answers[m] = a.result, figure_answer(a.pruned, bool(outside))
        mark = "" if truth is None or not a.pruned.strip() else "✓" if _norm(a.pruned) == _norm(truth) else "✗"
        mark = "(outside the model's world)" if outside else mark
        rows.append([m, shown(a.pruned), f"{1000 * a.stats.get('selection_seconds', 0.0):.1f} ms", mark])
    grid = draw(lambda: fig_to_image(viz.plot_method_grid(img, results, answers=answers))) if results else None
    return grid, rows


@guarded
def on_side_by_side(
    image: Any,  # noqa: ANN401
    instruction: Any,  # noqa: ANN401
    model_name: str,
    method_a: Any,  # noqa: ANN401
    method_b: Any,  # noqa: ANN401
    keep_percent: Any,  # noqa: ANN401
    keep_tokens: Any,  # noqa: ANN401
    progress: Any = gr.Progress(),  # noqa: B008, ANN401
) -> tuple:
    """Two methods on the same image at the same budget: their overlays side by side, and which patches differ
    (kept by both, by only one of them, with the token indices the overlay click shows)."""
    import viz

    a, b = _check_method(method_a), _check_method(method_b)
    if a == b:
        raise gr.Error("Pick two different methods to compare side by side.", title="Same method twice")
    img, _, prompt, _, _, n, keep = _prepare(image, instruction, model_name, keep_percent, keep_tokens, progress)
    outside = bool(world_notes(model_name, img, prompt))
    res, answers = {}, {}
    for m in (a, b):
        ans = _answer(model_name, img, prompt, m, keep, False)
        res[m], answers[m] = ans.result, figure_answer(ans.pruned, outside)
    ka, kb = (set(res[m].selections[0].keep_idx.tolist()) for m in (a, b))
    grid = draw(lambda: fig_to_image(viz.plot_method_grid(img, res, answers=answers, ncols=2)))

    def idx(s: set[int]) -> str:
        return ", ".join(str(i) for i in sorted(s)) or "none"

    text = (
        f"At **{keep} of {n}** tokens both keep **{len(ka & kb)}**; only **{a}** keeps {len(ka - kb)} "
        f"(tokens {idx(ka - kb)}); only **{b}** keeps {len(kb - ka)} (tokens {idx(kb - ka)}). Answers: {a} "
        f"*{answers[a]}*, {b} *{answers[b]}*."
    )
    return grid, text


DEFAULT_INSTRUCTION = "What colour is the circle?"


@guarded
def on_new_scene(
    seed: Any = None,  # noqa: ANN401
    instruction: Any = None,  # noqa: ANN401
    expected: Any = None,  # noqa: ANN401
    replace: bool = False,
    model_name: Any = None,  # noqa: ANN401
) -> tuple:
    """Draw a fresh scene with a suggested question: ``(image, instruction, info, expected)``.

    The scene comes from the world of ``model_name`` (``model_world``: world 2 for ``scenes-v2``), of the default
    model when none is named (``default_world``), and from world 1 for models of no scene world. The suggestion
    replaces the instruction only when asked (``replace``) or when the box holds no question of the user's own:
    empty, the app's default, or the previous suggestion (``expected["question"]``)."""
    import random

    from resprune import scenes

    s = int(_number(seed, "seed", 0, 2**31 - 1, integer=True)) if seed not in (None, 0) else None
    s = s or random.randrange(10**6, 10**7)
    world = model_world(model_name or DEFAULT_MODEL) or 1
    scene = scenes.sample(s, world)
    q = scene.questions[0]
    typed = (instruction or "").strip() if isinstance(instruction, str) else ""
    previous = expected.get("question") if isinstance(expected, dict) else None
    where = f"Scene #{s}" if world == 1 else f"Scene #{s} of scene world {world}"
    if replace or typed in ("", DEFAULT_INSTRUCTION, previous):
        info = f"{where}; the expected answer is **{q.answer}** ({q.type})."
        return scene.image, q.text, info, {"question": q.text, "answer": q.answer}
    info = (
        f"{where}. Your question was kept; this scene's suggested question is *{q.text}* (expected answer "
        f"**{q.answer}**): tick *New scene replaces my question* to use it."
    )
    return scene.image, instruction, info, {"question": q.text, "answer": q.answer}


def examples(world: int | None = None) -> list[dict[str, Any]]:
    """The gallery of ``assets/examples`` (``examples.json``) for a model of scene world ``world`` (default: the
    default model's, ``default_world``): that world's scenes (an entry's ``world``, 1 where it has none), then the
    photos; each ``{"file", "question", "answer", "kind", "credit", "world"}`` with ``file`` made absolute; only the
    entries whose image is there."""
    world = default_world() if world is None else world
    manifest = EXAMPLES_DIR / "examples.json"
    if not manifest.is_file():
        return []
    out = []
    for e in json.loads(manifest.read_text()):
        p = EXAMPLES_DIR / e["file"]
        if e.get("kind") == "scene" and (e.get("world") or 1) != world:
            continue
        if p.is_file():
            out.append(dict(e, file=str(p)))
    return out


def model_examples(model_name: Any) -> list[dict[str, Any]]:  # noqa: ANN401
    """The gallery shown with model ``model_name``: its scene world's examples (world 1's for models of none)."""
    return examples(model_world(model_name) or 1)


def example_caption(e: dict[str, Any]) -> str:
    return e["question"] + (f" (expected: {e['answer']})" if e.get("answer") else " (photo)")


def gallery_label(world: int) -> str:
    return f"Examples: world-{world} scenes and photos (click one to run it)"


@guarded
def on_model(model_name: Any) -> Any:  # noqa: ANN401
    """A new model in the list: the examples gallery shows its scene world's scenes (and the photos)."""
    ex = model_examples(model_name)
    return gr.update(
        value=[(e["file"], example_caption(e)) for e in ex],
        label=gallery_label(model_world(model_name) or 1),
        visible=bool(ex),
    )


@guarded
def on_example(index: Any, model_name: Any = DEFAULT_MODEL) -> tuple:  # noqa: ANN401
    """Example ``index`` of the gallery shown with ``model_name`` (``model_examples``): ``(image, instruction,
    info, expected)``."""
    from PIL import Image

    ex = model_examples(model_name)
    i = int(_number(index, "example", 0, max(0, len(ex) - 1), integer=True)) if ex else None
    if i is None:
        raise gr.Error("There are no examples in this installation.", title="No examples")
    e = ex[i]
    with Image.open(e["file"]) as im:
        image = im.convert("RGB")
    if e.get("answer"):
        world = e.get("world") or 1
        info = f"Example: a scene of scene world {world}; the expected answer is **{e['answer']}**."
        expected = {"question": e["question"], "answer": e["answer"]}
    else:
        info = f"Example photo: {e.get('credit') or 'a real photo'}. No ground truth."
        expected = None
    return image, e["question"], info, expected


@guarded
def on_example_select(model_name: Any, evt: gr.SelectData) -> tuple:  # noqa: ANN401
    """The gallery's select event: the example clicked (of the gallery shown with ``model_name``), and every old
    output cleared."""
    return (*on_example(evt.index, model_name), *cleared_outputs(), *CLEARED_COMPARE)


CLEARED_COMPARE = (None, [], None, "")  # the method grid and its table, the side-by-side image and its text


@guarded
def on_new_image() -> tuple:
    """A new upload: no old answers, figures or ground truth stay on the page."""
    return (*cleared_outputs(), None, "", *CLEARED_COMPARE)


_FIRST: dict[str, Any] = {}


@guarded
def on_first_screen(
    model_name: str = DEFAULT_MODEL,
    method: str | None = None,
    progress: Any = gr.Progress(),  # noqa: B008, ANN401
) -> tuple:
    """The page's first view: the first example, already run (computed once per process, then reused), so the
    very first screen shows answers and the overlay."""
    import resprune

    ex = model_examples(model_name)
    if not ex:
        return (None, DEFAULT_INSTRUCTION, "", None, *cleared_outputs(NO_IMAGE))
    method = method or resprune.DEFAULT_METHOD
    key = (model_name, method)
    cached = _FIRST.get(key)
    if cached is None or not all(Path(f).exists() for f in cached[4 + 10] or ()):  # run files removed by the cache
        image, question, info, expected = on_example(0, model_name)
        outs = on_run(
            image, question, model_name, method, DEFAULT_KEEP_PERCENT, 0, None, "auto", expected, progress=progress
        )
        cached = _FIRST[key] = (image, question, info, expected, *outs)
    return cached


def warm_first_screen(model_name: str = DEFAULT_MODEL) -> None:
    """Compute the first screen before the server takes requests, so the page's load event answers at once: a slow
    load event would land after a visitor's own upload and put the first example back over it."""
    on_first_screen(model_name, progress=lambda *a, **k: None)


@guarded
def api_answer(
    image: Any,  # noqa: ANN401
    instruction: Any,  # noqa: ANN401
    model_name: str | None,
    method: str | None,
    keep: Any,  # noqa: ANN401
    alpha: Any,  # noqa: ANN401
) -> dict[str, Any]:
    """API endpoint ``/answer``: one JSON object with the answers, kept indices and stats.

    ``keep`` is a whole number of tokens >= 1, or ``None`` for ``DEFAULT_KEEP_PERCENT`` %; ``alpha`` a number in
    ``ALPHA_RANGE`` or ``None`` for the method's default."""
    import resprune

    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, (int, float)) or not keep >= 1):
        raise gr.Error(f"keep must be a whole number of tokens (at least 1), got {keep!r}.", title="Bad budget")
    run = run_answer(
        image,
        instruction,
        model_name or DEFAULT_MODEL,
        method or resprune.DEFAULT_METHOD,
        DEFAULT_KEEP_PERCENT,
        keep,
        alpha,
        None,
    )
    return api_record(run)


def api_record(run: dict[str, Any]) -> dict[str, Any]:
    """The ``/answer`` endpoint's JSON object for a run (also shown in the page's "API result" panel).

    ``comparable`` is False where the verdict does not compare the answers: an empty answer, or an input outside
    the offline model's world (``outside_world`` says why)."""
    rec = selection_record(run)
    pruned, unpruned = rec["pruned_answer"], rec["unpruned_answer"] or ""
    return {
        "pruned_answer": pruned,
        "unpruned_answer": rec["unpruned_answer"],
        "agree": _norm(pruned) == _norm(unpruned),
        "comparable": bool(pruned.strip() and unpruned.strip() and not run["outside_world"]),
        "outside_world": list(run["outside_world"]),
        "kept_indices": [s["keep_idx"] for s in rec["selections"]],
        "visual_tokens": rec["visual_tokens"],
        "keep": rec["keep"],
        "query_words": rec["query_words"],
        "stats": rec["stats"],
        "notes": rec["notes"],
    }


# ---------------------------------------------------------------------------------------------------------------
# The Blocks


class UploadImage(gr.Image):
    """gr.Image that hands the raw upload to the handler (a file path, or the ``data:`` URL as sent), undecoded and
    unconverted, so ``resprune.images`` applies its size rule from the header and reports its own mode notes."""

    is_template = True  # use gr.Image's frontend

    def preprocess(self, payload: Any) -> Any:  # noqa: ANN401
        if payload is None:
            return None
        url = getattr(payload, "url", None)
        if isinstance(url, str) and url.startswith("data:"):
            return url  # decoded by resprune.images.load_image, with its size limits
        path = getattr(payload, "path", None)
        if not path:
            raise gr.Error("The image upload carried no file; upload it again.", title="Image problem")
        return str(path)


class RawNumber(gr.Number):
    """gr.Number that passes the value as sent (no rounding, no bound check that fails without a message): the
    handler validates it and names the argument."""

    is_template = True

    def preprocess(self, payload: Any) -> Any:  # noqa: ANN401
        return payload


class RawSlider(gr.Slider):
    """gr.Slider that passes the value as sent; the handler validates it."""

    is_template = True

    def preprocess(self, payload: Any) -> Any:  # noqa: ANN401
        return payload


class Demo(gr.Blocks):
    """The app's Blocks: input errors raised before a handler runs (a file path that was never uploaded, a payload
    of the wrong shape) become messages; ``launch`` sets the upload size limit."""

    async def preprocess_data(self, *args: Any, **kwargs: Any) -> Any:  # noqa: ANN401
        try:
            return await super().preprocess_data(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as e:  # noqa: BLE001 - no bare "Error" for a malformed request
            from gradio.exceptions import InvalidPathError

            log.info("refused request input: %s: %s", type(e).__name__, _scrub(str(e)))
            if isinstance(e, InvalidPathError) or isinstance(e.__cause__, InvalidPathError):
                raise gr.Error(
                    "A file argument must be uploaded to this server first (gradio_client's handle_file does it); "
                    "paths on the server are not read.",
                    title="File refused",
                ) from None
            raise gr.Error(
                f"An argument of this request could not be read ({type(e).__name__}); see the endpoint's API page "
                "for the expected types.",
                title="Bad request",
            ) from None

    def launch(self, *args: Any, **kwargs: Any) -> Any:  # noqa: ANN401
        from resprune.images import MAX_FILE_BYTES

        kwargs.setdefault("max_file_size", MAX_FILE_BYTES)
        return super().launch(*args, **kwargs)


HOW_IT_WORKS = """**How it works** (ResPrune, the default method):
1. **Visual tokens.** The vision tower cuts the image into patches; each becomes a vector (a *visual token*) the
   language model reads. Most are redundant.
2. **Residual energy.** For every token, how much of it the tokens kept so far cannot explain: the squared length
   of the part outside their span (the *Residual energy* tab).
3. **Text weight.** Each token's similarity to the question's words (the *Text relevance* tab), raised to the
   power alpha, multiplies its residual energy.
4. **Greedy pick.** Keep the token with the largest weighted residual energy, update the others' residuals, repeat
   until the budget K is spent. Move the slider below to watch the picks one by one."""

# Runs in the browser before on_run: on a narrow screen, bring the answers into view. Gradio passes a js function's
# return value to the Python function as its inputs, so it hands back what it was given.
SCROLL_TO_ANSWERS = """(...inputs) => { if (window.innerWidth < 700) {
  document.querySelector('#answers')?.scrollIntoView({behavior: 'instant', block: 'start'}); } return inputs; }"""


def build_demo(*, delete_cache: tuple[int, int] | None = DELETE_CACHE) -> gr.Blocks:
    """The app's Blocks (nothing is loaded until the first request; the page's load event runs the first example).

    Args:
        delete_cache: gradio's ``(frequency, age)`` in seconds for removing the files this app put in its cache.
    """
    import resprune

    gallery = model_examples(DEFAULT_MODEL)
    with Demo(title="resprune demo", delete_cache=delete_cache) as demo:
        gr.Markdown(
            f"# {TITLE}\nPick an example, draw a scene or upload an image, ask a question, and compare the answer "
            "of the pruned model with the unpruned one. The pictures show which visual tokens survived, how much "
            "of the token set they explain (residual energy), and where the question pulled the choice."
        )
        state = gr.State(None)
        expected = gr.State(None)
        # Row 1: the input and the examples, the answers and the figures (on a phone, Run scrolls to the answers);
        # row 2: the settings, the numbers and downloads.
        with gr.Row():
            with gr.Column(scale=1):
                image = UploadImage(
                    type="filepath",
                    image_mode=None,
                    label="Image",
                    height=320,
                    sources=["upload", "clipboard"],
                    format="png",  # scenes reach the model exactly as drawn (webp, the default, is lossy)
                )
                instruction = gr.Textbox(
                    label="Instruction (Enter runs)",
                    value=DEFAULT_INSTRUCTION,
                    lines=1,
                    max_lines=6,
                    elem_id="instruction",
                )
                with gr.Row():
                    new_scene = gr.Button("New scene")
                    run_btn = gr.Button("Run", variant="primary", elem_id="run")
                replace = gr.Checkbox(False, label="New scene replaces my question")
                scene_info = gr.Markdown(elem_id="scene-info")
                ex_gallery = gr.Gallery(
                    [(e["file"], example_caption(e)) for e in gallery],
                    label=gallery_label(default_world()),
                    columns=3,
                    height="auto",
                    object_fit="cover",
                    allow_preview=False,
                    interactive=False,
                    elem_id="examples",
                    visible=bool(gallery),
                )
            with gr.Column(scale=2, elem_id="answers"):
                with gr.Row():
                    pruned = gr.Textbox(label="Pruned answer", interactive=False, elem_id="pruned-answer")
                    unpruned = gr.Textbox(label="Unpruned answer", interactive=False, elem_id="unpruned-answer")
                agree = gr.Markdown(elem_id="verdict")
                info = gr.Markdown(elem_id="run-info")
                token_info = gr.Markdown(elem_id="token-info")
                with gr.Tabs(overflow_behavior="wrap"):
                    with gr.Tab("Kept tokens"):
                        overlay = gr.Image(
                            label="Kept-token overlay (click a patch)",
                            type="pil",
                            elem_id="overlay",
                            interactive=False,
                            show_label=False,
                        )
                    with gr.Tab("Residual energy"):
                        curves = gr.Image(
                            label="Residual-energy curves", type="pil", interactive=False, show_label=False
                        )
                    with gr.Tab("Text relevance"):
                        relevance = gr.Image(
                            label="Text-relevance heatmap", type="pil", interactive=False, show_label=False
                        )
                    with gr.Tab("Greedy step-through"):
                        gr.Markdown(HOW_IT_WORKS, elem_id="how-it-works")
                        step = RawSlider(0, 1, value=0, step=1, label="Picks shown", interactive=False, elem_id="step")
                        step_img = gr.Image(
                            label="Selection after t picks",
                            type="pil",
                            interactive=False,
                            show_label=False,
                            elem_id="step-image",
                        )
                        gif_btn = gr.Button("Make the animation (GIF)")
                        gif = gr.Image(label="All steps", type="filepath", interactive=False)
                    with gr.Tab("Compare methods"):
                        compare_btn = gr.Button("Run every method at this budget", elem_id="compare")
                        grid = gr.Image(
                            label="Method comparison", type="pil", interactive=False, show_label=False, elem_id="grid"
                        )
                        with gr.Accordion("Two methods side by side: which patches differ", open=False):
                            with gr.Row():
                                method_a = gr.Dropdown(
                                    resprune.list_methods(), value=resprune.DEFAULT_METHOD, label="Method A"
                                )
                                method_b = gr.Dropdown(
                                    resprune.list_methods(),
                                    value=next(m for m in resprune.list_methods() if m != resprune.DEFAULT_METHOD),
                                    label="Method B",
                                )
                            pair_btn = gr.Button("Compare A and B", elem_id="pair")
                            pair_text = gr.Markdown(elem_id="pair-text")
                            pair_img = gr.Image(
                                label="A and B", type="pil", interactive=False, show_label=False, elem_id="pair-image"
                            )
                        grid_table = gr.Dataframe(
                            headers=["method", "answer", "selection time", "vs expected"],
                            interactive=False,
                            elem_id="grid-table",
                        )
        with gr.Row():
            with gr.Column(scale=1):
                model = gr.Dropdown(model_choices(), value=DEFAULT_MODEL, label="Model")
                method = gr.Dropdown(method_choices(), value=resprune.DEFAULT_METHOD, label="Method")
                keep_percent = RawSlider(
                    1, 100, value=DEFAULT_KEEP_PERCENT, step=1, label="Budget (% of visual tokens)"
                )
                keep_tokens = RawNumber(value=0, precision=0, minimum=0, label="Budget in tokens (0: use the %)")
                takes = method_settings(resprune.DEFAULT_METHOD)
                with gr.Accordion("Settings of this method", open=False, visible=any(takes.values())) as settings:
                    alpha = RawSlider(
                        *ALPHA_RANGE,
                        value=0.75,
                        step=0.05,
                        label="alpha (text guidance strength)",
                        visible=takes["alpha"],
                    )
                    seed_rule = gr.Radio(
                        ["auto", "max_norm", "weighted"],
                        value="auto",
                        label="Seed rule (auto: CLS attention where the tower has a CLS, else max-norm)",
                        visible=takes["seed"],
                    )
                    query_mode = gr.Radio(
                        query_choices(),
                        value=QUERY_DEFAULT,
                        label="Query words (nouns: the paper; keywords: every content word; instruction: every "
                        "token, the paper's Setting-1 ablation)",
                        visible=takes["query"],
                    )
            with gr.Column(scale=2):
                stats = gr.Dataframe(
                    headers=["quantity", "unpruned", "pruned", "pruned / unpruned"],
                    label="Efficiency",
                    interactive=False,
                    wrap=True,
                    column_widths=["34%", "22%", "22%", "22%"],
                )
                stats_note = gr.Markdown(elem_id="stats-note")
                downloads = gr.File(
                    label="Downloads (figures as PNG, selection as JSON)", file_count="multiple", interactive=False
                )
                with gr.Accordion("API result (JSON)", open=False):
                    api_json = gr.JSON()
                    api_keep = RawNumber(value=36, precision=0, label="keep (tokens)", visible=False)

        # the query-words setting travels as state, so /run keeps its API (8 values: state is not part of it)
        query_state = gr.State(None)
        query_mode.change(check_query_mode, query_mode, query_state, api_name=False)
        inputs = [image, instruction, model, method, keep_percent, keep_tokens, alpha, seed_rule, expected, query_state]
        run_outputs = [
            pruned,
            unpruned,
            agree,
            info,
            overlay,
            curves,
            relevance,
            stats,
            step,
            step_img,
            downloads,
            state,
            api_json,
            token_info,
        ]
        run_btn.click(on_run, inputs, run_outputs, api_name="run", concurrency_limit=1, js=SCROLL_TO_ANSWERS).then(
            on_stats_note, [state], stats_note, api_name=False
        )
        instruction.submit(on_run, inputs, run_outputs, api_name=False, concurrency_limit=1, js=SCROLL_TO_ANSWERS).then(
            on_stats_note, [state], stats_note, api_name=False
        )
        compare_outputs = [grid, grid_table, pair_img, pair_text]
        new_outputs = [*run_outputs, expected, scene_info, *compare_outputs]
        image.upload(on_new_image, None, new_outputs, api_name=False)
        image.clear(on_new_image, None, new_outputs, api_name=False)
        ex_gallery.select(
            on_example_select,
            [model],
            [image, instruction, scene_info, expected, *run_outputs, *compare_outputs],
            api_name=False,
        ).then(on_run, inputs, run_outputs, api_name=False, concurrency_limit=1).then(
            on_stats_note, [state], stats_note, api_name=False
        )
        overlay.select(on_token_click, state, token_info, api_name=False)
        method.change(on_method, method, [settings, alpha, seed_rule, query_mode], api_name=False)
        model.change(on_model, model, ex_gallery, api_name=False)  # the gallery shows the model's scene world
        step.change(on_step, [state, step], step_img, api_name=False, concurrency_limit=4)
        gif_btn.click(gif_file, state, gif, api_name=False)
        compare_btn.click(
            on_compare,
            [image, instruction, model, keep_percent, keep_tokens, expected],
            [grid, grid_table],
            api_name="compare",
            concurrency_limit=1,
        )
        pair_btn.click(
            on_side_by_side,
            [image, instruction, model, method_a, method_b, keep_percent, keep_tokens],
            [pair_img, pair_text],
            api_name=False,
            concurrency_limit=1,
        )
        new_scene.click(
            on_new_scene_ui,
            [instruction, expected, replace, model],
            [image, instruction, scene_info, expected, *run_outputs, *compare_outputs],
            api_name=False,
        )
        api_btn = gr.Button(visible=False)
        api_btn.click(on_new_scene_api, None, [image, instruction, scene_info], api_name="new_scene")
        api_btn.click(
            api_answer,
            [image, instruction, model, method, api_keep, alpha],
            api_json,
            api_name="answer",
            concurrency_limit=1,
        )
        demo.load(
            on_first_screen,
            [model, method],
            [image, instruction, scene_info, expected, *run_outputs],
            api_name=False,
        ).then(on_stats_note, [state], stats_note, api_name=False)
    demo.queue(default_concurrency_limit=1, max_size=32)
    return demo


@guarded
def on_new_scene_ui(instruction: Any, expected: Any, replace: bool, model_name: Any = DEFAULT_MODEL) -> tuple:  # noqa: ANN401
    """The New scene button: a fresh scene of the selected model's world (``on_new_scene``), the old outputs
    cleared."""
    return (*on_new_scene(None, instruction, expected, replace, model_name), *cleared_outputs(), *CLEARED_COMPARE)


@guarded
def on_new_scene_api(model_name: Any = DEFAULT_MODEL) -> tuple:  # noqa: ANN401
    """API endpoint ``/new_scene``: a random scene, its suggested question and the expected answer (as markdown).

    The endpoint takes no input (clients call it with none), so it draws from the default model's world
    (``default_world``); from Python, ``model_name`` picks the world as New scene does."""
    return on_new_scene(model_name=model_name)[:3]


@guarded
def on_step(state: Any, step: Any) -> Any:  # noqa: ANN401
    """The step slider: the step-through figure, or nothing while there is no run (the slider is reset when the
    outputs are cleared; that is no error)."""
    return None if state is None else step_image(state, step)


@guarded
def on_stats_note(state: Any) -> str:  # noqa: ANN401
    """The note under the efficiency table for the run in ``state`` (empty before a run)."""
    if not isinstance(state, dict) or "answer" not in state:
        return ""
    return efficiency_note(state["method"], state["answer"].stats)


def main(argv: list[str] | None = None) -> None:
    """``python app.py [--host H] [--port P] [--delete-cache FREQ AGE]``: build and launch the app."""
    import argparse

    p = argparse.ArgumentParser(description="resprune demo")
    p.add_argument("--host", default=None, help="address to bind (default: gradio's, 127.0.0.1 outside a Space)")
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--delete-cache", type=int, nargs=2, default=DELETE_CACHE, metavar=("FREQ", "AGE"))
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    demo = build_demo(delete_cache=tuple(a.delete_cache))
    warm_first_screen()
    demo.launch(server_name=a.host, server_port=a.port)


demo = None

if __name__ == "__main__":
    main()
