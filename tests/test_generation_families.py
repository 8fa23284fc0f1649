"""Generation families are a registry with one contract: a new paradigm needs no edit to the package.

The toy family below lives only in this test module. It draws every image token
from one learned distribution (no backbone at all), and has an option of its own.
"""
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import unimm
from unimm.generation import (GenerationFamily, SampleOptions, family_names, get_family, option, register_family,
                              unregister_family)


@dataclass
class ConstantOptions(SampleOptions):
    shift_ids: int = option(0, low=0, help="added to every drawn id (modulo the codebook)")


class ConstantHead(torch.nn.Module):
    def __init__(self, num_codes: int):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.zeros(num_codes))


class Constant(GenerationFamily):
    name = "constant-test"
    tokenizer_type = "vq"
    options = ConstantOptions

    def build_head(self, config, image_tokenizer, hidden_size, encoder_width):
        return ConstantHead(image_tokenizer.num_codes)

    def loss(self, model, prompt_ids, prompt_mask, targets, generator=None):
        logits = model.gen_head.logits.expand(targets.numel(), -1)
        return F.cross_entropy(logits, targets.flatten())

    def sample(self, model, prompt_ids, prompt_mask, options, generator=None, progress=None):
        n, k = model.num_image_tokens, model.gen_head.logits.numel()
        best = int(model.gen_head.logits.argmax())
        for i in range(n):
            if progress is not None:
                progress(i + 1, n)
        return torch.full((prompt_ids.shape[0], n), (best + options.shift_ids) % k, dtype=torch.long)


@pytest.fixture(scope="module")
def toy():
    register_family(Constant(), replace=True)
    yield {"base": "tiny", "generation": {"paradigm": "constant-test"}}
    unregister_family("constant-test")


def test_a_fourth_family_registered_outside_the_package_generates_through_the_api(toy):
    assert "constant-test" in family_names() and get_family("constant-test").options is ConstantOptions
    pipe = unimm.load(toy)
    steps = []
    a = pipe.generate("a red circle", progress=lambda i, n: steps.append(i), seed=0)
    b = pipe.generate("a red circle", shift_ids=3, seed=0)  # the family's own option
    assert steps == list(range(1, pipe.model.num_image_tokens + 1))
    assert a[0].size == b[0].size and a[0].tobytes() != b[0].tobytes()
    with pytest.raises(ValueError, match="shift_ids must be >= 0, got -1"):
        pipe.generate("a red circle", shift_ids=-1)
    with pytest.raises(ValueError, match=r"temperature does not apply to the constant-test paradigm; its options: "
                                         r"guidance_scale, shift_ids"):
        pipe.generate("a red circle", temperature=0.5)
    # Its loss trains through the model's forward like any family's.
    ids = torch.tensor([pipe.processor.generation_ids("a red circle")])
    targets = torch.zeros(1, pipe.model.num_image_tokens, dtype=torch.long)
    loss = pipe.model(gen={"prompt_ids": ids, "prompt_mask": torch.ones_like(ids), "targets": targets})["loss"]
    loss.backward()
    assert pipe.model.gen_head.logits.grad is not None


def test_the_cli_and_the_app_handler_drive_a_new_family(toy, tmp_path, capsys):
    import yaml

    from unimm.cli import main

    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump(toy))
    assert main(["generate", "a red circle", "--model", str(config), "-o", str(tmp_path / "out.png"), "-q"]) == 0
    assert (tmp_path / "out.png").is_file()
    assert main(["generate", "a red circle", "--model", str(config), "-o", str(tmp_path / "y.png"), "-q",
                 "--set", "shift_ids=2"]) == 0  # the family's own option
    assert main(["generate", "a red circle", "--model", str(config), "-o", str(tmp_path / "x.png"),
                 "--steps", "3"]) == 2  # an option this family does not take
    assert "steps does not apply to the constant-test paradigm; its options: guidance_scale, shift_ids" \
        in capsys.readouterr().err
    assert main(["generate", "a red circle", "--model", str(config), "-o", str(tmp_path / "z.png"),
                 "--set", "shift_ids=two"]) == 2
    assert "--set shift_ids: 'two' is not an integer" in capsys.readouterr().err
    assert main(["generate", "a red circle", "--model", str(config), "-o", str(tmp_path / "z.png"),
                 "--set", "seed=1"]) == 2
    assert "--set seed: not a sampling option of this model; its options: guidance_scale, shift_ids" \
        in capsys.readouterr().err

    pytest.importorskip("gradio")
    from unimm import app as demo

    h = demo.Handlers(unimm.load(toy))
    assert (h.uses_temperature, h.uses_steps, h.default_steps()) == (False, False, None)
    images, seed = h.generate("a red circle", 2, 3.0, 1.0, 12, 5, False, progress=lambda *a, **k: None)
    assert len(images) == 2 and seed == 5
    assert np.asarray(images[0]).shape[:2] == (unimm.load(toy).model.config.image_tokenizer["image_size"],) * 2
