import numpy as np
import pytest
import torch

from imagen_lit.images import make_grid, read_png, save_png, split_grid, to_uint8


def test_split_grid_inverts_make_grid():
    images = torch.rand(7, 3, 5, 5) * 2 - 1
    grid = to_uint8(make_grid(images, nrow=3, pad=2)[None])[0]
    tiles = split_grid(grid, count=7, image_size=5, nrow=3, pad=2)
    np.testing.assert_array_equal(tiles, to_uint8(images))
    with pytest.raises(ValueError, match="too small"):
        split_grid(grid, count=10, image_size=5, nrow=3, pad=2)


def test_read_png_inverts_save_png(tmp_path):
    image = torch.rand(3, 5, 7, generator=torch.Generator().manual_seed(0)) * 2 - 1
    back = read_png(save_png(image, tmp_path / "x.png"))
    assert back.shape == (3, 5, 7) and (back - image).abs().max() <= 1 / 127.5  # 8-bit quantisation only
    assert torch.equal(read_png(save_png(back, tmp_path / "y.png")), back)  # exact once quantised


def test_read_png_of_a_file_that_is_not_an_image_is_one_line(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not a picture")
    with pytest.raises(ValueError, match="is not an image file PIL can read: pass an RGB PNG or JPEG"):
        read_png(path)
