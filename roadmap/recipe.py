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
from typing import List, Optional, Tuple

import torch
from torch import nn
from torch.optim import lr_scheduler

from roadmap.errors import (
    FRACTION,
    HALF_OPEN,
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    POSITIVE,
    POSITIVE_INT,
    Choice,
    ConfigError,
    Range,
    check_ranges,
)
from roadmap.randaugment import Policy


class Optimizer(Choice):
    sgd = "sgd"
    adamw = "adamw"


class LrScaling(Choice):
    linear = "linear"  # lr x batch / lr_batch: the paper, and the rule for SGD
    sqrt = "sqrt"  # lr x sqrt(batch / lr_batch): the rule for adaptive optimizers far from lr_batch
    none = "none"  # lr as given, at any batch size


class Schedule(Choice):
    step = "step"  # x gamma at each milestone
    cosine = "cosine"  # linear warmup, then cosine to min_lr


class Interpolation(Choice):
    bilinear = "bilinear"  # torchvision's ResNet reference recipe (the classic recipe)
    bicubic = "bicubic"  # the ConvNeXt recipe (timm's train_interpolation='bicubic')


# Where each numeric field may lie (finite in any case).
RECIPE_RANGES = {
    "lr": POSITIVE, "lr_batch": POSITIVE_INT, "momentum": HALF_OPEN, "betas": HALF_OPEN, "weight_decay": NON_NEGATIVE,
    "epochs": POSITIVE_INT, "batch_size": POSITIVE_INT, "device_batch": NON_NEGATIVE_INT, "min_lr": NON_NEGATIVE,
    "warmup": Range(0, 1, hi_open=True, text="a fraction of training in [0, 1)"), "milestones": FRACTION,
    "gamma": POSITIVE, "hflip": FRACTION, "mixup": NON_NEGATIVE, "cutmix": NON_NEGATIVE, "random_erasing": FRACTION,
    "label_smoothing": HALF_OPEN, "regularization": NON_NEGATIVE, "ema_decay": HALF_OPEN, "clip_grad": NON_NEGATIVE,
}


@dataclass
class RecipeConfig:
    """How a network is trained: the optimizer, the schedule, the augmentation and the
    regularization. conf/recipe/ holds the two the paper uses; the defaults are the
    ConvNeXt recipe of Table 5. Deviations from the paper: README, "Deviations"."""

    name: str = "convnext"
    """The recipe's name, for tables and run summaries (classic, convnext)."""
    optimizer: Optimizer = Optimizer.adamw
    """sgd (classic: momentum, Nesterov off) or adamw (Table 5)."""
    lr: float = 4e-3
    """Peak learning rate for `lr_batch` images per step (Table 5: 4e-3 per 4096)."""
    lr_batch: int = 4096
    """`lr` is for this many images per step, scaled to batch_size by `lr_scaling`."""
    lr_scaling: LrScaling = LrScaling.linear
    """How lr follows batch_size: linear (the paper), sqrt, or none (lr as given)."""
    momentum: float = 0.9
    """SGD momentum, in [0, 1) (classic: 0.9)."""
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW's (beta1, beta2), each in [0, 1) (Table 5: 0.9, 0.999)."""
    weight_decay: float = 0.05
    """Decoupled (AdamW) or L2 (SGD) weight decay, >= 0 (Table 5: 0.05; classic: 1e-4)."""
    decay_norms_and_biases: bool = False
    """Decay every parameter (classic) or only weights of two or more dimensions (ConvNeXt)."""
    epochs: int = 300
    """Passes over the training set (Table 5: 300; classic: 90)."""
    batch_size: int = 4096
    """Images per optimizer step, over all processes."""
    device_batch: int = 0
    """Most images one device processes at once; a larger batch_size accumulates gradients. 0 = no limit."""
    schedule: Schedule = Schedule.cosine
    """step (classic: x gamma at each milestone) or cosine (warmup, then cosine to min_lr)."""
    warmup: float = 20 / 300
    """Linear warmup from 1e-3 x lr, as a fraction of training (Table 5: 20 of 300 epochs)."""
    min_lr: float = 1e-6
    """Where the cosine schedule ends."""
    milestones: List[float] = field(default_factory=lambda: [1 / 3, 2 / 3])
    """Step decays, as fractions of training (classic: epochs 30 and 60 of 90)."""
    gamma: float = 0.1
    """Factor at each step decay."""
    interpolation: Interpolation = Interpolation.bicubic
    """Resampling of training crops, RandAugment's geometric ops and evaluation resizes."""
    crop_scale: List[float] = field(default_factory=lambda: [0.08, 1.0])
    """Random resized crop area range, [min, max] in (0, 1]; [1, 1] keeps the whole image."""
    hflip: float = 0.5
    """Probability of a horizontal flip, in [0, 1]."""
    randaugment: Optional[str] = "rand-m9-mstd0.5-inc1"
    """timm's RandAugment policy string (Table 5: rand-m9-mstd0.5-inc1), or null for none."""
    mixup: float = 0.8
    """Mixup's Beta alpha, >= 0; 0 = off (Table 5: 0.8)."""
    cutmix: float = 1.0
    """CutMix's Beta alpha, >= 0; 0 = off (Table 5: 1.0). With both on, one is picked per batch."""
    random_erasing: float = 0.25
    """Probability of erasing a random box per image, in [0, 1] (Table 5: 0.25)."""
    label_smoothing: float = 0.1
    """Label smoothing, in [0, 1) (Table 5: 0.1)."""
    regularization: float = 1.0
    """Scales RandAugment's magnitude, the Mixup/CutMix alphas, random erasing and label
    smoothing at once; 1 is the paper, 0 turns them all off (a budget's knob)."""
    ema: bool = False
    """Evaluate an exponential moving average of the weights (and buffers) instead of the
    weights (Table 5 lists EMA; the roadmap turns it off, Appendix A.1)."""
    ema_decay: float = 0.9999
    """EMA decay per optimizer step, in [0, 1) (Table 5: 0.9999)."""
    clip_grad: float = 0.0
    """Gradient norm clip; 0 = none (the paper clips nothing)."""

    def __post_init__(self) -> None:
        self.optimizer, self.schedule = Optimizer(self.optimizer), Schedule(self.schedule)
        self.lr_scaling, self.interpolation = LrScaling(self.lr_scaling), Interpolation(self.interpolation)
        check_ranges(self, "recipe", RECIPE_RANGES)
        if self.randaugment:
            Policy.parse(self.randaugment)  # a policy timm would not read fails here
        if not (len(self.crop_scale) == 2 and 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1):
            raise ConfigError(
                f"recipe.crop_scale={list(self.crop_scale)} is not valid: give [min, max] with 0 < min <= max <= 1"
            )
        if self.device_batch and self.batch_size % self.device_batch:
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
    """SGD or AdamW over the recipe's parameter groups. foreach: one op over all tensors of a
    group instead of one per tensor (torch's default on CUDA, not on the CPU); the same
    numbers, bit for bit, as the per-tensor loop (tests/test_recipe.py)."""
    groups, lr = param_groups(model, recipe), recipe.scaled_lr()
    if recipe.optimizer is Optimizer.sgd:
        return torch.optim.SGD(groups, lr=lr, momentum=recipe.momentum, foreach=True)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(recipe.betas), foreach=True)


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
