import os

import pytest
import torch

# Tests run on the CPU with small thread counts so they are stable on 2 cores.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_pipe():
    import unimm

    torch.manual_seed(0)
    return unimm.load("tiny")


@pytest.fixture(scope="session")
def saved_tiny(tiny_pipe, tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny"
    tiny_pipe.save_pretrained(path)
    return path


@pytest.fixture
def shapes_image():
    """A small picture with a red disc on the left and a blue square on the right."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (48, 40), "white")
    d = ImageDraw.Draw(im)
    d.ellipse((2, 10, 20, 28), fill="red")
    d.rectangle((30, 12, 44, 26), fill="blue")
    return im
