"""The benchmark (make bench) in its cheap form: one step at each end, one repetition.
It checks that the table is produced and complete, not how fast anything is."""

import subprocess
import sys

import pandas as pd
import pytest

from roadmap import bench, bench_report, references
from roadmap.config import model_config
from roadmap.model import ModelConfig
from tests.conftest import one_line_error


def test_the_references_at_both_ends_are_the_same_networks_as_ours():
    import roadmap

    for regime in ("micro", "r50"):
        for step, refs in references.REFERENCES.items():
            cfg = model_config(roadmap.compose(step, *bench.overrides_for(regime, "cpu")))
            for impl, build, fits in refs:
                if fits(cfg):
                    assert references.same_network(roadmap.ConvNet(cfg), build(cfg)), (regime, step, impl)


def test_timm_has_no_micro_resnet_because_its_stem_is_always_64_channels():
    fits = dict((impl, f) for impl, _, f in references.REFERENCES["resnet"])
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


def test_a_run_of_the_study_is_its_epochs_of_training_and_tests():
    from roadmap.wall_time import StepRates

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


def test_bench_trains_with_the_trainers_own_state_and_step():
    import torch

    e = next(e for e in bench.entries(bench.parse_config(["steps=separate_downsampling", "regimes=[micro]"]))
             if e.network.impl == "timm" or e.network.impl == "torchvision")
    r = bench.Runner(e, torch.device("cpu"), 32)
    assert type(r.state.optimizer) is torch.optim.AdamW and r.state.optimizer.defaults["foreach"] is True
    assert r.x.shape == (256, 1, 32, 32) and e.run.recipe.batch_size == 256
    before = [p.detach().clone() for p in r.state.model.parameters()]
    r.train_step()
    assert r.state.scheduler.last_epoch == 1  # the schedule steps with the optimizer, as in training
    assert any(not torch.equal(a, b) for a, b in zip(before, r.state.model.parameters()))
    sgd = next(e for e in bench.entries(bench.parse_config(["steps=resnet", "regimes=[micro]", "references=false"])))
    assert type(bench.Runner(sgd, torch.device("cpu"), 32).state.optimizer) is torch.optim.SGD  # the classic recipe


def measured(regime, name, impl, train_s, infer_s, same=None):
    network = bench_report.BenchedNetwork(regime, name, impl)
    return bench_report.Measured(network, 32, 256, 580346, 0.002, 60.0, same, train_s=train_s, infer_s=infer_s)


def test_the_report_reads_ratios_and_verdicts_from_the_targets_table():
    ours = measured("micro", "resnet", "roadmap", [0.05, 0.04, 0.06], [0.01, 0.01, 0.01])
    ref = measured("micro", "resnet", "torchvision", [0.045, 0.044, 0.054], [0.011, 0.009, 0.012], same=True)
    result = bench_report.BenchResult([ours, ref], matmul_gflops=100.0, data_img_s=80_000.0, counting_s=6.0,
                                      counted_steps=34)
    train, infer = result.ratios(ref)
    assert result.ratios(ours) is None
    assert train.median == pytest.approx(0.045 / 0.05) and (train.low, train.high) == pytest.approx((0.9, 1.1))
    assert infer.median == pytest.approx(1.1) and (infer.low, infer.high) == pytest.approx((0.9, 1.2))
    rows = bench_report.table_rows(result)
    assert rows[1]["network"] == "resnet (same network: yes)" and rows[0]["ratio_train"] is None
    assert rows[0]["train_img_s"] == pytest.approx(256 / 0.05) and rows[0]["matmul_pct"] == pytest.approx(
        100 * 6 * 0.002 * 256 / 0.05 / 100.0)
    lines = bench_report.target_lines(result, "cpu")
    assert lines[0] == "dense matmul (fp32 2048^2): 100.0 GFLOP/s (median)"
    assert lines[1] == ("ours / torchvision resnet (micro): train 0.90 (0.90-1.10), inference 1.10 (0.90-1.20) "
                        "(target >= 1.0, per-repetition range in brackets): MISS (1.0 is inside the run-to-run range)")
    assert lines[2].endswith("= 15.6x the fastest micro training (resnet, 5120 img/s) (target >= 10x): PASS")
    assert lines[3] == "compose + count params and MACs of all 34 steps of r50 and r200: 6.00 s (target <= 5 s): MISS"


def test_the_targets_are_named_data_with_their_bounds():
    shown = {t.name: (t.text, t.met(t.threshold)) for t in bench_report.TARGETS}
    assert shown == {"ours_over_reference": ("target >= 1.0", True), "r50_matmul_share": ("target >= 35%", True),
                     "data_over_training": ("target >= 10x", True), "counting_s": ("target <= 5 s", True)}
    assert not bench_report.TARGET["counting_s"].met(5.01) and not bench_report.TARGET["r50_matmul_share"].met(0.34)
    assert all(t.why for t in bench_report.TARGETS)


def test_the_machine_is_named_in_one_line():
    import torch

    from roadmap.machine import cpu_name, describe

    line = describe(torch.device("cpu"), "timm")
    assert line.startswith(f"{cpu_name()}, {torch.get_num_threads()} threads; python ") and "timm " in line
