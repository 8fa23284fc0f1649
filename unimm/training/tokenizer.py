"""Training image tokenizers (VQ or VAE) with accelerate.

Losses: reconstruction (L1 or L2), optional perceptual feature loss, the
quantizer's commitment / codebook loss (VQ) or the KL term (VAE). While it
trains it reports reconstruction error (MSE, PSNR) on a fixed held-out batch
and, for VQ, codebook usage: perplexity of the code histogram and the number
of unused codes. Outputs in `output_dir`: the tokenizer (`save_pretrained`),
metrics.jsonl and reconstructions.png (originals over reconstructions).
"""
from __future__ import annotations

import json
import math
from functools import partial
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import ConfigError, check_keys, from_dict, to_dict
from ..data.images import ImageDataset, check_image_data_spec
from ..folders import check_destination
from ..tokenizers import build_image_tokenizer, normalise_image_tokenizer_spec
from .outputs import claim_output_dir
from .precision import check_mixed_precision, resolve_mixed_precision


@dataclass
class TokenizerTrainConfig:
    # {"type": "vq" | "vae", ...} as in a model config, or {"checkpoint": DIR} to continue training one.
    tokenizer: dict = field(default_factory=lambda: {"type": "vq"})
    # {"source": "shapes", "num_samples": ..., "seed": ...} or {"source": "folder", "path": DIR}.
    data: dict = field(default_factory=lambda: {"source": "shapes", "num_samples": 4096})
    output_dir: str = "runs/tokenizer"
    steps: int = 1000
    batch_size: int = 32
    lr: float = 3e-4
    warmup_steps: int = 50
    # "constant" after warm-up, or "cosine": decay to min_lr_ratio * lr by the last step.
    schedule: str = "constant"
    min_lr_ratio: float = 0.1
    save_every: int = 0  # also save the tokenizer every N steps (0: only at the end)
    recon_loss: str = "l1"  # "l1" (sharper, VQGAN) or "l2"
    # Extra reconstruction weight on outline pixels: a pixel whose 3x3 neighbourhood in the
    # target holds more than one colour counts 1 + edge_weight times (the loss is then
    # renormalised to the mean weight). A small object's corners are a few dozen of 4,096
    # pixels, so a plain mean lets a decoder round them off; 0 turns it off.
    edge_weight: float = 0.0
    # Optional perceptual loss: {"encoder": DIR of a SigLIP checkpoint, "weight": 0.1, "layer": -2}.
    perceptual: dict | None = None
    aux_weight: float = 1.0  # VQ commitment / codebook loss weight
    kl_weight: float = 1e-6  # VAE KL weight (small: we want a near-deterministic latent)
    grad_clip: float = 1.0
    log_every: int = 50
    eval_size: int = 64  # held-out images for reconstruction error and codebook usage
    seed: int = 0
    num_workers: int = 0
    mixed_precision: str = "no"  # "bf16" on GPUs that have it (precision.py: CPUs without it train in fp32)
    # Fine-tune only the decoder of a trained tokenizer ({"checkpoint": DIR}): the encoder and
    # codebook stay frozen, so every image keeps exactly its codes (or latent) and a
    # generator trained on them stays valid, while reconstructions get sharper. Stable
    # Diffusion's improved VAE decoders (ft-EMA / ft-MSE) were made this way.
    decoder_only: bool = False

    def __post_init__(self):
        check_mixed_precision(self.mixed_precision)
        if self.recon_loss not in ("l1", "l2"):
            raise ValueError(f"recon_loss must be 'l1' or 'l2', got {self.recon_loss!r}")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not (isinstance(self.edge_weight, (int, float)) and self.edge_weight >= 0):
            raise ValueError(f"edge_weight must be a number >= 0, got {self.edge_weight!r}")
        if self.save_every < 0:
            raise ValueError(f"save_every must be >= 0, got {self.save_every}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")
        if self.decoder_only and "checkpoint" not in self.tokenizer:
            raise ValueError("decoder_only fine-tunes a trained tokenizer: set tokenizer to {checkpoint: DIR}")
        self.tokenizer = normalise_image_tokenizer_spec(self.tokenizer)
        check_image_data_spec(self.data)
        if self.perceptual is not None:
            check_keys(self.perceptual, {"encoder", "weight", "layer"}, "perceptual")
            if "encoder" not in self.perceptual:
                raise ValueError("perceptual needs 'encoder': a local SigLIP checkpoint directory")


class PerceptualLoss(torch.nn.Module):
    """Feature-matching loss in a frozen SigLIP tower (no LPIPS weights can be downloaded here)."""

    def __init__(self, encoder: str, weight: float = 0.1, layer: int = -2):
        super().__init__()
        from transformers import SiglipVisionModel

        self.model = SiglipVisionModel.from_pretrained(encoder).eval().requires_grad_(False)
        self.weight, self.layer = weight, layer

    def forward(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # Images in [-1, 1] are already SigLIP-normalised (mean = std = 0.5).
        feats = lambda x: self.model(pixel_values=x, output_hidden_states=True,
                                     interpolate_pos_encoding=True).hidden_states[self.layer]
        return self.weight * F.mse_loss(feats(recon), feats(target))


def edge_mask(images: torch.Tensor, tolerance: float = 0.02) -> torch.Tensor:
    """(B, 1, H, W) float mask of pixels whose 3x3 neighbourhood spans more than `tolerance`
    in some channel (images in [-1, 1]): object outlines, both sides of the edge."""
    spread = F.max_pool2d(images, 3, 1, 1) + F.max_pool2d(-images, 3, 1, 1)  # local max - local min
    return (spread.amax(1, keepdim=True) > tolerance).to(images.dtype)


def reconstruction_loss(recon: torch.Tensor, images: torch.Tensor, kind: str = "l1",
                        edge_weight: float = 0.0) -> torch.Tensor:
    """Mean L1 / L2 error; with edge_weight > 0, outline pixels (edge_mask) weigh 1 + edge_weight."""
    err = (recon - images).abs() if kind == "l1" else (recon - images) ** 2
    if not edge_weight:
        return err.mean()
    weight = 1 + edge_weight * edge_mask(images)
    return (err * weight).sum() / (weight.sum() * err.shape[1])


def _losses(tok, images, cfg: TokenizerTrainConfig, perceptual):
    recon, regularisers = tok.training_forward(images)
    weights = {"aux": cfg.aux_weight, "kl": cfg.kl_weight}
    rec = reconstruction_loss(recon, images, cfg.recon_loss, cfg.edge_weight)
    parts = {"recon": rec, **{k: weights.get(k, 1.0) * v for k, v in regularisers.items()}}
    if perceptual is not None:
        parts["perceptual"] = perceptual(recon, images)
    return sum(parts.values()), parts


def _codebook_ready(tok) -> bool:
    """False while a k-means-initialised codebook still waits for its first batch: evaluating
    then would initialise it from the held-out images instead of training data."""
    codebook = getattr(getattr(getattr(tok, "quantizer", None), "q", None), "_codebook", None)
    initted = getattr(codebook, "initted", None)
    return initted is None or bool(initted)


def freeze_all_but_decoder(tok) -> None:
    """requires_grad only on the decoder side; the encoder side also goes to eval mode, so
    no EMA codebook update, dead-code replacement or dropout can move any image's codes."""
    prefixes = tok.decoder_prefixes
    for name, p in tok.named_parameters():
        p.requires_grad_(name.startswith(prefixes))
    tok.train()
    for name, m in tok.named_modules():
        if name and not any((name + ".").startswith(pre) for pre in prefixes):
            m.eval()


def _modes(tok) -> dict[str, bool]:
    return {name: m.training for name, m in tok.named_modules()}


def _restore(tok, modes: dict[str, bool]) -> None:
    for name, m in tok.named_modules():
        m.training = modes[name]


@torch.no_grad()
def evaluate(tok, images: torch.Tensor) -> dict[str, float]:
    modes = _modes(tok)
    tok.eval()
    recon, out = tok.reconstruct(images), tok.usage(images)
    _restore(tok, modes)
    mse = F.mse_loss(recon.clamp(-1, 1), images).item()
    # PSNR over pixel values in [0, 1]: images span 2, so MSE/4.
    out.update(mse=mse, psnr=10 * math.log10(1.0 / max(mse / 4, 1e-10)))
    return out


def reconstruction_grid(tok, images: torch.Tensor, path: Path, n: int = 8) -> None:
    from ..images import to_pil

    with torch.no_grad():
        modes = _modes(tok)
        tok.eval()
        recon = tok.reconstruct(images[:n])
        _restore(tok, modes)
    top, bottom = to_pil(images[:n]), to_pil(recon)
    s = top[0].size[0]
    from PIL import Image

    grid = Image.new("RGB", (s * len(top), 2 * s), "white")
    for i, (a, b) in enumerate(zip(top, bottom)):
        grid.paste(a, (i * s, 0))
        grid.paste(b, (i * s, s))
    grid.save(path)


def _save(tok, path: Path, cfg: TokenizerTrainConfig, eval_images: torch.Tensor, overwrite: bool = True) -> None:
    """Calibrate (e.g. a VAE's latent shift and scale) and save; training mode is restored."""
    modes = _modes(tok)
    if not cfg.decoder_only:  # decoder_only keeps the latents, scaling included
        tok.eval()
        tok.calibrate(eval_images)
    tok.save_pretrained(path, overwrite=overwrite)
    _restore(tok, modes)


def lr_factor(cfg: TokenizerTrainConfig, step: int) -> float:
    """The learning rate at `step` as a fraction of cfg.lr: linear warm-up, then the schedule."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    done = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, done)))


def train_tokenizer(cfg: TokenizerTrainConfig, progress: bool = True, overwrite: bool = False) -> dict[str, float]:
    """Train, save and return the final held-out metrics."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    cuda = torch.cuda.is_available()
    acc = Accelerator(mixed_precision=resolve_mixed_precision(cfg.mixed_precision, cuda), cpu=not cuda)
    set_seed(cfg.seed)
    tok = build_image_tokenizer(cfg.tokenizer)
    tok.train()
    if cfg.decoder_only:
        freeze_all_but_decoder(tok)
    data_cfg = dict(cfg.data)
    source = data_cfg.pop("source", "shapes")
    image_size = tok.config.image_size
    data = ImageDataset(source, image_size, **data_cfg)
    n_eval = min(cfg.eval_size, max(1, len(data) // 10))
    eval_images = torch.stack([data[len(data) - 1 - i] for i in range(n_eval)])  # held out: the last n_eval
    train_set = torch.utils.data.Subset(data, range(len(data) - n_eval))
    if len(train_set) == 0:
        raise ConfigError("the dataset is too small to hold out evaluation images")
    loader = torch.utils.data.DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, drop_last=False,
                                         num_workers=cfg.num_workers, generator=torch.Generator().manual_seed(cfg.seed))
    opt = torch.optim.AdamW([p for p in tok.parameters() if p.requires_grad], lr=cfg.lr, betas=(0.5, 0.9))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, partial(lr_factor, cfg))
    perceptual = PerceptualLoss(**cfg.perceptual) if cfg.perceptual else None
    tok, opt, loader, sched = acc.prepare(tok, opt, loader, sched)
    if perceptual is not None:
        perceptual.to(acc.device)
    eval_images = eval_images.to(acc.device)

    out = Path(cfg.output_dir)
    check_destination(out / "tokenizer", overwrite)  # refused now, not after the run
    claim_output_dir(out, to_dict(cfg), overwrite=overwrite)
    log = (out / "metrics.jsonl").open("w") if acc.is_main_process else None
    bar = tqdm(total=cfg.steps, desc="tokenizer", disable=not (progress and acc.is_main_process))
    step, metrics, saved = 0, {}, False
    if _codebook_ready(acc.unwrap_model(tok)):  # the untrained baseline
        metrics = {"step": 0, **evaluate(acc.unwrap_model(tok), eval_images)}
        if log:
            log.write(json.dumps(metrics) + "\n")
    while step < cfg.steps:
        for images in loader:
            loss, parts = _losses(tok, images, cfg, perceptual)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"tokenizer loss became {loss.item()} at step {step}; nothing was saved")
            acc.backward(loss)
            if cfg.grad_clip:
                acc.clip_grad_norm_([p for p in tok.parameters() if p.requires_grad], cfg.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad()
            step += 1
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                metrics = {"step": step, "loss": loss.item(), **{k: v.item() for k, v in parts.items()},
                           **evaluate(acc.unwrap_model(tok), eval_images)}
                bar.set_postfix({k: f"{v:.3g}" for k, v in metrics.items() if k in ("loss", "psnr", "perplexity", "unused_codes")})
                if log:
                    log.write(json.dumps(metrics) + "\n")
                    log.flush()
            if cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps and acc.is_main_process:
                _save(acc.unwrap_model(tok), out / "tokenizer", cfg, eval_images, overwrite=overwrite or saved)
                saved = True
            if step >= cfg.steps:
                break
    bar.close()
    final = acc.unwrap_model(tok)
    if acc.is_main_process:
        _save(final, out / "tokenizer", cfg, eval_images, overwrite=overwrite or saved)
        reconstruction_grid(final, eval_images, out / "reconstructions.png")
        log.close()
    if data.skipped:
        import warnings

        warnings.warn(f"skipped {len(data.skipped)} unreadable image file(s), e.g. {data.skipped[0]}")
    return metrics


def load_train_config(path_or_dict, overrides: list[str] | None = None) -> TokenizerTrainConfig:
    from ..config import apply_overrides, read_config_file

    data = read_config_file(path_or_dict) if not isinstance(path_or_dict, dict) else path_or_dict
    return from_dict(TokenizerTrainConfig, apply_overrides(data, overrides or []), "tokenizer training config")
