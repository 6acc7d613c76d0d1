"""The Predictor's door: images accepted and refused exactly as the CLI reads files, a whole-image
pass refused before it cannot fit in memory, and test-time augmentation at the cost the image size implies."""
import re
import time

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from pixelwise.data import io
from pixelwise.data.io import DataError, read_image
from pixelwise.engine.predictor import Predictor
from pixelwise.errors import InferenceError

GREY = (np.arange(48).reshape(6, 8) * 5).astype(np.uint8)
COLOUR = np.stack([GREY, 255 - GREY, GREY // 2], axis=-1)
MODES = ["1", "L", "P", "RGB", "RGBA", "LA", "PA", "I;16", "I", "F", "CMYK", "YCbCr", "LAB", "colour P"]


def pil_image(mode: str) -> Image.Image:
    if mode == "I;16":
        return Image.fromarray(GREY.astype(np.uint16) * 200)
    if mode == "colour P":
        return Image.fromarray(COLOUR).convert("P")
    return Image.fromarray(GREY if mode in ("1", "L", "P", "LA", "PA", "I", "F") else COLOUR).convert(mode)


def outcome(call):
    """The tensor `call` returns, or its error message with the image's name taken out."""
    try:
        return call()
    except DataError as e:
        return re.sub(r"image file '[^']*'|the image", "<image>", str(e))


def predictor(channels: int) -> Predictor:
    # Mean 0 and std 1: the predictor's preprocessing is the image as read.
    return Predictor(nn.Conv2d(channels, 2, 1), device="cpu", channels=channels, mean=[0.0], std=[1.0])


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("mode", MODES)
def test_predictor_accepts_and_refuses_what_read_image_does(tmp_path, mode, channels):
    image = pil_image(mode)
    path = tmp_path / "image.tif"
    image.save(path)
    p = predictor(channels)
    expected = outcome(lambda: read_image(path, channels=channels))
    for given in (image, path):
        got = outcome(lambda: p.preprocess(given))
        if isinstance(expected, str):
            assert got == expected, (mode, given)
        else:
            assert torch.is_tensor(got) and torch.equal(got, expected), (mode, given)


def test_predictor_refuses_float_and_grey_images_the_cli_refuses():
    p = predictor(1)
    with pytest.raises(DataError, match=r"values in \[0, 235\].*expected values in \[0, 1\]"):
        p(torch.from_numpy(GREY).float()[None])  # 0..255 floats: today's labels are silently wrong
    with pytest.raises(DataError, match=r"values in \[nan, nan\]"):
        p(torch.full((1, 4, 4), float("nan")))
    with pytest.raises(DataError, match=r"dtype float32.*uint8"):
        p(GREY.astype(np.float32))
    assert torch.equal(p.preprocess(torch.from_numpy(GREY).float()[None] / 255), p.preprocess(GREY))
    rgb = predictor(3)
    with pytest.raises(DataError, match=r"'L'.*expected 8-bit RGB.*in_channels=1"):  # as read_image on a grey file
        rgb(GREY)
    with pytest.raises(DataError, match=r"1 channels; the model takes 3.*in_channels=1"):
        rgb(torch.rand(1, 6, 8))
    with pytest.raises(DataError, match=r"'RGBA'.*alpha"):
        rgb(np.dstack([COLOUR, GREY]))


def test_instance_predictor_takes_what_its_cli_reads(tmp_path):
    from pixelwise.engine.tasks.instance import InstancePredictor

    seen = []

    class Recorder(nn.Module):
        def forward(self, images, detect=True):
            seen.append(images[0])
            return {"detections": [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
                                    "scores": torch.zeros(0), "masks": torch.zeros(0, *images[0].shape[-2:])}]}

    p = InstancePredictor(Recorder(), torch.device("cpu"))
    Image.fromarray(GREY).save(tmp_path / "grey.png")
    p(tmp_path / "grey.png")
    p(GREY)  # a grey image is repeated to RGB, file or array
    assert torch.equal(seen[0], seen[1]) and seen[0].shape == (3, 6, 8)
    with pytest.raises(DataError, match=r"'RGBA'.*alpha"):
        p(Image.fromarray(np.dstack([COLOUR, GREY])))
    with pytest.raises(DataError, match=r"\[0, 255\]"):
        p(torch.from_numpy(COLOUR).permute(2, 0, 1).float())


def huge_png(path, width: int, height: int) -> None:
    """A PNG whose header declares width x height grey pixels; its data is one empty row (truncated)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * (width + 1)))
                     + chunk(b"IEND", b""))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_whole_image_too_large_for_memory_is_refused_from_its_header(tmp_path, monkeypatch):
    path = tmp_path / "slide.png"
    huge_png(path, 12000, 14000)  # 168 M pixels, under PIL's decompression-bomb limit
    # 16 float32 channels at full resolution: a whole-image pass needs at least 64 bytes a pixel.
    p = Predictor(nn.Conv2d(1, 16, 1), device="cpu", channels=1, mean=[0.0], std=[1.0])
    monkeypatch.setattr(io, "free_host_memory", lambda: 2 * 10**9)  # enough to read it, not to predict it whole
    with pytest.raises(InferenceError, match=r"slide\.png \(14000x12000 pixels\).*GB is free.*infer\.tile="):
        p(path)
    with pytest.raises(InferenceError, match=r"the image \(6000x6000 pixels\).*infer\.tile="):
        p.predict_probs(torch.zeros(1, 6000, 6000))  # the CLI reads the file first, then predicts: checked here
    tiled = Predictor(nn.Conv2d(1, 2, 1), device="cpu", channels=1, mean=[0.0], std=[1.0], tile=64)
    tiled.predict_probs(torch.zeros(1, 100, 100))  # tiles are not refused
    monkeypatch.setattr(io, "free_host_memory", lambda: 10**8)  # not even enough to read it
    with pytest.raises(DataError, match=r"slide\.png' is 12000x14000 pixels.*GB is free"):
        read_image(path, channels=1)
    with pytest.raises(DataError, match=r"slide\.png' is 12000x14000 pixels.*GB is free"):
        Predictor(nn.Conv2d(1, 2, 1), device="cpu", channels=1, mean=[0.0], std=[1.0], tile=256)(path)


def test_memory_error_while_decoding_is_a_data_error(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.fromarray(GREY).save(path)

    def fail(self, *args):
        raise MemoryError

    monkeypatch.setattr(Image.Image, "load", fail)
    with pytest.raises(DataError, match=r"big\.png' is 8x6 pixels.*memory"):
        read_image(path, channels=1)


class CountingModel(nn.Module):
    """A 3x3 convolution with a kernel symmetric under flips and rotations: rotating and flipping the input
    rotates and flips the output, so TTA changes nothing. Counts the pixels it is run on."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        with torch.no_grad():
            k = torch.randn(2, 1, 3, 3)
            k = sum(torch.rot90(k, r, (-2, -1)) for r in range(4))
            self.conv.weight.copy_(k + k.flip(-1))
        self.pixels = 0

    def forward(self, x):
        self.pixels += x.shape[0] * x.shape[-2] * x.shape[-1]
        return self.conv(x)


@pytest.mark.parametrize("tile", [None, 256])
def test_tta_on_a_thin_image_runs_the_model_on_about_eight_times_its_pixels(tile):
    torch.manual_seed(0)
    model = CountingModel()
    image = torch.rand(1, 2, 4800)
    plain = Predictor(model, device="cpu", tile=tile).predict_probs(image)
    model.pixels = 0
    start = time.perf_counter()
    tta = Predictor(model, device="cpu", tile=tile, tta=True).predict_probs(image)
    assert model.pixels <= 8 * 2 * image[0].numel()  # today: 8 x 4800 x 4800 (187 s for a U-Net)
    assert time.perf_counter() - start < 20
    torch.testing.assert_close(tta, plain, atol=1e-5, rtol=1e-5)  # rotations aligned on the thin window


def test_tta_on_non_square_windows_of_a_valid_convolution_model_is_aligned():
    from test_predictor import ValidConvNet

    torch.manual_seed(0)
    model = ValidConvNet(2).eval()
    with torch.no_grad():  # make both convolutions symmetric under the dihedral group
        for conv in (model.body[0], model.body[2]):
            k = sum(torch.rot90(conv.weight, r, (-2, -1)) for r in range(4))
            conv.weight.copy_(k + k.flip(-1))
    image = torch.rand(1, 7, 23)
    for tile in (None, 5):
        plain = Predictor(model, device="cpu", tile=tile).predict_probs(image)
        tta = Predictor(model, device="cpu", tile=tile, tta=True).predict_probs(image)
        torch.testing.assert_close(tta, plain, atol=1e-5, rtol=1e-5)
