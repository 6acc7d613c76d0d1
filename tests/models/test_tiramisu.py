from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import pixelwise
import pixelwise.models.tiramisu  # noqa: F401  (registers the builders)
from pixelwise.engine.predictor import Predictor, forward_aligned, gather_window, geometry
from pixelwise.layers import DenseBlock, DenseLayer, TransitionDown, TransitionUp
from pixelwise.models.tiramisu import FCDenseNet, fc_densenet56, fc_densenet67, fc_densenet103
from pixelwise.registry import model_summary

PAPER_103 = (4, 5, 7, 10, 12, 15, 12, 10, 7, 5, 4)


def tiny(**kwargs) -> FCDenseNet:
    """Two transitions down (sides multiple of 4), growth 3: milliseconds per forward pass."""
    args = dict(num_classes=3, growth_rate=3, layers_per_block=(2, 2, 3, 2, 2), first_channels=5)
    return FCDenseNet(**{**args, **kwargs})


def _count_by_formula(num_classes: int, growth: int, blocks: tuple[int, ...], first: int = 48,
                      running_stats: bool = False) -> int:
    """Parameters of FC-DenseNet counted from Tables 1 and 2 (biases everywhere, as in the authors' code).

    running_stats also counts batch norm's running mean and variance, as Lasagne's parameter count does.
    """

    def conv(cin: int, cout: int, k: int) -> int:
        return k * k * cin * cout + cout

    bn = 4 if running_stats else 2

    def block(cin: int, n: int) -> int:
        return sum(bn * (cin + i * growth) + conv(cin + i * growth, growth, 3) for i in range(n))

    pools = len(blocks) // 2
    m, total, skips = first, conv(3, first, 3), []
    for n in blocks[:pools]:
        total += block(m, n)
        m += n * growth
        skips.append(m)
        total += bn * m + conv(m, m, 1)  # transition down
    total += block(m, blocks[pools])
    new = blocks[pools] * growth
    for n in blocks[pools + 1 :]:
        total += conv(new, new, 3)  # transition up: a 3x3 transposed convolution, same count
        m = new + skips.pop()
        total += block(m, n)
        new = n * growth
    return total + conv(m + new, num_classes, 1)


def _count(model: nn.Module, running_stats: bool = False) -> int:
    n = sum(p.numel() for p in model.parameters())
    if running_stats:
        n += sum(b.numel() for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var")))
    return n


@pytest.mark.parametrize(
    "builder,growth,blocks,exact,with_stats,paper",
    [
        (fc_densenet56, 12, (4,) * 11, 1_376_795, 1_397_963, 1.5e6),
        (fc_densenet67, 16, (5,) * 11, 3_463_243, 3_502_923, 3.5e6),
        (fc_densenet103, 16, PAPER_103, 9_322_091, 9_425_163, 9.4e6),
    ],
)
def test_parameter_counts(builder, growth, blocks, exact, with_stats, paper) -> None:
    model = builder(num_classes=11)
    assert _count(model) == exact == _count_by_formula(11, growth, blocks)
    # The paper's counts (Table 3) are Lasagne's, which include batch norm's running statistics.
    assert _count(model, running_stats=True) == with_stats == _count_by_formula(11, growth, blocks, running_stats=True)
    if builder is fc_densenet56:
        assert abs(exact / paper - 1) > 0.05  # the paper's 1.5M does not match its own description
    else:
        assert abs(exact / paper - 1) < 0.03 and abs(with_stats / paper - 1) < 0.005
    assert _count(builder(num_classes=12)) == _count_by_formula(12, growth, blocks)


def test_formula_matches_other_configurations() -> None:
    for kwargs in (dict(growth_rate=3, layers_per_block=(1, 2, 3, 2, 1)), dict(growth_rate=5, layers_per_block=(2, 1, 2))):
        model = FCDenseNet(num_classes=4, **kwargs)
        assert _count(model) == _count_by_formula(4, kwargs["growth_rate"], kwargs["layers_per_block"])


def test_table2_structure_of_fc_densenet103() -> None:
    model = fc_densenet103()
    # "m" of Table 2 with the bottleneck values corrected as in the authors' README (+16).
    assert model.stack_channels == [48, 112, 192, 304, 464, 656, 896, 1088, 816, 576, 384, 256]
    assert [len(b.layers) for b in (*model.down_blocks, model.bottleneck, *model.up_blocks)] == list(PAPER_103)
    assert [t.channels for t in model.transitions_down] == [112, 192, 304, 464, 656]
    # Only the new maps of the block below are upsampled (section 3.2), keeping their number.
    assert [(t.in_channels, t.out_channels) for t in model.transitions_up] == [(240, 240), (192, 192), (160, 160),
                                                                             (112, 112), (80, 80)]
    assert [b.in_channels for b in model.up_blocks] == [240 + 656, 192 + 464, 160 + 304, 112 + 192, 80 + 112]
    assert [b.concat_input for b in model.up_blocks] == [False] * 4 + [True]
    assert not model.bottleneck.concat_input and model.bottleneck.out_channels == 240
    assert (model.head.in_channels, model.head.out_channels, model.head.kernel_size) == (256, 11, (1, 1))
    assert model.first.kernel_size == (3, 3) and model.first.out_channels == 48
    up = model.transitions_up[0].conv
    assert (up.kernel_size, up.stride, up.padding) == ((3, 3), (2, 2), (0, 0))


@pytest.mark.parametrize("builder,depth", [(fc_densenet56, 56), (fc_densenet67, 67), (fc_densenet103, 103)])
def test_name_is_the_number_of_convolutions(builder, depth: int) -> None:
    """First conv, the dense layers, transitions down and up, classifier: 1 + 91 + 5 + 5 + 1 = 103."""
    model = builder(growth_rate=1, first_channels=1)
    assert sum(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in model.modules()) == depth


def test_56_and_67_structure() -> None:
    assert fc_densenet56().stack_channels == [48, 96, 144, 192, 240, 288, 336, 384, 336, 288, 240, 192]
    assert fc_densenet67().stack_channels == [48, 128, 208, 288, 368, 448, 528, 608, 528, 448, 368, 288]


def test_dense_block_connectivity() -> None:
    block = DenseBlock(6, 3, 4, dropout=0.0)
    assert [layer.conv.in_channels for layer in block.layers] == [6, 10, 14]
    assert all(layer.conv.out_channels == 4 and layer.conv.kernel_size == (3, 3) for layer in block.layers)
    x = torch.randn(2, 6, 8, 8)
    out = block(x)
    assert out.shape == (2, 18, 8, 8) and block.out_channels == 18
    assert torch.equal(out[:, :6], x)  # the block input is passed on unchanged
    block.concat_input = False
    assert torch.equal(block(x), out[:, 6:])
    # Each layer sees all earlier ones: the last layer's output depends on the first layer's output.
    feats = [x]
    for layer in block.layers[:2]:
        feats.append(layer(feats).detach().requires_grad_())
    block.layers[2](feats).sum().backward()
    assert feats[1].grad.abs().sum() > 0 and feats[2].grad.abs().sum() > 0


def test_transitions() -> None:
    down = TransitionDown(6, dropout=0.2)
    kinds = [type(m) for m in down]
    assert kinds == [nn.BatchNorm2d, nn.ReLU, nn.Conv2d, nn.Dropout, nn.MaxPool2d]
    assert down[2].kernel_size == (1, 1) and down[2].out_channels == 6 and down[3].p == 0.2
    assert down(torch.randn(2, 6, 8, 12)).shape == (2, 6, 4, 6)
    up = TransitionUp(5, 5)
    x, skip = torch.randn(2, 5, 4, 6), torch.randn(2, 7, 8, 12)
    out = up(x, skip)
    assert out.shape == (2, 12, 8, 12)
    full = up.conv(x)  # unpadded: 2h + 1 rows; the authors' centre crop keeps rows 0 .. 2h - 1
    assert full.shape[-2:] == (9, 13)
    assert torch.equal(out[:, :5], full[..., :8, :12]) and torch.equal(out[:, 5:], skip)


def test_output_shape_equals_input_shape() -> None:
    model = tiny().eval()
    with torch.no_grad():
        for h, w in [(4, 4), (64, 96), (36, 20)]:
            out = model(torch.randn(2, 3, h, w))
            assert out.shape == (2, 3, h, w) and torch.isfinite(out).all()


@pytest.mark.parametrize("builder,size", [(fc_densenet56, (224, 224)), (fc_densenet103, (64, 96))])
def test_paper_networks_keep_the_input_size(builder, size: tuple[int, int]) -> None:
    with torch.no_grad():
        out = builder(num_classes=11).eval()(torch.randn(1, 3, *size))
    assert out.shape == (1, 11, *size) and torch.isfinite(out).all()


def test_size_arithmetic() -> None:
    model = fc_densenet56(growth_rate=2, first_channels=4, layers_per_block=(1,) * 11)
    assert model.size_step == 32 and model.min_input_size == 32
    assert model.output_size(384) == 384 and model.output_size(480) == 480 and model.output_size(32) == 32
    assert model.input_size_for(360) == 384 and model.input_size_for(480) == 480
    assert model.input_size_for(1) == 32 and model.input_size_for(33) == 64
    for s in range(-3, 200):
        if s >= 32 and s % 32 == 0:
            assert model.output_size(s) == s
        else:
            with pytest.raises(ValueError):
                model.output_size(s)
    for o in range(1, 200):
        s = model.input_size_for(o)
        assert model.output_size(s) >= o and (s == 32 or s - 32 < o)
    with pytest.raises(ValueError, match=r"360 .*352 and 384.*multiples of 32"):
        model.output_size(360)
    with pytest.raises(ValueError, match=r"smallest valid size is 32"):
        model.output_size(16)
    with pytest.raises(ValueError, match="output_size"):
        model.input_size_for(0)


def test_forward_rejects_invalid_sizes_clearly() -> None:
    model = tiny()
    with pytest.raises(ValueError, match=r"width 70 .*68 and 72"):
        model(torch.zeros(1, 3, 64, 70))
    with pytest.raises(ValueError, match=r"height 2 .*smallest valid size is 4"):
        model(torch.zeros(1, 3, 2, 64))
    with pytest.raises(ValueError, match=r"\(1, 1, 64, 64\).*\(B, 3, H, W\)"):
        model(torch.zeros(1, 1, 64, 64))


def test_whole_camvid_image_is_mirror_extended_and_cropped_back() -> None:
    """360x480 CamVid images: the engine feeds 384x480 (mirrored below the image) and keeps rows 0..359."""
    torch.manual_seed(0)
    model = fc_densenet56(growth_rate=2, first_channels=4, layers_per_block=(1,) * 11, dropout=0.0).eval()
    assert geometry(model, 360) == (384, 0) and geometry(model, 480) == (480, 0)
    images = torch.randn(1, 3, 360, 480)
    with torch.no_grad():
        logits = forward_aligned(model, images)
        extended = gather_window(images, 0, 0, 384, 480)
        assert torch.equal(extended[..., :360, :], images)
        assert torch.equal(extended[..., 360:, :], images[..., 335:359, :].flip(-2))  # mirrored, edge row not repeated
        expected = model(extended)[..., :360, :]
    assert logits.shape == (1, 11, 360, 480)
    torch.testing.assert_close(logits, expected)
    probs = Predictor(model, device="cpu").predict_probs(images[0])
    torch.testing.assert_close(probs, F.softmax(expected, 1)[0])


def test_predictor_tiles_and_tta_for_a_size_multiple_model() -> None:
    model = tiny(dropout=0.0).eval()
    image = torch.randn(3, 30, 37)
    whole = Predictor(model, device="cpu").predict_probs(image)
    tiled = Predictor(model, device="cpu", tile=16, overlap=6).predict_probs(image)
    tta = Predictor(model, device="cpu", tta=True).predict_probs(image)
    for p in (whole, tiled, tta):
        assert p.shape == (3, 30, 37) and torch.isfinite(p).all()
        torch.testing.assert_close(p.sum(0), torch.ones(30, 37))


def _pair(**kwargs) -> tuple[FCDenseNet, FCDenseNet]:
    plain = tiny(**kwargs)
    efficient = tiny(memory_efficient=True, **kwargs)
    efficient.load_state_dict(plain.state_dict())
    return plain, efficient


def _train_step(model: FCDenseNet, images: torch.Tensor, seed: int) -> tuple[torch.Tensor, ...]:
    images = images.clone().requires_grad_()
    torch.manual_seed(seed)
    out = model(images)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), images.grad, torch.get_rng_state()


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_memory_efficient_gives_identical_outputs_gradients_and_statistics(dropout: float) -> None:
    plain, efficient = _pair(dropout=dropout)
    plain.train(), efficient.train()
    images = torch.randn(2, 3, 16, 20)
    # Count the dense convolutions that run: the memory-efficient net recomputes them in backward.
    runs = {"plain": 0, "efficient": 0}
    for key, model in (("plain", plain), ("efficient", efficient)):
        for m in model.modules():
            if isinstance(m, DenseLayer):
                m.conv.register_forward_pre_hook(lambda *a, key=key: runs.__setitem__(key, runs[key] + 1))
    a = _train_step(plain, images, seed=3)
    b = _train_step(efficient, images, seed=3)
    num_layers = sum(plain.layers_per_block)
    assert runs == {"plain": num_layers, "efficient": 2 * num_layers}
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    torch.testing.assert_close(a[1], b[1])
    assert torch.equal(a[2], b[2])  # the recomputation consumes no random numbers
    for (name, p), q in zip(plain.named_parameters(), efficient.parameters()):
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    # Batch norm running statistics are updated once per forward pass, not again when recomputed.
    for (name, x), y in zip(plain.named_buffers(), efficient.buffers()):
        assert torch.equal(x, y), name
    plain.eval(), efficient.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(images), efficient(images), rtol=0, atol=0)
    assert runs["efficient"] == 2 * num_layers + num_layers  # no recomputation without gradients
    if dropout:
        efficient.train()
        c = _train_step(efficient, images, seed=4)
        assert not torch.equal(b[0], c[0])  # dropout is active, so the seed mattered


def test_he_uniform_initialisation() -> None:
    model = fc_densenet103()
    checked = 0
    for m in model.modules():
        if not isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            continue
        assert torch.count_nonzero(m.bias) == 0
        # Lasagne's HeUniform (gain relu): U(-b, b), b = sqrt(6 / fan_in); a transposed convolution's
        # fan_in is out_channels * k * k there, equal to in_channels * k * k here.
        fan_in = m.weight[0].numel()
        bound = math.sqrt(6.0 / fan_in)
        assert m.weight.abs().max() <= bound
        if m.weight.numel() >= 20_000:
            assert abs(m.weight.std().item() / (bound / math.sqrt(3)) - 1) < 0.03
            assert m.weight.abs().max() > 0.99 * bound
            checked += 1
    assert checked >= 50
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == sum(PAPER_103) + 5
    assert all(torch.all(n.weight == 1) and torch.all(n.bias == 0) for n in norms)


def test_dropout_after_every_convolution_but_the_first_and_last() -> None:
    model = tiny(dropout=0.2)
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == sum(model.layers_per_block) + 2 and all(d.p == 0.2 for d in drops)
    assert not any(isinstance(m, nn.Dropout) for m in tiny(dropout=0.0).modules())
    x = torch.randn(1, 3, 16, 16)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_gradients_reach_the_first_layer() -> None:
    model = tiny()
    out = model(torch.randn(2, 3, 16, 16))
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.first.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_classes=0),
        dict(growth_rate=0),
        dict(first_channels=1.5),
        dict(dropout=1.0),
        dict(layers_per_block=(4, 4)),
        dict(layers_per_block=(4, 0, 4)),
        dict(layers_per_block=4),
        dict(layers_per_block=(4,)),
    ],
)
def test_bad_arguments_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        fc_densenet67(**kwargs)


def test_registry() -> None:
    assert {"fc_densenet56", "fc_densenet67", "fc_densenet103"} <= set(pixelwise.list_models())
    model = pixelwise.create_model("fc_densenet103", num_classes=5, growth_rate=2, first_channels=4,
                                   layers_per_block=[1, 1, 1], memory_efficient=True)
    assert isinstance(model, FCDenseNet) and model.size_step == 2 and model.head.out_channels == 5
    assert all(m.memory_efficient for m in model.modules() if isinstance(m, DenseLayer))
    with pytest.raises(ValueError, match="growth_rate"):
        pixelwise.create_model("fc_densenet67", growth=8)
    for name in ("fc_densenet56", "fc_densenet67", "fc_densenet103"):
        assert model_summary(name) and "\n" not in model_summary(name)
