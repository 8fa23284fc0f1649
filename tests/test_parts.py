"""Parts one by one: encoder, projectors, backbone, tokenizers, VQ."""
import pytest
import torch

import unimm
from unimm.encoders import SiglipEncoder, SiglipEncoderConfig
from unimm.projectors import PROJECTORS, build_projector
from unimm.tokenizers.quantizers import QuantizerConfig
from unimm.data.corpus import corpus_lines
from unimm.tokenizers.text import TextTokenizerConfig, build_text_tokenizer
from unimm.tokenizers.vq import VQConfig, VQTokenizer

SMALL_SIGLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                    image_size=32, patch_size=8)


# -- projectors -----------------------------------------------------------------------------
@pytest.mark.parametrize("spec, m", [
    ({"type": "linear"}, 16), ({"type": "mlp", "depth": 2}, 16), ({"type": "pixel_shuffle", "scale": 2}, 4),
    ({"type": "qformer", "num_queries": 5, "num_heads": 2}, 5), ({"type": "perceiver", "num_latents": 6, "num_heads": 2}, 6),
])
def test_projector_maps_b_n_denc_to_b_m_dllm(spec, m):
    proj = build_projector(spec, in_dim=32, out_dim=48, num_input_tokens=16)
    x = torch.randn(3, 16, 32, requires_grad=True)
    y = proj(x)
    assert y.shape == (3, m, 48) and proj.num_output_tokens(16) == m
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # every projector reads its input


def test_pixel_shuffle_merges_2x2_neighbours_and_pads_odd_grids():
    proj = build_projector({"type": "pixel_shuffle"}, 4, 8, 9)
    assert proj.num_output_tokens(9) == 4  # 3x3 -> padded to 4x4 -> 2x2
    assert proj(torch.randn(1, 9, 4)).shape == (1, 4, 8)
    with pytest.raises(ValueError, match="square patch grid"):
        proj(torch.randn(1, 10, 4))


def test_pixel_shuffle_position_embedding_tells_tokens_apart_and_checks_the_grid():
    plain = build_projector({"type": "pixel_shuffle"}, 4, 8, 16)
    proj = build_projector({"type": "pixel_shuffle", "position_embedding": True}, 4, 8, 16)
    proj.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(2, 16, 4)
    assert proj.position.shape == (4, 8) and torch.equal(proj(x), plain(x))  # zero at the start
    with torch.no_grad():
        proj.position.normal_()
    same = torch.zeros(1, 16, 4)  # identical patches: only the position embedding separates the tokens
    y = proj(same)
    assert not torch.allclose(y[0, 0], y[0, 1])
    with pytest.raises(ValueError, match="built for 4 tokens, got 9"):
        proj(torch.randn(1, 36, 4))
    with pytest.raises(ValueError, match="position_embedding must be bool"):
        build_projector({"type": "pixel_shuffle", "position_embedding": "yes"}, 4, 8, 16)


@pytest.mark.parametrize("name", ["tiny", "tiny-linear", "tiny-pixel-shuffle", "tiny-qformer", "tiny-perceiver", "tiny-qwen2",
                                  "tiny-moe", "tiny-xattn"])
def test_every_config_variant_chats_generates_and_trains(name, shapes_image):
    torch.manual_seed(0)
    pipe = unimm.load(name)
    assert pipe.config.name == name
    kind = pipe.config.projector["type"]
    assert isinstance(pipe.model.projector, PROJECTORS[kind][1])
    ids, pixels = pipe._chat_inputs(shapes_image, "What colour?", None)
    assert ids.count(pipe.model.token_ids.image) == pipe.model.num_understanding_tokens
    assert isinstance(pipe.chat(shapes_image, "What colour?", max_new_tokens=3), str)
    assert len(pipe.generate("a red circle", seed=0)) == 1
    # Gradients reach the projector through the understanding loss.
    ids, labels = pipe.processor.chat_ids([("What colour?", 1, "red")])
    ids, labels = torch.tensor([ids]), torch.tensor([labels])
    loss = pipe.model.understanding_loss(ids, torch.ones_like(ids), labels, pixels)
    loss.backward()
    assert all(p.grad is not None for p in pipe.model.projector.parameters())


# -- encoder --------------------------------------------------------------------------------
def test_encoder_interpolates_position_embeddings_for_other_sizes():
    enc = SiglipEncoder(SiglipEncoderConfig(siglip=SMALL_SIGLIP, image_size=48))
    assert enc.num_patches == 36
    assert enc(torch.randn(2, 3, 48, 48)).shape == (2, 36, 32)
    native = SiglipEncoder(SiglipEncoderConfig(siglip=SMALL_SIGLIP))
    assert native(torch.randn(1, 3, 32, 32)).shape == (1, 16, 32)


def test_encoder_feature_layer_selects_a_hidden_state():
    torch.manual_seed(0)
    last = SiglipEncoder(SiglipEncoderConfig(siglip=SMALL_SIGLIP, feature_layer=-1))
    x = torch.randn(1, 3, 32, 32)
    out = last.model(pixel_values=x, output_hidden_states=True)
    assert torch.allclose(last(x), out.last_hidden_state)
    last.config.feature_layer = -2
    assert torch.allclose(last(x), out.hidden_states[-2])


def test_encoder_loads_a_local_siglip_checkpoint(tmp_path):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    ref = SiglipVisionModel(SiglipVisionConfig(**SMALL_SIGLIP)).eval()
    ref.save_pretrained(tmp_path / "siglip")
    enc = SiglipEncoder(SiglipEncoderConfig(pretrained=str(tmp_path / "siglip"))).eval()
    x = torch.randn(1, 3, 32, 32)
    assert torch.allclose(enc(x), ref(pixel_values=x).last_hidden_state)
    # The resolved config rebuilds the same architecture without the checkpoint.
    rebuilt = SiglipEncoder(enc.resolved_config())
    assert rebuilt.resolved_config() == enc.resolved_config()


def test_encoder_takes_the_vision_tower_of_a_full_siglip_checkpoint(tmp_path):
    # Real SigLIP checkpoints (e.g. google/siglip-so400m-patch14-384) hold both towers.
    from transformers import SiglipConfig, SiglipModel

    torch.manual_seed(0)
    full = SiglipModel(SiglipConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=100),
        vision_config=SMALL_SIGLIP)).eval()
    full.save_pretrained(tmp_path / "siglip")
    enc = SiglipEncoder(SiglipEncoderConfig(pretrained=str(tmp_path / "siglip"))).eval()
    x = torch.randn(1, 3, 32, 32)
    assert torch.allclose(enc(x), full.vision_model(pixel_values=x).last_hidden_state, atol=1e-6)


def test_encoder_rejects_sizes_that_do_not_fit_patches():
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        SiglipEncoder(SiglipEncoderConfig(siglip=SMALL_SIGLIP, image_size=30))


# -- backbone and text tokenizer ------------------------------------------------------------
def test_bpe_tokenizer_round_trips_any_text_and_keeps_special_tokens_whole():
    tok = build_text_tokenizer(TextTokenizerConfig(vocab_size=400), corpus_lines("shapes"))
    for text in ["a red circle on the left", "Ünïcödé ✓ 漢字", "tabs\tand\nnewlines"]:
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    ids = tok.encode("<begin_of_image><image><end_of_image>", add_special_tokens=False)
    assert ids == tok.convert_tokens_to_ids(["<begin_of_image>", "<image>", "<end_of_image>"])
    # Shapes-world words are single merges, not bytes.
    assert len(tok.encode(" circle", add_special_tokens=False)) == 1


def test_pretrained_backbone_and_tokenizer_get_unimm_tokens(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_text_tokenizer(TextTokenizerConfig(vocab_size=400), corpus_lines("shapes"))
    # A "real" checkpoint: a causal LM and a tokenizer without unimm's image tokens.
    from unimm.tokenizers.text import train_bpe_tokenizer
    from unimm.data.corpus import shapes_corpus

    plain = train_bpe_tokenizer(shapes_corpus(500), 350)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(plain), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    lm.save_pretrained(tmp_path / "lm")
    plain.save_pretrained(tmp_path / "lm")
    cfg = {
        "encoder": {"siglip": SMALL_SIGLIP},
        "backbone": {"pretrained": str(tmp_path / "lm")},
        "text_tokenizer": {"pretrained": str(tmp_path / "lm")},
        "image_tokenizer": {"image_size": 16, "block_out_channels": [16, 16], "norm_num_groups": 8, "latent_channels": 16,
                            "quantizer": {"codebook_size": 64}},
    }
    pipe = unimm.load(cfg)
    n = len(plain) + 3  # image placeholder, begin and end of image
    assert pipe.model.token_ids.vocab_size == n
    assert pipe.model.backbone.lm.get_input_embeddings().num_embeddings == n
    # Original rows are kept, new rows added.
    assert torch.equal(pipe.model.backbone.lm.get_input_embeddings().weight[: len(plain)],
                       lm.get_input_embeddings().weight)
    assert len(pipe.generate("a red circle", seed=0)) == 1
    # Saved, it no longer needs the original checkpoint.
    pipe.save_pretrained(tmp_path / "unimm")
    import shutil

    shutil.rmtree(tmp_path / "lm")
    assert unimm.load(str(tmp_path / "unimm")).model.token_ids == pipe.model.token_ids
    del tok


# -- VQ image tokenizer ---------------------------------------------------------------------
@pytest.mark.parametrize("quantizer", [
    {"type": "vq", "codebook_size": 64, "use_cosine_sim": True},
    {"type": "vq", "codebook_size": 64, "use_cosine_sim": False, "ema_update": False},
    {"type": "fsq", "levels": [4, 4, 4]},
    {"type": "lfq", "codebook_size": 64},
])
def test_vq_tokenizer_ids_decode_to_the_quantized_image(quantizer):
    torch.manual_seed(0)
    from unimm.config import from_dict

    vq = VQTokenizer(VQConfig(image_size=16, block_out_channels=(16, 16), norm_num_groups=8, latent_channels=16,
                              quantizer=from_dict(QuantizerConfig, quantizer))).eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        codes, ids, aux = vq.encode(x)
        assert ids.shape == (2, 64) and int(ids.max()) < vq.num_codes and aux.dim() == 0
        # Decoding the ids gives exactly what decoding the codes gives.
        assert torch.allclose(vq.decode(ids), vq.decode_codes(codes), atol=1e-5)


def test_vq_rejects_sizes_the_downsampling_cannot_divide():
    with pytest.raises(ValueError, match="not divisible by the downsampling factor 4"):
        VQConfig(image_size=30, block_out_channels=(8, 8, 8))
    with pytest.raises(ValueError, match="power of two"):
        QuantizerConfig(type="lfq", codebook_size=100)


# -- VAE image tokenizer and tokenizer checkpoints -------------------------------------------
TINY_AE = {"block_out_channels": [16, 16], "down_block_types": ["DownEncoderBlock2D"] * 2,
           "up_block_types": ["UpDecoderBlock2D"] * 2, "latent_channels": 4, "norm_num_groups": 8, "layers_per_block": 1}


def test_vae_tokenizer_normalises_latents_and_loads_a_diffusers_vae(tmp_path):
    from diffusers import AutoencoderKL

    from unimm.tokenizers.vae import VAEConfig, VAETokenizer

    torch.manual_seed(0)
    AutoencoderKL(**TINY_AE, scaling_factor=0.5, shift_factor=0.1).save_pretrained(tmp_path / "vae")
    tok = VAETokenizer(VAEConfig(image_size=16, pretrained=str(tmp_path / "vae"))).eval()
    assert (tok.scaling_factor, tok.shift_factor, tok.grid, tok.latent_channels) == (0.5, 0.1, 8, 4)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        z = tok.encode(x)
        mean = tok.vae.encode(x).latent_dist.mean
        assert torch.allclose(z, (mean - 0.1) * 0.5)
        assert torch.allclose(tok.decode(z), tok.vae.decode(mean).sample, atol=1e-5)
    # Saved, it rebuilds from its resolved config without the diffusers directory.
    tok.save_pretrained(tmp_path / "unimm-vae")
    again = VAETokenizer.from_pretrained(tmp_path / "unimm-vae")
    with torch.no_grad():
        assert torch.allclose(again.encode(x), z)
    with pytest.raises(ValueError, match="unknown config key 'latent_chanels'"):
        VAEConfig(autoencoder={"latent_chanels": 4})


def test_model_config_can_point_at_a_trained_image_tokenizer(tmp_path):
    torch.manual_seed(0)
    vq = VQTokenizer(VQConfig(image_size=32, block_out_channels=(16, 32, 32), norm_num_groups=8, latent_channels=16,
                              quantizer=QuantizerConfig(codebook_size=128)))
    vq.save_pretrained(tmp_path / "vq")
    pipe = unimm.load({"base": "tiny", "image_tokenizer": {"checkpoint": str(tmp_path / "vq")}})
    for (k, a), (_, b) in zip(vq.state_dict().items(), pipe.model.image_tokenizer.state_dict().items()):
        assert torch.equal(a, b), k
    assert pipe.model.gen_head.head[-1].out_features == 128
    with pytest.raises(ValueError, match="takes no other keys"):
        unimm.load({"image_tokenizer": {"checkpoint": str(tmp_path / "vq"), "image_size": 64}})


def test_overriding_the_quantizer_keeps_the_rest_of_the_base_tokenizer():
    from unimm.pipelines import resolve_config

    cfg = resolve_config({"base": "tiny", "image_tokenizer": {"type": "vq", "quantizer": {"type": "fsq", "levels": [4, 4]}}})
    assert cfg.image_tokenizer["block_out_channels"] == (16, 32, 32)  # from tiny
    assert cfg.image_tokenizer["quantizer"]["type"] == "fsq" and cfg.image_tokenizer["quantizer"]["levels"] == (4, 4)
