"""Backbone: any transformers causal LM (Llama, Qwen2, ...), from a config or a checkpoint.

The unified model talks to it through embeddings in and hidden states out
(`decoder`), plus the LM head for text logits, so image pathways can feed
their own embeddings and read their own heads.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from ..config import check_keys

# Keys of a transformers config that describe the file, not the architecture.
_META_KEYS = {"architectures", "transformers_version", "model_type", "_name_or_path", "torch_dtype", "dtype"}


def _config_keys(model_type: str) -> set[str]:
    cfg_cls = type(AutoConfig.for_model(model_type))
    return set(cfg_cls().to_dict()) | set(inspect.signature(cfg_cls.__init__).parameters) - {"self", "kwargs"}


@dataclass
class BackboneConfig:
    # Local directory or hub id of a causal LM checkpoint; None builds `model_type` from `config`.
    pretrained: str | None = None
    model_type: str = "llama"
    # Keyword arguments of the transformers config class for `model_type`.
    config: dict = field(default_factory=dict)
    # "sdpa" (default), "eager", or "flash_attention_2" where installed.
    attn_implementation: str = "sdpa"

    def __post_init__(self):
        if self.pretrained is None:
            try:
                keys = _config_keys(self.model_type)
            except (KeyError, ValueError) as e:
                raise ValueError(f"unknown backbone model_type {self.model_type!r}") from e
            check_keys(self.config, keys - _META_KEYS, f"backbone.config ({self.model_type})")


class Backbone(nn.Module):
    def __init__(self, config: BackboneConfig, vocab_size: int, cross_attention=None):
        super().__init__()
        self.config = config
        if config.pretrained:
            self.lm = AutoModelForCausalLM.from_pretrained(
                config.pretrained, attn_implementation=config.attn_implementation, dtype=torch.float32
            )
        else:
            rows = max(vocab_size, config.config.get("vocab_size", 0))  # keep a padded table padded
            hf = AutoConfig.for_model(config.model_type, **{**config.config, "vocab_size": rows})
            self.lm = AutoModelForCausalLM.from_config(hf, attn_implementation=config.attn_implementation)
        if self.lm.get_input_embeddings().num_embeddings < vocab_size:
            # New special tokens (image placeholder, begin/end of image) need rows; tables that
            # checkpoints pad beyond the tokenizer (Qwen2) are kept as they are.
            self.lm.resize_token_embeddings(vocab_size, mean_resizing=False)
        if cross_attention is not None:  # gated blocks that read images beside the LM's layers
            from ..models.cross_attention import CrossAttentionStack

            text = self.lm.config.get_text_config()
            self.cross_attn = CrossAttentionStack(cross_attention, self.hidden_size, len(self.decoder_layers()),
                                                  text.num_attention_heads)

    # -- what the unified model and samplers use ---------------------------------
    @property
    def hf_config(self):
        return self.lm.config

    @property
    def hidden_size(self) -> int:
        return self.lm.config.get_text_config().hidden_size

    @property
    def max_positions(self) -> int | None:
        return getattr(self.lm.config.get_text_config(), "max_position_embeddings", None)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm.get_input_embeddings()(input_ids)  # (B, T) -> (B, T, D)

    @property
    def lm_head(self) -> nn.Module:
        return self.lm.get_output_embeddings()

    def decoder(self, inputs_embeds: torch.Tensor, cache=None, **kwargs):
        """Run the transformer stack without the LM head; returns the base model output.

        `cache` (a transformers Cache) goes in under the name this transformers version
        takes: `cache` from 5.2x on, `past_key_values` before (deprecated since, removed in 5.40).
        """
        decoder = self.lm.get_decoder()
        if cache is not None:
            kwargs[_cache_keyword(type(decoder))] = cache
        return decoder(inputs_embeds=inputs_embeds, use_cache=kwargs.pop("use_cache", True), **kwargs)

    def decoder_layers(self) -> nn.ModuleList:
        return self.lm.get_decoder().layers

    def seeing(self, visual: torch.Tensor, key_mask: torch.Tensor, watch=None):
        """A context in which the cross-attention blocks read `visual` (B, V, D) where `key_mask` (B, V);
        with `watch` (rows, positions) it yields each block's attention there (CrossAttentionStack)."""
        if not hasattr(self, "cross_attn"):
            raise ValueError("this backbone has no cross-attention layers (cross_attention: in the model config)")
        return self.cross_attn.seeing(self.decoder_layers(), visual, key_mask, watch)

    # -- mixture-of-experts backbones (Qwen2-MoE, OLMoE, Mixtral, ...) -------------------
    def routers(self) -> list[nn.Module]:
        """The expert routers: each MoE block's `gate` (a module beside its `experts`). Found once:
        the training step asks on every call."""
        if "_routers" not in self.__dict__:
            self.__dict__["_routers"] = [m.gate for m in self.lm.modules()
                                         if isinstance(getattr(m, "gate", None), nn.Module) and hasattr(m, "experts")]
        return self.__dict__["_routers"]

    @contextlib.contextmanager
    def routing(self):
        """Collect every router's logits (tokens, experts) from the forward passes run inside."""
        logits: list[torch.Tensor] = []

        def keep(module, args, output):
            logits.append(output[0] if isinstance(output, tuple) else output)

        hooks = [r.register_forward_hook(keep) for r in self.routers()]
        try:
            yield logits
        finally:
            for h in hooks:
                h.remove()

    def router_loss(self, logits: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """The load-balancing loss of Switch Transformer / Mixtral, as transformers computes it
        (num_experts * sum over experts of the fraction of tokens that pick the expert among their
        top k times its mean router probability, over every router's tokens together; padding
        tokens count too), times the config's `router_aux_loss_coef`; and the expert load: the busiest and the
        idlest expert's share of all picks, times the number of experts (1.0 = perfectly even)."""
        cfg = self.lm.config.get_text_config()
        k = getattr(cfg, "num_experts_per_tok", 1)

        def picks(z: torch.Tensor):
            probs = z.float().softmax(-1)  # (tokens, E)
            return probs, torch.zeros_like(probs).scatter_(-1, probs.topk(k, -1).indices, 1.0)

        probs, chosen = picks(torch.cat(logits))  # every router's tokens together, as transformers does
        E = probs.shape[-1]
        loss = E * (chosen.mean(0) * probs.mean(0)).sum()  # mean(0) of the picks: fraction of tokens, sums to k
        load = torch.stack([picks(z)[1].mean(0) / k * E for z in logits])  # per router, 1.0 = even
        coef = getattr(cfg, "router_aux_loss_coef", 0.01)
        return coef * loss, {"expert_load_max": float(load.max()), "expert_load_min": float(load.min())}

    def resolved_config(self) -> BackboneConfig:
        """The config that rebuilds this backbone without the original checkpoint."""
        cfg = self.lm.config
        keys = _config_keys(cfg.model_type) - _META_KEYS
        full = {k: v for k, v in cfg.to_dict().items() if k in keys}
        return BackboneConfig(
            pretrained=None, model_type=cfg.model_type, config=full,
            attn_implementation=self.config.attn_implementation,
        )


@functools.lru_cache(maxsize=None)
def _cache_keyword(decoder_class) -> str:
    params = inspect.signature(decoder_class.forward).parameters
    return "cache" if "cache" in params else "past_key_values"
