"""The network generator: every network on the path from ResNet to ConvNeXt.

One class, `ConvNet`, built from one dataclass, `ModelConfig`. Each field of the
config is one design decision of the paper (Liu et al., "A ConvNet for the 2020s",
Section 2), and each maps to one branch below. The defaults are ResNet-50; the
roadmap in `conf/step/` flips the fields one at a time until the network is
ConvNeXt-T.

Every block is three convolutions, whatever its type; the type only fixes their
shapes (and so where the spatial conv sits):

    bottleneck          1x1 C -> w,   kxk w -> w (stride),   1x1 w -> C      (C = 4w)
    inverted            1x1 d -> 4d,  kxk 4d -> 4d (stride), 1x1 4d -> d
    inverted_moved_up   kxk d -> d (stride), 1x1 d -> 4d,    1x1 4d -> d

Norms and activations are placed around these three convs:
  - norm after every conv (ResNet), or `fewer_norms`: one norm, after the spatial conv;
  - activation after the first two norms and after the residual add (ResNet), or
    `fewer_activations`: one activation, after the middle conv (in the ConvNeXt block:
    between the two 1x1 convs), none after the add.
A conv has a bias unless a BatchNorm follows it (BN's mean subtraction would cancel
it); this gives torchvision's ResNet and the official ConvNeXt exactly.

Downsampling is either by stride in the spatial conv of a stage's first block, with a
1x1 strided conv + norm on the shortcut (ResNet), or `separate_downsampling`: a norm
and a 2x2 stride-2 conv between stages, a norm after the stem and one after global
pooling (ConvNeXt). Shortcut projections keep their own norm at every step (the
paper leaves this open; it changes no FLOPs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import StochasticDepth

from roadmap.errors import HALF_OPEN, NON_NEGATIVE, POSITIVE_INT, Choice, ConfigError, check_ranges

KERNEL_SIZES = (3, 5, 7, 9, 11)


class Stem(Choice):
    resnet = "resnet"  # 7x7 stride-2 conv, norm, activation, 3x3 stride-2 max-pool
    patchify = "patchify"  # one p x p stride-p conv ("patchify", Section 2.2)


class BlockType(Choice):
    bottleneck = "bottleneck"  # ResNet v1.5 bottleneck: 1x1 -> kxk (stride) -> 1x1 (x4)
    inverted = "inverted"  # inverted bottleneck (Section 2.4): 1x1 (x4) -> kxk -> 1x1
    inverted_moved_up = "inverted_moved_up"  # spatial conv moved up (Section 2.5): kxk -> 1x1 (x4) -> 1x1


class Activation(Choice):
    relu = "relu"
    gelu = "gelu"


class Norm(Choice):
    batch = "batch"  # BatchNorm
    layer = "layer"  # LayerNorm over channels, at each spatial position


class Init(Choice):
    kaiming = "kaiming"  # torchvision's ResNet: Kaiming normal (fan-out) convs, default Linear
    trunc_normal = "trunc_normal"  # official ConvNeXt: truncated normal, std 0.02, zero biases


# Where each numeric field may lie (finite in any case).
MODEL_RANGES = {
    "drop_path_rate": HALF_OPEN,
    "layer_scale": NON_NEGATIVE,
    "expansion": POSITIVE_INT,
    "patch_size": POSITIVE_INT,
    "in_chans": POSITIVE_INT,
    "num_classes": POSITIVE_INT,
}


@dataclass
class ModelConfig:
    """Every design decision of the roadmap. The defaults are ResNet-50 on ImageNet."""

    depths: List[int] = field(default_factory=lambda: [3, 4, 6, 3])
    """Blocks per stage."""
    widths: List[int] = field(default_factory=lambda: [64, 128, 256, 512])
    """The paper's channel numbers per stage: a bottleneck's inner width (its output is
    `expansion` times this), an inverted bottleneck's residual width (its hidden layer
    is `expansion` times this). The stem outputs widths[0]."""
    expansion: int = 4
    """Hidden-layer ratio: a bottleneck's output is `expansion` x its inner width, an inverted
    bottleneck's hidden layer `expansion` x its residual width (the paper: 4)."""
    stem: Stem = Stem.resnet
    """resnet (7x7/2 conv, norm, activation, 3x3/2 max-pool) or patchify (Section 2.2)."""
    patch_size: int = 4
    """Kernel and stride of the patchify stem."""
    block: BlockType = BlockType.bottleneck
    """bottleneck (ResNet v1.5), inverted (Section 2.4) or inverted_moved_up (Section 2.5)."""
    depthwise: bool = False
    """Spatial conv depthwise (groups = channels, Section 2.3) instead of dense."""
    kernel_size: int = 3
    """Spatial conv kernel size (Section 2.5)."""
    activation: Activation = Activation.relu
    """relu or gelu (Section 2.6)."""
    fewer_activations: bool = False
    """One activation per block, after its middle conv; none after the residual add."""
    norm: Norm = Norm.batch
    """batch (BatchNorm) or layer (LayerNorm over channels, Section 2.6)."""
    fewer_norms: bool = False
    """One norm per block, after its spatial conv."""
    separate_downsampling: bool = False
    """Norm + 2x2 stride-2 conv between stages, a norm after the stem and after pooling,
    instead of strided blocks with projection shortcuts."""
    drop_path_rate: float = 0.0
    """Stochastic depth: drop rate of the last block, rising linearly from 0."""
    layer_scale: float = 0.0
    """Initial value of the per-channel layer scale on each residual branch; 0 = none."""
    init: Init = Init.kaiming
    """kaiming (torchvision's ResNet) or trunc_normal (the official ConvNeXt, std 0.02)."""
    in_chans: int = 3
    """Input channels (the data's)."""
    num_classes: int = 1000
    """Outputs of the classifier (the data's classes)."""

    def __post_init__(self) -> None:
        # Hydra/OmegaConf hand enums over as enums; plain Python callers may pass strings.
        self.stem, self.block = Stem(self.stem), BlockType(self.block)
        self.activation, self.norm, self.init = Activation(self.activation), Norm(self.norm), Init(self.init)
        self.depths, self.widths = list(self.depths), list(self.widths)
        if len(self.depths) != len(self.widths):
            raise ConfigError(
                f"model.depths has {len(self.depths)} stages but model.widths has {len(self.widths)}: "
                "give both the same number of entries"
            )
        if not self.depths:
            raise ConfigError("model.depths is empty: give at least one stage, e.g. model.depths=[3,3,9,3]")
        for name in ("depths", "widths"):
            bad = [v for v in getattr(self, name) if v < 1]
            if bad:
                raise ConfigError(
                    f"model.{name}={getattr(self, name)} has {bad[0]}: every entry must be a positive integer"
                )
        if self.kernel_size not in KERNEL_SIZES:
            raise ConfigError(
                f"model.kernel_size={self.kernel_size} is not valid: choose one of {', '.join(map(str, KERNEL_SIZES))}"
            )
        check_ranges(self, "model", MODEL_RANGES)

    @property
    def total_stride(self) -> int:
        """How many input pixels one pixel of the last stage spans: the smallest image the
        network can see whole (32 for four stages behind a ResNet or 4x4 patchify stem)."""
        return (4 if self.stem is Stem.resnet else self.patch_size) * 2 ** (len(self.depths) - 1)

    @property
    def stage_channels(self) -> List[int]:
        """Channels of the residual stream in each stage."""
        if self.block is BlockType.bottleneck:
            return [w * self.expansion for w in self.widths]
        return list(self.widths)


class PointwiseConv(nn.Conv2d):
    """A 1x1 conv: one linear map of the channels at every position (Section 2.4 counts
    the ConvNeXt block's 1x1 convs as its MLP). On a channels-last tensor it runs as that
    matmul, through free permutes: on the CPU the conv kernel is slower for the small 1x1
    layers of the micro study (BENCHMARKS.md). Other layouts take the conv kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_contiguous(memory_format=torch.channels_last):
            return super().forward(x)
        if self.stride != (1, 1):
            x = x[:, :, :: self.stride[0], :: self.stride[1]]
        return F.linear(x.permute(0, 2, 3, 1), self.weight.flatten(1), self.bias).permute(0, 3, 1, 2)

    def _apply(self, fn, recurse: bool = True):
        # A 1x1 kernel is the same memory in either layout, but .to(channels_last) gives it
        # other strides than the gradient the matmul makes, and DDP's gradient buckets
        # compare strides: keep the standard ones.
        super()._apply(fn, recurse)
        self.weight.data = self.weight.data.clone(memory_format=torch.contiguous_format)
        return self


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor, at each spatial position."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def make_norm(kind: Norm, channels: int, spatial: bool = True) -> nn.Module:
    if kind is Norm.batch:
        return nn.BatchNorm2d(channels) if spatial else nn.BatchNorm1d(channels)
    return LayerNorm2d(channels, eps=1e-6) if spatial else nn.LayerNorm(channels, eps=1e-6)


def make_activation(kind: Activation) -> nn.Module:
    return nn.ReLU(inplace=True) if kind is Activation.relu else nn.GELU()


# Each block type's three convs, in order: (input, output) channels by name (the names are
# Block's arguments below; hidden = expansion x width), and which of the three is the
# spatial k x k conv, the one that strides.
CONVS = {
    BlockType.bottleneck: ((("in", "width"), ("width", "width"), ("width", "out")), 1),
    BlockType.inverted: ((("in", "hidden"), ("hidden", "hidden"), ("hidden", "out")), 1),
    BlockType.inverted_moved_up: ((("in", "in"), ("in", "hidden"), ("hidden", "out")), 0),
}


class Block(nn.Module):
    """One block: three convs with norms and activations, a shortcut, layer scale and
    stochastic depth. See the module docstring for the shapes and placements."""

    def __init__(self, cfg: ModelConfig, in_chs: int, out_chs: int, width: int, stride: int, drop_path: float):
        """Args:
            cfg: the network's config (block type, kernel, norms, activations, layer scale).
            in_chs: channels coming in (the residual stream before the block).
            out_chs: channels going out (the stage's residual stream).
            width: a bottleneck's inner width (out_chs = expansion x width); an inverted
                bottleneck's residual width, whose hidden layer is expansion x width.
            stride: the spatial conv's stride (2 in a stage's first block, without
                separate downsampling), and the projection shortcut's.
            drop_path: this block's stochastic depth rate.
        """
        super().__init__()
        self.conv1, self.norm1, self.act1 = self._layer(cfg, 0, in_chs, out_chs, width, stride)
        self.conv2, self.norm2, self.act2 = self._layer(cfg, 1, in_chs, out_chs, width, stride)
        self.conv3, self.norm3, self.act3 = self._layer(cfg, 2, in_chs, out_chs, width, stride)
        self.gamma = nn.Parameter(torch.full((out_chs,), cfg.layer_scale)) if cfg.layer_scale > 0 else None
        self.drop_path = StochasticDepth(drop_path, "row") if drop_path > 0 else nn.Identity()
        if stride != 1 or in_chs != out_chs:  # projection shortcut
            self.shortcut = nn.Sequential()
            bias = cfg.norm is not Norm.batch
            self.shortcut.add_module("conv", PointwiseConv(in_chs, out_chs, 1, stride, bias=bias))
            self.shortcut.add_module("norm", make_norm(cfg.norm, out_chs))
        else:
            self.shortcut = nn.Identity()
        self.act_out = nn.Identity() if cfg.fewer_activations else make_activation(cfg.activation)

    @staticmethod
    def _layer(cfg: ModelConfig, i: int, in_chs: int, out_chs: int, width: int,
               stride: int) -> Tuple[nn.Module, nn.Module, nn.Module]:
        """The i-th conv of the block (CONVS) with the norm and activation that follow it."""
        shapes, spatial = CONVS[cfg.block]
        channels = {"in": in_chs, "out": out_chs, "width": width, "hidden": width * cfg.expansion}
        cin, cout = (channels[name] for name in shapes[i])
        norm = i == spatial if cfg.fewer_norms else True
        act = i == 1 if cfg.fewer_activations else i < 2  # ... and after the residual add (act_out)
        bias = not (norm and cfg.norm is Norm.batch)
        if i == spatial:
            groups = cin if cfg.depthwise else 1
            conv: nn.Module = nn.Conv2d(cin, cout, cfg.kernel_size, stride, cfg.kernel_size // 2, groups=groups,
                                        bias=bias)
        else:
            conv = PointwiseConv(cin, cout, 1, 1, bias=bias)
        return (conv, make_norm(cfg.norm, cout) if norm else nn.Identity(),
                make_activation(cfg.activation) if act else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.norm1(self.conv1(x)))
        out = self.act2(self.norm2(self.conv2(out)))
        out = self.norm3(self.conv3(out))
        if self.gamma is not None:
            out = out * self.gamma.view(1, -1, 1, 1)
        out = self.drop_path(out)
        out += self.shortcut(x)  # in place, on a tensor no backward needs (as torchvision's ResNet)
        return self.act_out(out)


class Stage(nn.Module):
    def __init__(self, cfg: ModelConfig, index: int, in_chs: int, drop_paths: List[float]):
        super().__init__()
        out_chs, width = cfg.stage_channels[index], cfg.widths[index]
        stride = 1 if index == 0 else 2
        if cfg.separate_downsampling and stride != 1:
            self.downsample = nn.Sequential()
            self.downsample.add_module("norm", make_norm(cfg.norm, in_chs))
            self.downsample.add_module("conv", nn.Conv2d(in_chs, out_chs, 2, 2))
            in_chs, stride = out_chs, 1
        else:
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(
            *[
                Block(cfg, in_chs if i == 0 else out_chs, out_chs, width, stride if i == 0 else 1, drop_paths[i])
                for i in range(cfg.depths[index])
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class ConvNet(nn.Module):
    """Any network of the roadmap, from ResNet-50/200 to ConvNeXt-T/B.

    ConvNet(ModelConfig()) is torchvision's ResNet-50; see `conf/step/` for the path
    and `roadmap.compose` to build any step of it.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        stem_chs = cfg.widths[0]
        self.stem = nn.Sequential()
        if cfg.stem is Stem.resnet:
            self.stem.add_module("conv", nn.Conv2d(cfg.in_chans, stem_chs, 7, 2, 3, bias=cfg.norm is not Norm.batch))
            self.stem.add_module("norm", make_norm(cfg.norm, stem_chs))
            self.stem.add_module("act", make_activation(cfg.activation))
            self.stem.add_module("pool", nn.MaxPool2d(3, 2, 1))
        else:
            p = cfg.patch_size
            self.stem.add_module("conv", nn.Conv2d(cfg.in_chans, stem_chs, p, p))
        self.stem_norm = make_norm(cfg.norm, stem_chs) if cfg.separate_downsampling else nn.Identity()

        n = sum(cfg.depths)
        rates = [cfg.drop_path_rate * i / max(n - 1, 1) for i in range(n)]  # linear, 0 to the rate
        self.stages = nn.Sequential()
        in_chs = stem_chs
        for i, depth in enumerate(cfg.depths):
            start = sum(cfg.depths[:i])
            self.stages.append(Stage(cfg, i, in_chs, rates[start : start + depth]))
            in_chs = cfg.stage_channels[i]

        self.head_norm = make_norm(cfg.norm, in_chs, spatial=False) if cfg.separate_downsampling else nn.Identity()
        self.fc = nn.Linear(in_chs, cfg.num_classes)
        self.num_features = in_chs
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.fc.weight.is_meta:  # shapes only (roadmap.complexity): nothing to initialise
            return
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                if self.cfg.init is Init.trunc_normal:
                    nn.init.trunc_normal_(m.weight, std=0.02)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                else:  # torchvision leaves its fc at nn.Linear's default
                    m.reset_parameters()
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, nn.LayerNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features before the classifier."""
        x = self.stem_norm(self.stem(x))
        x = self.stages(x)
        return self.head_norm(x.mean((2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "ConfigError",
    "ModelConfig",
    "ConvNet",
    "PointwiseConv",
    "Stem",
    "BlockType",
    "Block",
    "Activation",
    "Norm",
    "Init",
    "KERNEL_SIZES",
    "num_params",
]
