"""Parameters and multiply-accumulates, counted the paper's way: of one network, of the
network a config describes, or of every step of the roadmap at once.

The paper's "GFLOPs" are multiply-accumulates of conv and linear layers (one fused
multiply-add = one FLOP, as fvcore counts) for one image. torch's FlopCounterMode counts
conv and matmul at 2 FLOPs per MAC; we halve it. The model is built and run on the
meta device: shapes only, no memory, no arithmetic. Counting the steps composes each
through Hydra (roadmap.config), the steps shared among the machine's cores.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, List, Optional, Sequence, TypeVar

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.ops import StochasticDepth

from roadmap.config import compose, model_config
from roadmap.errors import ConfigError
from roadmap.model import ConvNet, num_params

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Complexity:
    """What one network costs: its parameters, and its MACs for one image."""

    params: int
    """Parameters."""
    macs: int
    """Multiply-accumulates of one forward pass of one image (conv and linear layers)."""
    resolution: int
    """The side of the square image counted (px)."""

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


def complexity(model_or_cfg: Any, resolution: Optional[int] = None) -> Complexity:
    """Parameters and MACs of a network, or of the one a config describes (a composed
    config, a RunConfig or a ModelConfig, built on the meta device: no memory, no
    arithmetic), for one square image of side `resolution`: by default the config's
    data.image_size, else 224 (the paper's)."""
    if resolution is None:
        data = getattr(model_or_cfg, "data", None)
        resolution = getattr(data, "image_size", None) or 224
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ConfigError(f"resolution={resolution!r} is not valid: give the image side in pixels, a positive integer")
    model = model_or_cfg
    if not isinstance(model, nn.Module):
        cfg = model_config(model_or_cfg)
        with torch.device("meta"):
            model = ConvNet(cfg)
    in_chans = model.cfg.in_chans if isinstance(model, ConvNet) else _in_chans(model)
    return Complexity(num_params(model), count_macs(model, resolution, in_chans), resolution)


def _in_chans(model: nn.Module) -> int:
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    return first.in_channels


def map_steps(fn: Callable[[T], R], items: Sequence[T], processes: Optional[int] = None) -> List[R]:
    """[fn(item) for item in items], shared among forked processes when the machine has
    several cores: composing a step through Hydra and counting it on the meta device are
    pure Python, so N cores count N steps at once. `fn` must be a module-level function
    (or a partial of one) returning picklable values."""
    processes = min(processes or len(os.sched_getaffinity(0)), len(items))
    if processes <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        return [fn(item) for item in items]
    # fork: the children inherit the imports; they run no OpenMP kernel (meta device only)
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork")) as pool:
        return list(pool.map(fn, items))


def _count_step(step: str, overrides: Sequence[str], resolution: Optional[int]) -> Complexity:
    return complexity(compose(step, *overrides), resolution)


def count_steps(steps: Sequence[str], *overrides: str, resolution: Optional[int] = None,
                processes: Optional[int] = None) -> List[Complexity]:
    """Params and MACs of each step, composed with `overrides`:
    `count_steps(roadmap.STEPS, "regime=r50", "data=imagenet", resolution=224)` is Table 10's column."""
    return map_steps(partial(_count_step, overrides=list(overrides), resolution=resolution), list(steps), processes)
