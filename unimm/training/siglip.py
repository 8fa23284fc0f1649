"""Pretraining a small SigLIP (transformers `SiglipModel`) with the sigmoid contrastive loss.

The understanding encoder of the default model starts here: image-caption
pairs from the shapes world (or a caption JSONL), the pairwise sigmoid loss of
SigLIP (arXiv:2303.15343) that `SiglipModel(return_loss=True)` computes, and
unimm's own byte-level BPE for the text tower; optionally hard negatives (one
word of a caption swapped), caption-token classification (`tagging_weight`) and
its region-level form on every patch (`region_tagging_weight`).
The result is a standard
SigLIP checkpoint directory that a model config uses as
`encoder: {pretrained: DIR}` (its vision tower).
"""
from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import from_dict, to_dict
from ..folders import atomic_directory, check_destination
from .outputs import claim_output_dir


@dataclass
class SiglipTrainConfig:
    vision: dict = field(default_factory=lambda: {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 4,
                                                  "num_attention_heads": 4, "image_size": 64, "patch_size": 8})
    text: dict = field(default_factory=lambda: {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
                                                "num_attention_heads": 4})
    text_length: int = 24  # captions are padded/truncated to this many tokens
    vocab_size: int = 512  # the BPE trained on the shapes corpus
    data: dict = field(default_factory=lambda: {"format": "shapes", "task": "generation", "num_samples": 20000, "seed": 11})
    output_dir: str = "runs/siglip"
    steps: int = 2000
    batch_size: int = 64
    lr: float = 5e-4
    warmup_steps: int = 100
    log_every: int = 50
    seed: int = 0
    # Groups of interchangeable words or phrases, e.g. the shapes and the "on the left"-style
    # places: every caption gets a copy with one of its words swapped for another of its group,
    # an extra negative for its image. Contrast with captions that differ in one attribute is
    # what makes the towers keep that attribute (plain batches rarely share all the others).
    hard_negatives: list = field(default_factory=list)
    # Caption-token classification beside the contrastive loss (SuperClass, arXiv:2411.03313): a
    # linear head on the pooled image embedding predicts the caption's bag of text tokens (softmax
    # cross-entropy against the IDF-weighted multi-hot target). Every image gets a dense, direct
    # signal for every word its caption names, which a small tower learns far faster from than
    # from in-batch contrast (shape: BENCHMARKS.md). The head is dropped at save: the checkpoint
    # stays a plain SiglipModel. 0 turns it off.
    tagging_weight: float = 0.0
    # The same classification for every patch (region-level pretraining, as LocCa or RegionCLIP
    # ground words in places): a linear head on each patch of the last layer predicts the tokens
    # naming the region it lies in (records' "regions": [{"box": [x0, y0, x1, y1] in 0-1, "text"}];
    # the shapes world gives each object's box and "a small red circle"). Patches outside every
    # region carry no loss. A pooled tag says *what* is in the image; this says *where*, so a
    # patch keeps its own object's attributes instead of a mix of the scene's (the binding that
    # "what colour is the triangle?" in a two-object scene needs: BENCHMARKS.md). 0 turns it off.
    region_tagging_weight: float = 0.0
    # A checkpoint this trainer saved (its `model` folder) to continue from: its SigLIP and its
    # tokenizer are loaded, `vision`, `text` and `vocab_size` are then not read. None: from scratch.
    init_from: str | None = None

    def __post_init__(self):
        if not isinstance(self.tagging_weight, (int, float)) or not math.isfinite(self.tagging_weight) \
                or self.tagging_weight < 0:
            raise ValueError(f"tagging_weight must be a finite number >= 0, got {self.tagging_weight!r}")
        if not isinstance(self.region_tagging_weight, (int, float)) or not math.isfinite(self.region_tagging_weight) \
                or self.region_tagging_weight < 0:
            raise ValueError(f"region_tagging_weight must be a finite number >= 0, got {self.region_tagging_weight!r}")
        if not isinstance(self.hard_negatives, list) or not all(
                isinstance(g, list) and len(g) >= 2 and all(isinstance(w, str) and w.strip() for w in g)
                for g in self.hard_negatives):
            raise ValueError("hard_negatives must be a list of groups, each a list of two or more words or phrases, "
                             f"got {self.hard_negatives!r}")


def _ids(tok, texts: list[str], length: int) -> torch.Tensor:
    """Captions -> (N, length) token ids, padded or cut to the text tower's length."""
    return tok(texts, padding="max_length", truncation=True, max_length=length, return_tensors="pt")["input_ids"]


def _batch(source, idx, tok, size: int, length: int, processor_mean=(0.5, 0.5, 0.5), with_captions: bool = False,
           with_regions: bool = False):
    from ..images import fit_square, to_tensor

    images, texts, regions = [], [], []
    for i in idx:
        rec = source.get(i)
        if rec is None:
            continue
        # "resize" stretches the whole image, so boxes in 0-1 image coordinates stay valid
        images.append(to_tensor(fit_square(rec["image"], size, "resize", (127, 127, 127)), processor_mean, (0.5, 0.5, 0.5)))
        texts.append(rec["caption"])
        if with_regions:
            if "regions" not in rec:
                raise ValueError(f"region_tagging_weight > 0 needs records with 'regions' (boxes and their text); "
                                 f"{source.name} record {i} has none")
            regions.append(rec["regions"])
    out = (torch.stack(images), _ids(tok, texts, length))
    return out + ((texts,) if with_captions else ()) + ((regions,) if with_regions else ())


def _swap_patterns(groups):
    """One regex per group, matching any member as whole words (plural "s"/"es" kept as a suffix)."""
    return [(re.compile(r"\b(" + "|".join(re.escape(w) for w in sorted(g, key=len, reverse=True)) + r")(e?s?)\b"), g)
            for g in groups]


def hard_negative(caption: str, patterns, rng: random.Random) -> str | None:
    """`caption` with one matched word swapped for another member of its group, or None if none matches."""
    hits = [(m, g) for pat, g in patterns for m in pat.finditer(caption)]
    if not hits:
        return None
    m, group = hits[rng.randrange(len(hits))]
    new = rng.choice([w for w in group if w != m.group(1)])
    return caption[:m.start()] + new + m.group(2) + caption[m.end():]


def sigmoid_loss(logits_per_image: torch.Tensor) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss for (B, B + extra) logits: text i is image i's only match."""
    B = logits_per_image.shape[0]
    labels = -torch.ones_like(logits_per_image)
    labels[torch.arange(B), torch.arange(B)] = 1.0
    return -F.logsigmoid(labels * logits_per_image).sum(-1).mean()


def tag_targets(ids: torch.Tensor, idf: torch.Tensor, special: torch.Tensor) -> torch.Tensor:
    """(B, L) caption ids -> (B, V) targets: each distinct non-special token weighted by its IDF, rows summing to 1."""
    hot = torch.zeros(ids.shape[0], idf.numel()).scatter_(1, ids, 1.0)
    hot[:, special] = 0.0
    weighted = hot * idf
    return weighted / weighted.sum(-1, keepdim=True).clamp_min(1e-12)


def patch_coverage(box, grid: int) -> torch.Tensor:
    """(grid * grid,) share of each patch (row-major) that the 0-1 box [x0, y0, x1, y1] covers."""
    x0, y0, x1, y1 = (float(v) for v in box)
    edges = torch.arange(grid + 1, dtype=torch.float32) / grid
    lo, hi = edges[:-1], edges[1:]
    cx = ((torch.clamp(torch.tensor(x1), max=hi) - torch.clamp(torch.tensor(x0), min=lo)).clamp_min(0)) * grid
    cy = ((torch.clamp(torch.tensor(y1), max=hi) - torch.clamp(torch.tensor(y0), min=lo)).clamp_min(0)) * grid
    return (cy[:, None] * cx[None, :]).flatten()


def region_targets(regions: list[list[dict]], grid: int, tok, length: int, idf: torch.Tensor, special: torch.Tensor,
                   min_cover: float = 0.25) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-patch tag targets (B, grid * grid, V) and which patches have one (B, grid * grid).

    A patch takes the region covering most of it, if that covers at least `min_cover` of it;
    the patch holding a region's centre always takes that region (a small object still gets one).
    """
    P, V = grid * grid, idf.numel()
    targets, mask = torch.zeros(len(regions), P, V), torch.zeros(len(regions), P, dtype=torch.bool)
    texts = [r["text"] for regs in regions for r in regs]
    if not texts:
        return targets, mask
    all_tags = tag_targets(_ids(tok, texts, length), idf, special)  # (regions in the batch, V): one tokeniser call
    start = 0
    for b, regs in enumerate(regions):
        if not regs:
            continue
        tags, start = all_tags[start:start + len(regs)], start + len(regs)  # (R, V)
        cover = torch.stack([patch_coverage(r["box"], grid) for r in regs])  # (R, P)
        owner = cover.argmax(0)
        has = cover.max(0).values >= min_cover
        for k, r in enumerate(regs):
            x0, y0, x1, y1 = r["box"]
            col = min(max(int((x0 + x1) / 2 * grid), 0), grid - 1)
            row = min(max(int((y0 + y1) / 2 * grid), 0), grid - 1)
            owner[row * grid + col], has[row * grid + col] = k, True
        targets[b] = tags[owner] * has[:, None]
        mask[b] = has
    return targets, mask


def caption_idf(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Smoothed inverse document frequency of each token over (N, L) caption ids: log((1 + N) / (1 + df)) + 1."""
    hot = torch.zeros(ids.shape[0], vocab_size).scatter_(1, ids, 1.0)
    return torch.log((1 + ids.shape[0]) / (1 + hot.sum(0))) + 1


def tagging_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy of (B, V) tag logits against (B, V) soft targets."""
    return -(targets * F.log_softmax(logits, -1)).sum(-1).mean()


def tag_recall(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Share of each caption's tagged tokens found among the head's top-k, k = how many it has."""
    hits, total = 0, 0
    for row, target in zip(logits, targets):
        want = target.nonzero().flatten()
        top = row.topk(len(want)).indices
        hits += int(torch.isin(want, top).sum())
        total += len(want)
    return hits / max(total, 1)


def retrieval_accuracy(model, images, ids) -> float:
    """Share of images whose best-scoring caption in the batch is their own."""
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=images)
    return float((out.logits_per_image.argmax(-1) == torch.arange(len(ids))).float().mean())


def hard_negative_accuracy(model, images, ids, negative_ids) -> float:
    """Share of images that score their own caption above its one-word-swapped copy."""
    with torch.no_grad():
        out = model(input_ids=torch.cat([ids, negative_ids]), pixel_values=images)
    B = len(ids)
    own = out.logits_per_image[torch.arange(B), torch.arange(B)]
    swapped = out.logits_per_image[torch.arange(B), B + torch.arange(B)]
    return float((own > swapped).float().mean())


def _fresh_model(cfg: SiglipTrainConfig):
    from transformers import SiglipConfig, SiglipModel

    from ..data.corpus import shapes_corpus
    from ..tokenizers.text import train_bpe_tokenizer

    tok = train_bpe_tokenizer(shapes_corpus(), cfg.vocab_size)
    model = SiglipModel(SiglipConfig(
        vision_config=cfg.vision,
        text_config={**cfg.text, "vocab_size": len(tok), "max_position_embeddings": cfg.text_length,
                     "pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id, "bos_token_id": tok.bos_token_id},
    ))
    # The paper's initialisation (t' = log 10, b = -10): a fresh SiglipModel starts both at 0,
    # where the sigmoid loss barely separates pairs and retrieval stays at chance.
    with torch.no_grad():
        model.logit_scale.fill_(math.log(10.0))
        model.logit_bias.fill_(-10.0)
    return model, tok


def _load_checkpoint(path: str):
    from transformers import PreTrainedTokenizerFast, SiglipModel

    folder = Path(path)
    if not (folder / "config.json").is_file() or not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"init_from {path!r} is not a checkpoint of this trainer (a folder with config.json, "
                                "model.safetensors and tokenizer.json: its output_dir/model)")
    return SiglipModel.from_pretrained(folder, use_safetensors=True), PreTrainedTokenizerFast.from_pretrained(folder)


def train_siglip(cfg: SiglipTrainConfig, progress: bool = True, overwrite: bool = False) -> dict:
    from tqdm.auto import tqdm

    from ..data.formats import build_source

    torch.manual_seed(cfg.seed)
    if cfg.init_from is not None:
        model, tok = _load_checkpoint(cfg.init_from)
    else:
        model, tok = _fresh_model(cfg)
    source = build_source(cfg.data)
    size = model.config.vision_config.image_size
    g = torch.Generator().manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    patterns = _swap_patterns(cfg.hard_negatives)
    held_out = range(len(source) - 256, len(source))  # never trained on
    eval_images, eval_ids, eval_captions, *eval_regions = _batch(
        source, list(held_out)[: cfg.batch_size], tok, size, cfg.text_length, with_captions=True,
        with_regions=cfg.region_tagging_weight > 0)
    eval_negatives = None
    if patterns:  # each held-out image's caption against its own swapped copy
        eval_rng = random.Random(cfg.seed + 1)
        swapped = [hard_negative(c, patterns, eval_rng) or c for c in eval_captions]
        eval_negatives = _ids(tok, swapped, cfg.text_length)
    params = list(model.parameters())
    tagger = region_tagger = region_tags = None
    regions = cfg.region_tagging_weight > 0
    grid = size // model.config.vision_config.patch_size
    if cfg.tagging_weight > 0:
        tagger = torch.nn.Linear(model.config.vision_config.hidden_size, len(tok))
        params += list(tagger.parameters())
    if regions:
        region_tagger = torch.nn.Linear(model.config.vision_config.hidden_size, len(tok))
        params += list(region_tagger.parameters())
    if tagger is not None or regions:
        # Frequencies from the training captions (never the held-out ones); special tokens are not tags.
        captions = [rec["caption"] for i in range(min(2048, len(source) - 256)) if (rec := source.get(i)) is not None]
        idf = caption_idf(_ids(tok, captions, cfg.text_length), len(tok))
        special = torch.tensor(sorted({t for t in (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id,
                                                   tok.unk_token_id) if t is not None}), dtype=torch.long)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup_steps))
    out = Path(cfg.output_dir)
    check_destination(out / "model", overwrite)  # refused now, not after the run
    claim_output_dir(out, to_dict(cfg), overwrite=overwrite)
    log = (out / "metrics.jsonl").open("w")
    metrics = {}
    model.train()
    for step in tqdm(range(1, cfg.steps + 1), desc="siglip", disable=not progress):
        idx = torch.randint(0, len(source) - 256, (cfg.batch_size,), generator=g).tolist()
        images, ids, captions, *batch_regions = _batch(source, idx, tok, size, cfg.text_length, with_captions=True,
                                                       with_regions=regions)
        if patterns:
            negatives = [n for c in captions if (n := hard_negative(c, patterns, rng)) is not None]
            if negatives:
                ids = torch.cat([ids, _ids(tok, negatives, cfg.text_length)])
        result = model(input_ids=ids, pixel_values=images)
        loss = sigmoid_loss(result.logits_per_image)
        if tagger is not None:
            tags = tagging_loss(tagger(result.vision_model_output.pooler_output),
                                tag_targets(ids[: len(images)], idf, special))
            loss = loss + cfg.tagging_weight * tags
        if regions:
            targets, has = region_targets(batch_regions[0], grid, tok, cfg.text_length, idf, special)
            region_tags = None
            if has.any():  # (a batch of images without regions has no region loss)
                region_tags = tagging_loss(region_tagger(result.vision_model_output.last_hidden_state)[has],
                                           targets[has])
                loss = loss + cfg.region_tagging_weight * region_tags
        if not torch.isfinite(loss):
            raise FloatingPointError(f"SigLIP loss became {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % cfg.log_every == 0 or step == cfg.steps:
            model.eval()
            metrics = {"step": step, "loss": loss.item(), "retrieval_acc": retrieval_accuracy(model, eval_images, eval_ids)}
            if eval_negatives is not None:
                metrics["hard_negative_acc"] = hard_negative_accuracy(model, eval_images, eval_ids, eval_negatives)
            if tagger is not None:
                with torch.no_grad():
                    pooled = model.vision_model(pixel_values=eval_images).pooler_output
                    metrics["tagging_loss"] = tags.item()
                    metrics["tag_recall"] = tag_recall(tagger(pooled), tag_targets(eval_ids, idf, special))
            if regions:
                with torch.no_grad():
                    patches = model.vision_model(pixel_values=eval_images).last_hidden_state
                    targets, has = region_targets(eval_regions[0], grid, tok, cfg.text_length, idf, special)
                    if has.any():
                        metrics["region_tag_recall"] = tag_recall(region_tagger(patches)[has], targets[has])
                if region_tags is not None:
                    metrics["region_tagging_loss"] = region_tags.item()
            model.train()
            log.write(json.dumps(metrics) + "\n")
            log.flush()
    log.close()
    with atomic_directory(out / "model", overwrite=overwrite, kind="siglip") as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return metrics


def load_siglip_config(path_or_dict, overrides=None) -> SiglipTrainConfig:
    from ..config import apply_overrides, read_config_file

    data = path_or_dict if isinstance(path_or_dict, dict) else read_config_file(path_or_dict)
    return from_dict(SiglipTrainConfig, apply_overrides(data, overrides or []), "SigLIP training config")
