#!/usr/bin/env bash
# Train the default model from scratch on the shapes world, evaluate it and install it
# as weights/default. Every step is a unimm command with a config in configs/recipes/ or
# configs/tokenizers/; extra arguments are passed to every training stage (e.g. steps=...
# for a quick try).
# Usage: bash scripts/train_default.sh
#
# The stages run as one process with 16 samples per step, as the shipped weights were
# trained. For several CPU processes use torchrun (see the README's Training section);
# batch_size is per process, so halve it to keep 16 samples per step.
set -euo pipefail
cd "$(dirname "$0")/.."
# The understanding encoder: SigLIP with shape and place hard negatives (stages 1-3), and the
# one stage 4 swaps in: the same pretraining plus caption-token tagging, four rounds.
unimm train-siglip configs/recipes/siglip-shapes.yaml
unimm train-siglip configs/recipes/siglip-shapes-tagged.yaml
unimm train-siglip configs/recipes/siglip-shapes-tagged-continue.yaml
unimm train-siglip configs/recipes/siglip-shapes-tagged-continue.yaml init_from=runs/siglip-tagged2/model \
  data.seed=13 output_dir=runs/siglip-tagged3
unimm train-siglip configs/recipes/siglip-shapes-tagged-continue.yaml init_from=runs/siglip-tagged3/model \
  data.seed=14 output_dir=runs/siglip-tagged4
# The 64 px VQ (16x16 FSQ codes): from scratch, two L1 continuations, then three with the
# outline pixels weighted ever more (BENCHMARKS.md, "64 px image tokenizers", has each ceiling).
T=configs/tokenizers
unimm train-tokenizer $T/vq-shapes64-4x.yaml output_dir=runs/default/vq64-1
unimm train-tokenizer $T/vq-shapes64-4x-continue.yaml tokenizer.checkpoint=runs/default/vq64-1/tokenizer \
  output_dir=runs/default/vq64-2 steps=900 lr=6.0e-4 warmup_steps=20 data.seed=13
unimm train-tokenizer $T/vq-shapes64-4x-continue.yaml tokenizer.checkpoint=runs/default/vq64-2/tokenizer \
  output_dir=runs/default/vq64-3
unimm train-tokenizer $T/vq-shapes64-4x-edges.yaml tokenizer.checkpoint=runs/default/vq64-3/tokenizer \
  output_dir=runs/default/vq64-4
unimm train-tokenizer $T/vq-shapes64-4x-edges.yaml tokenizer.checkpoint=runs/default/vq64-4/tokenizer \
  output_dir=runs/default/vq64-5 edge_weight=16 data.seed=17
unimm train-tokenizer $T/vq-shapes64-4x-edges.yaml tokenizer.checkpoint=runs/default/vq64-5/tokenizer \
  output_dir=runs/default/vq64-6 edge_weight=24 data.seed=19
# The unified model: three stages on the frozen SigLIP and VQ (targets cached once), stage 2
# continued with more generation as the shipped model was; stage 4 swaps in the tagged SigLIP;
# stage 6 trains 16,000 more steps, mostly generation, pairs named in reading order; stage 7
# 17,000 more with half of the new scenes pairs; stages 8 to 11 15,000 more each on fresh
# scenes (stage 5, configs/recipes/stage5-regions.yaml, was measured and not shipped).
unimm train configs/recipes/stage1.yaml "$@"
unimm train configs/recipes/stage2.yaml "$@"
unimm train configs/recipes/stage2b.yaml "$@"
unimm train configs/recipes/stage3.yaml "$@"
unimm train configs/recipes/stage4-tagged.yaml "$@"
unimm train configs/recipes/stage6-long.yaml "$@"
unimm train configs/recipes/stage7-pairs.yaml "$@"
unimm train configs/recipes/stage8-fresh.yaml "$@"
unimm train configs/recipes/stage9-fresh.yaml "$@"
unimm train configs/recipes/stage10-fresh.yaml "$@"
unimm train configs/recipes/stage11-fresh.yaml "$@"
# Installed with save_pretrained: an earlier default there is swapped out atomically, anything
# else someone put in weights/default is refused rather than deleted. It ships drawing each image
# as the best of 8 that it describes best itself (chosen on prompt seed 7; BENCHMARKS.md, best-of-N).
python -c "import unimm; unimm.load('runs/default/stage11/final', changes={'sampling': {'best_of': 8}}).save_pretrained('weights/default', dtype='bfloat16')"
unimm eval --model weights/default --task all --n 400 --out runs/default/eval.json --grid runs/default/eval.png
unimm eval --model weights/default --task tokenizer --n 400 --out runs/default/eval-tokenizer.json
python scripts/sample_grid.py --model weights/default --out runs/default/samples.png
