"""Any axis is a sweep: every combination of swept values is one run in its own directory,
named by its values, and the study's tables carry the swept keys as columns."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import roadmap.results as R
from roadmap import ConfigError
from roadmap.cli import read
from roadmap.config import validate
from roadmap.sweep import plan
from tests.conftest import one_line_error

SMOKE = ("+experiment=smoke", "recipe.epochs=1")


def sweep(*args):
    return subprocess.run([sys.executable, "-m", "roadmap.sweep", *args], capture_output=True, text=True, timeout=600)


def planned(*args):
    return plan(read(list(args), "+step=all"))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """+step=resnet,gelu x recipe.lr=1e-3,2e-3: a 2x2 sweep, trained once for the module."""
    path = tmp_path_factory.mktemp("axes") / "lr_study"
    out = sweep("+step=resnet,gelu", "recipe.lr=1e-3,2e-3", *SMOKE, f"hydra.sweep.dir={path}")
    assert out.returncode == 0, out.stderr
    return path


def summaries(study):
    return {p.relative_to(study).as_posix(): p.read_bytes() for p in sorted(study.rglob("summary.json"))}


@pytest.mark.slow
def test_a_2x2_sweep_trains_four_runs_in_four_directories_named_by_their_values(study):
    assert sorted(summaries(study)) == [
        "recipe.lr=0.001/gelu/seed0/summary.json", "recipe.lr=0.001/resnet/seed0/summary.json",
        "recipe.lr=0.002/gelu/seed0/summary.json", "recipe.lr=0.002/resnet/seed0/summary.json",
    ]
    for lr in ("0.001", "0.002"):
        for step in ("resnet", "gelu"):
            run = study / f"recipe.lr={lr}" / step / "seed0"
            assert json.loads((run / "summary.json").read_text())["status"] == "completed"
            assert f"lr: {lr}" in (run / "config.yaml").read_text()  # each run trained at its own value


@pytest.mark.slow
def test_the_study_tables_carry_the_swept_key_as_a_column(study):
    runs = pd.read_csv(study / "results.csv")
    assert sorted(zip(runs["recipe.lr"], runs["step"])) == [
        (0.001, "gelu"),
        (0.001, "resnet"),
        (0.002, "gelu"),
        (0.002, "resnet"),
    ]
    table = pd.read_csv(study / "table.csv")
    assert list(table.columns[:2]) == ["recipe.lr", "step"]
    assert table.groupby("recipe.lr")["step"].apply(list).to_dict() == {
        0.001: ["resnet", "gelu"],
        0.002: ["resnet", "gelu"],
    }


@pytest.mark.slow
def test_the_results_api_groups_the_step_table_by_the_swept_key(study):
    runs = R.load(study)
    assert R.swept_keys(runs) == ["recipe.lr"] and set(runs["study"]) == {"lr_study"}
    blocks = R.split_by_swept(R.step_table(runs))
    assert [values for values, _ in blocks] == [{"recipe.lr": 0.001}, {"recipe.lr": 0.002}]
    assert all(list(rows["step"]) == ["resnet", "gelu"] for _, rows in blocks)
    assert "recipe.lr" in R.history(study).columns


@pytest.mark.slow
def test_rerunning_the_sweep_retrains_nothing(study):
    before = summaries(study)
    out = sweep("+step=resnet,gelu", "recipe.lr=1e-3,2e-3", *SMOKE, f"hydra.sweep.dir={study}")
    assert out.returncode == 0, out.stderr
    assert summaries(study) == before


@pytest.mark.slow
def test_make_plots_draws_each_figure_once_per_value(study):
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-m", "analysis.plots", str(study)], capture_output=True, text=True, cwd=root)
    assert out.returncode == 0, out.stderr
    names = {p.name for p in (study / "figures").iterdir()}
    assert {f"{n}__recipe.lr={v}.png" for n in ("figure2", "path", "deltas", "curves") for v in (0.001, 0.002)} <= names


# ----------------------------------------------------------------------------- the plan, without training


def test_hydra_sweep_syntax_names_each_run():
    p = planned("+step=kernel_7", "model.kernel_size=range(5,9,2)", "seed=range(0,2)", "data.train_limit=512")
    assert p.axes == {"model.kernel_size": ["5", "7"]} and p.seeds == [0, 1] and p.fixed == ["data.train_limit=512"]
    assert [str(p.run_dir(*r).relative_to(p.sweep_dir)) for r in p.runs()] == [
        "model.kernel_size=5/kernel_7/seed0", "model.kernel_size=7/kernel_7/seed0",
        "model.kernel_size=5/kernel_7/seed1", "model.kernel_size=7/kernel_7/seed1",
    ]  # seed-major: a study stopped part-way is complete for seed 0
    assert [p.configs[(v, "kernel_7")].model.kernel_size for v in p.variants()] == [5, 7]


def test_two_swept_keys_nest_in_sorted_order_and_choice_and_glob_work():
    p = planned("+step=glob(kernel_*)", "regime=choice(micro,r50)", "recipe.lr=1e-3,2e-3")
    assert p.steps == ["kernel_5", "kernel_7", "kernel_9", "kernel_11"]  # in roadmap order
    assert p.variants() == ["recipe.lr=0.001/regime=micro", "recipe.lr=0.002/regime=micro",
                            "recipe.lr=0.001/regime=r50", "recipe.lr=0.002/regime=r50"]
    assert str(p.sweep_dir) == "runs/fashion_mnist_micro"  # one study, whatever the regime


def test_the_default_study_without_other_axes_keeps_its_layout():
    p = planned("+step=all")
    assert p.variants() == [""] and len(p.runs()) == 17 and p.seeds == [0]
    assert str(p.run_dir("", "resnet", 0)) == "runs/fashion_mnist_micro/resnet/seed0"


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "args,message",
    [
        (("+step=gelu", "model.kernel_sise=5,7"), "unknown config key 'model.kernel_sise'"),
        (
            ("+step=gelu", "recipe.lr=1e-3,0.001"),
            "gives two runs the same directory (recipe.lr=0.001): list each value once",
        ),
        (("+step=gelu", "data.root=/a,/b"), "cannot name a run directory"),
        (("+step=gelu", "recipe.lr=interval(0,1)"), "interval() needs an optimizing sweeper"),
        (("+step=gelu", "model.kernel_size=4,5"), "model.kernel_size=4 is not valid"),
    ],
)
def test_a_bad_sweep_is_refused_before_anything_runs(args, message):
    with pytest.raises(ConfigError, match=None) as err:
        planned(*args)
    assert message in str(err.value)


def test_a_bad_sweep_from_the_command_line_is_one_line_and_creates_nothing(tmp_path):
    one_line_error(sweep("+step=gelu", "recipe.lr=1e-3,0.001", f"hydra.sweep.dir={tmp_path / 's'}"), "same directory")
    assert not (tmp_path / "s").exists()


def test_a_batch_that_does_not_split_over_the_ranks_is_refused_at_plan_time(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match="recipe.batch_size=64 does not split over 3 processes: use a multiple of 3"):
        planned("+step=gelu", "+experiment=smoke")


# ----------------------------------------------------------------------------- runs side by side


def test_a_cpu_study_of_small_networks_trains_one_run_per_core_with_one_thread_each(monkeypatch):
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)))
    p = planned("+step=all", "train.device=cpu")
    assert p.jobs == 4 and p.hydra_argv()[-2:] == ["hydra/launcher=joblib", "hydra.launcher.n_jobs=4"]
    assert all(cfg.train.threads == 1 for cfg in p.configs.values())  # the micro budget's, whatever the cores
    assert planned("+step=all", "train.device=cpu", "train.threads=2").jobs == 2
    assert planned("+step=all", "train.device=cpu", "train.threads=0").jobs == 1  # all cores to one run, as before
    assert planned("+step=resnet", "train.device=cpu").jobs == 1  # one run
    assert planned("+step=all", "hydra/launcher=basic").jobs == 1  # a launcher chosen is kept


def test_runs_side_by_side_start_with_the_costliest_networks(monkeypatch):
    import os

    from roadmap.complexity import complexity

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(2)))
    p = planned("+step=all", "train.device=cpu")
    cost = {s: complexity(validate(p.configs[("", s)]).model, 32).gmacs for s in p.steps}
    assert sorted(p.launch_order) == sorted(p.steps) and p.launch_order[0] == "wider"  # the widest network
    assert [cost[s] for s in p.launch_order] == sorted(cost.values(), reverse=True)
    assert "+step=" + ",".join(p.launch_order) in p.hydra_argv()
    assert p.runs()[0] == ("", "resnet", 0)  # the plan (and what it reports) keeps the roadmap's order
    one = planned("+step=all", "hydra/launcher=basic")
    assert one.launch_order == one.steps  # one run at a time: the roadmap's order


@pytest.mark.slow
def test_runs_side_by_side_keep_the_lock_restart_safety_and_the_results(tmp_path):
    import fcntl

    args = (
        "+step=resnet,gelu,layer_norm,separate_downsampling",
        *SMOKE,
        "train.device=cpu",
        f"hydra.sweep.dir={tmp_path}",
    )
    held = tmp_path / "gelu" / "seed0"
    held.mkdir(parents=True)
    with open(held / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another sweep trains gelu
        out = sweep(*args)
    assert "2 at a time" in out.stdout and out.returncode == 1
    assert "gelu seed0: being trained by another process" in out.stderr
    rows = pd.read_csv(tmp_path / "results.csv")
    assert sorted(rows["step"]) == ["layer_norm", "resnet", "separate_downsampling"]
    assert set(rows["status"]) == {"completed"} and set(rows["threads"]) == {1}
    before = summaries(tmp_path)
    rerun = sweep(*args)
    assert rerun.returncode == 0, rerun.stderr
    after = summaries(tmp_path)
    assert {k: v for k, v in after.items() if "gelu" not in k} == before  # the finished runs were not touched
    assert sorted(pd.read_csv(tmp_path / "results.csv")["step"]) == [
        "gelu",
        "layer_norm",
        "resnet",
        "separate_downsampling",
    ]
