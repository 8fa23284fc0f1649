"""Janus-Pro's prompt formats as unimm PromptConfig, a chat template for exported models,
and a check that unimm builds exactly the prompt ids a Janus processor builds.

The format is that of transformers' Janus-Pro checkpoints (the chat template
written by transformers/models/janus/convert_janus_weights_to_hf.py, and
JanusProcessor in processing_janus.py):

- chat: [BOS] [system prompt] "<|User|>: " content "\\n\\n" "<|Assistant|>:"; an answer
  follows as " " answer EOS; the next turn starts right after the EOS. Content
  text is stripped at its start and end; each image is set off by a newline
  from its neighbours and expands to <begin_of_image> <image_placeholder> x N
  <end_of_image>. The processor prepends its DEFAULT_SYSTEM_PROMPT to chat
  prompts when `use_default_system_prompt` is set (it is, in the converted
  Janus-Pro checkpoints).
- text-to-image: [BOS] "<|User|>: " prompt "\\n\\n" "<|Assistant|>:" <begin_of_image>,
  without the system prompt (JanusProcessor, generation_mode="image").
"""
from __future__ import annotations

from PIL import Image

from ...processing import PromptConfig, Processor, TokenIds

USER, ASSISTANT = "<|User|>", "<|Assistant|>"


def janus_system_prompt() -> str:
    from transformers.models.janus.processing_janus import DEFAULT_SYSTEM_PROMPT

    return DEFAULT_SYSTEM_PROMPT


def janus_prompt_config(use_default_system_prompt: bool, add_bos: bool) -> PromptConfig:
    return PromptConfig(
        system=janus_system_prompt() if use_default_system_prompt else "",
        user=USER + ": {content}\n\n", assistant_prefix=ASSISTANT + ":", answer_prefix=" ", turn_end="",
        generation=USER + ": {prompt}\n\n" + ASSISTANT + ":", add_bos=add_bos,
        image_layout="newlines", strip_text=True,
    )


def is_janus_prompt(p: PromptConfig) -> bool:
    """Whether `p` is Janus-Pro's format (with or without the default system prompt)."""
    return any(p == janus_prompt_config(sys_on, p.add_bos) for sys_on in (False, True))


def janus_chat_template(eos_token: str, image_token: str = "<image_placeholder>") -> str:
    """A Jinja chat template that renders conversations as Janus-Pro's does.

    Messages hold `content` as a list of {"type": "text", "text"} / {"type": "image"}
    items (or a plain string). Written for unimm's exports; the tests check its
    output against the rules above and against unimm's own prompts. No whitespace
    control: the template is one line, so every space in it is output.
    """
    return (
        "{% for message in messages %}"
        "{% set role = message['role'] | lower %}"
        "{% set items = [{'type': 'text', 'text': message['content']}] if message['content'] is string"
        " else message['content'] %}"
        # Role prefix. An empty last assistant message without a generation prompt ends at the colon.
        "{% if role == 'user' %}" + USER + ": "
        "{% elif role == 'assistant' %}" + ASSISTANT + ":"
        "{% set open_end = loop.last and not add_generation_prompt and items[0]['type'] == 'text'"
        " and items[0]['text'] == '' %}"
        "{% if not open_end %} {% endif %}"
        "{% else %}{{ message['role'] | capitalize }}: "
        "{% endif %}"
        # Content: images set off by newlines, text stripped at the ends, adjacent texts joined by a space.
        "{% for item in items %}"
        "{% if item['type'] == 'image' %}"
        "{% if not loop.first %}{{ '\\n' }}{% endif %}" + image_token + "{% if not loop.last %}{{ '\\n' }}{% endif %}"
        "{% elif item['type'] == 'text' %}"
        "{% set text = item['text'] %}"
        "{% if loop.first %}{% set text = text.lstrip() %}{% endif %}"
        "{% if loop.last %}{% set text = text.rstrip() %}{% endif %}"
        "{% if not loop.first and items[loop.index0 - 1]['type'] == 'text' %} {% endif %}{{ text }}"
        "{% endif %}"
        "{% endfor %}"
        # Separator: a blank line after a user turn, end-of-sequence after any other.
        "{% if not loop.last or add_generation_prompt %}"
        "{% if role == 'user' %}{{ '\\n\\n' }}{% else %}" + eos_token + "{% endif %}"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}" + ASSISTANT + ":{% endif %}"
    )


# Conversations the conversion checks: unimm turns (question, images, answer) and the
# same conversation as chat-template messages.
def _probes():
    img = {"type": "image"}

    def text(t):
        return {"type": "text", "text": t}

    return [
        ([("Describe the scene.", 0, None)], [{"role": "user", "content": [text("Describe the scene.")]}]),
        ([("What is in the picture?", 1, None)], [{"role": "user", "content": [img, text("What is in the picture?")]}]),
        ([("Compare them.", 2, None)], [{"role": "user", "content": [img, img, text("Compare them.")]}]),
        ([("What is it?", 1, "A red circle."), ("And on the right?", 0, None)],
         [{"role": "user", "content": [img, text("What is it?")]},
          {"role": "assistant", "content": [text("A red circle.")]},
          {"role": "user", "content": [text("And on the right?")]}]),
    ]


GENERATION_PROBE = "a red circle above a blue square"


def reference_chat_ids(processor, messages: list[dict]) -> list[int]:
    """What a JanusProcessor feeds its model for `messages` (text mode, generation prompt added)."""
    n_images = sum(1 for m in messages for c in m["content"] if c["type"] == "image")
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    size = processor.image_processor.size
    images = [Image.new("RGB", (size["width"], size["height"]), (128, 64, 32))] * n_images or None
    return processor(text=text, images=images, generation_mode="text")["input_ids"][0].tolist()


def reference_generation_ids(processor, prompt: str) -> list[int]:
    """What a JanusProcessor feeds `generate(generation_mode="image")` for a text-to-image prompt."""
    messages = [{"role": "user", "content": [{"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    return processor(text=text, generation_mode="image")["input_ids"][0].tolist()


def prompt_mismatches(processor, unimm_processor: Processor) -> list[str]:
    """Conversations for which unimm's ids differ from the Janus processor's (empty: all equal)."""
    bad = []
    for turns, messages in _probes():
        ref = reference_chat_ids(processor, messages)
        ours, _ = unimm_processor.chat_ids(turns)
        if ref != ours:
            bad.append(f"chat {turns!r}: reference {_preview(ref)} vs unimm {_preview(ours)}")
    ref = reference_generation_ids(processor, GENERATION_PROBE)
    ours = unimm_processor.generation_ids(GENERATION_PROBE)
    if ref != ours:
        bad.append(f"text-to-image {GENERATION_PROBE!r}: reference {_preview(ref)} vs unimm {_preview(ours)}")
    return bad


def unimm_processor_for(tokenizer, prompt: PromptConfig, token_ids: TokenIds, num_image_tokens: int) -> Processor:
    """A unimm Processor for prompt ids only (the image settings are not used)."""
    return Processor(tokenizer, prompt, token_ids, image_size=1, image_mean=(0.5,) * 3, image_std=(0.5,) * 3,
                     resize_mode="pad", num_image_tokens=num_image_tokens)


def _preview(ids: list[int], n: int = 24) -> str:
    return str(ids) if len(ids) <= n else f"{ids[:n]}... ({len(ids)} ids)"
