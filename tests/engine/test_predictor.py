import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pixelwise.errors import ConfigError
from pixelwise.engine.predictor import Predictor, forward_aligned, gather_window, mirror_index, probs_to_labels


class ValidConvNet(nn.Module):
    """Two unpadded 3x3 convolutions: output = input - 4, any size >= 5 (translation-equivariant)."""

    def __init__(self, num_classes=3):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, num_classes, 3))

    def forward(self, x):
        return self.body(x)

    def output_size(self, size):
        if size < 5:
            raise ValueError(size)
        return size - 4

    def input_size_for(self, size):
        return size + 4


def test_mirror_index_matches_numpy_reflect_for_any_pad():
    for n in (1, 2, 5):
        x = np.arange(n)
        for pad in (0, 3, 11):
            expected = np.pad(x, pad, mode="reflect") if n > 1 else np.zeros(n + 2 * pad, int)
            got = x[mirror_index(torch.arange(-pad, n + pad), n).numpy()]
            np.testing.assert_array_equal(got, expected)


def test_gather_window_mirrors_outside_the_image():
    img = torch.arange(12.0).view(1, 1, 3, 4)
    win = gather_window(img, -2, -1, 5, 6)
    ref = np.pad(img[0, 0].numpy(), ((2, 0), (1, 1)), mode="reflect")
    np.testing.assert_array_equal(win[0, 0, :5].numpy(), ref[:5, :6])


def test_forward_aligned_keeps_image_size_for_valid_model():
    model = ValidConvNet()
    x = torch.randn(2, 1, 17, 23)
    assert forward_aligned(model, x).shape == (2, 3, 17, 23)


@pytest.mark.parametrize("tile,overlap", [(8, 0), (8, 3), (16, 5), (40, 0)])
def test_overlap_tile_equals_whole_image_for_valid_convolutions(tile, overlap):
    # U-Net section 2: with valid convolutions and mirrored context, tiles join seamlessly.
    torch.manual_seed(0)
    model = ValidConvNet().eval()
    image = torch.randn(1, 29, 37)
    whole = Predictor(model, device="cpu").predict_probs(image)
    tiled = Predictor(model, device="cpu", tile=tile, overlap=overlap, batch_size=3).predict_probs(image)
    assert whole.shape == (3, 29, 37)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(whole.sum(0), torch.ones(29, 37))


def test_tta_is_exact_for_an_equivariant_model_and_averages_otherwise():
    torch.manual_seed(0)
    point = nn.Conv2d(1, 2, 1)  # 1x1 convolution commutes with flips and rotations
    image = torch.randn(1, 12, 12)
    a = Predictor(point, device="cpu").predict_probs(image)
    b = Predictor(point, device="cpu", tta=True).predict_probs(image)
    torch.testing.assert_close(a, b)

    model = ValidConvNet(2).eval()
    tta = Predictor(model, device="cpu", tta=True).predict_probs(image)
    manual = torch.zeros(2, 12, 12)
    for k in range(4):
        for flip in (False, True):
            x = image.flip(-1) if flip else image
            x = torch.rot90(x, k, (-2, -1))
            p = Predictor(model, device="cpu").predict_probs(x)
            p = torch.rot90(p, -k, (-2, -1))
            manual += p.flip(-1) if flip else p
    torch.testing.assert_close(tta, manual / 8, atol=1e-5, rtol=1e-5)


def test_hflip_tta_averages_the_image_and_its_mirror_only():
    torch.manual_seed(0)
    model = ValidConvNet(2).eval()
    image = torch.randn(1, 12, 12)
    got = Predictor(model, device="cpu", tta="hflip").predict_probs(image)
    plain = Predictor(model, device="cpu").predict_probs(image)
    mirrored = Predictor(model, device="cpu").predict_probs(image.flip(-1)).flip(-1)
    torch.testing.assert_close(got, (plain + mirrored) / 2, atol=1e-6, rtol=0)
    assert not torch.allclose(got, Predictor(model, device="cpu", tta=True).predict_probs(image))
    with pytest.raises(ConfigError, match="infer.tta must be true, false or 'hflip', got 'vflip'"):
        Predictor(model, device="cpu", tta="vflip")


def test_valid_unet_predicts_any_size_whole_tiled_and_tta():
    from pixelwise import create_model

    model = create_model("unet", base_width=4, depth=2, dropout=0.0).eval()
    image = torch.randn(1, 45, 70)  # not a size the network takes whole
    whole = Predictor(model, device="cpu").predict_probs(image)
    tiled = Predictor(model, device="cpu", tile=24, overlap=4).predict_probs(image)
    tta = Predictor(model, device="cpu", tile=32, tta=True).predict_probs(image)
    for p in (whole, tiled, tta):
        assert p.shape == (2, 45, 70) and torch.isfinite(p).all()
        torch.testing.assert_close(p.sum(0), torch.ones(45, 70))
    # Tiles whose offsets are multiples of the pooling factor see the same pooling grid as the whole image.
    grid = Predictor(model, device="cpu", tile=20, overlap=0).predict_probs(torch.randn(1, 40, 60))
    assert grid.shape == (2, 40, 60)


def test_padded_unet_tiles_images_it_cannot_take_whole():
    from pixelwise import create_model

    model = create_model("unet_padded", base_width=4, depth=3, dropout=0.0).eval()
    with pytest.raises(ValueError):
        model(torch.randn(1, 1, 30, 30))
    probs = Predictor(model, device="cpu", tile=16, overlap=4).predict_probs(torch.randn(1, 30, 37))
    assert probs.shape == (2, 30, 37)


@pytest.mark.parametrize("tile,tta", [(None, False), (24, False), (None, True)])
def test_many_runs_images_of_one_size_together_and_gives_each_its_own_labels(tile, tta):
    """Predictor.many (what pixelwise serve batches): consecutive images of one size share passes, windows of
    several images in one batch; every image gets the probabilities and labels it gets alone."""
    from pixelwise import create_model

    model = create_model("unet", base_width=4, depth=2, dropout=0.0).eval()
    rng = np.random.default_rng(0)
    shapes = [(45, 70), (45, 70), (45, 70), (30, 40), (45, 70)]
    images = [(rng.random(shape) * 255).astype(np.uint8) for shape in shapes]
    p = Predictor(model, device="cpu", tile=tile, overlap=4 if tile else 0, tta=tta, batch_size=5, channels=1,
                  mean=[0.5], std=[0.25])
    calls = []
    model.register_forward_hook(lambda m, inputs, out: calls.append(inputs[0].shape[0]))
    together = p.many(images)
    passes = len(calls)
    alone = [p(image) for image in images]
    assert all(torch.equal(a, b) for a, b in zip(together, alone))
    assert passes < len(calls) - passes  # fewer passes together than one image at a time
    assert max(calls) <= 5  # never more windows in a pass than batch_size
    first = p.predict_batch(torch.stack([p.normalize(p.read(im)) for im in images[:3]]))
    torch.testing.assert_close(first[1], p.predict_probs(p.normalize(p.read(images[1]))), atol=1e-5, rtol=0)


def test_multi_scale_averages_the_probabilities_of_resized_copies_at_full_resolution():
    from pixelwise import create_model

    model = create_model("unet", base_width=4, depth=2, dropout=0.0).eval()
    image = torch.randn(1, 45, 70)
    plain = Predictor(model, device="cpu").predict_probs(image)
    torch.testing.assert_close(Predictor(model, device="cpu", scales=[1.0]).predict_probs(image), plain)
    half = Predictor(model, device="cpu").predict_probs(F.interpolate(image[None], size=(22, 35), mode="bilinear")[0])
    want = (plain + F.interpolate(half[None], size=(45, 70), mode="bilinear")[0]) / 2
    got = Predictor(model, device="cpu", scales=[0.5, 1.0]).predict_probs(image)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    for p in (Predictor(model, device="cpu", scales=[0.75, 1.25], tile=24, overlap=4, tta=True),
              Predictor(model, device="cpu", scales=[0.5, 1.5], batch_size=1)):
        probs = p.predict_probs(image)
        assert probs.shape == (2, 45, 70)
        torch.testing.assert_close(probs.sum(0), torch.ones(45, 70))
    with pytest.raises(ConfigError, match=r"infer.scales .* got \[0.0\]"):
        Predictor(model, device="cpu", scales=[0.0])


def test_bad_arguments():
    model = ValidConvNet()
    with pytest.raises(ValueError, match="infer.overlap"):
        Predictor(model, device="cpu", tile=8, overlap=8)
    with pytest.raises(ValueError, match="one image"):
        Predictor(model, device="cpu").predict_probs(torch.randn(1, 1, 8, 8))
    with pytest.raises(ValueError, match="two-class"):
        probs_to_labels(torch.rand(3, 4, 4), threshold=0.5)
    labels = probs_to_labels(torch.tensor([[[0.7, 0.2]], [[0.3, 0.8]]]), threshold=0.25)
    assert labels.tolist() == [[1, 1]]


def test_infer_scales_is_checked_and_refused_by_mask_rcnn(tmp_path):
    from helpers.synthetic import instance_config, instance_data, semantic_config

    from pixelwise.config import apply_override, check_ranges
    from pixelwise.engine.run import build_run

    cfg = semantic_config(tmp_path / "run")
    apply_override(cfg, "infer.scales=[0.5, -1]")
    with pytest.raises(ConfigError, match=r"infer.scales=\[0.5, -1\], expected a non-empty list"):
        check_ranges(cfg)
    with pytest.raises(ConfigError, match="infer.scales .* is for semantic models"):
        build_run(instance_config(tmp_path / "mrcnn", "infer.scales=[1.0, 1.5]"), datasets=instance_data())


def test_predict_heads_gives_every_head_from_the_same_passes():
    """A model with extra heads (FCN on SIFT Flow): each head's own softmax, averaged over the same flips."""
    from pixelwise import create_model

    torch.manual_seed(0)
    model = create_model("fcn32s", num_classes=5, pad100=False, width=0.0625, fc_channels=16,
                         extra_heads={"geo": 3}).eval()
    with torch.no_grad():
        for p in model.parameters():  # the score layers start at zero
            p.normal_(0, 0.1)
    image = torch.randn(3, 40, 48)
    p = Predictor(model, device="cpu", tta="hflip")
    heads = p.predict_heads(image)
    assert set(heads) == {"out", "geo"} and heads["geo"].shape == (3, 40, 48)
    torch.testing.assert_close(heads["out"], p.predict_probs(image))
    with torch.no_grad():
        plain, mirrored = model(image[None]), model(image.flip(-1)[None])
    for key in ("out", "geo"):
        want = (F.softmax(plain[key], 1) + F.softmax(mirrored[key], 1).flip(-1))[0] / 2
        torch.testing.assert_close(heads[key], want, atol=1e-5, rtol=0)
    assert set(Predictor(ValidConvNet(2).eval(), device="cpu").predict_heads(torch.randn(1, 12, 12))) == {"out"}
