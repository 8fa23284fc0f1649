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
