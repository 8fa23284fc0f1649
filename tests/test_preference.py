"""The preference (DPO) stage: shapes-world pairs, pair files, the loss, the trainer and the hallucination score."""
import json
import random
from pathlib import Path

import pytest
import torch

import unimm
from unimm.config import ConfigError
from unimm.data.formats import build_source
from unimm.data.preference import Mention, hallucinated_caption, mentions, rejected_answer
from unimm.data.shapes import ShapesWorld, render
from unimm.eval.hallucination import evaluate_hallucination, judge
from unimm.training.config import load_train_config
from unimm.training.data import Collator, TrainingDataset
from unimm.training.preference import dpo_loss
from unimm.training.trainer import train

ROOT = Path(__file__).resolve().parents[1]
DPO = str(ROOT / "configs" / "train" / "tiny-dpo.yaml")


def test_descriptions_are_read_object_by_object():
    assert mentions("a small red circle and two blue stars") == [Mention("red", "circle", 1), Mention("blue", "star", 2)]
    assert mentions("There are three green triangles.") == [Mention("green", "triangle", 3)]
    assert mentions("a red circle and star") == [Mention("red", "circle", 1), Mention(None, "star", None)]
    assert mentions("an orange hexagon at the top") == [Mention("orange", "hexagon", 1)]
    assert mentions("nothing here") == []


def test_an_object_named_twice_is_a_wrong_count():
    from unimm.data.shapes import Obj, Scene

    red = Obj("circle", "red", "small", "left", 0.2, 0.5, 0.09)
    blue = Obj("star", "blue", "small", "right", 0.8, 0.5, 0.09)
    scene = Scene("pair", [red, blue], "a red circle on the left and a blue star on the right", [])
    verdict = judge("a red circle and a red circle", scene)
    assert verdict["hallucinated"] == [] and verdict["wrong_counts"] == ["2 red circle (holds 1)"]
    assert not verdict["complete"] and judge("a blue star and a red circle", scene)["complete"]


def test_every_rejected_description_is_a_hallucination_and_every_caption_is_not():
    world, rng = ShapesWorld(seed=7, num_samples=300), random.Random(0)
    kinds = set()
    for i in range(300):
        scene = world[i]
        truth = judge(scene.caption, scene)
        assert truth["hallucinated"] == [] and truth["wrong_counts"] == [] and truth["complete"], scene.caption
        wrong = hallucinated_caption(scene, rng)
        verdict = judge(wrong, scene)
        assert wrong != scene.caption and (verdict["hallucinated"] or verdict["wrong_counts"]), (scene.caption, wrong)
        assert " a o" not in wrong and " an b" not in wrong  # articles follow the new word
        kinds.add("count" if verdict["wrong_counts"] else "object")
    assert kinds == {"count", "object"}


def test_one_word_answers_are_rejected_with_another_value_of_their_kind():
    from unimm.data.corpus import COLOURS, COUNTS, POSITIONS, SHAPES, SIZES

    values = {"colour": COLOURS, "shape": SHAPES, "position": POSITIONS, "size": SIZES, "count": COUNTS}
    world, rng, seen = ShapesWorld(seed=3, num_samples=40), random.Random(1), set()
    for i in range(40):
        for qa in world[i].qa:
            if qa.type != "caption":
                wrong = rejected_answer(world[i], qa, rng)
                assert wrong != qa.answer and wrong in values[qa.type]
                seen.add(qa.type)
    assert seen == set(values)


def test_shapes_preference_items_are_deterministic_and_half_describe():
    src = build_source({"format": "shapes", "task": "preference", "image_size": 32, "num_samples": 200, "seed": 4})
    a, b = src.get(5), src.get(5)
    assert a["question"] == b["question"] and a["rejected"] == b["rejected"] and a["chosen"] != a["rejected"]
    assert a["question"].startswith("<image>\n") and len(a["images"]) == 1
    describe = sum(" " in src.get(i)["chosen"] for i in range(200))  # descriptions; other answers are one word
    assert 70 <= describe <= 130  # about half


def test_a_pair_file_is_read_and_bad_pairs_are_skipped(tmp_path):
    render(ShapesWorld(seed=1, num_samples=1)[0], 32).save(tmp_path / "a.png")
    rows = [{"image": "a.png", "question": "<image>\nWhat colour?", "chosen": "red", "rejected": "blue"},
            {"image": "a.png", "prompt": "Describe the image.", "chosen": "a red circle", "rejected": "a red star"},
            {"image": "a.png", "question": "What colour?", "chosen": "red", "rejected": "red"},
            {"image": "missing.png", "question": "What colour?", "chosen": "red", "rejected": "blue"},
            {"question": "<image>\nWhat?", "chosen": "x", "rejected": "y"}]
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    src = build_source({"format": "preference", "path": str(tmp_path / "pairs.jsonl")})
    assert src.task == "preference" and len(src) == 5
    assert src.get(0)["chosen"] == "red" and src.get(1)["question"] == "Describe the image."
    assert [src.get(i) for i in (2, 3, 4)] == [None, None, None]
    assert dict(src.skipped) == {"malformed entry": 1, "missing image": 1, "image/placeholder mismatch": 1}
    with pytest.raises(ConfigError, match="unknown task 'preference'"):
        build_source({"format": "captions", "path": str(tmp_path / "pairs.jsonl"), "task": "preference"})


def test_dpo_loss_values():
    same = dpo_loss(torch.tensor([-1.0, -2.0, -3.0, -4.0]), torch.tensor([-1.0, -2.0, -3.0, -4.0]), beta=0.5)
    assert same["dpo_loss"].item() == pytest.approx(torch.log(torch.tensor(2.0)).item())
    assert same["reward_margin"].item() == 0 and same["reward_accuracy"].item() == 0
    # chosen up by 1 nat, rejected down by 1 against the reference: margin beta * 2
    out = dpo_loss(torch.tensor([0.0, -5.0]), torch.tensor([-1.0, -4.0]), beta=0.5)
    assert out["reward_margin"].item() == pytest.approx(1.0)
    assert out["dpo_loss"].item() == pytest.approx(-torch.nn.functional.logsigmoid(torch.tensor(1.0)).item())
    with pytest.raises(ValueError, match=r"two \(2P,\) vectors"):
        dpo_loss(torch.zeros(3), torch.zeros(3), 0.1)


def _pref_batch(pipe, n=4):
    src = build_source({"format": "shapes", "task": "preference", "image_size": 32, "num_samples": 50, "seed": 4})
    data = TrainingDataset({"p": src}, {"p": 1}, pipe.processor, pipe.model.image_tokenizer.transform, n)
    return Collator(pipe.model.token_ids.pad, lambda ids: ids)([data[i] for i in range(n)]), data


def test_pairs_batch_chosen_rows_then_rejected_and_logprobs_match_the_chat_loss(tiny_pipe):
    batch, data = _pref_batch(tiny_pipe)
    pref = batch["pref"]
    assert batch["und"] is None and pref["input_ids"].shape[0] == 8 and pref["pixel_values"].shape[0] == 8
    torch.testing.assert_close(pref["pixel_values"][:4], pref["pixel_values"][4:])
    decode = tiny_pipe.processor.decode
    first = data[0]
    answer = [t for t, l in zip(pref["input_ids"][4].tolist(), pref["labels"][4].tolist()) if l != -100]
    assert decode(answer).strip() == decode([t for t, l in zip(first["rejected_ids"], first["rejected_labels"])
                                             if l != -100]).strip()
    model = tiny_pipe.model.eval()
    with torch.no_grad():
        logps = model(pref=pref)["pref_logps"]
        n_tokens = (pref["labels"][:, 1:] != -100).sum()
        # the per-row sums are the chat loss, undone: mean over all answer tokens = -sum / count
        torch.testing.assert_close(-logps.sum() / n_tokens, model.understanding_loss(**pref))
        one = model.answer_logprobs(**{k: v[:1] for k, v in pref.items()})
    torch.testing.assert_close(one, logps[:1], rtol=1e-4, atol=1e-4)  # padding does not change a row


def test_dpo_stage_learns_a_fixed_batch(tiny_pipe):
    import copy

    batch, _ = _pref_batch(tiny_pipe, n=2)
    policy, reference = copy.deepcopy(tiny_pipe.model).train(), copy.deepcopy(tiny_pipe.model).eval()
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(8):
        with torch.no_grad():
            ref = reference.answer_logprobs(**batch["pref"])
        out = dpo_loss(policy(pref=batch["pref"])["pref_logps"], ref, beta=0.1)
        losses.append(out["dpo_loss"].item())
        opt.zero_grad()
        out["dpo_loss"].backward()
        opt.step()
    assert losses[0] == pytest.approx(0.6931, abs=1e-3)  # policy = reference at the start: log 2
    assert losses[-1] < 0.45 and out["reward_accuracy"].item() == 1.0  # every pair ordered right


def test_the_dpo_stage_runs_from_its_config_and_reloads(saved_tiny, tmp_path):
    cfg = load_train_config(DPO, [f"init_from={saved_tiny}", f"output_dir={tmp_path / 'dpo'}", "steps=3",
                                  "batch_size=4", "log_every=1", "save_every=3"])
    final = train(cfg, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["dpo_loss"] == pytest.approx(0.6931, abs=1e-3)  # the reference is the starting model
    assert {"reward_accuracy", "reward_margin"} <= rows[-1].keys()
    start, tuned = unimm.load(saved_tiny).model, unimm.load(str(final)).model
    assert any(not torch.equal(a, b) for a, b in zip(start.backbone.state_dict().values(),
                                                      tuned.backbone.state_dict().values()))
    assert all(torch.equal(a, b) for a, b in zip(start.encoder.state_dict().values(),
                                                 tuned.encoder.state_dict().values()))


def test_preference_data_and_dpo_come_together(saved_tiny, tmp_path):
    common = [f"init_from={saved_tiny}", f"output_dir={tmp_path / 'x'}", "steps=1", "batch_size=2"]
    with pytest.raises(ValueError, match="hold preference pairs, which only the DPO stage reads"):
        train(load_train_config(DPO, common + ["dpo=null"]), progress=False)
    stage3 = str(ROOT / "configs" / "train" / "tiny-stage3.yaml")
    with pytest.raises(ValueError, match="dpo is set but no data source"):
        train(load_train_config(stage3, common + ["dpo.beta=0.1"]), progress=False)
    with pytest.raises(ValueError, match="dpo.beta must be > 0"):
        load_train_config(DPO, common + ["dpo.beta=0"])
    with pytest.raises(ValueError, match=r"unknown loss\(es\) \['pref'\]"):
        load_train_config(DPO, common + ["loss_weights.pref=1"])


def test_hallucination_report_reads_each_description(tiny_pipe):
    class Describer:  # answers with a scene's true caption, or with one mistake in it
        def __init__(self, wrong):
            self.wrong, self.world, self.i, self.rng = wrong, ShapesWorld(seed=1_000_000, num_samples=8), 0, random.Random(0)

        def chat(self, image, question, max_new_tokens=None):
            scene = self.world[self.i]
            self.i += 1
            return hallucinated_caption(scene, self.rng) if self.wrong else scene.caption

    right, wrong = evaluate_hallucination(Describer(False), n=8), evaluate_hallucination(Describer(True), n=8)
    assert right["hallucination_rate"] == 0 and right["complete_rate"] == 1 and right["object_rate"] == 0
    assert wrong["hallucination_rate"] == 1 and wrong["complete_rate"] == 0
    real = evaluate_hallucination(tiny_pipe, n=2, max_new_tokens=4)
    assert real["num_scenes"] == 2 and len(real["samples"]) == 2 and 0 <= real["hallucination_rate"] <= 1
