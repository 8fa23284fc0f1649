"""Every benchmark script runs in a smoke mode (tiny sizes, one repeat), so none can rot unnoticed.

The figures themselves are taken by hand and recorded in BENCHMARKS.md; these runs only
check that each script still works end to end and prints its comparison.
benchmarks/janus_pro_shapes.py is left out: it builds Janus-Pro-1B-sized checkpoints (~8 GB).
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SMOKE = {
    "ar_vs_janus.py": (["--preset", "tiny", "--repeats", "1", "--warmup", "0", "--threads", "1"],
                       "ratio unimm/transformers"),
    "ar_vs_janus.py --model": (["--model", "default", "--level", "tokens", "--decoding", "jacobi", "--batch", "1",
                                "--repeats", "1", "--warmup", "0", "--threads", "1"], "identical ids 100.0%"),
    "dit.py": (["--batch", "4", "--steps", "2", "--repeats", "1", "--threads", "1", "--out", "{tmp}/dit.jsonl"],
               "vs full recompute"),
    "dit_training.py": (["--smoke", "--threads", "1"], "prompt states (backbone fwd)"),
    "dit_training.py --compare controlnet": (["--smoke", "--threads", "1", "--compare", "controlnet"],
                                             "maps encoded once (cache_dir)"),
    "dit_training.py --compare ip_adapter": (["--smoke", "--threads", "1", "--compare", "ip_adapter"],
                                             "targets encoded once (cache_dir)"),
    "paradigms.py": (["--batch", "2", "--steps", "2", "--repeats", "1", "--threads", "1"],
                     "prompt cache / full recompute"),
    "train_throughput.py": (["--smoke", "--threads", "1"], "ratio cached / every step"),
    "train_throughput.py --compare processes": (["--smoke", "--threads", "2", "--compare", "processes"],
                                                "ratio processes / threads"),
    "train_throughput.py --compare precision": (["--smoke", "--threads", "1", "--compare", "precision"],
                                                "ratios against float32"),
    "chat_cache.py": (["--model", "tiny", "--repeats", "2", "--threads", "1"], "ratio TTFT fresh / reused"),
    "jacobi.py": (["--model", "tiny", "--batches", "1", "--repeats", "1", "--threads", "1"],
                  "passes sequential / jacobi"),
    "shape_learning.py": (["--steps", "4", "--every", "2", "--train", "64", "--test", "250", "--threads", "1"],
                          "steps to 90% held-out: vit"),
    "probes.py": (["--n", "200", "--test", "50", "--llm-n", "40", "--iters", "10"], "accuracy on held-out scenes"),
    "caption_likelihood.py": (["--n", "3", "--threads", "1"], "binding  true caption beats the swapped one"),
    "binding_probes.py": (["--n", "200", "--test", "50", "--attention-steps", "5", "--hops", "--threads", "1"],
                          "at the answer position"),
    "grounding_attention.py": (["--model", "tiny-xattn", "--n", "8"], "two objects"),
    "best_of.py": (["--model", "tiny", "--best-of", "1", "2", "--batch", "2", "--repeats", "1"], "judging"),
}


def test_every_benchmark_has_a_smoke_run():
    scripts = {p.name for p in (ROOT / "benchmarks").glob("*.py")}
    assert scripts - {k.split()[0] for k in SMOKE} == {"janus_pro_shapes.py"}


@pytest.mark.parametrize("script", sorted(SMOKE))
def test_benchmark_smoke_run(script, tmp_path):
    args, expected = SMOKE[script]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script.split()[0]), *(a.format(tmp=tmp_path) for a in args)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-8000:]
    assert expected in run.stdout, run.stdout[-2000:]
