"""Samplers: logits processing, and cached decoding that matches an uncached forward pass."""
import pytest
import torch

from unimm.processing import left_pad
from unimm.sampling.autoregressive import generate_image_tokens
from unimm.sampling.logits import check_sampling_args, make_generator, sample_next, sample_with_noise
from unimm.sampling.text import generate_text
from model_helpers import uncached_image_logits


def test_greedy_is_argmax():
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 2.9]])
    assert sample_next(logits, temperature=0).tolist() == [1, 0]


def test_top_k_one_is_greedy_even_when_sampling():
    logits = torch.randn(4, 50)
    g = make_generator(0, "cpu")
    assert torch.equal(sample_next(logits, temperature=1.0, top_k=1, generator=g), logits.argmax(-1))


def test_top_p_keeps_only_the_nucleus():
    # probabilities 0.6, 0.3, 0.1: top_p=0.5 keeps only the first token, top_p=0.8 the first two.
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1]])).repeat(2000, 1)
    g = make_generator(0, "cpu")
    assert set(sample_next(logits, 1.0, top_p=0.5, generator=g).tolist()) == {0}
    assert set(sample_next(logits, 1.0, top_p=0.8, generator=g).tolist()) == {0, 1}


def test_sampling_follows_the_distribution():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]])).repeat(20000, 1)
    ids = sample_next(logits, 1.0, generator=make_generator(1, "cpu"))
    freq = torch.bincount(ids, minlength=3).float() / len(ids)
    assert torch.allclose(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.02)


def test_the_exponential_race_follows_the_distribution_and_its_filters():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]])).repeat(20000, 1)
    noise = torch.empty(logits.shape).exponential_(generator=make_generator(1, "cpu"))
    freq = torch.bincount(sample_with_noise(logits, noise), minlength=3).float() / len(logits)
    assert torch.allclose(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.02)
    assert set(sample_with_noise(logits, noise, top_p=0.8).tolist()) == {0, 1}  # the same filters as sample_next
    assert set(sample_with_noise(logits, noise, top_k=1).tolist()) == {0}
    assert torch.equal(sample_with_noise(logits[:3], None, temperature=0), torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("args, msg", [((-1, 0, 1.0), "temperature"), ((1, -2, 1.0), "top_k"), ((1, 0, 0.0), "top_p")])
def test_bad_sampling_args_are_named(args, msg):
    with pytest.raises(ValueError, match=msg):
        check_sampling_args(*args)


@pytest.mark.parametrize("prompts", [["a red circle", "two small blue squares on the left"],  # left-padded
                                     ["a red circle", "a red circle"]])  # no padding
def test_static_cache_decoding_matches_full_forward(tiny_pipe, prompts):
    model, proc = tiny_pipe.model, tiny_pipe.processor
    rows = [proc.generation_ids(p) for p in prompts]
    ids, mask = left_pad(rows, model.token_ids.pad)
    tokens = generate_image_tokens(model, ids, mask, guidance_scale=3.0, temperature=0)
    assert tokens.shape == (2, model.num_image_tokens)
    with torch.no_grad():
        ref = uncached_image_logits(model, ids, mask, tokens, 3.0)
    # Greedy: each sampled token is the argmax of the uncached guided logits.
    assert torch.equal(ref.argmax(-1), tokens)


def test_left_padding_does_not_change_a_prompt_s_image(tiny_pipe):
    model, proc = tiny_pipe.model, tiny_pipe.processor
    short, long = proc.generation_ids("a red circle"), proc.generation_ids("a large green star at the top of the picture")
    alone = generate_image_tokens(model, *left_pad([short], model.token_ids.pad), guidance_scale=2.0, temperature=0)
    batched = generate_image_tokens(model, *left_pad([long, short], model.token_ids.pad), guidance_scale=2.0, temperature=0)
    assert torch.equal(batched[1], alone[0])


def test_no_guidance_runs_a_single_row_per_image(tiny_pipe):
    model, proc = tiny_pipe.model, tiny_pipe.processor
    ids, mask = left_pad([proc.generation_ids("a red circle")], model.token_ids.pad)
    tokens = generate_image_tokens(model, ids, mask, guidance_scale=1.0, temperature=0)
    with torch.no_grad():
        embeds = torch.cat([model.backbone.embed(ids), model.embed_image_tokens(tokens[:, :-1])], 1)
        h = model.hidden_states(embeds, use_cache=False)
        ref = model.image_logits(h[:, ids.shape[1] - 1:]).argmax(-1)
    assert torch.equal(ref, tokens)


def test_text_generation_with_cache_matches_full_forward(tiny_pipe, shapes_image):
    model, proc = tiny_pipe.model, tiny_pipe.processor
    ids, _ = proc.chat_ids([("What colour is the circle?", 1, None)])
    input_ids = torch.tensor([ids])
    pixels = proc.pixel_values([shapes_image])
    out = torch.stack(list(generate_text(model, input_ids, torch.ones_like(input_ids), pixels,
                                         max_new_tokens=8, temperature=0)), 1)  # (1, n)
    with torch.no_grad():
        seq = torch.cat([input_ids, out[:, :-1]], 1)
        h = model.hidden_states(model.embed_inputs(seq, pixels), use_cache=False)
        ref = model.text_logits(h[:, len(ids) - 1:]).argmax(-1)
    assert torch.equal(ref, out)


def test_eager_attention_decodes_like_sdpa(tiny_pipe, saved_tiny):
    """The prepared 4-D mask is boolean for SDPA and additive for eager attention: same tokens."""
    import json

    import unimm

    cfg = json.loads((saved_tiny / "config.json").read_text())
    cfg["backbone"]["attn_implementation"] = "eager"
    (saved_tiny.parent / "eager").mkdir(exist_ok=True)
    import shutil

    for f in saved_tiny.iterdir():
        shutil.copy(f, saved_tiny.parent / "eager" / f.name)
    (saved_tiny.parent / "eager" / "config.json").write_text(json.dumps(cfg))
    eager = unimm.load(str(saved_tiny.parent / "eager"))
    assert eager.model.backbone.hf_config._attn_implementation == "eager"
    prompts = ["a red circle", "two small blue squares on the left"]
    a = tiny_pipe.generate(prompts, temperature=0)
    b = eager.generate(prompts, temperature=0)
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a, b))


def _compile_works() -> bool:
    try:
        torch.compile(lambda x: x + 1)(torch.zeros(1))
        return True
    except Exception:  # no C++ compiler, or a platform torch.compile does not support
        return False


@pytest.mark.skipif(not _compile_works(), reason="torch.compile is not available here")
def test_compiled_decode_step_gives_the_eager_greedy_ids(tiny_pipe):
    """The compiled decode step (static shapes, exponential-race sampling) changes no greedy id;
    seeded sampling through it is reproducible and goes through the pipeline."""
    model, proc = tiny_pipe.model, tiny_pipe.processor
    ids, mask = left_pad([proc.generation_ids(p) for p in ["a red circle", "two small blue squares on the left"]],
                         model.token_ids.pad)
    eager = generate_image_tokens(model, ids, mask, guidance_scale=3.0, temperature=0)
    assert torch.equal(generate_image_tokens(model, ids, mask, guidance_scale=3.0, temperature=0, compile=True), eager)
    sampled = [generate_image_tokens(model, ids, mask, 3.0, 1.0, top_k=20, generator=make_generator(4, "cpu"),
                                     compile=True) for _ in range(2)]
    assert torch.equal(*sampled) and not torch.equal(sampled[0], eager)
    images = [tiny_pipe.generate("a red circle", seed=2, compile=True) for _ in range(2)]
    assert images[0][0].tobytes() == images[1][0].tobytes()


def test_compile_is_refused_where_the_family_has_no_compiled_step(tiny_pipe):  # masked and flow: none yet
    import unimm

    with pytest.warns(unimm.UntrainedModelWarning):
        masked = unimm.load("tiny-masked")
    with pytest.raises(ValueError, match="compile is not available for the masked paradigm"):
        masked.generate("a red circle", compile=True)
    with pytest.raises(ValueError, match="compile must be True or False"):
        tiny_pipe.generate("a red circle", compile="yes")


@pytest.mark.skipif(not _compile_works(), reason="torch.compile is not available here")
def test_compiled_generator_pass_gives_the_dit_models_images():
    import unimm

    with pytest.warns(unimm.UntrainedModelWarning):
        pipe = unimm.load("tiny-dit")
    eager = pipe.generate(["a red circle", "two blue squares"], seed=3, steps=2)
    compiled = pipe.generate(["a red circle", "two blue squares"], seed=3, steps=2, compile=True)
    assert [a.tobytes() for a in eager] == [b.tobytes() for b in compiled]
