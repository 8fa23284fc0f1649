"""Several vision towers fused before the projector: channel fusion on a shared grid, sequence fusion."""
import warnings

import pytest
import torch

import unimm
from unimm.config import ConfigError
from model_helpers import overfit_one_answer


def _load(spec):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", unimm.UntrainedModelWarning)
        return unimm.load(spec)


SEQUENCE = {"base": "tiny-multi-encoder", "name": "seq", "projector": {"type": "mlp"},
            "encoder": {"fusion": "sequence"}}


def test_channel_fusion_appends_the_second_towers_features_on_the_first_grid(shapes_image):
    pipe = _load("tiny-multi-encoder")
    enc = pipe.model.encoder
    assert (enc.image_size, enc.tower_size, enc.hidden_size, enc.num_patches) == (64, 32, 32 + 48, 16)
    pixels = pipe.processor.pixel_values([shapes_image])
    assert pixels.shape[-1] == 64  # the most detailed tower's resolution
    feats = enc(pixels)
    assert feats.shape == (1, 16, 80)
    alone = enc._tower(torch.nn.functional.interpolate(pixels, size=(32, 32), mode="bilinear", antialias=True))
    torch.testing.assert_close(feats[..., :32], alone)  # the main tower's own features come first
    extra = enc.extra[0](pixels).transpose(1, 2).reshape(1, 48, 8, 8)  # its own 8x8 grid
    pooled = torch.nn.functional.interpolate(extra, size=(4, 4), mode="bilinear", antialias=True)
    torch.testing.assert_close(feats[..., 32:], pooled.flatten(2).transpose(1, 2))  # resampled to 4x4, appended


def test_sequence_fusion_appends_tokens_mapped_to_the_first_width():
    pipe = _load(SEQUENCE)
    enc = pipe.model.encoder
    assert (enc.hidden_size, enc.num_patches) == (32, 16 + 64)
    assert isinstance(enc.to_width[0], torch.nn.Linear)
    assert pipe.model.num_understanding_tokens == 80


@pytest.mark.parametrize("spec", ["tiny-multi-encoder", SEQUENCE])
def test_a_fixed_batch_is_learned_and_a_saved_model_answers_the_same(spec, shapes_image, tmp_path):
    pipe = _load(spec)
    first, last = overfit_one_answer(pipe, shapes_image)
    assert last < 0.5 * first
    patch_embed = next(p for n, p in pipe.model.encoder.extra[0].named_parameters() if "patch_embedding" in n)
    assert patch_embed.grad is not None and patch_embed.grad.abs().sum() > 0  # the second tower learns too
    answer = pipe.chat(shapes_image, "What colour is the circle?", max_new_tokens=3, temperature=0)
    pipe.save_pretrained(tmp_path / "m")
    again = unimm.load(str(tmp_path / "m"))
    assert again.chat(shapes_image, "What colour is the circle?", max_new_tokens=3, temperature=0) == answer
    assert again.model.encoder.config.also and again.model.encoder.config.also[0]["image_size"] == 64


def test_bad_tower_settings_are_named():
    with pytest.raises(ConfigError, match="encoder.fusion must be one of channel, sequence, got 'stack'"):
        _load({"base": "tiny-multi-encoder", "encoder": {"fusion": "stack"}})
    with pytest.raises(ConfigError, match=r"unknown config key 'resize_mode' in encoder.also\[0\]"):
        _load({"base": "tiny", "encoder": {"also": [{"resize_mode": "pad"}]}})


# -- encoder-free input (Fuyu) ----------------------------------------------------------------
def test_encoder_free_input_is_raw_patches_with_a_newline_after_each_row(shapes_image):
    pipe = _load("tiny-fuyu")
    enc = pipe.model.encoder
    assert enc.model is None and (enc.hidden_size, enc.num_patches) == (3 * 8 * 8, 4 * 5)
    pixels = pipe.processor.pixel_values([shapes_image])
    feats = enc(pixels)  # (1, 20, 192)
    rows = feats.reshape(1, 4, 5, 192)
    assert torch.equal(rows[:, :, 4], enc.newline.expand(1, 4, 192))  # every row ends with the newline vector
    second = pixels[0, :, 0:8, 8:16].reshape(-1)  # the patch in row 0, column 1, channel-major as unfold reads
    torch.testing.assert_close(rows[0, 0, 1], second)
    assert pipe.model.num_understanding_tokens == 20
    assert sum(p.numel() for p in enc.parameters()) == 192  # no vision transformer: the newline vector only


def test_encoder_free_model_learns_a_fixed_batch_and_reloads(shapes_image, tmp_path):
    pipe = _load("tiny-fuyu")
    first, last = overfit_one_answer(pipe, shapes_image)
    assert last < 0.5 * first and pipe.model.encoder.newline.grad is not None
    answer = pipe.chat(shapes_image, "What colour is the circle?", max_new_tokens=3, temperature=0)
    pipe.save_pretrained(tmp_path / "m")
    assert unimm.load(str(tmp_path / "m")).chat(shapes_image, "What colour is the circle?", max_new_tokens=3,
                                                temperature=0) == answer
    with pytest.raises(ConfigError, match="encoder.tower 'patches' needs image_size and patch_size"):
        _load({"base": "tiny", "encoder": {"tower": "patches"}})
