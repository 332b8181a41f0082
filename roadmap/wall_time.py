"""The default study's wall time, projected from measured rates: one run at a time on
every core (the old setting) against one run per core side by side, one thread each (what
a sweep of small networks does now). `make bench` prints both.

A run of the default study is `epochs` passes of the training set (its train steps: batch
256, the step's recipe, channels-last) and a test of the test set after each. Its rates
are measured as the study trains, with the trainer's own optimizer step: alone with every
thread, and with one thread while the other cores train the same step, all started
together. The side-by-side projection schedules the runs in the sweep's order (the
costliest network first) onto the first free core.
"""

from __future__ import annotations

import math
import multiprocessing
import time
from dataclasses import dataclass
from typing import Callable, List, Sequence, Tuple

import torch

from roadmap.config import compose, validate
from roadmap.engine import optimizer_step, state_for
from roadmap.machine import Machine, keep_freed_memory
from roadmap.model import ConvNet
from roadmap.schedule import cores as core_count
from roadmap.schedule import costliest_first, makespan

TRAIN_IMAGES, TEST_IMAGES = 60_000, 10_000  # Fashion-MNIST
TEST_BATCH = 1024  # images per timed test step


@dataclass
class StepRates:
    """One step of the default study: training and test images per second."""

    step: str
    """The step of the roadmap."""
    train_img_s: float
    """Training images per second (train steps of the recipe's batch)."""
    test_img_s: float
    """Test images per second (eval-mode forward passes)."""

    def run_seconds(self, epochs: int) -> float:
        """One run: `epochs` passes over the training set, each followed by a test."""
        return epochs * (TRAIN_IMAGES / self.train_img_s + TEST_IMAGES / self.test_img_s)


def study_steps(step: str) -> Tuple[Callable[[], None], Callable[[], None], int]:
    """A train step and a test step of `step` as the default study runs them (the trainer's
    own optimizer step, engine.optimizer_step), and the train step's batch."""
    run = validate(compose(step))
    torch.manual_seed(0)
    steps_per_epoch = math.ceil(TRAIN_IMAGES / run.recipe.batch_size)
    state = state_for(ConvNet(run.model), run, Machine(0, 1, 0, torch.device("cpu")), steps_per_epoch)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(run.recipe.batch_size, 1, 32, 32, generator=g).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (run.recipe.batch_size,), generator=g)
    x_test = torch.randn(TEST_BATCH, 1, 32, 32, generator=g).contiguous(memory_format=torch.channels_last)

    def train() -> None:
        optimizer_step(state, x, y, run, world=1)

    @torch.no_grad()
    def test() -> None:
        state.model.eval()
        state.model(x_test)
        state.model.train()

    return train, test, run.recipe.batch_size


def measure(step: str, seconds: float, start: Callable[[], None] = lambda: None) -> StepRates:
    """The step's rates in this process, timed for about `seconds` each after `start()`."""
    train, test, batch = study_steps(step)
    train(), test()  # warm up
    start()
    rates = []
    for fn, images in ((train, batch), (test, TEST_BATCH)):
        n, t0 = 0, time.perf_counter()
        while n == 0 or time.perf_counter() - t0 < seconds:
            fn()
            n += 1
        rates.append(n * images / (time.perf_counter() - t0))
    return StepRates(step, *rates)


def _side_by_side_worker(steps: Sequence[str], seconds: float, barrier, queue) -> None:
    torch.set_num_threads(1)
    keep_freed_memory()  # as the sweep's runs do
    queue.put([measure(step, seconds, barrier.wait) for step in steps])


def measure_side_by_side(steps: Sequence[str], processes: int, seconds: float) -> List[StepRates]:
    """Each step's rates with one thread per process while `processes` processes train it
    at once (started together at a barrier), averaged over the processes."""
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(processes), ctx.Queue()
    workers = [ctx.Process(target=_side_by_side_worker, args=(list(steps), seconds, barrier, queue))
               for _ in range(processes)]
    for w in workers:
        w.start()
    results = [queue.get() for _ in workers]
    for w in workers:
        w.join()
    mean = lambda i, rate: sum(getattr(r[i], rate) for r in results) / processes  # noqa: E731
    return [StepRates(s, mean(i, "train_img_s"), mean(i, "test_img_s")) for i, s in enumerate(steps)]


@dataclass
class StudyProjection:
    """The default study's wall time both ways, and the rates per step behind it."""

    cores: int
    """The cores this process may use: the threads of a run alone, the runs side by side."""
    epochs: int
    """Epochs per run."""
    alone: List[StepRates]
    """Each step's rates trained alone on every core."""
    shared: List[StepRates]
    """Each step's rates with one thread while the other cores train it too."""
    alone_s: float
    """Wall time of the study one run at a time, every core each (seconds)."""
    side_by_side_s: float
    """Wall time of the study one run per core, costliest first onto the first free core (seconds)."""


def project(steps: Sequence[str], seconds: float = 1.0) -> StudyProjection:
    """The default study (these steps, one seed) both ways: rates per step and wall times."""
    cores = core_count()
    runs = {step: validate(compose(step)) for step in steps}
    epochs = runs[steps[0]].recipe.epochs
    threads = torch.get_num_threads()
    torch.set_num_threads(cores)
    try:
        alone = [measure(step, seconds) for step in steps]
    finally:
        torch.set_num_threads(threads)  # the caller's setting, as it was
    shared = measure_side_by_side(steps, cores, seconds) if cores > 1 else alone
    old = sum(r.run_seconds(epochs) for r in alone)
    order = costliest_first(runs)  # as the sweep
    rates = {r.step: r for r in shared}
    new = makespan([rates[step].run_seconds(epochs) for step in order], cores)
    return StudyProjection(cores, epochs, alone, shared, old, new)
