"""Loss-curve figures from metrics.jsonl (unimm.training.plot)."""
import json

import pytest
from PIL import Image

from unimm.training.plot import COLOURS, main, plot_losses


def _log(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_stages_are_drawn_on_one_axis(tmp_path):
    a = _log(tmp_path / "a.jsonl", [{"step": s, "und_loss": 2.0 / s, "gen_loss": 5.0 - s / 10} for s in range(1, 11)])
    b = _log(tmp_path / "b.jsonl", [{"step": s, "und_loss": 0.2 / s, "gen_loss": 4.0 - s / 10} for s in range(1, 6)])
    out = plot_losses([a, b], tmp_path / "fig" / "loss.png", size=(400, 300))
    img = Image.open(out).convert("RGB")
    assert img.size == (400, 300)
    colours = {c for _, c in img.getcolors(maxcolors=100_000)}
    assert COLOURS[0] in colours and COLOURS[1] in colours  # both curves (and their legend keys) drawn
    assert main([str(a), str(b), "-o", str(tmp_path / "cli.png")]) == 0
    assert Image.open(tmp_path / "cli.png").size == (720, 400)


def test_bad_logs_are_named(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="no metrics log at .*missing.jsonl"):
        plot_losses([tmp_path / "missing.jsonl"], tmp_path / "x.png")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="empty.jsonl has no records"):
        plot_losses([tmp_path / "empty.jsonl"], tmp_path / "x.png")
    (tmp_path / "bad.jsonl").write_text('{"step": 1}\n{oops\n')
    with pytest.raises(ValueError, match="bad.jsonl:2 is not JSON"):
        plot_losses([tmp_path / "bad.jsonl"], tmp_path / "x.png")
    log = _log(tmp_path / "a.jsonl", [{"step": 1, "loss": 1.0}])
    with pytest.raises(ValueError, match="no values for gen_loss"):
        plot_losses([log], tmp_path / "x.png", keys=["loss", "gen_loss"])
    assert main([str(tmp_path / "missing.jsonl")]) == 2
    assert "no metrics log" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_a_resumed_log_keeps_the_last_record_of_each_step(tmp_path):
    from unimm.training.plot import read_metrics

    log = _log(tmp_path / "r.jsonl", [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.5}, {"step": 3, "loss": 9.0},
                                      {"step": 3, "loss": 2.0}, {"step": 4, "loss": 1.5}])  # resumed after step 2
    assert [(r["step"], r["loss"]) for r in read_metrics(log)] == [(1, 3.0), (2, 2.5), (3, 2.0), (4, 1.5)]


def test_captioned_grid_keeps_pixels_crisp_and_writes_each_caption(tmp_path):
    import runpy
    from pathlib import Path

    import numpy as np

    from unimm.images import captioned_grid, upscale

    im = Image.new("RGB", (4, 4), (255, 255, 255))
    im.putpixel((1, 2), (255, 0, 0))
    big = np.asarray(upscale(im, 3))
    assert big.shape == (12, 12, 3) and (big[6:9, 3:6] == (255, 0, 0)).all() and set(map(tuple, big.reshape(-1, 3))) == {
        (255, 255, 255), (255, 0, 0)}  # nearest neighbour: no blended colours
    with pytest.raises(ValueError, match="upscale factor must be >= 1"):
        upscale(im, 0)
    sheet = np.asarray(captioned_grid([im, im, im], ["a", "b", "a much longer caption that wraps onto lines"], 4, 2))
    assert sheet.shape[1] == 2 * (16 + 6) + 6
    cell = sheet[6:22, 6:22]
    assert (cell == np.asarray(upscale(im, 4))).all()  # the image sits unchanged in its cell
    assert (sheet[22:40, 6:22] < 128).any()  # caption ink under it
    with pytest.raises(ValueError, match="one caption per image"):
        captioned_grid([im], ["a", "b"])
    # the README grid's script: prompts in, a sheet out (an untrained config stands in for the default)
    out = tmp_path / "grid.png"
    script = Path(__file__).resolve().parents[1] / "scripts" / "sample_grid.py"
    import sys
    argv = sys.argv
    try:
        sys.argv = [str(script), "a red circle", "two blue squares", "--model", "tiny", "--out", str(out), "--columns", "2"]
        with pytest.warns(UserWarning, match="untrained"):
            with pytest.raises(SystemExit) as done:
                runpy.run_path(str(script), run_name="__main__")
        assert done.value.code == 0
    finally:
        sys.argv = argv
    assert Image.open(out).size[0] == 2 * (2 * 32 + 6) + 6  # tiny draws 32 px, upscaled 2x


def test_seed_pass_rate_script_counts_the_seeds_the_evaluator_accepts():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "seed_pass_rate.py"
    run = subprocess.run([sys.executable, str(script), "a red circle", "--model", "tiny", "--n", "2"],
                         capture_output=True, text=True, timeout=300, env={**__import__("os").environ,
                                                                          "PYTHONWARNINGS": "ignore"})
    assert run.returncode == 0, run.stderr[-2000:]
    first, second = run.stdout.strip().splitlines()
    assert first.startswith("'a red circle': ") and "of seeds 0-1 pass" in first  # an untrained model: noise
    assert second.startswith("passing seeds: [")
