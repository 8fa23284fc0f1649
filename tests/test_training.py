"""The staged trainer: freezing, stages, resume, checkpoints, NaN stop, LoRA, multi-process."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import unimm
from unimm.config import MODEL_PARTS
from unimm.training.checkpoints import latest_checkpoint, list_checkpoints
from unimm.training.config import load_train_config
from unimm.training.trainer import train

ROOT = Path(__file__).resolve().parents[1]
STAGE = lambda n: str(ROOT / "configs" / "train" / f"tiny-stage{n}.yaml")
FAST = ["steps=4", "batch_size=4", "save_every=2", "log_every=1"]


def _cfg(n, tmp_path, *extra, init_from=None):
    over = FAST + [f"output_dir={tmp_path / f'stage{n}'}"] + list(extra)
    if init_from:
        over.append(f"init_from={init_from}")
    return load_train_config(STAGE(n), over)


def _weights(model, part):
    return {k: v.clone() for k, v in getattr(model, part).state_dict().items()}


def _changed(a: dict, b: dict) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


def test_stages_1_2_3_freeze_what_they_declare_and_chain(tmp_path, capsys):
    torch.manual_seed(0)
    finals = []
    for n in (1, 2, 3):
        cfg = _cfg(n, tmp_path, init_from=finals[-1] if finals else None)
        start = unimm.load(cfg.init_from or cfg.model).model
        before = {p: _weights(start, p) for p in cfg.freeze}
        if n == 1:  # a fresh model: make its start reproducible for the comparison
            torch.manual_seed(0)
        final = train(cfg, progress=False)
        table = capsys.readouterr().out
        finals.append(str(final))
        after = unimm.load(str(final)).model
        for part, frozen in cfg.freeze.items():
            row = next(line for line in table.splitlines() if line.startswith(part))
            trainable, frozen_count = (int(x.replace(",", "")) for x in row.split()[1:3])
            assert (trainable == 0) == frozen, (n, part, row)
            if n > 1:  # stages 2 and 3 start from the previous export: frozen parts must not move
                assert _changed(before[part], _weights(after, part)) != frozen, (n, part)
        assert (tmp_path / f"stage{n}" / "metrics.jsonl").is_file()
        assert list((tmp_path / f"stage{n}" / "tb").iterdir())
    log = [json.loads(x) for x in (tmp_path / "stage3" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in log] == [1, 2, 3, 4]
    assert {"loss", "lr", "samples_per_s", "tokens_per_s"} <= set(log[0])
    assert {"und_loss", "gen_loss"} <= set().union(*log)  # a step logs the tasks its batch held


def test_resume_continues_as_if_never_interrupted(tmp_path):
    straight = train(_cfg(1, tmp_path / "a", "steps=6", "save_every=3", "optim.warmup_steps=2"), progress=False)
    cfg = _cfg(1, tmp_path / "b", "steps=6", "save_every=3", "optim.warmup_steps=2")
    assert train(cfg, progress=False, stop_at=3) is None  # the "interrupted" run stops after N steps
    assert latest_checkpoint(cfg.output_dir).name == "step-0000003"
    resumed = train(cfg, resume=True, progress=False)
    a, b = unimm.load(str(straight)).model.state_dict(), unimm.load(str(resumed)).model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bit for bit


def test_checkpoints_keep_the_last_k_and_ignore_partial_writes(tmp_path, monkeypatch):
    cfg = _cfg(1, tmp_path, "steps=6", "save_every=1", "keep_last=2")
    train(cfg, progress=False)
    assert [p.name for p in list_checkpoints(cfg.output_dir)] == ["step-0000005", "step-0000006"]
    # A crash in the middle of writing step 7 leaves a temporary directory behind; it is never "latest".
    partial = Path(cfg.output_dir) / "checkpoints" / ".tmp-step-0000007"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    assert latest_checkpoint(cfg.output_dir).name == "step-0000006"


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    from unimm.models.unified import UnifiedModel

    real = UnifiedModel.forward
    calls = {"n": 0}

    def poisoned(self, und=None, gen=None, pref=None, **options):
        out = real(self, und=und, gen=gen, pref=pref, **options)
        calls["n"] += 1
        if calls["n"] == 3:
            out["gen_loss"] = out["gen_loss"] * float("nan")
        return out

    monkeypatch.setattr(UnifiedModel, "forward", poisoned)
    cfg = _cfg(1, tmp_path, "steps=6", "save_every=2")
    with pytest.raises(FloatingPointError, match=r"loss is nan at step 3: stopping. The last good checkpoint .*step-0000002"):
        train(cfg, progress=False)
    assert latest_checkpoint(cfg.output_dir).name == "step-0000002"
    assert not (Path(cfg.output_dir) / "final").exists()


def test_lora_trains_adapters_only_and_exports_a_plain_model(tmp_path, capsys):
    cfg = _cfg(2, tmp_path, "lora.r=4", "export_dtype=bfloat16", init_from=_stage1(tmp_path))
    start = unimm.load(cfg.init_from).model
    final = train(cfg, progress=False)
    assert "LoRA adapters only" in capsys.readouterr().out
    loaded = unimm.load(str(final))
    assert not any("lora" in k for k in loaded.model.state_dict())  # merged into the weights
    assert loaded.model.config.storage_dtype == "bfloat16"  # exported for shipping
    assert _changed(_weights(start, "backbone"), _weights(loaded.model, "backbone"))


def _stage1(tmp_path):
    return str(train(_cfg(1, tmp_path / "s1", "steps=2"), progress=False))


def test_bad_training_configs_are_named(tmp_path):
    with pytest.raises(ValueError, match="exactly one of 'model'"):
        load_train_config({"output_dir": str(tmp_path)})
    with pytest.raises(ValueError, match=r"unknown part\(s\) \['decoder'\]"):
        load_train_config({"model": "tiny", "freeze": {"decoder": True}})
    with pytest.raises(ValueError, match="data.ratios must name exactly the sources"):
        load_train_config({"model": "tiny", "data": {"sources": {"a": {"format": "shapes", "task": "text"}}, "ratios": {"b": 1}}})
    with pytest.raises(ValueError, match="unknown config key 'stepz'"):
        load_train_config(STAGE(1), ["stepz=3"])
    with pytest.raises(ValueError, match="export_dtype must be float32, bfloat16 or float16, got 'bf16x'"):
        load_train_config(STAGE(1), ["export_dtype=bf16x"])
    with pytest.raises(FileNotFoundError, match="no checkpoint under"):
        train(_cfg(1, tmp_path), resume=True, progress=False)
    with pytest.raises(ValueError, match=r"unknown part\(s\) \['vision'\] in optim.lr_scale"):
        load_train_config({"model": "tiny", "optim": {"lr_scale": {"vision": 0.1}}})
    with pytest.raises(ValueError, match="optim.lr_scale values must be numbers > 0"):
        load_train_config({"model": "tiny", "optim": {"lr_scale": {"encoder": 0}}})
    with pytest.raises(ValueError, match="optim.lr_scale names 'projector.nope'"):
        train(_cfg(1, tmp_path / "x", "optim.lr_scale={projector.nope: 0.5}"), progress=False)


def test_two_process_data_parallel_run_on_cpu(tmp_path):
    out = tmp_path / "ddp"
    # torchrun starts the processes; accelerate reads its environment and uses gloo on the CPU.
    # (`accelerate launch` with a use_cpu config runs a single process unless MPI is set up.)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "unimm.train", STAGE(1), *FAST, f"output_dir={out}", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert "2 processes (MULTI_CPU, cpu)" in r.stdout  # really data-parallel, not one process
    pipe = unimm.load(str(out / "final"))
    assert len(pipe.generate("a red circle", seed=0)) == 1
    log = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 4


def test_fsdp_on_two_cpu_processes_matches_one_process(tmp_path):
    """FSDP2 over gloo (accelerate maps CPU processes to DDP; the trainer shards them itself): every
    weight, gradient and optimizer state split in two, the same samples per step as one process.
    Generation items only, so each process's mean loss is an equal share of the whole batch's."""
    out = tmp_path / "fsdp"
    same = [*FAST, "data.ratios.vqa=0"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "unimm.train", STAGE(1), *same, f"output_dir={out}", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert "2 processes (FSDP, cpu), 8 samples per optimizer step" in r.stdout
    sharded = list((out / "checkpoints" / "step-0000004" / "pytorch_model_fsdp_0").glob("*.distcp"))
    assert len(sharded) == 2  # a shard of the weights per process
    one = train(load_train_config(STAGE(1), same + [f"output_dir={tmp_path / 'one'}", "batch_size=8"]), progress=False)
    a, b = unimm.load(str(out / "final")).model, unimm.load(str(one)).model
    from unimm.pipelines.load import build_pipeline, resolve_config

    start = build_pipeline(resolve_config("tiny"), load_train_config(STAGE(1)).seed).model
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-5, msg=name)
    lrs = [[json.loads(x)["lr"] for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (out, tmp_path / "one")]
    assert lrs[0] == lrs[1]  # one schedule step per optimizer step, not one per process
    trained = [n for n, p in a.named_parameters() if n.startswith("gen_head")]
    assert all(not torch.equal(a.get_parameter(n), start.get_parameter(n)) for n in trained)  # it did train
    # resumed from the sharded step-2 checkpoint, it ends where the uninterrupted run did
    import shutil

    shutil.rmtree(out / "checkpoints" / "step-0000004")
    shutil.rmtree(out / "final")
    r = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert r.returncode == 0 and "resumed from" in r.stdout + r.stderr, r.stderr[-3000:]
    for p, q in zip(unimm.load(str(out / "final")).model.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-5)
    r = subprocess.run([*cmd[:-2], f"output_dir={tmp_path / 'v1'}", "-q"], capture_output=True, text=True,
                       timeout=600, env={**env, "FSDP_VERSION": "1"}, cwd=ROOT)
    assert r.returncode != 0 and "FSDP on CPU processes is FSDP2: set FSDP_VERSION=2" in r.stderr


@pytest.mark.parametrize("workers", [0, 1])
def test_bad_items_in_user_data_are_counted_and_skipped_in_a_run(tmp_path, workers):
    """LLaVA JSON + caption JSONL from disk, with a corrupt image, a missing image and a malformed line.

    With DataLoader workers the skips happen in another process; they must still be reported.
    """
    from unimm.data.shapes import ShapesWorld, write_caption_jsonl, write_llava_json

    world = ShapesWorld(image_size=32, num_samples=12, seed=4)
    llava = write_llava_json(world, tmp_path / "llava", n=12)
    captions = write_caption_jsonl(ShapesWorld(image_size=32, num_samples=12, seed=5), tmp_path / "caps", n=12)
    images = sorted((tmp_path / "llava" / "images").iterdir())
    images[0].write_bytes(b"not a png")  # corrupt
    images[1].unlink()  # missing
    with open(captions, "a") as f:
        f.write('{"image": "images/000000.png", "caption": \n')  # malformed line
    cfg = load_train_config(STAGE(1), FAST + [f"output_dir={tmp_path / 'run'}", "steps=8", "batch_size=6",
                                              f"data.num_workers={workers}"])
    cfg.data.sources = {"vqa": {"format": "llava", "path": str(llava)}, "t2i": {"format": "captions", "path": str(captions)}}
    with pytest.warns(UserWarning, match="skipped unusable training items") as record:
        final = train(cfg, progress=False)
    text = str(record[-1].message)
    assert "vqa: missing image" in text and "vqa: unreadable image" in text and "t2i: malformed line" in text
    counts = dict(item.rsplit(" x", 1) for item in text.split(": ", 1)[1].split(", "))
    assert counts["t2i: malformed line"] == "1"  # found once, when the file is opened; not once per worker
    assert unimm.load(str(final)).model is not None


def test_gradient_checkpointing_gives_the_same_first_step(tmp_path):
    a = train(_cfg(2, tmp_path / "a", "steps=1", init_from=_stage1(tmp_path)), progress=False)
    b = train(_cfg(2, tmp_path / "b", "steps=1", "gradient_checkpointing=true", init_from=str(tmp_path / "s1" / "stage1" / "final")),
              progress=False)
    wa, wb = unimm.load(str(a)).model.state_dict(), unimm.load(str(b)).model.state_dict()
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_a_stage_adds_an_option_to_the_model_it_starts_from(tmp_path, capsys):
    start = _stage1(tmp_path)
    final = train(_cfg(2, tmp_path / "b", "steps=2", "optim.warmup_steps=0", "init_changes={generation: {position_embedding: true}}",
                       init_from=start), progress=False)
    model = unimm.load(str(final)).model
    assert model.config.generation.position_embedding is True
    assert model.gen_head.position.abs().sum() > 0  # it started at zero and trained
    before = unimm.load(start).model.state_dict()
    assert torch.equal(model.encoder.state_dict()["model.embeddings.patch_embedding.weight"],
                       before["encoder.model.embeddings.patch_embedding.weight"])  # frozen, loaded as saved


def test_a_stage_gives_a_saved_model_another_generation_family(tmp_path):
    """init_changes + init_fresh: the AR model's understanding path carries over as saved, while the
    new family's head and image tokenizer start as built (MetaQuery-style DiT stages, configs/recipes/dit.yaml)."""
    import yaml

    start = _stage1(tmp_path)
    models = ROOT / "configs" / "models"
    changes = {"image_tokenizer": yaml.safe_load((models / "tiny-flow.yaml").read_text())["image_tokenizer"],
               "generation": yaml.safe_load((models / "tiny-dit.yaml").read_text())["generation"],
               "sampling": {"steps": 4, "solver": "euler"}}
    with pytest.raises(unimm.config.ConfigError, match="has weights the config does not build: gen_head"):
        unimm.load(start, changes=changes)  # the AR head's weights have no place in a dit model
    with pytest.raises(ValueError, match=r"fresh names unknown part\(s\) \['head'\]"):
        unimm.load(start, changes=changes, fresh=["head"])
    with pytest.raises(ValueError, match="fresh parts need changes"):
        unimm.load(start, fresh=["gen_head"])
    with pytest.raises(ValueError, match="init_fresh names parts that init_changes rebuilds"):
        load_train_config({"init_from": start, "init_fresh": ["gen_head"]})
    with pytest.raises(ValueError, match="init_changes gives encoder new pretrained weights, but init_from's weights "
                                         "would replace them: add encoder to init_fresh"):
        load_train_config({"init_from": start, "init_changes": {"encoder": {"pretrained": "some/tower"}}})
    stage = yaml.safe_load((ROOT / "configs" / "train" / "tiny-dit-stage1.yaml").read_text())  # t2i, gen_head learns
    del stage["model"]
    cfg = load_train_config({**stage, "init_from": start, "init_changes": changes, "init_fresh": ["gen_head", "image_tokenizer"],
                             "output_dir": str(tmp_path / "dit")}, ["steps=2", "batch_size=4", "log_every=1"])
    final = train(cfg, progress=False)
    before, after = unimm.load(start).model.state_dict(), unimm.load(str(final))
    assert after.model.config.generation.paradigm == "dit" and after.model.config.image_tokenizer["type"] == "vae"
    kept = [k for k in before if k.startswith(("encoder.", "projector.", "backbone."))]
    assert kept and all(torch.equal(after.model.state_dict()[k], before[k]) for k in kept)
    assert (final / "transformer" / "config.json").is_file()  # diffusers' layout for the new generator
    image = after.generate("a red circle", seed=0)[0]
    assert image.size == (32, 32)

    # init_parts: the trained generator (and its VAE) carried onto another model's understanding path
    # (configs/recipes/dit-transfer.yaml): a stage that trains only the backbone keeps them exactly.
    other = str(train(_cfg(1, tmp_path / "other", "steps=2", "seed=3"), progress=False))  # another backbone
    spec = {**stage, "init_from": str(other), "init_changes": changes, "init_fresh": ["gen_head", "image_tokenizer"],
            "init_parts": {"gen_head": str(final), "image_tokenizer": str(final)},
            "freeze": {**stage["freeze"], "gen_head": True, "backbone": False}}
    carried = load_train_config({**spec, "output_dir": str(tmp_path / "carried")}, ["steps=1", "batch_size=4"])
    moved = unimm.load(str(train(carried, progress=False))).model.state_dict()
    source, base = after.model.state_dict(), unimm.load(str(other)).model.state_dict()
    assert all(torch.equal(moved[k], source[k]) for k in source if k.startswith(("gen_head.", "image_tokenizer.")))
    assert all(torch.equal(moved[k], base[k]) for k in base if k.startswith(("encoder.", "projector.")))
    assert not torch.equal(moved["gen_head.queries"], unimm.load(str(other), changes=changes, fresh=[
        "gen_head", "image_tokenizer"]).model.state_dict()["gen_head.queries"])  # not the fresh build's
    with pytest.raises(ValueError, match=r"unknown part\(s\) \['head'\] in init_parts"):
        load_train_config({"init_from": start, "init_parts": {"head": str(final)}})
    from unimm.training.trainer import take_parts
    wider = {**changes, "generation": {**changes["generation"], "generator": {
        **changes["generation"]["generator"], "num_queries": 4}}}
    with pytest.raises(ValueError, match=rf"init_parts: {final}'s gen_head is built with other options than this "
                                         r"model's \(generator.num_queries\)"):
        take_parts(unimm.load(str(other), changes=wider, fresh=["gen_head", "image_tokenizer"]).model,
                   {"gen_head": str(final)})
    # A resumed run reads its checkpoint, which holds every weight, not the parts' sources again
    # (they may have moved on since: here, gone).
    two = load_train_config({**spec, "output_dir": str(tmp_path / "resumed")}, ["steps=2", "batch_size=4", "save_every=1"])
    train(two, progress=False, stop_at=1)
    final.rename(final.with_name("moved"))
    resumed = unimm.load(str(train(two, resume=True, progress=False))).model.state_dict()
    assert all(torch.equal(resumed[k], source[k]) for k in source if k.startswith("gen_head."))


def test_a_stage_swaps_a_saved_models_vision_tower_for_a_pretrained_one(tmp_path):
    """init_fresh: [encoder] with encoder.pretrained: the new SigLIP's weights, the rest as saved
    (configs/recipes/xattn-tagged.yaml gives the shipped default another tower this way)."""
    from transformers import SiglipConfig, SiglipModel

    start = _stage1(tmp_path)
    torch.manual_seed(5)
    tower = SiglipModel(SiglipConfig(vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                                    "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
                                     text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                                  "num_attention_heads": 2, "vocab_size": 40}))
    tower.save_pretrained(tmp_path / "siglip")
    swapped = unimm.load(start, changes={"encoder": {"pretrained": str(tmp_path / "siglip")}}, fresh=["encoder"])
    before, after = unimm.load(start).model.state_dict(), swapped.model.state_dict()
    new = {k: v for k, v in tower.vision_model.state_dict().items()}
    enc = {k[len("encoder.model."):]: v for k, v in after.items() if k.startswith("encoder.model.")}
    assert enc.keys() <= new.keys() and all(torch.equal(v, new[k]) for k, v in enc.items())
    assert not torch.equal(after["encoder.model.embeddings.patch_embedding.weight"],
                           before["encoder.model.embeddings.patch_embedding.weight"])
    rest = [k for k in before if not k.startswith("encoder.")]
    assert rest and all(torch.equal(after[k], before[k]) for k in rest)
    # saved, the model holds the tower's weights itself: it loads without the SigLIP folder
    swapped.save_pretrained(tmp_path / "swapped")
    assert unimm.load(str(tmp_path / "swapped")).model.config.encoder.pretrained is None


def test_lr_scale_steps_a_part_slower_and_leaves_the_rest_as_it_was(tmp_path):
    start = _stage1(tmp_path)
    runs = {name: unimm.load(str(train(_cfg(2, tmp_path / name, "steps=1", "optim.warmup_steps=0", *extra,
                                            init_from=start), progress=False))).model.state_dict()
            for name, extra in {"plain": [], "scaled": ["optim.lr_scale={projector: 0.1}"]}.items()}
    before = unimm.load(start).model.state_dict()
    step = {name: {k: w[k] - before[k] for k in w if w[k].is_floating_point()} for name, w in runs.items()}
    projector = [k for k in step["plain"] if k.startswith("projector.")]
    assert projector and all(step["plain"][k].abs().max() > 0 for k in projector)
    # AdamW's first step is lr * g / (|g| + eps): a tenth of the lr gives exactly a tenth of the step.
    assert all(torch.allclose(step["scaled"][k], 0.1 * step["plain"][k], atol=1e-7) for k in projector)
    others = [k for k in step["plain"] if k.startswith(("backbone.", "gen_head."))]
    assert all(torch.equal(step["scaled"][k], step["plain"][k]) for k in others)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_default_model_recipe_configs_parse():
    """scripts/train_default.sh runs these; a typo must fail here, not an hour into a run."""
    from dataclasses import fields

    from unimm.config import apply_overrides, read_config_file
    from unimm.training.siglip import load_siglip_config
    from unimm.training.tokenizer import TokenizerTrainConfig
    from unimm.training.tokenizer import load_train_config as load_tokenizer_config

    recipes = ROOT / "configs" / "recipes"
    siglip = load_siglip_config(str(recipes / "siglip-shapes.yaml"))
    assert siglip.vision["image_size"] == 64 and len(siglip.hard_negatives) == 2
    stages = [load_train_config(str(recipes / f"stage{n}.yaml")) for n in ("1", "2", "2b", "3")]
    assert stages[0].model == "shapes-default"
    assert all(b.init_from == a.output_dir + "/final" for a, b in zip(stages, stages[1:]))  # each from the last
    assert stages[-1].export_dtype == "bfloat16"  # what gets shipped in weights/default
    dpo = load_train_config(str(recipes / "dpo.yaml"))  # the optional preference stage after stage 3
    assert dpo.init_from == stages[-1].output_dir + "/final" and dpo.dpo.beta == 0.1 and dpo.freeze["gen_head"]
    assert {s.data.cache_dir for s in stages} == {"runs/default/cache"}  # the VQ's targets, computed once
    xattn = load_train_config(str(recipes / "xattn.yaml"))  # issue 18's cross-attention run, from the shipped model
    assert xattn.init_from == "weights/default" and xattn.init_changes == {"cross_attention": {"every": 1}}
    assert xattn.steps * xattn.batch_size <= stages[1].steps * stages[1].batch_size  # within stage 2's budget
    nvlm = load_train_config(str(recipes / "xattn-lm.yaml"))  # the same with the LM learning (NVLM-X)
    assert (nvlm.init_from, nvlm.init_changes, nvlm.steps, nvlm.batch_size) == (
        xattn.init_from, xattn.init_changes, xattn.steps, xattn.batch_size)
    assert nvlm.freeze["backbone"] is False and xattn.freeze["backbone"] and nvlm.freeze["encoder"]
    tower = load_train_config(str(recipes / "xattn-encoder.yaml"))  # the same with the SigLIP learning slowly
    assert (tower.init_from, tower.init_changes, tower.steps, tower.batch_size) == (
        xattn.init_from, xattn.init_changes, xattn.steps, xattn.batch_size)
    assert tower.freeze["encoder"] is False and tower.freeze["backbone"] and tower.optim.lr_scale == {"encoder": 0.2}
    # the fourth try: the frozen-tower run on a SigLIP pretrained with caption-token tagging, in two rounds
    tagged = [load_siglip_config(str(recipes / f"siglip-shapes-tagged{k}.yaml")) for k in ("", "-continue")]
    assert tagged[0].tagging_weight > 0 and tagged[0].init_from is None
    assert tagged[1].init_from == tagged[0].output_dir + "/model" and tagged[1].tagging_weight > 0
    xt = load_train_config(str(recipes / "xattn-tagged.yaml"))  # (the fifth: the fourth round's tower, last layer)
    assert xt.init_changes == {**xattn.init_changes, "encoder": {"pretrained": "runs/siglip-tagged4/model",
                                                                 "feature_layer": -1}}
    assert xt.init_fresh == ["encoder"] and xt.freeze == xattn.freeze
    assert (xt.init_from, xt.steps, xt.batch_size) == (xattn.init_from, xattn.steps, xattn.batch_size)
    # the ninth try, which meets issue 18's bar: grounding at the word and the answer, on the region-tagged tower
    grounded = load_train_config(str(recipes / "xattn-grounding.yaml"))
    tower = grounded.init_changes["encoder"]["pretrained"]
    assert (ROOT / tower / "model.safetensors").is_file() and grounded.init_fresh == ["encoder"]
    assert grounded.grounding_at == "both" and grounded.loss_weights["grounding"] > 0 and grounded.freeze["encoder"]
    assert (grounded.init_from, grounded.steps, grounded.batch_size) == ("weights/default", 3000, 16)
    dit = load_train_config(str(recipes / "dit.yaml"))  # the DiT default: the AR default's understanding path, frozen
    assert dit.init_from == "weights/default" and dit.init_fresh == ["gen_head", "image_tokenizer"]
    assert dit.init_changes["generation"]["paradigm"] == "dit" and dit.export_dtype == "bfloat16"
    assert dit.init_changes["image_tokenizer"] == {"checkpoint": "checkpoints/tokenizers/vae-shapes64"}
    assert not dit.freeze["gen_head"] and all(dit.freeze[p] for p in ("encoder", "projector", "backbone"))
    # The DiT default's steering modules (issue 16): each added to the DiT stage's export, only it trained.
    for name, part, key in (("dit-controlnet", "controlnets", "control"), ("dit-ip-adapter", "ip_adapter", "reference")):
        stage = load_train_config(str(recipes / f"{name}.yaml"))
        assert stage.init_from == dit.output_dir + "/final" and list(stage.init_changes["generation"]["generator"]) == [part]
        assert stage.freeze[f"gen_head.{part}"] is False and all(stage.freeze[p] for p in MODEL_PARTS)
        (source,) = stage.data.sources.values()
        assert source["image_size"] == 64 and key in source and stage.export_dtype == "bfloat16"
    script = (ROOT / "scripts" / "train_default.sh").read_text().replace("$T/", "configs/tokenizers/")
    joined = script.replace("\\\n", " ")  # continued lines
    runs = [ln.split() for ln in joined.splitlines() if ln.startswith("unimm train")]
    assert [r[:3] for r in runs] == [
        ["unimm", "train-siglip", "configs/recipes/siglip-shapes.yaml"],
        ["unimm", "train-siglip", "configs/recipes/siglip-shapes-tagged.yaml"],
        *[["unimm", "train-siglip", "configs/recipes/siglip-shapes-tagged-continue.yaml"]] * 3,
        ["unimm", "train-tokenizer", "configs/tokenizers/vq-shapes64-4x.yaml"],
        *[["unimm", "train-tokenizer", f"configs/tokenizers/vq-shapes64-4x-{k}.yaml"] for k in ("continue", "continue")],
        *[["unimm", "train-tokenizer", "configs/tokenizers/vq-shapes64-4x-edges.yaml"]] * 3,
        *[["unimm", "train", f"configs/recipes/stage{n}.yaml"] for n in ("1", "2", "2b", "3", "4-tagged", "6-long", "7-pairs", "8-fresh", "9-fresh", "10-fresh", "11-fresh")]]
    # The tagged SigLIP's rounds: each continues the one before; stage 4 swaps in the last.
    rounds = [load_siglip_config(r[2], r[3:]) for r in runs[1:5]]
    assert all(b.init_from == a.output_dir + "/model" for a, b in zip(rounds, rounds[1:]))
    assert len({r.data["seed"] for r in rounds}) == 4  # fresh scenes each round
    stage4 = load_train_config(runs[-7][2])
    assert stage4.init_from == stages[-1].output_dir + "/final" and stage4.init_fresh == ["encoder"]
    assert stage4.init_changes["encoder"]["pretrained"] == rounds[-1].output_dir + "/model"
    assert stage4.freeze == stages[-1].freeze and stage4.data.cache_dir == stages[-1].data.cache_dir
    assert stage4.export_dtype == "bfloat16"
    # Stage 6: stage 4 trained on, its pairs named in reading order.
    stage6 = load_train_config(runs[-6][2])
    assert stage6.init_from == stage4.output_dir + "/final" and not stage6.init_changes
    assert stage6.freeze == stage4.freeze and stage6.data.cache_dir == stage4.data.cache_dir
    assert {s["mention_order"] for s in stage6.data.sources.values()} == {"raster"}
    # Stage 7: stage 6 trained on with pair-heavy fresh sets beside its own.
    stage7 = load_train_config(runs[-5][2])
    assert stage7.init_from == stage6.output_dir + "/final" and not stage7.init_changes
    assert stage7.freeze == stage6.freeze and stage7.data.cache_dir == stage6.data.cache_dir
    assert {s["mention_order"] for s in stage7.data.sources.values()} == {"raster"}
    assert set(stage6.data.sources) < set(stage7.data.sources)
    assert any(s.get("mix", {}).get("pair", 0) > 0.3 for s in stage7.data.sources.values())
    # Stages 8 to 11 (11 shipped): each on scenes no earlier stage drew; the last installed by the script.
    stage8, stage9, stage10, stage11 = (load_train_config(r[2]) for r in runs[-4:])
    seen = {s["seed"] for stage in (stage6, stage7) for s in stage.data.sources.values()}
    for before, stage in ((stage7, stage8), (stage8, stage9), (stage9, stage10), (stage10, stage11)):
        assert stage.init_from == before.output_dir + "/final" and stage.freeze == before.freeze
        assert not seen & {s["seed"] for s in stage.data.sources.values()}
        seen |= {s["seed"] for s in stage.data.sources.values()}
    assert stage11.data.ratios == stage10.data.ratios == stage9.data.ratios
    assert stage11.export_dtype == "bfloat16" and f"unimm.load('{stage11.output_dir}/final', " in script
    assert "changes={'sampling': {'best_of': 8}}).save_pretrained('weights/default'" in script  # as shipped
    # The DiT default's generator trained on, its steering modules and the rest frozen.
    more = load_train_config(str(recipes / "dit-continue.yaml"))
    assert more.init_from == "weights/default-dit" and not more.init_changes and more.export_dtype == "bfloat16"
    assert not more.freeze["gen_head"] and more.freeze["gen_head.controlnets"] and more.freeze["gen_head.ip_adapter"]
    assert all(more.freeze[p] for p in ("encoder", "projector", "backbone", "image_tokenizer"))
    # ... and trained on again from there, on scenes neither run drew, everything else as it was.
    again = load_train_config(str(recipes / "dit-continue2.yaml"))
    assert again.init_from == more.output_dir + "/final" and again.freeze == more.freeze
    assert again.data.sources["t2i"]["seed"] not in {more.data.sources["t2i"]["seed"], dit.data.sources["t2i"]["seed"]}
    assert again.export_dtype == "bfloat16" and again.data.cache_dir == more.data.cache_dir
    # The rebuild (on stage 10's understanding path): dit.yaml's export trained on, pairs and counts
    # weighted up, on scenes no DiT run drew; nothing else trains.
    fresh = load_train_config(str(recipes / "dit-fresh.yaml"))
    assert fresh.init_from == dit.output_dir + "/final" and not fresh.init_changes
    assert fresh.freeze == {p: p != "gen_head" for p in MODEL_PARTS}
    drawn = {s.data.sources["t2i"]["seed"] for s in (dit, more, again)}
    assert fresh.data.sources["t2i"]["seed"] not in drawn and fresh.data.cache_dir == dit.data.cache_dir
    assert fresh.data.sources["t2i"]["mix"]["pair"] > 0.3 and fresh.export_dtype == "bfloat16"
    # The transfer: dit.yaml's design on stage 10's understanding path, its generator and VAE taken
    # from the first DiT default (dit-continue2.yaml's), trained on dit-fresh.yaml's scenes (whose
    # cached latents it reuses).
    transfer = load_train_config(str(recipes / "dit-transfer.yaml"))
    assert transfer.init_from == stage10.output_dir + "/final"
    assert (transfer.init_changes, transfer.init_fresh) == (dit.init_changes, dit.init_fresh)
    first = again.output_dir + "/final"
    assert transfer.init_parts == {"gen_head": first, "image_tokenizer": first}
    assert transfer.freeze == fresh.freeze and transfer.data.sources == fresh.data.sources
    assert transfer.data.cache_dir == fresh.data.cache_dir and transfer.export_dtype == "bfloat16"
    # ... then its ControlNet and IP-Adapter, each started from the first DiT default's, each cached.
    control = load_train_config(str(recipes / "dit-transfer-controlnet.yaml"))
    ip = load_train_config(str(recipes / "dit-transfer-ip-adapter.yaml"))
    assert control.init_from == transfer.output_dir + "/final" and ip.init_from == control.output_dir + "/final"
    assert control.init_parts == {"gen_head.controlnets": first}
    assert ip.init_parts == {"gen_head.ip_adapter": first}
    assert control.data.sources["t2i"]["control"] == ["edges"] and ip.data.sources["pairs"]["reference"]
    for stage, module in ((control, "gen_head.controlnets"), (ip, "gen_head.ip_adapter")):
        assert stage.freeze == {**{p: True for p in MODEL_PARTS}, module: False}
        assert stage.data.cache_dir and stage.export_dtype == "bfloat16"
    used = {s.data.sources[n]["seed"] for s in (dit, more, again, fresh) for n in s.data.sources}
    assert not used & {control.data.sources["t2i"]["seed"], ip.data.sources["pairs"]["seed"]}
    # Stage 5 (measured, not shipped): stage 4 with the fifth SigLIP round, the one with region tags.
    regions = load_siglip_config(str(recipes / "siglip-shapes-regions.yaml"))
    assert regions.init_from == rounds[-1].output_dir + "/model" and regions.region_tagging_weight > 0
    assert regions.data["seed"] not in {r.data["seed"] for r in rounds}
    stage5 = load_train_config(str(recipes / "stage5-regions.yaml"))
    assert stage5.init_from == stage4.output_dir + "/final" and stage5.init_fresh == ["encoder"]
    assert stage5.init_changes["encoder"]["pretrained"] == regions.output_dir + "/model"
    assert stage5.freeze == stage4.freeze and stage5.data.cache_dir == stage4.data.cache_dir
    # The masked and flow paradigms' models (issue 12): the shipped default trained on with another family.
    masked = load_train_config(str(recipes / "masked.yaml"))
    assert masked.init_from == "weights/default" and masked.init_changes["generation"] == {"paradigm": "masked"}
    assert not masked.init_fresh  # the AR head's weights carry over (tests/test_paradigms.py)
    assert masked.init_changes["sampling"] == {"guidance_scale": 3.0, "temperature": 1.0, "steps": 24}  # BENCHMARKS' choice
    assert masked.data.cache_dir == stage7.data.cache_dir and masked.export_dtype == "bfloat16"
    flow = load_train_config(str(recipes / "flow.yaml"))
    assert flow.init_from == "weights/default" and flow.init_changes["generation"]["paradigm"] == "flow"
    assert flow.init_fresh == ["gen_head", "image_tokenizer"] and flow.init_changes["image_tokenizer"] == dit.init_changes["image_tokenizer"]
    assert flow.data.sources["t2i"] == dit.data.sources["t2i"] and flow.data.cache_dir == dit.data.cache_dir  # latents reused
    for stage in (masked, flow):
        assert stage.freeze == stage7.freeze and {"vqa", "text"} <= set(stage.data.sources)
    # The VQ chain: each run starts from the one before, and the model reads the last.
    outs = []
    for r in runs[5:11]:
        data = apply_overrides(read_config_file(r[2]), r[3:])
        assert set(data) <= {f.name for f in fields(TokenizerTrainConfig)}
        if outs:
            assert data["tokenizer"] == {"checkpoint": outs[-1] + "/tokenizer"}
        outs.append(data["output_dir"])
    assert load_tokenizer_config(runs[5][2]).tokenizer["image_size"] == 64
    model = read_config_file(str(ROOT / "configs" / "models" / "shapes-default.yaml"))
    assert model["image_tokenizer"] == {"checkpoint": outs[-1] + "/tokenizer"}
    assert model["encoder"]["pretrained"] == siglip.output_dir + "/model"


def test_the_dit_default_script_reads_only_what_earlier_runs_made():
    """scripts/train_default_dit.sh: every model a run starts from or takes a part from is made by an
    earlier run of the script or by scripts/train_default.sh, no run writes where another did, and
    what it installs is the last run's export (with both steering modules)."""
    script = (ROOT / "scripts" / "train_default_dit.sh").read_text()
    script = script.replace("$R/", "configs/recipes/").replace(' "$@"', "").replace("\\\n", " ")
    runs = [ln.split()[2:] for ln in script.splitlines() if ln.startswith("unimm train ")]
    assert runs[0][0].endswith("dit.yaml") and runs[-1][0].endswith("dit-transfer-continue.yaml")
    made = {"runs/default/stage3/final", "runs/default/stage10/final"}  # scripts/train_default.sh's
    configs = []
    for path, *overrides in runs:
        cfg = load_train_config(path, overrides)
        read = {cfg.init_from, *(cfg.init_parts or {}).values()}
        assert read <= made, (path, overrides, read - made)
        assert cfg.output_dir + "/final" not in made, f"{path} writes over an earlier run's {cfg.output_dir}"
        made.add(cfg.output_dir + "/final")
        configs.append(cfg)
    assert configs[0].init_from == "runs/default/stage3/final"  # the first DiT default's understanding path
    controlnet_seeds = [c.data.sources["t2i"]["seed"] for c in configs if c.freeze.get("gen_head.controlnets") is False]
    assert len(controlnet_seeds) == 6 and len(set(controlnet_seeds)) == 6  # each run on scenes of its own
    assert (f"unimm.load('{configs[-1].output_dir}/final', changes={{'sampling': {{'best_of': 8}}}})"
            ".save_pretrained('weights/default-dit'") in script
    steering = load_train_config(runs[-2][0]).init_changes["generation"]["generator"]
    assert set(steering) == {"ip_adapter"} and "controlnets" in load_train_config(runs[-3][0]).init_changes[
        "generation"]["generator"]
    # The last run trains the generator alone, on the export that has both modules.
    last = configs[-1]
    assert last.init_from == configs[-2].output_dir + "/final"
    assert last.freeze["gen_head.controlnets"] and last.freeze["gen_head.ip_adapter"] and not last.freeze["gen_head"]


@pytest.mark.parametrize("model", ["tiny", "tiny-flow"])
def test_cached_targets_train_exactly_as_encoding_every_step(tmp_path, model):
    """data.cache_dir: the frozen tokenizer's targets are computed once and give the same run."""
    over = ["data.sources.t2i.num_samples=48", f"model={model}", "steps=3", "save_every=3"]
    plain = train(_cfg(1, tmp_path / "plain", *over), progress=False)
    cache = tmp_path / "cache"
    cached = train(_cfg(1, tmp_path / "cached", *over, f"data.cache_dir={cache}"), progress=False)
    a, b = unimm.load(str(plain)).model.state_dict(), unimm.load(str(cached)).model.state_dict()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    log = lambda run: [json.loads(x)["loss"] for x in (tmp_path / run / "stage1" / "metrics.jsonl").read_text().splitlines()]
    assert log("plain") == pytest.approx(log("cached"), abs=1e-6)
    files = sorted(p.name for p in cache.iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".safetensors")
    # Reused, not rebuilt: a second run reads the same files (the tokenizer and source did not change).
    mtime = (cache / files[1]).stat().st_mtime_ns
    train(_cfg(1, tmp_path / "again", *over, f"data.cache_dir={cache}", "steps=1", "save_every=1"), progress=False)
    assert (cache / files[1]).stat().st_mtime_ns == mtime and len(list(cache.iterdir())) == 2
    # The cached targets are what the tokenizer gives for those images.
    from unimm.data.formats import build_source
    from unimm.images import fit_square, to_tensor
    from unimm.training.cache import _compute

    pipe = unimm.load(str(plain))
    source = build_source({"format": "shapes", "task": "generation", "image_size": 32, "num_samples": 4, "seed": 2})
    captions, swapped, targets, valid, control = _compute(source, pipe.model, 2, False)
    assert control == {}  # no ControlNet maps asked for
    assert valid.all() and captions == [source.get(j)["caption"] for j in range(4)]
    assert swapped == [source.get(j).get("swapped_caption") for j in range(4)] and any(swapped)
    images = torch.stack([to_tensor(fit_square(source.get(j)["image"], 32, "resize", (127, 127, 127)),
                                    (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)) for j in range(4)])
    with torch.no_grad():
        direct = pipe.model.images_to_targets(images)
    assert torch.allclose(targets.to(direct.dtype), direct, atol=1e-5)


def test_a_target_cache_needs_a_frozen_image_tokenizer(tmp_path):
    with pytest.raises(ValueError, match="data.cache_dir keeps the frozen image tokenizer's targets"):
        _cfg(1, tmp_path, "data.cache_dir=x", "freeze.image_tokenizer=false")


def test_a_changed_source_file_gets_another_target_cache(tmp_path):
    from unimm.training.cache import cache_key, source_fingerprint

    captions = tmp_path / "captions.jsonl"
    captions.write_text('{"image": "a.png", "caption": "a red circle"}\n')
    spec = {"format": "captions", "path": str(captions)}
    before = cache_key(spec, 32, "tok", source_fingerprint(spec, 1))
    captions.write_text('{"image": "a.png", "caption": "a blue square"}\n{"image": "b.png", "caption": "x"}\n')
    assert cache_key(spec, 32, "tok", source_fingerprint(spec, 2)) != before
    assert cache_key(spec, 32, "tok", source_fingerprint(spec, 1)) != before  # same length, other contents


def test_compiled_training_matches_eager(tmp_path):
    """`compile: true` runs each decoder layer through torch.compile (the image-token splicing,
    whose sizes depend on the batch, stays eager): the same losses and weights as eager."""
    runs = {}
    for name in ("eager", "compiled"):
        over = ["steps=3", f"compile={name == 'compiled'}", f"output_dir={tmp_path / name}"]
        runs[name] = train(load_train_config(STAGE(1), FAST + over), progress=False)
    losses = [[json.loads(x)["loss"] for x in (tmp_path / n / "metrics.jsonl").read_text().splitlines()] for n in runs]
    assert len(losses[0]) == 3
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    a, b = (unimm.load(str(d)).model for d in runs.values())
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4, msg=name)


def test_mixed_precision_resolves_against_the_hardware(monkeypatch):
    import warnings

    from unimm.training.precision import ALLOW_EMULATED, cpu_has_native_bf16, resolve_mixed_precision

    monkeypatch.delenv(ALLOW_EMULATED, raising=False)
    assert resolve_mixed_precision("auto", cuda=True) == "bf16"
    assert resolve_mixed_precision("auto", cuda=False) == "no"
    assert resolve_mixed_precision("no", cuda=True) == "no"
    assert resolve_mixed_precision("bf16", cuda=True, native_bf16=False) == "bf16"  # a GPU's own bf16
    assert resolve_mixed_precision("bf16", cuda=False, native_bf16=True) == "bf16"
    with pytest.warns(UserWarning, match=r"no native bf16 \(no AVX512-BF16 or AMX\).*training in float32"):
        assert resolve_mixed_precision("bf16", cuda=False, native_bf16=False) == "no"
    monkeypatch.setenv(ALLOW_EMULATED, "1")  # kept on request, without a word
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_mixed_precision("bf16", cuda=False, native_bf16=False) == "bf16"
    with pytest.raises(ValueError, match="mixed_precision must be one of auto, no, bf16, fp16, got 'bf32'"):
        resolve_mixed_precision("bf32", cuda=False)
    assert cpu_has_native_bf16() == (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def test_bf16_on_a_cpu_without_native_bf16_trains_in_float32_and_says_so(tmp_path, monkeypatch, capsys):
    """Emulated bf16 ran a recipe's stage 22-23x slower than float32 on an AVX2 CPU (BENCHMARKS.md):
    the run falls back, with the same losses as a float32 run, and its header names the precision."""
    monkeypatch.setattr("unimm.training.precision.cpu_has_native_bf16", lambda: False)
    monkeypatch.delenv("UNIMM_ALLOW_EMULATED_BF16", raising=False)
    runs = {}
    for name in ("no", "bf16"):
        cfg = _cfg(1, tmp_path / name, "steps=2", f"mixed_precision={name!r}")
        if name == "bf16":
            with pytest.warns(UserWarning, match="no native bf16"):
                train(cfg, progress=False)
        else:
            train(cfg, progress=False)
        runs[name] = [json.loads(x)["loss"] for x in (tmp_path / name / "stage1" / "metrics.jsonl").read_text().splitlines()]
        assert "samples per optimizer step, float32" in capsys.readouterr().out
    assert runs["bf16"] == runs["no"]
    with pytest.raises(ValueError, match="mixed_precision must be one of auto, no, bf16, fp16, got 'bf32'"):
        load_train_config(STAGE(1), ["mixed_precision=bf32"])


def test_bf16_on_a_cpu_enlarges_onednns_kernel_cache_unless_the_user_set_it(monkeypatch):
    from unimm.training.precision import enlarge_kernel_cache

    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    enlarge_kernel_cache("no", cuda=False)
    enlarge_kernel_cache("bf16", cuda=True)  # a GPU's bf16 does not go through oneDNN
    assert "ONEDNN_PRIMITIVE_CACHE_CAPACITY" not in os.environ
    enlarge_kernel_cache("bf16", cuda=False)
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "16384"
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "4096")
    enlarge_kernel_cache("bf16", cuda=False)
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "4096"


def test_the_stage_config_owns_accumulation_and_deepspeeds_batch_and_clipping(tmp_path, monkeypatch):
    from accelerate.commands.config.config_args import load_config_from_file

    from unimm.training.trainer import deepspeed_settings

    cfg = _cfg(1, tmp_path, "batch_size=6", "grad_accum=3", "optim.grad_clip=0.5")
    assert deepspeed_settings(cfg) == {"train_micro_batch_size_per_gpu": 6, "gradient_accumulation_steps": 3,
                                       "gradient_clipping": 0.5}
    root = Path(__file__).resolve().parents[1] / "configs" / "accelerate"
    for name in ("ddp.yaml", "fsdp.yaml", "deepspeed-zero2.yaml"):  # accelerate's own reader takes each
        launch = load_config_from_file(str(root / name))
        assert "gradient_accumulation_steps" not in (launch.deepspeed_config or {}), name
    # DeepSpeed on a CPU would silently run as DDP (accelerate's cpu=True) or count one process: refused.
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ValueError, match="DeepSpeed .* needs GPUs; on CPUs run several processes with torchrun"):
        train(cfg, progress=False)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    # A launcher's accumulation (accelerate reads its variable over the value passed) yields to the stage's.
    import unimm.training.trainer as trainer

    batches = []
    step_losses = trainer._step_losses
    monkeypatch.setattr(trainer, "_step_losses", lambda *a, **k: batches.append(1) or step_losses(*a, **k))
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "4")
    cfg = _cfg(1, tmp_path, "steps=2", "grad_accum=1", "log_every=1")
    with pytest.warns(UserWarning, match="gradient accumulation 4; the stage config's grad_accum=1 is used"):
        train(cfg, progress=False)
    records = [json.loads(x) for x in (tmp_path / "stage1" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and len(batches) == 2  # one batch per optimizer step
