"""Best-of-N generation (unimm.pipelines.rerank): each image drawn N times, the candidate the model's
own understanding path describes best kept; the option's default, checks, CLI flag and eval report."""
import json
import warnings

import numpy as np
import pytest
import torch

import unimm
from unimm.cli import main
from unimm.models.unified import SamplingDefaults
from unimm.pipelines.rerank import best_in_groups, caption_logprobs

PROMPTS = ["a red circle", "two blue squares"]


def _scores(pipe, images, prompt):
    return caption_logprobs(pipe.model, pipe.processor, images, [prompt] * len(images),
                            pipe.config.sampling.best_of_question, batch_size=8)


def test_best_of_keeps_the_candidate_the_model_describes_best(tiny_pipe):
    drawn = tiny_pipe.generate(PROMPTS, num_images=3, seed=5)  # the candidates best_of=3 draws
    kept = tiny_pipe.generate(PROMPTS, best_of=3, seed=5)
    assert len(kept) == len(PROMPTS)
    for i, prompt in enumerate(PROMPTS):
        candidates = drawn[3 * i:3 * i + 3]
        scores = _scores(tiny_pipe, candidates, prompt)
        best = int(scores.argmax())
        assert kept[i].tobytes() == candidates[best].tobytes()
        assert kept[i].info["best_of"] == 3 and kept[i].info["prompt"] == prompt
        assert kept[i].info["caption_logprob"] == pytest.approx(float(scores[best]), abs=1e-4)
        assert float(scores.max()) < 0  # a log-probability
    # num_images and best_of multiply: each returned image is the best of its own group.
    two = tiny_pipe.generate("a red circle", num_images=2, best_of=2, seed=9)
    groups = tiny_pipe.generate("a red circle", num_images=4, seed=9)
    for k in range(2):
        pair = groups[2 * k:2 * k + 2]
        assert two[k].tobytes() == pair[int(_scores(tiny_pipe, pair, "a red circle").argmax())].tobytes()
        assert two[k].info["index"] == k


def test_the_score_is_the_answers_log_probability(tiny_pipe):
    """caption_logprobs is the summed log-softmax of the caption's tokens after the question, image in."""
    image = tiny_pipe.generate("a red circle", seed=1)[0]
    question = "Describe the image."
    pixels, layout = tiny_pipe.processor.prepare([image])
    ids, labels = tiny_pipe.processor.chat_ids([(question, 1, "a red circle")], layout)
    ids_t = torch.tensor([ids])
    with torch.inference_mode():
        embeds = tiny_pipe.model.embed_inputs(ids_t, pixels)
        from unimm.models.unified import positions

        mask = torch.ones_like(ids_t)
        h = tiny_pipe.model.hidden_states(embeds, attention_mask=mask, position_ids=positions(mask), use_cache=False)
        logp = tiny_pipe.model.text_logits(h[0, :-1]).float().log_softmax(-1)
    want = sum(logp[t - 1, ids[t]] for t in range(1, len(ids)) if labels[t] != -100)
    got = caption_logprobs(tiny_pipe.model, tiny_pipe.processor, [image], ["a red circle"], question, 1)
    assert got.shape == (1,) and float(got[0]) == pytest.approx(float(want), abs=1e-3)
    # Rows of different lengths padded together score as they do alone.
    both = caption_logprobs(tiny_pipe.model, tiny_pipe.processor, [image, image],
                            ["a red circle", "three small green triangles at the top"], question, 2)
    assert float(both[0]) == pytest.approx(float(got[0]), abs=1e-3)


def test_best_of_one_is_plain_sampling_and_the_model_default_applies(tiny_pipe, saved_tiny):
    plain = tiny_pipe.generate(PROMPTS, seed=4)
    assert [a.tobytes() for a in plain] == [b.tobytes() for b in tiny_pipe.generate(PROMPTS, seed=4, best_of=1)]
    assert "caption_logprob" not in plain[0].info
    shipped = unimm.load(str(saved_tiny), changes={"sampling": {"best_of": 3}})
    assert shipped.config.sampling.best_of == 3
    by_default = shipped.generate(PROMPTS, seed=5)
    assert [a.tobytes() for a in by_default] == [b.tobytes() for b in tiny_pipe.generate(PROMPTS, seed=5, best_of=3)]
    assert [a.tobytes() for a in shipped.generate(PROMPTS, seed=4, best_of=1)] == [b.tobytes() for b in plain]


def test_best_of_survives_a_save(saved_tiny, tmp_path):
    pipe = unimm.load(str(saved_tiny), changes={"sampling": {"best_of": 4, "best_of_question": "What do you see?"}})
    pipe.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())["sampling"]
    assert saved["best_of"] == 4 and saved["best_of_question"] == "What do you see?"
    assert unimm.load(str(tmp_path / "m")).config.sampling.best_of == 4


@pytest.mark.parametrize("value, message", [
    (0, "best_of must be >= 1, got 0"),
    (2.5, "best_of must be a whole number, got 2.5"),
    ("3", "best_of must be a whole number, got '3'"),
])
def test_bad_best_of_is_named(tiny_pipe, value, message):
    with pytest.raises(ValueError, match=message):
        tiny_pipe.generate("a red circle", best_of=value)


@pytest.mark.parametrize("fields, message", [
    ({"best_of": 0}, "best_of must be an integer >= 1, got 0"),
    ({"best_of": True}, "best_of must be an integer >= 1, got True"),
    ({"best_of_question": "  "}, "best_of_question must be a non-empty question"),
])
def test_the_config_checks_its_best_of(fields, message):
    with pytest.raises(ValueError, match=message):
        SamplingDefaults(**fields)


def test_a_reference_alone_is_drawn_once_and_refuses_an_explicit_best_of():
    from unimm.data.shapes import ShapesWorld

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", unimm.UntrainedModelWarning)
        pipe = unimm.load("tiny-dit-ip")
    pipe.config.sampling.best_of = 2  # the model's default: an empty prompt has nothing to judge by
    reference = ShapesWorld(seed=3, num_samples=2, image_size=64).sample(1)["image"]
    image = pipe.generate("", seed=1, steps=2, reference_image=reference)[0]
    assert "best_of" not in image.info
    with pytest.raises(ValueError, match="best_of judges candidates by their prompt, and a prompt is empty"):
        pipe.generate("", seed=1, steps=2, reference_image=reference, best_of=2)
    assert pipe.generate("a red circle", seed=1, steps=2, reference_image=reference)[0].info["best_of"] == 2


def test_cli_flag_reaches_generate_and_eval(tmp_path, capsys):
    out = tmp_path / "a.png"
    assert main(["generate", "a red circle", "--model", "tiny", "-o", str(out), "--seed", "0", "--best-of", "2",
                 "-q"]) == 0
    assert out.is_file()
    assert main(["generate", "a red circle", "--model", "tiny", "-o", str(out), "--best-of", "0", "-q"]) == 2
    assert "best_of must be >= 1, got 0" in capsys.readouterr().err
    from unimm.eval.cli import main as eval_main

    report = tmp_path / "r.json"
    assert eval_main(["--model", "tiny", "--task", "generation", "--n", "4", "--best-of", "2", "--out", str(report),
                      "-q"]) == 0
    assert json.loads(report.read_text())["generation"]["best_of"] == 2
    assert "each the best of 2 drawn" in capsys.readouterr().out


def test_best_in_groups():
    scores = torch.tensor([0.0, 2.0, 1.0, -1.0, -1.0, -3.0])
    assert best_in_groups(scores, 3) == [1, 3]  # the first of equal scores
    assert best_in_groups(scores, 1) == list(range(6))
    with pytest.raises(ValueError, match="6 scores do not split into groups of 4"):
        best_in_groups(scores, 4)
    assert np.array_equal(best_in_groups(torch.zeros(4), 2), [0, 2])


def test_greedy_decoding_draws_once(tiny_pipe):
    """At temperature 0 every candidate is the same image: best_of then draws one."""
    once = tiny_pipe.generate(PROMPTS, temperature=0, seed=2)
    again = tiny_pipe.generate(PROMPTS, temperature=0, seed=2, best_of=4)
    assert [a.tobytes() for a in once] == [b.tobytes() for b in again]
    assert "best_of" not in again[0].info
