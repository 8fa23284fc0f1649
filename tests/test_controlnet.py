"""ControlNets on the dit family: maps, zero start, training with the generator frozen, API, saving."""
import warnings

import numpy as np
import pytest
import torch

import unimm
from unimm.data.control import CONTROL_TYPES, control_map
from unimm.data.shapes import ShapesWorld
from unimm.pipelines.load import resolve_config


@pytest.fixture(scope="module")
def scene_image():
    return ShapesWorld(seed=3, num_samples=5, image_size=32).sample(1)["image"]


@pytest.fixture(scope="module")
def control_pipe():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", unimm.UntrainedModelWarning)
        return unimm.load("tiny-dit-control")


def test_control_maps_come_from_the_picture(scene_image):
    from unimm.eval.detector import detect

    edges = np.asarray(control_map(scene_image, "edges"))
    assert edges.shape == (32, 32, 3) and set(np.unique(edges)) == {0, 255}
    seg = control_map(scene_image.resize((64, 64)), "segmentation")  # the layout: shape colour, place, size
    found = detect(scene_image.resize((64, 64)))
    assert len({tuple(c) for c in np.asarray(seg).reshape(-1, 3)} - {(0, 0, 0)}) == len({d.shape for d in found})
    with pytest.raises(ValueError, match="control_type must be one of edges, segmentation, got 'depth'"):
        control_map(scene_image, "depth")


def test_an_untrained_controlnet_leaves_the_generator_as_it_was(control_pipe, scene_image):
    head = control_pipe.model.gen_head
    assert set(head.controlnets) == set(CONTROL_TYPES)
    assert head.transformer.config.num_layers == 2  # building the ControlNets left the generator's config alone
    plain = control_pipe.generate("a red circle", seed=1, steps=3)
    both = control_pipe.generate("a red circle", seed=1, steps=3, control_image=[scene_image, scene_image],
                                 control_type=["edges", "segmentation"], control_scale=[1.0, 0.5])
    assert plain[0].tobytes() == both[0].tobytes()  # zero-initialised: training starts from the base model
    assert sorted(both[0].info["control_maps"]) == ["edges", "segmentation"]


def test_the_controlnet_stage_trains_only_the_controlnets_and_saves_in_diffusers_layout(tmp_path, scene_image):
    from diffusers import SD3ControlNetModel

    from unimm.training.config import load_train_config
    from unimm.training.trainer import train

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = unimm.load("tiny-dit-control").model.state_dict()
        train(load_train_config("configs/train/tiny-dit-controlnet.yaml",
                                [f"output_dir={tmp_path / 'run'}", "steps=3", "batch_size=2", "optim.lr=0.05"]),
              progress=False)
    pipe = unimm.load(str(tmp_path / "run" / "final"))
    after = pipe.model.state_dict()
    moved = {k.split(".")[1] for k in after if not torch.equal(start[k], after[k])}
    assert moved == {"controlnets"}  # the generator, connector, queries and backbone stayed frozen

    plain = pipe.generate("a red circle", seed=2, steps=3)
    edged = pipe.generate("a red circle", seed=2, steps=3, control_image=scene_image, control_type="edges")
    assert plain[0].tobytes() != edged[0].tobytes()  # the trained branch now steers the generator
    pipe.save_pretrained(tmp_path / "saved")
    again = unimm.load(str(tmp_path / "saved"))
    same = again.generate("a red circle", seed=2, steps=3, control_image=scene_image, control_type="edges")
    assert same[0].tobytes() == edged[0].tobytes()
    net = SD3ControlNetModel.from_pretrained(tmp_path / "saved" / "controlnet_edges")  # diffusers opens it
    assert net.config.num_layers == 1 and net.config.extra_conditioning_channels == 0


def test_bad_control_inputs_are_named(control_pipe, scene_image, tiny_pipe):
    with pytest.raises(ValueError, match="control_type is needed: this model has ControlNets for edges, segmentation"):
        control_pipe.generate("a red circle", control_image=scene_image)
    with pytest.raises(ValueError, match="the edges control map is 64x64 px; this model draws 32x32"):
        control_pipe.generate("a red circle", control_image=scene_image.resize((64, 64)), control_type="edges",
                              control_is_map=True)
    with pytest.raises(ValueError, match="control_scale must be >= 0"):
        control_pipe.generate("a red circle", control_image=scene_image, control_type="edges", control_scale=-1)
    with pytest.raises(ValueError, match="control_type and control_scale need a control_image"):
        control_pipe.generate("a red circle", control_type="edges")
    with pytest.raises(ValueError, match="control_image needs a model with a ControlNet; this autoregressive"):
        tiny_pipe.generate("a red circle", control_image=scene_image)
    with pytest.raises(ValueError, match="may have at most num_layers - 1 = 1 layers"):
        unimm.load({"base": "tiny-dit", "generation": {"generator": {"controlnets": {"edges": 2}}}})
    with pytest.raises(ValueError, match="controlnets need SD3Transformer2DModel"):
        resolve_config({"base": "tiny-dit-pixart",
                       "generation": {"generator": {"controlnets": {"edges": 1}}}})


def test_the_cli_takes_control_images(tmp_path, scene_image, capsys):
    from unimm.cli import main

    scene_image.save(tmp_path / "scene.png")
    out = tmp_path / "c.png"
    assert main(["generate", "a red circle", "--model", "tiny-dit-control", "-o", str(out), "-q", "--steps", "2",
                 "--control", str(tmp_path / "scene.png"), "--control-type", "segmentation",
                 "--control-scale", "0.8"]) == 0
    assert out.is_file()
    assert main(["generate", "a red circle", "--model", "tiny-dit-control", "-o", str(out), "-q",
                 "--control-type", "edges"]) == 2
    assert "--control-type, --control-scale and --control-is-map need --control IMAGE" in capsys.readouterr().err


def test_training_maps_are_made_at_the_models_size_as_generate_makes_them(tmp_path):
    """A 64 px source for a 32 px model: the trainer's map equals the one generate() makes from that picture."""
    from unimm.data.control import map_for_model
    from unimm.data.formats import build_source
    from unimm.training.data import TrainingDataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = unimm.load("tiny-dit-control")
    src = build_source({"format": "shapes", "task": "generation", "image_size": 64, "num_samples": 8, "seed": 4,
                        "control": ["edges"]})
    tok = pipe.model.image_tokenizer
    data = TrainingDataset({"t2i": src}, {"t2i": 1}, pipe.processor, tok.transform, 4, gen_size=32)
    item = data[0]
    record = next(src.get(i) for i in range(8) if torch.equal(tok.transform(src.get(i)["image"]), item["image"]))
    expected = tok.transform(map_for_model(record["image"], "edges", 32))
    assert torch.equal(item["control"]["edges"], expected)
    assert set(torch.unique(item["control"]["edges"]).tolist()) <= {-1.0, 1.0}  # a clean binary map, not blurred


def test_the_app_takes_a_control_picture_and_shows_the_map(control_pipe, scene_image, tmp_path):
    pytest.importorskip("gradio")
    from unimm import app as demo

    h = demo.Handlers(control_pipe)
    assert h.control_types == ["edges", "segmentation"]
    scene_image.save(tmp_path / "scene.png")
    images, seed, shown = h.generate_steered("a red circle", 1, 2.0, 1.0, 3, 4, False, str(tmp_path / "scene.png"),
                                             "segmentation", 0.7, None, None, progress=lambda *a, **k: None)
    assert seed == 4 and shown.size == (32, 32) and images[0].info["control_maps"]["segmentation"] is shown
    images, _, shown = h.generate_steered("a red circle", 1, 2.0, 1.0, 3, 4, False, None, "edges", 1.0, None, None,
                                          progress=lambda *a, **k: None)
    assert shown is None and "control_maps" not in images[0].info
    with pytest.raises(demo.gr.Error, match="Control scale must be between 0 and 2"):
        h.generate("a red circle", 1, 2.0, 1.0, 3, 4, False, control_image=str(tmp_path / "scene.png"),
                   control_type="edges", control_scale=5)
    demo.build_app(control_pipe)  # the control inputs are wired (a model without ControlNets gets none)


def test_a_stage_adds_a_controlnet_and_an_ip_adapter_to_a_saved_model(tmp_path):
    """`init_changes` that add parts to a saved dit model (as the shipped modules' recipes do): the
    ControlNet copies the *loaded* generator's first blocks, not the random ones the build drew, and
    neither part changes an image until it is used."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", unimm.UntrainedModelWarning)
        base = unimm.load("tiny-dit")
    with torch.no_grad():  # a saved generator unlike any fresh build
        for p in base.model.gen_head.transformer.parameters():
            p.add_(0.01 * torch.randn_like(p))
    base.save_pretrained(tmp_path / "saved")
    changes = {"generation": {"generator": {"controlnets": {"edges": 1}, "ip_adapter": {}}}}
    pipe = unimm.load(tmp_path / "saved", changes=changes)
    head = pipe.model.gen_head
    blocks = head.controlnets["edges"].transformer_blocks
    assert len(blocks) == 1
    torch.testing.assert_close(blocks[0].state_dict(), head.transformer.transformer_blocks[0].state_dict(),
                               rtol=0, atol=0)
    assert head.ip_adapter is not None
    plain = base.generate("a red circle", seed=2, steps=3)[0]
    assert pipe.generate("a red circle", seed=2, steps=3)[0].tobytes() == plain.tobytes()
    # Saved with the parts, the model opens without the changes and holds the same weights.
    pipe.save_pretrained(tmp_path / "with-parts")
    again = unimm.load(tmp_path / "with-parts").model.state_dict()
    for k, v in pipe.model.state_dict().items():
        torch.testing.assert_close(again[k], v, rtol=0, atol=0, msg=k)

    # init_parts naming a submodule: a ControlNet trained on another model (here: one with an
    # IP-Adapter too) starts this one's; the generator stays this model's own.
    from unimm.training.trainer import take_parts

    with torch.no_grad():
        for p in head.controlnets.parameters():
            p.add_(0.01 * torch.randn_like(p))
    pipe.save_pretrained(tmp_path / "trained")
    target = unimm.load(tmp_path / "saved", changes={"generation": {"generator": {"controlnets": {"edges": 1}}}}).model
    generator = {k: v.clone() for k, v in target.gen_head.transformer.state_dict().items()}
    take_parts(target, {"gen_head.controlnets": str(tmp_path / "trained")})
    torch.testing.assert_close(target.gen_head.controlnets.state_dict(), head.controlnets.state_dict(), rtol=0, atol=0)
    torch.testing.assert_close(target.gen_head.transformer.state_dict(), generator, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"init_parts names 'gen_head.controlnets', which this model does not have"):
        take_parts(unimm.load(tmp_path / "saved").model, {"gen_head.controlnets": str(tmp_path / "trained")})


def test_cached_control_maps_train_exactly_as_making_them_every_step(tmp_path):
    """data.cache_dir on a ControlNet stage: each item's maps are made from its image and encoded
    once, beside its target, and the run is the one that makes and encodes them every step."""
    from model_helpers import train_plain_and_cached

    from unimm.data.control import map_for_model
    from unimm.data.formats import build_source
    from unimm.training.cache import _compute

    losses, (a, b) = train_plain_and_cached("configs/train/tiny-dit-controlnet.yaml", "t2i", tmp_path)
    assert len(losses[0]) == 3 and losses[0] == pytest.approx(losses[1], abs=1e-5)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4, msg=k)
    # What the cache holds for a map: the tokenizer's encoding of the map made from that item's image.
    model = unimm.load(str(tmp_path / "plain" / "final")).model
    source = build_source({"format": "shapes", "task": "generation", "image_size": 32, "num_samples": 3, "seed": 2,
                           "control": ["edges"]})
    captions, _, targets, valid, control = _compute(source, model, 2, False)
    assert valid.all() and set(control) == {"edges"} and control["edges"].shape == targets.shape
    tok = model.image_tokenizer
    with torch.no_grad():
        direct = model.images_to_targets(torch.stack([tok.preprocess(map_for_model(source.get(j)["image"], "edges", 32))
                                                      for j in range(3)]))
    torch.testing.assert_close(control["edges"], direct.float(), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(control["edges"], targets)  # the map's latents, not the image's
