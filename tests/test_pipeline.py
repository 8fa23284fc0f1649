"""The public API on a tiny random model: generate, chat, save/load, bad input."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import unimm


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))


def test_generate_returns_images_of_the_configured_size(tiny_pipe):
    images = tiny_pipe.generate(["a red circle", "a blue square"], num_images=3, seed=0)
    assert len(images) == 6
    size = tiny_pipe.config.image_tokenizer["image_size"]
    assert all(isinstance(im, Image.Image) and im.size == (size, size) and im.mode == "RGB" for im in images)


def test_same_seed_same_images_other_seed_different(tiny_pipe):
    a = tiny_pipe.generate("a red circle", num_images=2, seed=7)
    b = tiny_pipe.generate("a red circle", num_images=2, seed=7)
    c = tiny_pipe.generate("a red circle", num_images=2, seed=8)
    assert _same(a, b)
    assert not _same(a, c)
    assert tiny_pipe.last_seed == 8


def test_greedy_needs_no_seed_and_ignores_it(tiny_pipe):
    a = tiny_pipe.generate("a green star", temperature=0, seed=1)
    b = tiny_pipe.generate("a green star", do_sample=False, seed=2)
    assert _same(a, b)


def test_images_per_prompt_follow_prompt_order(tiny_pipe):
    both = tiny_pipe.generate(["a red circle", "a blue square"], num_images=1, temperature=0)
    first = tiny_pipe.generate("a red circle", temperature=0)
    second = tiny_pipe.generate("a blue square", temperature=0)
    assert _same(both, first + second)


def test_batch_size_splits_rows_without_changing_greedy_output(tiny_pipe):
    prompts = ["a red circle", "a blue square", "three yellow triangles"]
    assert _same(tiny_pipe.generate(prompts, temperature=0), tiny_pipe.generate(prompts, temperature=0, batch_size=2))


def test_progress_callback_follows_every_token(tiny_pipe):
    steps = []
    tiny_pipe.generate("a red circle", seed=0, decoding="sequential", progress=lambda i, n: steps.append((i, n)))
    n = tiny_pipe.model.num_image_tokens
    assert steps == [(i, n) for i in range(1, n + 1)]
    # Jacobi decoding (the default for one image) reports the tokens it has after each pass.
    jacobi = []
    tiny_pipe.generate("a red circle", seed=0, progress=lambda i, n: jacobi.append(i))
    assert jacobi[-1] == n and jacobi == sorted(set(jacobi)) and len(jacobi) <= n


def test_the_progress_bar_counts_tokens_whatever_each_pass_accepts(monkeypatch):
    import tqdm.auto

    from unimm.pipelines.unified import _progress_callback

    bars = []

    class Bar:
        def __init__(self, total, **kw):
            self.total, self.n = total, 0
            bars.append(self)

        def update(self, k):
            self.n += k

        def close(self):
            pass

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    with _progress_callback(True, "token") as update:
        for step in (3, 7, 16, 2, 16):  # one batch in three passes, a second in two
            update(step, 16)
    assert [(b.total, b.n) for b in bars] == [(16, 16), (16, 16)]


def test_stream_pieces_join_to_the_greedy_answer(tiny_pipe, shapes_image):
    answer = tiny_pipe.chat(shapes_image, "What colour is the circle?", max_new_tokens=12)
    pieces = list(tiny_pipe.chat(shapes_image, "What colour is the circle?", stream=True, max_new_tokens=12))
    assert isinstance(answer, str) and answer
    assert len(pieces) > 1 and "".join(pieces) == answer


def test_chat_depends_on_the_image(tiny_pipe, shapes_image):
    other = Image.new("RGB", (40, 40), "black")
    ids_a, px_a = tiny_pipe._chat_inputs(shapes_image, "What is it?", None)
    ids_b, px_b = tiny_pipe._chat_inputs(other, "What is it?", None)
    assert ids_a == ids_b and not torch.equal(px_a, px_b)
    with torch.no_grad():
        t = torch.tensor([ids_a])
        ea, eb = tiny_pipe.model.embed_inputs(t, px_a), tiny_pipe.model.embed_inputs(t, px_b)
    is_img = t[0] == tiny_pipe.model.token_ids.image
    assert not torch.allclose(ea[0, is_img], eb[0, is_img]) and torch.equal(ea[0, ~is_img], eb[0, ~is_img])


def test_several_images_and_history_build_one_sequence(tiny_pipe, shapes_image):
    proc = tiny_pipe.processor
    history = [{"question": "What is on the left?", "answer": "a red circle", "images": [shapes_image]},
               ("And the colour?", "red")]
    ids, pixels = tiny_pipe._chat_inputs([shapes_image, shapes_image], "Compare them.", history)
    assert pixels.shape[0] == 3
    assert ids.count(tiny_pipe.model.token_ids.image) == 3 * tiny_pipe.model.num_understanding_tokens
    text = proc.tokenizer.decode(ids)
    assert text.index("What is on the left?") < text.index("a red circle") < text.index("And the colour?") < text.index("Compare them.")
    answer = tiny_pipe.chat([shapes_image, shapes_image], "Compare them.", history=history, max_new_tokens=4)
    assert isinstance(answer, str)


def test_explicit_placeholders_place_images_inside_the_question(tiny_pipe, shapes_image):
    ids, _ = tiny_pipe._chat_inputs([shapes_image], "Look: <image> what is this?", None)
    text = tiny_pipe.processor.tokenizer.decode(ids)
    assert text.index("Look:") < text.index("<begin_of_image>") < text.index("what is this?")
    with pytest.raises(ValueError, match="2 <image> placeholders but 1 image"):
        tiny_pipe._chat_inputs([shapes_image], "<image> and <image>", None)


def test_text_only_chat(tiny_pipe):
    assert isinstance(tiny_pipe.chat(None, "Say something.", max_new_tokens=3), str)


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "CMYK", "I;16", "1"])
def test_other_image_modes_are_converted(tiny_pipe, shapes_image, mode):
    im = shapes_image.convert(mode)
    px = tiny_pipe.processor.pixel_values([im])
    assert px.shape == (1, 3, 32, 32) and torch.isfinite(px).all()


def test_transparent_pixels_become_white():
    from unimm.images import to_rgb

    im = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert to_rgb(im).getpixel((0, 0)) == (255, 255, 255)


def test_save_load_gives_identical_outputs(tiny_pipe, saved_tiny, shapes_image):
    loaded = unimm.load(str(saved_tiny))
    assert _same(tiny_pipe.generate(["a red circle", "a blue square"], seed=3),
                 loaded.generate(["a red circle", "a blue square"], seed=3))
    assert tiny_pipe.chat(shapes_image, "What colour?", max_new_tokens=8) == loaded.chat(shapes_image, "What colour?", max_new_tokens=8)
    for (k, a), (_, b) in zip(tiny_pipe.model.state_dict().items(), loaded.model.state_dict().items()):
        assert torch.equal(a, b), k
    files = {p.name for p in saved_tiny.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pth", ".pkl")) for f in files)


# -- bad input ------------------------------------------------------------------------------
def test_empty_prompt_is_rejected(tiny_pipe):
    with pytest.raises(ValueError, match="prompt is empty"):
        tiny_pipe.generate("   ")
    with pytest.raises(ValueError, match="question is empty"):
        tiny_pipe.chat(None, "")


def test_prompt_longer_than_the_context_is_rejected(tiny_pipe):
    with pytest.raises(ValueError, match="backbone holds 512"):
        tiny_pipe.generate("red " * 600)
    with pytest.raises(ValueError, match="backbone holds 512"):
        tiny_pipe.chat(None, "red " * 600)


@pytest.mark.parametrize("kw, msg", [({"num_images": 0}, "num_images"), ({"temperature": -1}, "temperature"),
                                     ({"top_p": 1.5}, "top_p"), ({"guidance_scale": -2}, "guidance_scale")])
def test_out_of_range_options_are_named(tiny_pipe, kw, msg):
    with pytest.raises(ValueError, match=msg):
        tiny_pipe.generate("a red circle", **kw)


def test_unreadable_and_missing_images_are_named(tiny_pipe, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not a picture")
    with pytest.raises(ValueError, match="cannot read image .*notes.png"):
        tiny_pipe.chat(str(bad), "What is it?")
    with pytest.raises(FileNotFoundError, match="image file not found"):
        tiny_pipe.chat(str(tmp_path / "nope.png"), "What is it?")


def test_unknown_config_key_is_named():
    with pytest.raises(ValueError, match="unknown config key 'hiden_size' in backbone.config"):
        unimm.load({"backbone": {"config": {"hiden_size": 64}}})
    with pytest.raises(ValueError, match="unknown config key 'projektor' in model config"):
        unimm.load({"projektor": {"type": "mlp"}})
    with pytest.raises(ValueError, match="unknown projector type 'conv'"):
        unimm.load({"projector": {"type": "conv"}})
    with pytest.raises(ValueError, match=r"unknown config key 'depth' in projector \(qformer\)"):
        unimm.load({"projector": {"type": "qformer", "depth": 2}})


def test_checkpoint_shapes_must_match_the_config(saved_tiny, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(saved_tiny, broken)
    cfg = json.loads((broken / "config.json").read_text())
    cfg["image_tokenizer"]["quantizer"]["codebook_size"] = 128
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="tensor shapes differ for .*gen_head"):
        unimm.load(str(broken))


def test_missing_weights_file_is_named(saved_tiny, tmp_path):
    import shutil

    broken = tmp_path / "noweights"
    shutil.copytree(saved_tiny, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weights file in .*noweights"):
        unimm.load(str(broken))


def test_unknown_model_name_lists_the_configs():
    with pytest.raises(FileNotFoundError, match="available configs: .*tiny"):
        unimm.load("no-such-model")


def test_save_is_atomic_and_keeps_the_old_checkpoint_on_failure(tiny_pipe, tmp_path, monkeypatch):
    target = tmp_path / "ckpt"
    tiny_pipe.save_pretrained(target)
    before = (target / "model.safetensors").read_bytes()

    import unimm.models.unified as unified

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(unified, "save_weights", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        tiny_pipe.save_pretrained(target)
    assert (target / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary left behind


def test_sharded_checkpoint_with_tied_embeddings_round_trips(tmp_path):
    torch.manual_seed(0)
    pipe = unimm.load(_tied_config())
    lm = pipe.model.backbone.lm
    assert lm.get_input_embeddings().weight.data_ptr() == lm.get_output_embeddings().weight.data_ptr()
    pipe.save_pretrained(tmp_path / "m", max_shard_size="300KB")
    names = {p.name for p in (tmp_path / "m").iterdir()}
    assert "model.safetensors.index.json" in names and sum(n.endswith(".safetensors") for n in names) > 1
    loaded = unimm.load(str(tmp_path / "m"))
    lm2 = loaded.model.backbone.lm
    assert lm2.get_input_embeddings().weight.data_ptr() == lm2.get_output_embeddings().weight.data_ptr()
    assert _same(pipe.generate("a red circle", seed=0), loaded.generate("a red circle", seed=0))
    shard = sorted(n for n in names if n.endswith(".safetensors"))[0]
    (tmp_path / "m" / shard).unlink()
    with pytest.raises(FileNotFoundError, match=f"weights shard\\(s\\) missing .*{shard}"):
        unimm.load(str(tmp_path / "m"))


def test_bf16_storage_halves_the_file_and_reloads_the_rounded_weights(tmp_path):
    torch.manual_seed(0)
    pipe = unimm.load(_tied_config())
    pipe.save_pretrained(tmp_path / "fp32")
    pipe.save_pretrained(tmp_path / "bf16", dtype="bfloat16")
    size32 = (tmp_path / "fp32" / "model.safetensors").stat().st_size
    size16 = (tmp_path / "bf16" / "model.safetensors").stat().st_size
    assert 0.45 < size16 / size32 < 0.55  # every weight halved, the tied embedding still stored once
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["storage_dtype"] == "bfloat16"
    assert json.loads((tmp_path / "fp32" / "config.json").read_text())["storage_dtype"] == "float32"

    loaded = unimm.load(str(tmp_path / "bf16"))
    assert loaded.model.dtype == torch.float32 and loaded.model.config.storage_dtype == "bfloat16"
    rounded = {k: v.to(torch.bfloat16).float() if v.is_floating_point() else v
               for k, v in pipe.model.state_dict().items()}
    got = loaded.model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in rounded.items())
    lm = loaded.model.backbone.lm
    assert lm.get_input_embeddings().weight.data_ptr() == lm.get_output_embeddings().weight.data_ptr()
    with pytest.raises(ValueError, match="cannot store weights as 'int8'"):
        pipe.save_pretrained(tmp_path / "bad", dtype="int8")
    assert not (tmp_path / "bad").exists()


def _tied_config():
    from unimm.pipelines.load import resolve_config
    import dataclasses

    cfg = resolve_config("tiny")
    backbone = dataclasses.replace(cfg.backbone, config={**cfg.backbone.config, "tie_word_embeddings": True})
    return dataclasses.replace(cfg, backbone=backbone)


def test_chat_stops_at_end_of_sequence(tiny_pipe, shapes_image, monkeypatch):
    """Script the LM head: three answer tokens, then EOS; decoding must stop there."""
    model, tok = tiny_pipe.model, tiny_pipe.processor.tokenizer
    script = tok.encode(" a red circle", add_special_tokens=False) + [model.token_ids.eos] + [5] * 10
    calls = []

    def scripted(hidden):
        logits = torch.zeros(*hidden.shape[:-1], model.token_ids.vocab_size)
        logits[..., script[len(calls)]] = 1.0
        calls.append(1)
        return logits

    monkeypatch.setattr(model, "text_logits", scripted)
    assert tiny_pipe.chat(shapes_image, "What is it?", max_new_tokens=20) == "a red circle"  # no answer_prefix space
    n_answer = len(script) - 10
    assert len(calls) == n_answer  # nothing decoded after EOS
    calls.clear()
    assert "".join(tiny_pipe.chat(shapes_image, "What is it?", stream=True, max_new_tokens=20)) == "a red circle"


# -- more bad input (from review) ----------------------------------------------------------
@pytest.mark.parametrize("call, msg", [
    (lambda p: p.generate(123), "expected a prompt string"),
    (lambda p: p.generate(["a red circle", 1]), "prompt 1 must be a string"),
    (lambda p: p.generate([]), "expected a prompt string"),
    (lambda p: p.generate("a red circle", num_images=2.0), "num_images must be a whole number"),
    (lambda p: p.generate("a red circle", batch_size=-1), "batch_size must be >= 1"),
    (lambda p: p.generate("a red circle", guidance_scale=float("nan")), "guidance_scale must be a finite number"),
    (lambda p: p.generate("a red circle", seed=2**70), r"seed must be in \[0, 2\*\*63\)"),
    (lambda p: p.chat(None, "q", history=["ab"]), "history turn 0 must be"),
    (lambda p: p.chat(None, "q", history=[{"question": "a"}]), "history turn 0 lacks answer"),
    (lambda p: p.chat([None], "q"), "image 0 is None"),
    (lambda p: p.chat(None, 5), "the question must be a string"),
    (lambda p: p.chat(None, "q", max_new_tokens=0), "max_new_tokens must be >= 1"),
])
def test_bad_arguments_are_named(tiny_pipe, call, msg):
    with pytest.raises(ValueError, match=msg):
        call(tiny_pipe)


def test_streaming_checks_its_input_before_returning(tiny_pipe):
    with pytest.raises(ValueError, match="question is empty"):
        tiny_pipe.chat(None, "", stream=True)  # raised at the call, not at the first next()


def test_options_a_paradigm_does_not_take_are_named_errors(tiny_pipe):
    with pytest.raises(ValueError, match=r"solver does not apply to the autoregressive paradigm; its options: "
                                         r"guidance_scale, temperature, top_k, top_p"):
        tiny_pipe.generate("a red circle", solver="rk4")
    with pytest.raises(ValueError, match=r"shift, steps do not apply to the autoregressive paradigm"):
        tiny_pipe.generate("a red circle", steps=4, shift=2.0)
    flow = unimm.load("tiny-flow")
    with pytest.raises(ValueError, match=r"temperature does not apply to the flow paradigm"):
        flow.generate("a red circle", temperature=0.5)
    with pytest.raises(ValueError, match=r"do_sample does not apply to the flow paradigm"):
        flow.generate("a red circle", do_sample=False)


@pytest.mark.parametrize("kw, msg", [
    ({"temperature": float("nan")}, "temperature must be a finite number, got nan"),
    ({"guidance_scale": float("inf")}, "guidance_scale must be a finite number, got inf"),
    ({"temperature": "hot"}, "temperature must be a number, got 'hot'"),
    ({"top_k": 1.5}, "top_k must be an integer, got 1.5"),
    ({"top_k": "5"}, "top_k must be an integer, got '5'"),
    ({"top_p": 0}, r"top_p must be in \(0, 1\], got 0"),
])
def test_option_types_and_finiteness_are_checked_by_their_owner(tiny_pipe, kw, msg):
    with pytest.raises(ValueError, match=msg):
        tiny_pipe.generate("a red circle", **kw)


def test_progress_takes_a_bool_or_a_callback(tiny_pipe, capsys):
    a = tiny_pipe.generate("a red circle", temperature=0, progress=True)
    b = tiny_pipe.generate("a red circle", temperature=0, progress=False)
    assert a[0].tobytes() == b[0].tobytes()
    assert "generating" in capsys.readouterr().err  # the tqdm bar
    with pytest.raises(ValueError, match="progress must be True, False or a callable"):
        tiny_pipe.generate("a red circle", progress="yes")


@pytest.mark.parametrize("image, msg", [
    (np.zeros((0, 0, 3), np.uint8), "the image is empty"),
    (np.zeros((4, 4, 2), np.uint8), "C = 1, 3, 4"),
])
def test_bad_image_arrays_are_named(tiny_pipe, image, msg):
    with pytest.raises(ValueError, match=msg):
        tiny_pipe.chat(image, "What is it?")


def test_image_edge_cases_convert_sensibly(tmp_path):
    from unimm.images import load_image

    with pytest.raises(ValueError, match="is a directory"):
        load_image(tmp_path)
    assert load_image(np.full((4, 4, 1), 200, np.uint8)).getpixel((0, 0)) == (200, 200, 200)
    grey16 = Image.fromarray(np.full((4, 4), 40000, np.uint16))  # a flat 16-bit grey keeps its brightness
    assert load_image(grey16).getpixel((0, 0)) == (156, 156, 156)


def test_dtype_names_and_aliases(tmp_path):
    pipe = unimm.load("tiny", dtype="bf16")
    assert pipe.model.dtype == torch.bfloat16
    assert len(pipe.generate("a red circle", seed=0)) == 1
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        unimm.load("tiny", dtype="float8")


def test_config_values_are_checked_when_loaded():
    with pytest.raises(ValueError, match="sampling: guidance_scale must be a number, got 'high'"):
        unimm.load({"sampling": {"guidance_scale": "high"}})
    with pytest.raises(ValueError, match="top_p must be in"):
        unimm.load({"sampling": {"top_p": 2}})
    with pytest.raises(ValueError, match="prompt.generation must contain {prompt}"):
        unimm.load({"prompt": {"generation": "draw it"}})
    pipe = unimm.load({"base": "tiny", "sampling": None})  # null: the family's own defaults
    assert pipe.config.sampling.guidance_scale is None and pipe.sampling_options().guidance_scale == 5.0


def test_pickled_weights_are_named_and_never_read(saved_tiny, tmp_path):
    import shutil

    target = tmp_path / "m"
    shutil.copytree(saved_tiny, target)
    (target / "model.safetensors").unlink()
    (target / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(FileNotFoundError, match="found pytorch_model.bin: pickled weights are not read"):
        unimm.load(str(target))


def test_generate_and_chat_use_the_current_cache_api(tiny_pipe, shapes_image):
    """No deprecated keyword reaches transformers (its warning printed on every call)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tiny_pipe.generate("a red circle", temperature=0)
        tiny_pipe.chat(shapes_image, "What colour is the circle?")
        unimm.load("tiny-masked").generate("a red circle", temperature=0, steps=2)
    assert not [w for w in caught if "deprecated" in str(w.message)], [str(w.message) for w in caught]
