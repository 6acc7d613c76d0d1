from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from pixelwise.config import AugmentConfig, DataConfig
from pixelwise.data.transforms import (
    ElasticDeformation,
    Normalize,
    RandomCrop,
    RandomIntensity,
    RandomRot90,
    build_transforms,
)

IGNORE = 255


def _blobs(h: int = 40, w: int = 48, seed: int = 0) -> torch.Tensor:
    """An int64 label map (H, W) with 4 classes in blocks, distinct under every flip and rotation."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, 4, (1, 1, 5, 6), generator=g).float()
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="nearest")[0, 0].long()


def _sample(mask: torch.Tensor, with_weight: bool = True) -> tuple[tv_tensors.Image, dict]:
    """Image equal to the mask / 4, weight = 1 + mask / 2: alignment can be checked exactly."""
    image = tv_tensors.Image(mask[None].float() / 4)
    target = {"mask": tv_tensors.Mask(mask)}
    if with_weight:
        target["weight"] = tv_tensors.Mask(1.0 + mask.float() / 2)
    return image, target


def _config(**augment) -> DataConfig:
    flags = dict(hflip=False, vflip=False, rot90=False, elastic=False)
    flags.update(augment)
    return DataConfig(mean=[0.0], std=[1.0], augment=AugmentConfig(**flags))


def _coordinates(h: int, w: int) -> tuple[tv_tensors.Image, dict]:
    """Image channels = x / (W-1), y / (H-1); mask = x + W * y: every pixel names its source."""
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    image = tv_tensors.Image(torch.stack([xs / (w - 1), ys / (h - 1)]).float())
    return image, {"mask": tv_tensors.Mask(xs + w * ys)}


def test_elastic_with_zero_sigma_is_identity() -> None:
    image = tv_tensors.Image(torch.rand(3, 33, 40))
    mask = tv_tensors.Mask(torch.randint(0, 5, (33, 40)))
    out_image, out_target = ElasticDeformation(grid=3, sigma=0.0)(image, {"mask": mask})
    assert torch.allclose(out_image, image, atol=1e-5)
    assert torch.equal(out_target["mask"], mask)


def test_elastic_moves_image_and_mask_together() -> None:
    h, w = 48, 56
    image, target = _coordinates(h, w)
    for seed in range(3):
        torch.manual_seed(seed)
        out_image, out_target = ElasticDeformation(grid=3, sigma=10.0)(image, target)
        assert isinstance(out_image, tv_tensors.Image) and isinstance(out_target["mask"], tv_tensors.Mask)
        assert out_target["mask"].dtype == torch.int64
        mask = out_target["mask"]
        # Bilinear sampling of a linear ramp is exact; nearest picks a source pixel within half a pixel.
        assert ((out_image[0] * (w - 1) - mask % w).abs() <= 0.5 + 1e-3).all()
        assert ((out_image[1] * (h - 1) - mask // w).abs() <= 0.5 + 1e-3).all()
        moved = (mask != target["mask"]).float().mean()
        assert moved > 0.5, "a sigma of 10 pixels should move most pixels"


def test_elastic_sigma_is_in_pixels() -> None:
    """Displacement at a coarse grid node (the centre of a 3x3 grid) has std sigma pixels."""
    h = w = 41
    image, target = _coordinates(h, w)
    t = ElasticDeformation(grid=3, sigma=3.0)
    shifts = []
    for seed in range(300):
        torch.manual_seed(seed)
        out_image, _ = t(image, target)
        shifts.append(out_image[0, 20, 20].item() * (w - 1) - 20)
    std = torch.tensor(shifts).std().item()
    assert 2.6 < std < 3.4, std


def test_weight_map_moves_with_mask() -> None:
    mask = _blobs()
    pipeline = build_transforms(
        _config(hflip=True, vflip=True, rot90=True, elastic=True, crop_size=64), train=True, ignore_index=IGNORE
    )
    for seed in range(4):
        torch.manual_seed(seed)
        image, target = pipeline(*_sample(mask))
        m, wt = target["mask"], target["weight"]
        assert m.shape == wt.shape == (64, 64) and wt.dtype == torch.float32
        padded = m == IGNORE
        assert padded.any()  # 40x48 was padded to 64x64
        assert torch.equal(wt[~padded], 1.0 + m[~padded].float() / 2)
        assert (wt[padded] == 0).all()
        # Bilinear image vs nearest mask differ only along label edges.
        close = torch.isclose(image[0][~padded], m[~padded].float() / 4, atol=1e-4)
        assert close.float().mean() > 0.75


@pytest.mark.parametrize("aug", [dict(hflip=True), dict(vflip=True), dict(rot90=True), dict(crop_size=24)])
def test_geometric_transforms_keep_alignment(aug: dict) -> None:
    mask = _blobs()
    pipeline = build_transforms(_config(**aug), train=True, ignore_index=IGNORE)
    changed = 0
    for seed in range(16):
        torch.manual_seed(seed)
        image, target = pipeline(*_sample(mask))
        assert torch.equal(image[0], target["mask"].float() / 4)
        assert torch.equal(target["weight"], 1.0 + target["mask"].float() / 2)
        changed += target["mask"].shape != mask.shape or not torch.equal(target["mask"], mask)
    assert changed >= 4  # the transform is actually applied, at random


def test_rot90_uses_all_four_rotations() -> None:
    mask = _blobs(32, 32)
    seen = set()
    for seed in range(20):
        torch.manual_seed(seed)
        _, target = RandomRot90()(*_sample(mask))
        k = next(k for k in range(4) if torch.equal(target["mask"], torch.rot90(mask, k)))
        seen.add(k)
    assert seen == {0, 1, 2, 3}
    _, target = RandomRot90()(*_sample(_blobs(20, 30)))
    assert target["mask"].shape in {(20, 30), (30, 20)}


def test_crop_is_a_window_of_the_input() -> None:
    image, target = _coordinates(40, 50)
    for seed in range(5):
        torch.manual_seed(seed)
        out_image, out_target = RandomCrop(16, ignore_index=IGNORE)(image, target)
        m = out_target["mask"]
        top, left = int(m[0, 0]) // 50, int(m[0, 0]) % 50
        assert torch.equal(m, target["mask"][top : top + 16, left : left + 16])
        assert torch.equal(out_image, image[:, top : top + 16, left : left + 16])


def test_crop_pads_image_by_reflection_and_mask_with_ignore() -> None:
    mask = _blobs(4, 10)
    image, target = _sample(mask)
    image = tv_tensors.Image(torch.rand(1, 4, 10))
    out_image, out_target = RandomCrop(16, ignore_index=IGNORE)(image, target)
    m = out_target["mask"]
    assert out_image.shape == (1, 16, 16) and m.shape == (16, 16)
    # Padded evenly: 6 rows above and below, 3 columns left and right.
    assert torch.equal(m[6:10, 3:13], mask) and (m == IGNORE).sum() == 16 * 16 - 40
    assert (out_target["weight"][m == IGNORE] == 0).all()
    assert torch.equal(out_target["weight"][6:10, 3:13], target["weight"])
    assert torch.equal(out_image[:, 6:10, 3:13], image)
    # Reflection without repeating the edge, repeated while the pad exceeds the image (a triangle wave).
    rows = [0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1, 2, 3]
    assert torch.equal(out_image[0, :, 5], image[0, rows, 2])
    assert torch.equal(out_image[0, 7, :3], image[0, 1, [3, 2, 1]])


def test_same_seed_same_output_different_seed_different_output() -> None:
    cfg = _config(hflip=True, vflip=True, rot90=True, elastic=True, crop_size=32, brightness=0.3, contrast=0.3)
    pipeline = build_transforms(cfg, train=True, ignore_index=IGNORE)
    mask = _blobs()

    def run(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(seed)
        image, target = pipeline(*_sample(mask))
        return image, target["mask"]

    random.seed(1)
    np.random.seed(1)
    a = run(5)
    random.seed(2)
    np.random.seed(2)
    b = run(5)  # Python's and NumPy's generators play no part
    c = run(6)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_intensity_changes_only_the_image() -> None:
    mask = _blobs()
    image = tv_tensors.Image(torch.rand(1, 40, 48))
    target = {"mask": tv_tensors.Mask(mask), "weight": tv_tensors.Mask(torch.rand(40, 48))}
    torch.manual_seed(0)
    out_image, out_target = RandomIntensity(brightness=0.5, contrast=0.5)(image, target)
    assert out_target["mask"] is target["mask"] and out_target["weight"] is target["weight"]
    assert not torch.allclose(out_image, image)
    assert out_image.min() >= 0 and out_image.max() <= 1 and isinstance(out_image, tv_tensors.Image)
    still, _ = RandomIntensity(brightness=0.0, contrast=0.0)(image, target)
    assert torch.allclose(still, image)
    # Brightness alone is a plain scale (before clipping).
    torch.manual_seed(3)
    dim = tv_tensors.Image(torch.rand(1, 8, 8) * 0.5)
    out, _ = RandomIntensity(brightness=0.5)(dim, target)
    factor = out.sum() / dim.sum()
    assert torch.allclose(out, dim * factor, atol=1e-6) and abs(factor - 1) > 1e-3


def test_eval_pipeline_only_normalises() -> None:
    cfg = DataConfig(mean=[0.25], std=[0.5], augment=AugmentConfig(crop_size=8, elastic=True, rot90=True))
    pipeline = build_transforms(cfg, train=False, ignore_index=IGNORE)
    assert [type(t) for t in pipeline.transforms] == [Normalize]
    mask = _blobs()
    for with_weight in (True, False):
        image, target = _sample(mask, with_weight)
        out_image, out_target = pipeline(image, target)
        assert torch.allclose(out_image, (image - 0.25) / 0.5)
        assert torch.equal(out_target["mask"], mask) and ("weight" in out_target) == with_weight


def test_train_pipeline_composition() -> None:
    cfg = _config(hflip=True, elastic=True, elastic_grid=4, elastic_sigma=5.0, crop_size=16, brightness=0.1)
    pipeline = build_transforms(cfg, train=True, ignore_index=IGNORE)
    kinds = [type(t) for t in pipeline.transforms]
    assert kinds == [v2.RandomHorizontalFlip, ElasticDeformation, RandomCrop, RandomIntensity, Normalize]
    elastic = pipeline.transforms[1]
    assert (elastic.grid, elastic.sigma) == (4, 5.0)
    image, target = pipeline(*_sample(_blobs(), with_weight=False))
    assert image.shape == (1, 16, 16) and set(target) == {"mask"}


def test_boundary_errors() -> None:
    with pytest.raises(ValueError, match=r"channels.*3 values"):
        Normalize([0.5] * 3, [0.5] * 3)(tv_tensors.Image(torch.rand(1, 8, 8)))
    with pytest.raises(ValueError, match="std"):
        Normalize([0.5], [0.0])
    with pytest.raises(ValueError, match="sigma"):
        ElasticDeformation(sigma=-1.0)
    with pytest.raises(ValueError, match="grid"):
        ElasticDeformation(grid=1)
    with pytest.raises(ValueError, match="size"):
        RandomCrop(0, ignore_index=IGNORE)
    boxes = tv_tensors.BoundingBoxes(torch.tensor([[0, 0, 4, 4]]), format="XYXY", canvas_size=(8, 8))
    with pytest.raises(TypeError, match="BoundingBoxes"):
        RandomRot90()(tv_tensors.Image(torch.rand(1, 8, 8)), boxes)


def test_mirror_pad_extends_image_and_masks_by_reflection():
    from pixelwise.data.transforms import MirrorPad

    image = tv_tensors.Image(torch.arange(12.0).view(1, 3, 4))
    mask = tv_tensors.Mask(torch.arange(12).view(3, 4))
    out_image, out_target = MirrorPad(2)(image, {"mask": mask})
    expected = np.pad(np.arange(12).reshape(3, 4), 2, mode="reflect")
    np.testing.assert_array_equal(out_image[0].numpy(), expected)
    np.testing.assert_array_equal(out_target["mask"].numpy(), expected)
    assert isinstance(out_target["mask"], tv_tensors.Mask)


def test_random_scale_resizes_image_and_masks_together_and_keeps_labels():
    from pixelwise.data.transforms import RandomScale

    torch.manual_seed(0)
    mask = torch.zeros(40, 60, dtype=torch.int64)
    mask[10:30, 20:40] = 3
    image = mask.float()[None].repeat(3, 1, 1) / 3
    sizes = set()
    for _ in range(20):
        out_image, out = RandomScale(0.5, 2.0)(tv_tensors.Image(image), {"mask": tv_tensors.Mask(mask)})
        h, w = out["mask"].shape
        sizes.add(h)
        assert out_image.shape[-2:] == (h, w) and 20 <= h <= 80 and abs(w / h - 1.5) < 0.1
        assert set(out["mask"].unique().tolist()) <= {0, 3}  # nearest: no label between labels
        inside = out["mask"] == 3
        assert out_image[0][inside].mean() > 0.9 and out_image[0][~inside].mean() < 0.1  # they stay aligned
    assert len(sizes) > 5
    with pytest.raises(ValueError, match=r"RandomScale: \[2.0, 1.0\]"):
        RandomScale(2.0, 1.0)


def test_scale_crop_and_colour_jitter_in_the_training_pipeline():
    from pixelwise.config import ConfigError, check_ranges, Config

    cfg = DataConfig(mean=[0.5] * 3, std=[0.25] * 3, augment=AugmentConfig(crop_size=32, scale=[0.5, 1.5],
                                                                           saturation=0.3, hue=0.05))
    pipeline = build_transforms(cfg, train=True, ignore_index=255)
    torch.manual_seed(1)
    mask = torch.randint(0, 4, (48, 64))
    image, target = pipeline(tv_tensors.Image(torch.rand(3, 48, 64)), {"mask": tv_tensors.Mask(mask)})
    assert image.shape == (3, 32, 32) and target["mask"].shape == (32, 32)
    assert set(target["mask"].unique().tolist()) <= {0, 1, 2, 3, 255}  # 255: padding when scaled below the crop
    grey = DataConfig(mean=[0.5], std=[0.25], augment=AugmentConfig(saturation=0.3))
    with pytest.raises(ConfigError, match="saturation / hue change colours: they need RGB"):
        build_transforms(grey, train=True, ignore_index=255)
    bad = Config()
    bad.data.augment.scale = [1.5, 0.5]
    with pytest.raises(ConfigError, match=r"data.augment.scale=\[1.5, 0.5\], expected \[low, high\]"):
        check_ranges(bad)
