"""The control and reference evaluators score adherence to the steering input and to the prompt apart."""
import json

import pytest

from unimm.data.shapes import ShapesWorldConfig, reference_pair, render
from unimm.eval.steering import evaluate_control, evaluate_reference
from unimm.eval.vqa import WORLD_SEED_BASE


class Oracle:
    """Draws what a perfect model would: the control picture's scene, or the reference pair's target;
    `shape` forces another shape (a model that ignores the reference), `recolour` another colour."""

    image_size = 64

    def __init__(self, seed=0, shape=None, recolour=None):
        self.cfg = ShapesWorldConfig(seed=WORLD_SEED_BASE + seed, num_samples=50)
        self.shape, self.recolour, self.calls = shape, recolour, 0

    def generate(self, prompt, seed=None, control_image=None, control_type=None, reference_image=None, **kw):
        if control_image is not None:
            image = control_image
        else:
            import dataclasses

            target, _ = reference_pair(self.cfg, self.calls)
            obj = target.objects[0]
            obj = dataclasses.replace(obj, shape=self.shape or obj.shape, colour=self.recolour or obj.colour)
            image = render(dataclasses.replace(target, objects=[obj]), self.image_size)
        self.calls += 1
        return [image]


def test_a_perfect_model_scores_full_marks_on_both():
    control = evaluate_control(Oracle(), n=20, seed=0)
    assert control["control_adherence"] == control["prompt_adherence"] == control["both"] == 1.0
    reference = evaluate_reference(Oracle(), n=20, seed=0)
    assert reference["reference_adherence"] == reference["prompt_adherence"] == 1.0
    json.dumps(reference)  # the report is plain JSON


def test_ignoring_the_reference_or_the_prompt_is_scored_apart():
    cfg = ShapesWorldConfig(seed=WORLD_SEED_BASE, num_samples=20)
    wrong_shape = evaluate_reference(Oracle(shape="circle"), n=20, seed=0)
    circles = sum(reference_pair(cfg, i)[1].objects[0].shape == "circle" for i in range(20))
    assert wrong_shape["reference_adherence"] == pytest.approx(circles / 20)  # right only where it was a circle
    assert wrong_shape["prompt_adherence"] == 1.0  # colour and place still as asked
    wrong_colour = evaluate_reference(Oracle(recolour="white"), n=20, seed=0)
    whites = sum(reference_pair(cfg, i)[0].objects[0].colour == "white" for i in range(20))
    assert wrong_colour["reference_adherence"] == 1.0
    assert wrong_colour["prompt_adherence"] == pytest.approx(whites / 20)


def test_an_image_without_the_scene_fails_control_adherence():
    from PIL import Image

    from unimm.data.shapes import BACKGROUND_RGB

    class Empty(Oracle):
        def generate(self, prompt, **kw):
            return [Image.new("RGB", (64, 64), BACKGROUND_RGB)]

    control = evaluate_control(Empty(), n=10, seed=0)
    assert control["control_adherence"] == control["prompt_adherence"] == 0.0


def test_eval_cli_reports_reference_adherence(tmp_path, capsys):
    import warnings

    import unimm
    from unimm.eval.cli import main

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", unimm.UntrainedModelWarning)
        assert main(["--model", "tiny-dit-ip", "--task", "reference", "--n", "4", "--steps", "2", "-q",
                     "--out", str(tmp_path / "r.json")]) == 0
        assert main(["--model", "tiny-dit-ip", "--task", "vqa", "--control-type", "edges", "--n", "4"]) == 2
    out = capsys.readouterr()
    assert "reference adherence" in out.out and "--control-type goes with --task control" in out.err
    report = json.loads((tmp_path / "r.json").read_text())["reference"]
    assert report["num_images"] == 4 and len(report["samples"]) == 4 and report["best_of"] == 1
    # Best of N: each image judged by its prompt and its likeness to the reference; the report says so.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", unimm.UntrainedModelWarning)
        assert main(["--model", "tiny-dit-ip", "--task", "reference", "--n", "2", "--steps", "2", "--best-of", "2",
                     "--out", str(tmp_path / "b.json")]) == 0
    assert json.loads((tmp_path / "b.json").read_text())["reference"]["best_of"] == 2
    assert "each the best of 2 drawn" in capsys.readouterr().out


def test_eval_cli_takes_the_steering_scales_and_records_them(tmp_path, capsys):
    import warnings

    import unimm
    from unimm.eval.cli import main

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", unimm.UntrainedModelWarning)
        assert main(["--model", "tiny-dit-ip", "--task", "reference", "--n", "2", "--steps", "2", "-q",
                     "--reference-scale", "0.5", "--out", str(tmp_path / "r.json")]) == 0
        assert main(["--model", "tiny-dit-ip", "--task", "reference", "--control-scale", "2", "--n", "4"]) == 2
        assert main(["--model", "tiny-dit-ip", "--task", "reference", "--reference-scale", "-1", "--n", "4"]) == 2
    err = capsys.readouterr().err
    assert "--control-scale goes with --task control" in err and "--reference-scale must be >= 0, got -1.0" in err
    report = json.loads((tmp_path / "r.json").read_text())["reference"]
    assert report["sample_kwargs"] == {"reference_scale": 0.5, "steps": 2}
