"""Parameters and multiply-accumulates, counted the paper's way.

The paper's "GFLOPs" are multiply-accumulates of conv and linear layers (one fused
multiply-add = one FLOP, as fvcore counts) for one image. torch's FlopCounterMode counts
conv and matmul at 2 FLOPs per MAC; we halve it. The model is built and run on the
meta device: shapes only, no memory, no arithmetic, so every step of every regime
counts in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from roadmap.config import model_config
from roadmap.model import ConvNet, num_params


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


def count_macs(model: nn.Module, resolution: int, in_chans: int) -> int:
    """MACs of one forward pass of one image (forward only: FlopCounterMode overcounts
    the backward of grouped convs)."""
    device = next(model.parameters()).device
    x = torch.empty(1, in_chans, resolution, resolution, device=device)
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() // 2


def complexity(model_or_cfg: Union[nn.Module, object], resolution: Optional[int] = None) -> Complexity:
    """Parameters and MACs of a model, or of the model a config describes (built on the
    meta device). `resolution` defaults to the config's data.image_size, else 224."""
    if isinstance(model_or_cfg, nn.Module):
        model = model_or_cfg
        in_chans = model.cfg.in_chans if isinstance(model, ConvNet) else _in_chans(model)
    else:
        if resolution is None:
            resolution = _image_size(model_or_cfg)
        mcfg = model_config(model_or_cfg)
        with torch.device("meta"):
            model = ConvNet(mcfg)
        in_chans = mcfg.in_chans
    resolution = resolution or 224
    return Complexity(num_params(model), count_macs(model, resolution, in_chans), resolution)


def _image_size(cfg) -> Optional[int]:
    data = getattr(cfg, "data", None)
    return getattr(data, "image_size", None) if data is not None else None


def _in_chans(model: nn.Module) -> int:
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    return first.in_channels
