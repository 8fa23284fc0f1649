"""Several images in one question: shapes-world comparisons and clips, GIF frames, training, chat and eval."""
import json

import numpy as np
import pytest
import torch

import unimm
from unimm.config import ConfigError
from unimm.data.formats import build_source
from unimm.data.sequences import DIRECTIONS, clip_item, compare_item
from unimm.data.shapes import ShapesWorld, ShapesWorldConfig, render
from unimm.eval.vqa import evaluate_multi_image, multi_image_items
from unimm.images import load_frames
from unimm.training.data import Collator, TrainingDataset


def test_comparison_answers_follow_the_two_scenes():
    world = ShapesWorld(seed=2, num_samples=200)
    types = set()
    for i in range(100):
        (a, b), qa = compare_item(world, i)
        assert qa and (a, b) == tuple(compare_item(world, i)[0])  # deterministic, never empty
        for q in qa:
            types.add(q.type)
            if q.type == "more_objects":
                want = "first" if len(a.objects) > len(b.objects) else "second"
            elif q.type == "more_shape":
                shape = q.question.split("more ")[1].rstrip("s?")
                na, nb = (sum(o.shape == shape for o in s.objects) for s in (a, b))
                assert na != nb
                want = "first" if na > nb else "second"
            else:
                colour, shape = q.question.rstrip("?").split()[-2:]
                held = [(colour, shape) in {o.composition for o in s.objects} for s in (a, b)]
                assert held in ([True, False], [False, True])
                want = "first" if held[0] else "second"
            assert q.answer == want, (a.caption, b.caption, q)
    assert types == {"more_objects", "more_shape", "shows"}


def test_a_clip_moves_one_object_straight_the_way_its_answer_says():
    seen = set()
    for i in range(40):
        frames, (qa,) = clip_item(ShapesWorldConfig(seed=5), i, 5)
        assert len(frames) == 5 and qa.type == "motion"
        dx, dy = DIRECTIONS[qa.answer]
        xs = [f.objects[0].cx for f in frames]
        ys = [f.objects[0].cy for f in frames]
        moved, still = (xs, ys) if dx else (ys, xs)
        steps = np.diff(moved) * (dx or dy)
        assert (steps > 0).all() and moved[-1] * (dx or dy) - moved[0] * (dx or dy) >= 0.35 - 1e-3
        assert len(set(still)) == 1 and all(0 < v < 1 for v in xs + ys)
        seen.add(qa.answer)
    assert seen == set(DIRECTIONS)
    with pytest.raises(ValueError, match="frames >= 2"):
        clip_item(ShapesWorldConfig(), 0, 1)


def test_sequence_sources_put_a_placeholder_per_image():
    compare = build_source({"format": "shapes", "task": "understanding", "sequence": "compare", "image_size": 32,
                            "num_samples": 50})
    clip = build_source({"format": "shapes", "task": "understanding", "sequence": "clip", "frames": 3,
                         "image_size": 32, "num_samples": 50})
    for src, n in ((compare, 2), (clip, 3)):
        record = src.get(7)
        assert len(record["images"]) == n and record["images"][0].size == (32, 32)
        assert record["turns"][0][0].count("<image>") == n and all("<image>" not in q for q, _ in record["turns"][1:])
    for bad, match in (({"sequence": "movie"}, "sequence must be one of compare, clip"),
                       ({"sequence": "clip", "task": "generation"}, "with task understanding"),
                       ({"sequence": "clip", "frames": 1}, "frames must be an int >= 2")):
        with pytest.raises(ConfigError, match=match):
            build_source({"format": "shapes", "task": "understanding", **bad})


def test_gif_frames_are_read_and_sampled_evenly(tmp_path):
    frames, _ = clip_item(ShapesWorldConfig(seed=1), 0, 6)
    pictures = [render(f, 32) for f in frames]
    pictures[0].save(tmp_path / "clip.gif", save_all=True, append_images=pictures[1:], duration=100)
    read = load_frames(tmp_path / "clip.gif", max_frames=4)
    assert len(read) == 4 and read[0].mode == "RGB"
    for got, k in zip(read, (0, 2, 3, 5)):  # first and last kept, the rest evenly between
        assert np.abs(np.asarray(got, int) - np.asarray(pictures[k], int)).max() <= 8
    assert len(load_frames(pictures, max_frames=8)) == 6 and len(load_frames(pictures[0])) == 1
    with pytest.raises(FileNotFoundError, match="not found"):
        load_frames(tmp_path / "missing.gif")
    with pytest.raises(ValueError, match="max_frames must be an int >= 1"):
        load_frames(pictures, max_frames=0)


def test_a_model_learns_a_multi_image_batch_and_answers_the_same_after_reload(saved_tiny, tmp_path):
    pipe = unimm.load(str(saved_tiny))
    src = build_source({"format": "shapes", "task": "understanding", "sequence": "compare", "image_size": 32,
                        "num_samples": 20, "seed": 3})
    data = TrainingDataset({"c": src}, {"c": 1}, pipe.processor, pipe.model.image_tokenizer.transform, 2)
    batch = Collator(pipe.model.token_ids.pad, lambda ids: ids)([data[0], data[1]])["und"]
    assert batch["pixel_values"].shape[0] == 4  # two items of two images
    torch.manual_seed(0)
    opt = torch.optim.AdamW(pipe.model.parameters(), lr=3e-3)
    losses = []
    for _ in range(10):
        loss = pipe.model(und=batch)["loss"]
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.6 * losses[0]
    pipe.model.eval()
    (a, b), (qa, *_) = compare_item(src.world, 0)
    images = [render(a, 32), render(b, 32)]
    answer = pipe.chat(images, qa.question, max_new_tokens=3)
    pipe.save_pretrained(tmp_path / "m")
    assert unimm.load(str(tmp_path / "m")).chat(images, qa.question, max_new_tokens=3) == answer


def test_chat_reads_a_video_and_eval_scores_multi_image_questions(saved_tiny, tmp_path, capsys):
    from unimm.cli import main

    frames, (qa,) = clip_item(ShapesWorldConfig(seed=1), 0, 4)
    pictures = [render(f, 32) for f in frames]
    pictures[0].save(tmp_path / "clip.gif", save_all=True, append_images=pictures[1:], duration=100)
    assert main(["chat", qa.question, "--video", str(tmp_path / "clip.gif"), "--frames", "4", "--model",
                 str(saved_tiny), "--max-new-tokens", "2"]) == 0
    pipe = unimm.load(str(saved_tiny))
    assert capsys.readouterr().out.strip() == pipe.chat(load_frames(tmp_path / "clip.gif", 4), qa.question,
                                                       max_new_tokens=2).strip()
    items = multi_image_items(8, seed=0)
    assert [q.type for _, q in items] == ["more_objects", "more_shape", "shows", "motion"] * 2
    assert [len(s) for s, _ in items] == [2, 2, 2, 4] * 2 and multi_image_items(8, seed=0) == items
    assert main(["eval", "--model", str(saved_tiny), "--task", "multi-image", "--n", "4", "-q",
                 "--out", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())["multi_image"]
    assert report["num_questions"] == 4 and set(report["types"]) == {"more_objects", "more_shape", "shows", "motion"}
    assert "multi-image: 4 questions" in capsys.readouterr().out


def _framed(**encoder):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", unimm.UntrainedModelWarning)
        return unimm.load({"base": "tiny", "encoder": {"frame_tokens": 4, **encoder}})


def test_video_frames_are_pooled_to_the_frame_budget(tmp_path):
    pipe = _framed()  # an image: 16 tokens (4 x 4 patches); a frame: pooled to 2 x 2
    model, tok = pipe.model, pipe.model.token_ids
    frames, (qa,) = clip_item(ShapesWorldConfig(seed=1), 0, 3)
    pictures = [render(f, 32) for f in frames]
    still = render(frames[0], 32)
    pixels, layout = pipe.processor.prepare([still, *pictures], [False, True, True, True])
    assert layout == [[16], [4], [4], [4]] and pixels.shape[0] == 4
    ids, _ = pipe._chat_inputs([still], qa.question, None, video=pictures)
    assert ids.count(tok.image) == 16 + 3 * 4
    ids_t = torch.tensor([ids])
    with torch.no_grad():
        slots = model.embed_inputs(ids_t, pixels)[0][ids_t[0] == tok.image]
        views = model.encode_images(pixels)  # (4, 16, D), a 4 x 4 grid each
        torch.testing.assert_close(slots[:16], views[0])
        grid = views[1].reshape(4, 4, -1)
        torch.testing.assert_close(slots[16], grid[:2, :2].mean((0, 1)))  # the frame's top-left 2 x 2 average
        torch.testing.assert_close(slots[19], grid[2:, 2:].mean((0, 1)))
    # the chat reads a clip (a GIF or a list of frames) within the budget, the cache reused across turns
    pictures[0].save(tmp_path / "clip.gif", save_all=True, append_images=pictures[1:], duration=100)
    answer = pipe.chat(None, qa.question, video=tmp_path / "clip.gif", max_new_tokens=2, temperature=0)
    assert answer == pipe.chat(None, qa.question, video=load_frames(tmp_path / "clip.gif"), max_new_tokens=2,
                               temperature=0)
    history = [{"question": qa.question, "answer": answer, "video": pictures}]
    follow = pipe.chat(None, "And now?", history=history, max_new_tokens=2, temperature=0)
    pipe.chat_cache.clear()
    assert pipe.chat(None, "And now?", history=history, max_new_tokens=2, temperature=0) == follow
    # training reads a clip record's frames within the same budget
    src = build_source({"format": "shapes", "task": "understanding", "sequence": "clip", "frames": 3,
                        "image_size": 32, "num_samples": 20})
    data = TrainingDataset({"c": src}, {"c": 1}, pipe.processor, pipe.model.image_tokenizer.transform, 2)
    item = data[0]
    assert item["input_ids"].count(tok.image) == 3 * 4 and item["pixel_values"].shape[0] == 3
    # the budget is the model's: a model without one reads frames as images
    plain = pipe.processor.prepare(pictures, [True] * 3)[1]
    assert plain == [[4]] * 3
    assert unimm.load("tiny").processor.prepare(pictures, [True] * 3)[1] == [[16]] * 3


def test_a_frame_budget_is_a_square_below_an_images_tokens_and_in_the_sequence():
    with pytest.raises(ConfigError, match="a square number below an image's 16 tokens, got 6"):
        _framed(frame_tokens=6)
    with pytest.raises(ConfigError, match="a square number below an image's 16 tokens, got 16"):
        _framed(frame_tokens=16)
    with pytest.raises(ConfigError, match="encoder.frame_tokens must be an int >= 1"):
        _framed(frame_tokens=0)
    with pytest.raises(ConfigError, match="not with encoder.native or cross_attention"):
        unimm.load({"base": "tiny-xattn", "encoder": {"frame_tokens": 4}})
    with pytest.raises(ConfigError, match="this projector gives 6 per view"):
        unimm.load({"base": "tiny", "encoder": {"frame_tokens": 4},
                    "projector": {"type": "perceiver", "num_latents": 6, "num_layers": 1, "num_heads": 2}})
    pipe = _framed()
    ids = pipe.processor.chat_ids([("Which way?", 1, None)], [[9]])[0]
    with pytest.raises(ValueError, match=r"placeholders run \[9\]; this model reads runs of 16 \(an image\) or 4"):
        pipe.model.embed_inputs(torch.tensor([ids]), torch.zeros(1, 3, 32, 32))
