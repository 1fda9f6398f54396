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
ALPHA_RANGE = (0.0, 2.0)  # the alpha slider's range; the API is held to it too
DELETE_CACHE = (600, 3600)  # gradio's cache: every 10 min, delete the files this app made more than 1 h ago
MAX_RUN_DIRS = 200  # per-run download folders kept at most (oldest removed first), on top of DELETE_CACHE
EXAMPLES_DIR = Path(__file__).parent / "assets" / "examples"
TITLE = "resprune: what does the model still see after visual-token pruning?"

log = logging.getLogger("resprune.app")

# One model, one writer: model loads and everything that runs the model (token counts, answers, FastV hooks)
# hold this lock; figures are drawn outside it. Re-entrant so a handler may call another one.
MODEL_LOCK = threading.RLock()
_IMPORT_LOCK = threading.Lock()
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
    """(label, value) pairs: the offline default first, then the real checkpoints' presets with their notes."""
    from resprune.loading import PRESETS

    choices = [("scenes: offline default (small LLaVA trained on the scene world, CPU)", DEFAULT_MODEL)]
    for name, preset in PRESETS.items():
        if name == DEFAULT_MODEL:
            continue
        note = getattr(preset, "note", None) or (preset.get("note") if isinstance(preset, dict) else "")
        choices.append((f"{name}: {note}" if note else name, name))
    return choices


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
    """Load (once per process) and return ``(model, processor)``; call it under ``MODEL_LOCK``."""
    import resprune

    return resprune.load_model(name)


def _load(name: str, progress: Any = None) -> tuple[Any, Any]:  # noqa: ANN401
    with MODEL_LOCK:  # concurrent first requests load once (and never import transformers in two threads)
        if progress is not None and get_model.cache_info().currsize == 0:
            progress(0.05, desc=f"Loading model {name!r} (first run only)…")
        try:
            return get_model(name)
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


def method_params(method: str, alpha: float | None, seed_rule: str | None) -> dict[str, Any]:
    """The UI's hyperparameters that ``method`` takes, from the registry: ``alpha`` where it is a hparam, the seed
    rule where ``seed`` is a hparam whose default is a rule name (a string), not a random seed (an int)."""
    import resprune

    info = resprune.method_info(method)
    params: dict[str, Any] = {}
    if alpha is not None and "alpha" in info.hparams:
        params["alpha"] = float(alpha)
    if seed_rule and "seed" in info.hparams:
        default = inspect.signature(info.fn).parameters["seed"].default
        if isinstance(default, str):
            params["seed"] = seed_rule
    return params


@gpu
def _answer(model: Any, processor: Any, image: Any, prompt: str, method: str, keep: int, compare: bool, **hp: Any):  # noqa: ANN201, ANN401
    import resprune

    with MODEL_LOCK:  # FastV puts hooks on the shared model for the length of a call
        return resprune.answer(
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


def _n_visual_tokens(model: Any, processor: Any, image: Any, prompt: str) -> int:  # noqa: ANN401
    """Visual tokens the model makes of ``image`` (a keep-all dry run would be too slow; ask the processor)."""
    import resprune

    with MODEL_LOCK:
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
    n = _n_visual_tokens(model, processor, img, prompt)
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
) -> dict[str, Any]:
    """Validate the inputs, run the pruned (and unpruned) model; returns a dict with the answer and the record."""
    method = _check_method(method)
    alpha = check_alpha(alpha)
    img, notes, prompt, model, processor, n, keep = _prepare(
        image, instruction, model_name, keep_percent, keep_tokens, progress
    )
    if progress is not None:
        progress(0.3, desc=f"Running {method} at {keep}/{n} tokens…")
    t0 = time.perf_counter()
    try:
        ans = _answer(model, processor, img, prompt, method, keep, compare, **method_params(method, alpha, seed_rule))
    except (ValueError, TypeError) as e:
        if not _library_error(e):
            raise
        raise gr.Error(_scrub(str(e)), title="Cannot run this setting") from None
    notes = notes + tuple(_vocabulary_notes(model_name, prompt))
    return {
        "image": img,
        "prompt": prompt,
        "answer": ans,
        "keep": keep,
        "n": n,
        "notes": notes,
        "seconds": time.perf_counter() - t0,
        "model": model_name,
        "method": method,
    }


def _vocabulary_notes(model_name: str, prompt: str) -> list[str]:
    if model_name != DEFAULT_MODEL:
        return []
    try:
        from resprune.scenes import unknown_words
    except ImportError:
        return []
    unknown = unknown_words(prompt)
    if not unknown:
        return []
    return [
        "The offline model only knows its scene world (shapes, colours, counts, positions); it has never seen: "
        + ", ".join(repr(w) for w in unknown[:8])
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


def stats_rows(stats: dict[str, Any]) -> list[list[str]]:
    """The stats dict of ``answer`` as table rows: quantity, unpruned, pruned, pruned/unpruned."""
    rows = []
    for label, key, fmt in _STAT_ROWS:
        before, after = stats.get(f"{key}_before"), stats.get(f"{key}_after")
        if before is None and after is None:
            continue
        ratio = f"{after / before:.3f}" if isinstance(before, (int, float)) and before and after is not None else ""
        rows.append([label, fmt(before), fmt(after), ratio])
    if stats.get("selection_seconds") is not None:
        rows.append(["selection time", "", _ms(stats["selection_seconds"]), ""])
    if stats.get("prefill_seconds_before") and stats.get("prefill_seconds_after"):
        rows.append(
            ["prefill speedup", "", f"{stats['prefill_seconds_before'] / stats['prefill_seconds_after']:.2f}x", ""]
        )
    return rows


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


def agreement_markdown(pruned: str, unpruned: str | None) -> str:
    if unpruned is None:
        return ""
    same = _norm(pruned) == _norm(unpruned)
    return "**The answers agree.**" if same else "**The answers differ**: pruning changed what the model says."


def _norm(s: str) -> str:
    return " ".join(s.lower().strip().strip(".").split())


def figures_for(run: dict[str, Any]) -> dict[str, Any]:
    """Every figure of one run, as PIL images: overlay, residual-energy curves, relevance heatmap."""
    import viz

    res, img, ans = run["answer"].result, run["image"], run["answer"]
    return {
        "overlay": draw(lambda: fig_to_image(viz.plot_kept_tokens(img, res, answer=ans.pruned))),
        "curves": draw(lambda: fig_to_image(viz.plot_residual_energy(res))),
        "relevance_map": draw(lambda: fig_to_image(viz.plot_relevance(img, res))),
    }


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
    """What the step-through needs, kept per session: no model inputs (embeddings, pixel values) and no hooks."""
    import dataclasses

    ans = run["answer"]
    res = dataclasses.replace(ans.result, generate_kwargs={}, context=None)
    return dict(run, answer=dataclasses.replace(ans, result=res))


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
    progress: Any = gr.Progress(),  # noqa: B008, ANN401 - gradio injects progress through the default
) -> tuple:
    """The Run button: answers, figures, stats, downloads, and the state for the step-through."""
    run = run_answer(
        image, instruction, model_name, method, keep_percent, keep_tokens, alpha, seed_rule, progress=progress
    )
    progress(0.7, desc="Drawing the figures…")
    ans = run["answer"]
    figs = figures_for(run)
    k = run["keep"]
    files = write_downloads(run, figs)
    for note in run["notes"]:
        gr.Warning(note)
    words = ", ".join(w for ws in ans.result.query_words for w in ws) or "(none: text-free score)"
    info = (
        f"**{run['method']}** kept **{k} of {run['n']}** visual tokens · query words: {words} · {run['seconds']:.2f} s"
    )
    notes = "\n".join(f"- {n}" for n in run["notes"])
    state = _slim_state(run)
    return (
        ans.pruned,
        ans.unpruned or "",
        agreement_markdown(ans.pruned, ans.unpruned),
        info + ("\n\n" + notes if notes else ""),
        figs["overlay"],
        figs["curves"],
        figs["relevance_map"],
        stats_rows(ans.stats),
        gr.update(maximum=k, value=min(k, max(1, k // 4)), interactive=True),
        step_image(state, min(k, max(1, k // 4))),
        files,
        state,
    )


@guarded
def on_compare(
    image: Any,  # noqa: ANN401
    instruction: Any,  # noqa: ANN401
    model_name: str,
    keep_percent: Any,  # noqa: ANN401
    keep_tokens: Any,  # noqa: ANN401
    progress: Any = gr.Progress(),  # noqa: B008, ANN401 - gradio injects progress through the default
) -> tuple:
    """All methods at the same budget on the same input: a grid of overlays with their answers."""
    import resprune
    import viz

    img, _, prompt, model, processor, _, keep = _prepare(
        image, instruction, model_name, keep_percent, keep_tokens, progress
    )
    results, answers, rows = {}, {}, []
    methods = resprune.list_methods()
    for i, m in enumerate(methods):
        progress((i + 1) / (len(methods) + 1), desc=f"{m}…")
        try:
            a = _answer(model, processor, img, prompt, m, keep, False)
        except (ValueError, TypeError) as e:
            if not _library_error(e):
                raise
            rows.append([m, "", f"not available: {_scrub(str(e), 200)}"])
            continue
        results[m], answers[m] = a.result, a.pruned
        rows.append([m, a.pruned, f"{1000 * a.stats.get('selection_seconds', 0.0):.1f} ms"])
    grid = draw(lambda: fig_to_image(viz.plot_method_grid(img, results, answers=answers))) if results else None
    return grid, rows


@guarded
def on_new_scene(seed: Any = None) -> tuple:  # noqa: ANN401
    """Draw a fresh scene from the scene world, with a suggested question."""
    import random

    from resprune import scenes

    s = int(_number(seed, "seed", 0, 2**31 - 1, integer=True)) if seed not in (None, 0) else None
    s = s or random.randrange(10**6, 10**7)
    scene = scenes.sample(s)
    q = scene.questions[0]
    return scene.image, q.text, f"Scene #{s}; the expected answer is **{q.answer}** ({q.type})."


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
    rec = selection_record(run)
    return {
        "pruned_answer": rec["pruned_answer"],
        "unpruned_answer": rec["unpruned_answer"],
        "agree": _norm(rec["pruned_answer"]) == _norm(rec["unpruned_answer"] or ""),
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


def _examples() -> list[list[str]]:
    out = []
    if EXAMPLES_DIR.is_dir():
        for p in sorted(EXAMPLES_DIR.glob("*.png")):
            q = p.with_suffix(".txt")
            out.append([str(p), q.read_text().strip() if q.exists() else "What colour is the circle?"])
    return out


def build_demo(*, delete_cache: tuple[int, int] | None = DELETE_CACHE) -> gr.Blocks:
    """The app's Blocks (nothing is loaded until the first request).

    Args:
        delete_cache: gradio's ``(frequency, age)`` in seconds for removing the files this app put in its cache.
    """
    import resprune

    with Demo(title="resprune demo", delete_cache=delete_cache) as demo:
        gr.Markdown(
            f"# {TITLE}\nUpload an image (or draw a scene), ask a question, and compare the answer of the "
            "pruned model with the unpruned one. The pictures show which visual tokens survived, how much "
            "of the token set they explain (residual energy), and where the question pulled the choice."
        )
        state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                image = UploadImage(
                    type="filepath", image_mode=None, label="Image", height=320, sources=["upload", "clipboard"]
                )
                instruction = gr.Textbox(label="Instruction", value="What colour is the circle?", lines=2, max_lines=6)
                with gr.Row():
                    new_scene = gr.Button("New scene")
                    run_btn = gr.Button("Run", variant="primary")
                scene_info = gr.Markdown()
                model = gr.Dropdown(model_choices(), value=DEFAULT_MODEL, label="Model")
                method = gr.Dropdown(method_choices(), value=resprune.DEFAULT_METHOD, label="Method")
                keep_percent = RawSlider(
                    1, 100, value=DEFAULT_KEEP_PERCENT, step=1, label="Budget (% of visual tokens)"
                )
                keep_tokens = RawNumber(value=0, precision=0, minimum=0, label="Budget in tokens (0: use the %)")
                with gr.Accordion("Method settings (used by the methods that take them)", open=False):
                    alpha = RawSlider(*ALPHA_RANGE, value=0.75, step=0.05, label="alpha (text guidance strength)")
                    seed_rule = gr.Radio(
                        ["auto", "max_norm", "weighted"],
                        value="auto",
                        label="Seed rule (auto: CLS attention where the tower has a CLS, else max-norm)",
                    )
                examples = _examples()
                if examples:
                    gr.Examples(examples, inputs=[image, instruction], label="Examples")
            with gr.Column(scale=2):
                with gr.Row():
                    pruned = gr.Textbox(label="Pruned answer", interactive=False, elem_id="pruned-answer")
                    unpruned = gr.Textbox(label="Unpruned answer", interactive=False, elem_id="unpruned-answer")
                agree = gr.Markdown()
                info = gr.Markdown()
                with gr.Tabs():
                    with gr.Tab("Kept tokens"):
                        overlay = gr.Image(label="Kept-token overlay", type="pil", elem_id="overlay", interactive=False)
                    with gr.Tab("Residual energy"):
                        curves = gr.Image(label="Residual-energy curves", type="pil", interactive=False)
                    with gr.Tab("Text relevance"):
                        relevance = gr.Image(label="Text-relevance heatmap", type="pil", interactive=False)
                    with gr.Tab("Greedy step-through"):
                        step = RawSlider(0, 1, value=0, step=1, label="Picks shown", interactive=False)
                        step_img = gr.Image(label="Selection after t picks", type="pil", interactive=False)
                        gif_btn = gr.Button("Make the animation (GIF)")
                        gif = gr.Image(label="All steps", type="filepath", interactive=False)
                    with gr.Tab("Compare methods"):
                        compare_btn = gr.Button("Run every method at this budget")
                        grid = gr.Image(label="Method comparison", type="pil", interactive=False)
                        grid_table = gr.Dataframe(headers=["method", "answer", "selection time"], interactive=False)
                stats = gr.Dataframe(
                    headers=["quantity", "unpruned", "pruned", "pruned / unpruned"],
                    label="Efficiency",
                    interactive=False,
                )
                downloads = gr.File(
                    label="Downloads (figures as PNG, selection as JSON)", file_count="multiple", interactive=False
                )
                with gr.Accordion("API result (JSON)", open=False):
                    api_json = gr.JSON()
                    api_keep = RawNumber(value=36, precision=0, label="keep (tokens)", visible=False)

        inputs = [image, instruction, model, method, keep_percent, keep_tokens, alpha, seed_rule]
        run_btn.click(
            on_run,
            inputs,
            [pruned, unpruned, agree, info, overlay, curves, relevance, stats, step, step_img, downloads, state],
            api_name="run",
            concurrency_limit=1,
        )
        step.change(step_image, [state, step], step_img, api_name=False, concurrency_limit=4)
        gif_btn.click(gif_file, state, gif, api_name=False)
        compare_btn.click(
            on_compare,
            [image, instruction, model, keep_percent, keep_tokens],
            [grid, grid_table],
            api_name="compare",
            concurrency_limit=1,
        )
        new_scene.click(on_new_scene, None, [image, instruction, scene_info], api_name="new_scene")
        api_btn = gr.Button(visible=False)
        api_btn.click(
            api_answer,
            [image, instruction, model, method, api_keep, alpha],
            api_json,
            api_name="answer",
            concurrency_limit=1,
        )
    demo.queue(default_concurrency_limit=1, max_size=32)
    return demo


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
    build_demo(delete_cache=tuple(a.delete_cache)).launch(server_name=a.host, server_port=a.port)


demo = None

if __name__ == "__main__":
    main()
