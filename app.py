"""resprune demo: what does a vision-language model see, and say, when most of its visual tokens are pruned?

Run ``python app.py`` (offline default model, CPU) and open the printed address. ``build_demo()`` builds the
Blocks; nothing is loaded at import; every handler below is a plain function over the library
(``resprune.load_model``, ``resprune.answer``, ``viz.*``), so tests and notebooks can call them directly.
"""

from __future__ import annotations

import functools
import json
import tempfile
import time
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
DEFAULT_METHOD = "resprune"
DEFAULT_KEEP_PERCENT = 25
MAX_INSTRUCTION_CHARS = 1000
MAX_NEW_TOKENS = 24
EXAMPLES_DIR = Path(__file__).parent / "assets" / "examples"
TITLE = "resprune: what does the model still see after visual-token pruning?"


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
    """Load (once per process) and return ``(model, processor)``."""
    import resprune

    return resprune.load_model(name)


def _load(name: str, progress: Any = None) -> tuple[Any, Any]:
    if progress is not None and get_model.cache_info().currsize == 0:
        progress(0.05, desc=f"Loading model {name!r} (first run only)…")
    try:
        return get_model(name)
    except Exception as e:  # noqa: BLE001 - the loader's message names the model and what to do
        raise gr.Error(f"Could not load model {name!r}: {e}", title="Model not available") from None


def check_image(image: Any) -> tuple[Any, tuple[str, ...]]:
    """Validate an uploaded image (path, PIL or array): ``(rgb_pil, notes)`` or a ``gr.Error``."""
    from resprune.images import ImageInputError, load_image

    try:
        loaded = load_image(image)
    except ImageInputError as e:
        raise gr.Error(str(e), title="Image problem") from None
    return loaded.image, loaded.notes


def check_instruction(text: Any) -> str:
    """A non-empty instruction of at most ``MAX_INSTRUCTION_CHARS`` characters, or a ``gr.Error``."""
    text = (text or "").strip() if isinstance(text, str) else ""
    if not text:
        raise gr.Error("The instruction is empty: type a question about the image.", title="No instruction")
    if len(text) > MAX_INSTRUCTION_CHARS:
        raise gr.Error(
            f"The instruction has {len(text):,} characters; the limit is {MAX_INSTRUCTION_CHARS:,}.",
            title="Instruction too long",
        )
    return text


def budget(n_tokens: int, keep_percent: float, keep_tokens: float | None) -> int:
    """The token budget K: ``keep_tokens`` when given (> 0), else ``keep_percent`` % of ``n_tokens``."""
    import resprune

    if keep_tokens not in (None, 0, 0.0):
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
    if keep_percent is None or not (0 < float(keep_percent) <= 100):
        raise gr.Error(f"The budget must be between 1 and 100 %, got {keep_percent}.", title="Bad budget")
    return resprune.keep_count(n_tokens, float(keep_percent) / 100)


def method_params(method: str, alpha: float | None, seed_rule: str | None) -> dict[str, Any]:
    """Hyperparameters from the UI for ``method`` (alpha and the seed rule apply to ResPrune only)."""
    if method != "resprune":
        return {}
    params: dict[str, Any] = {}
    if alpha is not None:
        params["alpha"] = float(alpha)
    if seed_rule:
        params["seed"] = seed_rule
    return params


@gpu
def _answer(model: Any, processor: Any, image: Any, prompt: str, method: str, keep: int, compare: bool, **hp: Any):
    import resprune

    return resprune.answer(
        model, processor, image, prompt, method=method, keep=keep, max_new_tokens=MAX_NEW_TOKENS, compare=compare, **hp
    )


def _n_visual_tokens(model: Any, processor: Any, image: Any, prompt: str) -> int:
    """Visual tokens the model makes of ``image`` (a keep-all dry run would be too slow; ask the processor)."""
    import resprune

    return resprune.count_visual_tokens(model, processor, image, prompt)


def run_answer(
    image: Any,
    instruction: Any,
    model_name: str,
    method: str,
    keep_percent: float,
    keep_tokens: float | None,
    alpha: float | None,
    seed_rule: str | None,
    *,
    compare: bool = True,
    progress: Any = None,
) -> dict[str, Any]:
    """Validate the inputs, run the pruned (and unpruned) model; returns a dict with the answer and the record."""
    import resprune

    img, notes = check_image(image)
    prompt = check_instruction(instruction)
    if method not in resprune.list_methods():
        raise gr.Error(f"Unknown method {method!r}; choose one of {', '.join(resprune.list_methods())}.")
    model, processor = _load(model_name, progress)
    n = _n_visual_tokens(model, processor, img, prompt)
    keep = budget(n, keep_percent, keep_tokens)
    if progress is not None:
        progress(0.3, desc=f"Running {method} at {keep}/{n} tokens…")
    t0 = time.perf_counter()
    try:
        ans = _answer(model, processor, img, prompt, method, keep, compare, **method_params(method, alpha, seed_rule))
    except (ValueError, TypeError) as e:
        raise gr.Error(str(e), title="Cannot run this setting") from None
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


def fig_to_image(fig: Any) -> Any:
    """Render a matplotlib Figure to a PIL image (Agg canvas, no pyplot) and release it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    img = Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba()).convert("RGB")
    fig.clear()
    return img


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


def _num(x: Any) -> str:
    return "" if x is None else f"{x:,}" if isinstance(x, int) else f"{x:,.4g}"


def _ms(x: Any) -> str:
    return "" if x is None else f"{1000 * x:.1f} ms"


def _bytes(x: Any) -> str:
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
        "overlay": fig_to_image(viz.plot_kept_tokens(img, res, answer=ans.pruned)),
        "curves": fig_to_image(viz.plot_residual_energy(res)),
        "relevance": fig_to_image(viz.plot_relevance(img, res)),
    }


def write_downloads(run: dict[str, Any], figures: dict[str, Any]) -> list[str]:
    """PNG of every figure and the selection JSON, in a fresh temporary folder; returns the file paths."""
    out = Path(tempfile.mkdtemp(prefix="resprune-"))
    paths = []
    for name, im in figures.items():
        p = out / f"{run['method']}_{name}.png"
        im.save(p)
        paths.append(str(p))
    p = out / f"{run['method']}_selection.json"
    p.write_text(json.dumps(selection_record(run), indent=1))
    paths.append(str(p))
    return paths


def step_image(state: dict[str, Any] | None, step: float) -> Any:
    """The greedy step-through figure after ``step`` picks, from the stored run (no model call)."""
    import viz

    if not state:
        raise gr.Error("Run the model first; the step-through replays its selection.", title="Nothing to show")
    res = state["answer"].result
    k = res.selections[0].keep
    t = int(max(0, min(k, step or 0)))
    return fig_to_image(viz.plot_greedy_step(state["image"], res, t))


def gif_file(state: dict[str, Any]) -> str:
    import viz

    data = viz.greedy_animation(state["image"], state["answer"].result, max_frames=24)
    p = Path(tempfile.mkdtemp(prefix="resprune-")) / "greedy.gif"
    p.write_bytes(data)
    return str(p)


def on_run(
    image: Any,
    instruction: Any,
    model_name: str,
    method: str,
    keep_percent: float,
    keep_tokens: float | None,
    alpha: float | None,
    seed_rule: str | None,
    progress: Any = gr.Progress(),  # noqa: B008 - gradio injects progress through the default
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
    return (
        ans.pruned,
        ans.unpruned or "",
        agreement_markdown(ans.pruned, ans.unpruned),
        info + ("\n\n" + notes if notes else ""),
        figs["overlay"],
        figs["curves"],
        figs["relevance"],
        stats_rows(ans.stats),
        gr.update(maximum=k, value=min(k, max(1, k // 4)), interactive=True),
        step_image(run, min(k, max(1, k // 4))),
        files,
        run,
    )


def on_compare(
    image: Any,
    instruction: Any,
    model_name: str,
    keep_percent: float,
    keep_tokens: float | None,
    progress: Any = gr.Progress(),  # noqa: B008 - gradio injects progress through the default
) -> tuple:
    """All methods at the same budget on the same input: a grid of overlays with their answers."""
    import resprune
    import viz

    img, _ = check_image(image)
    prompt = check_instruction(instruction)
    model, processor = _load(model_name, progress)
    n = _n_visual_tokens(model, processor, img, prompt)
    keep = budget(n, keep_percent, keep_tokens)
    results, answers, rows = {}, {}, []
    methods = resprune.list_methods()
    for i, m in enumerate(methods):
        progress((i + 1) / (len(methods) + 1), desc=f"{m}…")
        try:
            a = _answer(model, processor, img, prompt, m, keep, False)
        except (ValueError, TypeError) as e:
            rows.append([m, "", f"not available: {e}"])
            continue
        results[m], answers[m] = a.result, a.pruned
        rows.append([m, a.pruned, f"{1000 * a.stats.get('selection_seconds', 0.0):.1f} ms"])
    grid = fig_to_image(viz.plot_method_grid(img, results, answers=answers)) if results else None
    return grid, rows


def on_new_scene(seed: float | None = None) -> tuple:
    """Draw a fresh scene from the scene world, with a suggested question."""
    import random

    from resprune import scenes

    s = int(seed) if seed not in (None, 0) else random.randrange(10**6, 10**7)
    scene = scenes.sample(s)
    q = scene.questions[0]
    return scene.image, q.text, f"Scene #{s}; the expected answer is **{q.answer}** ({q.type})."


def api_answer(
    image: Any, instruction: Any, model_name: str | None, method: str | None, keep: float | None, alpha: float | None
) -> dict[str, Any]:
    """API endpoint ``/answer``: one JSON object with the answers, kept indices and stats."""
    run = run_answer(
        image,
        instruction,
        model_name or DEFAULT_MODEL,
        method or DEFAULT_METHOD,
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
    """gr.Image whose upload errors (not an image, corrupt, too large) become a visible message, not a crash."""

    is_template = True  # use gr.Image's frontend

    def preprocess(self, payload: Any) -> Any:
        try:
            return super().preprocess(payload)
        except gr.Error:
            raise
        except Exception as e:  # noqa: BLE001
            raise gr.Error(
                f"The uploaded file could not be read as an image ({type(e).__name__}: {e}).", title="Image problem"
            ) from None


def _examples() -> list[list[str]]:
    out = []
    if EXAMPLES_DIR.is_dir():
        for p in sorted(EXAMPLES_DIR.glob("*.png")):
            q = p.with_suffix(".txt")
            out.append([str(p), q.read_text().strip() if q.exists() else "What colour is the circle?"])
    return out


def build_demo() -> gr.Blocks:
    """The app's Blocks (nothing is loaded until the first request)."""
    with gr.Blocks(title="resprune") as demo:
        gr.Markdown(
            f"# {TITLE}\nUpload an image (or draw a scene), ask a question, and compare the answer of the "
            "pruned model with the unpruned one. The pictures show which visual tokens survived, how much "
            "of the token set they explain (residual energy), and where the question pulled the choice."
        )
        state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                image = UploadImage(type="filepath", label="Image", height=320, sources=["upload", "clipboard"])
                instruction = gr.Textbox(label="Instruction", value="What colour is the circle?", lines=2, max_lines=6)
                with gr.Row():
                    new_scene = gr.Button("New scene")
                    run_btn = gr.Button("Run", variant="primary")
                scene_info = gr.Markdown()
                model = gr.Dropdown(model_choices(), value=DEFAULT_MODEL, label="Model")
                method = gr.Dropdown(method_choices(), value=DEFAULT_METHOD, label="Method")
                keep_percent = gr.Slider(
                    1, 100, value=DEFAULT_KEEP_PERCENT, step=1, label="Budget (% of visual tokens)"
                )
                keep_tokens = gr.Number(value=0, precision=0, minimum=0, label="Budget in tokens (0: use the %)")
                with gr.Accordion("ResPrune settings", open=False):
                    alpha = gr.Slider(0, 2, value=0.75, step=0.05, label="alpha (text guidance strength)")
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
                        step = gr.Slider(0, 1, value=0, step=1, label="Picks shown", interactive=False)
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
                    api_keep = gr.Number(value=36, precision=0, label="keep (tokens)", visible=False)

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


demo = None if __name__ != "__main__" else build_demo()

if __name__ == "__main__":
    demo.launch()
