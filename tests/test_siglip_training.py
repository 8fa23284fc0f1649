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


def test_caption_token_targets_weigh_rare_words_and_skip_special_tokens():
    import math

    import pytest

    from unimm.training.siglip import caption_idf, tag_recall, tag_targets, tagging_loss

    # vocabulary of 6: 0 pad, 1 "a", 2 "red", 3 "circle", 4 "star", 5 unused
    ids = torch.tensor([[1, 2, 3, 0], [1, 2, 4, 0], [1, 3, 3, 0]])
    idf = caption_idf(ids, 6)
    assert idf[1] == pytest.approx(math.log(4 / 4) + 1)  # in every caption
    assert idf[4] == pytest.approx(math.log(4 / 2) + 1)  # in one
    t = tag_targets(ids, idf, torch.tensor([0]))
    assert torch.allclose(t.sum(-1), torch.ones(3))
    assert t[0, 0] == 0 and t[0, 5] == 0  # padding is no tag; absent words get nothing
    assert t[1, 4] > t[1, 2] > t[1, 1]  # rarer words weigh more
    assert t[2, 3] == pytest.approx(idf[3] / (idf[1] + idf[3]))  # a repeated token counts once
    # the loss is cross-entropy against the soft target: lowest when the logits put their mass there
    good, bad = torch.log(t + 1e-9), torch.log(t.flip(0) + 1e-9)
    assert tagging_loss(good, t) < tagging_loss(bad, t)
    assert tag_recall(good, t) == 1.0 and tag_recall(torch.zeros(3, 6) - 10 * t, t) < 0.5
    with pytest.raises(ValueError, match="tagging_weight must be a finite number >= 0"):
        load_siglip_config({**TINY, "tagging_weight": -1})


def test_siglip_training_with_caption_tagging_learns_tags_and_saves_a_plain_siglip(tmp_path):
    from safetensors import safe_open

    cfg = load_siglip_config({**TINY, "steps": 30, "output_dir": str(tmp_path / "siglip"), "tagging_weight": 1.0})
    train_siglip(cfg, progress=False)
    log = [json.loads(x) for x in (tmp_path / "siglip" / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["tagging_loss"] < log[0]["tagging_loss"]
    assert log[-1]["tag_recall"] > log[0]["tag_recall"]
    with safe_open(str(tmp_path / "siglip" / "model" / "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if not k.startswith(("vision_model.", "text_model.", "logit_"))]
    enc = SiglipEncoder(SiglipEncoderConfig(pretrained=str(tmp_path / "siglip" / "model"))).eval()
    assert enc(torch.zeros(1, 3, 32, 32)).shape == (1, 16, 32)


def test_siglip_training_continues_from_its_own_checkpoint(tmp_path):
    import pytest
    from transformers import SiglipModel

    first = load_siglip_config({**TINY, "steps": 10, "output_dir": str(tmp_path / "a")})
    train_siglip(first, progress=False)
    # `vision`/`text` given here are not read: the checkpoint's own architecture is continued
    more = load_siglip_config({**TINY, "steps": 10, "output_dir": str(tmp_path / "b"),
                               "vision": {**TINY["vision"], "hidden_size": 64},
                               "init_from": str(tmp_path / "a" / "model")})
    train_siglip(more, progress=False)
    a = SiglipModel.from_pretrained(tmp_path / "a" / "model")
    b = SiglipModel.from_pretrained(tmp_path / "b" / "model")
    assert b.config.vision_config.hidden_size == 32
    assert (tmp_path / "b" / "model" / "tokenizer.json").read_text() == (tmp_path / "a" / "model" / "tokenizer.json").read_text()
    wa, wb = a.vision_model.embeddings.patch_embedding.weight, b.vision_model.embeddings.patch_embedding.weight
    assert not torch.equal(wa, wb) and (wa - wb).abs().max() < 0.1  # moved on from the first run's weights
    with pytest.raises(FileNotFoundError, match="is not a checkpoint of this trainer"):
        train_siglip(load_siglip_config({**TINY, "output_dir": str(tmp_path / "c"), "init_from": str(tmp_path)}),
                     progress=False)


def test_region_targets_tag_each_patch_with_the_object_it_lies_in():
    import pytest

    from unimm.training.siglip import load_siglip_config, patch_coverage, region_targets

    # a 4x4 grid; the box covers 36% of patches (0,0) and (0,1), 12% of (1,0) and (1,1)
    cover = patch_coverage([0.1, 0.1, 0.4, 0.3], 4).view(4, 4)
    assert torch.allclose(cover[:2, :2], torch.tensor([[0.36, 0.36], [0.12, 0.12]]))
    assert cover[2:].sum() == 0 and cover[:, 2:].sum() == 0

    class Tok:  # word ids: a=1 red=2 blue=3 circle=4 star=5, 0 = padding
        words = {"a": 1, "red": 2, "blue": 3, "circle": 4, "star": 5}

        def __call__(self, texts, **kw):
            rows = [[self.words[w] for w in t.split()] + [0] * (4 - len(t.split())) for t in texts]
            return {"input_ids": torch.tensor(rows)}

    idf = torch.ones(6)
    regions = [[{"box": [0.0, 0.0, 0.5, 0.5], "text": "a red circle"},
                {"box": [0.6, 0.7, 0.7, 0.8], "text": "a blue star"}],  # too small to cover 25%: its centre patch
               []]
    t, has = region_targets(regions, 4, Tok(), 4, idf, torch.tensor([0]))
    assert t.shape == (2, 16, 6) and has.shape == (2, 16)
    assert has[0].nonzero().flatten().tolist() == [0, 1, 4, 5, 14]  # the top-left 2x2 and the star's centre
    assert torch.allclose(t[0, 0], torch.tensor([0, 1, 1, 0, 1, 0]) / 3)  # "a red circle", rows sum to 1
    assert torch.allclose(t[0, 14], torch.tensor([0, 1, 0, 1, 0, 1]) / 3)  # "a blue star"
    assert not has[1].any() and t[1].sum() == 0  # no regions: no loss anywhere
    with pytest.raises(ValueError, match="region_tagging_weight must be a finite number >= 0"):
        load_siglip_config({**TINY, "region_tagging_weight": -1})


def test_shapes_records_carry_object_regions_and_region_tagging_trains(tmp_path):
    import math

    import pytest

    from unimm.data.formats import build_source

    src = build_source({"format": "shapes", "task": "generation", "num_samples": 50, "seed": 3, "mix": {"pair": 1.0}})
    rec = src.get(0)
    scene = src.world[0]
    assert [r["text"] for r in rec["regions"]] == [f"a {o.size} {o.colour} {o.shape}" for o in scene.objects]
    o = scene.objects[0]
    assert rec["regions"][0]["box"] == pytest.approx([o.cx - o.r, o.cy - o.r, o.cx + o.r, o.cy + o.r])
    metrics = train_siglip(load_siglip_config({**TINY, "steps": 20, "region_tagging_weight": 1.0,
                                               "output_dir": str(tmp_path / "regions")}), progress=False)
    log = [json.loads(x) for x in (tmp_path / "regions" / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["region_tagging_loss"] < log[0]["region_tagging_loss"]
    assert log[-1]["region_tag_recall"] == metrics["region_tag_recall"] and 0 < metrics["region_tag_recall"] <= 1
    # a source without boxes is refused by name, before any step
    jsonl = tmp_path / "caps.jsonl"
    from PIL import Image
    for k in range(3):
        Image.new("RGB", (32, 32), (40 * k, 0, 0)).save(tmp_path / f"{k}.png")
    jsonl.write_text("".join(json.dumps({"image": f"{k % 3}.png", "caption": "a red square"}) + "\n" for k in range(300)))
    with pytest.raises(ValueError, match="needs records with 'regions'"):
        train_siglip(load_siglip_config({**TINY, "region_tagging_weight": 1.0, "output_dir": str(tmp_path / "no"),
                                         "data": {"format": "captions", "path": str(jsonl)}}), progress=False)
    # grounded caption lines carry their regions; a bad box makes the line a skipped, counted item
    good = {"box": [0.1, 0.2, 0.5, 0.6], "text": "a red square"}
    jsonl.write_text(json.dumps({"image": "0.png", "caption": "a red square", "regions": [good]}) + "\n"
                     + json.dumps({"image": "0.png", "caption": "x", "regions": [{"box": [0.5, 0, 0.4, 1], "text": "x"}]})
                     + "\n")
    grounded = build_source({"format": "captions", "path": str(jsonl)})
    assert grounded.get(0)["regions"] == [good]
    assert grounded.get(1) is None
    # images whose lines name no region train on the other losses alone (no NaN from an empty mean)
    jsonl.write_text("".join(json.dumps({"image": f"{k % 3}.png", "caption": "a red square", "regions": []}) + "\n"
                             for k in range(300)))
    metrics = train_siglip(load_siglip_config({**TINY, "steps": 4, "log_every": 2, "region_tagging_weight": 1.0,
                                               "output_dir": str(tmp_path / "empty"),
                                               "data": {"format": "captions", "path": str(jsonl)}}), progress=False)
    assert math.isfinite(metrics["loss"]) and "region_tag_recall" not in metrics
