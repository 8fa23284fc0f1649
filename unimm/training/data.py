"""The training stream: sources mixed by ratio, tokenised, collated into task batches.

Sample i of the stream is a pure function of (seed, i): which source it comes
from, which item, and whether its caption is dropped for classifier-free
guidance. So a resumed run that skips the first n samples sees exactly what an
uninterrupted run would have seen, on any number of processes.
"""
from __future__ import annotations

import hashlib
import random
import warnings
from collections import Counter

import torch
from torch.utils.data import Dataset

from ..processing import Processor, left_pad

MAX_TRIES = 16  # bad items in a row before giving up on a source


def index_rng(seed: int, i: int) -> random.Random:
    digest = hashlib.blake2b(f"{seed}/{i}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "little"))


class TrainingDataset(Dataset):
    def __init__(self, sources: dict, ratios: dict, processor: Processor, gen_transform, length: int,
                 seed: int = 0, prompt_dropout: float = 0.0, max_positions: int | None = None,
                 num_gen_tokens: int = 0, caches: dict | None = None, gen_size: int | None = None,
                 contrast_captions: bool = False, contrast_questions: bool = False):
        self.names = [n for n in sources if ratios[n] > 0]
        self.sources = sources
        # name -> TargetCache: generation items served with precomputed targets, not images
        self.caches = caches or {}
        self.weights = [float(ratios[n]) for n in self.names]
        # gen_transform: the image tokenizer's own (image -> tensor), e.g. model.image_tokenizer.transform
        self.processor, self.gen_transform, self.gen_size = processor, gen_transform, gen_size
        self.length, self.seed, self.prompt_dropout = length, seed, prompt_dropout
        self.max_positions, self.num_gen_tokens = max_positions, num_gen_tokens
        # prompt_contrast: tokenise generation records' swapped captions, understanding records' swapped questions
        self.contrast_captions, self.contrast_questions = contrast_captions, contrast_questions
        self.skipped: Counter = Counter()  # reasons found while tokenising (too long, ...)
        for n in self.names:
            if len(sources[n]) == 0:
                raise ValueError(f"data source {n!r} ({sources[n].name}) is empty")

    def __len__(self) -> int:
        return self.length

    def skip_counts(self) -> dict[str, int]:
        """All skipped items so far, by source and reason."""
        out = {f"{n}: {r}": c for n in self.names for r, c in self.sources[n].skipped.items()}
        out.update({f"tokenising: {r}": c for r, c in self.skipped.items()})
        return out

    def __getitem__(self, i: int) -> dict:
        rng = index_rng(self.seed, i)
        name = rng.choices(self.names, self.weights)[0]
        source = self.sources[name]
        # What this item skipped travels with the sample: DataLoader workers hold their own
        # copies of the sources, so counters bumped there never reach the main process.
        before = self._counts(name)
        lookup = self.caches[name].get if name in self.caches else source.get
        for _ in range(MAX_TRIES):
            record = lookup(rng.randrange(len(source)))
            sample = self._encode(record, rng) if record is not None else None
            if sample is not None:
                sample["skipped"] = self._counts(name) - before
                return sample
        raise RuntimeError(f"{MAX_TRIES} unusable items in a row from data source {name!r} ({source.name}): "
                           f"{dict(source.skipped)}; check the data")

    def _counts(self, name: str) -> Counter:
        return Counter({**{f"{name}: {r}": c for r, c in self.sources[name].skipped.items()},
                        **{f"tokenising: {r}": c for r, c in self.skipped.items()}})

    # -- per task -----------------------------------------------------------------
    def _too_long(self, n: int) -> bool:
        if self.max_positions is not None and n > self.max_positions:
            self.skipped["longer than the context"] += 1
            return True
        return False

    def _encode(self, record: dict, rng: random.Random) -> dict | None:
        p = self.processor
        task = record["task"]
        if task == "generation":
            caption = record["caption"]
            ids = p.generation_ids(caption, allow_empty="reference" in record)
            if self._too_long(len(ids) + self.num_gen_tokens):
                return None
            control = {}
            if record.get("control"):  # ControlNet maps, made as generate() makes them from a picture
                from ..data.control import map_for_model

                control = {k: self.gen_transform(map_for_model(record["image"], k, self.gen_size))
                           for k in record["control"]}
            # A reference picture for an IP-Adapter, prepared as the encoder reads any image.
            reference = p.whole_values([record["reference"]])[0] if "reference" in record else None
            drop = rng.random() < self.prompt_dropout
            sample = {"task": "generation", "prompt_ids": ids, "drop": drop, "control": control,
                      "reference": reference}
            if "targets" in record:  # from a TargetCache: the frozen tokenizer already ran
                sample["targets"] = record["targets"]
                if "control_targets" in record:  # and encoded the maps too
                    sample["control_targets"] = record["control_targets"]
            else:
                sample["image"] = self.gen_transform(record["image"])
            if self.contrast_captions and not drop and record.get("swapped_caption"):
                swapped = p.generation_ids(record["swapped_caption"])
                if not self._too_long(len(swapped) + self.num_gen_tokens):
                    sample["swapped_ids"] = swapped
            return sample
        if task == "text":
            ids = ([p.ids.bos] if p.ids.bos is not None else []) + p.tokenizer.encode(
                record["text"], add_special_tokens=False) + [p.ids.eos]
            if self._too_long(len(ids)):
                return None
            return {"task": "understanding", "input_ids": ids, "labels": ids, "pixel_values": None}
        frames = [bool(record.get("frames"))] * len(record["images"])  # a clip's frames: the model's frame budget
        pixels, layout = p.prepare(record["images"], frames) if record["images"] else (None, None)
        if task == "preference":  # one question, answered twice: chosen and rejected
            rows = [self._chat_ids([(record["question"], answer)], len(record["images"]), layout) for answer in
                    (record["chosen"], record["rejected"])]
            if any(self._too_long(len(ids)) for ids, _ in rows):
                return None
            (chosen, chosen_labels), (rejected, rejected_labels) = rows
            return {"task": "preference", "chosen_ids": chosen, "chosen_labels": chosen_labels,
                    "rejected_ids": rejected, "rejected_labels": rejected_labels, "pixel_values": pixels}
        ids, labels = self._chat_ids(record["turns"], len(record["images"]), layout)
        if self._too_long(len(ids)):
            return None
        sample = {"task": "understanding", "input_ids": ids, "labels": labels, "pixel_values": pixels}
        if record.get("ground") is not None and len(record["images"]) == 1:  # the asked-about object's box
            sample["ground"] = record["ground"]
            at = self._word_position(ids, labels, record.get("ground_word"))
            if at is not None:  # where the question names it
                sample["ground_at"] = at
        if self.contrast_questions and record.get("swapped_question") and len(record["turns"]) == 1:
            swapped = self._chat_ids([(record["swapped_question"], record["turns"][0][1])], len(record["images"]),
                                     layout)
            if not self._too_long(len(swapped[0])):
                sample["swapped_ids"], sample["swapped_labels"] = swapped
        return sample

    def _word_position(self, ids: list[int], labels: list[int], word: str | None) -> int | None:
        """The last position before the first answer token that holds `word` as one token, or None."""
        if word is None:
            return None
        token = self.processor.tokenizer.encode(" " + word, add_special_tokens=False)
        end = next((i for i, t in enumerate(labels) if t != -100), len(ids))
        if len(token) != 1:
            return None
        return next((i for i in range(end - 1, -1, -1) if ids[i] == token[0]), None)

    def _chat_ids(self, turns: list[tuple[str, str]], n_images: int, layout) -> tuple[list[int], list[int]]:
        p = self.processor
        # LLaVA data marks images with "<image>"; map it to this model's placeholder.
        turns_text = [(q.replace("<image>", p.image_token), a) for q, a in turns]
        counts = [q.count(p.image_token) for q, _ in turns_text]
        if sum(counts) == 0 and n_images:
            counts[0] = n_images  # no placeholders: images go first in the first turn
        return p.chat_ids([(q, c, a) for (q, a), c in zip(turns_text, counts)], layout)


class Collator:
    """List of samples -> {"und", "gen", "pref", "und_contrast" (each a batch or None), "n_samples", "n_tokens"}.

    With `length_buckets` k > 1, "und" is a list of up to k chat batches, its rows grouped by
    length so that each pads to its own longest row (`length_groups`); the model's loss over
    the list is the mean over all their answer tokens, as over one batch.
    """

    def __init__(self, pad_id: int, uncond, length_buckets: int = 1, grounding: str | None = None,
                 pad_multiple: int = 1):
        self.pad_id, self.uncond = pad_id, uncond  # uncond: ids -> unconditional ids (model's rule)
        self.length_buckets, self.pad_multiple = length_buckets, pad_multiple
        # "answer" / "word" / "both": chat batches carry "ground" (B, 4), each row's box (NaN for
        # none); with "word" also "ground_at" (B,), the position of the question's word naming the
        # object (-1 for none, and those rows' boxes are NaN); with "both" "ground_at" (B, 2), that
        # position and the one predicting the answer
        self.grounding = grounding

    def __call__(self, samples: list[dict]) -> dict:
        und = [s for s in samples if s["task"] == "understanding"]
        gen = [s for s in samples if s["task"] == "generation"]
        pref = [s for s in samples if s["task"] == "preference"]
        out = {"und": None, "gen": None, "pref": None, "und_contrast": None, "n_samples": len(samples), "n_tokens": 0,
               "skipped": dict(sum((s.get("skipped", Counter()) for s in samples), Counter()))}
        if und:
            groups = length_groups([len(s["input_ids"]) for s in und], self.length_buckets)
            chats = [self._chat_batch([und[i]["input_ids"] for i in g], [und[i]["labels"] for i in g],
                                      [und[i]["pixel_values"] for i in g]) for g in groups]
            for chat, g in zip(chats, groups):
                if self.grounding in ("word", "both"):  # only rows whose question names the object in one word
                    width = chat["input_ids"].shape[1]  # positions move right by each row's padding
                    at = [width - len(und[i]["input_ids"]) + und[i]["ground_at"] if "ground_at" in und[i] else -1
                          for i in g]
                    boxes = [und[i]["ground"] if a >= 0 else None for i, a in zip(g, at)]
                    chat["ground_at"] = torch.tensor(at)
                    if self.grounding == "both":  # and the position predicting the answer's first token
                        first = (chat["labels"] != -100).float().argmax(1) - 1
                        chat["ground_at"] = torch.stack([chat["ground_at"], first], 1)
                else:
                    boxes = [und[i].get("ground") for i in g]
                if self.grounding and any(b is not None for b in boxes):
                    chat["ground"] = torch.tensor([b if b is not None else [float("nan")] * 4 for b in boxes])
                else:
                    chat.pop("ground_at", None)
            out["und"] = chats[0] if self.length_buckets == 1 else chats
            out["n_tokens"] += sum(int(c["attention_mask"].sum()) for c in chats)
        contrasted = [s for s in und if s.get("swapped_ids")]
        if contrasted:  # prompt_contrast: rows 0..S-1 the questions, S..2S-1 the swapped ones, same answers
            out["und_contrast"] = self._chat_batch(
                [s["input_ids"] for s in contrasted] + [s["swapped_ids"] for s in contrasted],
                [s["labels"] for s in contrasted] + [s["swapped_labels"] for s in contrasted],
                [s["pixel_values"] for s in contrasted] * 2)
            out["n_tokens"] += int(out["und_contrast"]["attention_mask"].sum())
        if pref:  # rows 0..P-1 the chosen answers, P..2P-1 the rejected ones, each with its images
            out["pref"] = self._chat_batch([s["chosen_ids"] for s in pref] + [s["rejected_ids"] for s in pref],
                                           [s["chosen_labels"] for s in pref] + [s["rejected_labels"] for s in pref],
                                           [s["pixel_values"] for s in pref] * 2)
            out["n_tokens"] += int(out["pref"]["attention_mask"].sum())
        if gen:
            rows = [self.uncond(s["prompt_ids"]) if s["drop"] else s["prompt_ids"] for s in gen]
            ids, mask = left_pad(rows, self.pad_id, self.pad_multiple)
            out["gen"] = {"prompt_ids": ids, "prompt_mask": mask}
            contrasted = [i for i, s in enumerate(gen) if s.get("swapped_ids")]
            if contrasted:  # prompt_contrast: rows with a swapped caption, and those captions
                swapped, swapped_mask = left_pad([gen[i]["swapped_ids"] for i in contrasted], self.pad_id,
                                                         self.pad_multiple)
                out["gen"].update(swapped_ids=swapped, swapped_mask=swapped_mask,
                                  swapped_rows=torch.tensor(contrasted))
            if all("targets" in s for s in gen):
                out["gen"]["targets"] = torch.stack([s["targets"] for s in gen])
            else:
                out["gen"]["images"] = torch.stack([s["image"] for s in gen])
            kinds = {tuple(sorted(s.get("control") or s.get("control_targets") or {})) for s in gen}
            if len(kinds) > 1:
                raise ValueError(f"a batch mixes generation items with different control maps {sorted(kinds)}: "
                                 "give every generation source the same `control`")
            if kinds and next(iter(kinds)):
                if all("control_targets" in s for s in gen):  # encoded once (data.cache_dir)
                    out["gen"]["control"] = {k: torch.stack([s["control_targets"][k] for s in gen])
                                             for k in next(iter(kinds))}
                else:
                    out["gen"]["control_images"] = {k: torch.stack([s["control"][k] for s in gen])
                                                    for k in next(iter(kinds))}
            with_reference = {s.get("reference") is not None for s in gen}
            if len(with_reference) > 1:
                raise ValueError("a batch mixes generation items with and without reference images: "
                                 "give every generation source `reference` or none")
            if with_reference == {True}:
                out["gen"]["reference_images"] = torch.stack([s["reference"] for s in gen])
            out["n_tokens"] += int(mask.sum())  # the trainer adds the image tokens, which it knows
        return out


    def _chat_batch(self, ids: list, labels: list, pixels: list) -> dict:
        ids, mask = left_pad(ids, self.pad_id, self.pad_multiple)
        labels, _ = left_pad(labels, -100, self.pad_multiple)
        # A row's first token is never predicted: left-padded, it sits after the padding, where
        # nothing real precedes it (text rows, whose labels are their ids, would otherwise train
        # the last pad position to predict BOS, and a row's loss would depend on its batch).
        labels[(mask.cumsum(1) == 1) & (mask == 1)] = -100
        pixels = [x for x in pixels if x is not None]
        return {"input_ids": ids, "attention_mask": mask, "labels": labels,
                "pixel_values": torch.cat(pixels) if pixels else None}


def length_groups(lengths: list[int], k: int) -> list[list[int]]:
    """Indices of `lengths` in at most `k` groups of neighbouring lengths that minimise the padded
    total (each group padded to its longest); one group when k is 1, in the given order."""
    if k == 1 or len(lengths) <= 1:
        return [list(range(len(lengths)))]
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n, inf = len(order), float("inf")
    # cost[j][m]: least padded total of the first m sorted rows in j groups; cut[j][m] the last group's start
    cost = [[0] + [inf] * n] + [[inf] * (n + 1) for _ in range(k)]
    cut = [[0] * (n + 1) for _ in range(k + 1)]
    for j in range(1, k + 1):
        for m in range(1, n + 1):
            for s in range(j - 1, m):
                c = cost[j - 1][s] + lengths[order[m - 1]] * (m - s)
                if c < cost[j][m]:
                    cost[j][m], cut[j][m] = c, s
    j = min(range(1, k + 1), key=lambda j: (cost[j][n], j))  # fewest groups among the cheapest
    groups, m = [], n
    while j:
        s = cut[j][m]
        groups.append(order[s:m])
        m, j = s, j - 1
    return groups[::-1]


def warn_skipped(counts: dict[str, int]) -> None:
    """One warning listing the unusable items of a run, by source and reason."""
    if counts:
        warnings.warn("skipped unusable training items: " + ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())))
