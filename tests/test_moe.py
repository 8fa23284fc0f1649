"""A mixture-of-experts backbone: the routers' load-balancing loss joins training, the expert load is logged."""
import json
import warnings

import pytest
import torch

import unimm
from model_helpers import overfit_one_answer


@pytest.fixture()
def moe():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", unimm.UntrainedModelWarning)
        return unimm.load("tiny-moe")


def test_router_loss_is_transformers_load_balancing_loss(moe):
    from transformers.models.qwen2_moe.modeling_qwen2_moe import load_balancing_loss_func

    bb = moe.model.backbone
    assert len(bb.routers()) == 2  # one per MoE block
    logits = [torch.randn(10, 4, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    loss, load = bb.router_loss(logits)
    theirs = load_balancing_loss_func(tuple(logits), num_experts=4, top_k=2)
    assert loss.item() == pytest.approx(0.01 * theirs.item(), rel=1e-5)
    skewed = [torch.tensor([[5.0, 4.0, -9.0, -9.0]] * 8)]  # every token picks experts 0 and 1
    loss2, load2 = bb.router_loss(skewed)
    assert load2["expert_load_max"] == pytest.approx(2.0) and load2["expert_load_min"] == 0.0
    spread = [torch.tensor([[5.0, 4.0, -9.0, -9.0], [-9.0, -9.0, 5.0, 4.0]] * 4)]  # half the tokens each way
    loss3, load3 = bb.router_loss(spread)
    assert load3["expert_load_max"] == pytest.approx(1.0) == load3["expert_load_min"]  # even
    assert loss3 < loss2


def test_training_adds_the_router_loss_and_logs_the_expert_load(moe, tmp_path, shapes_image):
    from unimm.training.config import load_train_config
    from unimm.training.trainer import train

    ids, labels = moe.processor.chat_ids([("What colour?", 1, "red")])
    ids, labels = torch.tensor([ids]), torch.tensor([labels])
    pixels = moe.processor.pixel_values([shapes_image])
    out = moe.model(und={"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
                         "pixel_values": pixels})
    assert out["router_loss"] > 0 and out["loss"].item() == pytest.approx((out["und_loss"] + out["router_loss"]).item())
    out["loss"].backward()
    assert all(r.weight.grad is not None for r in moe.model.backbone.routers())  # the routers learn to balance

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        final = train(load_train_config("configs/train/tiny-stage2.yaml",
                                        ["model=tiny-moe", "init_from=null", f"output_dir={tmp_path / 'run'}",
                                         "steps=4", "log_every=2", "batch_size=4"]), progress=False)
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"router_loss", "expert_load_max", "expert_load_min"} <= set(logged[-1])
    again = unimm.load(str(final))
    assert again.config.backbone.model_type == "qwen2_moe"
    assert isinstance(again.chat(shapes_image, "What colour?", max_new_tokens=2), str)


def test_a_fixed_batch_is_learned(moe, shapes_image):
    first, last = overfit_one_answer(moe, shapes_image)
    assert last < 0.5 * first
