"""Any resolution: AnyRes tiling (LLaVA-NeXT) and native resolution (Qwen2-VL), through SigLIP."""
import pytest
import torch
from PIL import Image

import unimm
from unimm.config import ConfigError
from unimm.encoders import layouts as tiling
from model_helpers import last_text_logits as _last_logits, load_untrained, overfit_one_answer


def _load(spec="tiny-anyres"):
    return load_untrained(spec)


def _picture(width, height, seed=0):
    g = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(height, width, 3, generator=g) * 255).to(torch.uint8).numpy()
    return Image.fromarray(pixels)


def test_the_grid_follows_the_aspect_ratio():
    grids = [[1, 2], [2, 1], [2, 2]]
    assert tiling.choose_grid(96, 40, grids, 32) == (1, 2)  # wide
    assert tiling.choose_grid(30, 80, grids, 32) == (2, 1)  # tall
    assert tiling.choose_grid(64, 64, grids, 32) == (2, 2)  # large square: 2x2 keeps all its pixels
    assert tiling.choose_grid(200, 60, [[1, 2], [1, 3], [1, 4]], 32) == (1, 4)
    # every grid keeps a small picture whole: the one that pads least wins
    assert tiling.choose_grid(20, 20, [[2, 2], [1, 2]], 32) == (1, 2)
    for bad in ([], [[0, 1]], [[1, 2, 3]], "2x2"):
        with pytest.raises(ConfigError, match="encoder.tiling.grids must be a non-empty list"):
            tiling.TilingConfig(grids=bad)


def test_views_are_the_thumbnail_then_the_tiles_of_the_picture():
    pipe = _load()
    proc = pipe.processor
    wide = _picture(64, 32)  # exactly a 1x2 canvas of 32 px tiles: the tiles are its halves
    pixels, layout = proc.prepare([wide, _picture(30, 80, 1), _picture(64, 64, 2)])
    assert pixels.shape == (3 + 3 + 5, 3, 32, 32)
    assert layout == [[4, 4, 4], [4, 2, 2, 2, 2], [4, 4, 4, 4, 4]]
    from unimm.images import to_tensor

    mean, std = proc.image_mean, proc.image_std
    torch.testing.assert_close(pixels[1], to_tensor(wide.crop((0, 0, 32, 32)), mean, std))
    torch.testing.assert_close(pixels[2], to_tensor(wide.crop((32, 0, 64, 32)), mean, std))
    assert torch.equal(pixels[0], proc.pixel_values([wide])[0])  # the thumbnail: the picture fitted as usual
    # the block: the thumbnail's run, then one run per token row, each ended by a newline
    ids, _ = proc.chat_ids([("What colour?", 1, None)], layout[:1])
    text = proc.tokenizer.decode(ids)
    img = proc.image_token
    assert proc.boi_token + (img * 4 + "\n") * 3 + proc.eoi_token in text
    assert tiling.blocks(ids, pipe.model.token_ids.image, pipe.model.token_ids.eoi) == [[4, 4, 4]]
    for grid in [(1, 2), (2, 1), (2, 2), (3, 1)]:
        assert tiling.grid_of(tiling.runs(grid, 4), 4) == grid
    with pytest.raises(ValueError, match=r"an image's placeholders run \[4, 4, 2\]"):
        tiling.grid_of([4, 4, 2], 4)


def test_tile_tokens_are_laid_out_as_the_tiles_pixels_are():
    g, D = 2, 3
    views = torch.zeros(1 + 4, g * g, D)
    for t in range(4):  # tile t's token (y, x) holds (t, y, x)
        for y in range(g):
            for x in range(g):
                views[1 + t, y * g + x] = torch.tensor([t, y, x], dtype=torch.float)
    tokens = tiling.arrange(views, (2, 2))
    assert tokens.shape == (4 + 16, D)
    canvas = tokens[4:].reshape(4, 4, D)  # the canvas's 4 token rows of 4
    for Y in range(4):
        for X in range(4):
            tile = (Y // g) * 2 + X // g
            assert canvas[Y, X].tolist() == [tile, Y % g, X % g]


def test_the_model_splices_each_images_tokens_where_its_block_stands():
    pipe = _load()
    model = pipe.model
    images = [_picture(96, 40), _picture(40, 40, 3)]  # wide: 1x2; square: 2x2 keeps all its pixels
    ids, pixels = pipe._chat_inputs(images, "Compare them.", None)
    ids_t = torch.tensor([ids])
    with torch.no_grad():
        embeds = model.embed_inputs(ids_t, pixels)
        views = model.encode_images(pixels)
    slots = embeds[0][ids_t[0] == model.token_ids.image]
    expected = torch.cat([tiling.arrange(views[:3], (1, 2)), tiling.arrange(views[3:], (2, 2))])
    torch.testing.assert_close(slots, expected)
    assert pixels.shape[0] == 3 + 5
    with pytest.raises(ValueError, match="take 8 views but 7 were given"):
        model.embed_inputs(ids_t, pixels[:7])
    with pytest.raises(ValueError, match="take 8 views but 9 were given"):
        model.embed_inputs(ids_t, torch.cat([pixels, pixels[:1]]))
    # a batch of two rows, each with its own grids, splices row by row
    a, pa = pipe._chat_inputs([_picture(30, 80)], "What?", None)
    b, pb = pipe._chat_inputs([_picture(64, 64)], "What?", None)
    from unimm.processing import left_pad

    both, _ = left_pad([a, b], model.token_ids.pad)
    with torch.no_grad():
        batch = model.embed_inputs(both, torch.cat([pa, pb]))
        alone = model.embed_inputs(torch.tensor([b]), pb)
    torch.testing.assert_close(batch[1, -len(b):], alone[0])


@pytest.mark.parametrize("spec, saved", [
    ("tiny-anyres", lambda config: config.encoder.tiling.grids == [[1, 2], [2, 1], [2, 2]]),
    ("tiny-native-res", lambda config: config.encoder.native.max_tokens == 64),
])
def test_the_model_learns_a_fixed_batch_chats_and_reloads(spec, saved, shapes_image, tmp_path):
    pipe = _load(spec)
    first, last = overfit_one_answer(pipe, shapes_image)
    assert last < 0.5 * first
    history = [{"question": "Describe it.", "answer": "a red circle", "images": [_picture(80, 36)]}]
    answer = pipe.chat(shapes_image, "What colour is the circle?", history=history, max_new_tokens=3, temperature=0)
    # a follow-up reuses the cached turns with tiled / native images in them and answers as a fresh run does
    follow = [*history, {"question": "What colour is the circle?", "answer": answer, "images": [shapes_image]}]
    cached = pipe.chat(_picture(36, 80), "And this one?", history=follow, max_new_tokens=3, temperature=0)
    pipe.chat_cache.clear()
    assert pipe.chat(_picture(36, 80), "And this one?", history=follow, max_new_tokens=3, temperature=0) == cached
    pipe.save_pretrained(tmp_path / "m")
    again = unimm.load(str(tmp_path / "m"))
    assert saved(again.model.config)
    assert again.chat(shapes_image, "What colour is the circle?", history=history, max_new_tokens=3,
                      temperature=0) == answer


def test_tiling_refuses_what_it_cannot_lay_out():
    with pytest.raises(ConfigError, match="needs a projector whose tokens form a square grid"):
        _load({"base": "tiny-anyres", "projector": {"type": "perceiver", "num_latents": 6, "num_layers": 1, "num_heads": 2}})
    with pytest.raises(ConfigError, match="tower 'patches' has none"):
        _load({"base": "tiny-fuyu", "encoder": {"tiling": {}}})


def test_a_training_stage_feeds_tiled_images(tmp_path):
    from pathlib import Path

    from unimm.training.config import load_train_config
    from unimm.training.trainer import train

    stage = Path(__file__).resolve().parents[1] / "configs" / "train" / "tiny-stage1.yaml"
    cfg = load_train_config(stage, ["model=tiny-anyres", "steps=2", "batch_size=4", "log_every=1",
                                    f"output_dir={tmp_path / 'run'}"])
    final = train(cfg, progress=False)
    model = unimm.load(str(final)).model
    assert model.config.encoder.tiling is not None
    import json

    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    und = [r["und_loss"] for r in rows if "und_loss" in r]
    assert und and all(torch.isfinite(torch.tensor(und)))


# -- native resolution (Qwen2-VL) -------------------------------------------------------------
def test_native_grids_keep_the_aspect_ratio_within_the_token_bounds():
    grid = tiling.native_grid
    assert grid(96, 40, 16, 4, 64) == (2, 6)  # about its own size: 40/16 -> 2 rows, 96/16 -> 6 columns
    assert grid(200, 200, 16, 4, 64) == (8, 8)  # 12 x 12 would be 144 tokens: shrunk to the cap
    assert grid(16, 16, 16, 4, 64) == (2, 2)  # one cell is under the floor: grown to 4
    assert grid(400, 10, 16, 4, 16) == (1, 16)  # a long strip: one row as wide as the cap allows
    for w, h in [(33, 71), (300, 90), (5, 5), (1000, 1000)]:
        rows, cols = grid(w, h, 16, 4, 64)
        assert 4 <= rows * cols <= 64
    with pytest.raises(ConfigError, match="encoder.native.min_tokens \\(9\\) exceeds max_tokens \\(4\\)"):
        tiling.NativeConfig(min_tokens=9, max_tokens=4)


def test_native_tokens_are_the_whole_picture_read_at_its_own_size_then_merged():
    pipe = _load("tiny-native-res")
    model = pipe.model
    picture = _picture(96, 40)
    pixels, layout = pipe.processor.prepare([picture])
    assert pixels.shape == (12, 3, 16, 16) and layout == [[6, 6]]
    from unimm.images import to_tensor

    whole = to_tensor(picture.resize((96, 32), Image.BICUBIC), pipe.processor.image_mean, pipe.processor.image_std)
    torch.testing.assert_close(pixels[7], whole[:, 16:32, 16:32])  # row 1, column 1
    ids, _ = pipe.processor.chat_ids([("What colour?", 1, None)], layout)
    ids_t = torch.tensor([ids])
    with torch.no_grad():
        slots = model.embed_inputs(ids_t, pixels)[0][ids_t[0] == model.token_ids.image]
        feats = model.encoder.tower_features(whole[None])
        grid = feats.reshape(4, 12, -1)  # 4 x 12 patches of 8 px, row by row
        first = torch.cat([grid[0, 0], grid[0, 1], grid[1, 0], grid[1, 1]])  # the first token's 2x2 patches
        torch.testing.assert_close(slots[0], model.projector(first[None, None])[0, 0])
    assert slots.shape[0] == 12
    # 2-D positions on the picture's own 4 x 12 grid: in a flat grey picture only they tell patches apart
    grey = pipe.processor.prepare([Image.new("RGB", (96, 40), "grey")])[0]
    flat = grey.reshape(2, 6, 3, 16, 16).permute(2, 0, 3, 1, 4).reshape(1, 3, 32, 96)
    with torch.no_grad():
        grey_feats = model.encoder.tower_features(flat).reshape(4, 12, -1)
    assert not torch.allclose(grey_feats[0, 0], grey_feats[3, 11], atol=1e-3)
    assert not torch.allclose(grey_feats[0, 0], grey_feats[0, 11], atol=1e-3)


def test_2d_rotary_positions_make_attention_depend_on_the_offset_only():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 16, generator=g), torch.randn(1, 1, 16, generator=g)
    rows, cols = 3, 5
    rq = tiling.rope_2d(q.expand(1, rows * cols, 16), rows, cols, heads=2)
    rk = tiling.rope_2d(k.expand(1, rows * cols, 16), rows, cols, heads=2)
    score = lambda i, j: (rq[0, i, :8] @ rk[0, j, :8]).item()  # the first head
    at = lambda r, c: r * cols + c
    # the same 2-D offset (one row down, two columns right) anywhere on the grid: the same score
    torch.testing.assert_close(score(at(0, 0), at(1, 2)), score(at(1, 2), at(2, 4)))
    assert abs(score(at(0, 0), at(1, 2)) - score(at(0, 0), at(2, 1))) > 1e-3  # another offset: another
    torch.testing.assert_close(rq[0, 0], q[0, 0])  # position (0, 0) is not turned
    torch.testing.assert_close(rq.norm(dim=-1), q.norm(dim=-1).expand(1, rows * cols))  # rotations keep norms
    # in the preset's tower the hooks turn q and k; without them the same weights read otherwise
    pipe = _load("tiny-native-res")
    picture = torch.randn(1, 3, 32, 48, generator=g)
    plain = _load({"base": "tiny-native-res", "encoder": {"native": {"rope": False}}})
    plain.model.encoder.load_state_dict(pipe.model.encoder.state_dict())
    with torch.no_grad():
        turned, unturned = pipe.model.encoder.tower_features(picture), plain.model.encoder.tower_features(picture)
    assert turned.shape == unturned.shape == (1, 24, 32)
    assert not torch.allclose(turned, unturned, atol=1e-3)
    with pytest.raises(ConfigError, match="encoder.native.rope must be true or false"):
        tiling.NativeConfig(rope="yes")


def test_native_resolution_refuses_what_it_cannot_serve():
    with pytest.raises(ConfigError, match="the pixel_shuffle projector expects a fixed count"):
        _load({"base": "tiny-native-res", "projector": {"type": "pixel_shuffle", "scale": 2}})
    with pytest.raises(ConfigError, match="encoder.tiling and encoder.native are two ways"):
        _load({"base": "tiny-native-res", "encoder": {"tiling": {}}})
    with pytest.raises(ConfigError, match="encoder.native lays its tokens out in the sequence"):
        _load({"base": "tiny-native-res", "cross_attention": {}})
    with pytest.raises(ConfigError, match="no 'also'"):
        _load({"base": "tiny-native-res", "encoder": {"also": [{"image_size": 64}]}})


def test_a_copied_native_encoder_turns_by_its_own_grid():
    import copy

    encoder = _load("tiny-native-res").model.encoder
    twin = copy.deepcopy(encoder)
    pixels = torch.randn(1, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = encoder.tower_features(pixels)
        encoder.tower_features(torch.randn(1, 3, 64, 16))  # the original now holds another grid
        torch.testing.assert_close(twin.tower_features(pixels), expected)


def test_hybrid_keeps_the_thumbnail_in_the_sequence_and_reads_the_tiles_by_cross_attention():
    pipe = _load("tiny-hybrid")
    model, tok = pipe.model, pipe.model.token_ids
    wide, square = _picture(80, 36), _picture(50, 50, seed=1)
    pixels, layout = pipe.processor.prepare([wide, square])
    assert layout == [[4, 2], [4, 2, 2]]  # the thumbnail's 4 tokens, then a marker per tile, a row per line
    assert pixels.shape[0] == (1 + 2) + (1 + 4)
    ids, _ = pipe.processor.chat_ids([("Compare them.", 2, None)], layout)
    assert ids.count(tok.image) == 4 + 2 + 4 + 4  # 14 positions for 8 views (AnyRes would take 4 + 8 + 4 + 16)
    ids_t = torch.tensor([ids])
    with torch.no_grad():
        embeds = model.embed_inputs(ids_t, pixels)[0][ids_t[0] == tok.image]
        thumbs = model.encode_images(pixels[[0, 3]])  # (2, 4, D)
        torch.testing.assert_close(embeds[:4], thumbs[0])  # the wide picture's thumbnail
        marker = model.backbone.embed(torch.tensor([tok.image]))[0]
        torch.testing.assert_close(embeds[4:6], marker.expand(2, -1))  # its two tiles: markers only
        torch.testing.assert_close(embeds[6:10], thumbs[1])
        visual, mask = model.layout.visual(model, ids_t, pixels)
        tiles = model.encode_images(pixels[[1, 2, 4, 5, 6, 7]])
        assert visual.shape == (1, 2 * 4 + 4 * 4, model.backbone.hidden_size) and bool(mask.all())
        # the wide picture's canvas: 2 token rows, each across both tiles; then the square's 2 x 2 tiles
        torch.testing.assert_close(visual[0, :4], torch.cat([tiles[0, :2], tiles[1, :2]]))
        torch.testing.assert_close(visual[0, 8:12], torch.cat([tiles[2, :2], tiles[3, :2]]))
    with pytest.raises(ValueError, match="take 8 views but 9 were given"):
        model.embed_inputs(ids_t, torch.cat([pixels, pixels[:1]]))


def test_the_hybrid_model_learns_a_fixed_batch_chats_and_reloads(shapes_image, tmp_path):
    pipe = _load("tiny-hybrid")
    first, last = overfit_one_answer(pipe, shapes_image)
    assert last < 0.5 * first
    wide = _picture(80, 36)
    answer = pipe.chat([wide, shapes_image], "Which has more circles?", max_new_tokens=3, temperature=0)
    # the tiles matter: the gates have opened, and other tiles (same thumbnails) change the next token's logits
    assert any(b.attn_gate.item() != 0 for b in pipe.model.backbone.cross_attn.blocks)
    ids, pixels = pipe._chat_inputs([wide, shapes_image], "Which has more circles?", None)
    ids = torch.tensor([ids])
    other = pixels.clone()
    other[[1, 2]] = 0  # the wide picture's two tiles blanked
    with torch.no_grad():
        logits = [_last_logits(pipe.model, ids, p) for p in (pixels, other)]
    assert not torch.equal(*logits)  # (the gates are still small after 15 steps: a small change)
    pipe.save_pretrained(tmp_path / "m")
    again = unimm.load(str(tmp_path / "m"))
    assert type(again.model.layout).__name__ == "HybridLayout"
    assert again.chat([wide, shapes_image], "Which has more circles?", max_new_tokens=3, temperature=0) == answer


def test_a_tiled_model_reads_a_video_frame_as_one_pooled_view():
    pipe = _load({"base": "tiny-anyres", "encoder": {"frame_tokens": 1}})  # an image view: 2 x 2 tokens
    wide = _picture(80, 36)
    pixels, layout = pipe.processor.prepare([wide, wide], [False, True])
    assert layout == [[4, 4, 4], [1]] and pixels.shape[0] == 3 + 1  # tiles for the image, none for the frame
    ids, _ = pipe.processor.chat_ids([("Which way?", 2, None)], layout)
    ids_t = torch.tensor([ids])
    with torch.no_grad():
        slots = pipe.model.embed_inputs(ids_t, pixels)[0][ids_t[0] == pipe.model.token_ids.image]
        frame = pipe.model.encode_images(pixels[3:])[0]
    assert slots.shape[0] == 12 + 1
    torch.testing.assert_close(slots[-1], frame.mean(0))
