"""Linear probes along the understanding path: where do shape and position get lost?

Renders single-object shapes-world scenes, sends them through the model's own
understanding preprocessing (`pipe.processor.pixel_values`: the encoder's size,
resize mode and normalisation), and reads features at every stage:

  pixels          the normalised pixel_values the encoder receives
  enc_random      a SigLIP tower of the same architecture with random weights, at the model's feature_layer
  enc_hs{k}       the trained encoder's hidden_states[k] (0: patch + position embeddings);
                  the one marked "*" is the feature_layer the projector receives
  proj_in         the projector's pixel-shuffled (2x2-merged) tokens before its LayerNorm + MLP
  proj_out        the projector output: the embeddings spliced into the backbone
  llm_answer      the backbone's last hidden state at the answer position of the scene's own
                  VQA question of that type (one 256-d vector per question)

For every (site, label) a multinomial logistic regression (full-batch L-BFGS,
weight decay 1e-3, on standardised features reduced to 256 principal components) is fitted
on the train scenes and scored on held-out scenes. "flat" uses the flattened
token grid, "mean" the mean over tokens. The last row, `model_vqa`, is the
model's own greedy first answer token on the same held-out questions.

Usage: python benchmarks/probes.py [--model weights/default] [--n 4000] [--test 1000] [--seed 0]
"""
from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F

LABELS = ("shape", "position", "colour", "size")


def scenes(n: int, seed: int):
    from unimm.data.shapes import ShapesWorld

    # Seeds far from the training worlds (11-23) and the VQA evaluator's (1_000_000 + seed).
    world = ShapesWorld(seed=7_000_000 + seed, num_samples=n, mix={"single": 1.0})
    return [world[i] for i in range(n)]


def label_ids(items, vocabs):
    obj = [s.objects[0] for s in items]
    return {k: torch.tensor([vocabs[k].index(getattr(o, k)) for o in obj]) for k in LABELS}


def to_grid(x: torch.Tensor) -> torch.Tensor:
    """(B, N, D) tokens in row-major order -> (B, D, S, S)."""
    side = math.isqrt(x.shape[1])
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)


def object_window(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """The 3x3 tokens around the token holding each object's centroid, flattened (zero-padded at borders)."""
    g = F.pad(to_grid(x), (1, 1, 1, 1))
    side = g.shape[-1] - 2
    cell = (centres * side).long().clamp(0, side - 1)  # (B, 2): column, row
    return torch.stack([g[b, :, r:r + 3, c:c + 3].flatten() for b, (c, r) in enumerate(cell.tolist())])


@torch.no_grad()
def extract(pipe, items, random_encoder, llm_n: int, batch: int = 100):
    """Token features per site {site: (B, N, D)}, and the backbone's answer-position states for the first llm_n."""
    from unimm.data.shapes import render
    from unimm.models.unified import positions
    from unimm.processing import left_pad

    model, proc = pipe.model, pipe.processor
    enc = model.encoder
    out: dict[str, list] = {}
    llm: dict[str, list] = {k: [] for k in LABELS}
    pred: dict[str, list] = {k: [] for k in LABELS}
    for start in range(0, len(items), batch):
        chunk = items[start:start + batch]
        # The model's own understanding input: rendered at the encoder size, processor transform.
        px = proc.pixel_values([render(s, proc.image_size) for s in chunk]).to(model.dtype)
        p = enc.patch_size  # pixels as a grid of p x p x 3 "patch tokens", the encoder's own grid
        feats = {"pixels": F.unfold(px, p, stride=p).transpose(1, 2)}
        hs = enc.model(pixel_values=px, output_hidden_states=True).hidden_states
        for k, h in enumerate(hs):
            feats[f"enc_hs{k}"] = h
        fl = enc.config.feature_layer  # SiglipEncoder.forward: hidden_states[feature_layer] (or the post-LN last)
        layer_in = enc.model.post_layernorm(hs[-1]) if fl == -1 else hs[fl]
        feats["proj_out"] = model.projector(layer_in)
        feats["enc_random"] = random_encoder(px)
        for k, v in feats.items():
            out.setdefault(k, []).append(v.float())
        print(f"  encoded {start + len(chunk)}/{len(items)}", flush=True)
        if start >= llm_n:
            continue
        # Backbone: the scene's own question of each type, read at the last prompt position ("Assistant:").
        for label in LABELS:
            rows = [proc.chat_ids([(next(q for q in s.qa if q.type == label).question, 1, None)])[0] for s in chunk]
            ids, mask = left_pad(rows, model.token_ids.pad)
            embeds = model.embed_inputs(ids, px)
            h = model.hidden_states(embeds, attention_mask=mask, position_ids=positions(mask), use_cache=False)
            llm[label].append(h[:, -1].float())
            pred[label].append(model.text_logits(h[:, -1]).argmax(-1))
    feats = {k: torch.cat(v) for k, v in out.items()}
    if not llm_n:
        return feats, {}, {}
    return feats, {k: torch.cat(v)[:llm_n] for k, v in llm.items()}, {k: torch.cat(v)[:llm_n] for k, v in pred.items()}


def reduce(xtr, xte, pca: int = 256):
    """Centre, keep the top `pca` principal components (fitted on train) if wider, standardise."""
    mu = xtr.mean(0)
    xtr, xte = xtr - mu, xte - mu
    pca = min(pca, xtr.shape[0])  # a small run (e.g. a smoke test) has fewer scenes than components
    if xtr.shape[1] > pca:
        _, _, V = torch.pca_lowrank(xtr, q=pca, center=False, niter=3)
        xtr, xte = xtr @ V, xte @ V
    sd = xtr.std(0) + 1e-5
    return xtr / sd, xte / sd


def fit_probe(xtr, ytr, xte, yte, n_classes, iters: int, wd: float = 1e-3) -> float:
    """Held-out accuracy of an L2-regularised softmax regression (full-batch L-BFGS) on reduced features."""
    W = torch.zeros(xtr.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=iters, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-6, tolerance_change=1e-9)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(xtr @ W + b, ytr) + wd * (W * W).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(((xte @ W + b).argmax(-1) == yte).float().mean())


def checks(pipe) -> list[str]:
    """The plumbing the probes depend on: sizes, normalisation, token order, prompt layout."""
    model, proc = pipe.model, pipe.processor
    enc, cfg = model.encoder, model.encoder.config
    lines = [
        f"processor: {proc.image_size}px {proc.resize_mode} mean={proc.image_mean} std={proc.image_std}; "
        f"encoder: image_size={enc.image_size} native={enc.native_size} patch={enc.patch_size} "
        f"-> pos-embedding interpolation {'ON' if enc.image_size != enc.native_size else 'off'}; "
        f"feature_layer={cfg.feature_layer} of {model.encoder.model.config.num_hidden_layers} layers",
    ]
    # Pixel shuffle: tag every patch with its index and see which patches each merged token holds.
    side, s = math.isqrt(enc.num_patches), model.projector.scale
    D = enc.hidden_size
    tags = torch.arange(enc.num_patches, dtype=torch.float32).view(1, -1, 1).expand(1, -1, D).contiguous()
    captured = {}
    hook = model.projector.norm.register_forward_hook(lambda m, a, o: captured.__setitem__("x", a[0]))
    with torch.no_grad():
        model.projector(tags)
    hook.remove()
    groups = [sorted(set(captured["x"][0, m].long().tolist())) for m in range(captured["x"].shape[1])]
    want = [sorted((2 * r + i) * side + 2 * c + j for i in range(s) for j in range(s))
            for r in range(side // s) for c in range(side // s)]
    lines.append(f"pixel_shuffle: merged token m holds patches {groups[:3]}... "
                 f"{'= row-major 2x2 blocks, spatial order kept' if groups == want else 'SCRAMBLED vs ' + str(want[:3])}")
    ids, _ = proc.chat_ids([("What shape is on the left?", 1, None)])
    n_img = sum(i == model.token_ids.image for i in ids)
    first_q = ids.index(model.token_ids.eoi) + 1
    lines.append(f"prompt: {len(ids)} tokens, {n_img} image placeholders (projector gives "
                 f"{model.num_understanding_tokens}), images at {ids.index(model.token_ids.image)}.."
                 f"{first_q - 2}, question after, causal attention so the answer position sees them")
    return lines


def mlp_probe(xtr, ytr, xte, yte, n_classes, epochs: int = 100) -> float:
    """A non-linear control: a 1-hidden-layer MLP (256 GELU units, AdamW, minibatch 256)."""
    net = torch.nn.Sequential(torch.nn.Linear(xtr.shape[1], 256), torch.nn.GELU(), torch.nn.Linear(256, n_classes))
    opt = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=1e-2)
    for _ in range(epochs):
        perm = torch.randperm(len(xtr))
        for i in range(0, len(xtr), 256):
            b = perm[i:i + 256]
            loss = F.cross_entropy(net(xtr[b]), ytr[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return float((net(xte).argmax(-1) == yte).float().mean())


def _swap(reduced, ytr, yte):
    return reduced[0], ytr, reduced[1], yte


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model directory (default: weights/default)")
    ap.add_argument("--n", type=int, default=4000, help="scenes in all (train + test)")
    ap.add_argument("--test", type=int, default=1000, help="held-out scenes (the last ones)")
    ap.add_argument("--llm-n", type=int, default=1200, help="scenes run through the backbone (last quarter held out)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--iters", type=int, default=100, help="L-BFGS iterations per probe")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mlp", action="store_true", help="add a non-linear (MLP) shape probe on the object window")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    import unimm
    from unimm.data.corpus import COLOURS, POSITIONS, SHAPES, SIZES
    from unimm.encoders import SiglipEncoder, SiglipEncoderConfig

    t0 = time.time()
    pipe = unimm.load(args.model, dtype="float32")
    model = pipe.model
    for line in checks(pipe):
        print("check:", line)
    # Same architecture and feature layer, fresh transformers initialisation.
    rcfg = model.encoder.resolved_config()
    random_encoder = SiglipEncoder(SiglipEncoderConfig(siglip=rcfg.siglip, feature_layer=rcfg.feature_layer)).eval()

    items = scenes(args.n, args.seed)
    vocabs = {"shape": SHAPES, "position": POSITIONS, "colour": COLOURS, "size": SIZES}
    y = label_ids(items, vocabs)
    centres = torch.tensor([[s.objects[0].cx, s.objects[0].cy] for s in items])
    llm_n = min(args.llm_n, args.n)
    feats, llm, pred = extract(pipe, items, random_encoder, llm_n)
    ntr = args.n - args.test
    print(f"features of {args.n} scenes ({ntr} train / {args.test} test) in {time.time() - t0:.0f}s")
    n_hs = sum(k.startswith("enc_hs") for k in feats)
    fl = model.encoder.config.feature_layer
    proj_site = f"enc_hs{fl % n_hs}"

    print("accuracy on held-out scenes; flat = all tokens (PCA-256), mean = mean over tokens, obj = the 3x3 tokens "
          "around the object's centroid (meant for shape; zero padding at borders leaks position)")
    header = f"{'site':12s} {'tokens':>9s} | " + " | ".join(f"{k + ' flat/mean/obj':>22s}" for k in LABELS)
    header += " | shape obj MLP" if args.mlp else ""
    print(header)
    print("-" * len(header))
    sites = ["pixels", "enc_random"] + [f"enc_hs{k}" for k in range(n_hs)] + ["proj_out"]
    for site in sites:
        x = feats[site]
        views = [reduce(v[:ntr], v[ntr:]) for v in (x.flatten(1), x.mean(1), object_window(x, centres))]
        row = []
        for label in LABELS:
            n_cls = len(vocabs[label])
            accs = [fit_probe(tr, y[label][:ntr], te, y[label][ntr:], n_cls, args.iters) for tr, te in views]
            row.append(" / ".join(f"{a:.2f}" for a in accs).rjust(22))
        if args.mlp:
            row.append(f"{mlp_probe(*_swap(views[2], y['shape'][:ntr], y['shape'][ntr:]), len(SHAPES)):.2f}".rjust(13))
        name = site + ("*" if site == proj_site else "")
        print(f"{name:12s} {f'{x.shape[1]}x{x.shape[2]}':>9s} | " + " | ".join(row), flush=True)
    if not llm_n:
        print(f"* = the layer the projector receives (feature_layer {fl}); total {time.time() - t0:.0f}s")
        return
    lt = llm_n - llm_n // 4
    row = [f"{fit_probe(*_swap(reduce(llm[k][:lt], llm[k][lt:]), y[k][:lt], y[k][lt:llm_n]), len(vocabs[k]), args.iters):.2f}".rjust(22)
           for k in LABELS]
    print(f"{'llm_answer':12s} {f'1x{llm[LABELS[0]].shape[1]}':>9s} | " + " | ".join(row))
    tok = pipe.processor.tokenizer
    ans_prefix = model.config.prompt.answer_prefix
    row = []
    for k in LABELS:
        first = torch.tensor([tok.encode(ans_prefix + vocabs[k][int(i)], add_special_tokens=False)[0]
                              for i in y[k][:llm_n]])
        row.append(f"{float((pred[k][lt:] == first[lt:]).float().mean()):.2f}".rjust(22))
    print(f"{'model_vqa':12s} {'':9s} | " + " | ".join(row))
    maj = [f"{float(torch.bincount(y[k][ntr:]).max()) / args.test:.2f}".rjust(22) for k in LABELS]
    print(f"{'majority':12s} {'':9s} | " + " | ".join(maj))
    print(f"llm_answer / model_vqa: {lt} train / {llm_n - lt} test scenes, the scene's own question of that type")
    print(f"* = the layer the projector receives (feature_layer {fl}); total {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
