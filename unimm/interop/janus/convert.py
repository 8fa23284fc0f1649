"""`convert_janus` (transformers Janus -> unimm) and `export_janus` (unimm -> transformers Janus).

Both read weights with safetensors only, check every name against the model
the target config builds (on the meta device: no memory, no init), fail with
the offending names on anything unmapped, missing or misshapen, and write the
target directory atomically (unimm.io.atomic_directory).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from ...config import ConfigError, to_dict, write_json
from ...folders import atomic_directory, check_destination
from ...generation import get_family
from ...io import read_weights
from ...models.unified import CONFIG_NAME, STORAGE_DTYPES, UnifiedConfig, UnifiedModel
from .configs import ConversionError, janus_parts, unified_config_dict
from .keys import CODEBOOK, CODEBOOK_STATE, janus_rules, translate_state
from .prompts import janus_chat_template, prompt_mismatches, unimm_processor_for

MAX_SHARD = "5GB"


# -- reading ----------------------------------------------------------------------
def read_safetensors(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of a (possibly sharded) safetensors checkpoint; never unpickles."""
    try:
        return read_weights(directory)
    except FileNotFoundError as e:  # no weights file, a missing shard, or only pickled weights
        raise ConversionError(str(e)) from None


def _read_janus_config(src: Path):
    from transformers import JanusConfig

    path = src / CONFIG_NAME
    if not path.is_file():
        raise ConversionError(f"{src} is not a transformers checkpoint: {CONFIG_NAME} is missing")
    kind = json.loads(path.read_text()).get("model_type")
    if kind != "janus":
        raise ConversionError(f"{src} holds a {kind!r} model, not 'janus' (JanusForConditionalGeneration)")
    return JanusConfig.from_pretrained(src)


def _load_processor(src: Path):
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(src)
    except Exception as e:  # transformers raises OSError / ValueError / KeyError by case
        raise ConversionError(f"cannot load the Janus processor (tokenizer, processor_config.json or "
                              f"preprocessor_config.json) from {src}: {e}") from e
    if type(processor).__name__ != "JanusProcessor":
        raise ConversionError(f"{src}: expected a JanusProcessor, got {type(processor).__name__}")
    if not processor.chat_template:
        raise ConversionError(f"{src}: the processor has no chat template, so the chat format cannot be checked")
    return processor


def _load_generation_config(src: Path):
    from transformers import GenerationConfig

    return GenerationConfig.from_pretrained(src) if (src / "generation_config.json").is_file() else None


# -- models on the meta device: names, shapes and tied aliases -------------------------
def _meta(build):
    with torch.device("meta"):
        return build()


def _layout(module: torch.nn.Module) -> tuple[dict[str, tuple], list[list[str]]]:
    """{name: shape} of the state dict, and groups of names that are one tied tensor."""
    sd = module.state_dict(keep_vars=True)
    groups: dict[int, list[str]] = {}
    for k, v in sd.items():
        groups.setdefault(id(v), []).append(k)
    return {k: tuple(v.shape) for k, v in sd.items()}, [g for g in groups.values() if len(g) > 1]


def _preview(names, n: int = 10) -> str:
    names = sorted(names)
    return ", ".join(names[:n]) + (f" ... and {len(names) - n} more" if len(names) > n else "")


def _check(state: dict, shapes: dict, aliases: list[list[str]], where: str) -> None:
    """Every name of `shapes` present (one per tied group is enough), nothing else, shapes equal."""
    unexpected = set(state) - set(shapes)
    if unexpected:
        raise ConversionError(f"{where}: unexpected weight(s) {_preview(unexpected)}")
    alias_of = {k: g for g in aliases for k in g}
    missing = [k for k in shapes if k not in state and not any(a in state for a in alias_of.get(k, ()))]
    if missing:
        raise ConversionError(f"{where}: missing weight(s) {_preview(missing)}")
    bad = [f"{k} {tuple(v.shape)} vs {shapes[k]}" for k, v in state.items() if tuple(v.shape) != shapes[k]]
    if bad:
        raise ConversionError(f"{where}: shape mismatch for {_preview(bad)}")


def _ties_head(janus, state: dict) -> bool:
    """Whether the reference runs with lm_head tied to the embeddings.

    As transformers 5.23 loads a Janus checkpoint: tied when the config ties them
    (JanusConfig.tie_word_embeddings), unless the checkpoint stores an lm_head
    with other values than the embeddings; then that head is used untied.
    """
    config_ties = janus.lm_head.weight is janus.model.language_model.embed_tokens.weight
    head = state.get("lm_head.weight")
    if head is None:
        return config_ties  # untied without a head: _check has already named it missing
    return config_ties and torch.equal(head, state["model.language_model.embed_tokens.weight"])


def _storage_dtype(state: dict) -> torch.dtype:
    """The checkpoint's floating-point type, kept for the unimm files (float32 if it mixes types)."""
    kinds = {v.dtype for v in state.values() if v.is_floating_point()}
    kind = kinds.pop() if len(kinds) == 1 else torch.float32
    return kind if str(kind).removeprefix("torch.") in STORAGE_DTYPES else torch.float32


def _lm_base(model: UnifiedModel) -> str:
    lm = model.backbone.lm
    return next(n for n, m in lm.named_children() if m is lm.get_decoder())


def _save(state: dict, directory: Path) -> None:
    from huggingface_hub import save_torch_state_dict

    save_torch_state_dict(state, directory, max_shard_size=MAX_SHARD)


# -- Janus -> unimm -----------------------------------------------------------------
def convert_janus(src, dst, name: str | None = None, overwrite: bool = False) -> Path:
    """Convert a transformers Janus / Janus-Pro checkpoint (what `JanusForConditionalGeneration.save_pretrained`
    and its processor write) into a unimm model directory; returns `dst`.

    Every weight is mapped or the conversion fails naming it; the image
    normalisation, special-token ids, chat and text-to-image prompt formats and
    the CFG settings carry over. Weights keep the checkpoint's floating-point type
    (recorded as storage_dtype; unimm.load computes in float32 unless told otherwise);
    the codebook is stored l2-normalised in float32, as Janus looks it up.
    `dst` must not be `src`, and must be new, empty or an earlier unimm save unless
    `overwrite` (which replaces only the model's own files there).
    """
    from transformers import JanusForConditionalGeneration

    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise ConversionError(f"{src} is not a directory")
    check_destination(dst, overwrite, sources=[src])  # before minutes of work, not after
    jc = _read_janus_config(src)
    processor = _load_processor(src)
    generation = _load_generation_config(src)
    janus = _meta(lambda: JanusForConditionalGeneration(jc))
    # Options first (cheap), weights after.
    data, ids = unified_config_dict(jc, processor, generation, name or src.resolve().name)
    state = read_safetensors(src)
    j_shapes, j_aliases = _layout(janus)
    _check(state, j_shapes, j_aliases, f"{src} (against the JanusForConditionalGeneration its config builds)")
    tied = _ties_head(janus, state)
    data["backbone"]["config"]["tie_word_embeddings"] = tied
    try:
        ucfg = UnifiedConfig.from_dict(data)
    except ConfigError as e:
        raise ConversionError(f"cannot convert {src}: {e}") from e
    model = _meta(lambda: UnifiedModel(ucfg))

    # Prompts: the unimm processor must build the ids the checkpoint's own processor builds.
    bad = prompt_mismatches(processor, unimm_processor_for(processor.tokenizer, ucfg.prompt, ids,
                                                           model.num_understanding_tokens))
    if bad:
        raise ConversionError(f"cannot convert {src}: its chat template builds prompts unimm's Janus-Pro format "
                              "does not reproduce: " + "; ".join(bad))

    if tied:
        state.pop("lm_head.weight", None)  # the same tensor as the embeddings
    rules = janus_rules(jc.vision_config.depth, jc.vq_config.num_hidden_layers, _lm_base(model))
    out, unmatched, _ = translate_state(state, rules, "janus")
    if unmatched:
        raise ConversionError(f"{src}: no unimm counterpart for weight(s) {_preview(unmatched)}")
    embed = out[CODEBOOK + "embed"]
    out[CODEBOOK + "embed_avg"] = embed.clone()
    out[CODEBOOK + "cluster_size"] = torch.ones(embed.shape[:2])
    out[CODEBOOK + "initted"] = torch.tensor(True)
    u_shapes, u_aliases = _layout(model)
    _check(out, u_shapes, u_aliases, "the converted weights (against the unimm model its config builds)")
    # Weights keep the checkpoint's type; the codebook stays float32, as it was normalised in
    # float32 (rounding it again to bf16 would move the codes Janus normalises at run time).
    storage = _storage_dtype(state)
    out = {k: v.to(storage) if v.is_floating_point() and not k.startswith(CODEBOOK) else v for k, v in out.items()}

    with atomic_directory(dst, overwrite=overwrite, sources=[src]) as tmp:
        config = dataclasses.replace(model.resolved_config(), storage_dtype=str(storage).removeprefix("torch."))
        write_json(to_dict(config), Path(tmp) / CONFIG_NAME)
        _save(out, Path(tmp))
        processor.tokenizer.save_pretrained(tmp)
    return dst


# -- unimm -> Janus -----------------------------------------------------------------
def export_janus(src, dst, overwrite: bool = False) -> Path:
    """Write a unimm model of Janus's shape as a transformers Janus checkpoint (config, safetensors,
    processor with Janus-Pro's chat template, generation config); returns `dst`.

    Raises ConversionError naming every feature Janus cannot express. `dst` follows the
    rules of `convert_janus`.
    """
    from transformers import (AutoConfig, AutoTokenizer, GenerationConfig, JanusConfig,
                              JanusForConditionalGeneration)
    from transformers.models.janus.configuration_janus import JanusVisionConfig, JanusVQVAEConfig
    from transformers.models.janus.image_processing_pil_janus import JanusImageProcessorPil
    from transformers.models.janus.processing_janus import JanusProcessor

    src, dst = Path(src), Path(dst)
    check_destination(dst, overwrite, sources=[src])
    path = src / CONFIG_NAME
    if not path.is_file():
        raise ConversionError(f"{src} is not a unimm model directory: {CONFIG_NAME} is missing")
    uc = UnifiedConfig.from_dict(json.loads(path.read_text()))
    if uc.token_ids is None:
        raise ConversionError(f"{src}: config.json has no token_ids")
    tokenizer = AutoTokenizer.from_pretrained(src)
    parts = janus_parts(uc, tokenizer)
    ids = uc.token_ids

    text = AutoConfig.for_model(**parts["text"])
    jc = JanusConfig(text_config=text, vision_config=JanusVisionConfig(**parts["vision"]),
                     vq_config=JanusVQVAEConfig(**parts["vq"]), image_token_id=ids.image,
                     tie_word_embeddings=parts["tied"])
    jc.architectures = ["JanusForConditionalGeneration"]
    jc.dtype = uc.storage_dtype  # the type the exported weights keep
    janus = _meta(lambda: JanusForConditionalGeneration(jc))
    if (janus.lm_head.weight is janus.model.language_model.embed_tokens.weight) != parts["tied"]:
        raise ConversionError("transformers' Janus does not tie the LM head as the unimm backbone does")
    model = _meta(lambda: UnifiedModel(uc))

    state = read_safetensors(src)
    u_shapes, u_aliases = _layout(model)
    _check(state, u_shapes, u_aliases, f"{src} (against the unimm model its config builds)")
    for group in u_aliases:  # a tied tensor was saved under one of its names: give it all of them
        present = [k for k in group if k in state]
        for k in group:
            state.setdefault(k, state[present[0]])
    if CODEBOOK + "initted" in state and not bool(state[CODEBOOK + "initted"]):
        raise ConversionError(f"{src}: the VQ codebook was never initialised (k-means init without data)")
    for k in CODEBOOK_STATE:  # EMA training state; Janus has none
        state.pop(k, None)
    rules = janus_rules(parts["vision"]["depth"], parts["vq"]["num_hidden_layers"], _lm_base(model))
    out, unmatched, _ = translate_state(state, rules, "unimm")
    if unmatched:
        raise ConversionError(f"{src}: no Janus counterpart for weight(s) {_preview(unmatched)}")
    if parts["tied"]:
        out.pop("lm_head.weight", None)
    j_shapes, j_aliases = _layout(janus)
    _check(out, j_shapes, j_aliases, "the exported weights (against the JanusForConditionalGeneration built)")

    names = parts["token_names"]
    tokenizer = AutoTokenizer.from_pretrained(src, extra_special_tokens=dict(names))
    processor = JanusProcessor(
        image_processor=JanusImageProcessorPil(**parts["image_processor"]), tokenizer=tokenizer,
        chat_template=janus_chat_template(tokenizer.eos_token, names["image_token"]),
        use_default_system_prompt=parts["use_default_system_prompt"], num_image_tokens=parts["num_image_tokens"],
    )
    bad = prompt_mismatches(processor, unimm_processor_for(tokenizer, uc.prompt, ids, parts["num_image_tokens"]))
    if bad:
        raise ConversionError("the exported processor would build other prompts than unimm: " + "; ".join(bad))
    shipped = get_family(uc.generation.paradigm).options.resolve({}, uc.sampling, uc.generation.paradigm)
    generation = GenerationConfig(bos_token_id=ids.bos, eos_token_id=ids.eos, pad_token_id=ids.pad,
                                  guidance_scale=shipped.guidance_scale, temperature=shipped.temperature or 1.0,
                                  generation_kwargs={"boi_token_id": ids.boi})
    with atomic_directory(dst, overwrite=overwrite, sources=[src], kind="janus") as tmp:
        jc.save_pretrained(tmp)
        generation.save_pretrained(tmp)
        _save(out, Path(tmp))
        processor.save_pretrained(tmp)
    return dst
