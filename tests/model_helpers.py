"""Shared by the architecture tests: overfit one understanding example, load an untrained preset, read logits."""
import torch


def overfit_one_answer(pipe, image, steps: int = 15, lr: float = 3e-3) -> tuple[float, float]:
    """Train `pipe.model` on one (image, question, answer) example; (first loss, last loss)."""
    torch.manual_seed(0)
    pixels, layout = pipe.processor.prepare([image])  # one view, or a tiling model's views
    ids, labels = pipe.processor.chat_ids([("What colour is the circle?", 1, "red")], layout)
    batch = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
             "labels": torch.tensor([labels]), "pixel_values": pixels}
    opt = torch.optim.AdamW(pipe.model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = pipe.model(und=batch)["loss"]
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return losses[0], losses[-1]


def uncached_image_logits(model, prompt_ids, prompt_mask, tokens, scale):
    """Recompute every step's guided logits with one full forward (no cache)."""
    from unimm.models.unified import positions

    B, L = prompt_ids.shape
    ids = torch.cat([prompt_ids, model.unconditional_ids(prompt_ids)])
    mask = torch.cat([prompt_mask, prompt_mask])
    toks = torch.cat([tokens, tokens])
    embeds = torch.cat([model.backbone.embed(ids), model.embed_image_tokens(toks[:, :-1])], 1)
    full_mask = torch.cat([mask, mask.new_ones(toks[:, :-1].shape)], 1)
    h = model.hidden_states(embeds, attention_mask=full_mask, position_ids=positions(full_mask), use_cache=False)
    logits = model.image_logits(h[:, L - 1:]).float()
    return logits[B:] + scale * (logits[:B] - logits[B:])


def load_untrained(spec):
    """unimm.load(spec) of a config (an untrained model), without its warning."""
    import warnings

    import unimm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", unimm.UntrainedModelWarning)
        return unimm.load(spec)


def last_text_logits(model, ids, pixels):
    """The text logits after the last of `ids` (B, V), images spliced or read by cross-attention."""
    embeds = model.embed_inputs(ids, pixels)
    with model.seeing(ids, pixels):
        return model.text_logits(model.hidden_states(embeds, use_cache=False)[:, -1])


def train_plain_and_cached(stage: str, source: str, tmp_path, steps: int = 3):
    """Run the training config `stage` twice on a 12-item `source`, making its targets every step and
    reading them from data.cache_dir; (the two runs' logged losses, their final state dicts)."""
    import json
    import warnings

    import unimm
    from unimm.training.config import load_train_config
    from unimm.training.trainer import train

    over = [f"steps={steps}", "batch_size=2", "optim.lr=0.05", f"save_every={steps}", "log_every=1",
            f"data.sources.{source}.num_samples=12"]
    losses, weights = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("plain", "cached"):
            extra = [f"data.cache_dir={tmp_path / 'cache'}"] if name == "cached" else []
            final = train(load_train_config(stage, [f"output_dir={tmp_path / name}", *over, *extra]), progress=False)
            losses.append([json.loads(x)["loss"] for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()])
            weights.append(unimm.load(str(final)).model.state_dict())
    return losses, weights
