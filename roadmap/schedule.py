"""Runs on the machine's cores, scheduled in one place: how many train side by side, in
which order they start, and how long the lot takes.

The sweep uses all three (roadmap.sweep); bench's wall-time projection (roadmap.wall_time)
orders and times the default study the same way, so it projects what the sweep does.
Small networks gain more from runs side by side, one thread each, than from threads
(BENCHMARKS.md), so the sweep trains one run per core where every run can.
"""

from __future__ import annotations

import os
from typing import Iterable, List, Mapping, Sequence

from roadmap.complexity import complexity
from roadmap.config import RunConfig
from roadmap.data import IN_MEMORY_LOADERS
from roadmap.machine import wants_cuda


def cores() -> int:
    """The cores this process may run on (its affinity, not the machine's count)."""
    return len(os.sched_getaffinity(0))


def side_by_side(runs: Iterable[RunConfig], count: int) -> int:
    """How many of `count` runs train at once: one per train.threads cores where every run
    trains on the CPU from in-memory data with a thread count set (the micro budget: 1
    thread, so one run per core); else 1 (a GPU, a loader with workers, or threads=0, all
    cores to one run). `runs` may be composed configs (DictConfig) or RunConfigs."""
    threads = []
    for run in runs:
        if wants_cuda(run.train.device) or run.data.source not in IN_MEMORY_LOADERS or run.train.threads == 0:
            return 1
        threads.append(run.train.threads)
    return max(1, min(count, cores() // max(threads, default=1)))


def costliest_first(runs: Mapping[str, RunConfig]) -> List[str]:
    """The names of `runs` by their networks' MACs at their resolution, most first (a stable
    sort). Runs side by side start in this order: each starts on the first free core, and
    starting the long ones first leaves the short ones to fill the end (the
    longest-processing-time rule), where one long run would otherwise train alone while the
    other cores wait."""
    cost = {name: complexity(run.model, run.data.image_size).macs for name, run in runs.items()}
    return sorted(cost, key=lambda name: -cost[name])


def makespan(durations: Sequence[float], workers: int) -> float:
    """Wall time of jobs run in this order, each on the first free worker (joblib's order)."""
    free = [0.0] * workers
    for d in durations:
        i = free.index(min(free))
        free[i] += d
    return max(free)
