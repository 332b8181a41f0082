"""Training recipes: the original ResNet recipe and the ConvNeXt recipe (Table 5).

Learning rates are given per `lr_batch` images and scaled linearly to the batch size.
Schedules are fractions of training (warmup = 20/300 of it, step decays at 1/3 and 2/3)
so a short run keeps the recipe's shape. `regularization` scales the augmentation and
regularization strengths at once (RandAugment magnitude, Mixup/CutMix alphas, random
erasing, label smoothing); 1.0 is the paper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import List, Tuple

import torch
from torch import nn
from torch.optim import lr_scheduler

from roadmap.model import ConfigError


class Optimizer(str, Enum):
    sgd = "sgd"
    adamw = "adamw"


class LrScaling(str, Enum):
    linear = "linear"  # lr x batch / lr_batch: the paper, and the rule for SGD
    sqrt = "sqrt"  # lr x sqrt(batch / lr_batch): the rule for adaptive optimizers far from lr_batch
    none = "none"  # lr as given, at any batch size


class Schedule(str, Enum):
    step = "step"  # x gamma at each milestone
    cosine = "cosine"  # linear warmup, then cosine to min_lr


@dataclass
class RecipeConfig:
    name: str = "convnext"
    optimizer: Optimizer = Optimizer.adamw
    lr: float = 4e-3
    lr_batch: int = 4096
    """`lr` is for this many images per step, scaled to batch_size by `lr_scaling`."""
    lr_scaling: LrScaling = LrScaling.linear
    momentum: float = 0.9
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.05
    decay_norms_and_biases: bool = False
    epochs: int = 300
    batch_size: int = 4096
    """Images per optimizer step, over all processes."""
    device_batch: int = 0
    """Most images one device processes at once; a larger batch_size accumulates gradients. 0 = no limit."""
    schedule: Schedule = Schedule.cosine
    warmup: float = 20 / 300
    """Linear warmup, as a fraction of training."""
    min_lr: float = 1e-6
    milestones: List[float] = field(default_factory=lambda: [1 / 3, 2 / 3])
    """Step decays, as fractions of training."""
    gamma: float = 0.1
    crop_scale: List[float] = field(default_factory=lambda: [0.08, 1.0])
    """Random resized crop area range."""
    hflip: float = 0.5
    randaugment_ops: int = 2
    randaugment_magnitude: float = 9.0
    randaugment_std: float = 0.5
    mixup: float = 0.8
    cutmix: float = 1.0
    random_erasing: float = 0.25
    label_smoothing: float = 0.1
    regularization: float = 1.0
    """Scales RandAugment magnitude, Mixup/CutMix alphas, random erasing and label smoothing."""
    ema: bool = False
    ema_decay: float = 0.9999
    clip_grad: float = 0.0
    """Gradient norm clip; 0 = none (the paper clips nothing)."""

    def __post_init__(self) -> None:
        self.optimizer, self.schedule = Optimizer(self.optimizer), Schedule(self.schedule)
        self.lr_scaling = LrScaling(self.lr_scaling)
        positive = ("lr", "lr_batch", "epochs", "batch_size")
        for key in positive:
            if getattr(self, key) <= 0:
                raise ConfigError(f"recipe.{key}={getattr(self, key)} is not valid: it must be positive")
        if not 0 <= self.warmup < 1:
            raise ConfigError(f"recipe.warmup={self.warmup} is not valid: a fraction of training in [0, 1)")
        if not (len(self.crop_scale) == 2 and 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1):
            raise ConfigError(f"recipe.crop_scale={list(self.crop_scale)} is not valid: give [min, max] with 0 < min <= max <= 1")
        for key in ("hflip", "random_erasing", "label_smoothing"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"recipe.{key}={getattr(self, key)} is not valid: it must be in [0, 1]")
        if self.regularization < 0:
            raise ConfigError(f"recipe.regularization={self.regularization} is not valid: 0 (none) or more")
        if self.device_batch < 0 or (self.device_batch and self.batch_size % self.device_batch):
            raise ConfigError(
                f"recipe.batch_size={self.batch_size} conflicts with recipe.device_batch={self.device_batch}: "
                "the batch must be a whole number of device batches"
            )

    def split(self, world: int) -> Tuple[int, int, int]:
        """How `world` processes share a batch: (images per process, accumulation steps,
        images per forward pass). ConfigError when the batch does not split evenly."""
        per_rank = self.batch_size // world
        if per_rank * world != self.batch_size:
            raise ConfigError(
                f"recipe.batch_size={self.batch_size} does not split over {world} processes: use a multiple of {world}"
            )
        if self.device_batch and per_rank > self.device_batch and per_rank % self.device_batch:
            raise ConfigError(
                f"recipe.batch_size={self.batch_size} over {world} processes is {per_rank} each, not a multiple of "
                f"recipe.device_batch={self.device_batch}: choose sizes that divide"
            )
        accum = per_rank // self.device_batch if self.device_batch and per_rank > self.device_batch else 1
        return per_rank, accum, per_rank // accum

    def scaled(self, value: float) -> float:
        return value * self.regularization

    def scaled_lr(self) -> float:
        ratio = self.batch_size / self.lr_batch
        if self.lr_scaling is LrScaling.none:
            return self.lr
        return self.lr * (ratio if self.lr_scaling is LrScaling.linear else math.sqrt(ratio))


def param_groups(model: nn.Module, recipe: RecipeConfig) -> List[dict]:
    """Weight decay on conv and linear weights; norms, biases and layer scales (every
    parameter of one dimension) exempt unless the recipe decays them."""
    if recipe.decay_norms_and_biases:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": recipe.weight_decay}]
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, recipe: RecipeConfig) -> torch.optim.Optimizer:
    groups, lr = param_groups(model, recipe), recipe.scaled_lr()
    if recipe.optimizer is Optimizer.sgd:
        return torch.optim.SGD(groups, lr=lr, momentum=recipe.momentum)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(recipe.betas))


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: RecipeConfig, steps_per_epoch: int):
    """Stepped once per optimizer step."""
    total = max(recipe.epochs * steps_per_epoch, 1)
    if recipe.schedule is Schedule.step:
        # decay at whole epochs, as the original recipe (epochs 30 and 60 of 90)
        milestones = [round(f * recipe.epochs) * steps_per_epoch for f in recipe.milestones]
        return lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=recipe.gamma)
    warmup = math.ceil(recipe.warmup * total)
    base = optimizer.param_groups[0]["lr"]
    cosine = lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total - warmup, 1), eta_min=min(recipe.min_lr, base))
    if warmup == 0:
        return cosine
    linear = lr_scheduler.LinearLR(optimizer, start_factor=1e-3, end_factor=1.0, total_iters=warmup)
    return lr_scheduler.SequentialLR(optimizer, [linear, cosine], milestones=[warmup])
