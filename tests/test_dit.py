"""The dit family: diffusers transformers (SD3's MMDiT, PixArt) drawing from the backbone's hidden states."""
import warnings

import pytest
import torch

import unimm
from unimm.heads.dit import shifted_sigmas
from unimm.processing import left_pad
from unimm.sampling.dit import generate_dit_latents

CONFIGS = ["tiny-dit", "tiny-dit-pixart"]  # queries + SD3 MMDiT; prompt states + PixArt


@pytest.fixture(scope="module", params=CONFIGS)
def dit_pipe(request):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", unimm.UntrainedModelWarning)
        return unimm.load(request.param)


def _prompts(pipe, texts=("a red circle", "two small blue squares on the left")):
    ids, mask = left_pad([pipe.processor.generation_ids(t) for t in texts], pipe.model.token_ids.pad)
    return ids, mask


def test_the_two_conditioning_modes(dit_pipe):
    head, model = dit_pipe.model.gen_head, dit_pipe.model
    ids, mask = _prompts(dit_pipe)
    with torch.no_grad():
        cond = head.condition(model, ids, mask)
    states = cond["encoder_hidden_states"]
    if head.config.conditioning == "queries":
        assert model.num_image_tokens == head.config.num_queries == states.shape[1]
        assert cond["pooled_projections"].shape == (2, head.transformer.config.pooled_projection_dim)
    else:  # the prompt's own states, padded on the left to a fixed length, padding rows zero and masked
        assert model.num_image_tokens == 0 and states.shape[1] == head.config.max_prompt_tokens
        m = cond["encoder_attention_mask"]
        assert m.shape == (2, head.config.max_prompt_tokens) and m[0].sum() == mask[0].sum()
        assert torch.all(states[m == 0] == 0)
    # Left padding changes nothing about a prompt's condition.
    with torch.no_grad():
        alone = head.condition(model, *_prompts(dit_pipe, ("a red circle",)))["encoder_hidden_states"]
    if head.config.conditioning == "queries":
        torch.testing.assert_close(alone[0], states[0], atol=1e-5, rtol=1e-4)
    else:
        n = int(mask[0].sum())
        torch.testing.assert_close(alone[0, -n:], states[0, -n:], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("shift, guidance", [(1.0, 1.0), (3.0, 2.0)])
def test_the_sampler_matches_diffusers_flow_match_euler_scheduler(dit_pipe, shift, guidance):
    from diffusers import FlowMatchEulerDiscreteScheduler

    model, head = dit_pipe.model, dit_pipe.model.gen_head
    ids, mask = _prompts(dit_pipe)
    steps = 6
    ours = generate_dit_latents(model, ids, mask, steps=steps, guidance_scale=guidance, shift=shift,
                                generator=torch.Generator().manual_seed(3))

    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    sched.set_timesteps(steps)
    torch.testing.assert_close(sched.sigmas.float(), shifted_sigmas(steps, shift))
    with torch.no_grad():
        full_ids = torch.cat([ids, model.unconditional_ids(ids)]) if guidance != 1 else ids
        full_mask = torch.cat([mask, mask]) if guidance != 1 else mask
        cond = head.condition(model, full_ids, full_mask)
        x = torch.randn(2, head.c, head.grid, head.grid, generator=torch.Generator().manual_seed(3))
        for t in sched.timesteps:
            both = torch.cat([x, x]) if guidance != 1 else x
            v = head.velocity(both, (t / 1000).expand(both.shape[0]), cond)
            if guidance != 1:
                v = v[2:] + guidance * (v[:2] - v[2:])
            x = sched.step(v, t, x).prev_sample
    torch.testing.assert_close(ours, x, atol=1e-5, rtol=1e-4)


def test_the_backbone_runs_once_per_generate_call(dit_pipe):
    calls = []
    decoder = dit_pipe.model.backbone.lm.get_decoder()
    handle = decoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        images = dit_pipe.generate(["a red circle", "a blue square"], num_images=2, steps=5, guidance_scale=3.0,
                                   seed=0)
    finally:
        handle.remove()
    assert len(images) == 4 and len(calls) == 1  # 5 steps, CFG, 4 images: one backbone pass


def test_training_and_inference_share_the_latent_scaling(dit_pipe, shapes_image):
    """The loss's targets (images_to_targets) live where the sampler's output is decoded from:
    scaled and shifted latents; a VAE with a non-trivial scale and shift shows a mismatch."""
    tok = dit_pipe.model.image_tokenizer
    old = tok.scaling_factor, tok.shift_factor
    tok.scaling_factor, tok.shift_factor = 0.37, 0.21
    try:
        images = tok.preprocess(shapes_image)[None]
        with torch.no_grad():
            targets = dit_pipe.model.images_to_targets(images)
            raw = tok.vae.encode(images).latent_dist.mode()
            torch.testing.assert_close(targets, (raw - 0.21) * 0.37)
            torch.testing.assert_close(dit_pipe.model.decode_images(targets),
                                       tok.vae.decode(raw).sample, atol=1e-5, rtol=1e-4)
    finally:
        tok.scaling_factor, tok.shift_factor = old


def test_tiny_mmdit_trains_samples_saves_reloads_and_opens_in_diffusers(tmp_path):
    from diffusers import SD3Transformer2DModel

    from unimm.training.config import load_train_config
    from unimm.training.trainer import train

    cfg = load_train_config("configs/train/tiny-stage1.yaml", [
        "model=tiny-dit", f"output_dir={tmp_path / 'run'}", "steps=4", "batch_size=4", "save_every=100", "log_every=2",
        "freeze.gen_head=false", "data.ratios.vqa=1", "data.ratios.t2i=3"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        before = unimm.load("tiny-dit").model.gen_head.state_dict()
        train(cfg, progress=False)
    pipe = unimm.load(str(tmp_path / "run" / "final"))
    after = pipe.model.gen_head.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in after)  # the generator learnt
    first = pipe.generate("a red circle", seed=5, steps=4)
    pipe.save_pretrained(tmp_path / "saved")
    again = unimm.load(str(tmp_path / "saved"))
    assert first[0].tobytes() == again.generate("a red circle", seed=5, steps=4)[0].tobytes()

    folder = tmp_path / "saved" / "transformer"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    opened = SD3Transformer2DModel.from_pretrained(folder)  # diffusers' own loader, as it is
    x = torch.randn(1, 4, 8, 8)
    kw = {"encoder_hidden_states": torch.randn(1, 8, 64), "pooled_projections": torch.randn(1, 32),
          "timestep": torch.tensor([500.0]), "return_dict": False}
    with torch.no_grad():
        torch.testing.assert_close(opened(x, **kw)[0], again.model.gen_head.transformer(x, **kw)[0])
    # The generator is stored once: in transformer/, not also in model.safetensors.
    from safetensors import safe_open

    with safe_open(tmp_path / "saved" / "model.safetensors", "pt") as f:
        assert not [k for k in f.keys() if k.startswith("gen_head.transformer.")]


def test_a_damaged_or_mismatched_transformer_folder_is_named(tmp_path, dit_pipe):
    dit_pipe.save_pretrained(tmp_path / "m")
    config = tmp_path / "m" / "transformer" / "config.json"
    config.write_text(config.read_text().replace('"num_layers": 2', '"num_layers": 3'))
    with pytest.raises(ValueError, match="does not match the model's config: num_layers"):
        unimm.load(str(tmp_path / "m"))


@pytest.mark.parametrize("generator, msg", [
    ({"cls": "UNet2DModel"}, "generator.cls must be one of SD3Transformer2DModel, PixArtTransformer2DModel"),
    ({"conditioning": "telepathy"}, "conditioning must be one of queries, prompt_states"),
    ({"config": {"num_layerz": 2}}, r"unknown config key 'num_layerz' in generation.generator.config"),
    ({"num_queries": 0}, "num_queries must be >= 1, got 0"),
])
def test_bad_generator_configs_are_named(generator, msg):
    from unimm.pipelines.load import resolve_config

    with pytest.raises(ValueError, match=msg):
        resolve_config({"base": "tiny-dit", "generation": {"generator": generator}})


def test_a_generator_on_a_paradigm_that_builds_none_is_refused():
    from unimm.pipelines.load import resolve_config

    with pytest.raises(ValueError, match="the autoregressive paradigm builds none"):
        resolve_config({"base": "tiny", "generation": {"generator": {"cls": "SD3Transformer2DModel"}}})


def test_the_cli_the_app_and_chat_work_unchanged_on_a_dit_model(dit_pipe, tmp_path, capsys, shapes_image):
    from unimm.cli import main

    name = dit_pipe.config.name
    out = tmp_path / "d.png"
    assert main(["generate", "a red circle", "--model", name, "-o", str(out), "-q", "--steps", "3",
                 "--solver", "heun", "--seed", "1"]) == 0
    assert out.is_file() and "seed: 1" in capsys.readouterr().err
    assert main(["generate", "a red circle", "--model", name, "-o", str(out), "--temperature", "0.5"]) == 2
    assert "temperature does not apply to the dit paradigm" in capsys.readouterr().err
    assert isinstance(dit_pipe.chat(shapes_image, "What colour is the circle?"), str)  # understanding unchanged

    pytest.importorskip("gradio")
    from unimm import app as demo

    h = demo.Handlers(dit_pipe)
    assert (h.uses_temperature, h.uses_steps, h.default_steps()) == (False, True, 8)
    images, seed = h.generate("a red circle", 2, 2.0, 1.0, 3, 7, False, progress=lambda *a, **k: None)
    assert len(images) == 2 and seed == 7 and images[0].size == (32, 32)


def test_the_two_dit_stages_train_frozen_then_with_lora(tmp_path):
    """Stage 1 trains the generator side only; stage 2 adds LoRA on the backbone, merged on export."""
    from unimm.training.config import load_train_config
    from unimm.training.trainer import train

    one = tmp_path / "one"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = unimm.load("tiny-dit").model.state_dict()
        train(load_train_config("configs/train/tiny-dit-stage1.yaml",
                                [f"output_dir={one}", "steps=2", "batch_size=2"]), progress=False)
        after_one = unimm.load(str(one / "final")).model.state_dict()
        train(load_train_config("configs/train/tiny-dit-stage2.yaml",
                                [f"init_from={one / 'final'}", f"output_dir={tmp_path / 'two'}", "steps=2",
                                 "batch_size=2"]), progress=False)
    after_two = unimm.load(str(tmp_path / "two" / "final")).model.state_dict()
    changed = lambda a, b, prefix: any(not torch.equal(a[k], b[k]) for k in a if k.startswith(prefix))  # noqa: E731
    assert changed(start, after_one, "gen_head.") and not changed(start, after_one, "backbone.")
    assert changed(after_one, after_two, "backbone.") and set(after_two) == set(after_one)  # LoRA merged away
