"""Chat follow-up turns with and without reusing the conversation's KV cache, in one run.

    python benchmarks/chat_cache.py                  # the shipped default, a 3-turn history
    python benchmarks/chat_cache.py --turns 6
    python benchmarks/chat_cache.py --preset medium  # random weights, a 1024-wide 8-layer backbone
    python benchmarks/chat_cache.py --model tiny --repeats 2   # the smoke run

A conversation about one shapes-world scene (the image in the first turn,
follow-up questions about it after, as in the app) is built once with greedy
answers; `--image-every-turn` shows a new scene in every turn instead. Then, for the turn after `--turns` earlier ones:
- reuse: the previous turn is answered first (untimed), leaving its cache
  behind as it does in the app, then the follow-up is timed;
- fresh: the same follow-up with the cache cleared, so the whole conversation
  (every earlier image through the encoder, every token through the
  backbone) is prefilled, as before the cache was kept.
Time to first token (TTFT) is the wait until the first streamed piece;
tokens/s is the decode rate of a long answer after it. Both calls return the
same greedy answer (checked).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time

import torch

import unimm
from unimm.data.shapes import ShapesWorld, render

# Random-weight models with a wider backbone than the shipped default (whose 4 x 256 layers
# are so small that a forward's fixed cost, not its token count, sets the time).
PRESETS = {
    "medium": {"base": "tiny", "backbone": {"config": {
        "hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 8, "num_attention_heads": 16,
        "num_key_value_heads": 16, "max_position_embeddings": 2048}}},
}

QUESTIONS = ["What colour is the {}?", "How many objects are there?", "Describe the image.",
             "What shape is the object?", "Where is the {}?", "What size is the {}?"]


def build_conversation(pipe, turns: int, seed: int, image_every_turn: bool = False):
    """(history of `turns` answered turns, [(images, question)] for every turn incl. the next)."""
    size = pipe.model.encoder.image_size
    world = ShapesWorld(seed=seed, num_samples=turns + 1)
    history, asked = [], []
    for k in range(turns + 1):
        scene = world[k if image_every_turn else 0]
        images = [render(scene, size)] if image_every_turn or k == 0 else []
        question = QUESTIONS[k % len(QUESTIONS)].format(scene.objects[0].shape)
        asked.append((images, question))
        if k < turns:
            answer = pipe.chat(images, question, history=history, temperature=0)
            history.append({"question": question, "answer": answer, "images": images})
    return history, asked


def ttft(pipe, image, question, history, max_new_tokens: int) -> tuple[float, str]:
    start = time.perf_counter()
    pieces = pipe.chat(image, question, history=history, stream=True, temperature=0, max_new_tokens=max_new_tokens)
    first = next(pieces, "")
    elapsed = time.perf_counter() - start
    return elapsed, first + "".join(pieces)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model name, directory or config (default: the shipped default)")
    ap.add_argument("--preset", choices=sorted(PRESETS), help="a random-weight model of this size instead")
    ap.add_argument("--turns", type=int, default=3, help="earlier turns in the history")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--image-every-turn", action="store_true", help="a new image in every turn")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import warnings

    warnings.simplefilter("ignore", unimm.UntrainedModelWarning)
    name = a.model or a.preset or "default"
    pipe = unimm.load(PRESETS[a.preset] if a.preset else a.model) if a.preset or a.model else unimm.load()
    history, turns = build_conversation(pipe, a.turns, a.seed, a.image_every_turn)
    image, question = turns[-1]
    prev_image, prev_question = turns[-2]

    reuse, fresh = [], []
    for _ in range(a.repeats):
        pipe.chat_cache.clear()
        pipe.chat(prev_image, prev_question, history=history[:-1], temperature=0)  # the app's previous turn
        t, answer_reuse = ttft(pipe, image, question, history, max_new_tokens=1)
        reuse.append(t)
        pipe.chat_cache.clear()
        t, answer_fresh = ttft(pipe, image, question, history, max_new_tokens=1)
        fresh.append(t)
        if answer_reuse != answer_fresh:
            raise SystemExit(f"the answers differ: {answer_reuse!r} with the cache, {answer_fresh!r} without")

    # Decode rate: a long greedy answer (the limit, EOS permitting), timed after its first piece.
    rates = []
    for _ in range(max(1, a.repeats // 4)):
        pieces = pipe.chat(image, "Describe the image.", history=history, stream=True, temperature=0,
                           max_new_tokens=64)
        next(pieces, "")
        start = time.perf_counter()
        rest = list(pieces)
        elapsed = time.perf_counter() - start
        tokens = len(pipe.processor.tokenizer.encode("".join(rest), add_special_tokens=False))
        if elapsed > 0 and tokens:
            rates.append(tokens / elapsed)

    ids, _ = pipe.processor.chat_ids([(t["question"], len(t["images"]), t["answer"]) for t in history]
                                     + [(question, len(image), None)])
    n_images = sum(len(t["images"]) for t in history) + len(image)
    med_r, med_f = statistics.median(reuse), statistics.median(fresh)
    print(f"\nChat cache reuse ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC)")
    print(f"machine : {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {a.threads}, "
          f"torch {torch.__version__}")
    print(f"model   : {name}, {a.turns}-turn history, {len(ids)} prompt tokens "
          f"({n_images} image(s)), {a.repeats} repeats, medians")
    print(f"{'follow-up turn':24s} {'TTFT ms':>9s}")
    print(f"{'fresh prefill':24s} {1000 * med_f:9.2f}")
    print(f"{'reused cache':24s} {1000 * med_r:9.2f}")
    print(f"ratio TTFT fresh / reused = {med_f / med_r:.2f}")
    if rates:
        print(f"decode (streamed, incremental detokenising): {statistics.median(rates):.1f} tokens/s")


if __name__ == "__main__":
    main()
