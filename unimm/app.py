"""The unimm Gradio demo: chat about images and generate images with one model.

    unimm demo --model tiny                     # a random model: noise, but everything runs
    python -m unimm.app                         # the same; the shipped default model (weights/default)

Needs gradio: `pip install "unimm[app]"`.

UI code only: every model call goes through unimm's public API
(`unimm.load`, `pipe.generate`, `pipe.chat`, `pipe.config`).

Decisions recorded here:
- One model is shared by every visitor, so both model events (generate, chat)
  share one concurrency slot (`concurrency_id="model"`, limit 1): a chat and a
  generation never run on the model at the same time. The seed shown is the
  one each image carries (`image.info["seed"]`). Waiting requests queue
  (`max_size` = --max-queue); past that Gradio refuses the request and the
  page shows its "This application is currently busy. Please try again." toast.
- Every bad input raises `gr.Error` with a sentence a visitor understands; the
  event stops, the app keeps serving, and the chat box keeps what was typed
  (the chat handler validates everything before its first yield).
- Uploads are checked from the image header before decoding (a pixel cap well
  under PIL's decompression-bomb limit), then opened with unimm's `load_image`.
- Offline: analytics are switched off before gradio is imported, the default
  theme's fonts are served locally, SSR (a Node server) is off, share is off.
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

# Must be set before gradio is imported: gradio reads it at import and in Blocks().
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

from unimm.extras import require  # noqa: E402

gr = require("gradio", "app", "the unimm app")
import torch  # noqa: E402
from PIL import Image, ImageDraw, UnidentifiedImageError  # noqa: E402

import unimm  # noqa: E402
from unimm.generation.masked import MaskedOptions  # noqa: E402
from unimm.generation.options import SampleOptions, TokenSamplingOptions  # noqa: E402
from unimm.images import load_image  # noqa: E402

# Prompts in the shapes-world phrasing the default model is trained on.
EXAMPLE_PROMPTS = [
    "a red circle on the left",
    "two blue squares",
    "a green triangle and a yellow star",
    "there is a large orange diamond at the top",
    "three purple hexagons",
]
EXAMPLE_QUESTIONS = ["What colour is the circle?", "How many objects are there?", "Where is the blue square?"]
# Shown in place of an empty answer so the turn is visible; mapped back to "" in the history.
EMPTY_ANSWER = "(the model gave an empty answer)"
CLEARED_TEXTBOX = {"text": "", "files": []}
# Generated images are small (32-64 px); show them with hard pixel edges, not a blur.
CSS = "#gallery img { image-rendering: pixelated; }"


@dataclass(frozen=True)
class Limits:
    """Bounds of every number a visitor can set; sliders use them and the handlers re-check them
    (API calls skip the sliders, unit tests skip Gradio's own bound checks)."""

    max_images: int = 8
    # The slider ends the sampling options declare (unimm.generation.options): one owner.
    max_guidance: float = SampleOptions.spec("guidance_scale")["ui_max"]
    max_temperature: float = TokenSamplingOptions.spec("temperature")["ui_max"]
    max_steps: int = MaskedOptions.spec("steps")["ui_max"]
    max_new_tokens: int = 1024
    max_control_scale: float = 2.0
    max_reference_scale: float = 2.0
    max_best_of: int = 16
    max_seed: int = 2**31 - 1
    max_image_pixels: int = 4096 * 4096  # well below PIL's decompression-bomb limit (~89 MP)


# --------------------------------------------------------------------------- errors


def _sentence(message: str) -> str:
    message = message.strip()
    return message[:1].upper() + message[1:]


def user_error(message: str) -> gr.Error:
    # A visitor's mistake, not a bug: no traceback in the server log.
    return gr.Error(_sentence(message), print_exception=False)


@contextlib.contextmanager
def friendly_errors():
    """unimm reports bad input as ValueError / FileNotFoundError with a clear message: show it."""
    try:
        yield
    except gr.Error:
        raise
    except FileNotFoundError as e:
        raise user_error(f"{e}. If it was an image from earlier in the chat, press Clear and upload it again.") from e
    except ValueError as e:
        raise user_error(str(e)) from e
    except torch.cuda.OutOfMemoryError as e:
        raise gr.Error("The model ran out of memory: ask for fewer images or a shorter answer.") from e


def check_number(value, label: str, low: float, high: float, integer: bool = False):
    """`value` as a float (int with integer=True) in [low, high], else a gr.Error naming the field."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise user_error(f"{label} must be a number, got {value!r}.") from None
    if not low <= x <= high:  # NaN fails too
        raise user_error(f"{label} must be between {low:g} and {high:g}, got {value}.")
    if integer:
        if x != int(x):
            raise user_error(f"{label} must be a whole number, got {value}.")
        return int(x)
    return x


def file_path(f) -> str:
    """A MultimodalTextbox file entry as a path: Gradio passes paths; API payloads may be dicts."""
    return f.get("path") if isinstance(f, dict) else str(f)


def open_upload(path: str, max_pixels: int) -> Image.Image:
    """Open an uploaded image, refusing non-images and huge images before decoding them."""
    name = Path(path).name
    try:
        with warnings.catch_warnings():  # PIL warns (does not raise) between 89 and 179 MP
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:  # reads the header only
                width, height = im.size
    except Image.DecompressionBombError:
        raise user_error(f"“{name}” is far too large to open safely; please upload a smaller image.") from None
    except FileNotFoundError:
        raise user_error(f"The upload “{name}” is no longer on the server; please upload it again.") from None
    except (UnidentifiedImageError, OSError):
        raise user_error(f"“{name}” is not an image this app can read; please upload a PNG, JPEG, WebP, GIF "
                         "or BMP picture.") from None
    if width * height > max_pixels:
        raise user_error(f"“{name}” is {width}×{height} pixels; the limit is {max_pixels / 1e6:.1f} megapixels. "
                         "Please upload a smaller image.")
    try:
        return load_image(path)
    except (ValueError, OSError):  # e.g. truncated after a readable header; the server's path stays private
        raise user_error(f"“{name}” is damaged or not an image this app can read; please upload it again or "
                         "upload another picture.") from None


# --------------------------------------------------------------------------- chat history


def _message_parts(content) -> list[tuple[str, str]]:
    """[("text", str) | ("file", path)] from a Chatbot message's content, in any of the forms
    Gradio uses: a string, a {"path"} dict, normalised {"type": "text"/"file"} dicts, or a list."""
    items = content if isinstance(content, (list, tuple)) else [content]
    parts = []
    for item in items:
        if isinstance(item, str):
            parts.append(("text", item))
        elif isinstance(item, dict) and item.get("type") == "text":
            parts.append(("text", item.get("text", "")))
        elif isinstance(item, dict) and "file" in item:
            parts.append(("file", file_path(item["file"])))
        elif isinstance(item, dict) and "path" in item:
            parts.append(("file", item["path"]))
    return parts  # other components (none are produced by this app) are ignored


def to_unimm_history(messages) -> list[dict]:
    """Chatbot messages -> unimm's history `[{"question", "answer", "images"}]`.

    A turn is every user message up to the next assistant message (text joined,
    images collected); a user turn with no answer yet (e.g. a failed request) is dropped.
    """
    turns, texts, images = [], [], []
    for message in messages or []:
        role = message.get("role") if isinstance(message, dict) else getattr(message, "role", None)
        content = message.get("content") if isinstance(message, dict) else getattr(message, "content", None)
        parts = _message_parts(content)
        if role == "user":
            texts += [v for kind, v in parts if kind == "text" and v.strip()]
            images += [v for kind, v in parts if kind == "file"]
        elif role == "assistant":
            answer = "".join(v for kind, v in parts if kind == "text")
            answer = "" if answer == EMPTY_ANSWER else answer
            if texts or images:
                turns.append({"question": "\n".join(texts), "answer": answer, "images": images})
            elif turns:  # an answer split over several assistant messages
                turns[-1]["answer"] += answer
            texts, images = [], []
    return turns


def user_message(text: str, paths: list[str]) -> dict:
    return {"role": "user", "content": [{"path": p} for p in paths] + [text]}


# --------------------------------------------------------------------------- handlers


class Handlers:
    """The functions wired to the app's events; unit tests call them directly."""

    def __init__(self, pipe, limits: Limits = Limits()):
        self.pipe, self.limits = pipe, limits
        self.family = pipe.model.family  # which options apply, their defaults and bounds

    @property
    def uses_temperature(self) -> bool:
        return "temperature" in self.family.options.names()

    @property
    def uses_steps(self) -> bool:
        return "steps" in self.family.options.names()

    def default(self, name: str, otherwise=None):
        """What an unset option runs for this model (`otherwise` where its family takes no such option)."""
        if name not in self.family.options.names():
            return otherwise
        return self.family.options.default(name, self.pipe.config.sampling)

    def default_steps(self) -> int | None:
        """What an unset `steps` runs for this model (None: the family takes no steps)."""
        if not self.uses_steps:
            return None
        return self.family.options.default("steps", self.pipe.config.sampling)

    @property
    def control_types(self) -> list[str]:
        """The model's ControlNets (dit models that have them), for the control inputs."""
        return list(getattr(self.pipe.model.gen_head, "controlnets", {})) if "control" in self.family.conditions else []

    @property
    def has_reference(self) -> bool:
        """Whether the model has an IP-Adapter (dit models that have one), for the reference input."""
        return "reference" in self.family.conditions and getattr(self.pipe.model.gen_head, "ip_adapter", None) is not None

    def generate_steered(self, prompt, num_images, guidance_scale, temperature, steps, seed, randomize_seed,
                         control_image, control_type, control_scale, reference_image, reference_scale,
                         best_of=None, progress=gr.Progress()):
        """`generate` with every input of the image tab (None where the model lacks the part): the
        images, the seed used and, for a model with ControlNets, the control map used (or None)."""
        images, used = self.generate(prompt, num_images, guidance_scale, temperature, steps, seed, randomize_seed,
                                     control_image=control_image, control_type=control_type,
                                     control_scale=control_scale, reference_image=reference_image,
                                     reference_scale=reference_scale, best_of=best_of, progress=progress)
        if not self.control_types:
            return images, used
        maps = images[0].info.get("control_maps", {})
        return images, used, next(iter(maps.values()), None)

    def generate(self, prompt, num_images, guidance_scale, temperature, steps, seed, randomize_seed,
                 control_image=None, control_type=None, control_scale=1.0, reference_image=None,
                 reference_scale=None, best_of=None, progress=gr.Progress()):
        """Images for `prompt` and the seed used (random when `randomize_seed`); with `control_image`
        (an upload's path), its `control_type` map steers the model's ControlNet; with
        `reference_image`, the IP-Adapter draws its object (the prompt may then be empty); `best_of`
        (None: the model's default) draws each image that many times and keeps the one the model
        judges best by the prompt, the control map and the reference it was given."""
        lim = self.limits
        prompt = (prompt or "").strip()
        if not prompt and reference_image is None:
            raise user_error(f"Please type a prompt, for example “{EXAMPLE_PROMPTS[0]}”"
                             + (", or give a reference picture." if self.has_reference else "."))
        options = {
            "num_images": check_number(num_images, "Number of images", 1, lim.max_images, integer=True),
            "guidance_scale": check_number(guidance_scale, "Guidance scale", 0, lim.max_guidance),
            "seed": None if randomize_seed else check_number(seed, "Seed", 0, lim.max_seed, integer=True),
        }
        # Options the paradigm ignores are not sent (their controls are hidden).
        if self.uses_temperature:
            options["temperature"] = check_number(temperature, "Temperature", 0, lim.max_temperature)
        if self.uses_steps:
            options["steps"] = check_number(steps, "Steps", 1, lim.max_steps, integer=True)
        if best_of is not None:
            best_of = check_number(best_of, "Candidates per image", 1, lim.max_best_of, integer=True)
            options["best_of"] = best_of  # a prompt is given here, or a reference to judge candidates by
        if control_image is not None:
            if not self.control_types:
                raise user_error("This model has no ControlNet; generate without a control image.")
            if control_type not in self.control_types:
                raise user_error(f"Choose a control type: {', '.join(self.control_types)}.")
            options.update(control_image=open_upload(file_path(control_image), lim.max_image_pixels),
                           control_type=control_type,
                           control_scale=check_number(control_scale, "Control scale", 0, lim.max_control_scale))
        if reference_image is not None:
            if not self.has_reference:
                raise user_error("This model has no IP-Adapter; generate without a reference picture.")
            options["reference_image"] = open_upload(file_path(reference_image), lim.max_image_pixels)
            if reference_scale is not None:
                options["reference_scale"] = check_number(reference_scale, "Reference scale", 0,
                                                          lim.max_reference_scale)
        unit = self.family.progress_unit + "s"

        def report(step, total):
            progress((step, total), desc="Sampling", unit=unit)

        progress(0, desc="Starting")
        with friendly_errors():
            images = self.pipe.generate(prompt, progress=report, **options)
        return images, images[0].info["seed"]

    def chat(self, message, history, temperature, top_p, max_new_tokens):
        """Stream the answer to `message` ({"text", "files"}) given the Chatbot `history`.

        Yields (chatbot messages, cleared textbox); the last yield holds the whole answer.
        Everything is checked before the first yield, so on an error the textbox keeps its input.
        """
        lim = self.limits
        message = message if isinstance(message, dict) else {"text": message or "", "files": []}
        text = (message.get("text") or "").strip()
        paths = [file_path(f) for f in message.get("files") or []]
        options = {
            "temperature": check_number(temperature, "Temperature", 0, lim.max_temperature),
            "top_p": check_number(top_p, "Top-p", 0.01, 1),
            "max_new_tokens": check_number(max_new_tokens, "Max new tokens", 1, lim.max_new_tokens, integer=True),
        }
        if not text:
            example = f"for example “{EXAMPLE_QUESTIONS[0]}”"
            raise user_error(f"Please type a question about the image, {example}." if paths else
                             f"Please type a question, {example}; you can also attach images.")
        images = [open_upload(p, lim.max_image_pixels) for p in paths]
        with friendly_errors():
            pieces = self.pipe.chat(images, text, history=to_unimm_history(history), stream=True, **options)
        # Each yield is a new list, so a caller that keeps the yields sees the answer grow.
        past = list(history or []) + [user_message(text, paths)]
        yield past + [{"role": "assistant", "content": ""}], CLEARED_TEXTBOX
        answer = ""
        with friendly_errors():
            for piece in pieces:
                answer += piece
                yield past + [{"role": "assistant", "content": answer}], CLEARED_TEXTBOX
        if not answer.strip():
            yield past + [{"role": "assistant", "content": EMPTY_ANSWER}], CLEARED_TEXTBOX


# --------------------------------------------------------------------------- layout


def parameter_count(pipe) -> str:
    n = sum(p.numel() for p in pipe.model.parameters())
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.2f} {suffix} ({n:,})"
    return str(n)


def model_info(pipe, model_name: str) -> dict[str, str]:
    return {
        "Model": model_name,
        "Paradigm": pipe.model.family.name,
        "Parameters": parameter_count(pipe),
        "Device": str(pipe.device),
        "Dtype": str(pipe.model.dtype).removeprefix("torch."),
    }


def model_markdown(info: dict[str, str]) -> str:
    rows = "\n".join(f"| {k} | `{v}` |" for k, v in info.items())
    return f"| | |\n|---|---|\n{rows}"


@functools.lru_cache(maxsize=1)
def example_image() -> str:
    """A shapes-world-like picture for the chat examples: a red circle (left), a blue square (right).
    Written once per process to a temporary folder (Gradio serves files from there; no asset to ship)."""
    path = Path(tempfile.mkdtemp(prefix="unimm-demo-")) / "shapes-example.png"
    im = Image.new("RGB", (64, 64), (170, 170, 170))
    draw = ImageDraw.Draw(im)
    draw.ellipse((4, 22, 24, 42), fill=(220, 30, 30))
    draw.rectangle((42, 23, 60, 41), fill=(30, 60, 220))
    im.save(path)
    return str(path)


def _chat_tab(h: Handlers, pipe):
    d, lim = pipe.config.sampling, h.limits
    # render_markdown=False: answers are shown verbatim and "<image>" in a question is not eaten as HTML.
    chatbot = gr.Chatbot(label="Chat", height=420, render_markdown=False, elem_id="chatbot",
                         buttons=["copy"], feedback_options=None)
    textbox = gr.MultimodalTextbox(
        file_types=["image"], file_count="multiple", sources=["upload"], label="Message", show_label=False,
        elem_id="chat-input",
        placeholder="Ask about an image: attach one or more with the clip, type a question, press Enter",
    )
    gr.ClearButton([chatbot, textbox], value="Clear chat", elem_id="chat-clear")  # client-side: no model call
    with gr.Accordion("Sampling options", open=False):
        temperature = gr.Slider(0, lim.max_temperature, value=d.chat_temperature, step=0.05, label="Temperature",
                                info="0 = greedy (always the most likely word)")
        top_p = gr.Slider(0.01, 1, value=1.0, step=0.01, label="Top-p")
        max_new = gr.Slider(1, lim.max_new_tokens, value=d.chat_max_new_tokens, step=1, label="Max new tokens")
    gr.Examples([[{"text": q, "files": [example_image()]}] for q in EXAMPLE_QUESTIONS], inputs=[textbox],
                label="Examples (a red circle and a blue square)")
    textbox.submit(h.chat, [textbox, chatbot, temperature, top_p, max_new], [chatbot, textbox],
                   api_name="chat", concurrency_id="model")


def _image_tab(h: Handlers, pipe):
    lim = h.limits
    with gr.Row():
        with gr.Column(scale=2):
            prompt = gr.Textbox(label="Prompt", lines=2, elem_id="prompt",
                                placeholder=f"Describe the picture, e.g. “{EXAMPLE_PROMPTS[0]}”")
            gr.Examples([[p] for p in EXAMPLE_PROMPTS], inputs=[prompt], label="Example prompts")
            num_images = gr.Slider(1, lim.max_images, value=min(4, lim.max_images), step=1, label="Number of images")
            guidance = gr.Slider(0, lim.max_guidance, value=h.default("guidance_scale"), step=0.5, label="Guidance scale",
                                 info="How closely images follow the prompt (1 = no guidance)")
            temperature = gr.Slider(0, lim.max_temperature, value=h.default("temperature", 1.0), step=0.05,
                                    label="Temperature",
                                    visible=h.uses_temperature, info="0 = greedy", elem_id="gen-temperature")
            steps = gr.Slider(1, lim.max_steps, value=h.default_steps() or 1, step=1, label="Steps",
                              visible=h.uses_steps, info="Decoding passes (masked) or ODE steps (flow)",
                              elem_id="gen-steps")
            best_of = gr.Slider(1, lim.max_best_of, value=min(pipe.config.sampling.best_of, lim.max_best_of), step=1,
                                label="Candidates per image", elem_id="best-of",
                                info="Draws each image this many times and keeps the one the model itself "
                                     "judges closest to the prompt, control map and reference (1 = off)")
            with gr.Row():
                seed = gr.Number(value=0, label="Seed", precision=0, minimum=0, maximum=lim.max_seed)
                randomize = gr.Checkbox(value=True, label="Randomise seed")
            # Inputs of parts the model lacks are constants (None), so one handler serves every model.
            control_image, control_type, control_scale = gr.State(None), gr.State(None), gr.State(1.0)
            reference_image, reference_scale = gr.State(None), gr.State(None)
            if h.control_types:  # a dit model with ControlNets: a picture whose map steers it
                with gr.Accordion("Control (ControlNet)", open=False):
                    control_image = gr.Image(label="Control picture", type="filepath", elem_id="control-image")
                    control_type = gr.Dropdown(h.control_types, value=h.control_types[0], label="Control type",
                                               elem_id="control-type")
                    control_scale = gr.Slider(0, lim.max_control_scale, value=1.0, step=0.05,
                                              label="Control scale", elem_id="control-scale")
            if h.has_reference:  # a dit model with an IP-Adapter: a picture whose object it draws
                with gr.Accordion("Reference (IP-Adapter)", open=False):
                    reference_image = gr.Image(label="Reference picture", type="filepath", elem_id="reference-image")
                    reference_scale = gr.Slider(0, lim.max_reference_scale,
                                                value=pipe.model.gen_head.config.ip_adapter.reference_scale, step=0.05,
                                                label="Reference scale", elem_id="reference-scale",
                                                info="With a reference the prompt may be empty")
            button = gr.Button("Generate", variant="primary", elem_id="generate")
        with gr.Column(scale=3):
            gallery = gr.Gallery(label="Images", columns=4, height=420, format="png", elem_id="gallery",
                                 object_fit="contain", interactive=False)
            seed_used = gr.Number(label="Seed used", info="Untick “Randomise seed” and enter it to reproduce",
                                  precision=0, interactive=False, elem_id="seed-used")
            outputs = [gallery, seed_used]
            if h.control_types:
                outputs.append(gr.Image(label="Control map used", interactive=False, elem_id="control-map"))
    inputs = [prompt, num_images, guidance, temperature, steps, seed, randomize, control_image, control_type,
              control_scale, reference_image, reference_scale, best_of]
    gr.on([button.click, prompt.submit], h.generate_steered, inputs, outputs, api_name="generate",
          concurrency_id="model")


def build_app(pipe, model_name: str | None = None, max_queue: int = 16, limits: Limits = Limits()) -> gr.Blocks:
    """The demo for `pipe`, queued: one model call at a time, at most `max_queue` waiting."""
    h = Handlers(pipe, limits)
    info = model_info(pipe, model_name or pipe.config.name)
    with gr.Blocks(title="unimm demo", analytics_enabled=False) as demo:
        gr.Markdown(f"## unimm demo\nModel **{info['Model']}** ({info['Paradigm']}, {info['Parameters']}) "
                    f"on {info['Device']}: chat about images, or generate them from a prompt.")
        with gr.Tabs():
            with gr.Tab("Chat", id="chat"):
                _chat_tab(h, pipe)
            with gr.Tab("Generate image", id="generate"):
                _image_tab(h, pipe)
            with gr.Tab("Model", id="model"):
                gr.Markdown(model_markdown(info), elem_id="model-info")
    demo.queue(default_concurrency_limit=1, max_size=max_queue)
    return demo


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
           max_file_size: str = "20mb"):
    """Start serving without blocking; returns Gradio's (app, local_url, share_url)."""
    return demo.launch(server_name=host, server_port=port, share=share, max_file_size=max_file_size,
                       prevent_thread_lock=True, quiet=True, show_error=True, ssr_mode=False, css=CSS,
                       footer_links=["api", "settings"])


# --------------------------------------------------------------------------- command line


def parse_args(argv):
    from unimm.console import Parser

    p = Parser(prog="unimm demo", description="Chat about images and generate them in a browser.")
    from unimm.cli import model_args

    model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=7860, help="0-65535 (0: any free port)")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link (needs internet)")
    p.add_argument("--max-queue", type=int, default=16, help="requests that may wait; more get a 'busy' message")
    p.add_argument("--max-images", type=int, default=Limits.max_images, help="images per generate request")
    p.add_argument("--max-image-pixels", type=int, default=Limits.max_image_pixels, help="largest upload, in pixels")
    p.add_argument("--max-file-size", default="20mb", help="largest upload, in bytes (e.g. 20mb)")
    args = p.parse_args(argv)
    for name in ("max_queue", "max_images", "max_image_pixels"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 <= args.port <= 65535:
        p.error(f"--port must be in 0-65535, got {args.port}")
    return args


def main(argv=None) -> int:
    from unimm.console import guarded

    return guarded("unimm demo", _main, argv)


def _main(argv) -> int:
    from unimm.cli import load_model
    from unimm.console import one_line

    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        pipe = load_model(args)
    except (FileNotFoundError, ValueError) as e:
        hint = ("; the default model lives in weights/default (README: The default model), "
                "`--model tiny` opens a random model") if args.model is None else ""
        print(f"unimm demo: error: {one_line(e)}{hint}", file=sys.stderr)
        return 2
    limits = Limits(max_images=args.max_images, max_image_pixels=args.max_image_pixels)
    name = args.model or os.environ.get("UNIMM_MODEL") or "default (weights/default)"
    demo = build_app(pipe, name, max_queue=args.max_queue, limits=limits)
    try:
        _, local_url, share_url = launch(demo, args.host, args.port, args.share, args.max_file_size)
    except OSError as e:
        print(f"unimm demo: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 2
    print(f"unimm demo running on {local_url}", flush=True)
    if share_url:
        print(f"public link: {share_url}", flush=True)
    print("press Ctrl+C to stop", flush=True)
    try:
        demo.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        demo.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
