"""SigLIP pretraining: the sigmoid contrastive loss trains, and the result is a usable encoder."""
import json

import torch

from unimm.encoders import SiglipEncoder, SiglipEncoderConfig
from unimm.training.siglip import load_siglip_config, train_siglip

TINY = {"vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                   "image_size": 32, "patch_size": 8},
        "text": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2},
        "data": {"format": "shapes", "task": "generation", "image_size": 32, "num_samples": 600, "seed": 3},
        "steps": 40, "batch_size": 16, "lr": 2e-3, "warmup_steps": 5, "log_every": 10}


def test_siglip_pretraining_lowers_the_loss_and_yields_an_encoder(tmp_path):
    cfg = load_siglip_config({**TINY, "output_dir": str(tmp_path / "siglip")})
    train_siglip(cfg, progress=False)
    log = [json.loads(x) for x in (tmp_path / "siglip" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in log] == [10, 20, 30, 40]
    assert log[-1]["loss"] < log[0]["loss"]
    assert 0 <= log[-1]["retrieval_acc"] <= 1
    enc = SiglipEncoder(SiglipEncoderConfig(pretrained=str(tmp_path / "siglip" / "model"))).eval()
    assert enc(torch.zeros(1, 3, 32, 32)).shape == (1, 16, 32)


def test_hard_negatives_swap_one_word_of_a_group_and_keep_plurals():
    import random

    import pytest

    from unimm.training.siglip import _swap_patterns, hard_negative, sigmoid_loss

    pats = _swap_patterns([["circle", "square", "star"], ["on the left", "on the right"]])
    rng = random.Random(0)
    for _ in range(20):
        out = hard_negative("two red squares on the left", pats, rng)
        assert out != "two red squares on the left"
        assert out in {"two red circles on the left", "two red stars on the left", "two red squares on the right"}
    assert hard_negative("a starry sky", pats, rng) is None  # whole words only
    assert hard_negative("three blue things", pats, rng) is None
    # with no extra negatives the loss is SigLIP's own: transformers' return_loss on the same logits
    logits = torch.randn(4, 4)
    labels = 2 * torch.eye(4) - 1
    assert torch.allclose(sigmoid_loss(logits), -torch.nn.functional.logsigmoid(labels * logits).sum(-1).mean())
    # an extra negative scored high costs more than one scored low
    low, high = torch.cat([logits, -9 * torch.ones(4, 1)], 1), torch.cat([logits, 9 * torch.ones(4, 1)], 1)
    assert sigmoid_loss(high) > sigmoid_loss(low) > sigmoid_loss(logits)
    with pytest.raises(ValueError, match="hard_negatives must be a list of groups"):
        load_siglip_config({**TINY, "hard_negatives": [["circle"]]})


def test_siglip_training_with_hard_negatives_reports_their_accuracy(tmp_path):
    cfg = load_siglip_config({**TINY, "steps": 20, "output_dir": str(tmp_path / "siglip"),
                              "hard_negatives": [["circle", "square", "triangle", "star", "diamond", "hexagon"]]})
    metrics = train_siglip(cfg, progress=False)
    assert 0 <= metrics["hard_negative_acc"] <= 1 and torch.isfinite(torch.tensor(metrics["loss"]))
