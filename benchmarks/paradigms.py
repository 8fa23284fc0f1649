"""Sampling speed of the three generation paradigms on one backbone, in one run.

    python benchmarks/paradigms.py                 # tiny backbone, 32 px
    python benchmarks/paradigms.py --preset small  # hidden 256, 4 layers, 64 px

All three models share the backbone sizes, the prompt batch, CFG (2 rows per
image) and the output size; they differ only in the generation path:
- autoregressive: one backbone pass per VQ token (N passes, static KV cache);
- masked: `--steps` parallel passes over all N VQ tokens (MaskGIT schedule);
- flow: `--steps` Euler ODE steps over the latent grid (patch 1), so the same
  number of image tokens as the VQ paradigms (both tokenizers 4x down).
Each time includes decoding to pixels. Random weights: speed does not depend
on training (masked and flow run a fixed number of passes; AR always N).

The peer comparison: Show-o and JanusFlow recompute prompt + image every
step; unimm prefills the prompt once and reruns only the image span
(`cache_prompt=True`). The same model and sampler with `cache_prompt=False`
is that full-recompute baseline, so the ratio isolates the prompt cache. With
prompts this short the gain is modest; it grows with the prompt length
(`--prompt-words`).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time

import torch
from tqdm import tqdm

import unimm
from unimm.pipelines.load import read_model_config, CONFIG_DIRS
from unimm.processing import left_pad
from unimm.sampling.autoregressive import generate_image_tokens
from unimm.sampling.flow import generate_latents
from unimm.sampling.masked import generate_masked_tokens

PRESETS = {
    "tiny": dict(backbone=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2), image_size=32, vq_levels=[16, 32, 32]),
    "small": dict(backbone=dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=8,
                                num_key_value_heads=4), image_size=64, vq_levels=[16, 32, 32]),
}


def config_for(paradigm: str, preset: dict) -> dict:
    name = {"autoregressive": "tiny", "masked": "tiny-masked", "flow": "tiny-flow"}[paradigm]
    cfg = read_model_config(CONFIG_DIRS[0] / f"{name}.yaml")
    cfg["backbone"]["config"].update(preset["backbone"], max_position_embeddings=2048)
    size = preset["image_size"]
    if paradigm == "flow":
        # Patch 1 on the 4x-down latent grid: as many image tokens as the VQ paradigms (4x down).
        cfg["image_tokenizer"]["image_size"] = size
        cfg["generation"]["patch_size"] = 1
    else:
        cfg["image_tokenizer"].update(image_size=size, block_out_channels=preset["vq_levels"])
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=PRESETS, default="tiny")
    ap.add_argument("--batch", type=int, default=4, help="images per run (CFG doubles the rows)")
    ap.add_argument("--steps", type=int, default=12, help="masked passes and flow ODE steps")
    ap.add_argument("--guidance-scale", type=float, default=3.0)
    ap.add_argument("--prompt-words", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    preset = PRESETS[a.preset]
    prompt = " ".join((["a", "large", "red", "circle", "on", "the", "left"] * 64)[: a.prompt_words])

    runs = {}
    for paradigm in ("autoregressive", "masked", "flow"):
        pipe = unimm.load(config_for(paradigm, preset))
        model = pipe.model
        ids, mask = left_pad([pipe.processor.generation_ids(prompt)] * a.batch, model.token_ids.pad)
        g = dict(guidance_scale=a.guidance_scale)

        def make(fn, model=model, ids=ids, mask=mask, **kw):  # bind this paradigm's model now
            def run():
                with torch.inference_mode():
                    return model.decode_images(fn(model, ids, mask, generator=torch.Generator().manual_seed(0), **g, **kw))
            return run

        if paradigm == "autoregressive":
            runs[paradigm] = (make(generate_image_tokens, temperature=1.0), model.num_image_tokens, None)
        elif paradigm == "masked":
            runs[paradigm] = (make(generate_masked_tokens, steps=a.steps), model.num_image_tokens,
                              make(generate_masked_tokens, steps=a.steps, cache_prompt=False))
        else:
            runs[paradigm] = (make(generate_latents, steps=a.steps), model.num_image_tokens,
                              make(generate_latents, steps=a.steps, cache_prompt=False))
        prompt_len = ids.shape[1]

    times = {k: [] for k in runs}
    times.update({f"{k} (full recompute)": [] for k, v in runs.items() if v[2] is not None})
    order = [(k, v[0]) for k, v in runs.items()] + [(f"{k} (full recompute)", v[2]) for k, v in runs.items() if v[2]]
    for _, fn in order:  # warm-up
        fn()
    for _ in tqdm(range(a.repeats), desc="repeats"):
        for name, fn in order:  # interleaved so drift hits every variant alike
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\nSampling speed per paradigm ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC)")
    print(f"machine : {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {a.threads}, "
          f"torch {torch.__version__}, load avg {os.getloadavg()[0]:.2f}")
    print(f"config  : preset {a.preset}, backbone {preset['backbone']}, {preset['image_size']} px images, "
          f"batch {a.batch} (x2 CFG rows), prompt {prompt_len} tokens, {a.steps} steps (masked/flow), median of {a.repeats}\n")
    print(f"{'paradigm':34s} {'image tokens':>12s} {'passes':>7s} {'s/run':>8s} {'images/s':>9s}")
    for name in times:
        base = name.split(" ")[0]
        passes = runs[base][1] if base == "autoregressive" else a.steps
        print(f"{name:34s} {runs[base][1]:12d} {passes:7d} {med[name]:8.3f} {a.batch / med[name]:9.2f}")
    for k in ("masked", "flow"):
        print(f"ratio {k}: prompt cache / full recompute (images/s) = {med[k + ' (full recompute)'] / med[k]:.2f}")


if __name__ == "__main__":
    main()
