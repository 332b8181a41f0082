"""What training repeats: build the training state, train one epoch, evaluate (the
official ConvNeXt code's engine.py, apart from the run's setup and its files)."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from roadmap.config import RunConfig
from roadmap.data import Data, epoch_seed
from roadmap.machine import Machine, all_mean, all_sum, autocast
from roadmap.model import ConvNet
from roadmap.recipe import build_optimizer, build_scheduler


class Diverged(Exception):
    """The training loss became NaN or infinite."""

    def __init__(self, epoch: int, loss: float):
        super().__init__(f"loss {loss} in epoch {epoch}")
        self.epoch, self.loss = epoch, loss


@dataclass
class TrainState:
    """What training updates and a checkpoint saves."""

    model: nn.Module
    """The bare network (its state dict is the checkpoint's)."""
    net: nn.Module
    """What the forward pass runs: the model, wrapped in DDP and/or torch.compile."""
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ema: Optional[nn.Module]
    """AveragedModel of weights and buffers, or None."""
    forward_format: Callable[[], ContextManager]
    """The number format of forward passes (bf16 autocast on CUDA, or fp32)."""

    @property
    def eval_model(self) -> nn.Module:
        """What evaluation runs: the EMA where there is one. The bare model, not DDP: DDP's
        forward would sync buffers across ranks, whose test shards differ in length."""
        return self.ema.module if self.ema is not None else self.model

    def state_dict(self) -> Dict[str, Any]:
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict()}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])


def build_ema(model: nn.Module, decay: float) -> nn.Module:
    """An exponential moving average of the weights and of the buffers (BatchNorm's running
    statistics), as timm's ModelEma keeps it: evaluating it needs both."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def build_state(run: RunConfig, machine: Machine, steps_per_epoch: int) -> TrainState:
    """The network (seeded by the run's seed), its optimizer, schedule and EMA, wrapped for
    DDP and torch.compile as the run asks."""
    torch.manual_seed(epoch_seed(run.seed, -1))
    return state_for(ConvNet(run.model), run, machine, steps_per_epoch)


def state_for(model: nn.Module, run: RunConfig, machine: Machine, steps_per_epoch: int) -> TrainState:
    """The training state of a network already built (ours, or a reference the benchmark
    times beside it): on the machine's device, with the run's optimizer, schedule and EMA,
    wrapped as the run asks. What `optimizer_step` steps, whoever steps it."""
    model = model.to(machine.device)
    if run.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, run.recipe)
    scheduler = build_scheduler(optimizer, run.recipe, steps_per_epoch)
    ema = build_ema(model, run.recipe.ema_decay) if run.recipe.ema else None
    net = model
    if machine.world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[machine.device.index] if machine.cuda else None)
    if run.train.compile:
        net = torch.compile(net)
    return TrainState(model, net, optimizer, scheduler, ema, autocast(machine.device, run.train.bf16))


@dataclass
class EpochStats:
    """What one epoch of training measured (its test comes after)."""

    train_loss: float
    lr: float
    images_per_s: float
    data_share: float


def train_one_epoch(state: TrainState, data: Data, run: RunConfig, epoch: int, show_progress: bool) -> EpochStats:
    """One pass over the training set; raises Diverged at a NaN or infinite loss (on every
    process at once: the loss is the mean over processes)."""
    machine = data.machine
    model_seed, augment_seed = epoch_streams(run.seed, epoch, machine.rank)
    torch.manual_seed(model_seed)  # stochastic depth, MixUp/CutMix
    augment_rng = torch.Generator().manual_seed(augment_seed)
    steps = data.steps_per_epoch()
    batches = _progress(data.augmented_batches(epoch, run.seed, augment_rng), steps,
                        f"epoch {epoch + 1}/{run.recipe.epochs}", show_progress)
    t0 = waited = time.perf_counter()
    data_time = loss_sum = 0.0
    seen = 0
    for x, labels in batches:
        x, target = data.augment.mix_batch(x, labels)
        if run.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        data_time += time.perf_counter() - waited
        loss = optimizer_step(state, x, target, run, machine.world)
        if not math.isfinite(loss):
            raise Diverged(epoch + 1, loss)
        loss_sum += loss
        seen += len(labels) * machine.world
        waited = time.perf_counter()
    seconds = time.perf_counter() - t0
    return EpochStats(
        loss_sum / max(steps, 1), state.optimizer.param_groups[0]["lr"], seen / seconds, data_time / seconds
    )


def epoch_streams(seed: int, epoch: int, rank: int) -> Tuple[int, int]:
    """The seeds of a rank's two streams in an epoch: torch's global generator (stochastic
    depth, MixUp/CutMix) and the augmentation's. Rank r takes the slots 2r and 2r + 1 of the
    epoch's, so that no rank's stream is its neighbour's (up to 504 ranks); rank 0's are what
    a single process always drew."""
    base = epoch_seed(seed, epoch, 2 * rank)
    return base, base + 1


def optimizer_step(state: TrainState, x: torch.Tensor, target: torch.Tensor, run: RunConfig, world: int) -> float:
    """Forward and backward over the batch's device-sized slices (gradient accumulation,
    DDP syncing on the last), then one step of the optimizer, schedule and EMA: the loss,
    read from the device once per step (the mean over processes under DDP). The one train
    step: the benchmark and the wall-time projection time this, not a copy of it."""
    recipe = run.recipe
    _, accum, micro = recipe.split(world)
    smoothing = recipe.scaled(recipe.label_smoothing)
    losses = []
    for i in range(accum):
        part = slice(i * micro, (i + 1) * micro)
        sync = contextlib.nullcontext() if (i == accum - 1 or world == 1) else state.net.no_sync()
        with sync, state.forward_format():
            loss = F.cross_entropy(state.net(x[part]).float(), target[part], label_smoothing=smoothing)
            (loss / accum).backward()
        losses.append(loss.detach())
    loss_sum = step_loss(losses, world)
    if not math.isfinite(loss_sum):
        return loss_sum
    if recipe.clip_grad:
        nn.utils.clip_grad_norm_(state.model.parameters(), recipe.clip_grad)
    state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)
    state.scheduler.step()
    if state.ema is not None:
        state.ema.update_parameters(state.model)
    return loss_sum


def step_loss(losses, world: int) -> float:
    """The mean of a step's micro-batch losses: summed on the host in order, as one process
    always summed them; under DDP on the device, then the mean over processes."""
    if world == 1:
        return sum(v / len(losses) for v in torch.stack(losses).tolist())
    return all_mean(torch.stack(losses).double().mean())


@torch.no_grad()
def evaluate(
    model: nn.Module, data: Data, forward_format: Callable[[], ContextManager], channels_last: bool
) -> Tuple[float, float]:
    """Top-1 and top-5 accuracy (%) on the whole test set, every process testing its share."""
    from roadmap.augment import prepare_eval

    model.eval()
    correct1 = correct5 = total = 0
    k = min(5, data.augment.num_classes)
    with forward_format():
        for images, labels in data.test_batches():
            x = prepare_eval(images.to(data.device, non_blocking=True), data.cfg.mean, data.cfg.std)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            labels = labels.to(data.device, non_blocking=True)
            top = model(x).float().topk(k, 1).indices
            correct1 += (top[:, 0] == labels).sum()  # counted on the device, read once at the end
            correct5 += (top == labels[:, None]).any(1).sum()
            total += len(labels)
    correct1, correct5, total = all_sum([float(correct1), float(correct5), total], data.device)
    model.train()
    return 100.0 * correct1 / max(total, 1), 100.0 * correct5 / max(total, 1)


def _progress(iterable, total: int, desc: str, enabled: bool):
    if enabled and sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)
    return iterable
