"""Make the README's figures and the app screenshot from the offline default model.

    python scripts/make_figures.py                # figures into assets/figures/
    python scripts/make_figures.py --out my-figures   # somewhere else
    python scripts/make_figures.py --screenshot   # also assets/figures/app.png, app-phone.png (Debian chromium)
    python scripts/make_figures.py --screenshot --no-figures   # only the two screenshots

One test-split scene, its shape question, and every registered method at K = 36 of the 144 visual tokens: the
kept-token overlay, residual-energy curves, text relevance, one greedy step, the method grid (with relevant-token
recall against the scene's exact object masks) and the greedy animation. Figures are saved at 100 dpi as
256-colour PNGs so that each stays under 150 kB.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import resprune  # noqa: E402
import viz  # noqa: E402
from resprune import scenes  # noqa: E402

OUT = ROOT / "assets" / "figures"
METHODS = ("resprune", "residual", "relevance", "divprune", "cdpruner", "cls", "random", "uniform")
MAX_BYTES = 150_000  # each committed figure stays small


def save_png(fig, path: Path) -> int:  # noqa: ANN001
    """Save a Figure (rendered by ``viz.to_image`` at its own dpi, 100) as a 256-colour PNG (the scene images are flat
    colours: no visible loss, a fraction of the size); returns the file size in bytes."""
    im = viz.to_image(fig).quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    im.save(path, optimize=True)
    return path.stat().st_size


def figures(seed: int = 20_000_001, keep: int = 36, out: Path = OUT) -> None:
    """One figure of each kind for one test-split scene, with every method at the same budget ``keep``."""
    model, proc = resprune.load_model("scenes")
    scene = scenes.sample(seed)
    q = next(q for q in scene.questions if q.type == "shape")
    mask = np.zeros(scene.image.size[::-1], dtype=bool)  # (H, W): the objects the question is about
    for o in q.objects:
        mask |= o.mask
    results, answers = {}, {}
    for m in METHODS:
        if m not in resprune.list_methods():
            continue
        a = resprune.answer(
            model, proc, scene.image, q.text, method=m, keep=keep, max_new_tokens=4, compare=m == "resprune"
        )
        results[m], answers[m] = a.result, a.pruned
    main = results["resprune"]
    others = {k: results[k] for k in ("divprune", "relevance", "random") if k in results}
    figs = {
        "kept_tokens": viz.plot_kept_tokens(scene.image, main, answer=answers["resprune"], order_numbers=True),
        "residual_energy": viz.plot_residual_energy(main, others=others, logy=True),
        "relevance": viz.plot_relevance(scene.image, main),
        "greedy_step": viz.plot_greedy_step(scene.image, main, 3),
        "method_grid": viz.plot_method_grid(
            scene.image, results, answers=answers, objects_mask=mask, ncols=4, figsize=(9.2, 6.2)
        ),
    }
    out.mkdir(parents=True, exist_ok=True)
    sizes = {f"{name}.png": save_png(fig, out / f"{name}.png") for name, fig in figs.items()}
    # the animation replays a smaller budget, one frame per pick: the scene tokens' energy is spent within a few
    # picks, and 12 frames keep the GIF small
    small = resprune.answer(
        model, proc, scene.image, q.text, method="resprune", keep=12, max_new_tokens=4, compare=False
    ).result
    gif = viz.greedy_animation(scene.image, small, dpi=58, duration_ms=500)
    (out / "greedy.gif").write_bytes(gif)
    sizes["greedy.gif"] = len(gif)
    print(f"scene {seed}: {q.text} (expected {q.answer}; resprune answered {answers['resprune']!r})")
    for name, n in sizes.items():
        print(f"  {name:22s} {n / 1000:6.1f} kB" + ("  (over the size budget)" if n > MAX_BYTES else ""))


def screenshot(out: Path = OUT) -> None:
    """``app.png`` (desktop, 1400 px wide: the first screen, the first example already run) and ``app-phone.png``
    (400 px wide, right after Run: the answers first), from the launched app in headless Debian chromium."""
    import socket

    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    import app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = app.build_demo()
    app.warm_first_screen()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    answered = "() => document.querySelector('#pruned-answer textarea')?.value.length > 0"
    try:
        with sync_playwright() as p:
            b = p.chromium.launch(
                executable_path=shutil.which("chromium"),
                headless=True,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            for name, viewport in (("app.png", (1400, 1000)), ("app-phone.png", (400, 850))):
                page = b.new_page(viewport={"width": viewport[0], "height": viewport[1]})
                page.set_default_timeout(120_000)
                page.goto(f"http://127.0.0.1:{port}/")
                page.wait_for_function(answered)
                if name == "app-phone.png":  # a visitor's first tap: Run, and the page shows the answers
                    page.get_by_role("button", name="Run", exact=True).click()
                    try:  # the run started ... (or already ended before a bar could be seen)
                        page.wait_for_selector(".eta-bar", state="attached", timeout=10_000)
                    except PlaywrightTimeout:
                        pass
                    for _ in range(3):  # ... and finished: no progress bar left, also a moment later (between stages
                        page.wait_for_selector(".eta-bar", state="detached")  # of one run the bars come and go)
                        page.wait_for_timeout(1500)
                    page.wait_for_function("() => !document.querySelector('.eta-bar')")
                    page.wait_for_function(answered)
                page.wait_for_selector("#overlay img[src]", state="attached")
                page.wait_for_timeout(1500)
                shot = out / name
                page.screenshot(path=str(shot))
                im = Image.open(shot).convert("RGB")
                im.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
                    shot, optimize=True
                )
                print(f"  {name:22s} {shot.stat().st_size / 1000:6.1f} kB")
                page.close()
            # the world-2 model: pick it in the list, then its first example scene (the click runs it)
            page = b.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(120_000)
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function(answered)
            page.get_by_label("Model", exact=True).click()
            page.get_by_role("option", name=re.compile(r"^scenes-v2: ")).click()
            page.wait_for_function("() => document.querySelector('#examples')?.innerText.includes('world-2')")
            page.wait_for_timeout(1000)
            page.locator("#examples img").first.click()
            page.wait_for_function("() => document.querySelector('#scene-info')?.innerText.includes('world 2')")
            for _ in range(3):  # the run the click started has finished (no progress bar, also a moment later)
                page.wait_for_selector(".eta-bar", state="detached")
                page.wait_for_timeout(1500)
            page.wait_for_selector("#overlay img[src]", state="attached")
            page.evaluate("window.scrollTo(0, 0)")  # the click scrolled to the gallery
            page.wait_for_timeout(2500)
            shot = out / "app-world2.png"
            page.screenshot(path=str(shot))
            im = Image.open(shot).convert("RGB")
            im.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(shot, optimize=True)
            print(f"  {shot.name:22s} {shot.stat().st_size / 1000:6.1f} kB")
            page.close()
            b.close()
    finally:
        demo.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--screenshot", action="store_true", help="also screenshot the app (needs chromium)")
    ap.add_argument("--no-figures", action="store_true", help="only the screenshots (with --screenshot)")
    ap.add_argument("--out", type=Path, default=OUT, help="output folder (default assets/figures)")
    ap.add_argument("--seed", type=int, default=20_000_001, help="scene seed (test split)")
    ap.add_argument("--keep", type=int, default=36, help="K, tokens kept by every method")
    args = ap.parse_args()
    if not args.no_figures:
        figures(args.seed, args.keep, args.out)
    if args.screenshot:
        screenshot(args.out)
