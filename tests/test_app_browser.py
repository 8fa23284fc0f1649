"""The Gradio demo end to end in headless Chromium (Debian's /usr/bin/chromium driven by Playwright).

Generates images, chats about an uploaded picture, checks that bad input and a full queue show a
message, and that the page fetches nothing from outside localhost. Screenshots go to the test's tmp
folder, and to $UNIMM_SCREENSHOTS (e.g. `UNIMM_SCREENSHOTS=docs`) as app-generate.png / app-chat.png.
"""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 30_000

if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)
playwright_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is missing "
                                     "(pip install playwright; its own browser download is not needed)")
expect = playwright_api.expect

from unimm import app  # noqa: E402


from app_helpers import GatedPipe, fill_queue  # noqa: E402


@pytest.fixture(scope="module")
def server(tiny_pipe):
    """The app on a free localhost port: one running request and one waiting at most."""
    pipe = GatedPipe(tiny_pipe)
    demo = app.build_app(pipe, "tiny", max_queue=1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app.launch(demo, port=port)
    yield f"http://127.0.0.1:{port}/", pipe
    pipe.release.set()
    demo.close()


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    """A fresh page on the app; fails the test if the page asked for anything outside localhost."""
    url, _ = server
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    outside: list[str] = []

    def only_localhost(route):
        if urlparse(route.request.url).hostname in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", only_localhost)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.wait_for_selector("#chat-input textarea")
    yield page
    context.close()
    assert not outside, f"the page tried to fetch from outside localhost: {outside}"


def screenshot(page, tmp_path, name):
    page.screenshot(path=str(tmp_path / name))
    folder = os.environ.get("UNIMM_SCREENSHOTS")
    if folder:
        target = Path(folder) if Path(folder).is_absolute() else ROOT / folder
        target.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(target / name))


def toast(page, text):
    return page.locator('[data-testid="toast-body"]', has_text=text)


def generate(page, prompt):
    page.get_by_role("tab", name="Generate image").click()
    page.fill("#prompt textarea", prompt)
    page.click("#generate")


def wait_until_stable(locator, seconds=1.0, timeout=30.0) -> str:
    """The locator's text once it is non-empty and has stopped changing (streaming finished)."""
    last, since, deadline = None, time.monotonic(), time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = locator.inner_text().strip()
        if text != last:
            last, since = text, time.monotonic()
        elif text and time.monotonic() - since >= seconds:
            return text
        time.sleep(0.1)
    raise AssertionError(f"the text did not settle: {last!r}")


def test_generate_shows_images_and_the_seed(page, tmp_path):
    generate(page, "a red circle on the left")
    expect(page.locator("#gallery img").first).to_be_visible()
    assert page.locator("#gallery img").count() == 4  # the default number of images
    assert page.locator("#seed-used input").input_value().isdigit()
    screenshot(page, tmp_path, "app-generate.png")


def test_chat_answers_about_an_uploaded_image(page, tmp_path, shapes_image):
    picture = tmp_path / "shapes.png"
    shapes_image.resize((96, 80)).save(picture)
    page.set_input_files("#chat-input input[type=file]", str(picture))
    page.fill("#chat-input textarea", "What colour is the circle?")
    expect(page.locator("#chat-input img").first).to_be_visible()  # the upload's thumbnail
    page.press("#chat-input textarea", "Enter")
    expect(page.locator('#chatbot [data-testid="user"] img').first).to_be_visible()
    answer = wait_until_stable(page.locator('#chatbot [data-testid="bot"]').last)
    assert answer
    assert page.locator("#chat-input textarea").input_value() == ""  # the input was cleared
    screenshot(page, tmp_path, "app-chat.png")


def test_bad_input_shows_a_message_and_the_app_keeps_serving(page, tmp_path):
    generate(page, "   ")
    expect(toast(page, "Please type a prompt")).to_be_visible()
    page.get_by_role("tab", name="Chat").click()
    fake = tmp_path / "holiday.png"
    fake.write_text("these are not pixels")
    page.set_input_files("#chat-input input[type=file]", str(fake))
    page.fill("#chat-input textarea", "What is this?")
    page.press("#chat-input textarea", "Enter")
    expect(toast(page, "“holiday.png” is not an image")).to_be_visible()
    assert page.locator("#chat-input textarea").input_value() == "What is this?"  # kept for a retry
    generate(page, "two blue squares")
    expect(page.locator("#gallery img").first).to_be_visible()


def test_full_queue_shows_the_busy_message(page, server):
    from gradio_client import Client

    url, pipe = server
    client = Client(url, verbose=False)
    try:
        running, waiting = fill_queue(client, pipe)
        generate(page, "a green triangle and a yellow star")  # the queue (max 1 waiting) is full
        expect(toast(page, "This application is currently busy")).to_be_visible()
    finally:
        pipe.release.set()
    running.result(timeout=60)
    waiting.result(timeout=60)


@pytest.fixture(scope="module")
def steered_url():
    """The app on a dit model with ControlNets and an IP-Adapter (untrained: wiring, not quality)."""
    import warnings

    import unimm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", unimm.UntrainedModelWarning)
        pipe = unimm.load({"base": "tiny-dit-control", "name": "tiny-dit-steered",
                           "generation": {"generator": {"ip_adapter": {"num_queries": 8, "timestep_dim": 32}}}})
    demo = app.build_app(pipe, "tiny-dit-steered")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app.launch(demo, port=port)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def test_generate_with_an_uploaded_control_picture_and_reference(browser, steered_url, tmp_path, shapes_image):
    context = browser.new_context(viewport={"width": 1280, "height": 1400})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(steered_url)
    page.get_by_role("tab", name="Generate image").click()
    control, reference = tmp_path / "layout.png", tmp_path / "reference.png"
    shapes_image.save(control)
    shapes_image.resize((64, 64)).save(reference)
    page.get_by_text("Control (ControlNet)").click()
    page.get_by_text("Reference (IP-Adapter)").click()
    page.set_input_files("#control-image input[type=file]", str(control))
    page.set_input_files("#reference-image input[type=file]", str(reference))
    expect(page.locator("#reference-image img").first).to_be_visible(timeout=TIMEOUT_MS)
    page.fill("#prompt textarea", "a red object")
    page.click("#generate")
    expect(page.locator("#gallery img").first).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.locator("#control-map img").first).to_be_visible(timeout=TIMEOUT_MS)  # the map it made
    assert page.locator("#seed-used input").input_value().isdigit()
    screenshot(page, tmp_path, "app-control-reference.png")
    context.close()
