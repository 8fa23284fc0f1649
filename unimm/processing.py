"""Prompts and inputs: turns conversations and captions into token ids and pixels.

A `Processor` holds the text tokenizer, the prompt templates and the encoder's
image transform. It is the one place that knows the text layout of a
sequence; the model only sees ids, pixels and masks.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from .encoders.layouts import SingleLayout
from .images import fit_square, load_image, to_tensor


@dataclass
class PromptConfig:
    # Chat layout: [bos] system, then per turn user.format(content) + assistant_prefix
    # + answer + eos + turn_end. Janus-Pro uses "<|User|>: {content}\n\n" etc.
    system: str = ""
    user: str = "User: {content}\n"
    assistant_prefix: str = "Assistant:"
    # Text between the assistant prefix and the answer (a space for "Assistant: yes").
    answer_prefix: str = " "
    turn_end: str = "\n"
    # Text-to-image prompt, followed by the begin-of-image token.
    generation: str = "{prompt}"
    add_bos: bool = True
    # Where images sit in a user turn. Both put images without an <image> placeholder
    # first and replace placeholders where they stand. "lead": each leading image is
    # followed by a newline. "newlines": every image is set off by a newline from
    # whatever comes before and after it in the turn (transformers' Janus-Pro chat template).
    image_layout: str = "lead"
    # Strip whitespace at the very start and end of a turn's text (questions, answers and
    # the text-to-image prompt), as transformers' Janus-Pro chat template does.
    strip_text: bool = False
    # Bring questions and text-to-image prompts to the form the training text had: lower
    # case (questions: first letter capital) and British spelling ("color" -> "colour").
    # For models trained on a closed vocabulary (the shapes world), whose tokenizer never
    # saw "WHAT" or "color"; a model trained on open text should leave it off.
    normalise: bool = False

    def __post_init__(self):
        if "{content}" not in self.user:
            raise ValueError(f"prompt.user must contain {{content}}, got {self.user!r}")
        if "{prompt}" not in self.generation:
            raise ValueError(f"prompt.generation must contain {{prompt}}, got {self.generation!r}")
        if self.image_layout not in ("lead", "newlines"):
            raise ValueError(f"prompt.image_layout must be 'lead' or 'newlines', got {self.image_layout!r}")


@dataclass
class TokenIds:
    """Token ids the model needs; stored in config.json so loading needs no tokenizer."""

    vocab_size: int
    pad: int
    eos: int
    bos: int | None
    image: int
    boi: int
    eoi: int

    @classmethod
    def from_tokenizer(cls, tok: PreTrainedTokenizerBase, image_token: str, boi_token: str, eoi_token: str):
        ids = tok.convert_tokens_to_ids
        return cls(
            vocab_size=len(tok), pad=tok.pad_token_id, eos=tok.eos_token_id, bos=tok.bos_token_id,
            image=ids(image_token), boi=ids(boi_token), eoi=ids(eoi_token),
        )


class Processor:
    def __init__(self, tokenizer, prompt: PromptConfig, token_ids: TokenIds, image_size: int,
                 image_mean, image_std, resize_mode: str, num_image_tokens: int, min_size: int = 1,
                 layout: SingleLayout | None = None):
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.ids = token_ids
        self.image_size = image_size
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)
        self.resize_mode = resize_mode
        self.min_size = min_size  # "pad": the shorter side's minimum after resizing
        self.num_image_tokens = num_image_tokens  # placeholders per view (projector output count)
        # How a picture becomes views and placeholders: one view, AnyRes tiles or native resolution
        # (encoders/layouts.py; the model's own, so both read images alike).
        self.layout = layout or SingleLayout(None, image_size)
        self.image_token = tokenizer.convert_ids_to_tokens(token_ids.image)
        self.boi_token = tokenizer.convert_ids_to_tokens(token_ids.boi)
        self.eoi_token = tokenizer.convert_ids_to_tokens(token_ids.eoi)

    # -- images -----------------------------------------------------------------
    def pixel_values(self, images) -> torch.Tensor:
        """Images (paths / PIL / arrays) -> (V, 3, h, w) normalised for the encoder: one view per
        image, or the views the model's layout cuts each into (see `prepare`)."""
        return self.prepare(images)[0]

    def whole_values(self, images) -> torch.Tensor:
        """Each picture as one S x S view whatever the layout (B, 3, S, S): what reads a whole
        picture's features at once (an IP-Adapter's reference image)."""
        fill = tuple(int(m * 255) for m in self.image_mean)
        return torch.stack([to_tensor(fit_square(load_image(im), self.image_size, self.resize_mode, fill, self.min_size),
                                      self.image_mean, self.image_std) for im in images])

    def prepare(self, images, frames=None) -> tuple[torch.Tensor, list[list[int]]]:
        """(views (V, 3, h, w) normalised for the encoder, each image's runs of placeholders).

        One view and one run of `num_image_tokens` per image, unless the model's layout cuts
        pictures otherwise (a thumbnail and tiles, or native-resolution cells); chat_ids takes
        the runs. `frames`: per image, whether it is a video frame (read within the model's
        frame budget, encoder.frame_tokens, where it has one)."""
        images = list(images)
        frames = [False] * len(images) if frames is None else list(frames)
        if len(frames) != len(images):
            raise ValueError(f"frames marks {len(frames)} images but {len(images)} were given")
        fill = tuple(int(m * 255) for m in self.image_mean)

        def fit(im):  # the picture whole at the encoder's size
            return fit_square(im, self.image_size, self.resize_mode, fill, self.min_size)

        views, layout = [], []
        for im, frame in zip(images, frames):
            cut, runs = self.layout.views(load_image(im), fit, fill, self.num_image_tokens, frame)
            views += cut
            layout.append(runs)
        return torch.stack([to_tensor(v, self.image_mean, self.image_std) for v in views]), layout

    # -- text -------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        """Token ids of `text`, remembered: a chat turn re-sends the whole conversation, whose
        earlier pieces were tokenised by the turns before."""
        known = self.__dict__.setdefault("_encoded", {})
        ids = known.get(text)
        if ids is None:
            if len(known) >= 4096:
                known.clear()
            ids = known[text] = tuple(self.tokenizer.encode(text, add_special_tokens=False))
        return list(ids)

    def _image_block(self, runs: list[int]) -> str:
        """An image's placeholders: one run, or a tiled image's runs each ended by a newline."""
        if len(runs) == 1:
            return self.boi_token + self.image_token * runs[0] + self.eoi_token
        return self.boi_token + "".join(self.image_token * n + "\n" for n in runs) + self.eoi_token

    def _user_content(self, question: str, num_images: int, layout=None) -> str:
        """Expand <image> placeholders; images without one go first (Janus), laid out per prompt.image_layout."""
        if self.prompt.normalise:
            pieces = question.split(self.image_token)
            first = next((i for i, t in enumerate(pieces) if t.strip()), 0)  # the sentence starts here
            question = self.image_token.join(normalise_text(t, sentence=i == first) for i, t in enumerate(pieces))
        written = question.count(self.image_token)
        if written > num_images:
            raise ValueError(f"the question has {written} {self.image_token} placeholders but {num_images} image(s) were given")
        lead = num_images - written
        items: list[str | None] = [None] * lead  # None: an image; str: text
        for i, text in enumerate(question.split(self.image_token)):
            if i:
                items.append(None)
            if text:
                items.append(text)
        if self.prompt.strip_text and items:
            if items[0] is not None:
                items[0] = items[0].lstrip()
            if items[-1] is not None:
                items[-1] = items[-1].rstrip()
        last, out = len(items) - 1, []
        for i, item in enumerate(items):
            if item is not None:
                out.append(item)
                continue
            runs = next(layout, None) if layout is not None else [self.num_image_tokens]
            if runs is None:
                raise ValueError("the conversation has more images than image layouts were given")
            block = self._image_block(runs)
            if self.prompt.image_layout == "newlines":
                out.append(("\n" if i else "") + block + ("\n" if i < last else ""))
            else:
                out.append(block + ("\n" if i < lead else ""))
        return "".join(out)

    def chat_ids(self, turns: list[tuple[str, int, str | None]], layout: list[list[int]] | None = None
                 ) -> tuple[list[int], list[int]]:
        """Token ids and labels for a conversation.

        turns: (question, number of images in that turn, answer or None). A final
        turn with answer None ends with the assistant prefix, ready to generate.
        layout: each image's runs of placeholders, in order (from `prepare`; needed for
        tiled images), else one run of `num_image_tokens` per image.
        Labels are -100 everywhere except the answers and their end-of-sequence
        token: the next-token loss is on answer text only. Prompt text between two
        answers (turn end, system, user turn, assistant prefix) is tokenised as one
        string, as a reference processor tokenising the whole conversation would.
        """
        p = self.prompt
        ids: list[int] = [self.ids.bos] if p.add_bos and self.ids.bos is not None else []
        labels = [-100] * len(ids)
        pending = p.system  # prompt text not tokenised yet
        layout_iter = iter(layout) if layout is not None else None

        def flush():
            nonlocal pending
            part = self._encode(pending) if pending else []
            ids.extend(part)
            labels.extend([-100] * len(part))
            pending = ""

        for i, (question, n_images, answer) in enumerate(turns):
            pending += p.user.format(content=self._user_content(question, n_images, layout_iter)) + p.assistant_prefix
            if answer is None:
                if i != len(turns) - 1:
                    raise ValueError("only the last turn may be unanswered")
                break
            flush()
            ans = self._encode(p.answer_prefix + (answer.strip() if p.strip_text else answer)) + [self.ids.eos]
            ids.extend(ans)
            labels.extend(ans)
            pending += p.turn_end
        flush()
        return ids, labels

    def generation_ids(self, prompt: str, allow_empty: bool = False) -> list[int]:
        """[bos] prompt <begin_of_image>: the prefix image tokens are sampled after. An empty
        prompt is refused unless `allow_empty` (a reference image then says what to draw)."""
        if not isinstance(prompt, str) or not (prompt.strip() or allow_empty):
            raise ValueError("the prompt is empty; describe the image to generate")
        ids = [self.ids.bos] if self.prompt.add_bos and self.ids.bos is not None else []
        text = prompt.strip() if self.prompt.strip_text else prompt
        text = normalise_text(text, sentence=False) if self.prompt.normalise else text
        return ids + self._encode(self.prompt.generation.format(prompt=text)) + [self.ids.boi]

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


# American spellings of the words a British-spelled training text uses.
_BRITISH = {"color": "colour", "colors": "colours", "colored": "coloured", "gray": "grey", "center": "centre",
            "centered": "centred"}


def normalise_text(text: str, sentence: bool) -> str:
    """Lower case with British spelling; `sentence`: the first letter capital ("What colour ...")."""
    text = re.sub(r"[A-Za-z]+", lambda m: _BRITISH.get(m.group(0).lower(), m.group(0).lower()), text)
    if sentence:
        text = re.sub(r"^(\s*)([a-z])", lambda m: m.group(1) + m.group(2).upper(), text)
    return text


def left_pad_to(x: torch.Tensor, width: int, value: int) -> torch.Tensor:
    """(B, T) left-padded rows -> (B, width), `value` added on the left (width >= T)."""
    return torch.nn.functional.pad(x, (width - x.shape[1], 0), value=value)


def left_pad(rows: list[list[int]], pad_id: int, multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad id lists into (B, T) ids and a (B, T) attention mask, so every row ends together;
    T is the longest row rounded up to a multiple of `multiple`."""
    T = -(-max(len(r) for r in rows) // multiple) * multiple
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, T - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, T - len(r):] = 1
    return ids, mask
