#!/usr/bin/env bash
# Train the default model from scratch on the shapes world, evaluate it and install it
# as weights/default. Every step is a unimm command with a config in configs/recipes/;
# extra arguments are passed to every training stage (e.g. steps=... for a quick try).
# Usage: bash scripts/train_default.sh
#
# The stages take 16 samples per process per step. Without a GPU they run as two
# single-threaded data-parallel processes (configs/accelerate/cpu-2proc.yaml): on a
# small CPU that is faster than one process with two threads. With a GPU they run
# in one process with grad_accum=2. Either way a step sees 32 samples.
set -euo pipefail
cd "$(dirname "$0")/.."
unimm train-siglip configs/recipes/siglip-shapes.yaml
unimm train-tokenizer configs/recipes/vq-shapes32.yaml
stage() {
  if python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    unimm train "configs/recipes/$1.yaml" grad_accum=2 "${@:2}"
  else
    OMP_NUM_THREADS=1 accelerate launch --config_file configs/accelerate/cpu-2proc.yaml \
      -m unimm.train "configs/recipes/$1.yaml" "${@:2}"
  fi
}
stage stage1 "$@"
stage stage2 "$@"
stage stage3 "$@"
rm -rf weights/default.new && cp -r runs/default/stage3/final weights/default.new
rm -rf weights/default && mv weights/default.new weights/default
unimm eval --model weights/default --task all --n 400 --out runs/default/eval.json --grid runs/default/eval.png
