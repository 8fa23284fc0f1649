"""Best-of-N generation judged by the model itself: a unified model reads what it drew.

Each requested image is drawn N times (`generate(..., best_of=N)`); the model's own
understanding path then scores every candidate by the log-probability of the prompt as the
answer to a description request ("Describe the image." -> "a red circle and a blue star"),
and the candidate it describes best is kept. This is the reranking DALL-E did with a
separate CLIP, done here by the backbone that drew the images, so it needs no second model
and works for every generation family. It pays off when the model reads images better than it
draws them; the candidates cost N times the sampling, the scoring one forward pass each.
"""
from __future__ import annotations

import torch

from ..processing import left_pad, normalise_text

__all__ = ["caption_logprobs", "best_in_groups"]


def caption_logprobs(model, processor, images, captions, question: str, batch_size: int) -> torch.Tensor:
    """(N,) float32: log p(caption | image, question) under `model`'s understanding path, for each
    image and its caption (summed over the caption's tokens and the end-of-answer token)."""
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    normalise = processor.prompt.normalise
    out = []
    for start in range(0, len(images), batch_size):
        pictures = images[start:start + batch_size]
        pixels, layout = processor.prepare(pictures)
        rows, labels = [], []
        for caption, runs in zip(captions[start:start + batch_size], layout):
            caption = normalise_text(caption, sentence=False) if normalise else caption
            ids, answer = processor.chat_ids([(question, 1, caption)], [runs])
            rows.append(ids)
            labels.append(answer)
        ids, mask = left_pad(rows, model.token_ids.pad)
        width = ids.shape[1]
        targets = torch.tensor([[-100] * (width - len(a)) + a for a in labels])
        device = model.device
        with torch.inference_mode():
            scores = model.answer_logprobs(ids.to(device), mask.to(device), targets.to(device),
                                           pixels.to(device, model.dtype))
        out.append(scores.float().cpu())
    return torch.cat(out)


def best_in_groups(scores: torch.Tensor, group: int) -> list[int]:
    """Indices of the highest score in each run of `group` consecutive scores (the first on ties)."""
    if group < 1 or scores.numel() % group:
        raise ValueError(f"{scores.numel()} scores do not split into groups of {group}")
    best = scores.view(-1, group).argmax(1)
    return [g * group + int(b) for g, b in enumerate(best)]
