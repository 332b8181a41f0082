"""The roadmap's steps counted: compose a step through Hydra and count its network,
one step or all of them, the steps shared among the machine's cores. Above the
config; `roadmap.complexity` (counting one network, no Hydra) is below it."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from typing import Any, Callable, List, Optional, Sequence, TypeVar

from torch import nn

from roadmap import complexity as counting
from roadmap.complexity import Complexity
from roadmap.config import compose, model_config

T = TypeVar("T")
R = TypeVar("R")


def complexity(model_or_cfg: Any, resolution: Optional[int] = None) -> Complexity:
    """Parameters and MACs of a model, or of the model a config describes (a composed
    config, a RunConfig or a ModelConfig). `resolution` defaults to the config's
    data.image_size, else 224 (the paper's)."""
    if isinstance(model_or_cfg, nn.Module):
        return counting.complexity(model_or_cfg, 224 if resolution is None else resolution)
    if resolution is None:
        data = getattr(model_or_cfg, "data", None)
        resolution = getattr(data, "image_size", None) or 224
    return counting.complexity(model_config(model_or_cfg), resolution)


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
