"""Both losses: next-token loss on answers only, image-token loss; both fall when overfitting."""
import torch
import torch.nn.functional as F

import unimm
from unimm.processing import left_pad


def test_labels_cover_answers_and_eos_only(tiny_pipe):
    proc = tiny_pipe.processor
    ids, labels = proc.chat_ids([("What colour?", 1, "red"), ("And the shape?", 0, "a circle")])
    scored = [i for i, l in zip(ids, labels) if l != -100]
    eos = tiny_pipe.model.token_ids.eos
    text = proc.tokenizer.decode(scored)
    assert text == " red<eos> a circle<eos>"
    assert scored.count(eos) == 2 and all(l in (-100, i) for i, l in zip(ids, labels))


def test_understanding_loss_equals_cross_entropy_on_answer_positions(tiny_pipe, shapes_image):
    model, proc = tiny_pipe.model, tiny_pipe.processor
    rows = [proc.chat_ids([("What colour?", 1, "red")]), proc.chat_ids([("Where is the square?", 1, "on the right")])]
    ids, mask = left_pad([r[0] for r in rows], model.token_ids.pad)
    labels, _ = left_pad([r[1] for r in rows], -100)
    pixels = proc.pixel_values([shapes_image, shapes_image])
    with torch.no_grad():
        loss = model.understanding_loss(ids, mask, labels, pixels)
        from unimm.models.unified import positions

        h = model.hidden_states(model.embed_inputs(ids, pixels), attention_mask=mask, position_ids=positions(mask), use_cache=False)
        ref = F.cross_entropy(model.text_logits(h[:, :-1]).flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
    assert torch.allclose(loss, ref, atol=1e-5)


def test_generation_loss_scores_every_image_token(tiny_pipe):
    model, proc = tiny_pipe.model, tiny_pipe.processor
    ids, mask = left_pad([proc.generation_ids("a red circle")], model.token_ids.pad)
    target = torch.randint(0, model.image_tokenizer.num_codes, (1, model.num_image_tokens))
    with torch.no_grad():
        loss = model.generation_loss(ids, mask, target)
        embeds = torch.cat([model.backbone.embed(ids), model.embed_image_tokens(target)], 1)
        logits = model.image_logits(model.hidden_states(embeds, use_cache=False))[:, ids.shape[1] - 1:-1]
    assert torch.allclose(loss, F.cross_entropy(logits.flatten(0, 1), target.flatten()), atol=1e-5)


def test_both_losses_fall_when_overfitting_a_fixed_batch(shapes_image):
    torch.manual_seed(0)
    pipe = unimm.load("tiny")
    model, proc = pipe.model.train(), pipe.processor
    und_rows = [proc.chat_ids([("What colour is the circle?", 1, "red")]),
                proc.chat_ids([("Where is the square?", 1, "on the right")])]
    ids, mask = left_pad([r[0] for r in und_rows], model.token_ids.pad)
    labels, _ = left_pad([r[1] for r in und_rows], -100)
    und = dict(input_ids=ids, attention_mask=mask, labels=labels,
               pixel_values=proc.pixel_values([shapes_image, shapes_image]))
    gen_ids, gen_mask = left_pad([proc.generation_ids("a red circle"), proc.generation_ids("a blue square")],
                                 model.token_ids.pad)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    gen = dict(prompt_ids=gen_ids, prompt_mask=gen_mask, targets=model.images_to_targets(images))
    opt = torch.optim.AdamW([p for n, p in model.named_parameters() if not n.startswith("image_tokenizer")], lr=3e-3)
    first = None
    for _ in range(40):
        out = model(und=und, gen=gen)
        first = first or {k: v.item() for k, v in out.items()}
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    last = {k: v.item() for k, v in out.items()}
    assert last["und_loss"] < 0.3 * first["und_loss"]
    assert last["gen_loss"] < 0.5 * first["gen_loss"]
    assert torch.allclose(out["loss"], out["und_loss"] + out["gen_loss"])
