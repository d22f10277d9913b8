"""smart_resize and 2x2-window patch order."""

import numpy as np
import pytest
from PIL import Image

from llava_ov.vision.image_processing import ImageProcessor, patch_positions, smart_resize


@pytest.mark.parametrize("h,w", [(560, 560), (64, 64), (1000, 333), (4000, 3000), (30, 900)])
def test_smart_resize_rule(h, w):
    rh, rw = smart_resize(h, w, 28, 3136, 2_560_000)
    assert rh % 28 == 0 and rw % 28 == 0
    assert 3136 <= rh * rw <= 2_560_000
    assert abs(rh / rw - h / w) / (h / w) < 0.35


def test_recipe_example_560_gives_400_tokens():
    proc = ImageProcessor()
    assert proc.num_image_tokens(proc.grid(560, 560)) == 400


def test_patches_are_in_window_order():
    proc = ImageProcessor(min_pixels=56 * 56, max_pixels=56 * 112, image_mean=(0, 0, 0), image_std=(1, 1, 1))
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (56, 112, 3), dtype=np.uint8)
    pixels, grid = proc(Image.fromarray(arr))
    assert grid == (1, 4, 8) and pixels.shape == (32, 588)
    x = arr.astype(np.float32) / 255
    pos = patch_positions(grid)
    for row, (r, c) in enumerate(pos):
        expect = x[r * 14:(r + 1) * 14, c * 14:(c + 1) * 14].transpose(2, 0, 1).reshape(-1)
        np.testing.assert_allclose(pixels[row], expect, atol=1e-6)
    # the first four rows are one 2x2 window
    assert pos[:4].tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]


def test_save_load_roundtrip(tmp_path):
    proc = ImageProcessor(min_pixels=7056, max_pixels=12544)
    proc.save(tmp_path)
    assert ImageProcessor.load(tmp_path) == proc
