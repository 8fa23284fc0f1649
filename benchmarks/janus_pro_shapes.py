"""Janus-Pro-1B's real shapes, random weights: transformers' Janus vs the same checkpoint converted to unimm.

    python benchmarks/janus_pro_shapes.py                     # 64 image tokens (an 8x8 grid), 1 thread
    python benchmarks/janus_pro_shapes.py --image-tokens 576  # the real 24x24 grid (slow on a CPU)

What it does, in one run (nothing is downloaded):
1. builds `JanusForConditionalGeneration` at Janus-Pro-1B's shapes with random
   weights and saves it in transformers' format with a Janus-Pro processor
   (a small BPE tokenizer stands in for DeepSeek's: prompt ids, not the
   vocabulary, reach the model, whose embedding table keeps 102400 rows);
2. converts the checkpoint with `convert_janus` (timed);
3. times transformers' `generate(generation_mode="image")` on the checkpoint
   (`from_pretrained`) and unimm's sampler (`generate_image_tokens`) on the
   converted one, on the prompt ids the processor builds: greedy, CFG 5
   (2 rows); then checks that both gave identical image ids.

One model is alive at a time (each is about 8 GB in float32), so the two are
timed one after the other (`--unimm-first` swaps the order), not interleaved. The checkpoint keeps the real
576-token (24x24) VQ grid; `--image-tokens` shortens the sampling loop on both
sides (Janus: `vision_config.num_image_tokens`, read by `generate`; unimm: the
VQ `image_size`, which sets its grid), so image decoding is not part of the
timed runs. `--decode` times one 384 px decode per side at the real grid.

Shapes (Janus-Pro-1B, as transformers' Janus port holds them):
- vision: JanusVisionConfig defaults, which the port documents as Janus-Pro-1B's
  (configuration_janus.py, @auto_docstring(checkpoint="deepseek-community/Janus-Pro-1B")):
  SigLIP-L, hidden 1024, 24 layers, 16 heads, 384 px, patch 16, MLP ratio 4,
  aligner depth 2 to 2048, 576 image tokens;
- VQ: JanusVQVAEConfig defaults (same source): codebook 16384 x 8, base 128
  channels, multipliers (1, 1, 2, 2, 4) = 16x down, 2 ResNet blocks per level,
  latent 256; generation aligner 2 layers to 2048, head 2048 -> 2048 -> 16384;
- text: DeepSeek-LLM-1.3B's Llama as in deepseek-ai/Janus-Pro-1B's config.json
  `language_config` (copied key by key by transformers' convert_janus_weights_to_hf.py):
  hidden 2048, intermediate 5632, 24 layers, 16 heads (no GQA), vocab 102400,
  16384 positions; from the released config as we know it, not re-read here
  (no network). lm_head untied.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the small Janus tokenizer the tests use

import unimm  # noqa: E402
from unimm.models.unified import CONFIG_NAME, UnifiedConfig, UnifiedModel  # noqa: E402
from unimm.sampling.autoregressive import generate_image_tokens  # noqa: E402

TEXT = dict(vocab_size=102400, hidden_size=2048, intermediate_size=5632, num_hidden_layers=24,
            num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=16384, tie_word_embeddings=False)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image-tokens", type=int, default=64, help="sampling-loop length, a square number (real: 576)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--guidance-scale", type=float, default=5.0)
    p.add_argument("--prompt", default="A stunning princess from kabul in red, white traditional clothing")
    p.add_argument("--decode", action="store_true", help="also time one real-size (384 px) VQ decode per side")
    p.add_argument("--unimm-first", action="store_true", help="time unimm first (default: transformers first)")
    p.add_argument("--workdir", default=None, help="where the ~8 GB checkpoints go (default: a temp dir, removed)")
    a = p.parse_args(argv)
    if math.isqrt(a.image_tokens) ** 2 != a.image_tokens or a.image_tokens > 576:
        p.error("--image-tokens must be a square number <= 576")
    return a


def build_and_save_janus(directory: Path):
    from janus_helpers import EOS, build_tokenizer
    from transformers import GenerationConfig, JanusConfig, JanusForConditionalGeneration, LlamaConfig
    from transformers.models.janus.configuration_janus import JanusVisionConfig, JanusVQVAEConfig
    from transformers.models.janus.image_processing_pil_janus import JanusImageProcessorPil
    from transformers.models.janus.processing_janus import JanusProcessor

    from unimm.interop.janus.prompts import janus_chat_template

    tok = build_tokenizer()
    text = LlamaConfig(**TEXT, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id)
    config = JanusConfig(text_config=text, vision_config=JanusVisionConfig(), vq_config=JanusVQVAEConfig(),
                         image_token_id=tok.convert_tokens_to_ids(tok.image_token), tie_word_embeddings=False)
    torch.manual_seed(0)
    model = JanusForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        guidance_scale=5.0, temperature=1.0, generation_kwargs={"boi_token_id": tok.convert_tokens_to_ids(tok.boi_token)})
    model.save_pretrained(directory)
    processor = JanusProcessor(image_processor=JanusImageProcessorPil(image_mean=[0.5] * 3, image_std=[0.5] * 3),
                               tokenizer=tok, chat_template=janus_chat_template(EOS), use_default_system_prompt=True,
                               num_image_tokens=576)
    processor.save_pretrained(directory)
    return model, processor


def stream_weights(model: torch.nn.Module, directory: Path) -> None:
    """Copy the safetensors weights into `model` one tensor at a time.

    `unimm.load` reads the whole state dict before copying it in (a second ~8 GB
    here); streaming keeps one copy alive. Every name must be covered.
    """
    from safetensors import safe_open

    params, seen = model.state_dict(keep_vars=True), set()
    with torch.no_grad():
        for path in sorted(directory.glob("*.safetensors")):
            with safe_open(str(path), "pt") as f:
                for k in f.keys():
                    params[k].copy_(f.get_tensor(k))
                    seen.add(k)
    missing = set(params) - seen
    if missing:
        raise RuntimeError(f"weights missing from {directory}: {sorted(missing)[:5]}")


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def run_times(fn, a) -> tuple[list[float], torch.Tensor]:
    for _ in range(a.warmup):
        fn()
    times, out = [], None
    for _ in range(a.repeats):
        t, out = timed(fn)
        times.append(t)
    return times, out


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def load_avg() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def time_transformers(a, work: Path, inputs) -> dict:
    from transformers import JanusForConditionalGeneration

    janus = JanusForConditionalGeneration.from_pretrained(work / "janus", dtype=torch.float32).eval()
    janus.model.vision_model.config.num_image_tokens = a.image_tokens  # the loop length generate() reads

    def run():
        with torch.inference_mode():
            return janus.generate(**inputs, generation_mode="image", do_sample=False, guidance_scale=a.guidance_scale)

    times, ids = run_times(run, a)
    out = {"times": times, "ids": ids, "params": n_params(janus), "decode": None}
    if a.decode:
        with torch.inference_mode():
            out["decode"] = timed(lambda: janus.decode_image_tokens(torch.zeros(1, 576, dtype=torch.long)))[0]
    return out


def time_unimm(a, work: Path, inputs) -> dict:
    data = json.loads((work / "unimm" / CONFIG_NAME).read_text())
    full = UnifiedConfig.from_dict(data)
    data["image_tokenizer"]["image_size"] = math.isqrt(a.image_tokens) * 16  # the shortened grid
    model = UnifiedModel(UnifiedConfig.from_dict(data)).eval()
    t_load = timed(lambda: stream_weights(model, work / "unimm"))[0]
    assert model.num_image_tokens == a.image_tokens

    def run():
        return generate_image_tokens(model, inputs["input_ids"], inputs["attention_mask"],
                                     guidance_scale=a.guidance_scale, temperature=0.0)

    times, ids = run_times(run, a)
    out = {"times": times, "ids": ids, "params": n_params(model), "decode": None, "load": t_load}
    if a.decode:
        vq = unimm.tokenizers.build_image_tokenizer(full.image_tokenizer).eval()  # the real 24x24 grid
        vq.load_state_dict(model.image_tokenizer.state_dict())
        with torch.inference_mode():
            out["decode"] = timed(lambda: vq.decode(torch.zeros(1, 576, dtype=torch.long)))[0]
    return out


def main(argv=None) -> None:
    from unimm.interop import convert_janus

    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    work = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="janus-pro-shapes-"))
    work.mkdir(parents=True, exist_ok=True)
    load_before = load_avg()
    try:
        t_build, (janus, processor) = timed(lambda: build_and_save_janus(work / "janus"))
        del janus  # one ~8 GB model alive at a time; each side loads its own from disk
        gc.collect()
        text = processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": a.prompt}]}],
                                             add_generation_prompt=True)
        inputs = processor(text=text, generation_mode="image", return_tensors="pt")
        t_convert = timed(lambda: convert_janus(work / "janus", work / "unimm"))[0]
        order = ("unimm", "transformers") if a.unimm_first else ("transformers", "unimm")
        res = {}
        for name in order:
            res[name] = (time_unimm if name == "unimm" else time_transformers)(a, work, inputs)
            gc.collect()
    finally:
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)
    t_janus, t_unimm = res["transformers"]["times"], res["unimm"]["times"]
    j_ids, u_ids = res["transformers"]["ids"], res["unimm"]["ids"]
    janus_params, unimm_params = res["transformers"]["params"], res["unimm"]["params"]
    dec_janus, dec_unimm, t_load = res["transformers"]["decode"], res["unimm"]["decode"], res["unimm"]["load"]

    med_j, med_u = statistics.median(t_janus), statistics.median(t_unimm)
    same = torch.equal(j_ids, u_ids)
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    print()
    print(f"Janus-Pro-1B shapes, random weights: unimm vs transformers  ({date})")
    print(f"machine : {cpu_model()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
          f"load avg {load_before} before, {load_avg()} after")
    print(f"software: python {platform.python_version()}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, unimm {unimm.__version__}")
    print(f"model   : {janus_params / 1e9:.3f}B parameters (transformers), {unimm_params / 1e9:.3f}B (unimm), fp32 cpu")
    print(f"run     : prompt {inputs['input_ids'].shape[1]} tokens, {a.image_tokens} image tokens "
          f"(real: 576), 1 image x 2 CFG rows, guidance {a.guidance_scale}, greedy; "
          f"{a.warmup} warm-up + {a.repeats} timed runs each, one model after the other ({' then '.join(order)})")
    print(f"setup   : build + save transformers checkpoint {t_build:.1f} s, convert_janus {t_convert:.1f} s, "
          f"unimm weights copy-in {t_load:.1f} s")
    print(f"{'':14}{'median s/run':>13}{'min':>9}{'max':>9}{'image tok/s':>13}")
    for name, t in (("unimm", t_unimm), ("transformers", t_janus)):
        print(f"{name:14}{statistics.median(t):13.3f}{min(t):9.3f}{max(t):9.3f}{a.image_tokens / statistics.median(t):13.2f}")
    print(f"ratio unimm/transformers (tokens/s): {med_j / med_u:.3f}")
    print(f"ids     : {'identical' if same else 'DIFFERENT'} ({tuple(u_ids.shape)})")
    if a.decode:
        print(f"decode  : one 384 px image from 576 ids: unimm {dec_unimm:.2f} s, transformers {dec_janus:.2f} s")
    record = {"bench": "janus_pro_shapes", "date": date, "cpu": cpu_model(), "threads": torch.get_num_threads(),
              "load_avg_before": load_before, "order": list(order), "image_tokens": a.image_tokens, "repeats": a.repeats,
              "unimm_s": round(med_u, 4), "transformers_s": round(med_j, 4), "ratio": round(med_j / med_u, 4),
              "ids_identical": same, "convert_s": round(t_convert, 1), "params": janus_params,
              "decode_unimm_s": dec_unimm, "decode_transformers_s": dec_janus}
    print("json    : " + json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
