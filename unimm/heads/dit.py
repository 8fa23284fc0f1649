"""A diffusion transformer from diffusers, conditioned by the unified backbone (MetaQuery, BLIP3-o, OmniGen2).

The backbone reads the prompt; what it understood reaches the generator as
`encoder_hidden_states`, in one of two ways (`conditioning`):

- "queries" (MetaQuery arXiv:2504.06256, BLIP3-o): `num_queries` learnable
  embeddings follow the prompt (after BOI); the backbone sees them
  bidirectionally among themselves, and their last hidden states are the
  condition. A fixed count also suits MMDiT, which takes no text mask.
- "prompt_states" (Qwen-Image, OmniGen2): the prompt tokens' hidden states
  (layer `layer`), left-padded to `max_prompt_tokens`, with their mask for
  generators that take one (PixArt); MMDiT attends to the padding rows too,
  which are zero after the connector's masking.

Either passes through a small connector (a few bidirectional transformer
layers, a projection to the generator's width and an RMSNorm); the mean of the
connector's outputs feeds `pooled_projections` where the generator has one
(SD3's MMDiT).

Flow matching follows diffusers' convention (SD3): sigma in [0, 1] is the noise
level, x_sigma = (1 - sigma) x_0 + sigma * noise, the model predicts the
velocity noise - x_0 at timestep 1000 * sigma, and a step is
x <- x + (sigma_next - sigma) v.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError, check_keys
from .ip_adapter import IPAdapter, IPAdapterConfig

# Generators by diffusers class name -> (how the condition goes in, the config key of its width).
GENERATORS = {
    "SD3Transformer2DModel": "joint_attention_dim",
    "PixArtTransformer2DModel": "caption_channels",
}
CONDITIONING = ("queries", "prompt_states")


@dataclass
class DiTGeneratorConfig:
    # A diffusers transformer class (GENERATORS) and its keyword arguments. in_channels,
    # out_channels and sample_size follow the image tokenizer's latents unless given.
    cls: str = "SD3Transformer2DModel"
    config: dict = field(default_factory=dict)
    conditioning: str = "queries"  # or "prompt_states"
    num_queries: int = 16  # "queries": learnable query embeddings after the prompt
    max_prompt_tokens: int = 32  # "prompt_states": the prompt's hidden states, padded / cut to this many
    layer: int = -1  # "prompt_states": which backbone hidden state (-1 the last)
    connector_layers: int = 2  # bidirectional transformer layers between backbone and generator
    connector_heads: int = 4
    # ControlNets (SD3ControlNetModel, MMDiT only): {control type: number of layers}, e.g.
    # {edges: 2, segmentation: 2}; built from the generator's weights with zero-initialised
    # outputs, so an untrained ControlNet leaves the generator's output as it was. Several
    # are used at once by summing their residuals (as SD3MultiControlNetModel does), so they
    # share one layer count.
    controlnets: dict = field(default_factory=dict)
    # IP-Adapter (MMDiT only): reference pictures steer the generator through the model's own
    # SigLIP features (heads/ip_adapter.py); None: no adapter.
    ip_adapter: IPAdapterConfig | None = None
    # Training: sigma ~ sigmoid(N(logit_mean, logit_std)) (logit-normal, SD3), then the shift.
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 1.0

    def __post_init__(self):
        if self.cls not in GENERATORS:
            raise ConfigError(f"generation.generator.cls must be one of {', '.join(GENERATORS)}, got {self.cls!r}")
        if self.conditioning not in CONDITIONING:
            raise ConfigError(f"generation.generator.conditioning must be one of {', '.join(CONDITIONING)}, "
                              f"got {self.conditioning!r}")
        check_keys(self.config, _generator_keys(self.cls), f"generation.generator.config ({self.cls})")
        from ..data.control import check_control_type

        for kind, layers in self.controlnets.items():
            check_control_type(kind)
            if not isinstance(layers, int) or isinstance(layers, bool) or layers < 1:
                raise ConfigError(f"generation.generator.controlnets.{kind} must be a layer count >= 1, got {layers!r}")
        if self.controlnets and self.cls != "SD3Transformer2DModel":
            raise ConfigError(f"generation.generator.controlnets need SD3Transformer2DModel, not {self.cls}")
        if self.ip_adapter is not None and self.cls != "SD3Transformer2DModel":
            raise ConfigError(f"generation.generator.ip_adapter needs SD3Transformer2DModel, not {self.cls}")
        if len(set(self.controlnets.values())) > 1:
            raise ConfigError("generation.generator.controlnets must share one layer count (their residuals are summed)")
        if self.connector_layers < 0 or self.shift <= 0 or self.logit_std <= 0:
            raise ConfigError("generation.generator: connector_layers must be >= 0, shift > 0 and logit_std > 0")


def _generator_class(name: str):
    import diffusers

    return getattr(diffusers, name)


def _generator_keys(name: str) -> set[str]:
    import inspect

    return set(inspect.signature(_generator_class(name).__init__).parameters) - {"self"}


def shifted_sigmas(steps: int, shift: float = 1.0, num_train_timesteps: int = 1000) -> torch.Tensor:
    """The steps + 1 noise levels of a run from 1 to 0, spaced as FlowMatchEulerDiscreteScheduler
    spaces them: evenly from 1 to its smallest training sigma (1 / num_train_timesteps, shifted),
    then shifted, then 0 appended."""
    def shifted(s):
        return shift * s / (1 + (shift - 1) * s)

    sigmas = torch.linspace(1.0, shifted(1.0 / num_train_timesteps), steps, dtype=torch.float64)
    return torch.cat([shifted(sigmas), sigmas.new_zeros(1)]).float()


class Connector(nn.Module):
    """Backbone states (B, N, D) -> generator condition (B, N, C) and pooled vector (B, C)."""

    def __init__(self, hidden_size: int, out_dim: int, layers: int, heads: int):
        super().__init__()
        if layers and hidden_size % heads:
            raise ConfigError(f"the connector's width {hidden_size} is not divisible by connector_heads={heads}")
        block = nn.TransformerEncoderLayer(hidden_size, heads, 4 * hidden_size, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(block, layers, enable_nested_tensor=False) if layers else None
        self.proj = nn.Linear(hidden_size, out_dim)
        self.norm = nn.RMSNorm(out_dim, eps=1e-6)

    def forward(self, states: torch.Tensor, mask: torch.Tensor | None = None):
        pad = None if mask is None else ~mask.bool()
        x = states if self.layers is None else self.layers(states, src_key_padding_mask=pad)
        out = self.norm(self.proj(x))
        if mask is not None:
            out = out * mask[..., None].to(out.dtype)  # padding rows carry nothing
            pooled = out.sum(1) / mask.sum(1, keepdim=True).clamp(min=1).to(out.dtype)
        else:
            pooled = out.mean(1)
        return out, pooled


class DiTHead(nn.Module):
    """Queries (or prompt-state reading), connector, and a diffusers transformer over latents."""

    def __init__(self, config: DiTGeneratorConfig, latent_channels: int, latent_grid: int, hidden_size: int,
                 encoder_width: int | None = None):
        super().__init__()
        self.config = config
        self.c, self.grid = latent_channels, latent_grid
        kwargs = {"in_channels": latent_channels, "out_channels": latent_channels, "sample_size": latent_grid,
                  **config.config}
        if kwargs["in_channels"] != latent_channels or kwargs["sample_size"] != latent_grid:
            raise ConfigError(f"the generator's in_channels / sample_size must match the latents "
                              f"({latent_channels} channels, {latent_grid} x {latent_grid})")
        patch = kwargs.get("patch_size", 2)
        if not isinstance(patch, int) or latent_grid % patch:
            raise ConfigError(f"the latent grid {latent_grid} is not divisible by the generator's patch_size {patch!r}")
        width_key = GENERATORS[config.cls]
        kwargs.setdefault(width_key, hidden_size)
        if config.cls == "PixArtTransformer2DModel":
            kwargs.setdefault("cross_attention_dim", kwargs["num_attention_heads"] * kwargs["attention_head_dim"]
                              if "num_attention_heads" in kwargs and "attention_head_dim" in kwargs else None)
            kwargs.setdefault("norm_num_groups", 1)
        try:
            self.transformer = _generator_class(config.cls)(**kwargs)
        except (TypeError, ValueError) as e:  # a value of the wrong type or out of range for diffusers
            raise ConfigError(f"generation.generator.config: {config.cls} cannot be built: {e}") from None
        _check_controlnet_depth(config.controlnets, self.transformer)
        cond_dim = self.transformer.config[width_key]
        self.has_pooled = "pooled_projection_dim" in self.transformer.config
        self.connector = Connector(hidden_size, cond_dim, config.connector_layers, config.connector_heads)
        self.pool = (nn.Linear(cond_dim, self.transformer.config["pooled_projection_dim"])
                     if self.has_pooled else None)
        self.controlnets = nn.ModuleDict({kind: controlnet_from(self.transformer, layers)
                                          for kind, layers in config.controlnets.items()})
        if config.conditioning == "queries":
            self.queries = nn.Parameter(torch.randn(config.num_queries, hidden_size) / math.sqrt(hidden_size))
        if config.ip_adapter is not None and encoder_width is None:
            raise ConfigError("generation.generator.ip_adapter reads the understanding encoder: its width is needed")
        self.ip_adapter = (IPAdapter(config.ip_adapter, self.transformer, encoder_width)
                           if config.ip_adapter is not None else None)

    def add_part(self, config: DiTGeneratorConfig, part: str, encoder_width: int) -> nn.Module:
        """Build the part named `part` ("controlnet_<type>" or "ip_adapter") that `config` (this
        head's config with that part added) describes, install it, and return it (weights as built)."""
        if part == "ip_adapter":
            if self.ip_adapter is not None:  # rebuilt: the transformer gets its own processors back first
                self.ip_adapter.uninstall()
            self.ip_adapter = IPAdapter(config.ip_adapter, self.transformer, encoder_width)
            module = self.ip_adapter
        else:
            kind = part.removeprefix("controlnet_")
            _check_controlnet_depth({kind: config.controlnets[kind]}, self.transformer)
            module = self.controlnets[kind] = controlnet_from(self.transformer, config.controlnets[kind])
        self.config = config
        return module

    def drop_part(self, config: DiTGeneratorConfig, part: str) -> None:
        """Undo add_part (a part whose weights could not be loaded): remove it, restore `config`."""
        if part == "ip_adapter":
            self.ip_adapter.uninstall()
            self.ip_adapter = None
        else:
            del self.controlnets[part.removeprefix("controlnet_")]
        self.config = config

    @property
    def num_tokens(self) -> int:
        """Positions the backbone runs per image beyond the prompt: the queries (0 for prompt states)."""
        return self.config.num_queries if self.config.conditioning == "queries" else 0

    # -- the condition --------------------------------------------------------
    def condition(self, model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """One backbone pass over the prompts (B, L) -> the generator's conditioning keyword arguments."""
        if self.config.conditioning == "queries":
            B = prompt_ids.shape[0]
            queries = self.queries.to(model.dtype)[None].expand(B, -1, -1)
            states = model.image_span_hidden(prompt_ids, prompt_mask, queries)  # (B, N, D)
            mask = None
        else:
            from ..models.unified import positions

            out = model.backbone.decoder(model.backbone.embed(prompt_ids), attention_mask=prompt_mask,
                                         position_ids=positions(prompt_mask), use_cache=False,
                                         output_hidden_states=self.config.layer != -1)
            states = out.last_hidden_state if self.config.layer == -1 else out.hidden_states[self.config.layer]
            longest = int(prompt_mask.sum(1).max())
            if longest > self.config.max_prompt_tokens:
                import warnings

                warnings.warn(f"a prompt of {longest} tokens is longer than generation.generator.max_prompt_tokens="
                              f"{self.config.max_prompt_tokens}: the generator reads only its last "
                              f"{self.config.max_prompt_tokens}", stacklevel=2)
            states, mask = _fixed_length(states, prompt_mask, self.config.max_prompt_tokens)
        cond, pooled = self.connector(states.to(self.connector.proj.weight.dtype), mask)
        kwargs = {"encoder_hidden_states": cond}
        if self.has_pooled:
            kwargs["pooled_projections"] = self.pool(pooled)
        elif self.config.cls == "PixArtTransformer2DModel":
            kwargs["added_cond_kwargs"] = {"resolution": None, "aspect_ratio": None}
            if mask is not None:
                kwargs["encoder_attention_mask"] = mask
        return kwargs

    # -- the generator --------------------------------------------------------
    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, condition: dict, control=None,
                 reference=None) -> torch.Tensor:
        """Latents (B, C, h, w) at noise levels sigma (B,) -> predicted velocity noise - x_0.

        `control`: [(control type, its map's latents (B, C, h, w), scale), ...] for the ControlNets,
        a scale being a number or one per row (B,); the same call serves training and sampling,
        so both feed them the same pooled projection. `reference`: (SigLIP features of the
        reference pictures (B, N, D_enc), scale) for the IP-Adapter; zeros in a row mean none.
        The scale lives on diffusers' processors for the pass and is put back after it, so a
        call never leaks its scale into the next (concurrent calls on one model do not mix
        scales safely: the app runs one model call at a time).
        """
        if reference is None:
            return self._velocity(x, sigma, condition, control)
        if self.ip_adapter is None:
            raise ValueError("this model has no IP-Adapter: a reference image cannot steer it")
        features, scale = reference
        previous = self.ip_adapter.scale
        self.ip_adapter.set_scale(scale)
        try:
            embeds = self.ip_adapter.embed(features, sigma * 1000)
            return self._velocity(x, sigma, {**condition, "joint_attention_kwargs": embeds}, control)
        finally:
            self.ip_adapter.set_scale(previous)

    def _velocity(self, x: torch.Tensor, sigma: torch.Tensor, condition: dict, control) -> torch.Tensor:
        dtype = next(self.transformer.parameters()).dtype
        x, t = x.to(dtype), sigma * 1000
        residuals = None
        for kind, latents, scale in control or ():
            if kind not in self.controlnets:
                raise ValueError(f"this model has no {kind!r} ControlNet; it has: "
                                 f"{', '.join(self.controlnets) or 'none'}")
            per_row = torch.is_tensor(scale)
            out = self.controlnets[kind](hidden_states=x, controlnet_cond=latents.to(dtype),
                                         conditioning_scale=1.0 if per_row else scale, timestep=t, return_dict=False,
                                         **{k: v for k, v in condition.items() if k != "joint_attention_kwargs"})[0]
            if per_row:
                out = [o * scale.to(o.dtype)[:, None, None] for o in out]
            residuals = out if residuals is None else [a + b for a, b in zip(residuals, out)]
        if residuals is not None:
            condition = {**condition, "block_controlnet_hidden_states": residuals}
        out = self.transformer(hidden_states=x, timestep=t, return_dict=False, **condition)[0]
        if out.shape[1] != self.c:  # PixArt-style learned sigma: the first C channels are the prediction
            out = out[:, :self.c]
        return out.float()

    def loss(self, model, prompt_ids, prompt_mask, targets, generator=None, control=None,
             reference=None) -> torch.Tensor:
        """`reference`: SigLIP features (B, N, D_enc) of each item's reference picture; a share
        ip_adapter.drop of them is replaced by zeros (no reference), so guidance has an
        unconditional side to push against."""
        B = targets.shape[0]
        cfg = self.config
        u = torch.randn(B, device=targets.device, generator=generator) * cfg.logit_std + cfg.logit_mean
        sigma = torch.sigmoid(u)
        sigma = cfg.shift * sigma / (1 + (cfg.shift - 1) * sigma)
        noise = torch.randn(targets.shape, device=targets.device, generator=generator)
        s = sigma[:, None, None, None]
        x = (1 - s) * targets.float() + s * noise
        control = list((control or {}).items())
        if len(control) > 1:  # several maps: each is kept or dropped per item, so each also learns alone
            keep = (torch.rand(len(control), B, device=targets.device, generator=generator) < 0.5).float()
            control = [(k, lat, keep[i]) for i, (k, lat) in enumerate(control)]
        else:
            control = [(k, lat, 1.0) for k, lat in control]
        if reference is not None:
            if self.ip_adapter is None:
                raise ValueError("the training data has reference images but this model has no IP-Adapter")
            keep = torch.rand(B, device=targets.device, generator=generator) >= cfg.ip_adapter.drop
            reference = (reference * keep[:, None, None].to(reference.dtype), 1.0)
        v = self.velocity(x, sigma, self.condition(model, prompt_ids, prompt_mask), control, reference)
        return F.mse_loss(v, noise - targets.float())


def _check_controlnet_depth(controlnets: dict, transformer) -> None:
    too_deep = {k: n for k, n in controlnets.items() if n >= transformer.config.num_layers}
    if too_deep:
        raise ConfigError(f"generation.generator.controlnets: {too_deep} — a ControlNet copies the generator's "
                          f"first blocks and may have at most num_layers - 1 = "
                          f"{transformer.config.num_layers - 1} layers")


def controlnet_from(transformer, num_layers: int):
    """An SD3ControlNetModel built from `transformer`'s weights, as diffusers' `from_transformer`
    builds it, but on a copy of its config (from_transformer writes into the source's config)
    and with the control map entering as latents of the same channels (no extra channels)."""
    from diffusers import SD3ControlNetModel

    config = {k: v for k, v in dict(transformer.config).items() if not k.startswith("_")}
    config.update(num_layers=num_layers, extra_conditioning_channels=0,
                  force_zeros_for_pooled_projection=False)  # the real pooled projection, in training and sampling
    net = SD3ControlNetModel.from_config(config)
    net.pos_embed.load_state_dict(transformer.pos_embed.state_dict())
    net.time_text_embed.load_state_dict(transformer.time_text_embed.state_dict())
    net.context_embedder.load_state_dict(transformer.context_embedder.state_dict())
    net.transformer_blocks.load_state_dict(transformer.transformer_blocks.state_dict(), strict=False)
    for p in net.pos_embed_input.parameters():  # the map enters through zeros (its output blocks start at zero too)
        nn.init.zeros_(p)
    return net


def _fixed_length(states: torch.Tensor, mask: torch.Tensor, length: int):
    """Left-padded states (B, L, D) and mask -> right-aligned (B, length, D) and mask: the last
    `length` positions (the prompt's end), padded on the left with zeros."""
    B, L, D = states.shape
    if L >= length:
        return states[:, -length:], mask[:, -length:]
    pad = length - L
    return (torch.cat([states.new_zeros(B, pad, D), states], 1), torch.cat([mask.new_zeros(B, pad), mask], 1))
