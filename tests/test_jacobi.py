"""Speculative Jacobi decoding: greedy ids identical to the sequential loop, sampled tokens distributed
exactly as plain sampling draws them, fewer backbone passes."""
import warnings

import pytest
import torch

import unimm
from unimm.processing import left_pad
from unimm.sampling.autoregressive import generate_image_tokens
from unimm.sampling.jacobi import generate_image_tokens_jacobi


def _prompts(pipe, texts):
    return left_pad([pipe.processor.generation_ids(t) for t in texts], pipe.model.token_ids.pad)


@pytest.mark.parametrize("guidance, window, batch", [(3.0, 16, 1), (3.0, 5, 3), (1.0, 2, 2), (2.0, 64, 4)])
def test_greedy_ids_are_the_sequential_loops(tiny_pipe, guidance, window, batch):
    ids, mask = _prompts(tiny_pipe, ["a red circle", "two blue squares on the left", "a star", "x"][:batch])
    kw = dict(guidance_scale=guidance, temperature=0)
    stats = {}
    jacobi = generate_image_tokens_jacobi(tiny_pipe.model, ids, mask, window=window, stats=stats, **kw)
    assert torch.equal(jacobi, generate_image_tokens(tiny_pipe.model, ids, mask, **kw))
    assert stats["passes"] <= tiny_pipe.model.num_image_tokens + 1


def test_the_default_model_needs_far_fewer_passes_for_the_same_greedy_image():
    pipe = unimm.load()
    ids, mask = _prompts(pipe, ["a blue triangle on the left"])
    stats = {}
    jacobi = generate_image_tokens_jacobi(pipe.model, ids, mask, guidance_scale=3.0, temperature=0, stats=stats)
    assert torch.equal(jacobi, generate_image_tokens(pipe.model, ids, mask, guidance_scale=3.0, temperature=0))
    assert stats["passes"] * 2 <= pipe.model.num_image_tokens + 1  # at least 2x fewer than one per token
    sampled = {}
    generate_image_tokens_jacobi(pipe.model, ids, mask, guidance_scale=3.0, temperature=1.0, stats=sampled,
                                 generator=torch.Generator().manual_seed(0))
    assert sampled["passes"] * 2 <= pipe.model.num_image_tokens + 1


class MarkovChain:
    """Patches a tiny model so the image tokens form a known Markov chain: the backbone passes its
    input through, an image token embeds as a one-hot, the prompt's last state is a start marker,
    and the image head reads log-probabilities off the one-hot. Exact marginals are then known."""

    K = 4

    def __init__(self, model, monkeypatch):
        g = torch.Generator().manual_seed(5)
        self.start = torch.softmax(torch.randn(self.K, generator=g), 0)
        self.T = torch.softmax(1.5 * torch.randn(self.K, self.K, generator=g), 1)
        table = torch.cat([self.T.log(), self.start.log()[None]])  # (K + 1, K): row K is the start
        D = self.K + 1
        one_hot = lambda i: torch.nn.functional.one_hot(i, D).float()
        monkeypatch.setattr(model, "hidden_states", lambda embeds, **kw: embeds)
        monkeypatch.setattr(model, "embed_image_tokens", lambda ids, start=0: one_hot(ids))
        monkeypatch.setattr(model.backbone, "embed", lambda ids: one_hot(torch.full_like(ids, self.K)))
        monkeypatch.setattr(model, "image_logits", lambda h: h @ table)
        monkeypatch.setattr(type(model.image_tokenizer), "num_codes", property(lambda s: self.K))

    def marginals(self, n: int) -> torch.Tensor:
        out = [self.start]
        for _ in range(n - 1):
            out.append(out[-1] @ self.T)
        return torch.stack(out)  # (n, K)


R = 2400  # images per check


def _worst(chain, tokens):
    """The largest |frequency - probability| in standard errors over positions, neighbour pairs and
    triples, among cells expected at least 20 times (rarer ones are not near-normal: even exact
    sampling puts some beyond 5)."""
    K, N = chain.K, tokens.shape[1]
    exact = chain.marginals(N)
    pairs = exact[:-1, :, None] * chain.T[None]  # P(x_j = a, x_j+1 = b)
    triples = pairs[:-1, :, :, None] * chain.T[None, None]  # P(x_j = a, x_j+1 = b, x_j+2 = c)
    z = []
    for width, want in ((1, exact), (2, pairs), (3, triples)):
        code = sum(tokens[:, i:N - width + 1 + i] * K ** (width - 1 - i) for i in range(width))
        freq = torch.nn.functional.one_hot(code, K ** width).float().mean(0).reshape(want.shape)
        score = (freq - want).abs() / (want * (1 - want) / len(tokens)).sqrt().clamp_min(1e-9)
        z.append(score[want * len(tokens) >= 20].max().item())
    return max(z)


@pytest.mark.parametrize("window", [3, 16])
def test_sampled_tokens_follow_plain_samplings_distribution(tiny_pipe, monkeypatch, window):
    """Jacobi-decoded tokens match the chain's exact probabilities (positions, pairs, triples) within
    5 standard errors. Two images at a time, so most tokens come from passes that keep several
    drafts (a big batch advances by its slowest row)."""
    model = tiny_pipe.model
    chain = MarkovChain(model, monkeypatch)
    N = model.num_image_tokens
    ids, mask = _prompts(tiny_pipe, ["a red circle"] * 2)
    g = torch.Generator().manual_seed(1)
    runs, passes = [], []
    for _ in range(R // 2):
        stats = {}
        runs.append(generate_image_tokens_jacobi(model, ids, mask, guidance_scale=1.0, temperature=1.0,
                                                 window=window, generator=g, stats=stats))
        passes.append(stats["passes"])
    assert _worst(chain, torch.cat(runs)) < 5.0
    assert sum(passes) / len(passes) < 0.7 * N  # a third of the tokens or more came from kept drafts


def test_the_distribution_check_passes_exact_sampling_and_catches_a_bias(tiny_pipe, monkeypatch):
    model = tiny_pipe.model
    chain = MarkovChain(model, monkeypatch)
    ids, _ = _prompts(tiny_pipe, ["a red circle"] * R)
    mask = torch.ones_like(ids)
    exact = generate_image_tokens(model, ids, mask, guidance_scale=1.0, temperature=1.0,
                                  generator=torch.Generator().manual_seed(2))
    assert _worst(chain, exact) < 5.0
    biased = generate_image_tokens(model, ids, mask, guidance_scale=1.0, temperature=0.8,
                                   generator=torch.Generator().manual_seed(3))
    assert _worst(chain, biased) > 5.0


def test_the_pipeline_offers_jacobi_decoding_as_an_option(tiny_pipe):
    greedy = tiny_pipe.generate("a red circle", seed=1, do_sample=False)
    assert tiny_pipe.generate("a red circle", seed=1, do_sample=False, decoding="jacobi",
                              jacobi_window=4)[0].tobytes() == greedy[0].tobytes()
    with pytest.raises(ValueError, match="jacobi_window must be >= 2"):
        tiny_pipe.generate("a red circle", decoding="jacobi", jacobi_window=1)
    with pytest.raises(ValueError, match="decoding must be one of 'auto', 'sequential', 'jacobi'"):
        tiny_pipe.generate("a red circle", decoding="parallel")
    with pytest.raises(ValueError, match="compile applies to decoding='sequential'"):
        tiny_pipe.generate("a red circle", decoding="jacobi", compile=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", unimm.UntrainedModelWarning)
        masked = unimm.load("tiny-masked")
    with pytest.raises(ValueError, match="decoding does not apply to the masked paradigm"):
        masked.generate("a red circle", decoding="jacobi")


def test_auto_decoding_runs_jacobi_for_one_image_and_the_loop_for_batches(tiny_pipe):
    """The default, decoding='auto': one image at a time is drawn by Jacobi decoding (the same
    sampled image as asking for it), a batch and a compiled call by the sequential loop."""
    from unimm.generation import get_family

    one = dict(seed=3, temperature=1.0)
    auto = tiny_pipe.generate("a red circle", **one)[0].tobytes()
    assert auto == tiny_pipe.generate("a red circle", decoding="jacobi", **one)[0].tobytes()
    assert auto != tiny_pipe.generate("a red circle", decoding="sequential", **one)[0].tobytes()
    two = dict(seed=3, temperature=1.0, num_images=2)
    assert [im.tobytes() for im in tiny_pipe.generate("a red circle", **two)] == \
        [im.tobytes() for im in tiny_pipe.generate("a red circle", decoding="sequential", **two)]
    family = get_family("autoregressive")
    assert family.auto_decoding(tiny_pipe.model, 1) == "jacobi"
    assert family.auto_decoding(tiny_pipe.model, 1, compile=True) == "sequential"
    assert family.auto_decoding(tiny_pipe.model, 4) == "sequential"
