"""The three generation paradigms on one backbone: masks, training, sampling, saving."""
import pytest
import torch

import unimm
from unimm.models.masks import attention_mask_4d
from unimm.processing import left_pad
from unimm.sampling.span import ImageSpanDecoder

PARADIGM_CONFIGS = {"autoregressive": "tiny", "masked": "tiny-masked", "flow": "tiny-flow"}


@pytest.fixture(scope="module")
def pipes():
    torch.manual_seed(0)
    return {k: unimm.load(v) for k, v in PARADIGM_CONFIGS.items()}


def _prompts(pipe, texts):
    return left_pad([pipe.processor.generation_ids(t) for t in texts], pipe.model.token_ids.pad)


# -- attention ------------------------------------------------------------------------------
def test_omni_attention_mask_is_causal_for_text_and_bidirectional_for_the_image_span():
    key_mask = torch.tensor([[0, 1, 1, 1, 1, 1]])  # one left pad, 2 prompt tokens, 3 image tokens
    m = attention_mask_4d(key_mask, "sdpa", torch.float32, image_start=3)[0, 0].int()
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0],  # the pad query sees itself only
        [0, 1, 0, 0, 0, 0],  # prompt: causal, never the pad
        [0, 1, 1, 0, 0, 0],
        [0, 1, 1, 1, 1, 1],  # image tokens: the prompt and every image token
        [0, 1, 1, 1, 1, 1],
        [0, 1, 1, 1, 1, 1],
    ])
    assert torch.equal(m, expected)
    additive = attention_mask_4d(key_mask, "eager", torch.float32, image_start=3)[0, 0]
    assert torch.equal(additive == 0, expected.bool())
    causal = attention_mask_4d(key_mask, "sdpa", torch.float32)[0, 0].int()
    assert torch.equal(causal, torch.tril(expected) * (expected.sum(0, keepdim=True) > 0) | torch.eye(6, dtype=torch.int))
    with pytest.raises(ValueError, match="bidirectional image attention needs"):
        attention_mask_4d(key_mask, "flash_attention_2", torch.float32, image_start=3)


@pytest.mark.parametrize("paradigm", ["masked", "flow"])
def test_image_tokens_see_later_image_tokens_but_the_prompt_does_not(pipes, paradigm):
    model = pipes[paradigm].model
    ids, mask = _prompts(pipes[paradigm], ["a red circle"])
    L, N, D = ids.shape[1], model.num_image_tokens, model.backbone.hidden_size
    span = torch.randn(1, N, D)
    changed = span.clone()
    changed[:, -1] += 1.0  # perturb the last image token only
    with torch.no_grad():
        full = lambda s: model.hidden_states(torch.cat([model.backbone.embed(ids), s], 1),
                                             attention_mask=model.image_span_mask(mask, N), use_cache=False)
        a, b = full(span), full(changed)
    assert torch.allclose(a[:, :L], b[:, :L])  # the prompt never looks at the image
    assert not torch.allclose(a[:, L], b[:, L])  # the first image token sees the last one


def test_autoregressive_image_tokens_do_not_see_the_future(pipes):
    model = pipes["autoregressive"].model
    ids, mask = _prompts(pipes["autoregressive"], ["a red circle"])
    tokens = torch.randint(0, model.image_tokenizer.num_codes, (1, 8))
    other = tokens.clone()
    other[:, -1] = (other[:, -1] + 1) % model.image_tokenizer.num_codes
    with torch.no_grad():
        h = lambda t: model.hidden_states(torch.cat([model.backbone.embed(ids), model.embed_image_tokens(t)], 1), use_cache=False)
        a, b = h(tokens), h(other)
    assert torch.allclose(a[:, :-1], b[:, :-1]) and not torch.allclose(a[:, -1], b[:, -1])


@pytest.mark.parametrize("paradigm", ["masked", "flow"])
def test_cached_prompt_span_decoding_matches_a_full_forward(pipes, paradigm):
    pipe = pipes[paradigm]
    model = pipe.model
    ids, mask = _prompts(pipe, ["a red circle", "two large blue squares at the top"])  # left-padded
    span = ImageSpanDecoder(model, ids, mask, guidance_scale=1.0)
    embeds = torch.randn(2, model.num_image_tokens, model.backbone.hidden_size)
    with torch.no_grad():
        ref = model.image_span_hidden(ids, mask, embeds)
        for _ in range(2):  # the second step must see the prompt only, not the first step's span
            assert torch.allclose(span.hidden(embeds), ref, atol=1e-5)


# -- training -------------------------------------------------------------------------------
@pytest.mark.parametrize("paradigm", ["autoregressive", "masked", "flow"])
def test_generation_loss_falls_when_overfitting_a_fixed_batch(paradigm):
    torch.manual_seed(0)
    pipe = unimm.load(PARADIGM_CONFIGS[paradigm])
    model = pipe.model.train()
    ids, mask = _prompts(pipe, ["a red circle on the left", "a blue square on the right"])
    images = torch.zeros(2, 3, 32, 32)
    images[0, 0, 8:24, 2:14] = 1  # a red blob on the left
    images[1, 2, 8:24, 18:30] = 1  # a blue blob on the right
    targets = model.images_to_targets(images * 2 - 1)
    params = [p for n, p in model.named_parameters() if not n.startswith(("image_tokenizer", "encoder", "projector"))]
    opt = torch.optim.AdamW(params, lr=3e-3)
    g = torch.Generator().manual_seed(0)

    def loss_now(seed=123):  # the same corruption / noise draw before and after
        with torch.no_grad():
            return model.generation_loss(ids, mask, targets, generator=torch.Generator().manual_seed(seed)).item()

    before = loss_now()
    for _ in range(60):
        loss = model.generation_loss(ids, mask, targets, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = loss_now()
    assert after < 0.5 * before, (before, after)


def test_a_masked_model_starts_from_a_saved_autoregressive_one(pipes, tmp_path):
    """The masked head has the AR head's weight names and shapes (the mask token's vector apart), so
    `changes={"generation": {"paradigm": "masked"}}` carries a trained AR model's image embedding,
    aligner and output head over; only the mask vector is new. Masked ids embed as that vector."""
    pipes["autoregressive"].save_pretrained(tmp_path / "ar")
    ar = pipes["autoregressive"].model.gen_head.state_dict()
    masked = unimm.load(str(tmp_path / "ar"), changes={"generation": {"paradigm": "masked"},
                                                         "sampling": {"steps": 4}})
    head = masked.model.gen_head
    assert type(head).__name__ == "MaskedImageHead" and masked.model.family.name == "masked"
    state = head.state_dict()
    assert set(state) - set(ar) == {"mask_embedding"} and set(ar) == set(state) - {"mask_embedding"}
    assert all(torch.equal(state[k], ar[k]) for k in ar)
    ids = torch.tensor([[0, head.mask_id, 3]])
    with torch.no_grad():
        x = head.embed(ids)
        assert torch.allclose(x[0, 1], head.aligner(head.mask_embedding), atol=1e-6)
        assert torch.allclose(x[0, 2], head.aligner(head.embedding.weight[3]), atol=1e-6)
    a = masked.generate("a red circle", seed=1)[0]
    assert a.size == (32, 32) and list(a.getdata()) == list(masked.generate("a red circle", seed=1)[0].getdata())


def test_a_masked_head_loads_the_older_layout_with_the_mask_row_in_the_table(pipes):
    """Checkpoints written before the mask vector became its own parameter kept it as the
    embedding table's last row; they load into the same weights."""
    head = pipes["masked"].model.gen_head
    state = {k: v.clone() for k, v in head.state_dict().items()}
    old = dict(state)
    old["embedding.weight"] = torch.cat([old["embedding.weight"], old.pop("mask_embedding")[None]])
    fresh = type(head)(pipes["masked"].model.config.generation, head.num_codes,
                       head.embedding.embedding_dim, head.aligner[0].out_features)
    fresh.load_state_dict(old)
    assert all(torch.equal(fresh.state_dict()[k], state[k]) for k in state)


def test_masked_loss_scores_masked_positions_only(pipes):
    head = pipes["masked"].model.gen_head
    ids = torch.randint(0, head.num_codes, (64, 16))
    corrupted, masked = head.mask(ids, torch.Generator().manual_seed(0))
    assert torch.equal(corrupted[masked], torch.full_like(corrupted[masked], head.mask_id))
    assert torch.equal(corrupted[~masked], ids[~masked])
    assert (masked.sum(1) >= 1).all()
    # Cosine schedule: the mean masked fraction is E[cos(pi u / 2)] = 2 / pi (plus < 1/N from rounding up).
    big = head.mask(torch.zeros(2000, 256, dtype=torch.long), torch.Generator().manual_seed(1))[1]
    assert abs(big.float().mean().item() - 2 / torch.pi) < 0.03


def test_flow_training_inputs_follow_the_rectified_flow_path(pipes):
    head = pipes["flow"].model.gen_head
    x1 = torch.randn(8, head.c, head.grid, head.grid)
    g = torch.Generator().manual_seed(0)
    x_t, t, v = head.noise(x1, g)
    x0 = x1 - v
    tt = t.view(-1, 1, 1, 1)
    assert torch.allclose(x_t, tt * x1 + (1 - tt) * x0, atol=1e-6)
    assert ((t > 0) & (t < 1)).all()
    assert torch.equal(head.unpatchify(head.patchify(x1)), x1)


# -- sampling -------------------------------------------------------------------------------
@pytest.mark.parametrize("paradigm", ["masked", "flow"])
def test_sampling_is_deterministic_under_a_seed(pipes, paradigm):
    pipe = pipes[paradigm]
    a = pipe.generate(["a red circle", "a blue square"], num_images=2, seed=5)
    b = pipe.generate(["a red circle", "a blue square"], num_images=2, seed=5)
    c = pipe.generate(["a red circle", "a blue square"], num_images=2, seed=6)
    assert len(a) == 4 and all(im.size == (32, 32) for im in a)
    assert [x.tobytes() for x in a] == [x.tobytes() for x in b]
    assert [x.tobytes() for x in a] != [x.tobytes() for x in c]


def test_masked_decoding_runs_the_requested_passes_and_leaves_no_mask(pipes):
    from unimm.sampling.masked import generate_masked_tokens

    pipe = pipes["masked"]
    ids, mask = _prompts(pipe, ["a red circle", "a green star"])
    steps = []
    out = generate_masked_tokens(pipe.model, ids, mask, steps=5, guidance_scale=2.0, temperature=1.0,
                                 generator=torch.Generator().manual_seed(0), progress=lambda i, n: steps.append(i))
    assert steps == [1, 2, 3, 4, 5]
    assert out.shape == (2, pipe.model.num_image_tokens)
    assert (out < pipe.model.gen_head.num_codes).all()  # no mask token left
    greedy = [generate_masked_tokens(pipe.model, ids, mask, steps=5, temperature=0) for _ in range(2)]
    assert torch.equal(*greedy)


def test_flow_sampler_options_change_the_path(pipes):
    pipe = pipes["flow"]
    # A zero-initialised velocity head would make every option give the same image; give it weights.
    torch.manual_seed(1)
    torch.nn.init.normal_(pipe.model.gen_head.head[-1].weight, std=0.5)
    steps = []
    euler = pipe.generate("a red circle", seed=0, steps=4, solver="euler", progress=lambda i, n: steps.append(i))
    heun = pipe.generate("a red circle", seed=0, steps=4, solver="heun")
    more = pipe.generate("a red circle", seed=0, steps=8, solver="euler")
    assert steps == [1, 2, 3, 4]
    assert euler[0].tobytes() != heun[0].tobytes() and euler[0].tobytes() != more[0].tobytes()
    with pytest.raises(ValueError, match="solver must be"):
        pipe.generate("a red circle", solver="rk4")


@pytest.mark.parametrize("paradigm", ["masked", "flow"])
def test_save_load_round_trip(pipes, paradigm, tmp_path):
    pipe = pipes[paradigm]
    pipe.save_pretrained(tmp_path / paradigm)
    loaded = unimm.load(str(tmp_path / paradigm))
    assert loaded.config.generation.paradigm == paradigm
    a, b = pipe.generate("a red circle", seed=0), loaded.generate("a red circle", seed=0)
    assert a[0].tobytes() == b[0].tobytes()


def test_chat_is_the_same_whatever_the_paradigm(pipes, shapes_image):
    # The understanding path does not depend on the generation paradigm.
    torch.manual_seed(0)
    ar = unimm.load("tiny")
    torch.manual_seed(0)
    masked = unimm.load("tiny-masked")
    assert ar.chat(shapes_image, "What colour?", max_new_tokens=6) == masked.chat(shapes_image, "What colour?", max_new_tokens=6)


def test_paradigm_and_tokenizer_must_agree():
    with pytest.raises(ValueError, match="flow paradigm needs a 'vae' image tokenizer"):
        unimm.load({"generation": {"paradigm": "flow"}})
    with pytest.raises(ValueError, match="masked paradigm needs a 'vq' image tokenizer"):
        unimm.load({"generation": {"paradigm": "masked"}, "image_tokenizer": {"type": "vae"}})


@pytest.mark.parametrize("paradigm", ["masked", "flow"])
def test_prompt_cache_gives_the_same_images_as_full_recompute(pipes, paradigm):
    from unimm.sampling.flow import generate_latents
    from unimm.sampling.masked import generate_masked_tokens

    pipe = pipes[paradigm]
    ids, mask = _prompts(pipe, ["a red circle", "two large blue squares at the top"])
    fn = generate_latents if paradigm == "flow" else generate_masked_tokens
    cached = fn(pipe.model, ids, mask, steps=4, guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    full = fn(pipe.model, ids, mask, steps=4, guidance_scale=2.0, generator=torch.Generator().manual_seed(0),
              cache_prompt=False)
    assert torch.allclose(cached.float(), full.float(), atol=1e-4)


def test_masked_decoding_predicts_only_the_masked_positions(monkeypatch):
    import warnings

    import unimm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = unimm.load("tiny-masked")
    head, n = pipe.model.gen_head, pipe.model.num_image_tokens
    sizes, real = [], head.logits
    monkeypatch.setattr(head, "logits", lambda h: sizes.append(h.shape[0]) or real(h))
    pipe.generate("a red circle", guidance_scale=3.0, steps=4, seed=0)
    assert sizes[0] == 2 * n  # both guidance halves, every position masked at first
    assert all(a > b for a, b in zip(sizes, sizes[1:])) and len(sizes) == 4  # fewer masked positions each step
