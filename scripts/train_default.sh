#!/usr/bin/env bash
# Train the default model from scratch on the shapes world, evaluate it and install it
# as weights/default. Every step is a unimm command with a config in configs/recipes/;
# extra arguments are passed to every training stage (e.g. steps=... for a quick try).
# Usage: bash scripts/train_default.sh
#
# The stages run as one process with 16 samples per step, as the shipped weights were
# trained. For several CPU processes use torchrun (see the README's Training section);
# batch_size is per process, so halve it to keep 16 samples per step.
set -euo pipefail
cd "$(dirname "$0")/.."
unimm train-siglip configs/recipes/siglip-shapes.yaml
unimm train-tokenizer configs/recipes/vq-shapes32.yaml
# Only the VQ decoder learns here; the codes the stages train on do not change.
unimm train-tokenizer configs/recipes/vq-shapes32-decoder.yaml
unimm train configs/recipes/stage1.yaml "$@"
unimm train configs/recipes/stage2.yaml "$@"
unimm train configs/recipes/stage3.yaml "$@"
# Installed with save_pretrained: an earlier default there is swapped out atomically, anything
# else someone put in weights/default is refused rather than deleted.
python -c "import unimm; unimm.load('runs/default/stage3/final').save_pretrained('weights/default', dtype='bfloat16')"
unimm eval --model weights/default --task all --n 400 --out runs/default/eval.json --grid runs/default/eval.png
unimm eval --model weights/default --task tokenizer --n 400 --out runs/default/eval-tokenizer.json
