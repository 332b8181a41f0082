"""Every toggle of the generator, shown by the layer it changes."""

import itertools

import pytest
import torch
from torch import nn
from torchvision.ops import StochasticDepth

import roadmap
from roadmap.model import ConvNet, LayerNorm2d, ModelConfig
from tests.conftest import build

TINY = dict(depths=[1, 2, 1, 1], widths=[8, 16, 24, 32], in_chans=1, num_classes=10)


def tiny(**kw):
    return ConvNet(ModelConfig(**{**TINY, **kw}))


def convs(module):
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


def count(module, kind):
    return sum(isinstance(m, kind) for m in module.modules())


def test_blocks_per_stage_and_widths_are_configurable():
    m = tiny(depths=[2, 1, 3, 1], widths=[8, 12, 20, 40], block="inverted")
    assert [len(s.blocks) for s in m.stages] == [2, 1, 3, 1]
    assert [s.blocks[-1].conv3.out_channels for s in m.stages] == [8, 12, 20, 40]


def test_resnet_stem_is_7x7_stride_2_conv_norm_activation_and_3x3_stride_2_max_pool():
    stem = tiny().stem
    assert [type(m) for m in stem] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d]
    assert stem.conv.kernel_size == (7, 7) and stem.conv.stride == (2, 2)
    assert stem.pool.kernel_size == 3 and stem.pool.stride == 2


def test_patchify_stem_replaces_the_7x7_conv_and_the_max_pool():
    m = tiny(stem="patchify")
    assert [type(x) for x in m.stem] == [nn.Conv2d]
    assert m.stem.conv.kernel_size == (4, 4) and m.stem.conv.stride == (4, 4)
    assert count(m, nn.MaxPool2d) == 0
    assert tiny(stem="patchify", patch_size=2).stem.conv.kernel_size == (2, 2)
    # both stems reduce the image by 4
    x = torch.randn(1, 1, 32, 32)
    assert tiny().stem(x).shape[-1] == m.stem(x).shape[-1] == 8


def test_resnet_bottleneck_is_1x1_then_3x3_carrying_the_stride_then_1x1_to_four_times_the_width():
    block = tiny().stages[1].blocks[0]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0]) for c in convs(block)[:3]] == [
        (32, 16, 1, 1), (16, 16, 3, 2), (16, 64, 1, 1)]
    assert block.shortcut.conv.stride == (2, 2) and block.shortcut.conv.kernel_size == (1, 1)  # v1.5 projection


def test_inverted_bottleneck_expands_four_times_and_puts_the_spatial_conv_on_the_wide_layer():
    block = tiny(block="inverted").stages[1].blocks[1]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0]) for c in convs(block)] == [
        (16, 64, 1), (64, 64, 3), (64, 16, 1)]
    assert isinstance(block.shortcut, nn.Identity)


def test_moving_up_the_depthwise_conv_puts_it_first_on_the_narrow_width_with_the_stride():
    first = tiny(block="inverted_moved_up", depthwise=True).stages[1].blocks[0]
    c1, c2, c3 = convs(first)[:3]
    assert (c1.in_channels, c1.out_channels, c1.groups, c1.stride) == (8, 8, 8, (2, 2))
    assert (c2.in_channels, c2.out_channels, c2.kernel_size) == (8, 64, (1, 1))
    assert (c3.in_channels, c3.out_channels) == (64, 16)


@pytest.mark.parametrize("block", ["bottleneck", "inverted", "inverted_moved_up"])
def test_depthwise_conv_makes_the_spatial_conv_one_group_per_channel(block):
    for b in tiny(block=block, depthwise=True).modules():
        if isinstance(b, roadmap.model.Block):
            spatial = [c for c in convs(b) if c.kernel_size == (3, 3)]
            assert len(spatial) == 1 and spatial[0].groups == spatial[0].in_channels == spatial[0].out_channels
    dense = [c for c in convs(tiny(block=block)) if c.kernel_size == (3, 3)]
    assert all(c.groups == 1 for c in dense)


@pytest.mark.parametrize("k", [3, 5, 7, 9, 11])
def test_kernel_size_sets_the_spatial_conv_and_keeps_the_feature_map_size(k):
    m = tiny(block="inverted_moved_up", depthwise=True, kernel_size=k)
    spatial = [c for c in convs(m) if c.groups > 1]
    assert spatial and all(c.kernel_size == (k, k) and c.padding == (k // 2, k // 2) for c in spatial)
    assert m.stages[0](torch.randn(1, 8, 8, 8)).shape == (1, 8, 8, 8)


def test_gelu_replaces_every_relu():
    assert count(tiny(), nn.ReLU) > 0 and count(tiny(), nn.GELU) == 0
    m = tiny(activation="gelu")
    assert count(m, nn.ReLU) == 0 and count(m, nn.GELU) == count(tiny(), nn.ReLU)


def test_fewer_activations_leaves_one_per_block_between_the_two_1x1_convs_and_none_after_the_add():
    full = tiny(block="inverted_moved_up").stages[0].blocks[0]
    assert [type(a) for a in (full.act1, full.act2, full.act_out)] == [nn.ReLU] * 3
    few = tiny(block="inverted_moved_up", fewer_activations=True).stages[0].blocks[0]
    assert isinstance(few.act2, nn.ReLU)  # after conv2, the 1x1 expansion, before the 1x1 reduction
    assert isinstance(few.act1, nn.Identity) and isinstance(few.act_out, nn.Identity)
    assert count(few, nn.ReLU) == 1


def test_fewer_norms_leaves_one_per_block_after_the_spatial_conv():
    full = tiny(block="inverted_moved_up").stages[0].blocks[0]
    assert count(full, nn.BatchNorm2d) == 3
    few = tiny(block="inverted_moved_up", fewer_norms=True).stages[0].blocks[0]
    assert isinstance(few.norm1, nn.BatchNorm2d) and count(few, nn.BatchNorm2d) == 1  # conv1 is the spatial conv
    bottleneck = tiny(fewer_norms=True).stages[1].blocks[1]
    assert isinstance(bottleneck.norm2, nn.BatchNorm2d) and count(bottleneck, nn.BatchNorm2d) == 1


def test_layer_norm_replaces_every_batch_norm_and_normalizes_over_channels():
    m = tiny(norm="layer", separate_downsampling=True)
    assert count(m, nn.BatchNorm2d) + count(m, nn.BatchNorm1d) == 0 and count(m, LayerNorm2d) > 0
    ln = LayerNorm2d(16, eps=1e-6)
    y = ln(torch.randn(2, 16, 5, 5) * 3 + 1)
    assert torch.allclose(y.mean(1), torch.zeros(2, 5, 5), atol=1e-5)
    assert torch.allclose(y.var(1, unbiased=False), torch.ones(2, 5, 5), atol=1e-3)


def test_separate_downsampling_moves_the_strides_out_of_the_blocks():
    strided = tiny(block="inverted_moved_up", depthwise=True)
    assert any(c.stride == (2, 2) for s in strided.stages for c in convs(s.blocks))
    m = tiny(block="inverted_moved_up", depthwise=True, separate_downsampling=True)
    assert all(c.stride == (1, 1) for s in m.stages for c in convs(s.blocks))
    assert all(isinstance(b.shortcut, nn.Identity) for s in m.stages for b in s.blocks)  # no projections
    assert isinstance(m.stages[0].downsample, nn.Identity)
    for stage in m.stages[1:]:
        norm, conv = stage.downsample
        assert isinstance(norm, nn.BatchNorm2d) and conv.kernel_size == (2, 2) and conv.stride == (2, 2)
    assert isinstance(m.stem_norm, nn.BatchNorm2d) and isinstance(m.head_norm, nn.BatchNorm1d)
    assert isinstance(strided.stem_norm, nn.Identity) and isinstance(strided.head_norm, nn.Identity)


def test_stochastic_depth_rises_linearly_to_the_rate_over_the_blocks():
    m = tiny(drop_path_rate=0.3)
    rates = [d.p for d in m.modules() if isinstance(d, StochasticDepth)]
    assert rates == pytest.approx([0.3 * i / 4 for i in range(1, 5)])  # the first block (rate 0) has none
    assert count(tiny(), StochasticDepth) == 0


def test_layer_scale_multiplies_each_residual_branch_by_a_learnt_per_channel_scale():
    m = tiny(layer_scale=1e-6, block="inverted")
    gammas = [b.gamma for s in m.stages for b in s.blocks]
    assert all(torch.equal(g, torch.full_like(g, 1e-6)) for g in gammas)
    assert gammas[0].shape == (8,)
    assert all(b.gamma is None for s in tiny().stages for b in s.blocks)


def test_input_channels_and_classes():
    m = tiny(in_chans=3, num_classes=7)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_convs_followed_by_batch_norm_have_no_bias_all_others_do():
    m = tiny()
    assert all(c.bias is None for c in convs(m))
    m = tiny(norm="layer", fewer_norms=True, block="inverted_moved_up")
    assert all(c.bias is not None for c in convs(m))


def test_convnext_init_is_truncated_normal_std_002_with_zero_biases():
    m = tiny(init="trunc_normal", norm="layer", widths=[64, 64, 64, 64], block="inverted")
    w = torch.cat([c.weight.flatten() for c in convs(m)])
    assert abs(w.std().item() - 0.02) < 0.001 and abs(w.mean().item()) < 0.001  # truncated at +-2, as the official code
    assert all(torch.count_nonzero(c.bias) == 0 for c in convs(m))


TOGGLES = dict(
    stem=["resnet", "patchify"],
    block=["bottleneck", "inverted", "inverted_moved_up"],
    depthwise=[False, True],
    activation=["relu", "gelu"],
    fewer_activations=[False, True],
    norm=["batch", "layer"],
    fewer_norms=[False, True],
    separate_downsampling=[False, True],
)


def test_any_combination_of_toggles_builds_and_runs():
    x = torch.randn(2, 1, 32, 32)
    for values in itertools.product(*TOGGLES.values()):
        kw = dict(zip(TOGGLES, values))
        m = tiny(**kw, kernel_size=5, drop_path_rate=0.1, layer_scale=1e-6).eval()
        with torch.no_grad():
            y = m(x)
        assert y.shape == (2, 10) and torch.isfinite(y).all(), kw


def test_every_micro_step_runs_forward_and_backward():
    for step in roadmap.STEPS:
        m = build(step, imagenet=False)
        y = m(torch.randn(4, 1, 32, 32))
        y.logsumexp(1).mean().backward()
        assert all(p.grad is not None for p in m.parameters()), step


def test_a_1x1_conv_on_a_channels_last_tensor_is_the_same_linear_map_as_the_conv_kernel():
    from roadmap.model import PointwiseConv

    conv = PointwiseConv(8, 16, 1, stride=2)
    x = torch.randn(4, 8, 9, 9)
    as_conv = conv(x)  # NCHW: the conv kernel
    as_matmul = conv(x.contiguous(memory_format=torch.channels_last))
    assert as_matmul.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(as_conv, as_matmul, atol=1e-5)
