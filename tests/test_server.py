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
        page.goto(url, timeout=60_000)
        page.locator("input[type=file]").first.set_input_files(str(img))
        page.get_by_role("button", name="Run", exact=True).click()
        pruned = page.locator("#pruned-answer textarea")
        page.wait_for_function(
            "() => document.querySelector('#pruned-answer textarea')?.value.length > 0", timeout=120_000
        )
        assert pruned.input_value()
        assert page.locator("#unpruned-answer textarea").input_value()
        page.wait_for_selector("#overlay img", timeout=60_000)
        shot = tmp_path / "app.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        browser.close()
