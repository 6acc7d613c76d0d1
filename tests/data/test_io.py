from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pixelwise.data.io import DataError, read_image, read_mask


def save(path, array, mode=None):
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def test_read_gray_and_rgb(tmp_path):
    gray = np.array([[0, 255], [51, 102]], dtype=np.uint8)
    img = read_image(save(tmp_path / "g.png", gray), channels=1)
    assert img.dtype == torch.float32 and img.shape == (1, 2, 2)
    torch.testing.assert_close(img[0], torch.tensor([[0.0, 1.0], [0.2, 0.4]]))
    rgb = np.zeros((2, 3, 3), dtype=np.uint8)
    rgb[..., 1] = 255
    img = read_image(save(tmp_path / "c.png", rgb), channels=3)
    assert img.shape == (3, 2, 3)
    assert img[1].eq(1).all() and img[0].eq(0).all() and img[2].eq(0).all()


def test_read_mask_values_and_palette_mode(tmp_path):
    mask = np.array([[0, 1], [255, 1]], dtype=np.uint8)
    out = read_mask(save(tmp_path / "m.png", mask), num_classes=2, ignore_index=255)
    assert out.dtype == torch.int64
    assert out.tolist() == [[0, 1], [255, 1]]
    p = Image.fromarray(mask).convert("P")  # a palette PNG: indices, not colours, are the classes
    p.putpalette([0, 0, 0, 200, 10, 10] + [255, 255, 255] * 254)
    p.save(tmp_path / "p.png")
    out = read_mask(tmp_path / "p.png", num_classes=2, ignore_index=255, size=(2, 2))
    assert out.tolist() == [[0, 1], [255, 1]]


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nothere\.png.*does not exist"):
        read_image(tmp_path / "nothere.png", channels=3)
    with pytest.raises(DataError, match=r"nothere\.png"):
        read_mask(tmp_path / "nothere.png", num_classes=2, ignore_index=None)


def test_corrupt_and_truncated_files(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"this is not an image at all")
    with pytest.raises(DataError, match=r"junk\.png.*cannot be read"):
        read_image(tmp_path / "junk.png", channels=1)
    good = save(tmp_path / "full.png", np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:300])
    with pytest.raises(DataError, match=r"cut\.png.*cannot be read"):
        read_image(tmp_path / "cut.png", channels=1)
    with pytest.raises(DataError, match=r"cut\.png"):
        read_mask(tmp_path / "cut.png", num_classes=256, ignore_index=None)


def test_rgba_image(tmp_path):
    path = save(tmp_path / "rgba.png", np.zeros((4, 4, 4), dtype=np.uint8))
    with pytest.raises(DataError, match=r"rgba\.png.*'RGBA'.*expected 8-bit RGB.*alpha"):
        read_image(path, channels=3)


@pytest.mark.parametrize(
    "name,dtype,mode", [("deep.png", np.uint16, "I;16"), ("deep.tif", np.int32, "I"), ("deep.tiff", np.float32, "F")]
)
def test_16_and_32_bit_images(tmp_path, name, dtype, mode):
    path = tmp_path / name
    Image.fromarray(np.full((4, 4), 1000, dtype=dtype)).save(path)
    with Image.open(path) as f:
        assert f.mode == mode
    with pytest.raises(DataError, match=rf"{name}.*mode '{mode}'.*expected 8-bit grayscale.*8 bits"):
        read_image(path, channels=1)


def test_grayscale_where_rgb_expected_and_back(tmp_path):
    gray = save(tmp_path / "gray.png", np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(DataError, match=r"gray\.png.*'L'.*expected 8-bit RGB.*in_channels=1"):
        read_image(gray, channels=3)
    rgb = save(tmp_path / "rgb.png", np.zeros((4, 4, 3), dtype=np.uint8))
    with pytest.raises(DataError, match=r"rgb\.png.*'RGB'.*expected 8-bit grayscale.*in_channels=3"):
        read_image(rgb, channels=1)


def test_mask_with_out_of_range_value(tmp_path):
    mask = np.zeros((4, 4), dtype=np.uint8)
    mask[0, :3] = 7
    path = save(tmp_path / "seven.png", mask)
    with pytest.raises(DataError, match=r"seven\.png.*values \[7\].*\{7: 3\}.*\[0, 2\).*ignore_index=255"):
        read_mask(path, num_classes=2, ignore_index=255)


def test_mask_wrong_mode_and_jpeg(tmp_path):
    rgb = save(tmp_path / "colour.png", np.zeros((4, 4, 3), dtype=np.uint8))
    with pytest.raises(DataError, match=r"colour\.png.*'RGB'.*mode L or P.*class indices"):
        read_mask(rgb, num_classes=2, ignore_index=None)
    deep = tmp_path / "deep.png"
    Image.fromarray(np.zeros((4, 4), dtype=np.uint16)).save(deep)
    with pytest.raises(DataError, match=r"deep\.png.*'I;16'"):
        read_mask(deep, num_classes=2, ignore_index=None)
    jpg = tmp_path / "lossy.jpg"
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(jpg)
    with pytest.raises(DataError, match=r"lossy\.jpg.*JPEG"):
        read_mask(jpg, num_classes=2, ignore_index=None)


def test_size_mismatch_names_both_files(tmp_path):
    image = save(tmp_path / "im.png", np.zeros((4, 6, 3), dtype=np.uint8))
    mask = save(tmp_path / "ma.png", np.zeros((4, 5), dtype=np.uint8))
    size = tuple(read_image(image, channels=3).shape[-2:])
    with pytest.raises(DataError, match=r"ma\.png.*\(4, 5\).*im\.png.*\(4, 6\)"):
        read_mask(mask, num_classes=2, ignore_index=None, size=size, image_path=image)


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)
