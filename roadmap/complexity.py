"""Parameters and multiply-accumulates, counted the paper's way.

The paper's "GFLOPs" are multiply-accumulates of conv and linear layers (one fused
multiply-add = one FLOP, as fvcore counts) for one image. torch's FlopCounterMode counts
conv and matmul at 2 FLOPs per MAC; we halve it. The model is built and run on the
meta device: shapes only, no memory, no arithmetic.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import List, Mapping, Tuple, Union

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.ops import StochasticDepth

from roadmap.errors import ConfigError
from roadmap.model import ConvNet, ModelConfig, num_params


@dataclass(frozen=True)
class Complexity:
    params: int
    macs: int
    resolution: int

    @property
    def mparams(self) -> float:
        return self.params / 1e6

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9


# Layers that keep their input's shape and do no conv or matmul work. On the meta
# device their kernels are Python decompositions (a BatchNorm costs more there than a
# conv), so counting passes their input straight through: the same count, faster
# (BENCHMARKS.md, 'Counting').
SHAPE_PRESERVING = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.ReLU, nn.GELU, nn.Dropout, StochasticDepth)


@contextlib.contextmanager
def _pass_through(model: nn.Module, kinds=SHAPE_PRESERVING):
    skipped = [m for m in model.modules() if isinstance(m, kinds)]
    for m in skipped:
        m.forward = _identity  # an instance attribute shadows the class's forward
    try:
        yield
    finally:
        for m in skipped:
            del m.forward


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def count_macs(model: nn.Module, resolution: int, in_chans: int) -> int:
    """MACs of one forward pass of one image (forward only: FlopCounterMode overcounts
    the backward of grouped convs)."""
    device = next(model.parameters()).device
    x = torch.empty(1, in_chans, resolution, resolution, device=device)
    was_training = model.training
    model.eval()
    with torch.no_grad(), _pass_through(model), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() // 2


def complexity(model: Union[nn.Module, ModelConfig], resolution: int = 224) -> Complexity:
    """Parameters and MACs of a network, or of the one a ModelConfig describes (built on the
    meta device: no memory, no arithmetic), for one square image of side `resolution`."""
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ConfigError(f"resolution={resolution!r} is not valid: give the image side in pixels, a positive integer")
    if isinstance(model, ModelConfig):
        with torch.device("meta"):
            model = ConvNet(model)
    in_chans = model.cfg.in_chans if isinstance(model, ConvNet) else _in_chans(model)
    return Complexity(num_params(model), count_macs(model, resolution, in_chans), resolution)


def _in_chans(model: nn.Module) -> int:
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    return first.in_channels


def costliest_first(networks: Mapping[str, Tuple[ModelConfig, int]]) -> List[str]:
    """The names of `networks` (name -> (config, resolution)) by their MACs, most first (a
    stable sort). Runs side by side start in this order: each starts on the first free core,
    and starting the long ones first leaves the short ones to fill the end (the
    longest-processing-time rule), where one long run would otherwise train alone while the
    other cores wait."""
    cost = {name: complexity(cfg, resolution).macs for name, (cfg, resolution) in networks.items()}
    return sorted(cost, key=lambda name: -cost[name])
