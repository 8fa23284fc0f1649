"""Janus / Janus-Pro interop: converted checkpoints reproduce transformers' JanusForConditionalGeneration.

Every check runs on three small random Janus models (tests/janus_helpers.py:
MHA + tied head at 32 px, GQA + separate head at 48 px, MQA at 64 px, with
different VQ depths, aligner depths and activations), saved in transformers'
format, converted with `convert_janus` and opened with `unimm.load`.
"""
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from janus_helpers import CONFIGS, EOS, build_janus
from PIL import Image

import unimm
from unimm.images import to_pil
from unimm.interop import ConversionError, convert_janus, export_janus
from unimm.processing import left_pad
from unimm.sampling.autoregressive import generate_image_tokens
from unimm.sampling.text import generate_text

TOL = 1e-4
GUIDANCE = 5.0
PROMPTS = ["a red circle above a blue square", "  two green triangles on the left "]


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def case(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    ref, processor = build_janus(root / "janus", **CONFIGS[request.param])
    convert_janus(root / "janus", root / "unimm")
    return SimpleNamespace(name=request.param, root=root, ref=ref, processor=processor,
                           pipe=unimm.load(str(root / "unimm")))


def _images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (40, 27, 3), dtype=np.uint8)),  # tall: resized and padded
            Image.fromarray(rng.integers(0, 256, (20, 90, 3), dtype=np.uint8))]  # wide


def _reference_chat(processor, messages, images):
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    return processor(text=text, images=images, generation_mode="text", return_tensors="pt")


def _image_turn(question, n=1):
    return {"role": "user", "content": [{"type": "image"}] * n + [{"type": "text", "text": question}]}


def test_understanding_logits_match(case):
    images = _images()
    messages = [_image_turn("What is in the picture?"),
                {"role": "assistant", "content": [{"type": "text", "text": "A red circle."}]},
                _image_turn("And here?")]
    ref_in = _reference_chat(case.processor, messages, images)
    history = [{"question": "What is in the picture?", "answer": "A red circle.", "images": [images[0]]}]
    ids, pixels = case.pipe._chat_inputs(images[1], "And here?", history)
    assert ids == ref_in["input_ids"][0].tolist()
    assert (pixels - ref_in["pixel_values"]).abs().max() <= 1e-6
    with torch.no_grad():
        ref = case.ref(**ref_in).logits
        m = case.pipe.model
        ours = m.text_logits(m.hidden_states(m.embed_inputs(torch.tensor([ids]), pixels), use_cache=False))
    assert ref.shape == ours.shape and (ref - ours).abs().max() <= TOL


def test_image_generation_ids_and_pixels_match(case):
    ref_in = case.processor(text=[_generation_text(case.processor, p) for p in PROMPTS], generation_mode="image",
                            padding=True, return_tensors="pt")  # JanusProcessor pads on the left
    rows = [case.pipe.processor.generation_ids(p) for p in PROMPTS]
    ids, mask = left_pad(rows, case.pipe.model.token_ids.pad)
    assert torch.equal(ids, ref_in["input_ids"]) and torch.equal(mask, ref_in["attention_mask"])
    with torch.inference_mode():
        ref_ids = case.ref.generate(**ref_in, generation_mode="image", do_sample=False, guidance_scale=GUIDANCE)
        ours = generate_image_tokens(case.pipe.model, ids, mask, guidance_scale=GUIDANCE, temperature=0)
        assert torch.equal(ref_ids, ours)
        assert len(set(ours.flatten().tolist())) > 2  # varied ids, not one id repeated
        ref_px = case.ref.decode_image_tokens(ref_ids).permute(0, 3, 1, 2)
        ours_px = case.pipe.model.decode_images(ours)
    assert ref_px.shape == ours_px.shape and (ref_px - ours_px).abs().max() <= TOL
    # The public API builds the same prompts and samples the same ids (greedy, CFG 5 by default):
    # its PIL images are the reference's pixels, up to a rounding step at the uint8 boundaries.
    images = np.stack([np.asarray(im, dtype=np.int16) for im in case.pipe.generate(PROMPTS, temperature=0)])
    expected = np.stack([np.asarray(im, dtype=np.int16) for im in to_pil(ref_px)])
    assert images.shape == expected.shape and np.abs(images - expected).max() <= 1


def _generation_text(processor, prompt):
    return processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": prompt}]}],
                                         add_generation_prompt=True)


def test_text_generation_matches(case):
    image = _images()[0]
    ref_in = _reference_chat(case.processor, [_image_turn("Describe the scene.")], [image])
    with torch.inference_mode():
        out = case.ref.generate(**ref_in, generation_mode="text", do_sample=False, max_new_tokens=8)
    ref_new = out[0, ref_in["input_ids"].shape[1]:].tolist()  # up to and with EOS, as unimm's steps
    ids, pixels = case.pipe._chat_inputs(image, "Describe the scene.", None)
    with torch.inference_mode():
        steps = generate_text(case.pipe.model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long),
                              pixels, max_new_tokens=8)
        ours = [int(t[0]) for t in steps]
    assert ours == ref_new and len(set(ours)) > 1
    # pipe.chat answers with the reference's greedy continuation, up to its end-of-sequence.
    answer = case.processor.decode(ref_new, skip_special_tokens=True)
    assert case.pipe.chat(image, "Describe the scene.", max_new_tokens=8) == answer


def test_training_losses_match_the_reference(case):
    """Fine-tuning optimises what Janus computes: answer-token CE and next-image-token CE."""
    m, proc, ref = case.pipe.model, case.pipe.processor, case.ref
    image = _images()[1]
    ids, labels = proc.chat_ids([("What is in the picture?", 1, "A red circle above a blue square.")])
    pixels = proc.pixel_values([image])
    ids_t, labels_t = torch.tensor([ids]), torch.tensor([labels])
    mask = torch.ones_like(ids_t)
    targets = torch.randint(0, m.image_tokenizer.num_codes, (2, m.num_image_tokens), generator=torch.Generator().manual_seed(0))
    prompt, prompt_mask = left_pad([proc.generation_ids(p) for p in PROMPTS], m.token_ids.pad)
    with torch.no_grad():
        und = m.understanding_loss(ids_t, mask, labels_t, pixels)
        ref_und = ref(input_ids=ids_t, pixel_values=pixels, attention_mask=mask, labels=labels_t).loss
        gen = m.generation_loss(prompt, prompt_mask, targets)
        embeds = torch.cat([ref.get_input_embeddings()(prompt), ref.prepare_embeddings_for_image_generation(targets[:, :-1])], 1)
        full = torch.cat([prompt_mask, torch.ones_like(targets[:, :-1])], 1)
        h = ref.model.language_model(inputs_embeds=embeds, attention_mask=full,
                                     position_ids=(full.cumsum(-1) - 1).clamp(min=0)).last_hidden_state
        logits = ref.model.generation_head(h[:, prompt.shape[1] - 1:])
        ref_gen = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    assert abs(und - ref_und) <= TOL and abs(gen - ref_gen) <= TOL


def test_vq_encoder_matches_and_codes_are_looked_up_l2_normalised(case):
    m, vq = case.pipe.model, case.ref.model.vqmodel
    size = m.image_tokenizer.config.image_size
    images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        z_ref = vq.quant_conv(vq.encoder(images))
        z = m.image_tokenizer.quant_conv(m.image_tokenizer.encoder(images))
        ids = m.images_to_targets(images)
    assert (z - z_ref).abs().max() <= TOL
    # Janus's (LlamaGen's) VQ-16 picks the nearest code with both sides l2-normalised.
    codebook = F.normalize(vq.quantize.embedding.weight, dim=-1)
    expected = (F.normalize(z_ref, dim=1).permute(0, 2, 3, 1) @ codebook.T).argmax(-1).flatten(1)
    assert torch.equal(ids, expected)


def test_preprocessing_matches_the_janus_image_processor(case):
    size = case.processor.image_processor.size["height"]
    rng = np.random.default_rng(3)
    images = _images() + [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)),
                          Image.fromarray(rng.integers(0, 256, (3, 120, 3), dtype=np.uint8))]  # min_size 14 applies
    ref = case.processor.image_processor(images, return_tensors="pt")["pixel_values"]
    ours = case.pipe.processor.pixel_values(images)
    assert ours.shape == ref.shape and (ours - ref).abs().max() <= 1e-6


def test_converted_config_carries_janus_settings(case):
    cfg, tok = case.pipe.config, case.processor.tokenizer
    gen = case.ref.generation_config
    assert cfg.token_ids.image == case.ref.config.image_token_id == tok.convert_tokens_to_ids(tok.image_token)
    assert (cfg.token_ids.pad, cfg.token_ids.bos, cfg.token_ids.boi) == (
        gen.pad_token_id, gen.bos_token_id, gen.generation_kwargs["boi_token_id"])
    assert cfg.encoder.image_mean == (0.5, 0.5, 0.5) and cfg.encoder.min_size == 14
    assert cfg.sampling.guidance_scale == GUIDANCE and cfg.prompt.system.startswith("You are a helpful language")
    tied = case.ref.lm_head.weight is case.ref.model.language_model.embed_tokens.weight
    assert cfg.backbone.config["tie_word_embeddings"] == tied == CONFIGS[case.name]["tied"]


def test_export_round_trip_gives_back_the_checkpoint(case):
    from transformers import AutoProcessor, JanusForConditionalGeneration

    export_janus(case.root / "unimm", case.root / "back")
    back = JanusForConditionalGeneration.from_pretrained(case.root / "back").eval()
    a, b = case.ref.state_dict(), back.state_dict()
    assert set(a) == set(b)
    codebook = "model.vqmodel.quantize.embedding.weight"
    assert [k for k in a if not torch.equal(a[k], b[k])] == [codebook]
    assert torch.allclose(b[codebook], F.normalize(a[codebook], dim=-1))  # stored as Janus looks it up
    processor = AutoProcessor.from_pretrained(case.root / "back")
    messages = [_image_turn("What is in the picture?", 2)]
    assert _reference_chat(processor, messages, _images())["input_ids"].tolist() == \
        _reference_chat(case.processor, messages, _images())["input_ids"].tolist()
    assert back.generation_config.generation_kwargs == case.ref.generation_config.generation_kwargs


def test_prompt_ids_match_the_reference_processor(small_janus, tmp_path):
    """pipe.chat / pipe.generate build exactly the ids JanusProcessor builds."""
    from transformers import AutoProcessor

    convert_janus(small_janus, tmp_path / "u")
    p, proc = unimm.load(str(tmp_path / "u")).processor, AutoProcessor.from_pretrained(small_janus)
    img = {"type": "image"}

    def text(t):
        return {"type": "text", "text": t}

    cases = [
        ([("  Describe the scene. ", 0, None)], [{"role": "user", "content": [text("  Describe the scene. ")]}]),
        ([("Compare them.", 2, None)], [{"role": "user", "content": [img, img, text("Compare them.")]}]),
        ([("What is the difference between <image_placeholder> and <image_placeholder>", 2, None)],
         [{"role": "user", "content": [text("What is the difference between "), img, text(" and "), img]}]),
        ([("What is it?", 1, " A red circle. "), ("And now?", 1, "Blue."), ("Thanks", 0, None)],
         [_image_turn("What is it?"), {"role": "assistant", "content": [text(" A red circle. ")]},
          _image_turn("And now?"), {"role": "assistant", "content": [text("Blue.")]},
          {"role": "user", "content": [text("Thanks")]}]),
    ]
    for turns, messages in cases:
        n = sum(t[1] for t in turns)
        ref = _reference_chat(proc, messages, _images()[:1] * n or None)["input_ids"][0].tolist()
        assert p.chat_ids(turns)[0] == ref, turns
    for prompt in PROMPTS:
        ref = proc(text=_generation_text(proc, prompt), generation_mode="image")["input_ids"][0].tolist()
        assert p.generation_ids(prompt) == ref


def test_chat_template_renders_the_janus_pro_format():
    """unimm's template (used by exports and the test checkpoints) against Janus-Pro's format written out."""
    from jinja2 import Environment

    from unimm.interop.janus.prompts import janus_chat_template

    t = Environment().from_string(janus_chat_template(EOS))
    img, ph = {"type": "image"}, "<image_placeholder>"

    def render(messages, add=True):
        return t.render(messages=messages, add_generation_prompt=add)

    def text(s):
        return {"type": "text", "text": s}

    assert render([{"role": "user", "content": [text(" Hi there ")]}]) == "<|User|>: Hi there\n\n<|Assistant|>:"
    assert render([{"role": "user", "content": [img, text("What?")]}]) == f"<|User|>: {ph}\nWhat?\n\n<|Assistant|>:"
    assert render([{"role": "user", "content": [img, img, text("Compare.")]}]) == \
        f"<|User|>: {ph}\n\n{ph}\nCompare.\n\n<|Assistant|>:"
    assert render([{"role": "user", "content": [text("a "), img, text(" b"), img]}]) == \
        f"<|User|>: a \n{ph}\n b\n{ph}\n\n<|Assistant|>:"
    assert render([{"role": "user", "content": [text("x"), text("y")]}]) == "<|User|>: x y\n\n<|Assistant|>:"
    convo = [{"role": "user", "content": [text("Q")]}, {"role": "assistant", "content": [text("A")]},
             {"role": "user", "content": [text("R")]}]
    assert render(convo) == f"<|User|>: Q\n\n<|Assistant|>: A{EOS}<|User|>: R\n\n<|Assistant|>:"
    assert render(convo[:2], add=False) == "<|User|>: Q\n\n<|Assistant|>: A"
    assert render([{"role": "user", "content": [text("Q")]}, {"role": "assistant", "content": [text("")]}],
                  add=False) == "<|User|>: Q\n\n<|Assistant|>:"
    assert render([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q"}]) == \
        f"System: Be brief.{EOS}<|User|>: Q\n\n<|Assistant|>:"


# -- a unimm model of Janus's shape, exported ------------------------------------------
JANUS_SHAPED = {
    "name": "janus-shaped",
    "encoder": {"siglip": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                           "num_attention_heads": 2, "image_size": 32, "patch_size": 8, "hidden_act": "gelu",
                           "vision_use_head": False}, "min_size": 14},
    "projector": {"type": "mlp", "depth": 2, "activation": "gelu"},
    "backbone": {"model_type": "llama", "config": {"hidden_size": 64, "intermediate_size": 128,
                                                   "num_hidden_layers": 2, "num_attention_heads": 4,
                                                   "num_key_value_heads": 2, "max_position_embeddings": 256}},
    "text_tokenizer": {"image_token": "<image_placeholder>", "boi_token": "<begin_of_image>",
                       "eoi_token": "<end_of_image>"},
    "image_tokenizer": {"type": "vq", "image_size": 8, "block_out_channels": [32, 32], "norm_num_groups": 32,
                        "latent_channels": 32, "quantizer": {"codebook_size": 64, "codebook_dim": 8}},
    "generation": {"paradigm": "autoregressive"},
}


def test_export_of_a_unimm_model_reproduces_it_in_transformers(tmp_path):
    from transformers import AutoProcessor, JanusForConditionalGeneration

    from unimm.interop.janus.prompts import janus_prompt_config

    cfg = dict(JANUS_SHAPED, prompt=vars(janus_prompt_config(True, add_bos=False)))  # unimm's BPE adds no BOS
    torch.manual_seed(0)
    pipe = unimm.load(cfg)
    with torch.no_grad():
        for p in pipe.model.gen_head.parameters():  # varied greedy ids from a random head
            p.normal_(0.0, p.shape[-1] ** -0.5)
    pipe.save_pretrained(tmp_path / "unimm")
    export_janus(tmp_path / "unimm", tmp_path / "janus")
    ref = JanusForConditionalGeneration.from_pretrained(tmp_path / "janus").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "janus")

    image = _images()[0]
    ref_in = _reference_chat(processor, [_image_turn("What is in the picture?")], [image])
    ids, pixels = pipe._chat_inputs(image, "What is in the picture?", None)
    assert ids == ref_in["input_ids"][0].tolist() and (pixels - ref_in["pixel_values"]).abs().max() <= 1e-6
    m = pipe.model
    with torch.inference_mode():
        ours = m.text_logits(m.hidden_states(m.embed_inputs(torch.tensor([ids]), pixels), use_cache=False))
        assert (ref(**ref_in).logits - ours).abs().max() <= TOL
        gen_in = processor(text=[_generation_text(processor, p) for p in PROMPTS], generation_mode="image",
                           padding=True, return_tensors="pt")
        ref_ids = ref.generate(**gen_in, generation_mode="image", do_sample=False, guidance_scale=GUIDANCE)
        ours_ids = generate_image_tokens(m, gen_in["input_ids"], gen_in["attention_mask"],
                                         guidance_scale=GUIDANCE, temperature=0)
        assert torch.equal(ref_ids, ours_ids) and len(set(ours_ids.flatten().tolist())) > 2
        diff = (ref.decode_image_tokens(ref_ids).permute(0, 3, 1, 2) - m.decode_images(ours_ids)).abs().max()
    assert diff <= TOL


def test_export_names_what_janus_cannot_express(saved_tiny, tmp_path):
    with pytest.raises(ConversionError) as e:
        export_janus(saved_tiny, tmp_path / "out")
    msg = str(e.value)
    assert "vision_use_head" in msg and "norm_num_groups" in msg and "prompt config is not Janus-Pro's" in msg
    assert not (tmp_path / "out").exists()


# -- bad checkpoints ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_janus(tmp_path_factory):
    root = tmp_path_factory.mktemp("janus-small")
    build_janus(root, **CONFIGS["mha-tied-32px"])
    return root


def _copy(src, tmp_path, edit_config=None):
    dst = tmp_path / "src"
    shutil.copytree(src, dst)
    if edit_config:
        cfg = json.loads((dst / "config.json").read_text())
        edit_config(cfg)
        (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def _edit_weights(path, fn):
    from safetensors.torch import load_file, save_file

    state = load_file(str(path / "model.safetensors"))
    fn(state)
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})


def test_missing_and_unexpected_weights_are_named(small_janus, tmp_path):
    src = _copy(small_janus, tmp_path)
    _edit_weights(src, lambda s: s.pop("model.vqmodel.decoder.conv_out.bias"))
    with pytest.raises(ConversionError, match=r"missing weight\(s\) model\.vqmodel\.decoder\.conv_out\.bias"):
        convert_janus(src, tmp_path / "out")
    _edit_weights(src, lambda s: s.update({"model.vqmodel.decoder.conv_out.bias": torch.zeros(3),
                                           "model.extra_head.weight": torch.zeros(2, 2)}))
    with pytest.raises(ConversionError, match=r"unexpected weight\(s\) model\.extra_head\.weight"):
        convert_janus(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("edit,message", [
    (lambda c: c.update(model_type="llava"), "holds a 'llava' model, not 'janus'"),
    (lambda c: c["vision_config"].update(use_qk_norm=True), "use_qk_norm=true"),
    (lambda c: c["vq_config"].update(channel_multiplier=[2, 2]), r"channel_multiplier\[0\]=2"),
    (lambda c: c["vq_config"].update(double_latent=True), "double_latent=true"),
    (lambda c: c["vision_config"].update(num_image_tokens=5), "num_image_tokens=5"),
])
def test_unmappable_options_are_named(small_janus, tmp_path, edit, message):
    src = _copy(small_janus, tmp_path, edit)
    with pytest.raises(ConversionError, match=message):
        convert_janus(src, tmp_path / "out")


def test_pickled_weights_are_refused_and_a_failed_conversion_keeps_the_old_directory(small_janus, tmp_path):
    src = _copy(small_janus, tmp_path)
    (src / "model.safetensors").rename(src / "pytorch_model.bin")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("old")
    with pytest.raises(ConversionError, match="pickled weights are not read"):
        convert_janus(src, tmp_path / "out", overwrite=True)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []
    assert (tmp_path / "out" / "keep.txt").read_text() == "old"


def test_bfloat16_checkpoint_keeps_its_type_and_matches(small_janus, tmp_path):
    """Janus-Pro ships bf16 weights: they stay bf16 on disk, and compute as the reference upcast to float32."""
    from safetensors import safe_open
    from transformers import JanusForConditionalGeneration

    src = _copy(small_janus, tmp_path)
    JanusForConditionalGeneration.from_pretrained(src, dtype=torch.bfloat16).save_pretrained(src)
    convert_janus(src, tmp_path / "u")
    with safe_open(str(tmp_path / "u" / "model.safetensors"), "pt") as f:
        kinds = {k: f.get_slice(k).get_dtype() for k in f.keys()}
    codebook = "image_tokenizer.quantizer.q._codebook.embed"
    assert kinds.pop(codebook) == "F32" and {v for k, v in kinds.items() if "_codebook" not in k} == {"BF16"}
    pipe = unimm.load(str(tmp_path / "u"))
    assert pipe.config.storage_dtype == "bfloat16" and pipe.model.dtype == torch.float32
    ref = JanusForConditionalGeneration.from_pretrained(src, dtype=torch.float32).eval()
    ids = torch.randint(0, pipe.model.image_tokenizer.num_codes, (1, pipe.model.num_image_tokens))
    with torch.inference_mode():
        diff = (ref.decode_image_tokens(ids).permute(0, 3, 1, 2) - pipe.model.decode_images(ids)).abs().max()
        prompt = torch.tensor([pipe.processor.generation_ids(PROMPTS[0])])
        same = torch.equal(ref.generate(prompt, attention_mask=torch.ones_like(prompt), generation_mode="image",
                                        do_sample=False, guidance_scale=GUIDANCE),
                           generate_image_tokens(pipe.model, prompt, torch.ones_like(prompt), GUIDANCE, 0))
    assert diff <= TOL and same


def test_cli_convert_and_export(small_janus, tmp_path, capsys):
    from unimm.cli import main

    assert main(["convert", "janus", str(small_janus), str(tmp_path / "u")]) == 0
    assert main(["export", "janus", str(tmp_path / "u"), str(tmp_path / "j")]) == 0
    assert (tmp_path / "j" / "model.safetensors").is_file()
    assert unimm.load(str(tmp_path / "u")).config.prompt.user == "<|User|>: {content}\n\n"
    assert main(["convert", "janus", str(tmp_path / "nothing"), str(tmp_path / "x")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_converted_model_trains_with_the_staged_trainer(small_janus, tmp_path):
    from unimm.pipelines.load import REPO_ROOT
    from unimm.training.config import load_train_config
    from unimm.training.trainer import train

    convert_janus(small_janus, tmp_path / "u")
    cfg = load_train_config(str(REPO_ROOT / "configs" / "train" / "tiny-stage3.yaml"),
                            [f"init_from={tmp_path / 'u'}", f"output_dir={tmp_path / 'run'}", "steps=2",
                             "batch_size=2", "save_every=2", "log_every=1"])
    final = train(cfg, progress=False)
    before, after = unimm.load(str(tmp_path / "u")).model, unimm.load(str(final)).model
    assert after.config.prompt == before.config.prompt
    moved = [k for k, v in before.backbone.state_dict().items() if not torch.equal(v, after.backbone.state_dict()[k])]
    assert moved
