"""The Gradio demo (unimm/app.py): its event handlers called directly, then the running app
driven through gradio_client's named endpoints (/generate, /chat)."""
from __future__ import annotations

import os
import queue
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
gr = pytest.importorskip("gradio")
from PIL import Image  # noqa: E402

from unimm import app  # noqa: E402

QUESTION = "What colour is the circle?"


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def handlers(tiny_pipe):
    return app.Handlers(tiny_pipe)


@pytest.fixture
def png(tmp_path, shapes_image):
    path = tmp_path / "shapes.png"
    shapes_image.save(path)
    return str(path)


def png_header_only(path: Path, width: int, height: int) -> str:
    """A PNG whose header claims width x height (its pixel data is junk): PIL reads the size
    without decoding, so the app must refuse it from the header alone."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return str(path)


def run_chat(handlers, message, history=(), temperature=0.0, top_p=1.0, max_new_tokens=12):
    return list(handlers.chat(message, list(history), temperature, top_p, max_new_tokens))


def gen(handlers, prompt="a red circle on the left", num_images=2, guidance_scale=3.0, temperature=1.0, steps=4,
        seed=0, randomize_seed=False, **kw):
    return handlers.generate(prompt, num_images, guidance_scale, temperature, steps, seed, randomize_seed, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- generate


def test_generate_returns_images_and_seed(handlers):
    calls = []
    images, seed = gen(handlers, num_images=2, seed=7, progress=lambda *a, **k: calls.append(a[0]))
    assert seed == 7 and len(images) == 2
    assert all(isinstance(im, Image.Image) and im.size == (32, 32) for im in images)
    # The progress bar follows the sampling steps: (step, total) up to (64, 64) image tokens.
    steps = [c for c in calls if isinstance(c, tuple)]
    assert steps[-1] == (64, 64) and len(steps) == 64


def test_same_seed_reproduces_and_randomise_reports_its_seed(handlers):
    first, _ = gen(handlers, num_images=1, seed=123)
    again, _ = gen(handlers, num_images=1, seed=123)
    assert first[0].tobytes() == again[0].tobytes()
    images, seed = gen(handlers, num_images=1, seed=123, randomize_seed=True)
    assert isinstance(seed, int) and 0 <= seed < 2**31
    replay, _ = gen(handlers, num_images=1, seed=seed)
    assert replay[0].tobytes() == images[0].tobytes()


def test_candidates_per_image_reach_the_pipeline(handlers, tiny_pipe):
    """The slider's best_of is the pipeline's: the same images as pipe.generate(best_of=...)."""
    images, _ = gen(handlers, num_images=2, seed=11, best_of=3, progress=lambda *a, **k: None)
    want = tiny_pipe.generate("a red circle on the left", num_images=2, seed=11, best_of=3, guidance_scale=3.0,
                              temperature=1.0)
    assert [a.tobytes() for a in images] == [b.tobytes() for b in want]
    assert all(im.info["best_of"] == 3 for im in images)


@pytest.mark.parametrize("kwargs, message", [
    ({"prompt": ""}, "Please type a prompt"),
    ({"prompt": "   "}, "Please type a prompt"),
    ({"prompt": None}, "Please type a prompt"),
    ({"num_images": 0}, "Number of images must be between 1 and 8"),
    ({"num_images": 99}, "Number of images must be between 1 and 8"),
    ({"num_images": 1.5}, "Number of images must be a whole number"),
    ({"guidance_scale": -1}, "Guidance scale must be between 0 and 20"),
    ({"guidance_scale": float("nan")}, "Guidance scale must be between"),
    ({"temperature": 5}, "Temperature must be between 0 and 2"),
    ({"seed": -3}, "Seed must be between 0 and"),
    ({"seed": "abc"}, "Seed must be a number"),
    ({"prompt": "red " * 600}, "shorten the prompt"),  # unimm's ValueError, shown as a gr.Error
    ({"best_of": 0}, "Candidates per image must be between 1 and 16"),
    ({"best_of": 2.5}, "Candidates per image must be a whole number"),
])
def test_generate_bad_input_is_a_friendly_error(handlers, kwargs, message):
    with pytest.raises(gr.Error) as e:
        gen(handlers, **kwargs)
    assert message in e.value.message


@pytest.mark.parametrize("name, temperature, steps", [("tiny-masked", True, True), ("tiny-flow", False, True)])
def test_paradigm_controls(name, temperature, steps):
    import unimm

    pipe = unimm.load(name)
    h = app.Handlers(pipe)
    assert (h.uses_temperature, h.uses_steps) == (temperature, steps)
    assert h.default_steps() == pipe.config.sampling.steps
    images, seed = gen(h, num_images=1, steps=2, seed=1)
    assert len(images) == 1 and seed == 1
    with pytest.raises(gr.Error, match="Steps must be between 1 and 200"):
        gen(h, steps=0)
    demo = app.build_app(pipe, name)
    shown = {b.elem_id: b.visible for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    assert shown["gen-temperature"] is temperature and shown["gen-steps"] is steps


def test_autoregressive_hides_steps(tiny_pipe):
    demo = app.build_app(tiny_pipe, "tiny")
    shown = {b.elem_id: b.visible for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    assert shown["gen-temperature"] is True and shown["gen-steps"] is False


# --------------------------------------------------------------------------- chat


def test_chat_streams_growing_text_and_returns_the_history(handlers, tiny_pipe, png):
    yields = run_chat(handlers, {"text": QUESTION, "files": [png]})
    texts = [messages[-1]["content"] for messages, _ in yields]
    assert texts[0] == "" and len(texts) > 2
    for before, after in zip(texts[1:], texts[2:]):
        assert after.startswith(before) and len(after) > len(before)
    messages, textbox = yields[-1]
    assert textbox == {"text": "", "files": []}  # the input box is cleared
    assert messages[0] == {"role": "user", "content": [{"path": png}, QUESTION]}
    assert messages[1]["role"] == "assistant"
    assert texts[-1] == tiny_pipe.chat(png, QUESTION, max_new_tokens=12, temperature=0.0)


def test_follow_up_keeps_history(handlers, tiny_pipe, png):
    first = run_chat(handlers, {"text": QUESTION, "files": [png]})[-1][0]
    answer = first[-1]["content"]
    assert app.to_unimm_history(first) == [{"question": QUESTION, "answer": answer, "images": [png]}]
    messages = run_chat(handlers, {"text": "And its shape?", "files": []}, history=first)[-1][0]
    assert len(messages) == 4 and messages[2] == {"role": "user", "content": ["And its shape?"]}
    history = [{"question": QUESTION, "answer": answer, "images": [png]}]
    assert messages[3]["content"] == tiny_pipe.chat([], "And its shape?", history=history, max_new_tokens=12,
                                                    temperature=0.0)


def test_history_round_trips_through_the_chatbot(png):
    """What the Chatbot hands back (normalised {"type": "text"/"file"} parts) maps to the same turns."""
    messages = [
        app.user_message("first?", [png]), {"role": "assistant", "content": "one"},
        app.user_message("second?", []), {"role": "assistant", "content": app.EMPTY_ANSWER},
        app.user_message("unanswered", []),
    ]
    chatbot = gr.Chatbot()
    normalised = chatbot.preprocess(chatbot.postprocess(messages))
    assert normalised[0]["content"][0]["type"] == "file"
    for form in (messages, normalised):
        assert app.to_unimm_history(form) == [
            {"question": "first?", "answer": "one", "images": [png]},
            {"question": "second?", "answer": "", "images": []},
        ]


@pytest.mark.parametrize("message, options, expected", [
    ({"text": "", "files": []}, {}, "Please type a question"),
    ({"text": "   ", "files": ["IMAGE"]}, {}, "Please type a question about the image"),
    (None, {}, "Please type a question"),
    ({"text": QUESTION, "files": ["IMAGE"]}, {"temperature": -1}, "Temperature must be between 0 and 2"),
    ({"text": QUESTION, "files": ["IMAGE"]}, {"top_p": 0}, "Top-p must be between"),
    ({"text": QUESTION, "files": ["IMAGE"]}, {"max_new_tokens": 0}, "Max new tokens must be between 1 and 1024"),
    ({"text": QUESTION, "files": ["IMAGE"]}, {"max_new_tokens": 5000}, "Max new tokens must be between"),
])
def test_chat_bad_input_is_a_friendly_error(handlers, png, message, options, expected):
    if message:
        message = {**message, "files": [png if f == "IMAGE" else f for f in message["files"]]}
    with pytest.raises(gr.Error) as e:
        run_chat(handlers, message, **options)
    assert expected in e.value.message


def test_chat_refuses_non_images_and_huge_images(handlers, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    big = png_header_only(tmp_path / "big.png", 5000, 5000)  # 25 MP: over the app's 16.8 MP cap
    bomb = png_header_only(tmp_path / "bomb.png", 30000, 30000)  # 900 MP: PIL's decompression-bomb error
    for path, expected in [(str(text), "“notes.png” is not an image"),
                           (big, "“big.png” is 5000×5000 pixels; the limit is 16.8 megapixels"),
                           (bomb, "“bomb.png” is far too large")]:
        with pytest.raises(gr.Error) as e:
            run_chat(handlers, {"text": QUESTION, "files": [path]})
        assert expected in e.value.message


def test_chat_missing_history_image_is_a_friendly_error(handlers, tmp_path):
    history = [app.user_message("first?", [str(tmp_path / "gone.png")]), {"role": "assistant", "content": "red"}]
    with pytest.raises(gr.Error) as e:
        run_chat(handlers, {"text": QUESTION, "files": []}, history=history)
    assert "gone.png" in e.value.message and "Clear" in e.value.message


def test_model_panel(tiny_pipe):
    info = app.model_info(tiny_pipe, "tiny")
    assert info["Model"] == "tiny" and info["Paradigm"] == "autoregressive"
    assert info["Device"] == "cpu" and info["Dtype"] == "float32"
    n = sum(p.numel() for p in tiny_pipe.model.parameters())
    assert f"({n:,})" in info["Parameters"]
    assert "| Paradigm | `autoregressive` |" in app.model_markdown(info)


def test_main_reports_a_missing_model(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("UNIMM_MODEL", str(tmp_path / "no-such-model"))
    assert app.main([]) == 2
    err = capsys.readouterr().err
    assert "no default model found" in err and "`--model tiny` opens a random model" in err
    assert app.main(["--model", str(tmp_path)]) == 2  # a directory without config.json


# --------------------------------------------------------------------------- the running app


@pytest.fixture(scope="module")
def served_url():
    """`python -m unimm.app --model tiny` in a subprocess; the URL it prints."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "unimm.app", "--model", "tiny", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    output, deadline = [], time.monotonic() + 180
    try:
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                assert proc.poll() is None, "the app exited:\n" + "".join(output)
                continue
            output.append(line)
            if "running on http" in line:
                yield line.split("running on ")[1].strip()
                return
        pytest.fail("the app did not print its URL in time:\n" + "".join(output))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def client(served_url):
    from gradio_client import Client

    return Client(served_url, verbose=False)


def test_client_generates_an_image(client, served_url):
    assert served_url.startswith("http://127.0.0.1:")
    gallery, seed = client.predict("a red circle on the left", 2, 3.0, 1.0, 12, 5, False, api_name="/generate")
    assert seed == 5 and len(gallery) == 2
    with Image.open(gallery[0]["image"]) as im:
        assert im.size == (32, 32)
    # Candidates per image by name (the server's tiny model is the one tiny_pipe builds: seed 0).
    best, _ = client.predict("a red circle on the left", 2, 3.0, 1.0, 12, 5, False, best_of=3, api_name="/generate")
    import unimm

    want = unimm.load("tiny").generate("a red circle on the left", num_images=2, seed=5, best_of=3,
                                       guidance_scale=3.0, temperature=1.0)
    for got, image in zip(best, want):
        with Image.open(got["image"]) as im:
            assert im.convert("RGB").tobytes() == image.tobytes()


def test_client_chats_about_an_uploaded_image(client, png):
    from gradio_client import handle_file

    job = client.submit({"text": QUESTION, "files": [handle_file(png)]}, [], 0.0, 1.0, 12, api_name="/chat")
    messages, textbox = job.result(timeout=120)
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert textbox["text"] == "" and not textbox["files"]
    answer = "".join(part["text"] for part in messages[1]["content"] if part["type"] == "text")
    assert answer.strip()
    streamed = [m[-1]["content"] for m, _ in job.outputs() if m and m[-1]["role"] == "assistant"]
    assert len(streamed) >= 2  # pieces arrived one by one


def test_client_follow_up_passes_the_history_back(served_url, png):
    """With download_files=False the returned history (files as FileData) goes back in as is."""
    from gradio_client import Client, handle_file

    client = Client(served_url, verbose=False, download_files=False)
    first, _ = client.predict({"text": QUESTION, "files": [handle_file(png)]}, [], 0.0, 1.0, 8, api_name="/chat")
    messages, _ = client.predict({"text": "And the square?", "files": []}, first, 0.0, 1.0, 8, api_name="/chat")
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[0]["content"][0]["type"] == "file" and messages[2]["content"][-1]["text"] == "And the square?"


def test_client_bad_input_shows_a_message_and_the_app_keeps_serving(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    fake = tmp_path / "fake.png"
    fake.write_text("no pixels here")
    with pytest.raises(AppError, match="is not an image this app can read"):
        client.predict({"text": QUESTION, "files": [handle_file(str(fake))]}, [], 0.0, 1.0, 8, api_name="/chat")
    notes = tmp_path / "notes.txt"
    notes.write_text("no pixels here either")
    with pytest.raises(AppError, match="Invalid file type"):  # Gradio's own check of file_types=["image"]
        client.predict({"text": QUESTION, "files": [handle_file(str(notes))]}, [], 0.0, 1.0, 8, api_name="/chat")
    with pytest.raises(AppError, match="Please type a prompt"):
        client.predict("  ", 1, 3.0, 1.0, 12, 0, False, api_name="/generate")
    with pytest.raises(AppError, match="maximum"):  # Gradio's own slider bound check
        client.predict("a red circle", 100, 3.0, 1.0, 12, 0, False, api_name="/generate")
    gallery, _ = client.predict("two blue squares", 1, 3.0, 1.0, 12, 0, False, api_name="/generate")
    assert len(gallery) == 1


from app_helpers import HOLD_ARGS, GatedPipe, fill_queue  # noqa: E402


def test_full_queue_refuses_more_requests(tiny_pipe):
    """One request runs, `max_queue` wait, the next is refused (the page shows Gradio's busy toast)."""
    from gradio_client import Client
    from gradio_client.utils import QueueError

    pipe = GatedPipe(tiny_pipe)
    demo = app.build_app(pipe, "tiny", max_queue=1)
    port = free_port()
    app.launch(demo, port=port)
    try:
        c = Client(f"http://127.0.0.1:{port}/", verbose=False)
        running, waiting = fill_queue(c, pipe, timeout=60)
        refused = c.submit(*HOLD_ARGS, api_name="/generate")
        with pytest.raises(QueueError, match="Queue is full"):
            refused.result(timeout=30)
        pipe.release.set()
        assert len(running.result(timeout=60)[0]) == 1 and len(waiting.result(timeout=60)[0]) == 1
    finally:
        pipe.release.set()
        demo.close()


def test_an_upload_damaged_after_its_header_is_named_without_the_server_path(tmp_path):
    """The header reads (so the size check passes) but the pixels do not: the visitor sees the
    file's name, never the server's temporary folder."""
    good = tmp_path / "server-temp-folder" / "picture.png"
    good.parent.mkdir()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(good)
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])
    with pytest.raises(app.gr.Error) as caught:
        app.open_upload(str(good), 4096 * 4096)
    assert "“picture.png” is damaged or not an image this app can read" in str(caught.value)
    assert "server-temp-folder" not in str(caught.value)
