"""Automatic evaluation on the shapes world, with no learned judge (GenEval-style).

- `detect(image)`: a model-free detector of shapes-world objects (detector.py);
- `make_prompts(n_per_category, seed)`: the fixed generation prompt set (prompts.py);
- `evaluate_generation(pipe, ...)`: generate, detect, score per category (generation.py);
- `evaluate_vqa(pipe, ...)`: exact-match VQA on fresh scenes per question type (vqa.py);
- `unimm eval`: the command line (cli.py).
"""
from .detector import MIN_RELIABLE_SIZE, Detection, detect
from .generation import evaluate_generation, score
from .prompts import CATEGORIES, EvalPrompt, Expected, make_prompts, parse_prompt
from .vqa import evaluate_vqa

__all__ = [
    "CATEGORIES", "Detection", "EvalPrompt", "Expected", "MIN_RELIABLE_SIZE", "detect", "evaluate_generation",
    "evaluate_vqa", "make_prompts", "parse_prompt", "score",
]
