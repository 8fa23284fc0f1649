"""generation.position_embedding: a learned vector per image-token position in the AR head."""
import warnings

import pytest
import torch

import unimm
from unimm.config import ConfigError
from unimm.processing import left_pad
from unimm.sampling.autoregressive import generate_image_tokens
from unimm.sampling.jacobi import generate_image_tokens_jacobi
from model_helpers import uncached_image_logits


def _tiny(**generation):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", unimm.UntrainedModelWarning)
        return unimm.load({"base": "tiny", "generation": {"paradigm": "autoregressive", **generation}})


def test_the_table_starts_at_zero_so_a_model_given_it_is_unchanged(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "plain")
    # A trained model gains the table when opened with the change (a training stage's init_changes).
    pipe = unimm.load(str(tmp_path / "plain"), changes={"generation": {"position_embedding": True}})
    table = pipe.model.gen_head.position
    assert table.shape == (pipe.model.num_image_tokens, pipe.model.backbone.hidden_size) and not table.any()
    plain = tiny_pipe.model.state_dict()
    for k, v in pipe.model.state_dict().items():
        if k != "gen_head.position":
            assert torch.equal(v, plain[k]), k  # every saved weight is loaded as it was
    ids = torch.randint(0, pipe.model.image_tokenizer.num_codes, (2, 5))
    torch.testing.assert_close(pipe.model.embed_image_tokens(ids, 3), tiny_pipe.model.embed_image_tokens(ids, 3))


def test_a_change_that_drops_saved_weights_is_refused(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "plain")
    with pytest.raises(ConfigError, match="has weights the config does not build: projector"):
        unimm.load(str(tmp_path / "plain"), changes={"projector": {"depth": 1}})
    with pytest.raises(ValueError, match="changes apply to a saved model"):
        unimm.load("tiny", changes={"generation": {"position_embedding": True}})
    from unimm.training.config import load_train_config

    with pytest.raises(ValueError, match="init_changes changes init_from's model"):
        load_train_config({"model": "tiny", "init_changes": {"generation": {"position_embedding": True}}})


@pytest.mark.parametrize("window", [3, 8])
def test_positions_reach_every_decoding_path_alike(tmp_path, window):
    pipe = _tiny(position_embedding=True)
    model = pipe.model.eval()
    with torch.no_grad():
        model.gen_head.position.normal_(0, 1.0, generator=torch.Generator().manual_seed(0))
    ids, mask = left_pad([pipe.processor.generation_ids(p) for p in ("a red circle", "two blue stars")],
                         model.token_ids.pad)
    seq = generate_image_tokens(model, ids, mask, guidance_scale=3.0, temperature=0)
    jac = generate_image_tokens_jacobi(model, ids, mask, guidance_scale=3.0, temperature=0, window=window)
    assert torch.equal(seq, jac)
    # the same as one uncached forward over prompt + image tokens (teacher forcing, where the loss looks)
    with torch.no_grad():
        guided = uncached_image_logits(model, ids, mask, seq, 3.0)
    assert torch.equal(guided.argmax(-1), seq)
    pipe.model.gen_head.position.data.zero_()  # without the positions the image differs
    assert not torch.equal(generate_image_tokens(model, ids, mask, guidance_scale=3.0, temperature=0), seq)
    pipe.save_pretrained(tmp_path / "m")
    assert unimm.load(str(tmp_path / "m")).model.config.generation.position_embedding is True


def test_the_table_learns_and_other_paradigms_refuse_it():
    pipe = _tiny(position_embedding=True)
    model = pipe.model
    ids, mask = left_pad([pipe.processor.generation_ids("a red circle")], model.token_ids.pad)
    targets = torch.randint(0, model.image_tokenizer.num_codes, (1, model.num_image_tokens))
    model.generation_loss(ids, mask, targets).backward()
    assert model.gen_head.position.grad[:-1].abs().sum() > 0  # every fed position gets a gradient
    assert model.gen_head.position.grad[-1].abs().sum() == 0  # the last token is never fed
    for paradigm in ("masked", "flow"):
        with pytest.raises(ValueError, match="position_embedding is an autoregressive head's option"):
            _tiny(paradigm=paradigm, position_embedding=True)
