#!/usr/bin/env bash
# Train the DiT default (weights/default-dit) from scratch on the shapes world, the way the shipped
# one was made, then evaluate and install it. Run it after scripts/train_default.sh: it reads that
# script's runs/default/stage3/final (the first DiT default was built on stage 3's understanding
# path) and runs/default/stage10/final (the shipped one's generator was carried onto stage 10's).
# Every step is a unimm command with a config in configs/recipes/; extra arguments are passed to
# every training stage (e.g. steps=... for a quick try). BENCHMARKS.md records each run's figures.
# Usage: bash scripts/train_default_dit.sh
set -euo pipefail
cd "$(dirname "$0")/.."
R=configs/recipes
# 1. The first DiT default, on stage 3's understanding path: the generator from scratch, its edges
# ControlNet continued from each export four times (12,500 steps in all), its IP-Adapter, then the
# generator trained on twice more with the two modules frozen.
unimm train $R/dit.yaml init_from=runs/default/stage3/final "$@"
unimm train $R/dit-controlnet.yaml "$@"
unimm train $R/dit-controlnet.yaml init_from=runs/dit-controlnet/stage/final output_dir=runs/dit-controlnet/stage2 \
  steps=1500 data.sources.t2i.seed=75 optim.lr=3.0e-4 optim.warmup_steps=50 "$@"
unimm train $R/dit-controlnet.yaml init_from=runs/dit-controlnet/stage2/final output_dir=runs/dit-controlnet/stage3 \
  steps=3000 data.sources.t2i.seed=77 optim.lr=3.0e-4 optim.warmup_steps=50 "$@"
unimm train $R/dit-controlnet.yaml init_from=runs/dit-controlnet/stage3/final output_dir=runs/dit-controlnet/stage4 \
  steps=3000 data.sources.t2i.seed=79 optim.lr=2.0e-4 optim.warmup_steps=50 "$@"
unimm train $R/dit-controlnet.yaml init_from=runs/dit-controlnet/stage4/final output_dir=runs/dit-controlnet/stage5 \
  steps=3000 data.sources.t2i.seed=81 optim.lr=1.5e-4 optim.warmup_steps=50 "$@"
unimm train $R/dit-ip-adapter.yaml init_from=runs/dit-controlnet/stage5/final "$@"
unimm train $R/dit-continue.yaml init_from=runs/dit-ip-adapter/stage/final "$@"
unimm train $R/dit-continue2.yaml "$@"
# 2. That generator carried onto stage 10's understanding path (the AR default's SigLIP keeps the
# shapes an IP-Adapter must read), then its ControlNet and IP-Adapter trained on it.
unimm train $R/dit-transfer.yaml "$@"
unimm train $R/dit-transfer-controlnet.yaml "$@"
unimm train $R/dit-transfer-ip-adapter.yaml "$@"
# 3. The generator trained on, on fresh scenes weighted towards counts and pairs, the two modules
# frozen (shipped 2026-12-04: 41.8 -> 52.8% generation for one draw).
unimm train $R/dit-transfer-continue.yaml "$@"
# Installed with save_pretrained: an earlier default there is swapped out atomically, anything
# else someone put in weights/default-dit is refused rather than deleted. It draws each image as the
# best of 8 that it judges itself (sampling.best_of; the judges are in unimm/pipelines/rerank.py).
python -c "import unimm; unimm.load('runs/dit-transfer/continue/final', changes={'sampling': {'best_of': 8}}).save_pretrained('weights/default-dit', dtype='bfloat16')"
unimm eval --model weights/default-dit --task all --n 400 --out runs/dit-transfer/eval.json
unimm eval --model weights/default-dit --task control --n 200 --out runs/dit-transfer/eval-control.json
unimm eval --model weights/default-dit --task reference --n 200 --out runs/dit-transfer/eval-reference.json
