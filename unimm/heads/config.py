from __future__ import annotations

from dataclasses import dataclass, field

from ..layers import check_activation

@dataclass
class GenerationConfig:
    # A registered generation family (unimm.generation): autoregressive (next VQ token: Janus,
    # LlamaGen), masked (MaskGIT-style parallel decoding of VQ tokens: Show-o), flow (rectified
    # flow on VAE latents: JanusFlow, Transfusion), or one registered by your own module.
    paradigm: str = "autoregressive"
    embed_dim: int | None = None  # discrete paradigms: image-token embedding width; None: the VQ code dim (Janus)
    aligner_depth: int = 2  # MLP from the image embedding (or latent patch) to the backbone width
    head_hidden: int | None = None  # hidden width of the 2-layer head; None: backbone width
    # Activation inside the aligner and the head (a transformers name; Janus: its VQ config's hidden_act).
    activation: str = "gelu"
    # flow: latent patch side; tokens per image = (latent grid / patch_size)^2.
    patch_size: int = 1
    # flow training: t ~ sigmoid(N(logit_mean, logit_std)) (logit-normal, SD3 arXiv:2403.03206),
    # then shifted by `shift` towards noise (shift > 1) as for higher resolutions.
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 1.0
    # autoregressive: a learned vector per image-token position added to the token's embedding,
    # zeros at first (a model given it later starts unchanged); without it the image grid is
    # known to the backbone only through 1-D rotary positions over the raster order.
    position_embedding: bool = False
    # autoregressive training: the fraction of the teacher-forced image tokens fed back as random
    # codes (each input token independently; the targets stay true), so the backbone learns to
    # draw the prompt's image from a context with mistakes in it, as its own samples will have.
    # 0 (off) is plain teacher forcing; inference never corrupts anything.
    token_noise: float = 0.0
    # The family's own settings for a generator it builds beside the backbone (the dit
    # family's diffusers transformer and connector: unimm.heads.dit.DiTGeneratorConfig).
    generator: dict = field(default_factory=dict)

    def __post_init__(self):
        from ..generation import get_family

        get_family(self.paradigm).check_config(self)  # names the registered paradigms if it is not one
        if isinstance(self.token_noise, bool) or not isinstance(self.token_noise, (int, float)) or not (
                0 <= self.token_noise < 1):
            raise ValueError(f"generation.token_noise must be a number in [0, 1), got {self.token_noise!r}")
        if self.patch_size < 1 or self.shift <= 0 or self.logit_std <= 0:
            raise ValueError("patch_size must be >= 1, shift > 0 and logit_std > 0")
        check_activation(self.activation)
