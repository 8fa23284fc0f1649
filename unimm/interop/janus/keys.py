"""Weight names: transformers' `JanusForConditionalGeneration` <-> unimm's `UnifiedModel`.

Each rule pairs a Janus name template with a unimm one; `{i}`, `{j}` stand for
layer indices, `{t}` for weight/bias, other placeholders for the choices the
rule lists. The same rules serve both directions. Sources of the Janus side:
transformers/models/janus/modeling_janus.py (5.23). unimm side: the SigLIP
tower is transformers' SiglipVisionModel (its modules at the top level),
the MLPs are nn.Sequential (parameters at even indices), the VQ conv stacks
are diffusers' Encoder / Decoder, the codebook is vector-quantize-pytorch's.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

J_V, U_V = "model.vision_model.", "encoder.model."
J_Q, U_Q = "model.vqmodel.", "image_tokenizer."
CODEBOOK = U_Q + "quantizer.q._codebook."
# vector-quantize-pytorch keeps EMA training state beside the codebook; Janus has none.
# Converting fills it as the library initialises it (cluster_size 1, embed_avg = embed,
# initted); exporting leaves it out.
CODEBOOK_STATE = (CODEBOOK + "embed_avg", CODEBOOK + "cluster_size", CODEBOOK + "initted")

_DEFAULT_PATTERNS = {"i": r"\d+", "j": r"\d+", "t": "weight|bias"}


@dataclass
class Rule:
    janus: str
    unimm: str
    choices: dict = field(default_factory=dict)
    # "copy"; "conv1x1": Janus's 1x1 conv attention weights (C, C, 1, 1) <-> diffusers' Linear (C, C);
    # "codebook": Janus's raw codebook (K, D) -> unimm's l2-normalised (1, K, D).
    kind: str = "copy"

    def __post_init__(self):
        self._re = {side: _compile(getattr(self, side), self.choices) for side in ("janus", "unimm")}

    def translate(self, key: str, side: str) -> str | None:
        """The other side's name for `key` (a `side` name), or None if this rule does not match."""
        m = self._re[side].fullmatch(key)
        if m is None:
            return None
        return getattr(self, "unimm" if side == "janus" else "janus").format(**m.groupdict())


def _compile(template: str, choices: dict) -> re.Pattern:
    out, pos = [], 0
    for m in re.finditer(r"\{(\w+)\}", template):
        out.append(re.escape(template[pos:m.start()]))
        name = m.group(1)
        out.append(f"(?P<{name}>{choices.get(name, _DEFAULT_PATTERNS.get(name))})")
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return re.compile("".join(out))


def _mlp_rules(janus_prefix: str, unimm_prefix: str, depth: int) -> list[Rule]:
    """Janus's `fc1` + `hidden_layers.k` <-> nn.Sequential indices 0, 2, 4, ... (activations between)."""
    rules = [Rule(janus_prefix + "fc1.{t}", unimm_prefix + "0.{t}")]
    rules += [Rule(f"{janus_prefix}hidden_layers.{k}.{{t}}", f"{unimm_prefix}{2 * k + 2}.{{t}}") for k in range(depth - 1)]
    return rules


def _vq_rules() -> list[Rule]:
    resnet = {"p": "norm1|conv1|norm2|conv2"}
    rules = [
        Rule(J_Q + "quantize.embedding.weight", CODEBOOK + "embed", kind="codebook"),
        Rule(J_Q + "{p}.{t}", U_Q + "{p}.{t}", {"p": "quant_conv|post_quant_conv"}),
        Rule(J_Q + "{s}.{p}.{t}", U_Q + "{s}.{p}.{t}", {"s": "encoder|decoder", "p": "conv_in|conv_out"}),
        Rule(J_Q + "{s}.norm_out.{t}", U_Q + "{s}.conv_norm_out.{t}", {"s": "encoder|decoder"}),
        # Janus names the 1x1 shortcut of a channel-changing ResNet block nin_shortcut, diffusers conv_shortcut.
        Rule(J_Q + "encoder.down.{i}.block.{j}.{p}.{t}", U_Q + "encoder.down_blocks.{i}.resnets.{j}.{p}.{t}", resnet),
        Rule(J_Q + "encoder.down.{i}.block.{j}.nin_shortcut.{t}", U_Q + "encoder.down_blocks.{i}.resnets.{j}.conv_shortcut.{t}"),
        Rule(J_Q + "encoder.down.{i}.downsample.conv.{t}", U_Q + "encoder.down_blocks.{i}.downsamplers.0.conv.{t}"),
        # Janus's up[0] is the lowest resolution, as diffusers' up_blocks[0].
        Rule(J_Q + "decoder.up.{i}.block.{j}.{p}.{t}", U_Q + "decoder.up_blocks.{i}.resnets.{j}.{p}.{t}", resnet),
        Rule(J_Q + "decoder.up.{i}.block.{j}.nin_shortcut.{t}", U_Q + "decoder.up_blocks.{i}.resnets.{j}.conv_shortcut.{t}"),
        Rule(J_Q + "decoder.up.{i}.upsample.conv.{t}", U_Q + "decoder.up_blocks.{i}.upsamplers.0.conv.{t}"),
        Rule(J_Q + "{s}.mid.block_1.{p}.{t}", U_Q + "{s}.mid_block.resnets.0.{p}.{t}", {"s": "encoder|decoder", **resnet}),
        Rule(J_Q + "{s}.mid.block_2.{p}.{t}", U_Q + "{s}.mid_block.resnets.1.{p}.{t}", {"s": "encoder|decoder", **resnet}),
    ]
    # Attention: GroupNorm + 1x1 convs q, k, v, proj_out <-> group_norm + Linear to_q, to_k, to_v, to_out.0.
    for j_name, u_name in (("norm", "group_norm"), ("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")):
        kind = "copy" if j_name == "norm" else "conv1x1"
        rules += [
            Rule(J_Q + f"encoder.down.{{i}}.attn.{{j}}.{j_name}.{{t}}", U_Q + f"encoder.down_blocks.{{i}}.attentions.{{j}}.{u_name}.{{t}}", kind=kind),
            Rule(J_Q + f"decoder.up.{{i}}.attn.{{j}}.{j_name}.{{t}}", U_Q + f"decoder.up_blocks.{{i}}.attentions.{{j}}.{u_name}.{{t}}", kind=kind),
            Rule(J_Q + f"{{s}}.mid.attn_1.{j_name}.{{t}}", U_Q + f"{{s}}.mid_block.attentions.0.{u_name}.{{t}}", {"s": "encoder|decoder"}, kind=kind),
        ]
    return rules


def janus_rules(vision_depth: int, gen_depth: int, lm_base: str) -> list[Rule]:
    """Every rule for a model with these aligner depths; `lm_base`: the causal LM's decoder attribute ("model")."""
    return [
        Rule(J_V + "embeddings.{p}.{t}", U_V + "embeddings.{p}.{t}", {"p": "patch_embedding|position_embedding"}),
        Rule(J_V + "encoder.layers.{i}.self_attn.projection_layer.{t}", U_V + "encoder.layers.{i}.self_attn.out_proj.{t}"),
        Rule(J_V + "encoder.layers.{i}.{p}.{t}", U_V + "encoder.layers.{i}.{p}.{t}",
             {"p": r"layer_norm1|layer_norm2|mlp\.fc1|mlp\.fc2|self_attn\.q_proj|self_attn\.k_proj|self_attn\.v_proj"}),
        Rule(J_V + "post_layernorm.{t}", U_V + "post_layernorm.{t}"),
        *_mlp_rules("model.aligner.", "projector.mlp.", vision_depth),
        Rule("model.language_model.{rest}", f"backbone.lm.{lm_base}.{{rest}}", {"rest": ".+"}),
        Rule("lm_head.weight", "backbone.lm.lm_head.weight"),
        Rule("model.generation_embeddings.weight", "gen_head.embedding.weight"),
        *_mlp_rules("model.generation_aligner.", "gen_head.aligner.", gen_depth),
        Rule("model.generation_head.proj_out.{t}", "gen_head.head.0.{t}"),
        Rule("model.generation_head.vision_head.{t}", "gen_head.head.2.{t}"),
        *_vq_rules(),
    ]


def _to_unimm(kind: str, t: torch.Tensor) -> torch.Tensor:
    if kind == "conv1x1" and t.ndim == 4:
        return t.flatten(1)
    if kind == "codebook":
        # Janus looks codes up l2-normalised (get_codebook_entry; LlamaGen's codebook_l2_norm);
        # unimm's cosine-sim codebook stores them normalised. Kept in float32.
        return F.normalize(t.float(), p=2, dim=-1).unsqueeze(0)
    return t


def _to_janus(kind: str, t: torch.Tensor) -> torch.Tensor:
    if kind == "conv1x1" and t.ndim == 2:
        return t[:, :, None, None]
    if kind == "codebook":
        return t.squeeze(0)
    return t


def translate_state(state: dict, rules: list[Rule], side: str) -> tuple[dict, list[str], dict]:
    """Rename (and reshape) `state`, whose names are on `side` ("janus" or "unimm").

    Returns (translated state, names no rule matched, {new name: old name}).
    """
    out, unmatched, origin = {}, [], {}
    fn = _to_unimm if side == "janus" else _to_janus
    for key, tensor in state.items():
        for rule in rules:
            new = rule.translate(key, side)
            if new is not None:
                if new in out:
                    raise ValueError(f"two weights map to {new}: {origin[new]} and {key}")
                out[new], origin[new] = fn(rule.kind, tensor).contiguous(), key
                break
        else:
            unmatched.append(key)
    return out, unmatched, origin
