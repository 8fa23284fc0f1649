"""Cross-attention fusion (Flamingo / Llama 3.2 Vision): one marker per image, gated blocks read it."""
import pytest
import torch

import unimm
from unimm.config import ConfigError
from unimm.encoders.layouts import rows_of_images
from model_helpers import last_text_logits as _last_logits, load_untrained, overfit_one_answer


_load = load_untrained


def test_an_image_takes_one_marker_and_zero_gates_leave_the_lm_as_it_was(shapes_image):
    pipe = _load("tiny-xattn")
    model = pipe.model
    assert model.num_understanding_tokens == 1
    ids, _ = pipe._chat_inputs([shapes_image], "What colour is the circle?", None)
    assert ids.count(model.token_ids.image) == 1  # the image does not fill decoder positions
    stack = model.backbone.cross_attn
    assert stack.layer_ids == [0, 1] and all(b.attn_gate.item() == 0 and b.ffn_gate.item() == 0 for b in stack.blocks)
    blank = torch.zeros(1, 3, 32, 32)
    pixels = pipe.processor.pixel_values([shapes_image])
    t = torch.tensor([ids])
    # gates at zero: what the image holds cannot change the answer yet
    torch.testing.assert_close(_last_logits(model, t, pixels), _last_logits(model, t, blank))
    with torch.no_grad():
        for b in stack.blocks:
            b.attn_gate.fill_(0.5)
    assert not torch.allclose(_last_logits(model, t, pixels), _last_logits(model, t, blank))
    # outside `seeing` the LM runs without the blocks: no hook is left behind
    assert all(not layer._forward_pre_hooks for layer in model.backbone.decoder_layers())


def test_visual_tokens_are_grouped_by_the_row_of_their_marker():
    feats = list(torch.arange(3 * 2 * 1, dtype=torch.float).reshape(3, 2, 1))  # 3 images x 2 tokens
    visual, mask = rows_of_images([2, 0, 1], feats)  # two images in the first row, none in the second
    assert visual.shape == (3, 4, 1)
    assert mask.tolist() == [[True] * 4, [False] * 4, [True, True, False, False]]
    assert visual[0, :, 0].tolist() == [0, 1, 2, 3] and visual[2, :2, 0].tolist() == [4, 5]
    with pytest.raises(ValueError, match="2 image markers but 3 image"):
        rows_of_images([1, 1], feats)
    # images of different sizes (a hybrid model's tiles): each row as long as its own tokens
    visual, mask = rows_of_images([1, 1], [torch.ones(3, 1), torch.ones(5, 1)])
    assert visual.shape == (2, 5, 1) and mask.sum(1).tolist() == [3, 5]


def test_a_fixed_batch_is_learned_and_a_saved_model_answers_the_same(shapes_image, tmp_path):
    pipe = _load("tiny-xattn")
    first, last = overfit_one_answer(pipe, shapes_image)
    assert last < 0.5 * first
    block = pipe.model.backbone.cross_attn.blocks[0]
    assert float(block.attn_gate.detach().abs()) > 0  # the gates opened
    answer = pipe.chat(shapes_image, "What colour is the circle?", max_new_tokens=3, temperature=0)
    again_answer = pipe.chat(shapes_image, "What colour is the circle?", max_new_tokens=3, temperature=0)
    assert again_answer == answer  # a second turn of the same question: no stale cache or hooks
    pipe.save_pretrained(tmp_path / "m")
    again = unimm.load(str(tmp_path / "m"))
    assert again.config.cross_attention.every == 1
    assert again.chat(shapes_image, "What colour is the circle?", max_new_tokens=3, temperature=0) == answer
    # a frozen LM with the blocks trained (Flamingo's recipe) is a freeze line
    from unimm.training.trainer import apply_freeze

    rows = dict((p, (t, f)) for p, t, f in apply_freeze(again.model, {"backbone": True, "backbone.cross_attn": False}))
    assert rows["backbone"][0] == sum(p.numel() for p in again.model.backbone.cross_attn.parameters())


def test_bad_cross_attention_settings_are_named():
    with pytest.raises(ConfigError, match="cross_attention.every must be >= 1"):
        _load({"base": "tiny-xattn", "cross_attention": {"every": 0}})
    with pytest.raises(ConfigError, match="unknown config key 'gate'"):
        _load({"base": "tiny-xattn", "cross_attention": {"gate": 1}})


def test_the_grounding_loss_rewards_attention_on_the_asked_about_object():
    """loss_weights.grounding: -log of the share of the blocks' attention (all blocks but the first)
    on the visual tokens the asked-about object's box covers, a square grid in raster order."""
    model = _load("tiny-xattn").model
    boxes = torch.tensor([[0.0, 0.0, 0.2, 0.2], [0.6, 0.3, 0.9, 0.45]])  # cell (0, 0); cells (1, 2), (1, 3)
    uniform = torch.full((2, 16), 1 / 16)
    on_target = torch.zeros(2, 16)
    on_target[0, 0] = 1.0
    on_target[1, [6, 7]] = 0.5
    first_block_ignored = [torch.zeros(2, 16)]  # it sees only the token's own embedding
    shares = model.grounding_shares(first_block_ignored + [uniform, on_target], boxes)
    torch.testing.assert_close(shares, torch.tensor([[1 / 16, 2 / 16], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="square grid"):
        model.grounding_shares([torch.full((2, 12), 1 / 12)], boxes)
    with pytest.raises(ValueError, match="this model has none"):
        model.grounding_shares([], boxes)


def test_grounding_trains_the_blocks_to_look_at_the_asked_about_object(tmp_path):
    """The shapes world marks one-question items with the asked-about object's box; a stage with
    loss_weights.grounding logs the loss and lowers it; a model without cross-attention is refused."""
    import json
    import warnings

    from unimm.data.formats import build_source
    from unimm.training.config import load_train_config
    from unimm.training.trainer import train

    source = build_source({"format": "shapes", "task": "understanding", "image_size": 32, "num_samples": 64,
                           "seed": 3, "questions": 1, "mix": {"pair": 1.0}})
    records = [source.get(i) for i in range(64)]
    boxed = [r for r in records if "ground" in r]
    assert len(boxed) > 32 and all(0 <= v <= 1.01 and len(r["ground"]) == 4 for r in boxed for v in r["ground"][2:])

    def stage(model, out, steps=40):
        return load_train_config({
            "model": model, "output_dir": str(tmp_path / out), "steps": steps, "batch_size": 8, "log_every": 10,
            "save_every": steps, "freeze": {"encoder": True},
            "loss_weights": {"understanding": 1.0, "grounding": 1.0}, "optim": {"lr": 3e-3, "warmup_steps": 0},
            "data": {"sources": {"vqa": {"format": "shapes", "task": "understanding", "image_size": 32,
                                         "num_samples": 64, "seed": 3, "questions": 1, "mix": {"pair": 1.0}}},
                     "ratios": {"vqa": 1}}})

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", unimm.UntrainedModelWarning)
        train(stage("tiny-xattn", "x"), progress=False)
        with pytest.raises(ValueError, match="loss_weights.grounding supervises cross-attention blocks"):
            train(stage("tiny", "plain", 1), progress=False)
    rows = [json.loads(x) for x in (tmp_path / "x" / "metrics.jsonl").read_text().splitlines()]
    ground = [r["ground_loss"] for r in rows]
    assert len(ground) == 4 and ground[-1] < ground[0]


def test_grounding_at_the_word_that_names_the_object(tmp_path):
    """grounding_at: word watches the question's word for the object ("diamond" in "What colour is
    the diamond?"), every block, at its place after left padding."""
    from unimm.data.formats import build_source
    from unimm.data.shapes import Obj, QA, Scene, naming_word
    from unimm.training.data import Collator, TrainingDataset

    red_circle = Obj("circle", "red", "small", "left", 0.2, 0.5, 0.1)
    blue_star = Obj("star", "blue", "large", "right", 0.8, 0.5, 0.15)
    red_star = Obj("star", "red", "small", "right", 0.8, 0.5, 0.1)
    scene = Scene("pair", [red_circle, blue_star], "", [])
    assert naming_word(scene, QA("What colour is the circle?", "red", "colour")) == "circle"
    assert naming_word(scene, QA("What shape is the blue object?", "star", "shape")) == "blue"
    assert naming_word(scene, QA("Is the red circle small or large?", "small", "size")) == "circle"
    # "red" names both objects, "circle" only one; nothing names the star apart from "star"
    both_red = Scene("pair", [red_circle, red_star], "", [])
    assert naming_word(both_red, QA("Where is the red circle?", "left", "position")) == "circle"
    assert naming_word(scene, QA("How many objects are there?", "two", "count")) is None

    pipe = _load("tiny-xattn")
    source = build_source({"format": "shapes", "task": "understanding", "image_size": 32, "num_samples": 64,
                           "seed": 3, "questions": 1, "mix": {"pair": 1.0}})
    data = TrainingDataset({"vqa": source}, {"vqa": 1}, pipe.processor, None, 32)
    samples = [data[i] for i in range(16)]
    named = [s for s in samples if "ground_at" in s]
    assert len(named) > 8
    from unimm.data.corpus import COLOURS, SHAPES

    for s in named:  # a shape or colour word of the question, before its answer
        assert pipe.processor.tokenizer.decode([s["input_ids"][s["ground_at"]]]).strip() in COLOURS + SHAPES
        assert s["labels"][s["ground_at"]] == -100
    batch = Collator(pipe.model.token_ids.pad, lambda ids: ids, grounding="word")(samples)["und"]
    for row, s in enumerate(samples):
        at = int(batch["ground_at"][row])
        if "ground_at" in s:
            assert batch["input_ids"][row, at] == s["input_ids"][s["ground_at"]]
        else:
            assert at == -1 and batch["ground"][row].isnan().all()
    model = pipe.model
    blocks = len(model.backbone.cross_attn.blocks)
    with torch.no_grad():
        *_, (shares,) = model._answer_logits(**batch)
    assert shares.shape == (blocks, len(named))  # every block, named rows
    # "both": the word (every block) and where the answer is predicted (all blocks but the first)
    both = Collator(pipe.model.token_ids.pad, lambda ids: ids, grounding="both")(samples)["und"]
    assert torch.equal(both["ground_at"][:, 0], batch["ground_at"]) and torch.equal(both["ground"].isnan(),
                                                                                    batch["ground"].isnan())
    for row in range(len(samples)):  # the position whose next token is the answer's first
        answer = int(both["ground_at"][row, 1])
        assert both["labels"][row, answer] == -100 and both["labels"][row, answer + 1] != -100
    with torch.no_grad():
        *_, (at_word, at_answer) = model._answer_logits(**both)
        *_, (answer_only,) = model._answer_logits(**{**both, "ground_at": None})
    torch.testing.assert_close(at_word, shares)
    assert at_answer.shape == (blocks - 1, len(named))
    named_rows = ~both["ground"][:, 0].isnan()  # the answer-only mode watches the same rows there
    assert answer_only.shape[1] == int((~batch["ground"][:, 0].isnan()).sum()) == int(named_rows.sum())
    torch.testing.assert_close(at_answer, answer_only)
    from unimm.training.config import load_train_config

    with pytest.raises(ValueError, match="grounding_at must be answer, word or both"):
        load_train_config({"model": "tiny-xattn", "grounding_at": "noun"})
