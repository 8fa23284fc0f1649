"""Training-data readers (unimm.data.formats): record shapes, skip counting, stable indices, config errors."""
from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from unimm.config import ConfigError
from unimm.data.formats import (
    CaptionJsonlSource, HFDatasetSource, LlavaJsonSource, ShapesSource, WebDatasetSource, build_source,
)
from unimm.data.shapes import ShapesWorld, write_caption_jsonl, write_llava_json

SIZE = 32


@pytest.fixture(scope="module")
def world() -> ShapesWorld:
    return ShapesWorld(num_samples=8, image_size=SIZE, seed=0)


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def same_record(a: dict, b: dict) -> bool:
    """Records equal, comparing images by pixels."""
    def norm(r):
        return {k: ([im.tobytes() for im in v] if k == "images" else v.tobytes() if k == "image" else v)
                for k, v in r.items()}
    return norm(a) == norm(b)


def check_understanding(record: dict, n_images: int) -> None:
    assert set(record) == {"task", "images", "turns"} and record["task"] == "understanding"
    assert len(record["images"]) == n_images
    assert all(isinstance(im, Image.Image) and im.mode == "RGB" for im in record["images"])
    assert record["turns"] and all(isinstance(q, str) and isinstance(a, str) for q, a in record["turns"])


def check_generation(record: dict) -> None:
    assert set(record) - {"regions"} == {"task", "image", "caption"} and record["task"] == "generation"
    for region in record.get("regions", []):  # optional: boxes in 0-1 of the image, each with its words
        x0, y0, x1, y1 = region["box"]
        assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 and region["text"].strip()
    assert isinstance(record["image"], Image.Image) and record["image"].mode == "RGB"
    assert isinstance(record["caption"], str) and record["caption"]


# --------------------------------------------------------------------------- LLaVA


def conv(*values: str) -> list[dict]:
    return [{"from": "human" if k % 2 == 0 else "gpt", "value": v} for k, v in enumerate(values)]


@pytest.fixture
def llava_dir(tmp_path, world) -> Path:
    path = write_llava_json(world, tmp_path, n=3, max_turns=2)
    records = json.loads(path.read_text())
    (tmp_path / "images" / "corrupt.png").write_bytes(b"this is not a png")
    records += [
        {"id": "text-only", "conversations": conv("What is 2+2?", "four")},                      # 3
        {"id": "missing", "image": "images/nope.png", "conversations": conv("<image>\nColour?", "red")},  # 4
        {"id": "corrupt", "image": "images/corrupt.png", "conversations": conv("<image>\nColour?", "red")},  # 5
        {"id": "gpt-first", "image": "images/000000.png", "conversations": conv("x", "y")[::-1]},  # 6
        {"id": "two-marks", "image": "images/000000.png",
         "conversations": conv("<image>\n<image>\nSame?", "no")},                                 # 7
        {"id": "two-images", "image": ["images/000000.png", "images/000001.png"],
         "conversations": conv("<image> and <image>: same?", "no", "Sure?", "yes")},             # 8
        {"id": "no-marks", "image": "images/000002.png", "conversations": conv("Colour?", "red")},  # 9
        {"id": "empty-answer", "image": "images/000000.png", "conversations": conv("<image>\nQ?", " ")},  # 10
        ["not", "an", "object"],                                                                   # 11
    ]
    path.write_text(json.dumps(records))
    return tmp_path


def test_llava_records(llava_dir, world):
    src = LlavaJsonSource(llava_dir / "llava.json")
    assert len(src) == 12 and src.task == "understanding" and "llava" in src.name
    r = src.get(0)
    check_understanding(r, 1)
    qa = world.sample(0)["qa"]
    assert r["turns"] == [(f"<image>\n{qa[0].question}", qa[0].answer), (qa[1].question, qa[1].answer)]
    assert r["images"][0].tobytes() == world.sample(0)["image"].tobytes()
    text_only = src.get(3)
    assert text_only == {"task": "understanding", "images": [], "turns": [("What is 2+2?", "four")]}
    check_understanding(src.get(8), 2)
    assert len(src.get(8)["turns"]) == 2
    check_understanding(src.get(9), 1)  # no placeholders: allowed, the caller places the image
    assert same_record(src.get(0), src.get(0)) and same_record(src.get(-12), src.get(0))
    assert src.skipped == Counter({"malformed entry": 1})  # entry 11 is no object: counted at construction


def test_llava_bad_items_are_counted_once(llava_dir):
    src = LlavaJsonSource(llava_dir / "llava.json", image_root=llava_dir)
    bad = {4: "missing image", 5: "unreadable image", 6: "malformed conversation",
           7: "image/placeholder mismatch", 10: "empty text", 11: "malformed entry"}
    for _ in range(2):  # a bad item met again is not counted again
        for i in range(len(src)):
            assert (src.get(i) is None) == (i in bad)
    assert src.skipped == Counter(bad.values())
    assert src.skipped_items == bad


def test_llava_jsonl_malformed_line_keeps_its_slot(tmp_path, world):
    write_llava_json(world, tmp_path, n=2)
    records = json.loads((tmp_path / "llava.json").read_text())
    lines = [json.dumps(records[0]), '{"id": "broken", "conversations": [', "", json.dumps(records[1])]
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    src = LlavaJsonSource(tmp_path / "data.jsonl")
    assert len(src) == 3  # the blank line is no record; the malformed one keeps index 1
    assert src.skipped == Counter({"malformed line": 1})  # counted at construction
    assert src.get(1) is None and src.skipped == Counter({"malformed line": 1})
    check_understanding(src.get(0), 1)
    check_understanding(src.get(2), 1)
    with pytest.raises(IndexError):
        src.get(3)


# --------------------------------------------------------------------------- caption JSONL


@pytest.fixture
def captions_path(tmp_path, world) -> Path:
    path = write_caption_jsonl(world, tmp_path, n=3)
    (tmp_path / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    extra = [
        json.dumps({"image": "images/000000.png", "text": "caption under 'text'"}),  # 3
        "{this is not json",                                                          # 4 malformed line
        json.dumps({"image": "images/missing.png", "caption": "gone"}),               # 5 missing image
        json.dumps({"image": "images/corrupt.png", "caption": "bad"}),                # 6 unreadable image
        json.dumps({"image": "images/000001.png", "caption": "   "}),                 # 7 empty text
    ]
    with path.open("a") as f:
        f.write("\n".join(extra) + "\n")
    return path


def test_captions_generation(captions_path, world):
    src = CaptionJsonlSource(captions_path)
    assert len(src) == 8 and src.task == "generation"
    r = src.get(1)
    check_generation(r)
    assert r["caption"] == world.sample(1)["caption"]
    assert r["image"].tobytes() == world.sample(1)["image"].tobytes()
    assert src.get(3)["caption"] == "caption under 'text'"
    assert same_record(src.get(2), src.get(2))
    assert [src.get(i) is None for i in range(4, 8)] == [True] * 4
    assert src.skipped == Counter({"malformed line": 1, "missing image": 1, "unreadable image": 1, "empty text": 1})


def test_captions_as_text_reads_no_image(captions_path, world):
    src = CaptionJsonlSource(captions_path, task="text")
    assert src.task == "text"
    assert src.get(0) == {"task": "text", "text": world.sample(0)["caption"]}
    assert src.get(5) == {"task": "text", "text": "gone"}  # the missing image does not matter
    assert src.get(6) is not None and src.get(7) is None
    assert src.skipped == Counter({"malformed line": 1, "empty text": 1})


# --------------------------------------------------------------------------- WebDataset


def write_tar(path: Path, files: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def shards(tmp_path, world) -> Path:
    s = [world.sample(i) for i in range(5)]
    write_tar(tmp_path / "data-000.tar", [
        ("s0.png", png_bytes(s[0]["image"])), ("s0.txt", s[0]["caption"].encode() + b"\n"),
        ("s1.txt", s[1]["caption"].encode()), ("s1.png", png_bytes(s[1]["image"])),  # order within a key is free
        ("s2.jpg", b"not a jpeg"), ("s2.txt", b"corrupt image"),
    ])
    write_tar(tmp_path / "data-001.tar", [
        ("sub/s3.png", png_bytes(s[3]["image"])),
        ("sub/s3.json", json.dumps({"caption": s[3]["caption"], "conversations": conv(
            "<image>\n" + s[3]["qa"][0].question, s[3]["qa"][0].answer)}).encode()),
        ("s4.txt", b"a caption without its image"),
        ("s5.png", png_bytes(s[4]["image"])), ("s5.json", b"{broken json"),
    ])
    return tmp_path


def test_webdataset_generation(shards, world):
    src = WebDatasetSource(str(shards / "data-{000..001}.tar"))
    assert len(src) == 6 and src.task == "generation"
    r = src.get(0)
    check_generation(r)
    assert r["caption"] == world.sample(0)["caption"]  # the .txt's trailing newline is stripped
    assert r["image"].tobytes() == world.sample(0)["image"].tobytes()
    assert src.get(1)["caption"] == world.sample(1)["caption"]
    assert src.get(3)["caption"] == world.sample(3)["caption"]  # from the .json
    assert same_record(src.get(3), src.get(3))
    assert src.get(2) is None and src.get(4) is None and src.get(5) is None
    assert src.skipped == Counter({"unreadable image": 1, "missing image": 1, "malformed entry": 1})
    # Globs and lists name the same shards, in the same order.
    assert len(WebDatasetSource(str(shards / "data-*.tar"))) == 6
    assert len(WebDatasetSource([shards / "data-001.tar"])) == 3


def test_webdataset_understanding_and_text(shards, world):
    und = WebDatasetSource(shards / "data-001.tar", task="understanding")
    r = und.get(0)
    check_understanding(r, 1)
    qa = world.sample(3)["qa"][0]
    assert r["turns"] == [("<image>\n" + qa.question, qa.answer)]
    assert und.get(1) is None and und.skipped == Counter({"missing text": 1})
    text = WebDatasetSource(shards / "data-001.tar", task="text")
    assert text.get(1) == {"task": "text", "text": "a caption without its image"}


def test_webdataset_truncated_shard_is_counted(shards):
    data = (shards / "data-000.tar").read_bytes()
    cut = shards / "cut.tar"
    cut.write_bytes(data[: len(data) // 3])
    src = WebDatasetSource(cut)
    assert src.skipped["truncated shard"] == 1
    assert len(src) >= 1
    for i in range(len(src)):  # whatever was indexed reads or is skipped, never crashes
        src.get(i)


def test_webdataset_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        WebDatasetSource(tmp_path / "absent.tar")
    with pytest.raises(ConfigError, match="no WebDataset shards match"):
        WebDatasetSource(str(tmp_path / "*.tar"))
    (tmp_path / "x.tar.gz").write_bytes(b"\x1f\x8b\x08junk")
    with pytest.raises(ConfigError, match="uncompressed"):
        WebDatasetSource(tmp_path / "x.tar.gz")


# --------------------------------------------------------------------------- Hugging Face datasets


def test_hf_parquet(tmp_path, world):
    datasets = pytest.importorskip("datasets")
    s = [world.sample(i) for i in range(3)]
    ds = datasets.Dataset.from_dict({
        "image": [{"bytes": png_bytes(s[0]["image"]), "path": None},
                  {"bytes": b"corrupt", "path": None},
                  {"bytes": png_bytes(s[2]["image"]), "path": None}],
        "text": [s[0]["caption"], s[1]["caption"], ""],
        "other": [1, 2, 3],
    }).cast_column("image", datasets.Image())
    ds.to_parquet(str(tmp_path / "train.parquet"))
    src = HFDatasetSource(tmp_path / "train.parquet", cache_dir=str(tmp_path / "cache"))
    assert len(src) == 3 and src.task == "generation"
    r = src.get(0)
    check_generation(r)
    assert r["caption"] == s[0]["caption"] and r["image"].tobytes() == s[0]["image"].tobytes()
    assert same_record(src.get(0), src.get(0))
    assert src.get(1) is None and src.get(2) is None
    assert src.skipped == Counter({"unreadable image": 1, "empty text": 1})
    text = HFDatasetSource(ds, task="text")  # an already-loaded Dataset
    assert text.get(1) == {"task": "text", "text": s[1]["caption"]}
    with pytest.raises(ConfigError, match="no 'title' column"):
        HFDatasetSource(ds, caption_column="title")


def test_hf_imagefolder(tmp_path, world):
    pytest.importorskip("datasets")
    folder = tmp_path / "folder"
    folder.mkdir()
    for i in range(3):
        world.sample(i)["image"].save(folder / f"{i}.png")
    (folder / "2.png").write_bytes(b"broken")
    (folder / "metadata.jsonl").write_text("".join(
        json.dumps({"file_name": f"{i}.png", "caption": world.sample(i)["caption"]}) + "\n" for i in range(3)))
    src = build_source({"format": "hf", "path": str(folder), "cache_dir": str(tmp_path / "cache")})
    assert len(src) == 3
    records = [src.get(i) for i in range(3)]
    by_caption = {r["caption"]: r for r in records if r is not None}
    assert len(by_caption) == 2 and src.skipped == Counter({"unreadable image": 1})
    for i in range(2):
        check_generation(by_caption[world.sample(i)["caption"]])


def test_hf_understanding(world):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({
        "image": [png_bytes(world.sample(0)["image"]), None],
        "conversations": [conv("<image>\nColour?", "red"), conv("Hi?", "hello")],
    })
    src = HFDatasetSource(ds, task="understanding")
    check_understanding(src.get(0), 1)
    assert src.get(1) == {"task": "understanding", "images": [], "turns": [("Hi?", "hello")]}


# --------------------------------------------------------------------------- shapes world


def test_shapes_source_all_tasks(world):
    opts = {"num_samples": 8, "image_size": SIZE, "seed": 0}
    und, text, gen = (ShapesSource(t, **opts) for t in ("understanding", "text", "generation"))
    assert len(und) == len(text) == len(gen) == 8
    s = world.sample(5)
    r = und.get(5)
    check_understanding(r, 1)
    assert r["images"][0].size == (SIZE, SIZE)
    assert r["turns"][0] == ("<image>\n" + s["qa"][0].question, s["qa"][0].answer)
    assert [t for t in r["turns"][1:]] == [(qa.question, qa.answer) for qa in s["qa"][1:]]
    assert text.get(5) == {"task": "text", "text": s["caption"]}
    g = gen.get(5)
    check_generation(g)
    assert g["caption"] == s["caption"] and g["image"].tobytes() == s["image"].tobytes()
    assert same_record(und.get(5), und.get(5))
    assert not und.skipped


def test_shapes_understanding_items_can_ask_fewer_questions(world):
    """questions: N keeps the first N of the scene's shuffled turns (1: nothing to copy from an earlier turn)."""
    opts = {"num_samples": 8, "image_size": SIZE, "seed": 0}
    full = ShapesSource("understanding", **opts).get(5)
    for n in (1, 3):
        r = ShapesSource("understanding", questions=n, **opts).get(5)
        check_understanding(r, 1)
        assert r["turns"] == full["turns"][:n] and r["turns"][0][0].startswith("<image>\n")
        assert r["images"][0].tobytes() == full["images"][0].tobytes()
    spec = {"format": "shapes", "task": "understanding", "num_samples": 4, "questions": 1}
    assert len(build_source(spec).get(0)["turns"]) == 1
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ConfigError, match=f"questions must be an int >= 1 .*got {bad!r}"):
            ShapesSource("understanding", questions=bad, **opts)
    with pytest.raises(ConfigError, match="questions applies to single-image understanding items, not task='text'"):
        ShapesSource("text", questions=1, **opts)
    with pytest.raises(ConfigError, match="with sequence='compare'"):
        ShapesSource("understanding", questions=1, sequence="compare", **opts)


# --------------------------------------------------------------------------- build_source


def test_build_source(llava_dir, captions_path, shards):
    assert isinstance(build_source({"format": "llava", "path": str(llava_dir / "llava.json")}), LlavaJsonSource)
    src = build_source({"format": "captions", "path": str(captions_path), "task": "text"})
    assert isinstance(src, CaptionJsonlSource) and src.task == "text"
    src = build_source({"format": "webdataset", "shards": [str(shards / "data-000.tar")], "task": "generation"})
    assert isinstance(src, WebDatasetSource) and len(src) == 3
    src = build_source({"format": "shapes", "task": "text", "num_samples": 4, "seed": 1, "colours": ["red", "blue"]})
    assert isinstance(src, ShapesSource) and len(src) == 4


@pytest.mark.parametrize("spec, match", [
    ({"format": "parquetish", "path": "x"}, "unknown data source format 'parquetish'"),
    ({"path": "x"}, "unknown data source format None"),
    ({"format": "llava", "path": "x", "imgroot": "y"}, "unknown config key 'imgroot'"),
    ({"format": "shapes", "task": "text", "num_sample": 3}, "unknown config key 'num_sample'"),
    ({"format": "webdataset"}, "needs 'shards'"),
    ({"format": "shapes", "task": "painting"}, "unknown task 'painting'"),
    ({"format": "captions", "path": "x", "task": "understanding"}, "unknown task 'understanding'"),
    ({"format": "llava", "path": "/nonexistent/llava.json"}, "not found"),
    ({"format": "shapes", "task": "text", "num_samples": 0}, "num_samples"),
])
def test_build_source_errors(spec, match):
    with pytest.raises(ConfigError, match=match):
        build_source(spec)
