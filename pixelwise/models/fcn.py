"""Fully Convolutional Networks (Long, Shelhamer, Darrell, CVPR 2015).

`fcn32s`, `fcn16s`, `fcn8s`: the paper's FCN-VGG16 with its skip architecture (section 4.2).
`fcn_resnet50`, `fcn_resnet101`: the modern variant (dilated ResNet, output stride 8, conv head),
laid out like torchvision's models so their state dicts load unchanged.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from pixelwise.models.backbones.resnet import ResNetTrunk
from pixelwise.models.backbones.vgg import VGG16, convert_torchvision_vgg16
from pixelwise.models.heads.fcn import ConvHead, SkipHead
from pixelwise.errors import ConfigError
from pixelwise.models.weights import WeightsError, fit_state_dict, load_state_dict
from pixelwise.registry import register_model

__all__ = ["FCN", "FCNResNet", "fcn32s", "fcn16s", "fcn8s", "fcn_resnet50", "fcn_resnet101"]


class FCN(nn.Module):
    """FCN-VGG16: images (B, C, H, W) -> logits (B, num_classes, H, W), any H, W >= 1.

    With `extra_heads` ({name: classes}) the trunk feeds one more scoring head per name, each with its own
    score, skip and upsampling layers (FCN section 5, SIFT Flow: "a two-headed version of FCN-16s" predicting
    semantic and geometric labels at once); it then returns {"out": logits, name: that head's logits}.
    """

    def __init__(self, backbone: VGG16, head: SkipHead, extra_heads: dict[str, SkipHead] | None = None) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head
        self.extra_heads = nn.ModuleDict(extra_heads) if extra_heads else None

    def forward(self, images: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        features = self.backbone(images)
        out = self.head(features, images.shape[-2:])
        if self.extra_heads is None:
            return out
        return {"out": out, **{name: head(features, images.shape[-2:]) for name, head in self.extra_heads.items()}}

    def load_staged(self, state: dict[str, torch.Tensor], source: str = "weights") -> list[str]:
        """Start from a trained coarser FCN (section 4.2: FCN-16s from FCN-32s, FCN-8s from FCN-16s).

        Every parameter of `state` must fit; the parameters it lacks must be this net's new skip
        layers, which keep their initialisation (zero scores, bilinear 2x upsampling). Returns the
        names of those new parameters.
        """
        own = self.state_dict()
        new_layers = tuple(f"{h}.{layer}." for h in ["head", *(f"extra_heads.{k}" for k in self.extra_heads or {})]
                           for layer in ("score_pool4", "score_pool3", "upscore2", "upscore_pool4"))
        missing = [k for k in own if k not in state]
        not_new = [k for k in missing if not k.startswith(new_layers)]
        unexpected = [k for k in state if k not in own]
        if not_new or unexpected:
            raise WeightsError(
                f"{source}: not a coarser FCN of the same backbone; missing {not_new[:5]}, unexpected {unexpected[:5]}"
            )
        wrong = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in state if state[k].shape != own[k].shape]
        if wrong:
            raise WeightsError(f"{source}: shapes do not fit (file vs model): {', '.join(wrong[:5])}")
        self.load_state_dict(state, strict=False)
        return missing


def _build_fcn(net: int, *, num_classes: int, in_channels: int, pad100: bool, upsampling: str,
               learn_upsampling: bool, batch_norm: bool, width: float, fc_channels: int, dropout: float,
               backbone_weights: str | None, output_stride: int = 32, extra_heads: dict | None = None) -> FCN:
    backbone = VGG16(in_channels=in_channels, pad100=pad100, batch_norm=batch_norm, width=width,
                     fc_channels=fc_channels, dropout=dropout, output_stride=output_stride)
    if backbone_weights is not None:
        enum = torchvision.models.VGG16_BN_Weights if batch_norm else torchvision.models.VGG16_Weights
        state = load_state_dict(backbone_weights, what="backbone_weights", enum=enum.IMAGENET1K_V1,
                                names=("imagenet", "DEFAULT", "IMAGENET1K_V1"))
        try:
            converted, _ = convert_torchvision_vgg16(state)
        except WeightsError as e:
            raise WeightsError(f"backbone_weights {backbone_weights!r}: {e}") from None
        fit_state_dict(backbone, converted, what=f"backbone_weights {backbone_weights!r}")
    def skip_head(classes: int) -> SkipHead:
        return SkipHead(classes, backbone.channels, backbone.placements, net=net, upsampling=upsampling,
                        learn_upsampling=learn_upsampling)

    for name, classes in (extra_heads or {}).items():
        if name in ("out", "aux") or isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
            raise ConfigError(f"model.args.extra_heads: {name!r}: {classes!r}; expected a name other than out and "
                              "aux with a number of classes >= 1, e.g. {geo: 3}")
    return FCN(backbone, skip_head(num_classes), {k: skip_head(c) for k, c in (extra_heads or {}).items()})


_FCN_DOC_ARGS = """
    pad100: the reference net's 100-pixel padding of conv1_1 (False: "same" padding of fc6).
    upsampling: "cascade" (exact staged initialisation) or "direct" (the Caffe nets' single deconvolution).
    learn_upsampling: learn the 2x upsamplings (section 4.2); the final one is always fixed bilinear.
    backbone_weights: None, "imagenet" (torchvision's VGG16 weights; downloads) or a local .pth path.
    width, fc_channels, batch_norm: smaller or BN variants for training from scratch (1.0, 4096, False = VGG16).
    extra_heads: {name: classes} more scoring heads on the same trunk (section 5, SIFT Flow: {geo: 3}).
"""


@register_model
def fcn32s(*, num_classes: int = 21, in_channels: int = 3, pad100: bool = True, upsampling: str = "cascade",
           learn_upsampling: bool = True, batch_norm: bool = False, width: float = 1.0, fc_channels: int = 4096,
           dropout: float = 0.5, backbone_weights: str | None = None, output_stride: int = 32,
           extra_heads: dict | None = None) -> FCN:
    """FCN-32s: VGG16 convolutionalised, scores upsampled 32x (Long et al. 2015, section 4.1).

    output_stride=16 or 8 makes its scores denser by filter rarefaction (section 3.2) instead of skips.
    The denser scores are those shift-and-stitch adds to the right of and below each coarse one, so
    on inputs under about 32 pixels they may not reach the top-left corner (zero logits there).
    """
    return _build_fcn(
        32, num_classes=num_classes, in_channels=in_channels, pad100=pad100, upsampling=upsampling,
        learn_upsampling=learn_upsampling, batch_norm=batch_norm, width=width, fc_channels=fc_channels,
        dropout=dropout, backbone_weights=backbone_weights, output_stride=output_stride, extra_heads=extra_heads,
    )


@register_model
def fcn16s(*, num_classes: int = 21, in_channels: int = 3, pad100: bool = True, upsampling: str = "cascade",
           learn_upsampling: bool = True, batch_norm: bool = False, width: float = 1.0, fc_channels: int = 4096,
           dropout: float = 0.5, backbone_weights: str | None = None, extra_heads: dict | None = None) -> FCN:
    """FCN-16s: FCN-32s plus a zero-initialised pool4 skip, fused after a learnable 2x upsampling (section 4.2)."""
    return _build_fcn(
        16, num_classes=num_classes, in_channels=in_channels, pad100=pad100, upsampling=upsampling,
        learn_upsampling=learn_upsampling, batch_norm=batch_norm, width=width, fc_channels=fc_channels,
        dropout=dropout, backbone_weights=backbone_weights, extra_heads=extra_heads,
    )


@register_model
def fcn8s(*, num_classes: int = 21, in_channels: int = 3, pad100: bool = True, upsampling: str = "cascade",
          learn_upsampling: bool = True, batch_norm: bool = False, width: float = 1.0, fc_channels: int = 4096,
          dropout: float = 0.5, backbone_weights: str | None = None, extra_heads: dict | None = None) -> FCN:
    """FCN-8s: FCN-16s plus a pool3 skip; stride-8 predictions (section 4.2, Fig. 3)."""
    return _build_fcn(
        8, num_classes=num_classes, in_channels=in_channels, pad100=pad100, upsampling=upsampling,
        learn_upsampling=learn_upsampling, batch_norm=batch_norm, width=width, fc_channels=fc_channels,
        dropout=dropout, backbone_weights=backbone_weights, extra_heads=extra_heads,
    )


for _fn in (fcn32s, fcn16s, fcn8s):
    _fn.__doc__ += "\n" + _FCN_DOC_ARGS


class FCNResNet(nn.Module):
    """Dilated ResNet (output stride 8) with a conv head and optional auxiliary head on layer3.

    images (B, 3, H, W) -> logits (B, num_classes, H, W), bilinearly upsampled as torchvision does.
    In training with aux_loss it returns {"out": logits, "aux": aux_logits}; the trainer weighs the
    auxiliary loss by train.aux_loss_weight.
    """

    def __init__(self, depth: int, num_classes: int, *, aux_loss: bool) -> None:
        super().__init__()
        self.backbone = ResNetTrunk(depth, dilation=(False, True, True))
        self.classifier = ConvHead(self.backbone.channels["c5"], num_classes)
        self.aux_classifier = ConvHead(self.backbone.channels["c4"], num_classes) if aux_loss else None

    def forward(self, images: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        size = images.shape[-2:]
        features = self.backbone(images)
        out = F.interpolate(self.classifier(features["c5"]), size=size, mode="bilinear", align_corners=False)
        if not (self.training and self.aux_classifier is not None):
            return out
        aux = F.interpolate(self.aux_classifier(features["c4"]), size=size, mode="bilinear", align_corners=False)
        return {"out": out, "aux": aux}


def convert_torchvision_fcn(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision fcn_resnet50/101 state dict -> ours. The layouts match, so only keys we do not
    have (the trunk's unused fc, if present) are dropped; anything else unexpected is an error later."""
    if not {"backbone.conv1.weight", "classifier.4.weight"} <= set(state):
        raise WeightsError("not a torchvision FCN state dict: no 'backbone.conv1.weight' and 'classifier.4.weight' keys")
    return {k: v for k, v in state.items() if not k.startswith("backbone.fc.")}


def _build_fcn_resnet(depth: int, *, num_classes: int, aux_loss: bool, weights: str | None,
                      backbone_weights: str | None) -> FCNResNet:
    model = FCNResNet(depth, num_classes, aux_loss=aux_loss)
    if weights is not None:
        enum = getattr(torchvision.models.segmentation, f"FCN_ResNet{depth}_Weights").COCO_WITH_VOC_LABELS_V1
        state = load_state_dict(weights, what="weights", enum=enum, names=("coco_voc", "DEFAULT", "COCO_WITH_VOC_LABELS_V1"))
        try:
            state = convert_torchvision_fcn(state)
        except WeightsError as e:
            raise WeightsError(f"weights {weights!r}: {e}") from None
        if not aux_loss:
            state = {k: v for k, v in state.items() if not k.startswith("aux_classifier.")}
        fit_state_dict(model, state, what=f"weights {weights!r}")
    elif backbone_weights is not None:
        enum = getattr(torchvision.models, f"ResNet{depth}_Weights").IMAGENET1K_V1
        state = load_state_dict(backbone_weights, what="backbone_weights", enum=enum,
                                names=("imagenet", "DEFAULT", "IMAGENET1K_V1"))
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        fit_state_dict(model.backbone, state, what=f"backbone_weights {backbone_weights!r}")
    return model


@register_model
def fcn_resnet50(*, num_classes: int = 21, aux_loss: bool = False, weights: str | None = None,
                 backbone_weights: str | None = None) -> FCNResNet:
    """FCN with a dilated ResNet-50 (torchvision's layout): weights="coco_voc" or a path loads its state dicts."""
    return _build_fcn_resnet(50, num_classes=num_classes, aux_loss=aux_loss, weights=weights,
                             backbone_weights=backbone_weights)


@register_model
def fcn_resnet101(*, num_classes: int = 21, aux_loss: bool = False, weights: str | None = None,
                  backbone_weights: str | None = None) -> FCNResNet:
    """FCN with a dilated ResNet-101 (torchvision's layout): weights="coco_voc" or a path loads its state dicts."""
    return _build_fcn_resnet(101, num_classes=num_classes, aux_loss=aux_loss, weights=weights,
                             backbone_weights=backbone_weights)
