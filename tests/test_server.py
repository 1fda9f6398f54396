"""The launched app on loopback: the API through gradio_client, and the page in headless Chromium (Playwright)."""

from __future__ import annotations

import shutil
import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import app  # noqa: E402

pytestmark = pytest.mark.slow  # a launched server (and a browser): deselect with -m "not slow"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from resprune import scenes

    demo = app.build_demo()
    app.warm_first_screen()  # as ``main`` does: the page's load event then answers at once
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    scene = scenes.sample(20_000_020)
    img = tmp_path_factory.mktemp("img") / "scene.png"
    scene.image.save(img)
    yield f"http://127.0.0.1:{port}/", img, scene
    demo.close()


def test_api_through_gradio_client(server):
    from gradio_client import Client, handle_file

    url, img, scene = server
    client = Client(url, verbose=False)
    res = client.predict(
        handle_file(str(img)), scene.questions[0].text, "scenes", "resprune", 30, 0.75, api_name="/answer"
    )
    assert len(res["kept_indices"][0]) == 30
    assert res["pruned_answer"] and res["unpruned_answer"]
    assert res["stats"]["visual_tokens_before"] == 144
    # a bad request is answered with the message, and the server keeps serving
    with pytest.raises(Exception, match="instruction is empty"):
        client.predict(handle_file(str(img)), "", "scenes", "resprune", 30, 0.75, api_name="/answer")
    again = client.predict(
        handle_file(str(img)), "Is there a red circle?", "scenes", "random", 10, 0.75, api_name="/answer"
    )
    assert len(again["kept_indices"][0]) == 10


def test_two_requests_are_answered_separately(server):
    from concurrent.futures import ThreadPoolExecutor

    from gradio_client import Client, handle_file

    url, img, scene = server
    client = Client(url, verbose=False)
    with ThreadPoolExecutor(2) as ex:
        futs = [
            ex.submit(
                client.predict,
                handle_file(str(img)),
                scene.questions[0].text,
                "scenes",
                "uniform",
                k,
                0.75,
                api_name="/answer",
            )
            for k in (8, 40)
        ]
        outs = [f.result(timeout=120) for f in futs]
    assert [len(o["kept_indices"][0]) for o in outs] == [8, 40]


@pytest.mark.browser
@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian chromium is not installed (CI installs it)")
def test_browser_upload_run_and_see_answers(server, tmp_path):
    from playwright.sync_api import sync_playwright

    url, img, _ = server
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=shutil.which("chromium"),
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.set_default_timeout(120_000)
        page.goto(url, timeout=60_000)
        _wait_answer(page)  # the first screen (the first example, already run)
        page.locator("input[type=file]").first.set_input_files(str(img))
        _wait_cleared(page)  # the upload took the first example's answers away
        assert page.locator("#verdict").inner_text().strip() == ""
        page.get_by_role("button", name="Run", exact=True).click()
        pruned = page.locator("#pruned-answer textarea")
        _wait_answer(page)
        assert pruned.input_value()
        assert page.locator("#unpruned-answer textarea").input_value()
        page.wait_for_selector("#overlay img", timeout=60_000)
        shot = tmp_path / "app.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        browser.close()


# ---------------------------------------------------------------------------------------------------------------
# Click-throughs in headless Chromium, desktop and 400 px phone width (loopback only; every wait is bounded)

DESKTOP = {"width": 1400, "height": 1100}
PHONE = {"width": 400, "height": 850}
WAIT = 90_000  # ms, the longest any step may take (a Run is ~1-2 s; the first one loads the model)
TABS = ("Kept tokens", "Residual energy", "Text relevance", "Greedy step-through", "Compare methods")


@pytest.fixture(scope="module")
def browser():
    if shutil.which("chromium") is None:
        pytest.skip("Debian chromium is not installed (CI installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=shutil.which("chromium"),
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
        )
        yield b
        b.close()


def _open(browser, url, viewport):  # noqa: ANN001, ANN202
    page = browser.new_page(viewport=viewport)
    page.set_default_timeout(WAIT)
    page.goto(url)
    _wait_answer(page)
    return page


def _wait_answer(page):  # noqa: ANN001, ANN202
    page.wait_for_function("() => document.querySelector('#pruned-answer textarea')?.value.length > 0")


def _wait_cleared(page):  # noqa: ANN001, ANN202
    page.wait_for_function("() => document.querySelector('#pruned-answer textarea')?.value === ''")


def _verdict(page) -> str:  # noqa: ANN001
    return page.locator("#verdict").inner_text()


@pytest.mark.browser
@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_browser_first_screen_shows_a_result_and_every_tab(server, browser, viewport):
    url, _, _ = server
    page = _open(browser, url, viewport)
    assert page.locator("#unpruned-answer textarea").input_value()
    assert "Expected answer" in _verdict(page)
    page.wait_for_selector("#overlay img[src]", state="attached")
    for name in TABS:  # no tab hides behind an overflow menu
        assert page.get_by_role("tab", name=name).is_visible(), name
    # Run: the answers are on screen right after it (on a phone, too)
    page.get_by_role("button", name="Run", exact=True).click()
    page.wait_for_timeout(300)
    box = page.locator("#pruned-answer").bounding_box()
    assert box is not None and 0 <= box["y"] and box["y"] + box["height"] <= viewport["height"], box
    _wait_answer(page)
    page.close()


@pytest.mark.browser
def test_browser_examples_new_scene_step_through_and_compare(server, browser):
    url, _, _ = server
    page = _open(browser, url, DESKTOP)
    thumbs = page.locator("#examples img")
    # a photo on the offline model: the honesty message where the answers are
    photo = next(i for i, e in enumerate(app.examples()) if e["kind"] == "photo")
    thumbs.nth(photo).click()
    page.wait_for_function("() => document.querySelector('#verdict')?.innerText.includes('Not a finding')")
    assert "differ" not in _verdict(page)
    # a scene example: a verdict with the ground truth
    thumbs.nth(1).click()
    page.wait_for_function("() => document.querySelector('#verdict')?.innerText.includes('Expected answer')")
    # New scene clears the old answers, keeps nothing stale; Run answers it
    page.get_by_role("button", name="New scene").click()
    _wait_cleared(page)
    page.wait_for_function("() => document.querySelector('#scene-info')?.innerText.includes('Scene #')")
    assert _verdict(page) == ""
    page.get_by_role("button", name="Run", exact=True).click()
    _wait_answer(page)
    # a click on a patch of the overlay names its token
    page.locator("#overlay img").click()  # the figure's centre: a token of the image panel
    page.wait_for_function("() => /token \\d+/.test(document.querySelector('#token-info')?.innerText)")
    assert "pick" in page.locator("#token-info").inner_text() or "pruned" in page.locator("#token-info").inner_text()
    # the step-through: the slider redraws the figure, next to the "How it works" panel
    page.get_by_role("tab", name="Greedy step-through").click()
    assert page.locator("#how-it-works").is_visible()
    before = page.locator("#step-image img").get_attribute("src")
    num = page.locator("#step input[type=number]")
    num.fill("3")
    num.press("Enter")
    page.wait_for_function("(b) => document.querySelector('#step-image img')?.getAttribute('src') !== b", arg=before)
    # Compare: every method's answer in the table, and the grid
    page.get_by_role("tab", name="Compare methods").click()
    page.locator("#compare").click()
    page.wait_for_selector("#grid img[src]")
    import resprune

    page.wait_for_function(
        "(ms) => ms.every((m) => document.querySelector('#grid-table')?.innerText.includes(m))",
        arg=resprune.list_methods(),
    )
    page.close()


@pytest.mark.browser
def test_browser_new_upload_clears_old_results_and_enter_runs(server, browser):
    url, img, _ = server
    page = _open(browser, url, PHONE)
    page.locator("input[type=file]").first.set_input_files(str(img))
    _wait_cleared(page)
    assert _verdict(page) == "" and "expected answer" not in page.locator("#scene-info").inner_text()
    box = page.locator("#instruction textarea")
    box.fill("What colour is the circle?")
    box.press("Enter")
    _wait_answer(page)
    assert "Expected answer" not in _verdict(page)  # an upload has no ground truth
    page.close()


def test_readme_gradio_client_snippet_runs_as_written():
    """The README's client snippet, unchanged, against the app on the address it names (skipped if it is taken)."""
    import re

    code = next(
        c
        for c in re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
        if "gradio_client" in c
    )
    port = int(re.search(r"127\.0\.0\.1:(\d+)", code).group(1))
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:
            pytest.skip(f"port {port} is in use")
    demo = app.build_demo()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        ns: dict = {}
        exec(compile(code, "README.md", "exec"), ns)  # noqa: S102 - the README's own snippet
        assert ns["res"]["pruned_answer"] and len(ns["res"]["kept_indices"][0]) == 36
        assert ns["res"]["comparable"] in (True, False) and ns["question"].endswith("?")
    finally:
        demo.close()


@pytest.mark.browser
def test_browser_offline_model_list_marks_and_explains_unavailable_presets(server, browser):
    """Offline (the suite runs with HF_HUB_OFFLINE and no downloaded checkpoints): the Model list marks the real
    checkpoints as not available on this server; picking one and pressing Run shows why, at once, in words for a
    visitor; the offline model still answers afterwards."""
    import re

    url, _, _ = server
    page = _open(browser, url, DESKTOP)
    page.get_by_label("Model", exact=True).click()
    option = page.get_by_role("option", name=re.compile(r"^llava-1\.5-7b: "))
    assert "(not available on this server)" in option.inner_text()
    assert "not available" not in page.get_by_role("option", name=re.compile(r"^scenes: ")).inner_text()
    option.click()
    page.get_by_role("button", name="Run", exact=True).click()
    page.wait_for_function("() => document.body.innerText.includes('works offline')")
    assert "load_model" not in page.locator("body").inner_text()
    page.get_by_label("Model", exact=True).click()
    page.get_by_role("option", name=re.compile(r"^scenes: ")).click()
    page.get_by_role("button", name="Run", exact=True).click()
    _wait_answer(page)
    page.close()


@pytest.mark.browser
def test_browser_query_words_setting_reaches_the_run(server, browser):
    """Settings → Query words → keywords: the adjective of the question is among the query words of the next Run
    (nouns, the default, leave it out)."""
    url, _, _ = server
    page = _open(browser, url, DESKTOP)
    box = page.locator("#instruction textarea")
    box.fill("What colour is the small circle?")
    box.press("Enter")
    page.wait_for_function(
        "() => document.querySelector('#run-info')?.innerText.includes('query words: colour, circle')"
    )
    page.get_by_text("Settings of this method").click()
    page.get_by_label("keywords", exact=True).check()
    page.wait_for_timeout(300)
    page.get_by_role("button", name="Run", exact=True).click()
    page.wait_for_function("() => document.querySelector('#run-info')?.innerText.includes('small')")
    page.close()
