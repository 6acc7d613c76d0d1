from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import pixelwise
from pixelwise.layers import DoubleConv
from pixelwise.models.unet import UNet, unet, unet_padded
from pixelwise.registry import model_summary


@pytest.fixture(scope="module")
def paper_net() -> UNet:
    torch.manual_seed(0)
    return unet()


def _count_by_formula(in_channels: int, num_classes: int, base_width: int, depth: int) -> int:
    """Parameters of the paper's U-Net, counted from Fig. 1 layer by layer."""

    def conv(cin: int, cout: int, k: int) -> int:
        return k * k * cin * cout + cout

    widths = [base_width * 2**i for i in range(depth + 1)]
    total = conv(in_channels, widths[0], 3) + conv(widths[0], widths[0], 3)
    for i in range(1, depth + 1):
        total += conv(widths[i - 1], widths[i], 3) + conv(widths[i], widths[i], 3)
    for i in range(depth):
        total += conv(widths[i + 1], widths[i], 2)  # 2x2 up-convolution, same count as a 2x2 conv
        total += conv(2 * widths[i], widths[i], 3) + conv(widths[i], widths[i], 3)
    return total + conv(widths[0], num_classes, 1)


def test_paper_net_maps_572_to_388(paper_net: UNet) -> None:
    assert paper_net.output_size(572) == 388
    assert paper_net.input_size_for(388) == 572
    assert paper_net.input_size_for(387) == 572
    assert paper_net.input_size_for(389) == 588


def test_parameter_count_matches_formula(paper_net: UNet) -> None:
    n = sum(p.numel() for p in paper_net.parameters())
    assert n == _count_by_formula(1, 2, 64, 4)
    assert n == 31_030_658
    small = unet(in_channels=3, num_classes=5, base_width=8, depth=3)
    assert sum(p.numel() for p in small.parameters()) == _count_by_formula(3, 5, 8, 3)


def test_paper_channel_sizes(paper_net: UNet) -> None:
    assert [b.out_ch for b in paper_net.down] == [64, 128, 256, 512, 1024]
    assert [b.in_ch for b in paper_net.down] == [1, 64, 128, 256, 512]
    assert [(u.in_channels, u.out_channels, u.kernel_size, u.stride) for u in paper_net.up] == [
        (1024, 512, (2, 2), (2, 2)),
        (512, 256, (2, 2), (2, 2)),
        (256, 128, (2, 2), (2, 2)),
        (128, 64, (2, 2), (2, 2)),
    ]
    assert [(b.in_ch, b.out_ch) for b in paper_net.up_blocks] == [(1024, 512), (512, 256), (256, 128), (128, 64)]
    assert (paper_net.head.in_channels, paper_net.head.out_channels, paper_net.head.kernel_size) == (64, 2, (1, 1))
    convs = [m for m in paper_net.down.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.kernel_size == (3, 3) and c.padding == (0, 0) for c in convs)
    # The same channels flow through a forward pass at the smallest valid input.
    seen: list[int] = []
    blocks = [*paper_net.down, *paper_net.up_blocks]
    hooks = [b.register_forward_hook(lambda m, i, o: seen.append(o.shape[1])) for b in blocks]
    paper_net.eval()
    with torch.no_grad():
        out = paper_net(torch.zeros(1, 1, paper_net.min_input_size, paper_net.min_input_size))
    for h in hooks:
        h.remove()
    assert seen == [64, 128, 256, 512, 1024, 512, 256, 128, 64]
    assert out.shape == (1, 2, 4, 4)


def test_fig1_spatial_sizes() -> None:
    """Every map of Fig. 1 at 572x572, in a narrow net (the sizes do not depend on the width)."""
    net = unet(base_width=2).eval()
    sizes: list[int] = []
    convs = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m is not net.head]
    hooks = [c.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1])) for c in convs]
    with torch.no_grad():
        out = net(torch.zeros(1, 1, 572, 572))
    for h in hooks:
        h.remove()
    # In execution order; each up-convolution doubles, each 3x3 convolution removes 2.
    assert sizes == [
        570, 568, 282, 280, 138, 136, 66, 64, 30, 28,  # contracting path and bottleneck
        56, 54, 52, 104, 102, 100, 200, 198, 196, 392, 390, 388,  # expanding path
    ]
    assert out.shape == (1, 2, 388, 388)


def _reference_sizes(depth: int, padding: bool, limit: int) -> dict[int, int]:
    """Valid input -> output sides, built backwards from the bottleneck input (independent of UNet)."""
    pairs = {}
    shrink = 0 if padding else 4
    for t in range(1, limit):
        s = t
        for _ in range(depth):
            s = 2 * s + shrink  # input side of each contracting level
        u = t - shrink
        ok = u >= 1
        for _ in range(depth):
            u = 2 * u - shrink
            ok = ok and u >= 1
        if ok and s <= limit:
            pairs[s] = u
    return pairs


@pytest.mark.parametrize("padding", [False, True])
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_size_arithmetic_is_consistent(depth: int, padding: bool) -> None:
    net = UNet(base_width=2, depth=depth, padding=padding)
    limit = 700
    reference = _reference_sizes(depth, padding, limit)
    for s in range(-3, limit):
        if s in reference:
            assert net.output_size(s) == reference[s], s
        else:
            with pytest.raises(ValueError):
                net.output_size(s)
    valid = sorted(reference)
    assert net.min_input_size == valid[0]
    assert {b - a for a, b in zip(valid, valid[1:])} == {2**depth}
    if padding:
        assert all(reference[s] == s for s in valid)
    for o in range(1, reference[valid[-2]]):
        s = net.input_size_for(o)
        assert s in reference and reference[s] >= o
        assert all(reference[v] < o for v in valid if v < s), (o, s)


@pytest.mark.parametrize("padding", [False, True])
def test_forward_shape_matches_output_size(padding: bool) -> None:
    net = UNet(base_width=4, depth=2, padding=padding, num_classes=3).eval()
    with torch.no_grad():
        for h, w in [(net.min_input_size, net.min_input_size), (net.input_size_for(64), net.input_size_for(30))]:
            out = net(torch.randn(2, 1, h, w))
            assert out.shape == (2, 3, net.output_size(h), net.output_size(w))
            assert torch.isfinite(out).all()
    if padding:
        assert net(torch.randn(1, 1, 64, 64)).shape == (1, 3, 64, 64)


def test_invalid_sizes_name_the_nearest_valid_ones(paper_net: UNet) -> None:
    with pytest.raises(ValueError, match=r"570.*556 and 572"):
        paper_net.output_size(570)
    with pytest.raises(ValueError, match=r"smallest valid size is 188"):
        paper_net.output_size(100)
    with pytest.raises(ValueError, match=r"smallest valid size is 188"):
        paper_net.output_size(0)
    with pytest.raises(ValueError, match="output_size"):
        paper_net.input_size_for(0)
    padded = unet_padded(base_width=2, depth=4)
    assert padded.output_size(96) == 96 and padded.input_size_for(97) == 112 and padded.input_size_for(1) == 16
    with pytest.raises(ValueError, match=r"100.*96 and 112"):
        padded.output_size(100)
    with pytest.raises(ValueError, match=r"smallest valid size is 16"):
        padded.output_size(-16)


def test_forward_rejects_invalid_sizes_clearly() -> None:
    net = unet(base_width=2, depth=2)
    assert net.min_input_size == 44 and net.size_step == 4
    with pytest.raises(ValueError, match=r"width 66 .*64 and 68"):
        net(torch.zeros(1, 1, 64, 66))
    with pytest.raises(ValueError, match=r"height 65 .*64 and 68"):
        net(torch.zeros(1, 1, 65, 64))
    with pytest.raises(ValueError, match=r"\(1, 3, 64, 64\).*\(B, 1, H, W\)"):
        net(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"height 40 .*padded.*32 and 48"):
        unet_padded(base_width=2, depth=4)(torch.zeros(1, 1, 40, 48))


@pytest.mark.parametrize(
    "kwargs", [dict(depth=0), dict(base_width=0), dict(num_classes=0), dict(dropout=1.0), dict(in_channels=1.5)]
)
def test_bad_arguments_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        unet(**kwargs)


def test_he_normal_initialisation(paper_net: UNet) -> None:
    checked = 0
    for m in paper_net.modules():
        if isinstance(m, nn.ConvTranspose2d):
            n = m.in_channels  # 2x2 stride 2: each output pixel sees one input pixel per channel
        elif isinstance(m, nn.Conv2d):
            n = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
        else:
            continue
        assert torch.count_nonzero(m.bias) == 0
        if m.weight.numel() < 20_000:  # too few samples for tight statistics
            continue
        std = math.sqrt(2.0 / n)
        assert abs(m.weight.std().item() / std - 1) < 0.03, (m, m.weight.std().item(), std)
        assert abs(m.weight.mean().item()) < 0.03 * std
        checked += 1
    assert checked >= 20
    # Not PyTorch's default (kaiming_uniform with a=sqrt(5), std = 1/sqrt(3N)).
    first = paper_net.down[0][1][0]
    assert abs(first.weight.std().item() - math.sqrt(2 / 576)) < 0.002


def test_dropout_at_end_of_contracting_path_and_off_in_eval() -> None:
    net = unet(base_width=4, depth=3)
    kinds = [type(d) for d in net.dropout]
    assert kinds == [nn.Identity, nn.Identity, nn.Dropout, nn.Dropout]
    assert all(d.p == 0.5 for d in net.dropout if isinstance(d, nn.Dropout))
    x = torch.randn(1, 1, net.input_size_for(16), net.input_size_for(16))
    net.train()
    torch.manual_seed(1)
    a = net(x)
    torch.manual_seed(2)
    b = net(x)
    assert not torch.allclose(a, b)
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), net(x))
    no_dropout = unet(base_width=4, depth=3, dropout=0.0)
    assert not any(isinstance(m, nn.Dropout) for m in no_dropout.modules())


def test_gradients_reach_the_first_layer() -> None:
    net = unet_padded(base_width=4, depth=3, batch_norm=True)
    out = net(torch.randn(2, 1, 64, 64))
    assert out.shape == (2, 2, 64, 64)
    out.square().mean().backward()
    first = net.down[0][0][0]
    assert isinstance(first, nn.Conv2d) and first.bias is None  # batch norm carries the shift
    assert first.weight.grad is not None and torch.isfinite(first.weight.grad).all()
    assert first.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.parameters())


def test_registry() -> None:
    assert {"unet", "unet_padded"} <= set(pixelwise.list_models())
    net = pixelwise.create_model("unet", base_width=8, depth=2)
    assert isinstance(net, UNet) and net.widths == [8, 16, 32] and not net.padding
    assert pixelwise.create_model("unet_padded", base_width=8, depth=2).padding
    with pytest.raises(ValueError, match="base_width"):
        pixelwise.create_model("unet", base_widht=8)
    assert model_summary("unet") and "\n" not in model_summary("unet")
    assert isinstance(net.down[0], DoubleConv)
