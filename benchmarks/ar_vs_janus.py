"""Autoregressive text-to-image speed: unimm against transformers' Janus, same config, same run.

    python benchmarks/ar_vs_janus.py                  # tiny preset (configs/models/tiny.yaml sizes)
    python benchmarks/ar_vs_janus.py --preset small   # hidden 256, 4 layers, 256 image tokens
    python benchmarks/ar_vs_janus.py --level tokens   # image decode excluded from both timings
    python benchmarks/ar_vs_janus.py --model weights/default --level tokens --decoding jacobi
                                                      # a trained model's weights on both sides

Both sides are built from configs with random weights (nothing is downloaded) and
run in fp32 on the CPU with the same thread count:

- unimm: `unimm.load(config_dict)`, a Llama backbone + AR image head + VQ decoder.
- transformers: `JanusForConditionalGeneration(JanusConfig(...))` with the same
  Llama text config (hidden, intermediate, layers, heads, kv heads, vocab size),
  the same image-token count (vision_config.num_image_tokens, which is what
  `generate(generation_mode="image")` loops over) and the same VQ grid
  (vq_config.num_patches = vision image_size // patch_size).

Same work on both sides: B copies of one prompt, CFG with 2B rows (the
unconditional rows keep only BOS and BOI, in both), the same guidance scale,
greedy decoding (unimm temperature=0, transformers do_sample=False), and the
same prompt ids: the ids fed to Janus are exactly the ones unimm's processor
makes from the prompt ([BOS] prompt [BOI]), so the prompt length in tokens
matches by construction.

What is timed (--level; decisions recorded here):
- pipeline (default): unimm's public API end to end, `pipe.generate(prompt,
  num_images=B, temperature=0, guidance_scale=s)`: tokenising, the sampler, the
  VQ decode and the conversion to PIL images. transformers gets the
  pre-tokenised ids, runs `generate(..., generation_mode="image")`, then
  `decode_image_tokens(ids)` and the same tensor-to-PIL conversion
  (`unimm.images.to_pil`), so both end at PIL images. Tokenising one short
  prompt is left on unimm's side only: it is microseconds and counts against
  unimm, never for it.
- sampler: the same prompt ids tensor into `generate_image_tokens` +
  `pipe.model.decode_images` vs `generate` + `decode_image_tokens`
  (ids -> pixel tensors; no tokenising, no PIL).
- tokens: as sampler but without the decode: image decode excluded in both.

The VQ decoders are not the same network (unimm uses diffusers' VQGAN
Decoder, Janus its own; Janus's GroupNorm needs channels divisible by 32), so
they are sized as alike as the two allow and the output also reports a
decode-only time for each side, to show how much of the total it is.

By default unimm's random backbone, image embedding, aligner and image head
weights are copied into the Janus model (--no-copy-weights turns it off). That
changes no timing, but with identical weights greedy decoding must give
identical image ids, which checks that both really compute the same thing.

--model DIR takes a trained unimm autoregressive model instead of random weights
(Jacobi decoding gains only where tokens are predictable, which random weights
never make them): Janus is built with that model's Llama config and generation
head sizes and gets its weights. Janus cannot hold unimm's image decoder, so
--model times tokens only (--level tokens).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import transformers
from tqdm import tqdm
from transformers import GenerationConfig, JanusConfig, JanusForConditionalGeneration, LlamaConfig
from transformers.models.janus.configuration_janus import JanusVisionConfig, JanusVQVAEConfig

import unimm
from unimm.images import to_pil
from unimm.pipelines.load import read_model_config
from unimm.sampling.autoregressive import generate_image_tokens
from unimm.sampling.jacobi import generate_image_tokens_jacobi

REPO = Path(__file__).resolve().parents[1]

# Backbone / image sizes per preset. "tiny" has configs/models/tiny.yaml's backbone,
# token count and codebook (its VQ decoder is 32 channels wide at every level,
# not [16, 32, 32], so Janus can build the same one); "small" is a step up where
# the transformer's matmuls, not Python overhead per step, take most of the time.
PRESETS = {
    "tiny": dict(hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, image_tokens=64, codebook=256,
                 batch=2, repeats=5, warmup=1),
    "small": dict(hidden=256, intermediate=512, layers=4, heads=8, kv_heads=4, image_tokens=256, codebook=1024,
                  batch=2, repeats=5, warmup=1),
}
# The VQ decoder is 3 levels (4x upsampling) on both sides, as in tiny.yaml:
# image side = 4 * sqrt(image tokens).
VQ_LEVELS = 3
VQ_DOWNSAMPLE = 2 ** (VQ_LEVELS - 1)
CODE_DIM = 8  # codebook vector width, LlamaGen / Janus


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    # None: take the preset's value.
    p.add_argument("--batch", type=int, help="prompts per call (B); CFG runs 2B rows")
    p.add_argument("--image-tokens", type=int, help="image tokens per image (a square number)")
    p.add_argument("--hidden", type=int)
    p.add_argument("--intermediate", type=int, help="default: 2 x hidden")
    p.add_argument("--layers", type=int)
    p.add_argument("--heads", type=int, help="default: hidden / 16")
    p.add_argument("--kv-heads", type=int, help="default: heads / 2")
    p.add_argument("--codebook", type=int, help="VQ codebook size")
    p.add_argument("--repeats", type=int, help="timed runs per implementation")
    p.add_argument("--warmup", type=int, help="untimed runs per implementation first")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--guidance-scale", type=float, default=3.0)
    p.add_argument("--prompt", default="a big red circle above a small blue square")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--decoding", choices=["sequential", "jacobi"], default="sequential",
                   help="unimm's decoding (jacobi: speculative Jacobi decoding; greedy ids are the same)")
    p.add_argument("--level", choices=["pipeline", "sampler", "tokens"], default="pipeline",
                   help="what is timed; see the module docstring")
    p.add_argument("--no-copy-weights", action="store_true",
                   help="keep Janus's own random weights (no ids-equality check)")
    p.add_argument("--model", default=None,
                   help="a trained unimm autoregressive model (name or directory) on both sides instead of random "
                        "weights; sizes come from it (needs --level tokens)")
    args = p.parse_args(argv)
    if args.model is not None and (args.level != "tokens" or args.no_copy_weights):
        p.error("--model needs --level tokens (Janus cannot hold unimm's image decoder) and copied weights")

    preset = PRESETS[args.preset]
    explicit = {k for k in ("hidden", "intermediate", "heads", "kv_heads") if getattr(args, k) is not None}
    for k, v in preset.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    # When the width is overridden, derive what was not given from it rather
    # than keep the preset's (which would no longer divide).
    if "hidden" in explicit:
        if "intermediate" not in explicit:
            args.intermediate = 2 * args.hidden
        if "heads" not in explicit:
            args.heads = max(1, args.hidden // 16)
        if "kv_heads" not in explicit:
            args.kv_heads = max(1, args.heads // 2)
    if "heads" in explicit and "kv_heads" not in explicit:
        args.kv_heads = max(1, args.heads // 2)

    grid = math.isqrt(args.image_tokens)
    if grid * grid != args.image_tokens:
        p.error(f"--image-tokens must be a square number (an h x h grid), got {args.image_tokens}")
    if args.hidden % args.heads or args.heads % args.kv_heads:
        p.error(f"hidden {args.hidden}, heads {args.heads}, kv heads {args.kv_heads} do not divide")
    if args.guidance_scale <= 1.0:
        # Janus only adds its CFG processor above 1 but still runs 2B rows; unimm
        # drops the unconditional rows at exactly 1. Keep the work identical.
        p.error("--guidance-scale must be > 1 (both sides then run the same 2B-row CFG batch)")
    if args.batch < 1:
        p.error("--batch must be >= 1")
    args.grid = grid
    args.code_dim = CODE_DIM  # --model: the trained head's (sizes_from_model)
    args.threads = args.threads or os.cpu_count()
    return args


# -- building the two models ---------------------------------------------------
def backbone_config(a) -> dict:
    return dict(hidden_size=a.hidden, intermediate_size=a.intermediate, num_hidden_layers=a.layers,
                num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
                # Room for any sane prompt plus the image tokens.
                max_position_embeddings=max(512, 2 * (a.image_tokens + 64)))


def sizes_from_model(a, pipe) -> None:
    """--model: the benchmark's sizes become the trained model's."""
    lm, head = pipe.model.backbone.lm.config, pipe.model.gen_head
    a.preset = f"model {a.model}"
    a.hidden, a.intermediate, a.layers = lm.hidden_size, lm.intermediate_size, lm.num_hidden_layers
    a.heads, a.kv_heads = lm.num_attention_heads, lm.num_key_value_heads
    a.image_tokens, (a.codebook, a.code_dim) = pipe.model.num_image_tokens, tuple(head.embedding.weight.shape)
    a.grid = math.isqrt(a.image_tokens)


def build_unimm(a):
    """tiny.yaml with the benchmark's sizes; the rest (encoder, tokenizer) as tiny. With --model: that model."""
    if a.model is not None:
        pipe = unimm.load(a.model, device="cpu", dtype=torch.float32)
        if pipe.model.config.generation.paradigm != "autoregressive":
            raise SystemExit(f"--model {a.model} is a {pipe.model.config.generation.paradigm} model; "
                             "Janus's loop is autoregressive")
        sizes_from_model(a, pipe)
        return pipe
    cfg = read_model_config(REPO / "configs" / "models" / "tiny.yaml")
    cfg["name"] = f"bench-{a.preset}"
    cfg["backbone"] = {"model_type": "llama", "config": backbone_config(a)}
    cfg["image_tokenizer"] = {
        **cfg["image_tokenizer"],
        "image_size": a.grid * VQ_DOWNSAMPLE,
        # Widths Janus can also build (its GroupNorm has 32 groups): 32 at every level.
        "block_out_channels": [32] * VQ_LEVELS,
        "quantizer": {"type": "vq", "codebook_size": a.codebook, "codebook_dim": a.code_dim, "use_cosine_sim": True},
    }
    cfg["generation"] = {"paradigm": "autoregressive"}  # embed_dim = code dim, head hidden = backbone width
    torch.manual_seed(a.seed)
    pipe = unimm.load(cfg, device="cpu", dtype=torch.float32)
    assert pipe.model.num_image_tokens == a.image_tokens, pipe.model.num_image_tokens
    return pipe


def build_janus(a, pipe):
    """A Janus model whose text model and image-generation path match the unimm one."""
    ids = pipe.model.token_ids
    if a.model is not None:  # the trained LM's own config (norm eps, rope, head dim, ...)
        text = LlamaConfig(**{**pipe.model.backbone.lm.config.to_dict(), "pad_token_id": ids.pad})
    else:
        text = LlamaConfig(**backbone_config(a), vocab_size=ids.vocab_size, bos_token_id=ids.bos,
                           pad_token_id=ids.pad, eos_token_id=ids.eos)
    # The vision (understanding) tower is not used to generate; keep it minimal.
    # image_size // patch_size sets the VQ grid (JanusConfig copies it into
    # vq_config.num_patches); num_image_tokens is the generation loop length.
    vision = JanusVisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2.0,
                               image_size=a.grid * 4, patch_size=4, projection_dim=a.hidden,
                               num_image_tokens=a.image_tokens)
    vq_cfg = pipe.model.image_tokenizer.config  # the built VQ's dataclass (the model config holds a spec dict)
    vq = JanusVQVAEConfig(
        embed_dim=a.code_dim, num_embeddings=a.codebook, latent_channels=vq_cfg.latent_channels,
        base_channels=32, channel_multiplier=[1] * VQ_LEVELS, num_res_blocks=vq_cfg.layers_per_block,
        # Aligner: code dim -> hidden -> hidden (2 layers); head: hidden -> hidden -> codebook. As unimm's.
        projection_dim=a.hidden, image_token_embed_dim=a.hidden, num_hidden_layers=2, hidden_act="gelu",
    )
    config = JanusConfig(text_config=text, vision_config=vision, vq_config=vq, image_token_id=ids.image)
    # Same attention kernel as unimm's backbone (BackboneConfig.attn_implementation).
    config._attn_implementation = pipe.model.config.backbone.attn_implementation
    torch.manual_seed(a.seed)
    model = JanusForConditionalGeneration(config).eval()
    assert model.model.vision_model.config.num_image_tokens == a.image_tokens
    gen = GenerationConfig(
        bos_token_id=ids.bos, pad_token_id=ids.pad, eos_token_id=ids.eos, do_sample=False,
        guidance_scale=a.guidance_scale, generation_kwargs={"boi_token_id": ids.boi},
    )
    return model, gen


def copy_weights(pipe, janus) -> None:
    """unimm's backbone + image-generation weights into Janus (same layouts)."""
    m, j = pipe.model, janus.model
    j.language_model.load_state_dict(m.backbone.lm.get_decoder().state_dict())
    head, aligner = m.gen_head, m.gen_head.aligner
    j.generation_embeddings.load_state_dict(head.embedding.state_dict())
    j.generation_aligner.fc1.load_state_dict(aligner[0].state_dict())
    j.generation_aligner.hidden_layers[0].load_state_dict(aligner[2].state_dict())
    j.generation_head.proj_out.load_state_dict(head.head[0].state_dict())
    j.generation_head.vision_head.load_state_dict(head.head[2].state_dict())


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


# -- the timed calls -------------------------------------------------------------
def make_runners(a, pipe, janus, gen):
    model = pipe.model
    row = pipe.processor.generation_ids(a.prompt)  # [BOS] prompt [BOI], as pipe.generate builds it
    prompt_ids = torch.tensor([row] * a.batch)
    mask = torch.ones_like(prompt_ids)
    decode = a.level != "tokens"
    sample = generate_image_tokens_jacobi if a.decoding == "jacobi" else generate_image_tokens

    def run_unimm():
        if a.level == "pipeline":
            return pipe.generate(a.prompt, num_images=a.batch, temperature=0.0, guidance_scale=a.guidance_scale,
                                 seed=a.seed, decoding=a.decoding)
        ids = sample(model, prompt_ids, mask, guidance_scale=a.guidance_scale, temperature=0.0)
        if not decode:
            return ids
        with torch.inference_mode():
            return model.decode_images(ids)

    def run_janus():
        # Janus.generate is @torch.no_grad; inference_mode, as unimm's sampler uses,
        # gives it the same (slightly cheaper) autograd-free tensors.
        with torch.inference_mode():
            ids = janus.generate(prompt_ids, attention_mask=mask, generation_mode="image", generation_config=gen)
            if not decode:
                return ids
            pixels = janus.decode_image_tokens(ids)  # (B, H, W, 3)
            if a.level == "pipeline":
                return to_pil(pixels.permute(0, 3, 1, 2))
            return pixels

    return run_unimm, run_janus, prompt_ids, mask, len(row)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def image_size(out) -> tuple:
    """(H, W) of a run's output: PIL list, (B, 3, H, W) unimm or (B, H, W, 3) Janus tensors."""
    if isinstance(out, list):
        return tuple(reversed(out[0].size))
    return tuple(out.shape[-2:]) if out.shape[1] == 3 else tuple(out.shape[1:3])


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_avg() -> str:
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def git_rev() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (rev + ("+dirty" if dirty else "")) or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main(argv=None) -> None:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    # Other work on the machine skews a CPU benchmark badly (OpenMP threads that
    # share cores with another process stall each other): record the load.
    load_before = load_avg()

    pipe = build_unimm(a)
    janus, gen = build_janus(a, pipe)
    if not a.no_copy_weights:
        copy_weights(pipe, janus)
    run_unimm, run_janus, prompt_ids, mask, prompt_len = make_runners(a, pipe, janus, gen)

    # Sanity (untimed): image ids from both samplers on the same prompt ids.
    sample = generate_image_tokens_jacobi if a.decoding == "jacobi" else generate_image_tokens
    u_ids = sample(pipe.model, prompt_ids, mask, guidance_scale=a.guidance_scale, temperature=0.0)
    with torch.inference_mode():
        j_ids = janus.generate(prompt_ids, attention_mask=mask, generation_mode="image", generation_config=gen)

    for _ in range(a.warmup):
        run_unimm()
        run_janus()
    # Alternate A B A B ... so drift in machine speed hits both alike.
    times = {"unimm": [], "transformers": []}
    outs = {}
    for _ in tqdm(range(a.repeats), desc="repeats", unit="pair", file=sys.stderr):
        for name, fn in (("unimm", run_unimm), ("transformers", run_janus)):
            t, outs[name] = timed(fn)
            times[name].append(t)

    # Decode alone, same ids on both sides: the two VQ decoders are different nets.
    dec = {"unimm": [], "transformers": []}
    if a.level != "tokens":
        with torch.inference_mode():
            for _ in range(max(a.repeats, 3)):
                dec["unimm"].append(timed(lambda: pipe.model.decode_images(u_ids))[0])
                dec["transformers"].append(timed(lambda: janus.decode_image_tokens(j_ids))[0])

    med = {k: statistics.median(v) for k, v in times.items()}
    ips = {k: a.batch / v for k, v in med.items()}
    ratio = ips["unimm"] / ips["transformers"]
    decode_note = {"pipeline": "included (ids -> pixels -> PIL, both)", "sampler": "included (ids -> pixels, both)",
                   "tokens": "excluded (both)"}[a.level]

    # -- report ----------------------------------------------------------------------
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    same_shape = tuple(u_ids.shape) == tuple(j_ids.shape)
    match = (u_ids == j_ids).float().mean().item() if same_shape else float("nan")
    jm = janus.model
    janus_gen_parts = (jm.generation_embeddings, jm.generation_aligner, jm.generation_head)
    print()
    print(f"AR text-to-image, unimm vs transformers Janus  ({date}, unimm {git_rev()})")
    print(f"machine : {cpu_model()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
          f"load avg 1/5/15 min {load_before} before, {load_avg()} after")
    print(f"software: python {platform.python_version()}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, unimm {unimm.__version__}")
    print(f"config  : preset {a.preset}; llama hidden {a.hidden}, intermediate {a.intermediate}, layers {a.layers}, "
          f"heads {a.heads}, kv heads {a.kv_heads}; {a.image_tokens} image tokens ({a.grid}x{a.grid}), "
          f"codebook {a.codebook}")
    print(f"          batch {a.batch} x 2 CFG rows, guidance {a.guidance_scale}, greedy, prompt {prompt_len} tokens, "
          f"fp32 cpu, {a.warmup} warm-up + {a.repeats} timed runs each (alternating)")
    print(f"timed   : --level {a.level}; image decode {decode_note}")
    print(f"params  : backbone {n_params(pipe.model.backbone.lm.get_decoder()) / 1e6:.3f}M vs "
          f"{n_params(janus.model.language_model) / 1e6:.3f}M; gen head+aligner+emb "
          f"{n_params(pipe.model.gen_head) / 1e6:.3f}M vs "
          f"{sum(n_params(m) for m in janus_gen_parts) / 1e6:.3f}M; "
          f"VQ decoder {n_params(pipe.model.image_tokenizer.decoder) / 1e6:.3f}M vs "
          f"{n_params(janus.model.vqmodel.decoder) / 1e6:.3f}M")
    print()
    print(f"{'':14}{'median s/run':>13}{'min':>9}{'max':>9}{'images/s':>10}{'decode ms*':>11}")
    for name in ("unimm", "transformers"):
        v = times[name]
        d = f"{statistics.median(dec[name]) * 1e3:.1f}" if dec[name] else "-"
        print(f"{name:14}{med[name]:13.4f}{min(v):9.4f}{max(v):9.4f}{ips[name]:10.2f}{d:>11}")
    print(f"{'ratio unimm/transformers (images/s)':47}{ratio:.3f}")
    if a.level != "tokens":
        print("*decode ms: the VQ decode alone (same ids, median), already inside the run times")
    noisy = [n for n, v in times.items() if max(v) > 1.5 * min(v)]
    if noisy:
        print(f"note    : {', '.join(noisy)} run times spread > 1.5x (max/min): the machine was likely busy; "
              "the medians resist a few outliers, but rerun on an idle machine for figures to publish")
    print()
    print(f"sanity  : ids unimm {tuple(u_ids.shape)} vs transformers {tuple(j_ids.shape)} "
          f"({'same' if same_shape else 'DIFFERENT'} shape); "
          + (f"identical ids {match:.1%} (weights copied)" if not a.no_copy_weights else "weights not shared")
          + (f"; images unimm {image_size(outs['unimm'])} vs transformers {image_size(outs['transformers'])}"
             if a.level != "tokens" else ""))
    record = {
        "bench": "ar_vs_janus", "date": date, "unimm_rev": git_rev(), "cpu": cpu_model(), "cores": os.cpu_count(),
        "threads": torch.get_num_threads(), "load_avg_before": load_before, "torch": torch.__version__,
        "transformers": transformers.__version__,
        "preset": a.preset, "hidden": a.hidden, "intermediate": a.intermediate, "layers": a.layers,
        "heads": a.heads, "kv_heads": a.kv_heads, "image_tokens": a.image_tokens, "codebook": a.codebook,
        "batch": a.batch, "guidance_scale": a.guidance_scale, "prompt_tokens": prompt_len, "level": a.level,
        "decode": "excluded" if a.level == "tokens" else "included", "decoding": a.decoding,
        "repeats": a.repeats, "warmup": a.warmup,
        "unimm_s": round(med["unimm"], 5), "transformers_s": round(med["transformers"], 5),
        "unimm_img_s": round(ips["unimm"], 3), "transformers_img_s": round(ips["transformers"], 3),
        "ratio": round(ratio, 4), "ids_identical": None if a.no_copy_weights else round(match, 4),
    }
    print("json    : " + json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
