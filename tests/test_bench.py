"""The benchmark (make bench) in its cheap form: one step at each end, one repetition.
It checks that the table is produced and complete, not how fast anything is."""

import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import one_line_error
from roadmap import bench
from roadmap.config import model_config
from roadmap.model import ModelConfig


def test_the_references_at_both_ends_are_the_same_networks_as_ours():
    import roadmap

    for regime in ("micro", "r50"):
        for step, refs in bench.REFERENCES.items():
            cfg = model_config(roadmap.compose(step, *bench.overrides_for(regime, "cpu")))
            for impl, build, fits in refs:
                if fits(cfg):
                    assert bench.same_network(roadmap.ConvNet(cfg), build(cfg)), (regime, step, impl)


def test_timm_has_no_micro_resnet_because_its_stem_is_always_64_channels():
    fits = dict((impl, f) for impl, _, f in bench.REFERENCES["resnet"])
    assert not fits["timm"](ModelConfig(widths=[16, 32, 64, 128]))
    assert fits["timm"](ModelConfig())


@pytest.mark.slow
def test_a_cheap_run_prints_and_writes_the_table_with_every_target(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "roadmap.bench", "steps=resnet,separate_downsampling", "reps=1", "seconds=0.05",
         "regimes=[micro]", f"out={tmp_path}"],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    table = pd.read_csv(tmp_path / "bench_cpu.csv")
    assert list(table["impl"]) == ["roadmap", "torchvision", "roadmap", "torchvision", "timm"]
    assert (table["train_img_s"] > 0).all() and (table["infer_img_s"] > 0).all() and (table["peak_memory_mb"] > 0).all()
    assert table["ratio_train"].notna().sum() == 3 and table["network"].str.contains("same network: yes").sum() == 3
    text = (tmp_path / "bench_cpu.md").read_text()
    for line in ("dense matmul", "ours / torchvision resnet (micro)", "ours / timm separate_downsampling (micro)",
                 "data pipeline", "compose + count params and MACs of all 34 steps",
                 "Default study (2 runs of 3 epochs", "| separate_downsampling |"):
        assert line in text and line in out.stdout


def test_the_study_projection_schedules_runs_on_the_first_free_core():
    from roadmap.wall_time import StepRates, makespan

    assert makespan([3, 1, 2, 2], 2) == 5  # 3 | 1+2+2
    assert makespan([3, 1, 2, 2], 1) == 8
    run = StepRates("resnet", train_img_s=6000, test_img_s=10000)
    assert run.run_seconds(3) == 3 * (10 + 1)


def test_peak_memory_counts_what_a_training_step_allocates():
    import torch

    def step():
        a = torch.ones(1024, 1024)  # 4 MiB, freed at the end
        return a.sum()

    assert 4 * 2**20 <= bench.cpu_step_growth(step) < 5 * 2**20


@pytest.mark.parametrize("arg, fragment", [
    ("steps=nope", "unknown step 'nope'"),
    ("regimes=[r100]", "regimes has 'r100'"),
    ("reps=0", "reps=0 is not valid"),
    ("device=tpu", "device=tpu is not valid"),
    ("speed=11", "speed"),
])
def test_bad_arguments_get_one_line(arg, fragment):
    out = subprocess.run([sys.executable, "-m", "roadmap.bench", arg], capture_output=True, text=True, timeout=120)
    one_line_error(out, fragment)
