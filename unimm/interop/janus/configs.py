"""Janus configs <-> unimm configs, with an error for every option that cannot be mapped.

Janus side: transformers' JanusConfig (vision_config, vq_config, text_config),
the JanusProcessor (image processor, tokenizer, use_default_system_prompt,
num_image_tokens) and the generation config (pad / BOS / begin-of-image ids
and guidance for image generation). Sources: transformers 5.23,
models/janus/{configuration,modeling,processing,image_processing_pil}_janus.py.
"""
from __future__ import annotations

import math

from ...backbones.causal_lm import _META_KEYS, _config_keys
from ...config import ConfigError
from ...processing import TokenIds
from .prompts import is_janus_prompt, janus_prompt_config

JANUS_GROUPS = 32  # Janus's VQ GroupNorms: num_groups=32, eps=1e-6 (as diffusers' Encoder/Decoder at 32 groups)
BICUBIC = 3  # PIL.Image.BICUBIC, the resample Janus's image processor uses


class ConversionError(ConfigError):
    """A checkpoint or model that cannot be converted; the message names the option or weight."""


def _fail(problems: list[str], what: str) -> None:
    if problems:
        raise ConversionError(f"cannot convert {what}: " + "; ".join(problems))


def _side(value, name: str, problems: list[str]) -> int:
    """Janus allows int or (h, w) sizes; unimm's towers are square."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            problems.append(f"{name}={list(value)} is not square (unimm's SigLIP tower takes square images)")
        value = value[0]
    return int(value)


# -- Janus -> unimm -------------------------------------------------------------
def unified_config_dict(jc, processor, generation, name: str) -> tuple[dict, TokenIds]:
    """A UnifiedConfig mapping (and token ids) for a Janus checkpoint, or ConversionError.

    The backbone's tie_word_embeddings is left to the caller, who knows the weights.
    """
    vc, qc, tc = jc.vision_config, jc.vq_config, jc.text_config
    problems: list[str] = []
    D = tc.hidden_size

    # Understanding tower: Janus's vision model is SigLIP's layout under other names.
    image_size = _side(vc.image_size, "vision_config.image_size", problems)
    patch = _side(vc.patch_size, "vision_config.patch_size", problems)
    if vc.use_qk_norm:
        problems.append("vision_config.use_qk_norm=true (SigLIP has no q/k norm)")
    if not vc.attention_bias:
        problems.append("vision_config.attention_bias=false (SigLIP's q/k/v projections always have biases)")
    for opt in ("hidden_dropout_rate", "projection_dropout"):
        if getattr(vc, opt):
            problems.append(f"vision_config.{opt}={getattr(vc, opt)} (SigLIP has no such dropout)")
    if image_size % patch:
        problems.append(f"vision_config.image_size {image_size} is not a multiple of patch_size {patch}")
    grid = image_size // patch
    if vc.num_image_tokens != grid * grid:
        problems.append(f"vision_config.num_image_tokens={vc.num_image_tokens} but the {image_size}px image in "
                        f"{patch}px patches is a {grid}x{grid} grid (Janus decodes that grid)")
    if vc.projection_dim != D:
        problems.append(f"vision_config.projection_dim={vc.projection_dim} differs from the text hidden size {D}")
    siglip = dict(
        hidden_size=vc.hidden_size, intermediate_size=int(vc.hidden_size * vc.mlp_ratio),  # as JanusVisionMLP
        num_hidden_layers=vc.num_hidden_layers, num_attention_heads=vc.num_attention_heads,
        num_channels=vc.num_channels, image_size=image_size, patch_size=patch, hidden_act=vc.hidden_act,
        layer_norm_eps=vc.layer_norm_eps, attention_dropout=float(vc.attention_dropout),
        vision_use_head=False,  # Janus reads the post-layernorm patch features, no pooling head
    )

    # VQ tokenizer: Janus's VQ-16 is VQGAN's conv stack, which diffusers' Encoder/Decoder build
    # when the first level keeps the base width (conv_in's output) and GroupNorm has 32 groups.
    mult = list(qc.channel_multiplier)
    if qc.double_latent:
        problems.append("vq_config.double_latent=true (quant_conv would not match the encoder output)")
    if mult[0] != 1:
        problems.append(f"vq_config.channel_multiplier[0]={mult[0]} (unimm's VQ encoder keeps the base width "
                        "in its first level; 1 in every Janus / LlamaGen VQ)")
    if qc.dropout:
        problems.append(f"vq_config.dropout={qc.dropout} (unimm's VQ blocks have no dropout)")
    if qc.out_channels != qc.in_channels:
        problems.append(f"vq_config.out_channels={qc.out_channels} differs from in_channels={qc.in_channels}")
    widths = [qc.base_channels * m for m in mult]
    if any(w % JANUS_GROUPS for w in widths):
        problems.append(f"vq_config widths {widths} are not all multiples of {JANUS_GROUPS} (Janus's GroupNorm groups)")
    for opt in ("projection_dim", "image_token_embed_dim"):
        if getattr(qc, opt) != D:
            problems.append(f"vq_config.{opt}={getattr(qc, opt)} differs from the text hidden size {D}")

    # Image preprocessing (JanusImageProcessor): longest side to `size`, pad to a square with
    # int(mean * 255), rescale by 1/255, normalise.
    ip = processor.image_processor
    for opt in ("do_resize", "do_rescale", "do_normalize", "do_pad"):
        if not getattr(ip, opt, True):
            problems.append(f"image processor {opt}=false (unimm always resizes, pads, rescales and normalises)")
    if not math.isclose(ip.rescale_factor, 1 / 255, rel_tol=1e-9):
        problems.append(f"image processor rescale_factor={ip.rescale_factor} (unimm rescales by 1/255)")
    if int(ip.resample) != BICUBIC:
        problems.append(f"image processor resample={ip.resample} (unimm resizes bicubic, {BICUBIC})")
    size = ip.size
    size = (size["height"], size["width"]) if isinstance(size, dict) else (size.height, size.width)
    if size != (image_size, image_size):
        problems.append(f"image processor size {size} differs from the vision tower's {image_size}px")
    if ip.image_mean is None or ip.image_std is None:
        problems.append("image processor without image_mean / image_std")

    # Tokens and prompts.
    tok = processor.tokenizer
    ids, add_bos = _token_ids(jc, tok, generation, problems)
    if processor.num_image_tokens != grid * grid:
        problems.append(f"processor num_image_tokens={processor.num_image_tokens} but the vision tower gives "
                        f"{grid * grid} features per image")
    _fail(problems, "this Janus checkpoint")

    backbone_keys = _config_keys(tc.model_type) - _META_KEYS
    text = {k: v for k, v in tc.to_dict().items() if k in backbone_keys}
    data = {
        "name": name,
        "encoder": {"siglip": siglip, "feature_layer": -1, "image_size": image_size,
                    "image_mean": tuple(float(x) for x in ip.image_mean),
                    "image_std": tuple(float(x) for x in ip.image_std),
                    "resize_mode": "pad", "min_size": int(getattr(ip, "min_size", 1) or 1)},
        "projector": {"type": "mlp", "depth": vc.depth, "activation": vc.hidden_act},
        "backbone": {"model_type": tc.model_type, "config": text, "attn_implementation": "sdpa"},
        "text_tokenizer": {"image_token": tok.image_token, "boi_token": tok.boi_token, "eoi_token": tok.eoi_token},
        "image_tokenizer": {
            "type": "vq", "image_size": grid * 2 ** (len(mult) - 1), "in_channels": qc.in_channels,
            "block_out_channels": widths, "layers_per_block": qc.num_res_blocks, "norm_num_groups": JANUS_GROUPS,
            "latent_channels": qc.latent_channels, "attention_at_lowest": True,
            "quantizer": {"type": "vq", "codebook_size": qc.num_embeddings, "codebook_dim": qc.embed_dim,
                          "use_cosine_sim": True},
        },
        "generation": {"paradigm": "autoregressive", "embed_dim": qc.embed_dim, "aligner_depth": qc.num_hidden_layers,
                       "head_hidden": qc.projection_dim, "activation": qc.hidden_act},
        "prompt": vars(janus_prompt_config(bool(processor.use_default_system_prompt), add_bos)),
        # Janus-Pro's shipped generation settings: CFG weight and temperature (its reference
        # scripts sample with neither top-k nor top-p); chat answers greedy as unimm's default.
        "sampling": {"guidance_scale": float(getattr(generation, "guidance_scale", None) or 5.0),
                     "temperature": float(getattr(generation, "temperature", None) or 1.0)},
        "token_ids": vars(ids),
    }
    return data, ids


def _token_ids(jc, tok, generation, problems: list[str]) -> tuple[TokenIds, bool]:
    names = {}
    for attr in ("image_token", "boi_token", "eoi_token"):
        name = getattr(tok, attr, None)
        if name is None or name not in tok.get_vocab():
            problems.append(f"the tokenizer has no {attr} (Janus's <image_placeholder> / <begin_of_image> / "
                            "<end_of_image>)")
        names[attr] = name
    image = tok.convert_tokens_to_ids(names["image_token"]) if names["image_token"] else -1
    if names["image_token"] and image != jc.image_token_id:
        problems.append(f"config image_token_id={jc.image_token_id} but the tokenizer's {names['image_token']} is {image}")
    boi = tok.convert_tokens_to_ids(names["boi_token"]) if names["boi_token"] else -1
    # CFG's unconditional rows keep BOS and BOI and pad the rest with the generation config's ids.
    gen_boi = ((getattr(generation, "generation_kwargs", None) or {}).get("boi_token_id")
               or getattr(generation, "boi_token_id", None))
    if gen_boi is not None and gen_boi != boi:
        problems.append(f"generation config boi_token_id={gen_boi} but the tokenizer's begin-of-image is {boi}")
    pad = getattr(generation, "pad_token_id", None)
    pad = tok.pad_token_id if pad is None else pad
    bos = getattr(generation, "bos_token_id", None)
    bos = tok.bos_token_id if bos is None else bos
    eos = tok.eos_token_id
    if pad is None or eos is None:
        problems.append("the tokenizer / generation config has no pad or end-of-sequence token")
    if len(tok) > jc.text_config.vocab_size:
        problems.append(f"the tokenizer has {len(tok)} tokens but the text model only {jc.text_config.vocab_size} rows")
    # Whether the tokenizer puts BOS in front by itself (Janus-Pro's Llama tokenizer does).
    plain, special = tok.encode("a", add_special_tokens=False), tok.encode("a")
    if special == plain:
        add_bos = False
    elif bos is not None and special == [bos] + plain:
        add_bos = True
    else:
        add_bos = False
        problems.append(f"the tokenizer adds special tokens other than a leading BOS ({special} for {plain})")
    ids = TokenIds(vocab_size=len(tok), pad=pad, eos=eos, bos=bos, image=image, boi=boi,
                   eoi=tok.convert_tokens_to_ids(names["eoi_token"]) if names["eoi_token"] else -1)
    return ids, add_bos


# -- unimm -> Janus -------------------------------------------------------------
def janus_parts(uc, tokenizer) -> dict:
    """JanusConfig / processor / generation settings for a unimm model, or ConversionError.

    `uc` is a resolved UnifiedConfig (as saved in config.json).
    """
    problems: list[str] = []
    enc, proj, it, gen = uc.encoder, uc.projector, uc.image_tokenizer, uc.generation
    sg = dict(enc.siglip)
    hidden = uc.backbone.config.get("hidden_size")
    if enc.feature_layer != -1:
        problems.append(f"encoder.feature_layer={enc.feature_layer} (Janus reads the last layer)")
    if sg.get("vision_use_head", True):
        problems.append("the SigLIP tower has a pooling head (Janus has none); set encoder.siglip.vision_use_head: false")
    native, patch = sg.get("image_size", 224), sg.get("patch_size", 16)
    if enc.image_size != native:
        problems.append(f"encoder.image_size={enc.image_size} differs from the tower's {native}px "
                        "(Janus does not interpolate position embeddings)")
    if enc.resize_mode != "pad":
        problems.append("encoder.resize_mode must be 'pad' (Janus pads to a square)")
    vh, inter = sg.get("hidden_size", 768), sg.get("intermediate_size", 3072)
    act = sg.get("hidden_act", "gelu_pytorch_tanh")
    ratio = inter / vh
    if int(vh * ratio) != inter:
        problems.append(f"the SigLIP MLP width {inter} is not reproducible as int({vh} * mlp_ratio)")
    if proj.get("type") != "mlp":
        problems.append(f"projector type {proj.get('type')!r} (Janus's aligner is an MLP)")
    elif proj.get("activation") != act:
        problems.append(f"projector activation {proj.get('activation')!r} differs from the SigLIP tower's "
                        f"{act!r} (Janus's aligner uses the tower's)")
    if it.get("type") != "vq" or it["quantizer"]["type"] != "vq" or not it["quantizer"]["use_cosine_sim"]:
        problems.append("the image tokenizer must be a VQ with a cosine-similarity codebook (Janus looks codes up "
                        "l2-normalised)")
    boc = list(it.get("block_out_channels", []))
    base = boc[0] if boc else 1
    if any(c % base for c in boc):
        problems.append(f"VQ block_out_channels {boc} are not multiples of the first level's {base}")
    if it.get("norm_num_groups") != JANUS_GROUPS:
        problems.append(f"VQ norm_num_groups={it.get('norm_num_groups')} (Janus uses {JANUS_GROUPS})")
    if not it.get("attention_at_lowest", False):
        problems.append("VQ attention_at_lowest=false (Janus's VQ has attention there)")
    if it.get("patch_size", 1) != 1:
        problems.append(f"VQ patch_size={it.get('patch_size')} (Janus's VQ convolves raw pixels)")
    grid = native // patch
    vq_grid = it.get("image_size", 0) // 2 ** (len(boc) - 1) if boc else 0
    if vq_grid != grid:
        problems.append(f"the VQ grid {vq_grid}x{vq_grid} differs from the SigLIP patch grid {grid}x{grid} "
                        "(Janus uses one grid for both)")
    if gen.paradigm != "autoregressive":
        problems.append(f"generation paradigm {gen.paradigm!r} (Janus generates autoregressively)")
    code_dim = it.get("quantizer", {}).get("codebook_dim")
    if gen.embed_dim not in (None, code_dim):
        problems.append(f"generation.embed_dim={gen.embed_dim} differs from the codebook dim {code_dim}")
    if gen.head_hidden not in (None, hidden):
        problems.append(f"generation.head_hidden={gen.head_hidden} differs from the backbone width {hidden}")
    if not is_janus_prompt(uc.prompt):
        problems.append("the prompt config is not Janus-Pro's (exported processors use Janus-Pro's chat template)")
    names = {k: getattr(uc.text_tokenizer, k) for k in ("image_token", "boi_token", "eoi_token")}
    for k, field_name in (("image_token", "image"), ("boi_token", "boi"), ("eoi_token", "eoi")):
        if tokenizer.convert_tokens_to_ids(names[k]) != getattr(uc.token_ids, field_name):
            problems.append(f"the tokenizer's {names[k]} does not have the model's {field_name} id")
    _fail(problems, "this unimm model to Janus")

    text = dict(uc.backbone.config, model_type=uc.backbone.model_type)
    tied = bool(text.pop("tie_word_embeddings", False))
    vision = dict(
        hidden_size=vh, num_hidden_layers=sg["num_hidden_layers"], num_attention_heads=sg["num_attention_heads"],
        num_channels=sg.get("num_channels", 3), image_size=native, patch_size=patch, hidden_act=act,
        layer_norm_eps=sg.get("layer_norm_eps", 1e-6), attention_dropout=sg.get("attention_dropout", 0.0),
        mlp_ratio=ratio, attention_bias=True, projection_dim=hidden, use_qk_norm=False, depth=proj["depth"],
        num_image_tokens=grid * grid,
    )
    vq = dict(
        embed_dim=code_dim, num_embeddings=it["quantizer"]["codebook_size"], double_latent=False,
        latent_channels=it["latent_channels"], in_channels=it["in_channels"], out_channels=it["in_channels"],
        base_channels=base, channel_multiplier=[c // base for c in boc], num_res_blocks=it["layers_per_block"],
        dropout=0.0, projection_dim=hidden, image_token_embed_dim=hidden, num_hidden_layers=gen.aligner_depth,
        hidden_act=gen.activation,
    )
    image_processor = dict(size={"height": native, "width": native}, image_mean=list(enc.image_mean),
                           image_std=list(enc.image_std), min_size=enc.min_size, resample=BICUBIC)
    return {"text": text, "vision": vision, "vq": vq, "tied": tied, "image_processor": image_processor,
            "use_default_system_prompt": bool(uc.prompt.system), "num_image_tokens": grid * grid,
            "token_names": names}
