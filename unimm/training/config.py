"""Training configuration: one YAML per stage under configs/train/."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..config import MODEL_PARTS as PARTS
from ..config import ConfigError, from_dict
from .precision import check_mixed_precision

# The names loss_weights may set. "grounding" (default 0): with cross-attention fusion, where a
# one-question item's answer is predicted, -log of the blocks' attention on the asked-about
# object's visual tokens (the shapes world gives its box); UnifiedModel.grounding_shares.
LOSSES = ("understanding", "generation", "preference", "grounding")


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * min_lr_ratio
    grad_clip: float = 1.0  # 0: off
    # Part (or submodule under a part) -> multiplier of lr for its weights, the more specific name
    # winning, e.g. {encoder: 0.1} to tune a pretrained vision tower slowly beside fresh layers.
    lr_scale: dict = field(default_factory=dict)

    def __post_init__(self):
        bad = {k: v for k, v in self.lr_scale.items()
               if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0}
        if bad:
            raise ValueError(f"optim.lr_scale values must be numbers > 0, got {bad}")


@dataclass
class DataConfig:
    # name -> source spec (see unimm.data.formats.build_source), e.g.
    # {"format": "llava", "path": ..., "image_root": ...} or {"format": "shapes", "task": "generation"}.
    sources: dict = field(default_factory=lambda: {
        "vqa": {"format": "shapes", "task": "understanding"},
        "text": {"format": "shapes", "task": "text"},
        "t2i": {"format": "shapes", "task": "generation"},
    })
    # name -> relative weight; Janus-Pro stage 3 mixes understanding:text:generation = 5:1:4.
    ratios: dict = field(default_factory=lambda: {"vqa": 5, "text": 1, "t2i": 4})
    # Probability of replacing a caption with the unconditional prompt, for classifier-free guidance.
    prompt_dropout: float = 0.1
    num_workers: int = 0
    # Split each batch's understanding rows into up to this many groups of similar length, each
    # padded only to its own longest row (the loss is the same mean over every answer token):
    # chat rows run from a few tokens (text) to hundreds (a scene's questions), and one batch
    # padded to its longest spends ~40% of its understanding compute on padding. 1: one group.
    length_buckets: int = 1
    # Pad every batch's sequences to a multiple of this many tokens: fewer distinct shapes, so
    # bf16 matrix products on the CPU reuse oneDNN's cached kernels (a new shape builds one;
    # the cache holds 1,024) and compiled steps recompile less. 1: to the longest row.
    pad_multiple: int = 1
    # Where the frozen image tokenizer's targets for every generation item are computed once
    # and kept (safetensors); None: encode the images at every step. Needs a frozen
    # image_tokenizer; stages that share sources and tokenizer share the files.
    cache_dir: str | None = None

    def __post_init__(self):
        if set(self.ratios) != set(self.sources):
            raise ValueError(f"data.ratios must name exactly the sources {sorted(self.sources)}, got {sorted(self.ratios)}")
        if any(v < 0 for v in self.ratios.values()) or sum(self.ratios.values()) <= 0:
            raise ValueError("data.ratios must be >= 0 with a positive sum")
        if not 0 <= self.prompt_dropout < 1:
            raise ValueError(f"data.prompt_dropout must be in [0, 1), got {self.prompt_dropout}")
        if isinstance(self.length_buckets, bool) or not isinstance(self.length_buckets, int) or self.length_buckets < 1:
            raise ValueError(f"data.length_buckets must be an integer >= 1, got {self.length_buckets!r}")
        if isinstance(self.pad_multiple, bool) or not isinstance(self.pad_multiple, int) or self.pad_multiple < 1:
            raise ValueError(f"data.pad_multiple must be an integer >= 1, got {self.pad_multiple!r}")


@dataclass
class LoraConfig:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass
class PromptContrastConfig:
    # Generation items whose data gives a swapped caption (the same words bound to other
    # objects: "a red star and a blue circle" for "a red circle and a blue star") also learn to
    # score their image higher under their own caption than under the swapped one:
    # weight * softplus(beta * (NLL(image | caption) - NLL(image | swapped))), NLLs summed over
    # the image's tokens. The plain likelihood rewards this only through the few tokens where
    # the binding shows; the contrast is nothing but that difference. Families with an exact
    # image likelihood (autoregressive) take it. Understanding items with one question and a
    # "swapped_question" (its words bound to another object, whose answer differs) get the same
    # loss on the answer's NLL under the two questions: a reply that reads the scene's colours
    # without finding the named object scores both alike and gains nothing.
    weight: float = 1.0  # generation items (0: none)
    answer_weight: float = 1.0  # understanding items (0: none)
    beta: float = 0.1

    def __post_init__(self):
        if not (self.weight >= 0 and self.answer_weight >= 0 and self.weight + self.answer_weight > 0
                and self.beta > 0):
            raise ValueError(f"prompt_contrast needs weight >= 0 and answer_weight >= 0, not both 0, and beta > 0; "
                             f"got weight={self.weight}, answer_weight={self.answer_weight}, beta={self.beta}")


@dataclass
class DPOConfig:
    # The preference stage (RLHF-V / DPO): answers of `task: preference` sources scored against
    # a frozen reference model, the stage's starting model unless `reference` names a model directory.
    beta: float = 0.1  # the reward's scale: larger keeps the model closer to the reference
    reference: str | None = None

    def __post_init__(self):
        if not self.beta > 0:
            raise ValueError(f"dpo.beta must be > 0, got {self.beta}")


@dataclass
class TrainConfig:
    # What to start from: `init_from` (a saved model directory, e.g. the previous stage's
    # final/), else `model` (a config name, file or mapping: a fresh model).
    model: str | dict | None = None
    init_from: str | None = None
    # Options changed on init_from's model (merged into its config), e.g. {generation:
    # {position_embedding: true}}: weights the change adds start from their initialisation.
    init_changes: dict | None = None
    # Parts init_changes rebuilds (e.g. [gen_head, image_tokenizer] for another generation family
    # and image tokenizer): init_from's weights for them are not read; they start as built.
    init_fresh: list = field(default_factory=list)
    # Parts whose weights come from another saved model, {part: model directory}, e.g. {gen_head:
    # weights/default-dit} to carry a trained generator onto another understanding path, or a
    # submodule of one ({gen_head.controlnets: ...}). It must be built alike in both (its part's
    # config section and the weight shapes); what the source adds to it (a ControlNet attached to
    # that generator) is not taken.
    init_parts: dict = field(default_factory=dict)
    output_dir: str = "runs/train"
    # Per part: true = frozen. Janus stage 1: only projector and generation head train.
    freeze: dict = field(default_factory=lambda: {
        "encoder": True, "projector": False, "backbone": True, "image_tokenizer": True, "gen_head": False})
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    steps: int = 1000  # optimizer steps
    batch_size: int = 8  # per process, per micro-step
    grad_accum: int = 1
    loss_weights: dict = field(default_factory=lambda: {"understanding": 1.0, "generation": 1.0, "preference": 1.0})
    # Where loss_weights.grounding supervises the blocks' attention: "answer" (where the answer is
    # predicted; every block but the first) or "word" (at the question's word naming the object,
    # every block: the first reads little more than the word's embedding there), or "both".
    grounding_at: str = "answer"
    # auto: bf16 on a GPU, fp32 on the CPU; or no / bf16 / fp16 (bf16 on a CPU without native bf16
    # trains in fp32: precision.py)
    mixed_precision: str = "auto"
    ema_decay: float | None = None  # e.g. 0.999: keep an EMA of the trainable weights and export it
    gradient_checkpointing: bool = False
    compile: bool = False  # torch.compile each decoder layer (the first steps compile; see BENCHMARKS.md)
    lora: LoraConfig | None = None  # LoRA on the backbone instead of full fine-tuning
    # Preference tuning (DPO) on the data's `task: preference` sources; see DPOConfig.
    dpo: DPOConfig | None = None
    # Generation: each image scored against its swapped caption too (PromptContrastConfig).
    prompt_contrast: PromptContrastConfig | None = None
    save_every: int = 500
    keep_last: int = 3
    log_every: int = 10
    seed: int = 0
    # Type of the exported weights in OUTPUT/final (None: as trained, i.e. float32 on the
    # CPU); "bfloat16" halves a checkpoint that is to be shipped.
    export_dtype: str | None = None

    def __post_init__(self):
        if (self.model is None) == (self.init_from is None):
            raise ValueError("set exactly one of 'model' (a fresh model) and 'init_from' (a saved model directory)")
        if (self.init_changes or self.init_fresh) and self.init_from is None:
            raise ValueError("init_changes changes init_from's model; a fresh model takes its options in 'model'")
        unknown = sorted(set(self.init_fresh) - set(PARTS))
        if unknown:
            raise ValueError(f"unknown part(s) {unknown} in init_fresh; parts: {', '.join(PARTS)}")
        unknown = sorted(k for k in self.init_parts if k.split(".")[0] not in PARTS)
        if unknown:
            raise ValueError(f"unknown part(s) {unknown} in init_parts; parts: {', '.join(PARTS)} "
                             "(or a submodule of one, e.g. gen_head.controlnets)")
        bad = sorted(part for part, path in self.init_parts.items() if not isinstance(path, str) or not path)
        if bad:
            raise ValueError(f"init_parts maps a part to the saved model it comes from; {', '.join(bad)} "
                             "names no model directory")
        if self.init_fresh and not self.init_changes:
            raise ValueError("init_fresh names parts that init_changes rebuilds; set init_changes too")
        # A part given new pretrained weights that is not rebuilt would silently keep init_from's.
        stale = sorted(part for part, change in (self.init_changes or {}).items()
                       if part in PARTS and isinstance(change, dict) and change.get("pretrained")
                       and part not in self.init_fresh)
        if stale:
            raise ValueError(f"init_changes gives {', '.join(stale)} new pretrained weights, but init_from's "
                             f"weights would replace them: add {', '.join(stale)} to init_fresh")
        unknown = {k for k in self.freeze if k.split(".")[0] not in PARTS}
        if unknown:
            raise ValueError(f"unknown part(s) {sorted(unknown)} in freeze; parts: {', '.join(PARTS)} "
                             "(or a submodule of one, e.g. gen_head.controlnets)")
        unknown = {k for k in self.optim.lr_scale if k.split(".")[0] not in PARTS}
        if unknown:
            raise ValueError(f"unknown part(s) {sorted(unknown)} in optim.lr_scale; parts: {', '.join(PARTS)} "
                             "(or a submodule of one, e.g. backbone.cross_attn)")
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1 or self.save_every < 1 or self.keep_last < 1:
            raise ValueError("steps, batch_size, grad_accum, save_every and keep_last must be >= 1")
        check_mixed_precision(self.mixed_precision)
        if self.export_dtype not in (None, "float32", "bfloat16", "float16"):
            # Checked here, not at export: a typo must not cost a whole run.
            raise ValueError(f"export_dtype must be float32, bfloat16 or float16, got {self.export_dtype!r}")
        if self.data.cache_dir is not None and not self.freeze.get("image_tokenizer", False):
            raise ValueError("data.cache_dir keeps the frozen image tokenizer's targets; this stage trains the "
                             "image tokenizer (freeze.image_tokenizer: false), so its targets change every step")
        unknown = set(self.loss_weights) - set(LOSSES)
        if unknown:
            raise ValueError(f"unknown loss(es) {sorted(unknown)} in loss_weights; losses: {', '.join(LOSSES)}")
        if self.grounding_at not in ("answer", "word", "both"):
            raise ValueError(f"grounding_at must be answer, word or both, got {self.grounding_at!r}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay}")


def load_train_config(path_or_dict, overrides: list[str] | None = None) -> TrainConfig:
    from ..config import apply_overrides, read_config_file

    data = path_or_dict if isinstance(path_or_dict, dict) else read_config_file(path_or_dict)
    try:
        return from_dict(TrainConfig, apply_overrides(data, overrides or []), "training config")
    except ConfigError:
        raise
