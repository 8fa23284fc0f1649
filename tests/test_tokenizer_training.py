"""The image-tokenizer trainer: losses fall, usage is reported, the result saves and loads."""
import json

import pytest
import torch

from unimm.cli import main
from unimm.tokenizers import VAETokenizer, VQTokenizer
from unimm.tokenizers.vq import codebook_usage
from unimm.training.tokenizer import load_train_config, train_tokenizer

SMALL_VQ = {"type": "vq", "image_size": 16, "block_out_channels": [16, 16], "norm_num_groups": 8, "latent_channels": 16,
            "quantizer": {"codebook_size": 32, "dead_code_threshold": 1}}
SMALL_VAE = {"type": "vae", "image_size": 16, "autoencoder": {
    "block_out_channels": [16, 16], "down_block_types": ["DownEncoderBlock2D"] * 2,
    "up_block_types": ["UpDecoderBlock2D"] * 2, "latent_channels": 4, "norm_num_groups": 8, "layers_per_block": 1}}


def _cfg(tmp_path, tokenizer, **kw):
    base = {"tokenizer": tokenizer, "data": {"source": "shapes", "num_samples": 160, "seed": 1},
            "output_dir": str(tmp_path / "run"), "steps": 40, "batch_size": 16, "lr": 2e-3, "log_every": 10,
            "eval_size": 16, "warmup_steps": 1}
    base.update(kw)
    return load_train_config(base)


def _log(tmp_path):
    return [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]


def test_codebook_usage_counts_perplexity_and_dead_codes():
    assert codebook_usage(torch.tensor([0, 1, 2, 3]), 8) == {"perplexity": pytest.approx(4.0), "unused_codes": 4,
                                                              "used_fraction": 0.5}
    assert codebook_usage(torch.zeros(10, dtype=torch.long), 4)["perplexity"] == pytest.approx(1.0)


def test_vq_tokenizer_trains_reports_usage_and_saves(tmp_path):
    metrics = train_tokenizer(_cfg(tmp_path, SMALL_VQ), progress=False)
    log = _log(tmp_path)
    assert [m["step"] for m in log] == [0, 10, 20, 30, 40]  # step 0: the untrained baseline
    assert {"recon", "aux", "mse", "psnr", "perplexity", "unused_codes"} <= set(log[-1])
    assert log[-1]["mse"] < 0.5 * log[0]["mse"]  # reconstruction improves
    assert 1 <= metrics["perplexity"] <= 32 and 0 <= metrics["unused_codes"] < 32
    tok = VQTokenizer.from_pretrained(tmp_path / "run" / "tokenizer")
    assert tok.num_codes == 32
    assert (tmp_path / "run" / "reconstructions.png").is_file()


def test_cosine_schedule_and_saves_along_the_way(tmp_path, monkeypatch):
    from unimm.training import tokenizer as trainer

    cfg = _cfg(tmp_path, SMALL_VQ, schedule="cosine", min_lr_ratio=0.1, warmup_steps=4, steps=24, save_every=10)
    factors = [trainer.lr_factor(cfg, s) for s in range(24)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]  # linear warm-up, then down to 0.1 at the last step
    assert all(a >= b for a, b in zip(factors[3:], factors[4:])) and factors[-1] == pytest.approx(0.1, abs=0.01)
    assert trainer.lr_factor(_cfg(tmp_path, SMALL_VQ, warmup_steps=4), 20) == 1.0  # "constant" is the default
    saved = []
    real = trainer._save
    monkeypatch.setattr(trainer, "_save", lambda tok, path, *a, **kw: (saved.append(kw["overwrite"]),
                                                                       real(tok, path, *a, **kw)))
    train_tokenizer(cfg, progress=False)
    assert saved == [False, True, True]  # steps 10 and 20, then the end, each replacing its own earlier save
    assert VQTokenizer.from_pretrained(tmp_path / "run" / "tokenizer").num_codes == 32
    for bad, msg in [({"schedule": "linear"}, "schedule must be"), ({"min_lr_ratio": 2}, "min_lr_ratio"),
                     ({"save_every": -1}, "save_every")]:
        with pytest.raises(ValueError, match=msg):
            _cfg(tmp_path, SMALL_VQ, **bad)


def test_kmeans_codebook_is_initialised_from_training_data_not_the_held_out_images(tmp_path, monkeypatch):
    from unimm.training import tokenizer as trainer

    seen = []
    real = trainer.evaluate
    monkeypatch.setattr(trainer, "evaluate", lambda tok, images: seen.append(
        bool(tok.quantizer.q._codebook.initted)) or real(tok, images))
    kmeans = {**SMALL_VQ, "quantizer": {**SMALL_VQ["quantizer"], "kmeans_init": True}}
    train_tokenizer(_cfg(tmp_path, kmeans, steps=20), progress=False)
    assert seen and all(seen)  # every evaluation ran on an already initialised codebook
    assert [m["step"] for m in _log(tmp_path)] == [10, 20]  # no untrained baseline to report


@pytest.mark.parametrize("spec", [SMALL_VQ, SMALL_VAE], ids=["vq", "vae"])
def test_decoder_only_fine_tuning_keeps_every_code(tmp_path, spec):
    from unimm.data.images import ImageDataset
    from unimm.tokenizers import build_image_tokenizer, normalise_image_tokenizer_spec

    train_tokenizer(_cfg(tmp_path / "a", spec, steps=10, output_dir=str(tmp_path / "a")), progress=False)
    first = tmp_path / "a" / "tokenizer"
    cfg = _cfg(tmp_path, {"checkpoint": str(first)}, steps=10, decoder_only=True, lr=5e-3,
               aux_weight=1.0, data={"source": "shapes", "num_samples": 160, "seed": 2})
    train_tokenizer(cfg, progress=False)
    before, after = (build_image_tokenizer(normalise_image_tokenizer_spec({"checkpoint": str(d)})).eval() for d in (first, tmp_path / "run" / "tokenizer"))
    sa, sb = before.state_dict(), after.state_dict()
    dec = ("decoder.", "post_quant_conv.", "vae.decoder.", "vae.post_quant_conv.")
    assert all(torch.equal(sa[k], sb[k]) for k in sa if not k.startswith(dec))  # encoder, codebook, buffers
    assert any(not torch.equal(sa[k], sb[k]) for k in sa if k.startswith(dec))  # the decoder learned
    images = torch.stack([ImageDataset("shapes", 16, num_samples=8, seed=3)[i] for i in range(8)])
    with torch.no_grad():
        if spec["type"] == "vq":
            assert torch.equal(before.encode(images)[1], after.encode(images)[1])  # the same codes
        else:
            assert torch.equal(before.encode(images), after.encode(images))  # the same latents
    with pytest.raises(ValueError, match="decoder_only fine-tunes a trained tokenizer"):
        _cfg(tmp_path, SMALL_VQ, decoder_only=True)


def test_vae_tokenizer_trains_and_sets_latent_scaling(tmp_path):
    train_tokenizer(_cfg(tmp_path, SMALL_VAE), progress=False)
    log = _log(tmp_path)
    assert log[-1]["mse"] < 0.5 * log[0]["mse"] and "kl" in log[-1]
    tok = VAETokenizer.from_pretrained(tmp_path / "run" / "tokenizer")
    from unimm.data.images import ImageDataset

    data = ImageDataset("shapes", 16, num_samples=160, seed=1)
    with torch.no_grad():
        z = tok.encode(torch.stack([data[i] for i in range(144, 160)]))  # the held-out images
    assert abs(z.mean().item()) < 0.05 and abs(z.std().item() - 1) < 0.05  # normalised latents


def test_folder_data_skips_unreadable_files_with_a_warning(tmp_path):
    from unimm.data.shapes import ShapesWorld

    folder = tmp_path / "imgs"
    folder.mkdir()
    world = ShapesWorld(image_size=16, num_samples=40)
    for i in range(40):
        world.sample(i)["image"].save(folder / f"{i:03d}.png")
    (folder / "000.png").write_bytes(b"broken")
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image file\(s\), e.g. .*000.png"):
        train_tokenizer(_cfg(tmp_path, SMALL_VQ, data={"source": "folder", "path": str(folder)}, steps=3), progress=False)


def test_bad_training_configs_are_named(tmp_path):
    with pytest.raises(ValueError, match="recon_loss must be"):
        _cfg(tmp_path, SMALL_VQ, recon_loss="l3")
    with pytest.raises(ValueError, match="mixed_precision must be one of auto, no, bf16, fp16, got 'half'"):
        _cfg(tmp_path, SMALL_VQ, mixed_precision="half")
    with pytest.raises(ValueError, match="unknown config key 'stepz'"):
        _cfg(tmp_path, SMALL_VQ, stepz=3)
    with pytest.raises(ValueError, match=r"unknown config key 'num_sampels' in data \(shapes\)"):
        _cfg(tmp_path, SMALL_VQ, data={"source": "shapes", "num_sampels": 3})
    with pytest.raises(ValueError, match="image folder not found"):
        train_tokenizer(_cfg(tmp_path, SMALL_VQ, data={"source": "folder", "path": str(tmp_path / "nope")}), progress=False)


def test_cli_trains_from_a_config_file_with_overrides(tmp_path, capsys, monkeypatch):
    import yaml

    path = tmp_path / "tok.yaml"
    path.write_text(yaml.safe_dump({"tokenizer": SMALL_VQ, "data": {"source": "shapes", "num_samples": 64}}))
    monkeypatch.chdir(tmp_path)
    assert main(["train-tokenizer", str(path), "steps=2", "batch_size=8", "output_dir=out", "-q"]) == 0
    assert "saved out/tokenizer" in capsys.readouterr().out
    assert VQTokenizer.from_pretrained(tmp_path / "out" / "tokenizer").num_codes == 32


def test_shipped_tokenizer_configs_parse():
    from pathlib import Path

    import yaml

    for path in sorted((Path(__file__).resolve().parents[1] / "configs" / "tokenizers").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        if "checkpoint" in raw["tokenizer"]:  # continues a committed tokenizer
            assert (Path(__file__).resolve().parents[1] / raw["tokenizer"]["checkpoint"]).is_dir(), path
        cfg = load_train_config(str(path))
        assert cfg.tokenizer["type"] in ("vq", "vae"), path


def test_edge_weighting_counts_outline_pixels_more():
    from unimm.training.tokenizer import edge_mask, reconstruction_loss

    images = -torch.ones(1, 3, 8, 8)
    images[:, :, 2:5, 2:5] = 0.5  # a 3x3 square on a flat background
    mask = edge_mask(images)[0, 0]
    # Outline on both sides of the edge: the 5x5 block around the square minus its centre pixel.
    expect = torch.zeros(8, 8)
    expect[1:6, 1:6] = 1
    expect[3, 3] = 0
    assert torch.equal(mask, expect)
    recon = images.clone()
    recon[:, :, 0, 0] += 0.3  # an error on the flat background ...
    flat = reconstruction_loss(recon, images, "l1", edge_weight=4.0)
    recon = images.clone()
    recon[:, :, 1, 1] += 0.3  # ... the same error on the outline weighs 5x as much
    edge = reconstruction_loss(recon, images, "l1", edge_weight=4.0)
    assert edge.item() == pytest.approx(5 * flat.item())
    assert reconstruction_loss(recon, images, "l1", 0.0).item() == pytest.approx((recon - images).abs().mean().item())
    assert reconstruction_loss(recon, images, "l2", 4.0).item() == pytest.approx(5 * 0.09 * 3 / (3 * (64 + 4 * 24)))
