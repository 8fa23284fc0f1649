"""Chat turns reuse the conversation's KV cache: same answers as a fresh prefill, less prefilled."""
import pytest
import torch

import unimm
from unimm.data.shapes import ShapesWorld, render
from unimm.sampling.prefix_cache import PrefixCache, image_spans, weights_key


@pytest.fixture()
def pipe():
    with pytest.warns(unimm.UntrainedModelWarning):
        p = unimm.load("tiny")
    return p


@pytest.fixture()
def prefilled(pipe, monkeypatch):
    """Records how many tokens each backbone prefill embeds (the first call of each answer)."""
    sizes = []
    real = pipe.model.embed_inputs

    def spy(input_ids, pixel_values=None):
        sizes.append((input_ids.shape[1], 0 if pixel_values is None else pixel_values.shape[0]))
        return real(input_ids, pixel_values)

    monkeypatch.setattr(pipe.model, "embed_inputs", spy)
    return sizes


def _images(n, seed=3):
    world = ShapesWorld(seed=seed, num_samples=n)
    return [render(world[i], 32) for i in range(n)]


def _conversation(pipe, images, questions, **kw):
    """Greedy answers turn by turn, each call given the history so far; returns the history."""
    history = []
    for image, question in zip(images, questions):
        answer = pipe.chat(image, question, history=history, temperature=0, max_new_tokens=6, **kw)
        history.append({"question": question, "answer": answer, "images": [] if image is None else [image]})
    return history


QUESTIONS = ["What colour is the circle?", "How many objects are there?", "Where is it?", "What size is it?"]


def test_follow_up_turns_match_a_fresh_prefill_and_prefill_only_the_new_tokens(pipe, prefilled):
    images = _images(4)
    reused = _conversation(pipe, images, QUESTIONS)
    calls = list(prefilled)
    prefilled.clear()
    fresh = []
    for image, question in zip(images, QUESTIONS):
        pipe.chat_cache.clear()
        answer = pipe.chat(image, question, history=fresh, temperature=0, max_new_tokens=6)
        fresh.append({"question": question, "answer": answer, "images": [image]})
    assert [t["answer"] for t in reused] == [t["answer"] for t in fresh]
    prefills = [c for c in calls if c[0] > 1]  # decode steps embed one token
    full = [c for c in prefilled if c[0] > 1]
    assert full[0] == prefills[0]  # the first turn has nothing to reuse
    for k in range(1, 4):
        assert prefills[k][1] == 1 and full[k][1] == k + 1  # only the new turn's image is encoded again
        assert prefills[k][0] < full[k][0] - full[k - 1][0] + 16  # roughly the new turn, not the conversation


def test_text_only_follow_ups_and_streaming_reuse_the_cache(pipe, prefilled):
    image = _images(1)[0]
    history = _conversation(pipe, [image, None], QUESTIONS[:2])
    prefilled.clear()
    streamed = "".join(pipe.chat(None, QUESTIONS[2], history=history, stream=True, temperature=0, max_new_tokens=6))
    assert [c[1] for c in prefilled if c[0] > 1] == [0]  # the first turn's image is not encoded again
    pipe.chat_cache.clear()
    assert pipe.chat(None, QUESTIONS[2], history=history, temperature=0, max_new_tokens=6) == streamed


def test_a_changed_image_or_answer_is_prefilled_again(pipe, prefilled):
    a, b = _images(2)
    history = _conversation(pipe, [a, a], QUESTIONS[:2])
    # The same text with another image in the first turn: nothing may be reused after that image.
    other = [dict(history[0], images=[b]), history[1]]
    prefilled.clear()
    got = pipe.chat(a, QUESTIONS[2], history=other, temperature=0, max_new_tokens=6)
    assert [c[1] for c in prefilled if c[0] > 1] == [3]  # all three images encoded
    pipe.chat_cache.clear()
    assert got == pipe.chat(a, QUESTIONS[2], history=other, temperature=0, max_new_tokens=6)
    # An edited earlier answer: the answer is the fresh one.
    edited = [history[0], dict(history[1], answer="seven purple stars")]
    pipe.chat(a, QUESTIONS[2], history=history, temperature=0, max_new_tokens=6)
    got = pipe.chat(a, QUESTIONS[3], history=edited, temperature=0, max_new_tokens=6)
    pipe.chat_cache.clear()
    assert got == pipe.chat(a, QUESTIONS[3], history=edited, temperature=0, max_new_tokens=6)


def test_changed_weights_are_never_served_from_an_old_cache(pipe, prefilled):
    image = _images(1)[0]
    history = _conversation(pipe, [image], QUESTIONS[:1])
    with torch.no_grad():
        for p in pipe.model.backbone.parameters():
            p.mul_(1.5)  # in place, as training or load_state_dict would
    prefilled.clear()
    got = pipe.chat(None, QUESTIONS[1], history=history, temperature=0, max_new_tokens=6)
    assert [c[1] for c in prefilled if c[0] > 1] == [1]  # the image was encoded again: nothing reused
    pipe.chat_cache.clear()
    assert got == pipe.chat(None, QUESTIONS[1], history=history, temperature=0, max_new_tokens=6)


def test_the_weights_key_sees_swapped_added_moved_and_edited_weights():
    """The key a cached conversation is checked against is kept between calls (no walk over the
    modules each turn), yet changes whenever a weight is swapped, added, moved or edited."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    key = weights_key(model)
    assert weights_key(model) == key
    model[0].weight = torch.nn.Parameter(torch.zeros(3, 3))  # swapped (load_state_dict(assign=True))
    assert weights_key(model) != key
    key = weights_key(model)
    model.append(torch.nn.Linear(2, 2))  # a part added (an adapter attached)
    assert len(weights_key(model)[1]) == len(key[1]) + 2
    key = weights_key(model)
    model.to(torch.float64)  # moved or cast: new storage
    assert weights_key(model) != key
    key = weights_key(model)
    with torch.no_grad():
        model[1].bias.add_(1.0)  # edited in place (training)
    assert weights_key(model) != key
    # A part added deep inside: a fresh container filled first, then attached to a seen module.
    key = weights_key(model)
    inner = torch.nn.ModuleList([torch.nn.Linear(2, 2)])
    model[1].adapter = inner
    assert len(weights_key(model)[1]) == len(key[1]) + 2
    key = weights_key(model)
    inner.append(torch.nn.Linear(2, 2, bias=False))  # grown after joining
    assert len(weights_key(model)[1]) == len(key[1]) + 1


def test_the_weights_key_is_kept_across_a_forward_that_slices_its_layers():
    """transformers' decoders slice their layer list into a new ModuleList on every forward; that
    registers modules, but into a container outside the model, so the kept list stays valid."""
    from unimm.sampling import prefix_cache

    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    weights_key(model)
    kept = model._unimm_params
    torch.nn.ModuleList(list(model)[:1])  # what `self.layers[:n]` does
    model[:1]
    assert model._unimm_params[0] == prefix_cache._structure[0]
    weights_key(model)
    assert model._unimm_params is kept


def test_a_stream_closed_early_leaves_a_usable_cache(pipe):
    image = _images(1)[0]
    pieces = pipe.chat(image, QUESTIONS[0], stream=True, temperature=0, max_new_tokens=6)
    first = next(pieces)
    pieces.close()  # the user stopped the answer after its first piece
    history = [{"question": QUESTIONS[0], "answer": first, "images": [image]}]
    got = pipe.chat(None, QUESTIONS[1], history=history, temperature=0, max_new_tokens=6)
    pipe.chat_cache.clear()
    assert got == pipe.chat(None, QUESTIONS[1], history=history, temperature=0, max_new_tokens=6)


def test_prefix_cache_never_cuts_an_image_and_leaves_a_token_to_prefill():
    from transformers import DynamicCache

    def cache_of(n):
        c = DynamicCache()
        c.update(torch.zeros(1, 1, n, 2), torch.zeros(1, 1, n, 2), 0)
        return c

    img = 9
    ids = [1, 2, img, img, img, 3, 4]
    spans = image_spans(ids, img, 3)
    assert spans == [(2, 5)]
    pc = PrefixCache()
    pc.put(ids, [b"a"], cache_of(len(ids)), state="w")
    n, cache = pc.take(ids, spans, [b"a"], state="w")
    assert n == len(ids) - 1 and cache.get_seq_length() == n  # the last token is prefilled again
    assert pc.take(ids, spans, [b"a"], state="w") == (0, None)  # taken: a second caller gets nothing
    pc.put(ids, [b"a"], cache_of(len(ids)), state="w")
    n, _ = pc.take([1, 2, img, img, img, 5, 6], spans, [b"b"], state="w")  # another image: cut before it
    assert n == 2
    pc.put([1, 2, img, img], [], cache_of(4), state="w")  # a cache that ends inside the image run
    assert pc.take(ids, spans, [b"a"], state="w")[0] == 2
    pc.put(ids, [b"a"], cache_of(len(ids)), state="w")
    assert pc.take(ids, spans, [b"a"], state="other weights") == (0, None)
    with pytest.raises(ValueError, match="the cache holds 3 tokens but 7 ids"):
        pc.put(ids, [b"a"], cache_of(3))


def test_streaming_decodes_short_windows_and_never_splits_a_character(pipe, monkeypatch):
    """Byte-level BPE: an accented letter or a snowman is several byte tokens; no piece may end
    inside one, the pieces join to the full answer, and each token decodes a few ids, not all."""
    model, tok = pipe.model, pipe.processor.tokenizer
    text = " naïve café ☃ and a red circle at the top, then a blue square ☃☃ on the left"
    script = tok.encode(text, add_special_tokens=False) + [model.token_ids.eos]
    assert len(script) > 30
    calls = []

    def scripted(hidden):
        logits = torch.zeros(*hidden.shape[:-1], model.token_ids.vocab_size)
        logits[..., script[len(calls)]] = 1.0
        calls.append(1)
        return logits

    monkeypatch.setattr(model, "text_logits", scripted)
    windows = []
    real = pipe.processor.decode
    monkeypatch.setattr(pipe.processor, "decode", lambda ids: windows.append(len(ids)) or real(ids))
    pieces = list(pipe.chat(None, "Say it.", stream=True, max_new_tokens=len(script) + 1))
    assert "".join(pieces) == text[1:]  # the answer prefix (a space) is dropped, as chat() does
    assert not any("\ufffd" in p for p in pieces)
    assert len(pieces) > 10
    assert max(windows[:-1]) <= 8  # the final check decodes the whole answer once
