"""Make the README's figures and the app screenshot from the offline default model.

    python scripts/make_figures.py            # figures into assets/figures/
    python scripts/make_figures.py --screenshot   # also assets/figures/app.png (needs Debian chromium)
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import resprune  # noqa: E402
import viz  # noqa: E402
from resprune import scenes  # noqa: E402

OUT = ROOT / "assets" / "figures"


def figures(seed: int = 20_000_001, keep: int = 36) -> None:
    model, proc = resprune.load_model("scenes")
    scene = scenes.sample(seed)
    q = next(q for q in scene.questions if q.type == "shape")
    results, answers = {}, {}
    for m in ("resprune", "residual", "relevance", "divprune", "cdpruner", "cls", "random", "uniform"):
        a = resprune.answer(model, proc, scene.image, q.text, method=m, keep=keep, max_new_tokens=4,
                            compare=m == "resprune")
        results[m], answers[m] = a.result, a.pruned
    main = results["resprune"]
    figs = {
        "kept_tokens": viz.plot_kept_tokens(scene.image, main, answer=answers["resprune"], order_numbers=True),
        "residual_energy": viz.plot_residual_energy(main, others={k: results[k] for k in ("divprune", "random",
                                                                                           "relevance")}),
        "relevance": viz.plot_relevance(scene.image, main),
        "greedy_step": viz.plot_greedy_step(scene.image, main, 8),
        "method_grid": viz.plot_method_grid(scene.image, results, answers=answers),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    for name, fig in figs.items():
        fig.savefig(OUT / f"{name}.png", dpi=80)
    (OUT / "greedy.gif").write_bytes(viz.greedy_animation(scene.image, main, max_frames=13))
    print(f"question: {q.text} (answer {q.answer}); figures in {OUT.relative_to(ROOT)}")


def screenshot() -> None:
    import socket

    from playwright.sync_api import sync_playwright

    import app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = app.build_demo()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    img = OUT / "_scene.png"
    scenes.sample(20_000_001).image.save(img)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True,
                              args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = b.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"http://127.0.0.1:{port}/")
        page.locator("input[type=file]").first.set_input_files(str(img))
        page.get_by_label("Instruction").fill("What shape is the green object?")
        page.get_by_role("button", name="Run", exact=True).click()
        page.wait_for_function("() => document.querySelector('#pruned-answer textarea')?.value.length > 0",
                               timeout=120_000)
        page.wait_for_selector("#overlay img", timeout=60_000)
        page.wait_for_timeout(1500)
        page.screenshot(path=str(OUT / "app.png"))
        b.close()
    img.unlink()
    demo.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--screenshot", action="store_true")
    args = ap.parse_args()
    figures()
    if args.screenshot:
        screenshot()
