from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torchvision
from conftest import require_dataset
from torchvision.models.detection import maskrcnn_resnet50_fpn
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops import FrozenBatchNorm2d

import pixelwise
import pixelwise.models.mask_rcnn as mask_rcnn
from pixelwise.models.backbones.fpn import ResNetFPN, resnet_trunk
from pixelwise.models.heads.roi_heads import mask_loss, mask_probabilities, sample_proposals
from pixelwise.models.weights import WeightsError

TINY = dict(num_classes=3, min_size=64, max_size=96, rpn_pre_nms_top_n=(200, 100), rpn_post_nms_top_n=(100, 50),
            box_batch_size_per_image=32, rpn_batch_size_per_image=64)


def synthetic(n_images: int = 2, size: tuple[int, int] = (64, 80), seed: int = 0):
    """Images with bright rectangles and ellipses; targets with their boxes, labels 1..3 and masks."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    h, w = size
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    for i in range(n_images):
        image = torch.rand(3, h, w, generator=g) * 0.2
        boxes, labels, masks = [], [], []
        for k in range(2 + i):
            x1, y1 = float(torch.randint(0, w - 30, (1,), generator=g)), float(torch.randint(0, h - 30, (1,), generator=g))
            bw, bh = float(torch.randint(14, 30, (1,), generator=g)), float(torch.randint(14, 30, (1,), generator=g))
            cx, cy = x1 + bw / 2, y1 + bh / 2
            mask = ((xx + 0.5 - cx) / (bw / 2)) ** 2 + ((yy + 0.5 - cy) / (bh / 2)) ** 2 <= 1
            label = 1 + (k % 3)
            image[label - 1][mask] = 0.9
            boxes.append([x1, y1, x1 + bw, y1 + bh])
            labels.append(label)
            masks.append(mask)
        images.append(image)
        targets.append({"boxes": torch.tensor(boxes), "labels": torch.tensor(labels),
                        "masks": torch.stack(masks).to(torch.uint8)})
    return images, targets


def total(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(losses.values())


# ------------------------------------------------------------------------------------------- backbone

def test_fpn_equals_torchvision_resnet_fpn_backbone():
    tv = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5, norm_layer=FrozenBatchNorm2d).eval()
    ours = ResNetFPN(resnet_trunk(18), 256).eval()
    state = {k: v for k, v in tv.state_dict().items() if not k.startswith("body.fc.")}
    ours.load_state_dict(state)
    x = torch.randn(2, 3, 96, 160)
    with torch.no_grad():
        expected = list(tv(x).values())
        got = ours(x)
    assert [tuple(p.shape[-2:]) for p in got] == [(24, 40), (12, 20), (6, 10), (3, 5), (2, 3)]
    for a, b in zip(got, expected):
        assert torch.equal(a, b)


def test_trunk_norms_and_freezing():
    frozen = resnet_trunk(18, trainable_layers=3)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in frozen.modules()) == 20
    assert not frozen.conv1.weight.requires_grad and not frozen.layer1[0].conv1.weight.requires_grad
    assert frozen.layer2[0].conv1.weight.requires_grad
    gn = resnet_trunk(18, norm="gn")
    assert sum(isinstance(m, nn.GroupNorm) for m in gn.modules()) == 20
    assert all(p.requires_grad for p in gn.parameters())
    bn = resnet_trunk(18, frozen_bn=False)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bn.modules()) == 20


# ------------------------------------------------------------------------------------------- losses

def test_mask_losses_by_hand():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 5, 5, generator=g)
    labels = torch.tensor([1, 3, 2])
    targets = (torch.rand(3, 5, 5, generator=g) > 0.5).float()
    sig = mask_loss(logits[:, :3], labels, targets)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[torch.arange(3), labels - 1], targets)
    torch.testing.assert_close(sig, expected)
    # softmax: K + 1 channels, channel 0 = background; every pixel has a target.
    soft = mask_loss(logits, labels, targets, loss="softmax")
    log_p = logits.log_softmax(dim=1)
    cls = torch.where(targets > 0.5, labels[:, None, None], 0)
    torch.testing.assert_close(soft, -log_p.gather(1, cls[:, None])[:, 0].mean())
    # softmax_fg: K channels, foreground pixels only.
    fg = mask_loss(logits[:, :3], labels, targets, loss="softmax_fg")
    log_p = logits[:, :3].log_softmax(dim=1)
    picked = log_p.gather(1, (labels - 1)[:, None, None, None].expand(3, 1, 5, 5))[:, 0]
    torch.testing.assert_close(fg, -picked[targets > 0.5].mean())
    probs = mask_probabilities(logits, labels, loss="softmax")
    torch.testing.assert_close(probs, logits.softmax(dim=1)[torch.arange(3), labels])
    agnostic = mask_probabilities(logits[:, :1], labels, class_agnostic=True)
    torch.testing.assert_close(agnostic, logits[:, 0].sigmoid())
    assert mask_loss(logits[:0], labels[:0], targets[:0]).item() == 0


def test_sample_proposals_with_crowd():
    proposals = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [52, 52, 58, 58], [80, 0, 90, 10]])
    gt = torch.tensor([[0.0, 0, 10, 10]])
    crowd = torch.tensor([[48.0, 48, 62, 62]])
    torch.manual_seed(0)
    rois, matched, labels, reg = sample_proposals([proposals], [gt], [torch.tensor([2])], [crowd],
                                                  batch_size_per_image=64, positive_fraction=0.25)
    rois, labels = rois[0], labels[0]
    # the gt itself is added; proposals covered by the crowd box are neither positive nor negative.
    assert len(rois) == 4
    as_set = {tuple(r.tolist()): int(lab) for r, lab in zip(rois, labels)}
    assert as_set[(0.0, 0.0, 10.0, 10.0)] == 2 and as_set[(1.0, 1.0, 11.0, 11.0)] == 2
    assert as_set[(80.0, 0.0, 90.0, 10.0)] == 0
    assert (50.0, 50.0, 60.0, 60.0) not in as_set and (52.0, 52.0, 58.0, 58.0) not in as_set
    assert reg[0].shape == (4, 4)
    # no ground truth at all: everything is background.
    rois, matched, labels, reg = sample_proposals([proposals], [gt[:0]], [torch.zeros(0, dtype=torch.int64)])
    assert labels[0].eq(0).all() and len(rois[0]) == 5 and torch.equal(reg[0], torch.zeros(5, 4))


# ------------------------------------------------------------------------------------------- model

COMBOS = [
    dict(),
    dict(mask_roi="roi_pool", mask_loss="softmax"),
    dict(mask_roi="roi_warp", class_agnostic=True),
    dict(mask_roi="roi_align", mask_loss="softmax", class_agnostic=True, mask_head="mlp"),
    dict(mask_roi="roi_pool", mask_loss="softmax_fg", mask_head="mlp"),
    dict(mask_roi="roi_warp", mask_loss="sigmoid", class_agnostic=True, mask_head="mlp"),
    dict(norm="gn", mask_loss="softmax", mask_roi="roi_warp"),
    dict(norm="gn", class_agnostic=True, mask_roi="roi_pool"),
    dict(frozen_bn=False, mask_loss="softmax_fg", mask_roi="roi_align"),
]


@pytest.mark.parametrize("kwargs", COMBOS, ids=lambda k: "-".join(f"{v}" for v in k.values()) or "default")
def test_losses_are_finite_with_gradients(kwargs):
    model = pixelwise.create_model("mask_rcnn_r18_fpn", **TINY, **kwargs).train()
    images, targets = synthetic()
    losses = model(images, targets)["losses"]
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values()), losses
    assert losses["loss_mask"] > 0
    total(losses).backward()
    heads = [model.rpn.head.cls_logits.weight, model.roi_heads.box_head.cls_score.weight,
             model.backbone.fpn.layer_blocks[0][0].weight, model.backbone.body.layer4[0].conv1.weight]
    heads += [p for n, p in model.roi_heads.mask_head.named_parameters() if "logits" in n and n.endswith("weight")]
    for p in heads:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_training_steps_reduce_the_loss():
    torch.manual_seed(0)
    model = pixelwise.create_model("mask_rcnn_r18_fpn", **TINY).train()
    images, targets = synthetic()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    history = []
    for _ in range(8):
        loss = total(model(images, targets)["losses"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert all(map(lambda v: v == v, history))
    assert history[-1] < history[0], history


def test_detection_output_format_and_contract():
    model = pixelwise.create_model("mask_rcnn_r18_fpn", **TINY, box_score_thresh=0.0, detections_per_img=10).eval()
    images, targets = synthetic()
    sizes_differ = [images[0], images[1][:, :50, :70]]
    with torch.no_grad():
        out = model(sizes_differ)
    assert set(out) == {"detections"} and len(out["detections"]) == 2
    for det, img in zip(out["detections"], sizes_differ):
        n = len(det["boxes"])
        assert 0 < n <= 10
        assert det["boxes"].shape == (n, 4) and det["scores"].shape == (n,) and det["labels"].dtype == torch.int64
        assert det["masks"].shape == (n, *img.shape[-2:]) and det["masks"].dtype == torch.bool
        assert (det["boxes"][:, 2] <= img.shape[-1] + 1e-3).all() and (det["boxes"][:, 3] <= img.shape[-2] + 1e-3).all()
        assert ((det["labels"] >= 1) & (det["labels"] <= 3)).all()
        assert torch.all(det["scores"][:-1] >= det["scores"][1:])
    # contract: losses whenever targets are given, detections whenever asked, in either mode
    with torch.no_grad():
        both = model(images, targets)
        assert set(both) == {"losses", "detections"}
        model.train()
        assert set(model(images, targets)) == {"losses"}
        assert set(model(images, targets, detect=True)) == {"losses", "detections"}
        assert set(model(images)) == {"detections"}
    model.eval().mask_threshold = None
    with torch.no_grad():
        probs = model(images[:1])["detections"][0]["masks"]
    assert probs.is_floating_point() and 0 <= probs.min() and probs.max() <= 1


def test_empty_targets_and_crowds():
    model = pixelwise.create_model("mask_rcnn_r18_fpn", **TINY).train()
    images, targets = synthetic()
    targets[0] = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                  "masks": torch.zeros(0, 64, 80, dtype=torch.uint8)}
    losses = model(images, targets)["losses"]
    assert all(torch.isfinite(v) for v in losses.values())
    total(losses).backward()
    # no annotations at all in the batch: the mask loss is zero, nothing crashes
    empty = [dict(targets[0]), dict(targets[0])]
    losses = model(images, empty)["losses"]
    assert losses["loss_mask"].item() == 0 and losses["loss_box_reg"].item() == 0
    assert all(torch.isfinite(v) for v in losses.values())
    # a crowd region: not a positive, and the losses stay finite
    images, targets = synthetic()
    targets[1]["iscrowd"] = torch.tensor([0, 1, 0])
    losses = model(images, targets)["losses"]
    assert all(torch.isfinite(v) for v in losses.values())
    # only crowd annotations in an image
    targets[0]["iscrowd"] = torch.ones(2, dtype=torch.int64)
    losses = model(images, targets)["losses"]
    assert all(torch.isfinite(v) for v in losses.values())


def test_bad_targets_are_reported():
    model = pixelwise.create_model("mask_rcnn_r18_fpn", **TINY)
    images, targets = synthetic(1)
    targets[0]["boxes"][0, 2] = targets[0]["boxes"][0, 0]
    with pytest.raises(ValueError, match="positive width"):
        model(images, targets)
    images, targets = synthetic(1)
    targets[0]["labels"][0] = 0
    with pytest.raises(ValueError, match="1..3"):
        model(images, targets)
    with pytest.raises(ValueError, match="no argument 'mask_los'"):
        pixelwise.create_model("mask_rcnn_r18_fpn", mask_los="softmax")
    with pytest.raises(ValueError, match="softmax_fg"):
        pixelwise.create_model("mask_rcnn_r18_fpn", mask_loss="softmax_fg", class_agnostic=True)


@pytest.mark.parametrize("kwargs", [dict(), dict(mask_roi="roi_pool", mask_loss="softmax", class_agnostic=True)])
def test_c4_losses_and_detections(kwargs):
    model = pixelwise.create_model("mask_rcnn_r50_c4", **{**TINY, "rpn_pre_nms_top_n": (300, 100)}, box_score_thresh=0.0,
                                   detections_per_img=10, **kwargs).train()
    assert model.rpn.head.cls_logits.out_channels == 15
    assert not hasattr(model.backbone.body, "layer4") and model.roi_heads.res5 is not None
    images, targets = synthetic()
    losses = model(images, targets)["losses"]
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_mask"] > 0
    total(losses).backward()
    assert model.roi_heads.mask_head.mask_fcn_logits.weight.grad.abs().sum() > 0
    assert model.roi_heads.res5[0].conv1.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        det = model(images)["detections"][0]
    assert det["masks"].shape == (len(det["boxes"]), 64, 80) and len(det["boxes"]) > 0


def test_registered_builders():
    names = set(pixelwise.list_models())
    for depth in (18, 34, 50, 101):
        assert f"mask_rcnn_r{depth}_fpn" in names
    assert {"mask_rcnn_r50_c4", "mask_rcnn_r101_c4"} <= names


def test_backbone_weights_from_local_files(tmp_path):
    tv = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(tv.state_dict(), path)
    model = pixelwise.create_model("mask_rcnn_r18_fpn", num_classes=3, backbone_weights=str(path))
    torch.testing.assert_close(model.backbone.body.layer4[1].conv2.weight, tv.layer4[1].conv2.weight)
    torch.testing.assert_close(model.backbone.body.bn1.running_var, tv.bn1.running_var)
    assert not model.backbone.body.layer1[0].conv1.weight.requires_grad  # trainable_layers=3 with weights
    tv50 = torchvision.models.resnet50(weights=None)
    path50 = tmp_path / "r50.pth"
    torch.save(tv50.state_dict(), path50)
    c4 = pixelwise.create_model("mask_rcnn_r50_c4", num_classes=3, backbone_weights=str(path50))
    torch.testing.assert_close(c4.roi_heads.res5[2].conv3.weight, tv50.layer4[2].conv3.weight)
    torch.testing.assert_close(c4.backbone.body.layer3[5].conv3.weight, tv50.layer3[5].conv3.weight)
    with pytest.raises(WeightsError, match="does not exist"):
        pixelwise.create_model("mask_rcnn_r18_fpn", backbone_weights=str(tmp_path / "missing.pth"))
    with pytest.raises(WeightsError, match="do not fit"):
        pixelwise.create_model("mask_rcnn_r18_fpn", backbone_weights=str(path50))


# ------------------------------------------------------------------------------------------- torchvision

def _coco_images(names=("000000391895.jpg", "000000118113.jpg")) -> list[torch.Tensor]:
    root = require_dataset("tiny-coco", full=True)  # these two files
    return [torchvision.io.read_image(str(root / "images" / n)).float() / 255 for n in names]


def _match_masks(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


@pytest.fixture(scope="module")
def torchvision_pair(tmp_path_factory):
    """A randomly initialised torchvision maskrcnn_resnet50_fpn (K = 3) and ours loaded from its state dict file."""
    torch.manual_seed(0)
    tv = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=4, min_size=320, max_size=512).eval()
    tv.roi_heads.score_thresh = 0.0
    path = tmp_path_factory.mktemp("tv") / "maskrcnn_r50_fpn_random.pth"
    torch.save(tv.state_dict(), path)
    ours = mask_rcnn.mask_rcnn_r50_fpn(num_classes=3, min_size=320, max_size=512, frozen_bn=False,
                                       box_score_thresh=0.0, weights=str(path)).eval()
    return tv, ours, path


def test_converted_torchvision_weights_give_the_same_detections(torchvision_pair):
    tv, ours, _ = torchvision_pair
    images = _coco_images()
    ours.mask_threshold = None  # probabilities, to compare them too; ours binarises them with >= 0.5
    try:
        with torch.no_grad():
            expected = tv(images)
            got = ours(images)["detections"]
    finally:
        ours.mask_threshold = 0.5
    for e, d, img in zip(expected, got, images):
        assert len(d["boxes"]) == len(e["boxes"]) and len(e["boxes"]) >= 20
        assert (d["boxes"] - e["boxes"]).abs().max() < 1e-3
        assert torch.equal(d["labels"], e["labels"])
        torch.testing.assert_close(d["scores"], e["scores"], rtol=1e-4, atol=1e-5)
        e_probs = e["masks"][:, 0]
        assert d["masks"].shape == e_probs.shape and d["masks"].shape[-2:] == img.shape[-2:]
        assert (d["masks"] - e_probs).abs().max() < 1e-4
        ours_bin, tv_bin = d["masks"] >= 0.5, e_probs >= 0.5
        # With random weights the mask logits saturate, so a pasted mask's edge (1 next to the zero padding of
        # the 28x28 mask) is exactly 0.5 in torchvision: paste_masks repeats its rounding, so these ties agree too.
        iou = _match_masks(ours_bin, tv_bin)
        assert iou.min() >= 0.99, iou.min()
        assert torch.equal(ours_bin, tv_bin)
        assert tv_bin.flatten(1).any(1).sum() >= 10


def test_converted_torchvision_weights_give_the_same_training_losses(torchvision_pair):
    tv, ours, _ = torchvision_pair
    images = _coco_images()
    targets = []
    for img, boxes, labels in zip(images, ([[40.0, 30, 300, 340], [350, 100, 600, 300]], [[10.0, 200, 400, 600]]),
                                  ([1, 3], [2])):
        boxes = torch.tensor(boxes)
        masks = torch.zeros(len(boxes), *img.shape[-2:], dtype=torch.uint8)
        for m, (x1, y1, x2, y2) in zip(masks, boxes.int().tolist()):
            m[y1 + (y2 - y1) // 4: y2, x1: x2 - (x2 - x1) // 3] = 1
        targets.append({"boxes": boxes, "labels": torch.tensor(labels), "masks": masks})
    tv, ours = copy.deepcopy(tv).train(), copy.deepcopy(ours).train()  # BatchNorm updates its statistics
    torch.manual_seed(5)
    expected = tv(images, [dict(t) for t in targets])
    torch.manual_seed(5)
    got = ours(images, targets)["losses"]
    assert set(got) == set(expected)
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-4, atol=1e-6, msg=k)


def test_frozen_batchnorm_model_loads_the_same_weights(torchvision_pair):
    tv, ours, path = torchvision_pair
    frozen = mask_rcnn.mask_rcnn_r50_fpn(num_classes=3, min_size=320, max_size=512, weights=str(path)).eval()
    assert any(isinstance(m, FrozenBatchNorm2d) for m in frozen.modules())
    x = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        for a, b in zip(frozen.backbone(x), ours.backbone(x)):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3 * b.abs().max().item())


def test_converter_rejects_other_state_dicts():
    with pytest.raises(WeightsError, match="not a torchvision Mask R-CNN"):
        mask_rcnn.convert_torchvision_maskrcnn(torchvision.models.resnet18().state_dict())


def test_box_detections_with_no_proposals_is_empty_not_an_error():
    # An untrained RPN can propose nothing for an image; inference must then return no detections.
    from pixelwise.models.heads.roi_heads import box_detections

    out = box_detections(torch.zeros(0, 3), torch.zeros(0, 12), [torch.zeros(0, 4)], [(64, 64)])
    assert [tuple(t.shape) for t in out[0]] == [(0, 4), (0,), (0,)]


def test_frozen_batchnorm_keeps_bf16_and_equals_torchvisions_in_float32():
    # torchvision's FrozenBatchNorm2d returns float32 under bf16 autocast (float32 scale x bf16 input): every
    # activation of a frozen trunk went back and forth between the dtypes (BENCHMARKS.md, "Mask R-CNN backbone").
    from pixelwise.models.backbones.fpn import FrozenBatchNorm2d as Ours

    torch.manual_seed(0)
    trunk = resnet_trunk(18, frozen_bn=True)
    frozen = [m for m in trunk.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert frozen and all(type(m) is Ours for m in frozen)
    theirs = FrozenBatchNorm2d(16)
    ours = Ours(16)
    for key in ("weight", "bias", "running_mean", "running_var"):
        value = torch.rand(16) + 0.5
        getattr(theirs, key).copy_(value)
        getattr(ours, key).copy_(value)
    x = torch.randn(2, 16, 9, 9)
    assert torch.equal(ours(x), theirs(x))
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    backbone = ResNetFPN(trunk, 64).eval().to(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        outs = backbone(torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last))
    assert all(o.dtype == torch.bfloat16 for o in outs)
