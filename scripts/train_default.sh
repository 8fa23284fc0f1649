#!/usr/bin/env bash
# Train the default model from scratch on the shapes world, evaluate it and install it
# as weights/default. Every step is a unimm command with a config in configs/recipes/;
# extra arguments are passed to every training stage (e.g. steps=... for a quick try).
# Usage: bash scripts/train_default.sh
set -euo pipefail
cd "$(dirname "$0")/.."
unimm train-siglip configs/recipes/siglip-shapes.yaml
unimm train-tokenizer configs/recipes/vq-shapes32.yaml
unimm train configs/recipes/stage1.yaml "$@"
unimm train configs/recipes/stage2.yaml "$@"
unimm train configs/recipes/stage3.yaml "$@"
rm -rf weights/default.new && cp -r runs/default/stage3/final weights/default.new
rm -rf weights/default && mv weights/default.new weights/default
if unimm eval --help >/dev/null 2>&1; then
  unimm eval --model weights/default --task all --n 400 --out runs/default/eval.json --grid runs/default/eval.png
fi
