"""Binding probes: does an image token hold its own object's attributes, or the scene's?

probes.py asks whether shape and position survive along the understanding path on one-object
scenes. A two-object question ("What colour is the triangle?") needs more: the token where the
triangle lies must say "triangle" *and* its colour, and not the other object's. This script
renders two-object scenes (the shapes world's "pair" kind: two objects differing in both colour
and shape), reads each encoder layer (and, for a unimm model, the projector's output), and fits
linear probes on the token(s) at object A's centroid for

  own:   A's shape and colour  (high = the token knows its object)
  other: B's shape and colour  (high = the token also carries the other object: a bag of the scene)

A tower that binds has high "own" and "other" near chance (1/6 shapes, 1/7 colours).

The last column asks the question itself of the tokens: a single attention head whose query is
a learned embedding of a shape word reads all tokens and answers the colour of the object with
that shape (A's or B's, at random), trained on the train scenes (Adam, batches of 256) and
scored on the held-out ones. High means one attention read answers "what colour is the
triangle?" from these tokens.

With --hops (a unimm model, the image in its sequence or cross-attended) it then asks the model itself
"What colour is the <shape>?" about each scene and probes the backbone's hidden states, layer by
layer, at the shape word and at the answer position for the asked object's colour: a model that
binds carries that colour to the shape word first (its query finds the object's tokens), then
to the answer. A bag reader sits at about .5 (it knows the scene's two colours, not which).

Usage: python benchmarks/binding_probes.py [--model weights/default | --siglip runs/siglip-regions/model]
       [--n 3000] [--test 600] [--window 1] [--hops]
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from probes import fit_probe, reduce, to_grid


def window(x: torch.Tensor, centres: torch.Tensor, w: int) -> torch.Tensor:
    """The w x w tokens around each centre's token, flattened (zero-padded at the borders)."""
    g = F.pad(to_grid(x), (w // 2,) * 4)
    side = math.isqrt(x.shape[1])
    cell = (centres * side).long().clamp(0, side - 1)
    return torch.stack([g[b, :, r:r + w, c:c + w].flatten() for b, (c, r) in enumerate(cell.tolist())])


@torch.no_grad()
def features(args, items):
    """{site: (N, tokens, D)} for the scenes, from a unimm model or a SigLIP checkpoint."""
    from unimm.data.shapes import render
    from unimm.images import to_tensor

    if args.siglip:
        from transformers import SiglipVisionModel
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # a full SigLIP folder: its text tower is unused here, not a problem
        tower, projector = SiglipVisionModel.from_pretrained(args.siglip, use_safetensors=True).eval(), None
        size, mean, std, fl = tower.config.image_size, (0.5,) * 3, (0.5,) * 3, -1
        to_px = lambda imgs: torch.stack([to_tensor(im, mean, std) for im in imgs])  # noqa: E731
    else:
        import unimm

        pipe = unimm.load(args.model, dtype="float32")
        tower, projector = pipe.model.encoder.model, pipe.model.projector
        size, to_px, fl = pipe.processor.image_size, pipe.processor.pixel_values, pipe.model.encoder.config.feature_layer
    out: dict[str, list] = {}
    for start in range(0, len(items), 100):
        px = to_px([render(s, size) for s in items[start:start + 100]])
        hs = tower(pixel_values=px, output_hidden_states=True).hidden_states
        for k, h in enumerate(hs):
            out.setdefault(f"enc_hs{k}", []).append(h)
        last = tower.post_layernorm(hs[-1])
        out.setdefault("enc_last_ln", []).append(last)
        if projector is not None:
            out.setdefault("proj_out", []).append(projector(last if fl == -1 else hs[fl]))
    return {k: torch.cat(v) for k, v in out.items()}


class AttentionReader(torch.nn.Module):
    """One attention head: a shape word's query over the tokens, their values read as colour logits."""

    def __init__(self, dim: int, n_words: int, n_answers: int, width: int = 64):
        super().__init__()
        self.query = torch.nn.Embedding(n_words, width)
        self.key = torch.nn.Linear(dim, width)
        self.value = torch.nn.Linear(dim, n_answers)

    def forward(self, tokens: torch.Tensor, word: torch.Tensor) -> torch.Tensor:
        weights = torch.einsum("bw,btw->bt", self.query(word), self.key(tokens)).softmax(-1)
        return torch.einsum("bt,bta->ba", weights, self.value(tokens))


def attention_probe(x, word, answer, ntr: int, n_words: int, n_answers: int, steps: int, seed: int) -> float:
    """Held-out accuracy of an AttentionReader trained on the first ntr scenes."""
    torch.manual_seed(seed)
    reader = AttentionReader(x.shape[-1], n_words, n_answers)
    opt = torch.optim.Adam(reader.parameters(), 3e-3)
    for _ in range(steps):
        b = torch.randint(0, ntr, (256,))
        loss = F.cross_entropy(reader(x[b], word[b]), answer[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float((reader(x[ntr:], word[ntr:]).argmax(-1) == answer[ntr:]).float().mean())


@torch.no_grad()
def hops(args, items, answer, asked, ntr: int, n_colours: int) -> None:
    """Layer-by-layer probes of the backbone at the shape word and the answer position."""
    import unimm
    from unimm.data.shapes import render
    from unimm.models.unified import positions
    from unimm.processing import left_pad

    pipe = unimm.load(args.model, dtype="float32")
    model, proc = pipe.model, pipe.processor
    at_word: dict[int, list] = {}
    at_answer: dict[int, list] = {}
    for start in range(0, len(items), 100):
        chunk, picks = items[start:start + 100], asked[start:start + 100].tolist()
        px = proc.pixel_values([render(s, proc.image_size) for s in chunk]).to(model.dtype)
        rows = [proc.chat_ids([(f"What colour is the {s.objects[k].shape}?", 1, None)])[0] for s, k in zip(chunk, picks)]
        marks = [proc.tokenizer.encode("?", add_special_tokens=False)[0]]
        back = [len(r) - (max(i for i, t in enumerate(r) if t in marks) - 1) for r in rows]  # the word before "?"
        ids, mask = left_pad(rows, model.token_ids.pad)
        with model.seeing(ids, px):  # cross-attention fusion: the blocks read the image (else nothing)
            out = model.backbone.decoder(model.embed_inputs(ids, px), attention_mask=mask,
                                         position_ids=positions(mask), use_cache=False, output_hidden_states=True)
        for layer, h in enumerate(out.hidden_states):
            at_word.setdefault(layer, []).append(h[torch.arange(len(rows)), -torch.tensor(back)])
            at_answer.setdefault(layer, []).append(h[:, -1])
    print("asked object's colour, probed in the backbone (layer 0: the embeddings)")
    for layer in at_word:
        accs = []
        for states in (torch.cat(at_word[layer]), torch.cat(at_answer[layer])):
            tr, te = reduce(states[:ntr], states[ntr:])
            accs.append(fit_probe(tr, answer[:ntr], te, answer[ntr:], n_colours, 100))
        print(f"layer {layer}: at the shape word {accs[0]:.2f}, at the answer position {accs[1]:.2f}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--model", default=None, help="a unimm model (default: weights/default)")
    src.add_argument("--siglip", default=None, help="a SigLIP checkpoint folder (unimm train-siglip's output_dir/model)")
    ap.add_argument("--n", type=int, default=3000, help="scenes in all (train + test)")
    ap.add_argument("--test", type=int, default=600, help="held-out scenes (the last ones)")
    ap.add_argument("--window", type=int, default=1, help="tokens per side around A's centroid token")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--attention-steps", type=int, default=600, help="training steps of the attention probe")
    ap.add_argument("--hops", action="store_true", help="also probe the backbone at the shape word and the answer")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.siglip and not (Path(args.siglip) / "config.json").is_file():
        ap.error(f"--siglip {args.siglip!r} is not a SigLIP checkpoint folder (no config.json)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    from unimm.data.corpus import COLOURS, SHAPES
    from unimm.data.shapes import ShapesWorld

    t0 = time.time()
    # Seeds far from the training worlds and the evaluator's.
    world = ShapesWorld(seed=7_100_000 + args.seed, num_samples=args.n, mix={"pair": 1.0})
    items = [world[i] for i in range(args.n)]
    centres = torch.tensor([[s.objects[0].cx, s.objects[0].cy] for s in items])
    labels = {
        "own shape": (torch.tensor([SHAPES.index(s.objects[0].shape) for s in items]), len(SHAPES)),
        "own colour": (torch.tensor([COLOURS.index(s.objects[0].colour) for s in items]), len(COLOURS)),
        "other shape": (torch.tensor([SHAPES.index(s.objects[1].shape) for s in items]), len(SHAPES)),
        "other colour": (torch.tensor([COLOURS.index(s.objects[1].colour) for s in items]), len(COLOURS)),
    }
    # The attention probe's question: the colour of the object with a given shape (A's or B's).
    asked = torch.randint(0, 2, (args.n,), generator=torch.Generator().manual_seed(args.seed))
    word = torch.tensor([SHAPES.index(s.objects[k].shape) for s, k in zip(items, asked.tolist())])
    answer = torch.tensor([COLOURS.index(s.objects[k].colour) for s, k in zip(items, asked.tolist())])
    feats = features(args, items)
    ntr = args.n - args.test
    print(f"{args.siglip or args.model or 'weights/default'}: {args.n} two-object scenes ({ntr} train / {args.test} "
          f"test), {args.window}x{args.window} tokens at object A; held-out accuracy of linear probes")
    print(f"{'site':12s} | " + " | ".join(f"{k:>12s}" for k in labels) + " | colour of the named shape (attention)")
    for site, x in feats.items():
        tr, te = reduce(*(lambda v: (v[:ntr], v[ntr:]))(window(x, centres, args.window)))
        accs = [fit_probe(tr, y[:ntr], te, y[ntr:], n, 100) for y, n in labels.values()]
        accs.append(attention_probe(x, word, answer, ntr, len(SHAPES), len(COLOURS), args.attention_steps, args.seed))
        print(f"{site:12s} | " + " | ".join(f"{a:12.2f}" for a in accs), flush=True)
    if args.hops:
        if args.siglip:
            ap.error("--hops needs a unimm model (--model), not a SigLIP tower")
        hops(args, items, answer, asked, ntr, len(COLOURS))
    print(f"chance: shape {1 / len(SHAPES):.2f}, colour {1 / len(COLOURS):.2f}; {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
