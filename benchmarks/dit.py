"""Sampling speed of the dit family against the in-backbone flow paradigm and the full-recompute loop.

    python benchmarks/dit.py                  # tiny sizes, 32 px
    python benchmarks/dit.py --preset small   # backbone 256 wide x 4 layers, 64 px

Three ways to draw the same number of VAE-latent images with flow matching,
each with CFG (two rows per image) and `--steps` Euler steps, in one run:
- dit: the backbone reads prompt + queries once; each step runs only the
  diffusers MMDiT (unimm's `generate_dit_latents`);
- dit, full recompute: the same model and noise levels, but the backbone
  and connector run again at every step, as a loop that recomputes the
  condition per step does (the ratio isolates running the backbone once);
- flow: unimm's in-backbone flow paradigm (JanusFlow style): every step runs
  the backbone over the image span (prompt cached).
Random weights: speed does not depend on training. Each time includes
decoding to pixels. Prints a table and appends a JSON line to --out.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
import warnings

import torch

import unimm
from unimm.heads.dit import shifted_sigmas
from unimm.pipelines.load import CONFIG_DIRS, read_model_config
from unimm.processing import left_pad
from unimm.sampling.cfg import guide, with_unconditional
from unimm.sampling.dit import generate_dit_latents
from unimm.sampling.flow import generate_latents

PRESETS = {
    "tiny": dict(backbone=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2), image_size=32),
    "small": dict(backbone=dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=8,
                                num_key_value_heads=4), image_size=64),
}


def build(name: str, preset: dict):
    cfg = read_model_config(CONFIG_DIRS[0] / f"{name}.yaml")
    cfg["backbone"]["config"].update(preset["backbone"], max_position_embeddings=2048)
    cfg["image_tokenizer"]["image_size"] = preset["image_size"]
    if name == "tiny-flow":
        cfg["generation"]["patch_size"] = 2  # as the MMDiT's patch size: the same image tokens
    else:
        cfg["generation"]["generator"]["config"]["pos_embed_max_size"] = preset["image_size"] // 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return unimm.load(cfg)


@torch.inference_mode()
def dit_full_recompute(model, ids, mask, steps, guidance_scale, generator):
    """generate_dit_latents with the condition (backbone + connector) recomputed at every step."""
    head, B = model.gen_head, ids.shape[0]
    rows_ids, rows_mask, _ = with_unconditional(model, ids, mask, guidance_scale)
    sigmas = shifted_sigmas(steps)
    x = torch.randn(B, head.c, head.grid, head.grid, generator=generator)
    for i in range(steps):
        condition = head.condition(model, rows_ids, rows_mask)
        v = guide(head.velocity(torch.cat([x, x]), sigmas[i].expand(2 * B), condition), B, guidance_scale)
        x = x + (sigmas[i + 1] - sigmas[i]) * v
    return x


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    p.add_argument("--batch", type=int, default=8, help="images per call")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="runs/bench-dit.jsonl")
    p.add_argument("--compile", action="store_true",
                   help="also time the dit sampler with compile=True (compiled once, untimed, first)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    preset = PRESETS[a.preset]
    dit, flow = build("tiny-dit", preset), build("tiny-flow", preset)
    prompts = ["a small red circle on the left", "two blue squares", "a large green star at the top",
               "a yellow triangle and a purple hexagon"] * (a.batch // 4 + 1)
    prompts = prompts[:a.batch]

    def ids_for(pipe):
        return left_pad([pipe.processor.generation_ids(t) for t in prompts], pipe.model.token_ids.pad)

    d_ids, d_mask = ids_for(dit)
    f_ids, f_mask = ids_for(flow)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    runs = {
        "dit (backbone once)": lambda: dit.model.decode_images(
            generate_dit_latents(dit.model, d_ids, d_mask, steps=a.steps, guidance_scale=2.0, generator=g())),
        "dit, full recompute": lambda: dit.model.decode_images(
            dit_full_recompute(dit.model, d_ids, d_mask, a.steps, 2.0, g())),
        "flow (in-backbone)": lambda: flow.model.decode_images(
            generate_latents(flow.model, f_ids, f_mask, steps=a.steps, guidance_scale=2.0, generator=g())),
    }
    if a.compile:
        compiled = lambda: dit.model.decode_images(  # noqa: E731
            generate_dit_latents(dit.model, d_ids, d_mask, steps=a.steps, guidance_scale=2.0, generator=g(),
                                 compile=True))
        compiled()  # compiles (tens of seconds on a CPU), untimed
        runs["dit, compiled"] = compiled
    results = {name: a.batch / timed(fn, a.repeats) for name, fn in runs.items()}
    base = results["dit, full recompute"]
    print(f"{a.preset}: {a.batch} images at {preset['image_size']} px, {a.steps} Euler steps, CFG, "
          f"{torch.get_num_threads()} thread(s)")
    for name, ips in results.items():
        print(f"  {name:22s} {ips:8.2f} images/s   x{ips / base:.2f} vs full recompute")
    record = {"date": datetime.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "threads": torch.get_num_threads(), **vars(a), "images_per_s": results,
              "params": {"dit generator": sum(x.numel() for x in dit.model.gen_head.parameters()),
                         "backbone": sum(x.numel() for x in dit.model.backbone.parameters())}}
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "a") as f:
        f.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
