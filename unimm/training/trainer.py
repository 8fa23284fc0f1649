"""The unified-model trainer on accelerate: one CPU, one GPU, DDP, FSDP or DeepSpeed.

One optimizer step = `grad_accum` micro-batches per process. Each micro-batch
mixes understanding/text rows (next-token loss on answers or text) and
generation rows (the paradigm's image loss on targets from the frozen image
tokenizer). Stages differ only by configuration: what is frozen, the data mix
and where they start from.
"""
from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections import Counter
from pathlib import Path

import torch

from ..extras import require
from ..folders import DestinationError, check_destination
from ..pipelines.load import build_pipeline, resolve_config
from ..pipelines.load import load as load_pipeline
from .checkpoints import (latest_checkpoint, list_checkpoints, remove_checkpoints, restore_checkpoint,
                          save_checkpoint)
from .config import PARTS, TrainConfig
from .data import Collator, TrainingDataset, warn_skipped
from .precision import PRECISION_NAMES, enlarge_kernel_cache, resolve_mixed_precision
from .preference import contrast_loss, dpo_loss
from .outputs import claim_output_dir


class EMA:
    """Exponential moving average of the trainable parameters only (not a full model copy)."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float):
        self.params, self.decay = params, decay
        self.shadow = [p.detach().clone().float() for p in params]

    @torch.no_grad()
    def update(self) -> None:
        for s, p in zip(self.shadow, self.params):
            s.lerp_(p.detach().float(), 1 - self.decay)

    @torch.no_grad()
    def copy_to_params(self) -> None:
        for s, p in zip(self.shadow, self.params):
            p.copy_(s.to(p.dtype))

    def save(self, path: Path) -> None:
        """The shadow weights as safetensors (float32, so a resumed run continues bit for bit)."""
        from safetensors.torch import save_file

        save_file({f"shadow.{i}": s.contiguous() for i, s in enumerate(self.shadow)}, str(path),
                  metadata={"decay": repr(self.decay)})

    def load(self, path: Path) -> None:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            keys = set(f.keys())
            if keys != {f"shadow.{i}" for i in range(len(self.shadow))}:
                raise ValueError(f"{path.name} holds {len(keys)} tensors for {len(self.shadow)} trainable weights")
            for i, s in enumerate(self.shadow):
                t = f.get_tensor(f"shadow.{i}")
                if t.shape != s.shape:
                    raise ValueError(f"{path.name}: shadow.{i} is {tuple(t.shape)}, the weight is {tuple(s.shape)}")
                s.copy_(t)
            self.decay = float(f.metadata()["decay"])


def apply_freeze(model, freeze: dict) -> list[tuple[str, int, int]]:
    """requires_grad per part, then per submodule named under a part (`gen_head.controlnets`:
    the more specific name wins); returns (part, trainable, frozen) parameter counts."""
    rows = []
    for part in PARTS:
        module = getattr(model, part)
        module.requires_grad_(not freeze.get(part, False))
    for name in sorted((k for k in freeze if "." in k), key=lambda k: k.count(".")):
        try:
            model.get_submodule(name).requires_grad_(not freeze[name])
        except AttributeError:
            raise ValueError(f"freeze names {name!r}, which this model does not have") from None
    for part in PARTS:
        params = list(getattr(model, part).parameters())
        trainable = sum(p.numel() for p in params if p.requires_grad)
        rows.append((part, trainable, sum(p.numel() for p in params) - trainable))
    return rows


# The config section that builds each part.
PART_SECTIONS = {"encoder": "encoder", "projector": "projector", "backbone": "backbone",
                 "image_tokenizer": "image_tokenizer", "gen_head": "generation"}


def _differences(ours, theirs, where: str = "") -> list[str]:
    """Dotted names of the options both configs set, to different values."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        return [d for k in sorted(ours.keys() & theirs.keys())
                for d in _differences(ours[k], theirs[k], f"{where}.{k}" if where else str(k))]
    return [] if ours == theirs else [where]


def take_parts(model, parts: dict) -> None:
    """init_parts: copy each named part's weights (or a submodule's, e.g. `gen_head.controlnets`)
    from another saved model into `model`. It must be built alike in both: every option both
    configs set for its part has the same value, and every weight of ours is in theirs with the
    same shape (what the source has beyond that, e.g. a ControlNet attached to its generator, is
    left behind). Refused otherwise, naming what differs."""
    import dataclasses

    def section(config, name):  # as saved: defaults filled in, e.g. a VAE's latent shift
        value = getattr(config, PART_SECTIONS[name.split(".")[0]])
        return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else dict(value)

    def weights(owner, name, whose):
        try:
            found = owner.get_submodule(name).state_dict()
        except AttributeError:
            found = {}
        if not found:  # absent, or an empty place for it (no ControlNets)
            raise ValueError(f"init_parts names {name!r}, which {whose} does not have")
        return found

    ours_config, sources = model.resolved_config(), {}
    for name in sorted(parts, key=lambda k: k.count(".")):  # a part before a submodule of it
        path = parts[name]
        if path not in sources:
            sources[path] = load_pipeline(path).model
        source = sources[path]
        differ = _differences(section(ours_config, name), section(source.resolved_config(), name))
        if differ:
            raise ValueError(f"init_parts: {path}'s {name} is built with other options than this model's "
                             f"({', '.join(differ)}), so its weights would not mean the same here")
        ours, theirs = weights(model, name, "this model"), weights(source, name, path)
        missing = sorted(k for k in ours if k not in theirs)
        shapes = sorted(k for k in ours if k in theirs and theirs[k].shape != ours[k].shape)
        if missing or shapes:
            raise ValueError(f"init_parts: {path}'s {name} does not fit this model's: "
                             + "; ".join(f"{what}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                                         for what, keys in (("missing", missing), ("other shapes", shapes)) if keys))
        with torch.no_grad():
            for k, v in ours.items():
                v.copy_(theirs[k])


def param_groups(model, lr: float, lr_scale: dict) -> list[dict]:
    """The trainable weights as optimizer groups: lr times the scale of the most specific part or
    submodule in `lr_scale` that holds them (optim.lr_scale), 1 where none does."""
    scale_of = {}
    for name in sorted(lr_scale, key=lambda k: k.count(".")):
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"optim.lr_scale names {name!r}, which this model does not have") from None
        scale_of.update({id(p): float(lr_scale[name]) for p in module.parameters()})
    groups: dict[float, list] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault(scale_of.get(id(p), 1.0), []).append(p)
    order = sorted(groups, key=lambda scale: (scale != 1.0, scale))  # the unscaled group first: its lr is logged
    return [{"params": groups[scale], "lr": lr * scale} for scale in order]


def freeze_table(rows) -> str:
    lines = [f"{'part':16s} {'trainable':>12s} {'frozen':>12s}"]
    lines += [f"{part:16s} {t:12,d} {f:12,d}" for part, t, f in rows]
    tt, ff = sum(r[1] for r in rows), sum(r[2] for r in rows)
    lines.append(f"{'total':16s} {tt:12,d} {ff:12,d}")
    return "\n".join(lines)


def apply_lora(model, lora) -> None:
    peft = require("peft", "train", "LoRA (lora: in the training config)")

    cfg = peft.LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                     target_modules=list(lora.target_modules))
    model.backbone.lm = peft.get_peft_model(model.backbone.lm, cfg)


def merge_lora(model) -> None:
    try:
        from peft import PeftModel
    except ImportError:
        return  # without peft no LoRA was applied
    if isinstance(model.backbone.lm, PeftModel):
        model.backbone.lm = model.backbone.lm.merge_and_unload()


def lr_lambda(cfg: TrainConfig):
    warm, total, floor = cfg.optim.warmup_steps, cfg.steps, cfg.optim.min_lr_ratio

    def f(step: int) -> float:  # linear warm-up, then cosine down to lr * min_lr_ratio
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def _set_frozen_eval(model, freeze: dict) -> None:
    # Frozen parts stay in eval mode: a VQ codebook's EMA must not drift while
    # it only encodes targets, and frozen dropout should not fire.
    for part in PARTS:
        if freeze.get(part, False):
            getattr(model, part).eval()
    for name in sorted((k for k in freeze if "." in k), key=lambda k: k.count(".")):
        model.get_submodule(name).train(not freeze[name])


def _step_losses(model, unwrapped, batch, cfg: TrainConfig, reference=None, sharded: bool = False
                 ) -> dict[str, torch.Tensor]:
    und, gen, pref = batch["und"], batch["gen"], batch.get("pref")
    if gen is not None:  # images and maps are encoded into targets inside the model's forward
        dt = unwrapped.dtype
        keep = {"prompt_ids": gen["prompt_ids"], "prompt_mask": gen["prompt_mask"]}
        if "targets" in gen:  # precomputed (data.cache_dir); latents in the model's dtype
            keep["targets"] = gen["targets"].to(dt) if gen["targets"].is_floating_point() else gen["targets"].long()
        else:
            keep["images"] = gen["images"].to(dt)
        if "control_images" in gen:  # ControlNet maps, encoded exactly as the targets are
            keep["control_images"] = {k: m.to(dt) for k, m in gen["control_images"].items()}
        elif "control" in gen:  # the maps already encoded (data.cache_dir)
            keep["control"] = {k: m.to(dt) for k, m in gen["control"].items()}
        if "reference_images" in gen:  # IP-Adapter references: the model encodes them with its SigLIP
            keep["reference"] = gen["reference_images"]
        if "swapped_ids" in gen:  # prompt_contrast: some rows' captions with their words bound otherwise
            keep.update({k: gen[k] for k in ("swapped_ids", "swapped_mask", "swapped_rows")})
        gen = keep

    def in_model_dtype(chat):  # an understanding or preference batch's pixels (or each group's)
        if isinstance(chat, list):
            return [in_model_dtype(c) for c in chat]
        if chat is None or chat["pixel_values"] is None:
            return chat
        return {**chat, "pixel_values": chat["pixel_values"].to(unwrapped.dtype)}

    und, pref, contrast = in_model_dtype(und), in_model_dtype(pref), in_model_dtype(batch.get("und_contrast"))
    out = model(und=und, gen=gen, pref=pref, und_contrast=contrast, every_weight=sharded)
    if pref is not None:  # DPO: the same answers scored by the frozen reference
        with torch.no_grad():
            ref_logps = reference.answer_logprobs(**pref)
        out.update(dpo_loss(out.pop("pref_logps"), ref_logps, cfg.dpo.beta))
    if "caption_nll" in out:
        out.update(contrast_loss(out.pop("caption_nll"), out.pop("swapped_nll"), cfg.prompt_contrast.beta))
    if "contrast_logps" in out:  # answers: NLL under their question (rows 0..S-1) and the swapped one
        own, swapped = (-out.pop("contrast_logps")).chunk(2)
        out.update({f"answer_{k}": v for k, v in contrast_loss(own, swapped, cfg.prompt_contrast.beta).items()})
    w = cfg.loss_weights
    out["loss"] = (w.get("understanding", 1.0) * out.get("und_loss", 0) + w.get("generation", 1.0) * out.get("gen_loss", 0)
                   + w.get("preference", 1.0) * out.get("dpo_loss", 0)
                   + w.get("grounding", 0.0) * out.get("ground_loss", 0)
                   + (cfg.prompt_contrast.weight * out["contrast_loss"] if "contrast_loss" in out else 0)
                   + (cfg.prompt_contrast.answer_weight * out["answer_contrast_loss"] if "answer_contrast_loss" in out else 0)
                   + out.get("router_loss", 0)  # a mixture-of-experts backbone's load balancing
                   + out.pop("grad_anchor", 0))  # sharded: a (zero) gradient for every weight (not logged)
    return out


def _reference_model(cfg: TrainConfig, model, sources: dict, device):
    """The DPO stage's frozen reference: a copy of the starting model (or `dpo.reference`); None
    without preference data. Preference sources need `dpo`, and `dpo` needs preference sources."""
    pref = [n for n, src in sources.items() if src.task == "preference" and cfg.data.ratios[n] > 0]
    if pref and cfg.dpo is None:
        raise ValueError(f"data source(s) {', '.join(pref)} hold preference pairs, which only the DPO stage "
                         "reads: set `dpo: {beta: 0.1}` in the training config")
    if cfg.dpo is None:
        return None
    if not pref:
        raise ValueError("dpo is set but no data source with a positive ratio holds preference pairs: add one "
                         "such as {format: shapes, task: preference} or {format: preference, path: pairs.jsonl}")
    import copy

    reference = load_pipeline(cfg.dpo.reference).model if cfg.dpo.reference else copy.deepcopy(model)
    if reference.config.token_ids != model.config.token_ids:
        raise ValueError(f"dpo.reference {cfg.dpo.reference} has another text vocabulary than the model trained")
    return reference.requires_grad_(False).eval().to(device, model.dtype)


def _deepspeed_asked() -> bool:
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"


def deepspeed_settings(cfg: TrainConfig) -> dict:
    """What a DeepSpeed run takes from the stage config, whatever its DeepSpeed file says: the
    micro batch, the accumulation and the clipping (DeepSpeed clips inside its step, and accelerate's
    `clip_grad_norm_` leaves it to it), so a run means the same on DeepSpeed as everywhere else."""
    return {"train_micro_batch_size_per_gpu": cfg.batch_size, "gradient_accumulation_steps": cfg.grad_accum,
            "gradient_clipping": float(cfg.optim.grad_clip or 0.0)}


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True, stop_at: int | None = None,
          overwrite: bool = False) -> Path | None:
    """Run (or resume) one stage; returns the exported model directory (OUTPUT/final).

    `stop_at` ends this invocation after that step with a checkpoint and no export,
    as an interrupted run would (the schedule still spans `cfg.steps`); `resume` continues.
    A fresh run into an output_dir that holds a run's checkpoints is refused unless
    `overwrite` (start over: that run's checkpoints go, its metrics are rewritten).
    """
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.utils import gather_object, set_seed
    from tqdm.auto import tqdm

    cuda = torch.cuda.is_available()
    mp = resolve_mixed_precision(cfg.mixed_precision, cuda)
    enlarge_kernel_cache(mp, cuda)
    if _deepspeed_asked() and not cuda:
        # accelerate leaves DeepSpeed out on a CPU (cpu=True) and would run plain DDP instead; with
        # cpu=False it starts DeepSpeed's processes yet counts one: neither is what was asked for.
        raise ValueError("DeepSpeed (ACCELERATE_USE_DEEPSPEED, configs/accelerate/deepspeed-zero2.yaml) needs GPUs; "
                         "on CPUs run several processes with torchrun (DDP), or FSDP with ACCELERATE_USE_FSDP=true "
                         "FSDP_VERSION=2 (README, Training)")
    # The schedule counts optimizer steps (cfg.steps): accelerate would otherwise step it once per
    # process at every optimizer step, running a multi-process run's warm-up and cosine N times too fast.
    acc = Accelerator(mixed_precision=mp, gradient_accumulation_steps=cfg.grad_accum, cpu=not cuda,
                      step_scheduler_with_optimizer=False,
                      kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    if acc.gradient_accumulation_steps != cfg.grad_accum:
        # accelerate takes ACCELERATE_GRADIENT_ACCUMULATION_STEPS (which `accelerate launch` sets from
        # a config file) over the value passed; the stage config owns it, as its schedule counts on it.
        warnings.warn(f"the launcher asked for gradient accumulation {acc.gradient_accumulation_steps}; the stage "
                      f"config's grad_accum={cfg.grad_accum} is used (set it there)", stacklevel=2)
        acc.gradient_accumulation_steps = cfg.grad_accum
    _shard_on_cpu(acc)
    set_seed(cfg.seed)
    out_dir = Path(cfg.output_dir)
    _check_output(out_dir, cfg, resume, overwrite, acc.is_main_process)

    # A fresh model draws its weights from the run's seed (the same on every machine and resume).
    pipe = (load_pipeline(cfg.init_from, changes=cfg.init_changes, fresh=cfg.init_fresh) if cfg.init_from
            else build_pipeline(resolve_config(cfg.model), cfg.seed))
    model = pipe.model
    if not resume:  # a resumed run's checkpoint holds every weight: the sources may have moved on since
        take_parts(model, cfg.init_parts)
    rows = apply_freeze(model, cfg.freeze)
    if cfg.lora is not None:
        apply_lora(model, cfg.lora)
        rows = [(p, sum(x.numel() for x in getattr(model, p).parameters() if x.requires_grad),
                 sum(x.numel() for x in getattr(model, p).parameters() if not x.requires_grad)) for p, _, _ in rows]
    if acc.is_main_process:
        print(freeze_table(rows) + ("\n(backbone: LoRA adapters only)" if cfg.lora else ""))
        per_step = cfg.batch_size * cfg.grad_accum * acc.num_processes
        print(f"{acc.num_processes} process{'es' if acc.num_processes > 1 else ''} ({acc.distributed_type.value}, "
              f"{acc.device.type}), {per_step} samples per optimizer step, {PRECISION_NAMES[mp]}")
    if cfg.gradient_checkpointing:
        model.backbone.lm.gradient_checkpointing_enable()
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("every part is frozen: nothing to train")

    from ..data.formats import build_source

    contrast = cfg.prompt_contrast
    if contrast is not None and contrast.weight > 0 and not model.family.contrastive:
        raise ValueError(f"prompt_contrast.weight compares an image's likelihood under two captions; the "
                         f"{model.family.name} paradigm has no exact image likelihood (set weight: 0 to "
                         "contrast answers only)")
    sources = {name: build_source(spec) for name, spec in cfg.data.sources.items()}
    reference = _reference_model(cfg, model, sources, acc.device)  # with LoRA: fresh adapters add nothing
    total = cfg.steps * cfg.grad_accum * cfg.batch_size * acc.num_processes
    caches = _target_caches(cfg, sources, model, acc, progress)
    dataset = TrainingDataset(
        sources, cfg.data.ratios, pipe.processor, model.image_tokenizer.transform, total, seed=cfg.seed,
        prompt_dropout=cfg.data.prompt_dropout, max_positions=model.backbone.max_positions,
        num_gen_tokens=model.num_image_tokens, caches=caches, gen_size=model.image_tokenizer.config.image_size,
        contrast_captions=contrast is not None and contrast.weight > 0,
        contrast_questions=contrast is not None and contrast.answer_weight > 0,
    )
    grounding = cfg.grounding_at if cfg.loss_weights.get("grounding", 0) > 0 else None
    if grounding and not model.layout.cross_attends:
        raise ValueError("loss_weights.grounding supervises cross-attention blocks, and this model has none "
                         "(add cross_attention: {every: k} to the model config, or init_changes)")
    unconditional = model.unconditional_ids  # bound now: `model` becomes the DDP wrapper below
    uncond = lambda ids: unconditional(torch.tensor(ids)).tolist()
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False,
                                         collate_fn=Collator(model.token_ids.pad, uncond, cfg.data.length_buckets, grounding,
                                                             cfg.data.pad_multiple),
                                         num_workers=cfg.data.num_workers)
    opt = torch.optim.AdamW(param_groups(model, cfg.optim.lr, cfg.optim.lr_scale), lr=cfg.optim.lr,
                            betas=tuple(cfg.optim.betas),
                            weight_decay=cfg.optim.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    if cfg.compile:  # regional: each decoder layer is compiled (once, shared shapes) and the splicing of
        for layer in model.backbone.decoder_layers():  # image tokens, whose sizes depend on the data, stays eager
            layer.compile()
    if acc.state.deepspeed_plugin is not None:  # the stage config owns these, not the DeepSpeed file
        acc.state.deepspeed_plugin.deepspeed_config.update(deepspeed_settings(cfg))
    model, opt, loader, sched = acc.prepare(model, opt, loader, sched)
    unwrapped = acc.unwrap_model(model)
    ema = EMA([p for p in unwrapped.parameters() if p.requires_grad], cfg.ema_decay) if cfg.ema_decay else None

    step = 0
    if resume:
        ckpt, state = restore_checkpoint(acc, out_dir, ema)
        step = state["step"]
        if acc.is_main_process:
            print(f"resumed from {ckpt} at step {step}")
    elif overwrite and acc.is_main_process:
        remove_checkpoints(out_dir)
    acc.wait_for_everyone()
    batches = acc.skip_first_batches(loader, step * cfg.grad_accum) if step else loader

    if acc.is_main_process:  # the set-up worked (and a resume found its checkpoint): this folder is the run's
        claim_output_dir(out_dir, _jsonable(cfg), resume=True, overwrite=overwrite)
    log = _Logger(out_dir, acc.is_main_process, resume_step=step if resume else None)
    model.train()
    _set_frozen_eval(unwrapped, cfg.freeze)
    bar = tqdm(total=cfg.steps, initial=step, desc=out_dir.name, disable=not (progress and acc.is_main_process))
    t0, seen, tokens = time.perf_counter(), 0, 0
    end = min(cfg.steps, stop_at or cfg.steps)
    # Skips found while the sources were opened (here), plus those reported by each batch
    # (found in __getitem__, possibly inside DataLoader workers).
    skipped = Counter(dataset.skip_counts())
    for batch in batches:
        if step >= end:
            break
        with acc.accumulate(model):
            losses = _step_losses(model, unwrapped, batch, cfg, reference, sharded=acc.is_fsdp2)
            if not torch.isfinite(losses["loss"]).all():
                last = latest_checkpoint(out_dir)
                raise FloatingPointError(
                    f"loss is {losses['loss'].item()} at step {step + 1}: stopping. The last good checkpoint "
                    f"({last or 'none yet'}) is untouched; lower the learning rate or check the data."
                )
            acc.backward(losses["loss"])
            if acc.sync_gradients and cfg.optim.grad_clip:
                acc.clip_grad_norm_(trainable, cfg.optim.grad_clip)
            opt.step()
            if acc.sync_gradients:  # one schedule step per optimizer step, whatever grad_accum and processes
                sched.step()
            opt.zero_grad(set_to_none=True)
        skipped.update(batch["skipped"])
        seen += batch["n_samples"] * acc.num_processes
        n_image = 0 if batch["gen"] is None else len(batch["gen"]["prompt_ids"]) * unwrapped.num_image_tokens
        tokens += (batch["n_tokens"] + n_image) * acc.num_processes
        if not acc.sync_gradients:
            continue
        step += 1
        if ema is not None:
            ema.update()
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            dt = time.perf_counter() - t0
            metrics = {"step": step, "lr": sched.get_last_lr()[0], "samples_per_s": seen / dt, "tokens_per_s": tokens / dt,
                       **{k: v.item() for k, v in losses.items()}}
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}",
                            samples_s=f"{metrics['samples_per_s']:.1f}", tok_s=f"{metrics['tokens_per_s']:.0f}")
            log.write(metrics)
            t0, seen, tokens = time.perf_counter(), 0, 0
        if step % cfg.save_every == 0 or step == end:
            save_checkpoint(acc, out_dir, step, cfg.keep_last, ema=ema)
    bar.close()
    log.close()
    if acc.num_processes > 1:  # every process saw its own share of the data
        skipped = sum((Counter(c) for c in gather_object([dict(skipped)])), Counter())
    if acc.is_main_process:
        warn_skipped(dict(skipped))
    if step < cfg.steps:
        return None
    return _export(acc, unwrapped, ema, pipe, out_dir, cfg, overwrite)


def _shard_on_cpu(acc) -> None:
    """FSDP over several CPU processes. accelerate (1.15) runs CPU processes as DDP even when FSDP
    is asked for (ACCELERATE_USE_FSDP=true, as `accelerate launch` with an FSDP config sets it),
    though torch's FSDP2 shards over gloo as it does over NCCL: switch the state to FSDP with the
    plugin that reads the same environment (FSDP_VERSION=2, FSDP_AUTO_WRAP_POLICY, ...). Each
    process then holds a shard of every weight, gradient and optimizer state."""
    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if acc.distributed_type != DistributedType.MULTI_CPU or os.environ.get("ACCELERATE_USE_FSDP", "").lower() != "true":
        return
    plugin = FullyShardedDataParallelPlugin()
    if plugin.fsdp_version != 2:
        raise ValueError("FSDP on CPU processes is FSDP2: set FSDP_VERSION=2 (fsdp_version: 2 in an accelerate config)")
    # both shared states: accelerate copies the process state over the accelerator's on every AcceleratorState()
    PartialState().distributed_type = acc.state.distributed_type = DistributedType.FSDP
    acc.state.fsdp_plugin = plugin


def _target_caches(cfg: TrainConfig, sources: dict, model, acc, progress: bool) -> dict:
    """With data.cache_dir: every generation source's targets (and ControlNet maps), computed once by
    the frozen tokenizer; reference pictures are drawn again as items are read (cache.py)."""
    if cfg.data.cache_dir is None:
        return {}
    from .cache import TargetCache

    names = [n for n, src in sources.items() if src.task == "generation" and cfg.data.ratios[n] > 0]
    model.image_tokenizer.to(acc.device)  # encode on the GPU where there is one (prepare moves the rest)
    caches = {}
    for name in names:  # the main process builds what is missing, then every process loads it
        if acc.is_main_process:
            caches[name] = TargetCache.build_or_load(sources[name], cfg.data.sources[name], model,
                                                     cfg.data.cache_dir, progress=progress)
    acc.wait_for_everyone()
    for name in names:
        if name not in caches:
            caches[name] = TargetCache.build_or_load(sources[name], cfg.data.sources[name], model,
                                                     cfg.data.cache_dir, main_process=False)
    return caches


def _check_output(out_dir: Path, cfg: TrainConfig, resume: bool, overwrite: bool, main: bool) -> None:
    """Refuse, before any work, what would make the run destroy or mix up files; then claim out_dir."""
    check_destination(out_dir / "final", overwrite)
    odd = [p.name for p in (out_dir / "checkpoints").glob("step-*") if not p.is_dir()]
    if odd:
        raise DestinationError(f"{out_dir / 'checkpoints'} holds {', '.join(sorted(odd))}, which "
                               f"{'is a file' if len(odd) == 1 else 'are files'}, not checkpoints; move "
                               f"{'it' if len(odd) == 1 else 'them'} away")
    found = list_checkpoints(out_dir)
    if found and not resume and not overwrite:
        raise DestinationError(
            f"{out_dir} already holds a run's checkpoints (up to {found[-1].name}); pass --resume to continue "
            "that run, or --overwrite to start over (its checkpoints are removed, its metrics rewritten)"
        )
    if main:
        claim_output_dir(out_dir, _jsonable(cfg), resume=resume or bool(found), overwrite=overwrite, record=False)


def _export(acc, unwrapped, ema, pipe, out_dir: Path, cfg: TrainConfig, overwrite: bool = False) -> Path:
    """Write OUTPUT/final with save_pretrained (EMA weights and merged LoRA if used)."""
    acc.wait_for_everyone()
    final = out_dir / "final"
    if ema is not None:  # every process: under FSDP each holds its shard of the EMA
        ema.copy_to_params()
    if acc.is_fsdp2:  # sharded weights: gather the full state (every process takes part), then a plain model
        full = acc.get_state_dict(unwrapped)
        if acc.is_main_process:
            from ..models import UnifiedModel

            plain = UnifiedModel(unwrapped.resolved_config())
            if cfg.lora is not None:
                apply_lora(plain, cfg.lora)
            plain.load_state_dict(full)
            unwrapped = plain
    if acc.is_main_process:
        merge_lora(unwrapped)
        pipe.model = unwrapped
        unwrapped.eval()
        pipe.save_pretrained(final, dtype=cfg.export_dtype, overwrite=overwrite)
        print(f"exported {final}")
    acc.wait_for_everyone()
    return final


def _jsonable(cfg) -> dict:
    from ..config import to_dict

    return to_dict(cfg)


class _Logger:
    """Metrics to OUTPUT/metrics.jsonl and TensorBoard (OUTPUT/tb), main process only."""

    def __init__(self, out_dir: Path, active: bool, resume_step: int | None):
        self.active = active
        if not active:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "metrics.jsonl"
        if resume_step is not None and path.is_file():
            _truncate_metrics(path, resume_step)
        self.file = path.open("a" if resume_step is not None else "w")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tb"))
        except ImportError:  # tensorboard is optional at run time; JSONL always works
            self.tb = None

    def write(self, metrics: dict) -> None:
        if not self.active:
            return
        self.file.write(json.dumps(metrics) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                if k != "step":
                    self.tb.add_scalar(k, v, metrics["step"])

    def close(self) -> None:
        if self.active:
            self.file.close()
            if self.tb is not None:
                self.tb.close()


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep the records up to the checkpoint a run resumes from: the steps after it are logged again."""
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by the interruption
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)
