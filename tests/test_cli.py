"""The `unimm` command line: options that shape what is written."""
import numpy as np
from PIL import Image

from unimm.cli import main


def test_generate_keeps_the_models_size_unless_upscale_is_given(tmp_path, capsys):
    assert main(["generate", "a red circle", "--model", "tiny", "-o", str(tmp_path / "a.png"), "--seed", "0", "-q"]) == 0
    assert main(["generate", "a red circle", "--model", "tiny", "-o", str(tmp_path / "b.png"), "--seed", "0", "-q",
                 "--upscale", "4"]) == 0
    a, b = Image.open(tmp_path / "a.png"), Image.open(tmp_path / "b.png")
    assert b.size == (a.width * 4, a.height * 4)
    big = np.asarray(b)
    assert (big == np.asarray(a).repeat(4, 0).repeat(4, 1)).all()  # nearest neighbour: crisp 4x4 blocks
    assert main(["generate", "a red circle", "--model", "tiny", "-o", str(tmp_path / "c.png"), "--upscale", "0"]) == 2
    assert "--upscale must be >= 1, got 0" in capsys.readouterr().err


def test_a_config_name_warns_that_the_model_is_untrained_and_is_the_same_every_load():
    import pytest
    import torch

    import unimm
    from unimm.pipelines.load import UntrainedModelWarning

    with pytest.warns(UntrainedModelWarning, match=r"'tiny' builds an untrained model with random weights \(seed 0\)"):
        a = unimm.load("tiny")
    torch.manual_seed(123)  # the global RNG does not matter, the seed does
    b, c = unimm.load("tiny"), unimm.load("tiny", seed=1)
    sa, sb, sc = (p.model.state_dict() for p in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())
    from unimm.cli import _plain_warning

    shown = _plain_warning(UntrainedModelWarning("'tiny' builds an untrained model"), UntrainedModelWarning, "x.py", 1)
    assert shown == "unimm: warning: 'tiny' builds an untrained model\n"  # what `unimm` prints, no source line


def test_prompt_words_the_model_never_saw_are_named_in_a_warning():
    import warnings

    import pytest

    import unimm
    from unimm.pipelines.unified import UnknownWordsWarning

    pipe = unimm.load()  # the shipped default: trained on the shapes world's captions
    with pytest.warns(UnknownWordsWarning, match=r"has words this model never saw in training: dog, fluffy .*"
                                                 r"the words it knows: a, an, and, .*triangle"):
        images = pipe.generate("a fluffy blue dog", seed=0)
    assert len(images) == 1  # it still draws
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownWordsWarning)
        pipe.generate("a blue triangle on the left", seed=0)  # only known words: no warning


def test_answers_have_no_leading_space_and_questions_are_normalised_for_the_default():
    import warnings

    import unimm

    pipe = unimm.load()
    image = pipe.generate("a red circle on the left", seed=0)[0]
    answer = pipe.chat(image, "What colour is the circle?")
    assert answer == answer.strip() and answer  # the space after "Assistant:" is the prompt's, not the answer's
    assert "".join(pipe.chat(image, "What colour is the circle?", stream=True)) == answer
    for variant in ("What color is the circle?", "WHAT COLOUR IS THE CIRCLE?", "what colour is the circle?"):
        assert pipe.chat(image, variant) == answer, variant  # the model was trained on one spelling and case
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipe.generate("A Red Circle in the Center", seed=0)  # normalised: no unknown words


def test_compile_flag_reaches_the_family_and_is_refused_where_it_has_no_compiled_step(tmp_path, capsys):
    out = str(tmp_path / "m.png")
    assert main(["generate", "a red circle", "--model", "tiny-masked", "-o", out, "--compile", "-q"]) == 2
    assert "compile is not available for the masked paradigm" in capsys.readouterr().err
