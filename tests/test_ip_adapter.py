"""The IP-Adapter on the dit family: the model's own SigLIP features, diffusers' modules and file layout,
training with the generator frozen, the API's reference image."""
import warnings

import numpy as np
import pytest
import torch

import unimm
from unimm.config import ConfigError
from unimm.data.shapes import REFERENCE_SIZE, ShapesWorld, ShapesWorldConfig, reference_pair, render


@pytest.fixture(scope="module")
def reference():
    return ShapesWorld(seed=3, num_samples=5, image_size=64).sample(2)["image"]


@pytest.fixture(scope="module")
def ip_pipe():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", unimm.UntrainedModelWarning)
        return unimm.load("tiny-dit-ip")


def test_a_reference_steers_the_generator_and_scale_zero_is_the_base_model(ip_pipe, reference):
    plain = ip_pipe.generate("a red circle", seed=1, steps=3)[0]
    steered = ip_pipe.generate("a red circle", seed=1, steps=3, reference_image=reference)[0]
    off = ip_pipe.generate("a red circle", seed=1, steps=3, reference_image=reference, reference_scale=0.0)[0]
    assert plain.tobytes() != steered.tobytes()
    assert plain.tobytes() == off.tobytes()
    # The reference alone says what to draw: an empty prompt is accepted with one, refused without.
    assert ip_pipe.generate("", seed=1, steps=3, reference_image=reference)[0].size == plain.size
    with pytest.raises(ValueError, match="the prompt is empty"):
        ip_pipe.generate("", seed=1, steps=3)


def test_the_adapter_reads_the_models_own_siglip_and_keeps_the_transformer_files_clean(ip_pipe):
    head = ip_pipe.model.gen_head
    assert head.ip_adapter.config["embed_dim"] == ip_pipe.model.encoder.hidden_size  # no second encoder
    assert not any("ip" in k for k in head.transformer.state_dict())  # processors belong to the adapter
    procs = list(head.transformer.attn_processors.values())
    assert procs == list(head.ip_adapter.ip_adapter)  # ... and run inside the transformer's attention


def test_diffusers_own_loader_rebuilds_the_adapter_from_our_files(ip_pipe, reference, tmp_path):
    """Our ip_adapter/ folder is diffusers' SD3 IP-Adapter layout: its loader builds equal modules
    from it, and a plain SD3Transformer2DModel fitted with them predicts what ours does."""
    from diffusers import SD3Transformer2DModel
    from safetensors.torch import load_file

    ip_pipe.save_pretrained(tmp_path / "m")
    files = sorted(p.name for p in (tmp_path / "m" / "ip_adapter").iterdir())
    assert files == ["config.json", "ip-adapter.safetensors"]
    state = load_file(tmp_path / "m" / "ip_adapter" / "ip-adapter.safetensors")
    grouped = {"image_proj": {}, "ip_adapter": {}}
    for k, v in state.items():
        group, name = k.split(".", 1)
        grouped[group][name] = v
    plain = SD3Transformer2DModel.from_pretrained(tmp_path / "m" / "transformer")  # opens without the adapter
    plain._load_ip_adapter_weights(grouped, low_cpu_mem_usage=False)

    head = ip_pipe.model.gen_head
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, head.c, head.grid, head.grid, generator=g)
    sigma = torch.tensor([0.3, 0.8])
    ids = ip_pipe.processor.generation_ids("a red circle")
    prompt = torch.tensor([ids, ids])
    with torch.no_grad():
        cond = head.condition(ip_pipe.model, prompt, torch.ones_like(prompt))
        feats = ip_pipe.model.encoder(ip_pipe.processor.pixel_values([reference, reference]))
        ours = head.velocity(x, sigma, cond, reference=(feats, 1.0))
        for proc in plain.attn_processors.values():
            proc.scale = 1.0
        theirs = plain(hidden_states=x, timestep=sigma * 1000, encoder_hidden_states=cond["encoder_hidden_states"],
                       pooled_projections=cond["pooled_projections"],
                       joint_attention_kwargs={"ip_adapter_image_embeds": feats}, return_dict=False)[0]
    torch.testing.assert_close(ours, theirs.float(), rtol=1e-5, atol=1e-5)


def test_reference_pairs_share_the_shape_and_follow_the_prompt():
    cfg = ShapesWorldConfig(seed=4, num_samples=400)
    pairs = [reference_pair(cfg, i) for i in range(200)]
    assert [reference_pair(cfg, i)[0] for i in range(5)] == [p[0] for p in pairs[:5]]  # deterministic
    assert all(t.objects[0].shape == r.objects[0].shape for t, r in pairs)
    assert all(t.objects[0].shape not in t.caption for t, _ in pairs)  # the shape comes from the reference
    empty = [t for t, r in pairs if t.caption == ""]
    recoloured = [t for t, r in pairs if t.objects[0].colour != r.objects[0].colour]
    assert 30 < len(empty) < 70 and 50 < len(recoloured) < 150
    assert all(t.objects[0].colour == r.objects[0].colour for t, r in pairs if t.caption == "")
    assert all(t.objects[0].colour in t.caption for t, _ in pairs if t.caption)


def test_the_ip_adapter_stage_trains_only_the_adapter_and_reloads(tmp_path, reference):
    from unimm.training.config import load_train_config
    from unimm.training.trainer import train

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = unimm.load("tiny-dit-ip").model.state_dict()
        train(load_train_config("configs/train/tiny-dit-ip-adapter.yaml",
                                [f"output_dir={tmp_path / 'run'}", "steps=3", "batch_size=2", "optim.lr=0.05"]),
              progress=False)
    pipe = unimm.load(str(tmp_path / "run" / "final"))
    after = pipe.model.state_dict()
    moved = {".".join(k.split(".")[:2]) for k in after if not torch.equal(start[k], after[k])}
    assert moved == {"gen_head.ip_adapter"}  # the generator, connector, encoder and backbone stayed frozen
    a = pipe.generate("a blue object", seed=2, steps=3, reference_image=reference)
    pipe.save_pretrained(tmp_path / "saved")
    b = unimm.load(str(tmp_path / "saved")).generate("a blue object", seed=2, steps=3, reference_image=reference)
    assert a[0].tobytes() == b[0].tobytes()


def test_cached_targets_train_an_ip_adapter_exactly_as_encoding_them_every_step(tmp_path):
    """data.cache_dir on an IP-Adapter stage: the targets are encoded once, each reference picture
    is drawn again as its item is read, and the run is the one that encodes every step; a source
    that no longer gives the cached item is refused rather than paired with another's target."""
    from model_helpers import train_plain_and_cached

    from unimm.data.formats import build_source
    from unimm.training.cache import TargetCache

    losses, (a, b) = train_plain_and_cached("configs/train/tiny-dit-ip-adapter.yaml", "pairs", tmp_path)
    assert len(losses[0]) == 3 and losses[0] == pytest.approx(losses[1], abs=1e-5)
    for k in a:  # the cache encodes 64 images a call, the plain run 2: latents differ in their last bits,
        # which Adam's normalised steps at lr 0.05 carry into a few weights (measured: up to 7e-5)
        torch.testing.assert_close(a[k], b[k], atol=2e-4, rtol=1e-3, msg=k)
    spec = {"format": "shapes", "task": "generation", "reference": True, "image_size": 32, "num_samples": 12, "seed": 2}
    model = unimm.load(str(tmp_path / "plain" / "final")).model
    cache = TargetCache.build_or_load(build_source(spec), spec, model, tmp_path / "cache", progress=False)
    item, source = cache.get(4), build_source(spec).get(4)
    assert item["caption"] == source["caption"] and item["reference"].tobytes() == source["reference"].tobytes()
    cache.references = build_source({**spec, "seed": 3})  # another world under the same cache
    with pytest.raises(ValueError, match="no longer gives item 4 as it did when its targets were cached"):
        cache.get(4)


def test_bad_reference_inputs_are_named(ip_pipe, reference, tiny_pipe):
    with pytest.raises(ValueError, match="reference_image needs a model with an IP-Adapter; this autoregressive"):
        tiny_pipe.generate("a red circle", reference_image=reference)
    with pytest.raises(ValueError, match="reference_scale needs a reference_image"):
        ip_pipe.generate("a red circle", reference_scale=0.5)
    with pytest.raises(ValueError, match="reference_scale must be"):
        ip_pipe.generate("a red circle", reference_image=reference, reference_scale=-1.0)
    with pytest.raises(ValueError, match="reference_image takes one picture"):
        ip_pipe.generate("a red circle", reference_image=[reference, reference])
    with pytest.raises(ConfigError, match="ip_adapter.hidden_dim must be a multiple of 64"):
        unimm.load({"base": "tiny-dit-ip", "generation": {"generator": {"ip_adapter": {"hidden_dim": 48}}}})
    with pytest.raises(ConfigError, match="ip_adapter needs SD3Transformer2DModel, not PixArtTransformer2DModel"):
        unimm.load({"base": "tiny-dit-pixart", "generation": {"generator": {"ip_adapter": {}}}})


def test_reference_sources_reach_the_batch():
    from unimm.data.formats import build_source

    src = build_source({"format": "shapes", "task": "generation", "reference": True, "image_size": 32,
                        "num_samples": 10, "seed": 1})
    rec = src.get(0)
    assert rec["image"].size == (32, 32) and rec["reference"].size == (REFERENCE_SIZE, REFERENCE_SIZE)
    target, ref = reference_pair(src.world.config, 0)
    assert rec["caption"] == target.caption
    assert np.array_equal(np.asarray(rec["reference"]), np.asarray(render(ref, REFERENCE_SIZE)))
    with pytest.raises(ConfigError, match="reference pairs are generation data, not 'understanding'"):
        build_source({"format": "shapes", "task": "understanding", "reference": True})


def test_the_app_takes_a_reference_picture(ip_pipe, reference, tmp_path):
    pytest.importorskip("gradio")
    from unimm import app as demo

    h = demo.Handlers(ip_pipe)
    assert h.has_reference and not h.control_types
    reference.save(tmp_path / "ref.png")
    quiet = dict(progress=lambda *a, **k: None)
    images, seed = h.generate_steered("", 1, 2.0, 1.0, 3, 4, False, None, None, 1.0, str(tmp_path / "ref.png"), 0.8,
                                      **quiet)
    assert seed == 4
    direct = ip_pipe.generate("", seed=4, steps=3, guidance_scale=2.0, reference_image=reference, reference_scale=0.8)
    assert images[0].tobytes() == direct[0].tobytes()
    # The candidates slider: a reference alone judges its candidates by likeness to the reference.
    again, _ = h.generate_steered("", 1, 2.0, 1.0, 3, 4, False, None, None, 1.0, str(tmp_path / "ref.png"), 0.8, 4,
                                  **quiet)
    best = ip_pipe.generate("", seed=4, steps=3, guidance_scale=2.0, reference_image=reference, reference_scale=0.8,
                            best_of=4)
    assert again[0].tobytes() == best[0].tobytes()
    assert again[0].info["best_of"] == 4 and again[0].info["judged_by"] == ["reference_similarity"]
    with pytest.raises(demo.gr.Error, match="Please type a prompt, .*or give a reference picture"):
        h.generate("", 1, 2.0, 1.0, 3, 4, False, **quiet)
    with pytest.raises(demo.gr.Error, match="Reference scale must be between 0 and 2"):
        h.generate("a red circle", 1, 2.0, 1.0, 3, 4, False, reference_image=str(tmp_path / "ref.png"),
                   reference_scale=7, **quiet)
    with pytest.raises(demo.gr.Error, match="This model has no IP-Adapter"):
        demo.Handlers(unimm.load("tiny-dit")).generate("a red circle", 1, 2.0, 1.0, 3, 4, False,
                                                       reference_image=str(tmp_path / "ref.png"), **quiet)
    demo.build_app(ip_pipe)  # the reference inputs are wired


def test_cli_draws_from_a_reference(tmp_path, reference, capsys):
    from unimm.cli import main

    reference.save(tmp_path / "ref.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", unimm.UntrainedModelWarning)
        assert main(["generate", "", "--model", "tiny-dit-ip", "--reference", str(tmp_path / "ref.png"),
                     "--reference-scale", "0.5", "--steps", "2", "--seed", "3", "-q", "-o",
                     str(tmp_path / "out.png")]) == 0
        assert (tmp_path / "out.png").is_file()
        assert main(["generate", "a red circle", "--model", "tiny-dit-ip", "--reference-scale", "0.5", "-q",
                     "-o", str(tmp_path / "x.png")]) == 2
    assert "--reference-scale needs --reference IMAGE" in capsys.readouterr().err


def test_parts_trained_on_one_model_attach_to_another_with_the_same_generator(tmp_path, reference):
    """A ControlNet and an IP-Adapter saved with one model load onto a plain base model: the
    result draws what the model they were trained with draws, and saves them with it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", unimm.UntrainedModelWarning)
        full = unimm.load({"base": "tiny-dit-control", "name": "full",
                           "generation": {"generator": {"ip_adapter": {"num_queries": 8, "timestep_dim": 32}}}})
        with torch.no_grad():  # make the parts differ from a fresh build, so loading them is what counts
            for p in [*full.model.gen_head.ip_adapter.parameters(), *full.model.gen_head.controlnets.parameters()]:
                p.add_(0.01 * torch.randn_like(p))
        full.save_pretrained(tmp_path / "full")
        base = unimm.load("tiny-dit-control")
    base.save_pretrained(tmp_path / "base")
    plain = unimm.load(str(tmp_path / "base"))
    before = plain.generate("a red circle", seed=5, steps=2)[0].tobytes()
    with pytest.raises(ValueError, match="reference_image needs a model with an IP-Adapter"):
        plain.generate("a red object", reference_image=reference)
    plain.attach(tmp_path / "full" / "ip_adapter")
    assert plain.generate("a red circle", seed=5, steps=2)[0].tobytes() == before  # the rest is as it was
    opts = dict(seed=5, steps=2, reference_image=reference, control_image=reference.resize((32, 32)),
                control_type="edges")
    assert plain.generate("a red object", **opts)[0].tobytes() != before
    with pytest.raises(ValueError, match="holds no part this dit model can take that it lacks"):
        plain.attach(tmp_path / "full")  # its ControlNets are the base's own folders too: nothing new
    from unimm.cli import main

    reference.save(tmp_path / "ref.png")
    assert main(["generate", "", "--model", str(tmp_path / "base"), "--attach", str(tmp_path / "full" / "ip_adapter"),
                 "--reference", str(tmp_path / "ref.png"), "--steps", "2", "--seed", "5", "-q",
                 "-o", str(tmp_path / "cli.png")]) == 0
    assert main(["generate", "", "--model", str(tmp_path / "base"), "--reference", str(tmp_path / "ref.png"),
                 "-q", "-o", str(tmp_path / "no.png")]) == 2  # without --attach: a one-line error
    plain.save_pretrained(tmp_path / "combined")
    combined = unimm.load(str(tmp_path / "combined"))
    reference_full = unimm.load(str(tmp_path / "full"))
    # The ControlNets are the base's (untouched), so compare with the adapter alone on both.
    a = combined.generate("a red object", seed=5, steps=2, reference_image=reference)[0]
    with torch.no_grad():
        for kind in reference_full.model.gen_head.controlnets:
            reference_full.model.gen_head.controlnets[kind].load_state_dict(
                combined.model.gen_head.controlnets[kind].state_dict())
    b = reference_full.generate("a red object", seed=5, steps=2, reference_image=reference)[0]
    assert a.tobytes() == b.tobytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", unimm.UntrainedModelWarning)
        wider = unimm.load({"base": "tiny-dit", "generation": {"generator": {"config": {"num_attention_heads": 4,
                                                                                 "caption_projection_dim": 64}}}})
    with pytest.raises(ConfigError, match=r"controlnet_edges/config.json does not match the model's config: "
                                          r"caption_projection_dim, num_attention_heads"):
        wider.attach(tmp_path / "full" / "controlnet_edges")  # trained for another generator
    assert not wider.model.gen_head.controlnets and not wider.config.generation.generator.get("controlnets")
    assert len(wider.generate("a red circle", steps=1)) == 1  # left as it was
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        plain.attach(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="holds no part"):
        plain.attach(tmp_path / "base" / "transformer")


def test_a_failed_attach_leaves_the_model_as_it_was_and_a_good_one_keeps_the_scale(tmp_path, reference):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", unimm.UntrainedModelWarning)
        wide = unimm.load({"base": "tiny-dit-ip", "encoder": {"siglip": {"hidden_size": 48, "intermediate_size": 96}},
                           "generation": {"generator": {"ip_adapter": {"reference_scale": 0.7}}}})
        same = unimm.load({"base": "tiny-dit-ip", "generation": {"generator": {"ip_adapter": {"reference_scale": 0.7}}}})
        base = unimm.load("tiny-dit")
    wide.save_pretrained(tmp_path / "wide")
    same.save_pretrained(tmp_path / "same")
    before = base.generate("a red circle", seed=4, steps=2)[0].tobytes()
    processors = dict(base.model.gen_head.transformer.attn_processors)
    with pytest.raises(ConfigError, match="ip_adapter/config.json does not match the model's config: embed_dim"):
        base.attach(tmp_path / "wide" / "ip_adapter")  # trained on a 48-wide SigLIP; this one is 32 wide
    assert base.model.gen_head.ip_adapter is None and base.config.generation.generator.get("ip_adapter") is None
    assert dict(base.model.gen_head.transformer.attn_processors) == processors  # the plain processors are back
    assert base.generate("a red circle", seed=4, steps=2)[0].tobytes() == before
    base.attach(tmp_path / "same" / "ip_adapter")
    assert base.model.gen_head.ip_adapter.scale == 0.7 == base.config.generation.generator["ip_adapter"]["reference_scale"]
    base.generate("a red object", seed=4, steps=2, reference_image=reference, reference_scale=0.0)
    assert base.model.gen_head.ip_adapter.scale == 0.7  # a call's scale does not stay behind
