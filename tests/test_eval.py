"""The automatic shapes-world evaluator: detector accuracy bar, prompts, scoring, VQA, `unimm eval`."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from unimm.data.corpus import POSITIONS, SHAPES
from unimm.data.shapes import BACKGROUND_RGB, COLOUR_RGB, RADIUS, Obj, Scene, ShapesWorld, render
from unimm.eval import (
    CATEGORIES, MIN_RELIABLE_SIZE, EvalPrompt, Expected, detect, evaluate_generation, evaluate_vqa,
    make_prompts, parse_prompt, score,
)
from unimm.eval.cli import main
from unimm.eval.oracle import BlankPipe, OraclePipe
from unimm.eval.vqa import DEFAULT_IMAGE_SIZE, normalise_answer, vqa_items

EVAL_SIZE = MIN_RELIABLE_SIZE  # the evaluation resolution: the detector's smallest validated size (32 px)


def _truth(scene: Scene) -> list[tuple]:
    return sorted((o.colour, o.shape, o.position, o.size) for o in scene.objects)


def _found(image: Image.Image) -> list[tuple]:
    return sorted((d.colour, d.shape, d.position, d.size) for d in detect(image))


# --------------------------------------------------------------------------- detector


def test_detector_meets_the_bar_on_ground_truth():
    # A world seed no other test or training config uses; every scene kind, colour and shape occurs.
    world = ShapesWorld(seed=2024, num_samples=300)
    scenes = [world[i] for i in range(300)]
    correct, per_shape, per_shape_ok = 0, Counter(), Counter()
    failures = []
    for i, scene in enumerate(scenes):
        got, want = _found(render(scene, EVAL_SIZE)), _truth(scene)
        correct += got == want
        if got != want and len(failures) < 5:
            failures.append((i, want, got))
        for shape in {o.shape for o in scene.objects}:
            per_shape[shape] += 1
            per_shape_ok[shape] += got == want
    assert set(per_shape) == set(SHAPES)
    assert correct / len(scenes) >= 0.99, failures
    for shape in SHAPES:  # the bar holds for each shape, not just on average
        assert per_shape_ok[shape] / per_shape[shape] >= 0.99, (shape, failures)


@pytest.mark.parametrize("size", [64, 128])
def test_detector_is_resolution_aware(size):
    world = ShapesWorld(seed=7, num_samples=20)
    for i in range(20):
        scene = world[i]
        assert _found(render(scene, size)) == _truth(scene), i


def test_empty_background_has_no_detections():
    assert detect(Image.new("RGB", (EVAL_SIZE, EVAL_SIZE), BACKGROUND_RGB)) == []


def test_isolated_noise_pixels_are_dropped():
    array = np.full((EVAL_SIZE, EVAL_SIZE, 3), BACKGROUND_RGB, dtype=np.uint8)
    for y, x in [(3, 4), (20, 9), (27, 28)]:
        array[y, x] = COLOUR_RGB["red"]
    assert detect(array) == []


def test_two_objects_are_both_found():
    scene = Scene("pair", [
        Obj("star", "yellow", "large", "left", 0.2, 0.5, RADIUS["large"]),
        Obj("hexagon", "blue", "small", "top", 0.55, 0.2, RADIUS["small"]),
    ], "", [])
    found = detect(render(scene, 64))
    assert [(d.colour, d.shape, d.size, d.position) for d in found] == [
        ("blue", "hexagon", "small", "top"), ("yellow", "star", "large", "left")]  # top to bottom
    blue, yellow = found
    assert abs(blue.cx - 0.55) < 0.01 and abs(blue.cy - 0.2) < 0.01
    assert abs(yellow.cx - 0.2) < 0.01 and abs(yellow.cy - 0.5) < 0.01
    assert yellow.area > blue.area > 0


# --------------------------------------------------------------------------- prompts


def test_prompts_are_deterministic_and_balanced():
    prompts = make_prompts(30, seed=3)
    assert prompts == make_prompts(30, seed=3)
    assert prompts != make_prompts(30, seed=4)
    assert Counter(p.category for p in prompts) == {c: 30 for c in CATEGORIES}
    for cat in CATEGORIES:
        shapes = Counter(p.objects[0].shape for p in prompts if p.category == cat)
        assert set(shapes) == set(SHAPES) and max(shapes.values()) - min(shapes.values()) <= 1
    positions = Counter(p.objects[0].position for p in prompts if p.category == "position")
    assert set(positions) == set(POSITIONS)
    counts = {p.objects[0].count for p in prompts if p.category == "counting"}
    assert counts == {2, 3}
    for p in prompts:
        assert parse_prompt(p.text).objects == p.objects, p.text  # the text says what is scored
        if p.category == "two_objects":
            a, b = p.objects
            assert a.colour != b.colour and a.shape != b.shape


def test_prompts_use_the_world_caption_phrasing():
    texts = {p.text for p in make_prompts(50, seed=0)}
    assert any(t.endswith(" at the top") for t in texts) and any(t.endswith(" on the left") for t in texts)
    assert any(t.startswith("an orange ") for t in texts)
    assert all(not t.startswith("a orange") and " a orange" not in t for t in texts)
    assert any(t.startswith(("two ", "three ")) and t.endswith("s") for t in texts)


def test_bad_prompt_arguments():
    with pytest.raises(ValueError, match="n_per_category"):
        make_prompts(0)


# --------------------------------------------------------------------------- scoring


def _det_image(*objects: Obj, size: int = 64) -> Image.Image:
    return render(Scene("test", list(objects), "", []), size)


def test_score_rules():
    r = RADIUS["small"]
    left = Obj("circle", "red", "small", "left", 0.17, 0.5, r)
    right = Obj("circle", "red", "small", "right", 0.83, 0.5, r)
    star = Obj("star", "blue", "small", "top", 0.5, 0.17, r)
    one = EvalPrompt("position", "a red circle on the left", (Expected("red", "circle", position="left"),))
    assert score(one, detect(_det_image(left))) == (True, "")
    ok, why = score(one, detect(_det_image(right)))
    assert not ok and "want left" in why
    ok, why = score(one, detect(_det_image(left, star)))
    assert not ok and "extra" in why and "blue star" in why
    two = EvalPrompt("counting", "two red circles", (Expected("red", "circle", count=2),))
    assert score(two, detect(_det_image(left, right)))[0]
    ok, why = score(two, detect(_det_image(left)))
    assert not ok and "found 1" in why


def test_generation_scoring_with_ground_truth_and_blank_images(tmp_path):
    report = evaluate_generation(OraclePipe(EVAL_SIZE), n_per_category=25, seed=1, batch_size=16,
                                 grid=tmp_path / "grid.png")
    assert report["num_images"] == 100 and report["image_size"] == [EVAL_SIZE, EVAL_SIZE]
    assert report["detector_reliable"]
    assert report["accuracy"] >= 0.99, [s for s in report["samples"] if not s["correct"]]
    assert all(c["accuracy"] >= 0.96 and c["n"] == 25 for c in report["categories"].values())
    assert report["time_s"] >= 0 and Image.open(tmp_path / "grid.png").size[0] > 0

    blank = evaluate_generation(BlankPipe(EVAL_SIZE), n_per_category=5, seed=1)
    assert blank["accuracy"] == 0.0 and blank["num_images"] == 20
    assert all("found 0" in s["reason"] for s in blank["samples"])


def test_images_per_prompt_and_batches():
    report = evaluate_generation(OraclePipe(EVAL_SIZE), n_per_category=2, seed=0, images_per_prompt=3, batch_size=4)
    assert report["num_images"] == 24 and report["images_per_prompt"] == 3
    assert [s["prompt"] for s in report["samples"][:3]] == [make_prompts(2, 0)[0].text] * 3


# --------------------------------------------------------------------------- VQA


class _SceneReader:
    """A fake pipe that answers from the rendered scene (via a lookup of the exact image and question)."""

    def __init__(self, n: int, seed: int) -> None:
        self.answers = {
            (render(scene, DEFAULT_IMAGE_SIZE).tobytes(), qa.question): qa.answer
            for scene, qa in vqa_items(n, seed)
        }

    def chat(self, image, question, max_new_tokens=None):
        return self.answers[(image.tobytes(), question)].capitalize() + "."  # case and punctuation are forgiven


class _Constant:
    def chat(self, image, question, max_new_tokens=None):
        return "red"


def test_vqa_scoring():
    report = evaluate_vqa(_SceneReader(50, seed=5), n=50, seed=5)
    assert report["accuracy"] == 1.0 and report["num_questions"] == 50
    assert set(report["types"]) == {"colour", "shape", "count", "position", "size"}
    assert all(t["n"] == 10 for t in report["types"].values())
    assert report["world_seed"] not in {0, 1, 2, 3}  # not a training seed

    constant = evaluate_vqa(_Constant(), n=50, seed=5)
    assert constant["accuracy"] < 0.2
    assert constant["types"]["shape"]["accuracy"] == 0.0
    # split by scene kind: counts add up, and "red" is right exactly where the answer is red
    kinds = constant["scenes"]
    assert set(kinds) <= {"single", "counting", "pair"} and sum(k["n"] for k in kinds.values()) == 50
    for kind, res in kinds.items():
        asked = [s for s in constant["samples"] if s["scene"] == kind]
        assert res["correct"] == sum(s["answer"] == "red" for s in asked) == sum(t["correct"] for t in res["types"].values())
    from unimm.eval.cli import format_report

    text = format_report({"model": "m", "seed": 5, "vqa": report})
    assert "by scene kind:" in text and f"pair{'':6s}{kinds['pair']['n']:>4}/{kinds['pair']['n']:<4}" in text


def test_normalise_answer():
    assert normalise_answer("  Red.\n") == "red"
    assert normalise_answer("TWO!") == "two"
    assert normalise_answer("left side") == "left side"


# --------------------------------------------------------------------------- command line


@pytest.fixture
def one_thread():
    """Tiny matmuls on 2 OpenMP threads crawl when the 2 cores are shared (seen: 100x); one thread does not."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_cli_end_to_end_on_the_tiny_model(tmp_path, capsys, one_thread):
    out, grid = tmp_path / "report.json", tmp_path / "grid.png"
    rc = main(["--model", "tiny", "--n", "4", "--out", str(out), "--grid", str(grid), "-q"])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["generation"]["num_images"] == 4 and report["vqa"]["num_questions"] == 4
    assert 0.0 <= report["generation"]["accuracy"] <= 1.0 and 0.0 <= report["vqa"]["accuracy"] <= 1.0
    assert grid.exists()
    printed = capsys.readouterr().out
    assert "two_objects" in printed and "overall" in printed and "images/s" in printed


@pytest.mark.parametrize("argv, message", [
    (["--n", "0"], "--n must be >= 1"),
    (["--n", "2"], "one prompt per category"),
    (["--batch-size", "0"], "--batch-size"),
    (["--task", "vqa", "--grid", "g.png"], "--grid"),
    (["--task", "nonsense"], "invalid choice"),
])
def test_cli_rejects_bad_arguments(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_cli_unknown_model(tmp_path, capsys):
    assert main(["--model", "no-such-model", "--n", "4", "--out", str(tmp_path / "r.json")]) == 2
    assert "no-such-model" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_cli_check_scores_one_image(tmp_path, capsys):
    from unimm.eval.oracle import render_expected

    good, blank = tmp_path / "good.png", tmp_path / "blank.png"
    render_expected("a red circle on the left", size=EVAL_SIZE).save(good)
    Image.new("RGB", (EVAL_SIZE, EVAL_SIZE), BACKGROUND_RGB).save(blank)
    assert main(["--check", str(good), "a red circle on the left"]) == 0
    assert "PASS" in capsys.readouterr().out
    assert main(["--check", str(good), "a red circle on the right"]) == 1
    assert "FAIL (red circle at left, want right)" in capsys.readouterr().out
    assert main(["--check", str(blank), "two blue stars"]) == 1
    assert "want 2 x blue star, found 0" in capsys.readouterr().out
    assert main(["--check", str(good), "draw me something nice"]) == 2
    assert "cannot score 'draw me something nice'" in capsys.readouterr().err
    assert main(["--check", str(tmp_path / "missing.png"), "a red circle"]) == 2
    assert "image file not found" in capsys.readouterr().err
    (tmp_path / "text.png").write_text("not an image")
    assert main(["--check", str(tmp_path / "text.png"), "a red circle"]) == 2
    assert "not an image file PIL can open" in capsys.readouterr().err


def test_tokenizer_round_trip_ceiling(tiny_pipe, monkeypatch, tmp_path, capsys):
    from unimm.eval.oracle import RoundTripPipe

    # A lossless "tokenizer" must keep the oracle's score: the conversions around it lose nothing.
    monkeypatch.setattr(tiny_pipe.model, "images_to_targets", lambda x: x)
    monkeypatch.setattr(tiny_pipe.model, "decode_images", lambda t: t)
    report = evaluate_generation(RoundTripPipe(tiny_pipe), n_per_category=5, seed=2, batch_size=3, warmup=False)
    assert report["accuracy"] == 1.0 and report["num_images"] == 20
    monkeypatch.undo()
    # The tiny model's random VQ destroys the scene: the ceiling it sets is (near) zero.
    out = tmp_path / "r.json"
    assert main(["--model", "tiny", "--task", "tokenizer", "--n", "8", "--out", str(out), "-q"]) == 0
    tok = json.loads(out.read_text())["tokenizer"]
    assert tok["num_images"] == 8 and tok["accuracy"] <= 0.25
    assert "tokenizer round trip: 8 ground-truth images at 32x32 px" in capsys.readouterr().out


def test_eval_takes_the_same_sampling_flags_as_generate(capsys):
    from unimm.cli import main

    # A flow-only flag on an autoregressive model is the family's named error, as in `unimm generate`.
    assert main(["eval", "--model", "tiny", "--task", "generation", "--n", "4", "-q", "--solver", "heun"]) == 2
    assert "solver does not apply to the autoregressive paradigm" in capsys.readouterr().err
