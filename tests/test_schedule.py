"""Scheduling runs on the cores (roadmap.schedule): how many side by side, in which order,
and how long the lot takes. The sweep's plan uses it (tests/test_sweep_axes.py)."""

import os

import pytest

from roadmap.config import Device, compose, validate
from roadmap.data import Source
from roadmap.schedule import costliest_first, makespan, side_by_side


@pytest.fixture
def four_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)))


def run(step="resnet", **train):
    cfg = validate(compose(step, "train.device=cpu"))
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return cfg


def test_small_cpu_runs_of_one_thread_train_one_per_core(four_cores):
    assert side_by_side([run(), run("separate_downsampling")], count=17) == 4
    assert side_by_side([run(threads=2)], count=17) == 2  # one run per two cores
    assert side_by_side([run()], count=3) == 3  # no more at once than there are runs


def test_a_run_that_wants_every_core_or_a_gpu_or_loader_workers_trains_alone(four_cores):
    assert side_by_side([run(), run(threads=0)], count=17) == 1  # threads=0: all cores to one run
    assert side_by_side([run(device=Device.cuda)], count=17) == 1
    files = run()
    files.data.source = Source.imagefolder
    assert side_by_side([files], count=17) == 1


def test_runs_start_costliest_network_first_and_ties_keep_their_order():
    runs = {s: run(s) for s in ("resnet", "stage_ratio", "wider", "separate_downsampling")}
    order = costliest_first(runs)
    assert order[0] == "wider" and sorted(order) == sorted(runs)
    small = run("resnet")
    assert costliest_first({"a": small, "b": small, "c": run("wider")}) == ["c", "a", "b"]


def test_the_makespan_puts_each_job_on_the_first_free_worker():
    assert makespan([3, 1, 2, 2], 2) == 5  # 3 | 1+2+2
    assert makespan([3, 1, 2, 2], 1) == 8
    assert makespan([2, 2, 3], 2) == 5  # the long job last waits: why the sweep starts it first
    assert makespan([3, 2, 2], 2) == 4
