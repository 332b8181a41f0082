"""The sweep: every step, restart-safe, locked, failures isolated, on local or cluster launchers."""

import csv
import fcntl
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from roadmap.cli import read
from roadmap.config import ConfigError
from tests.conftest import one_line_error

SMOKE = ("+experiment=smoke",)
QUICK = ("data.train_limit=2048", "recipe.batch_size=128")  # a few seconds a run


def sweep(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "roadmap.sweep", *args], capture_output=True, text=True, timeout=timeout
    )


def results(study):
    with open(study / "results.csv") as f:
        return list(csv.DictReader(f))


def summaries(study):
    return {p.parent.relative_to(study).as_posix(): p.read_text() for p in sorted(study.glob("*/seed*/summary.json"))}


@pytest.mark.slow
def test_a_smoke_sweep_trains_every_step_and_seed_and_writes_the_table(tmp_path):
    out = sweep("+step=resnet,modern_recipe", "seed=0,1", *SMOKE, f"hydra.sweep.dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    rows = results(tmp_path)
    assert [(r["step"], r["seed"], r["status"]) for r in rows] == [
        ("resnet", "0", "completed"),
        ("resnet", "1", "completed"),
        ("modern_recipe", "0", "completed"),
        ("modern_recipe", "1", "completed"),
    ]
    assert {r["run_dir"] for r in rows} == {
        str(tmp_path / s / f"seed{k}") for s in ("resnet", "modern_recipe") for k in (0, 1)
    }
    with open(tmp_path / "table.csv") as f:
        table = {r["step"]: r for r in csv.DictReader(f)}
    assert list(table) == ["resnet", "modern_recipe"]
    assert table["modern_recipe"]["builds_on"] == "resnet"
    for step, row in table.items():  # averaged: the seeds that completed above chance (a smoke run may not learn)
        counted = [float(r["top1"]) for r in rows if r["step"] == step and r["collapsed"] == "False"]
        assert int(row["seeds"]) == len(counted)
        mean = float(row["top1_mean"]) if row["top1_mean"] else float("nan")
        assert mean == pytest.approx(sum(counted) / len(counted)) if counted else row["top1_mean"] == ""
    assert float(table["modern_recipe"]["paper_top1"]) == 78.82  # the paper's top-1 and change, beside ours
    assert float(table["modern_recipe"]["paper_delta"]) == pytest.approx(2.69)
    assert (tmp_path / "table.md").read_text().startswith("| step | what changes |")
    assert "all 4 runs completed." in out.stdout


@pytest.mark.slow
def test_killed_mid_sweep_and_rerun_every_run_completes_once_as_in_an_uninterrupted_sweep(tmp_path):
    args = ["+step=resnet,gelu,layer_norm", *SMOKE, *QUICK, "hydra/launcher=basic"]  # one run at a time
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert sweep(*args, f"hydra.sweep.dir={whole}").returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "roadmap.sweep", *args, f"hydra.sweep.dir={killed}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    metrics = killed / "gelu" / "seed0" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 1):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    mid = results(killed)  # whole and readable at the moment of the kill
    assert [r["status"] for r in mid][:1] == ["completed"]
    assert json.loads((killed / "gelu" / "seed0" / "summary.json").read_text())["status"] == "running"
    first_run = (killed / "resnet" / "seed0" / "summary.json").read_text()

    out = sweep(*args, f"hydra.sweep.dir={killed}")
    assert out.returncode == 0, out.stderr
    assert "nothing to do" in out.stdout  # the finished run was skipped ...
    assert (killed / "resnet" / "seed0" / "summary.json").read_text() == first_run  # ... and not touched
    key = lambda rows: [(r["step"], r["seed"], r["status"], r["top1"], r["top5"], r["epochs_done"]) for r in rows]  # noqa: E731
    assert key(results(killed)) == key(results(whole))


@pytest.mark.slow
def test_a_run_whose_saved_config_differs_is_refused_by_name(tmp_path):
    assert sweep("+step=gelu", *SMOKE, f"hydra.sweep.dir={tmp_path}").returncode == 0
    before = summaries(tmp_path)
    out = sweep("+step=gelu", *SMOKE, "recipe.epochs=3", f"hydra.sweep.dir={tmp_path}")
    assert out.returncode == 1
    assert "holds a run of another config (recipe.epochs: 2 -> 3)" in out.stderr
    assert "gelu seed0: refused" in out.stderr
    assert summaries(tmp_path) == before


@pytest.mark.slow
def test_a_run_locked_by_another_process_is_not_trained_twice(tmp_path):
    run = tmp_path / "gelu" / "seed0"
    run.mkdir(parents=True)
    with open(run / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a second sweep training it would
        out = sweep("+step=gelu,layer_norm", *SMOKE, f"hydra.sweep.dir={tmp_path}")
    assert f"skipped: {run} is being trained by another process" in out.stdout
    assert not (run / "summary.json").exists()
    assert out.returncode == 1 and "gelu seed0: being trained by another process" in out.stderr
    assert json.loads((tmp_path / "layer_norm" / "seed0" / "summary.json").read_text())["status"] == "completed"
    assert sweep("+step=gelu,layer_norm", *SMOKE, f"hydra.sweep.dir={tmp_path}").returncode == 0  # lock released


@pytest.mark.slow
def test_runs_that_diverge_do_not_stop_the_sweep_and_are_named(tmp_path):
    out = sweep("+step=resnet,gelu", *SMOKE, "recipe.lr=1e12", f"hydra.sweep.dir={tmp_path}")
    assert out.returncode == 1
    assert [r["status"] for r in results(tmp_path)] == [
        "diverged",
        "diverged",
    ]  # the second ran after the first diverged
    assert "2 of 2 runs did not complete: resnet seed0: diverged; gelu seed0: diverged" in out.stderr  # roadmap order


@pytest.mark.slow
def test_joblib_runs_two_steps_at_once(tmp_path):
    out = sweep("+step=resnet,gelu", *SMOKE, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "train.threads=1",
                f"hydra.sweep.dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    assert [r["status"] for r in results(tmp_path)] == ["completed", "completed"]


@pytest.mark.slow
def test_submitit_launches_each_run_as_a_job(tmp_path):
    out = sweep("+step=resnet,gelu", *SMOKE, "hydra/launcher=submitit_local", f"hydra.sweep.dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    assert [r["status"] for r in results(tmp_path)] == ["completed", "completed"]
    assert any((tmp_path / ".submitit").iterdir())  # submitit's own job folders


def test_the_slurm_launcher_config_composes():
    from hydra import compose, initialize_config_dir

    from roadmap.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=["+step=gelu", "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=8"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert (
        launcher._target_.endswith("SlurmLauncher") and launcher.tasks_per_node == 8 and launcher.max_num_timeout == 12
    )


# ----------------------------------------------------------------------------- bad input


def test_an_unknown_step_in_the_list_stops_before_any_training(tmp_path):
    one_line_error(
        sweep("+step=resnet,gelu,transformer", f"hydra.sweep.dir={tmp_path / 's'}"), "unknown step 'transformer'"
    )
    assert not (tmp_path / "s").exists()


def test_an_unwritable_study_directory_is_refused(tmp_path):
    (tmp_path / "file").write_text("")
    one_line_error(sweep("+step=all", f"hydra.sweep.dir={tmp_path / 'file' / 'study'}"),
                   "cannot write to the study directory", "choose a writable hydra.sweep.dir")


def test_a_seed_that_is_not_an_integer_is_refused():
    one_line_error(sweep("+step=all", "seed=0,one"), "seed=0,one is not valid: 'one' is not an integer")


def test_a_launcher_that_is_not_installed_is_named(monkeypatch):
    one_line_error(sweep("+step=all", "hydra/launcher=ray"), "unknown launcher 'ray'")
    import importlib.util

    from roadmap import sweep as sweep_module

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="launcher 'joblib' is not installed: pip install hydra-joblib-launcher"):
        sweep_module.check_launcher(read(["hydra/launcher=joblib"], "+step=all"))


