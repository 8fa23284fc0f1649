"""Best-of-N generation judged by the model itself: a unified model reads what it drew.

Each requested image is drawn N times (`generate(..., best_of=N)`) and every candidate is judged
by what the call was given, each judge using the model's own parts or the code that made the
inputs, never a second model:

- the prompt: the log-probability of the prompt as the answer to a description request
  ("Describe the image." -> "a red circle and a blue star") under the understanding path. This
  is the reranking DALL-E did with a separate CLIP, done by the backbone that drew the images;
- a control map: how closely the candidate's own map (made by the code that made the given one,
  `unimm.data.control`) matches it, the cycle-consistency that ControlNet++ trains for;
- a reference picture: the cosine similarity of the candidate's mean SigLIP feature to the
  reference's, the features the IP-Adapter itself reads.

With several judges each ranks the candidates and the ranks are summed (a Borda count, so no
judge's scale outweighs another's). It pays off when the model reads images better than it
draws them; the candidates cost N times the sampling, the judging one forward pass each.
"""
from __future__ import annotations

import numpy as np
import torch

from ..processing import left_pad, normalise_text

__all__ = ["caption_logprobs", "map_agreement", "reference_similarity", "best_in_groups", "vote"]


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


def map_agreement(images, maps: dict) -> torch.Tensor:
    """(N,) float32: minus the mean absolute difference (pixels in 0-1) between each image's own
    control maps and the given ones ({control type: map image of the images' size}), averaged
    over the types; 0 is a perfect match."""
    from ..data.control import control_map

    given = {kind: np.asarray(m.convert("RGB"), np.float32) / 255 for kind, m in maps.items()}
    out = []
    for image in images:
        gaps = []
        for kind, want in given.items():
            own = np.asarray(control_map(image, kind), np.float32) / 255
            if own.shape != want.shape:
                raise ValueError(f"the {kind} map is {want.shape[1]}x{want.shape[0]} px but the image is "
                                 f"{own.shape[1]}x{own.shape[0]}")
            gaps.append(float(np.abs(own - want).mean()))
        out.append(-float(np.mean(gaps)))
    return torch.tensor(out, dtype=torch.float32)


def reference_similarity(model, processor, images, reference: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(N,) float32: the cosine similarity of each image's mean SigLIP feature (`model.encoder`, the
    tower the IP-Adapter reads) to `reference`'s, given as that tower's features (1, tokens, D)."""
    want = torch.nn.functional.normalize(reference.float().mean(1), dim=-1)
    out = []
    for start in range(0, len(images), batch_size):
        pixels = processor.whole_values(images[start:start + batch_size]).to(model.device, model.dtype)
        with torch.inference_mode():
            got = torch.nn.functional.normalize(model.encoder(pixels).float().mean(1), dim=-1)
        out.append((got @ want.to(got.device).T).squeeze(1).cpu())
    return torch.cat(out)


def best_in_groups(scores: torch.Tensor, group: int) -> list[int]:
    """Indices of the highest score in each run of `group` consecutive scores (the first on ties)."""
    if group < 1 or scores.numel() % group:
        raise ValueError(f"{scores.numel()} scores do not split into groups of {group}")
    best = scores.view(-1, group).argmax(1)
    return [g * group + int(b) for g, b in enumerate(best)]


def vote(judges: list[torch.Tensor], group: int) -> list[int]:
    """The winner of each run of `group` consecutive candidates by several judges' scores (higher is
    better): each judge ranks the candidates of a run, the ranks are summed, and the highest sum
    wins; a tie goes to the first judge's better score. One judge is `best_in_groups`."""
    if not judges:
        raise ValueError("no judge to choose candidates by")
    if len(judges) == 1:
        return best_in_groups(judges[0], group)
    if group < 1 or any(j.numel() != judges[0].numel() for j in judges) or judges[0].numel() % group:
        raise ValueError(f"the judges' {[j.numel() for j in judges]} scores do not split into groups of {group}")
    ranks = [j.view(-1, group).argsort(dim=1, stable=True).argsort(dim=1) for j in judges]  # 0 = worst
    total = sum(ranks) * group + ranks[0]
    return [g * group + int(b) for g, b in enumerate(total.argmax(1))]
