"""Best-of-N generation (unimm.pipelines.rerank): each image drawn N times, the candidate the model's
own judges (its reading of the prompt, the control map, the reference) prefer kept; the option's default,
checks, CLI flag and eval report."""
import json
import warnings

import numpy as np
import pytest
import torch

import unimm
from unimm.cli import main
from unimm.models.unified import SamplingDefaults
from unimm.pipelines.rerank import best_in_groups, caption_logprobs, map_agreement, reference_similarity, vote

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


def _steered(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", unimm.UntrainedModelWarning)
        return unimm.load(name)


def _scene(seed):
    from unimm.data.shapes import ShapesWorld

    return ShapesWorld(seed=seed, num_samples=2, image_size=64).sample(1)["image"]


def test_a_reference_alone_is_judged_by_likeness_and_an_empty_prompt_alone_refuses():
    """With an empty prompt the candidates are judged by the reference alone: the kept image is the
    candidate whose mean SigLIP feature is closest to the reference's."""
    pipe = _steered("tiny-dit-ip")
    pipe.config.sampling.best_of = 3  # the model's default applies to a reference alone too
    reference = _scene(3)
    drawn = pipe.generate("", num_images=3, seed=1, steps=2, reference_image=reference, best_of=1)
    kept = pipe.generate("", seed=1, steps=2, reference_image=reference)[0]
    feats = pipe.model.encoder(pipe.processor.whole_values([reference])).detach()
    sims = reference_similarity(pipe.model, pipe.processor, drawn, feats, batch_size=2)
    assert kept.tobytes() == drawn[int(sims.argmax())].tobytes()
    assert kept.info["judged_by"] == ["reference_similarity"] and "caption_logprob" not in kept.info
    assert kept.info["reference_similarity"] == pytest.approx(float(sims.max()), abs=1e-5)
    assert -1 <= float(sims.min()) and float(sims.max()) <= 1
    # by hand: the cosine of the mean features
    mean = lambda f: torch.nn.functional.normalize(f.float().mean(1), dim=-1)  # noqa: E731
    one = mean(pipe.model.encoder(pipe.processor.whole_values([drawn[0]])).detach())
    assert float(sims[0]) == pytest.approx(float(one @ mean(feats).T), abs=1e-5)
    # With a prompt as well, both judges vote.
    both = pipe.generate("a red circle", num_images=1, best_of=3, seed=1, steps=2, reference_image=reference)[0]
    assert both.info["judged_by"] == ["caption_logprob", "reference_similarity"]
    candidates = pipe.generate("a red circle", num_images=3, seed=1, steps=2, reference_image=reference, best_of=1)
    votes = vote([_scores(pipe, candidates, "a red circle"),
                  reference_similarity(pipe.model, pipe.processor, candidates, feats, 3)], 3)
    assert both.tobytes() == candidates[votes[0]].tobytes()
    # Nothing to judge by: an empty prompt without a reference or a control map.
    with pytest.raises(ValueError, match="best_of judges candidates by their prompt, control map or reference, "
                                         "and a prompt is empty with neither"):
        pipe.generate("", seed=1, steps=2, best_of=2)


def test_a_control_map_judges_by_the_candidates_own_maps():
    from unimm.data.control import control_map, map_for_model

    pipe = _steered("tiny-dit-control")
    picture = _scene(5)
    kept = pipe.generate("a red circle", best_of=3, seed=2, steps=2, control_image=picture, control_type="edges")[0]
    assert kept.info["judged_by"] == ["caption_logprob", "control_agreement"]
    candidates = pipe.generate("a red circle", num_images=3, seed=2, steps=2, control_image=picture,
                                control_type="edges", best_of=1)
    given = {"edges": map_for_model(picture, "edges", pipe.image_size)}
    agree = map_agreement(candidates, given)
    want = -np.abs(np.asarray(control_map(candidates[1], "edges"), np.float32) / 255
                   - np.asarray(given["edges"], np.float32) / 255).mean()
    assert float(agree[1]) == pytest.approx(float(want), abs=1e-6)
    assert kept.tobytes() == candidates[vote([_scores(pipe, candidates, "a red circle"), agree], 3)[0]].tobytes()
    assert kept.info["control_agreement"] == pytest.approx(float(agree[vote([_scores(pipe, candidates, "a red circle"),
                                                                             agree], 3)[0]]), abs=1e-6)
    # A picture agrees with its own map exactly; a blank one does not.
    from PIL import Image

    assert float(map_agreement([picture], {"edges": control_map(picture, "edges")})[0]) == 0.0
    assert float(map_agreement([Image.new("RGB", (64, 64))], {"edges": control_map(picture, "edges")})[0]) < 0
    with pytest.raises(ValueError, match="the edges map is 64x64 px but the image is 16x16"):
        map_agreement([Image.new("RGB", (16, 16))], {"edges": control_map(picture, "edges")})


def test_vote_sums_the_judges_ranks():
    a = torch.tensor([3.0, 2.0, 1.0, 0.0, 5.0, 4.0])
    b = torch.tensor([0.0, 2.0, 1.0, 9.0, 8.0, 7.0])
    # group 1: ranks a (2,1,0), b (0,2,1) -> sums 2,3,1: the second; group 2: a (0,2,1), b (2,1,0) -> 2,3,1
    assert vote([a, b], 3) == [1, 4]
    # equal sums go to the first judge's better candidate
    assert vote([torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])], 2) == [0]
    assert vote([a], 3) == best_in_groups(a, 3)
    with pytest.raises(ValueError, match="no judge"):
        vote([], 3)
    with pytest.raises(ValueError, match="do not split into groups of 4"):
        vote([a, b], 4)


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
