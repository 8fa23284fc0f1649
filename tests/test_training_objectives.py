"""Training objectives beyond likelihood: generation.token_noise (random codes among the teacher-forced
image tokens) and the trainer's prompt_contrast (an image under its caption against a swapped one,
an answer under its question against a swapped one)."""
import json
import warnings

import pytest
import torch

import unimm
from unimm.generation.autoregressive import corrupt_ids
from unimm.heads import GenerationConfig
from unimm.data.formats import build_source
from unimm.data.shapes import ShapesWorld, swapped_caption, swapped_question
from unimm.processing import left_pad
from unimm.training.config import load_train_config
from unimm.training.preference import contrast_loss
from unimm.training.trainer import train


def _tiny(**generation):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", unimm.UntrainedModelWarning)
        return unimm.load({"base": "tiny", "generation": {"paradigm": "autoregressive", **generation}})


def test_corrupt_ids_swaps_about_the_asked_fraction_for_valid_codes():
    ids = torch.zeros(64, 256, dtype=torch.long)
    out = corrupt_ids(ids, 0.25, 1000, torch.Generator().manual_seed(0))
    changed = (out != ids).float().mean().item()
    assert 0.23 < changed < 0.26  # a random code can equal the old one (1 in 1000)
    assert out.dtype == ids.dtype and out.min() >= 0 and out.max() < 1000
    again = corrupt_ids(ids, 0.25, 1000, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # seeded: the same swaps
    assert torch.equal(corrupt_ids(ids, 0.0, 1000), ids)


def _loss(pipe, seed):
    model = pipe.model
    ids, mask = left_pad([pipe.processor.generation_ids(p) for p in ("a red circle", "two blue stars")],
                         model.token_ids.pad)
    targets = torch.randint(0, model.image_tokenizer.num_codes, (2, model.num_image_tokens),
                            generator=torch.Generator().manual_seed(1))
    torch.manual_seed(seed)
    return model.generation_loss(ids, mask, targets)


def test_noise_changes_the_training_loss_only_in_training_mode():
    plain, noisy = _tiny(), _tiny(token_noise=0.5)
    assert torch.equal(plain.model.state_dict()["gen_head.head.2.weight"],
                       noisy.model.state_dict()["gen_head.head.2.weight"])  # same seed, same weights
    plain.model.train(), noisy.model.train()
    clean = _loss(plain, 0)
    assert not torch.allclose(_loss(noisy, 0), clean)  # inputs corrupted
    assert torch.equal(_loss(noisy, 0), _loss(noisy, 0))  # reproducible under the global seed
    noisy.model.eval(), plain.model.eval()
    assert torch.equal(_loss(noisy, 0), _loss(plain, 0))  # evaluation and sampling see true tokens


def test_token_noise_is_checked_by_its_owner():
    for bad in (1.0, -0.1, True, "0.1"):
        with pytest.raises(ValueError, match=r"generation.token_noise must be a number in \[0, 1\)"):
            GenerationConfig(token_noise=bad)
    with pytest.raises(ValueError, match="the masked paradigm does not train that way"):
        GenerationConfig(paradigm="masked", token_noise=0.1)
    assert GenerationConfig(token_noise=0.15).token_noise == 0.15


def test_swapped_captions_exchange_two_objects_shapes_and_nothing_else():
    world = ShapesWorld(seed=3, num_samples=40)
    kinds = set()
    for scene in (world[i] for i in range(40)):
        swapped = swapped_caption(scene)
        kinds.add((scene.kind, swapped is None))
        if scene.kind != "pair":
            assert swapped is None  # one kind of object: nothing to bind otherwise
            continue
        a, b = scene.objects
        assert swapped.split() == [b.shape if w == a.shape else a.shape if w == b.shape else w
                                   for w in scene.caption.split()]
        assert swapped != scene.caption
    assert {("pair", False), ("single", True), ("counting", True)} <= kinds
    source = build_source({"format": "shapes", "task": "generation", "image_size": 32, "num_samples": 40, "seed": 3})
    assert [source.get(i).get("swapped_caption") for i in range(40)] == [swapped_caption(world[i]) for i in range(40)]


def test_caption_jsonl_lines_may_carry_a_swapped_caption(tmp_path, shapes_image):
    shapes_image.save(tmp_path / "a.png")
    lines = [{"image": "a.png", "caption": "a red circle and a blue star",
              "swapped_caption": "a red star and a blue circle"},
             {"image": "a.png", "caption": "a red circle"},
             {"image": "a.png", "caption": "a red circle", "swapped_caption": 3}]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    source = build_source({"format": "captions", "path": str(tmp_path / "c.jsonl")})
    assert source.get(0)["swapped_caption"] == "a red star and a blue circle"
    assert "swapped_caption" not in source.get(1)
    assert source.get(2) is None and sum(source.skipped.values()) == 1  # named, counted, not raised


def test_contrast_scores_each_image_under_both_captions_in_one_pass():
    pipe = _tiny()
    model, proc = pipe.model.eval(), pipe.processor
    captions = ["a red circle and a blue star", "two green squares", "a small white hexagon on the left"]
    swapped = ["a red star and a blue circle", "a white hexagon at the top and a small black diamond"]
    ids, mask = left_pad([proc.generation_ids(c) for c in captions], model.token_ids.pad)
    sw_ids, sw_mask = left_pad([proc.generation_ids(c) for c in swapped], model.token_ids.pad)
    targets = torch.randint(0, model.image_tokenizer.num_codes, (3, model.num_image_tokens),
                            generator=torch.Generator().manual_seed(0))
    rows = torch.tensor([0, 2])
    with torch.no_grad():
        loss, own, other = model.generation_contrast(ids, mask, targets, sw_ids, sw_mask, rows)
        torch.testing.assert_close(loss, model.generation_loss(ids, mask, targets))

        def alone(caption, t):  # one image, one prompt, no padding: its summed NLL
            i, m = left_pad([proc.generation_ids(caption)], model.token_ids.pad)
            return model.generation_loss(i, m, t[None]) * t.numel()

        torch.testing.assert_close(own, torch.stack([alone(captions[0], targets[0]), alone(captions[2], targets[2])]))
        torch.testing.assert_close(other, torch.stack([alone(swapped[0], targets[0]), alone(swapped[1], targets[2])]))


def test_contrast_loss_values():
    out = contrast_loss(torch.tensor([10.0, 10.0]), torch.tensor([10.0, 30.0]), beta=0.1)
    expected = (torch.log(torch.tensor(2.0)) + torch.nn.functional.softplus(torch.tensor(-2.0))) / 2
    assert out["contrast_loss"].item() == pytest.approx(expected.item())
    assert out["contrast_accuracy"].item() == 0.5  # a tie is not a win


def _stage(saved, tmp_path, *extra):
    return load_train_config("configs/train/tiny-stage2.yaml", [
        f"init_from={saved}", f"output_dir={tmp_path / 'run'}", "steps=3", "batch_size=8", "log_every=1",
        "save_every=3", "data.sources.t2i.mix={pair: 1.0}", "data.ratios={vqa: 0, text: 0, t2i: 1}",
        "data.prompt_dropout=0", *extra])


def test_a_stage_with_prompt_contrast_logs_it_and_moves_the_margin(saved_tiny, tmp_path):
    cfg = _stage(saved_tiny, tmp_path, "prompt_contrast={weight: 1.0, beta: 0.1}", "optim.lr=3e-3")
    final = train(cfg, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all({"contrast_loss", "contrast_accuracy"} <= r.keys() for r in rows)  # every item has a swap
    # The contrast only ever pushes one way: each image likelier under its caption than its swap.
    source = build_source({"format": "shapes", "task": "generation", "image_size": 32, "num_samples": 16,
                           "seed": 2, "mix": {"pair": 1.0}})

    def margins(model):
        model.eval()
        proc = unimm.load(saved_tiny).processor
        recs = [source.get(i) for i in range(16)]
        ids, mask = left_pad([proc.generation_ids(r["caption"]) for r in recs], model.token_ids.pad)
        sw, sw_mask = left_pad([proc.generation_ids(r["swapped_caption"]) for r in recs], model.token_ids.pad)
        images = torch.stack([model.image_tokenizer.preprocess(r["image"]) for r in recs])
        with torch.no_grad():
            _, own, other = model.generation_contrast(ids, mask, model.images_to_targets(images), sw, sw_mask,
                                                      torch.arange(16))
        return (other - own).mean().item()

    assert margins(unimm.load(str(final)).model) > margins(unimm.load(saved_tiny).model)
    with pytest.raises(ValueError, match="prompt_contrast needs weight >= 0 and answer_weight >= 0, not both 0"):
        _stage(saved_tiny, tmp_path, "prompt_contrast={beta: 0}")
    with pytest.raises(ValueError, match="not both 0"):
        _stage(saved_tiny, tmp_path, "prompt_contrast={weight: 0, answer_weight: 0}")


def _masked_stage(tmp_path, *extra):
    return load_train_config("configs/train/tiny-stage2.yaml", [
        "init_from=null", "model={base: tiny, generation: {paradigm: masked}}", f"output_dir={tmp_path / 'm'}",
        "steps=2", "batch_size=8", "log_every=1", *extra])


def test_caption_contrast_needs_a_family_with_a_likelihood(tmp_path):
    with pytest.raises(ValueError, match="the masked paradigm has no exact image likelihood"):
        train(_masked_stage(tmp_path, "prompt_contrast={beta: 0.1}"), progress=False)


def test_swapped_questions_name_the_other_object_and_change_the_answer():
    world = ShapesWorld(seed=3, num_samples=60)
    seen = set()
    for scene in (world[i] for i in range(60)):
        for qa in scene.qa:
            swapped = swapped_question(scene, qa)
            if swapped is None:
                continue
            seen.add(qa.type)
            assert scene.kind == "pair" and swapped != qa.question
            own = next(o for o in scene.objects if getattr(o, qa.type) == qa.answer)
            other = next(o for o in scene.objects if o is not own)
            # every colour / shape word of one object is now the other's
            names = {own.colour: other.colour, own.shape: other.shape, other.colour: own.colour,
                     other.shape: own.shape}
            assert swapped.split() == [names.get(w.rstrip("?"), w.rstrip("?")) + ("?" if w.endswith("?") else "")
                                       for w in qa.question.split()]
            assert getattr(other, qa.type) != qa.answer  # the answer is wrong for the swapped question
    assert seen == {"colour", "shape", "position", "size"}
    source = build_source({"format": "shapes", "task": "understanding", "image_size": 32, "num_samples": 60,
                           "seed": 3, "questions": 1})
    records = [source.get(i) for i in range(60)]
    with_swap = [r for r in records if "swapped_question" in r]
    assert with_swap and all(r["swapped_question"].startswith("<image>\n") for r in with_swap)
    every = build_source({"format": "shapes", "task": "understanding", "image_size": 32, "num_samples": 60, "seed": 3})
    assert not any("swapped_question" in every.get(i) for i in range(60))  # several turns: no swap


def test_answer_contrast_trains_on_a_masked_model_and_logs_its_own_metrics(tmp_path):
    cfg = _masked_stage(tmp_path, "prompt_contrast={weight: 0, answer_weight: 1.0, beta: 0.5}",
                        "data.sources.vqa.questions=1", "data.sources.vqa.mix={pair: 1.0}",
                        "data.ratios={vqa: 1, text: 0, t2i: 1}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", unimm.UntrainedModelWarning)
        train(cfg, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "m" / "metrics.jsonl").read_text().splitlines()]
    assert any({"answer_contrast_loss", "answer_contrast_accuracy"} <= r.keys() for r in rows)
    assert not any("contrast_loss" in r for r in rows)  # weight 0: no caption contrast


def test_answer_contrast_rows_share_answers_and_images():
    from unimm.training.data import Collator, TrainingDataset

    pipe = _tiny()
    source = build_source({"format": "shapes", "task": "understanding", "image_size": 32, "num_samples": 64,
                           "seed": 3, "questions": 1, "mix": {"pair": 1.0}})
    ds = TrainingDataset({"vqa": source}, {"vqa": 1}, pipe.processor, None, 16, contrast_questions=True)
    batch = Collator(pipe.model.token_ids.pad, lambda ids: ids)([ds[i] for i in range(16)])
    pairs = batch["und_contrast"]
    S = pairs["input_ids"].shape[0] // 2
    assert S > 0 and pairs["pixel_values"].shape[0] == 2 * S
    torch.testing.assert_close(pairs["pixel_values"][:S], pairs["pixel_values"][S:])
    for k in range(S):  # the same answer tokens, after different questions
        own, swap = pairs["labels"][k], pairs["labels"][S + k]
        assert torch.equal(own[own != -100], swap[swap != -100])
        assert not torch.equal(pairs["input_ids"][k], pairs["input_ids"][S + k])
    model = pipe.model.eval()
    with torch.no_grad():
        logps = model(und_contrast=pairs)["contrast_logps"]
        torch.testing.assert_close(logps, model.answer_logprobs(**pairs))
    assert logps.shape == (2 * S,)


def test_length_groups_pick_the_least_padding():
    from unimm.training.data import length_groups

    lengths = [30, 200, 5, 190, 40, 210]
    assert length_groups(lengths, 1) == [[0, 1, 2, 3, 4, 5]]  # one group keeps the order
    two = length_groups(lengths, 2)
    assert two == [[2, 0, 4], [3, 1, 5]]  # short rows padded to 40, long ones to 210
    assert sorted(i for g in length_groups(lengths, 6) for i in g) == list(range(6))
    assert length_groups([7, 7, 7], 3) == [[0, 1, 2]]  # nothing to gain: the fewest groups
    with pytest.raises(ValueError, match="length_buckets must be an integer >= 1"):
        load_train_config({"data": {"length_buckets": 0}})
    with pytest.raises(ValueError, match="pad_multiple must be an integer >= 1, got 0"):
        load_train_config({"data": {"pad_multiple": 0}})


def test_grouped_understanding_batches_give_the_loss_and_gradient_of_one_batch():
    """data.length_buckets: the rows of a chat batch grouped by length, each group padded on its
    own, give the same loss (the mean over every answer token) and gradients, with fewer
    padded tokens."""
    from unimm.training.data import Collator, TrainingDataset

    pipe = _tiny()
    sources = {"vqa": build_source({"format": "shapes", "task": "understanding", "image_size": 32,
                                    "num_samples": 64, "seed": 3}),
               "text": build_source({"format": "shapes", "task": "text", "num_samples": 64, "seed": 4})}
    ds = TrainingDataset(sources, {"vqa": 1, "text": 1}, pipe.processor, None, 12)
    samples = [ds[i] for i in range(12)]
    one = Collator(pipe.model.token_ids.pad, lambda ids: ids)(samples)
    grouped = Collator(pipe.model.token_ids.pad, lambda ids: ids, length_buckets=3)(samples)
    assert isinstance(grouped["und"], list) and 1 < len(grouped["und"]) <= 3
    assert sum(g["input_ids"].numel() for g in grouped["und"]) < one["und"]["input_ids"].numel()
    assert grouped["n_tokens"] == one["n_tokens"]  # the same real tokens
    # data.pad_multiple: each group padded further, to a multiple of 16 tokens
    rounded = Collator(pipe.model.token_ids.pad, lambda ids: ids, length_buckets=3, pad_multiple=16)(samples)
    for g, r in zip(grouped["und"], rounded["und"]):
        assert r["input_ids"].shape[1] % 16 == 0 and 0 <= r["input_ids"].shape[1] - g["input_ids"].shape[1] < 16
        assert torch.equal(r["input_ids"][:, -g["input_ids"].shape[1]:], g["input_ids"])
    assert rounded["n_tokens"] == one["n_tokens"]
    model = pipe.model.train()
    grads = []
    for batch in (one, grouped, rounded):
        model.zero_grad()
        loss = model(und=batch["und"])["und_loss"]
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    for other in grads[1:]:
        torch.testing.assert_close(grads[0][0], other[0], rtol=1e-5, atol=1e-6)
        for a, b in zip(grads[0][1], other[1]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
