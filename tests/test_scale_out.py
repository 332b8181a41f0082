"""Scaling out: one process per run holds its lock, the other ranks join the run with DDP,
under torchrun and under submitit; a lock never outlives its process."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from roadmap import rundir
from roadmap.sweep import export_cluster_environment
from tests.conftest import one_line_error

SMOKE = ("+experiment=smoke", "recipe.epochs=1", "train.device=cpu", "train.threads=1")
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def torchrun(*args, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "roadmap.sweep",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both workers
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def unset(monkeypatch, *keys):
    """Remove `keys` from the environment for this test only, including any the test's code sets."""
    for key in keys:
        monkeypatch.setenv(key, "")  # remembers the original value (or its absence) for teardown
        monkeypatch.delenv(key)


def summary(run):
    return json.loads((run / "summary.json").read_text())


@pytest.mark.slow
def test_torchrun_with_two_ranks_trains_each_run_once_with_world_size_two(tmp_path):
    out = torchrun("+step=resnet,gelu", *SMOKE, f"hydra.sweep.dir={tmp_path}")
    assert out.returncode == 0, out.stderr[-3000:]
    for step in ("resnet", "gelu"):
        s = summary(tmp_path / step / "seed0")
        assert (s["status"], s["world_size"], s["ddp_in_sync"]) == ("completed", 2, True)
    assert out.stdout.count("completed: top-1") == 2  # rank 0 reports each run once; rank 1 says nothing
    assert "skipped" not in out.stdout and "all 2 runs completed." in out.stdout


@pytest.mark.slow
def test_torchrun_with_a_batch_that_does_not_split_says_so_once_and_runs_nothing(tmp_path):
    out = torchrun("+step=gelu", *SMOKE, "recipe.batch_size=63", f"hydra.sweep.dir={tmp_path / 's'}")
    assert out.returncode != 0
    ours = [ln for ln in out.stderr.splitlines() if ln.startswith("error: ")]
    assert ours == ["error: recipe.batch_size=63 does not split over 2 processes: use a multiple of 2"]
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_submitit_with_two_tasks_per_job_trains_each_run_with_ddp(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "roadmap.sweep", "+step=resnet,gelu", *SMOKE, "hydra/launcher=submitit_local",
         "hydra.launcher.tasks_per_node=2", f"hydra.sweep.dir={tmp_path}"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    for step in ("resnet", "gelu"):
        s = summary(tmp_path / step / "seed0")
        assert (s["status"], s["world_size"], s["ddp_in_sync"]) == ("completed", 2, True)


def test_under_slurm_each_task_gets_torchruns_variables(monkeypatch):
    unset(monkeypatch, *TORCHRUN_ENV, "CUDA_VISIBLE_DEVICES")
    slurm = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "8", "SLURM_JOB_NUM_NODES": "2",
             "SLURM_NODEID": "1", "SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "gpu[07-08]"}
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    export_cluster_environment()
    env = {k: os.environ[k] for k in TORCHRUN_ENV}
    assert (
        env["RANK"] == "5" and env["WORLD_SIZE"] == "8" and env["LOCAL_RANK"] == "1" and env["LOCAL_WORLD_SIZE"] == "4"
    )
    assert env["MASTER_ADDR"] == "gpu07"  # the job's first node, the same for every task
    assert "CUDA_VISIBLE_DEVICES" not in os.environ  # LOCAL_RANK picks the GPU, as under torchrun


def test_one_task_or_no_job_exports_nothing(monkeypatch):
    unset(monkeypatch, *TORCHRUN_ENV, "SUBMITIT_EXECUTOR")
    export_cluster_environment()
    assert "WORLD_SIZE" not in os.environ


# ----------------------------------------------------------------------------- the lock


@pytest.mark.slow
def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    run = tmp_path / "gelu" / "seed0"
    run.mkdir(parents=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from roadmap import rundir; l = rundir.claim({str(run)!r}); "
            "print('held', flush=True); import time; time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    assert rundir.holder(run) == f"pid {holder.pid} on {os.uname().nodename}"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    deadline = time.time() + 10
    while rundir.holder(run) and time.time() < deadline:
        time.sleep(0.05)
    assert rundir.holder(run) is None  # the kernel released it with the process
    out = subprocess.run([sys.executable, "-m", "roadmap.sweep", "+step=gelu", *SMOKE, f"hydra.sweep.dir={tmp_path}"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert summary(run)["status"] == "completed"


def test_a_second_claim_on_a_held_run_fails_and_names_the_holder(tmp_path):
    first = rundir.claim(tmp_path)
    try:
        assert rundir.claim(tmp_path) is None
        assert rundir.holder(tmp_path).startswith(f"pid {os.getpid()} on ")
    finally:
        first.close()
    assert rundir.holder(tmp_path) is None


def test_a_sweep_with_an_unknown_launcher_is_one_line():
    one_line_error(subprocess.run([sys.executable, "-m", "roadmap.sweep", "+step=gelu", "hydra/launcher=ray"],
                                  capture_output=True, text=True), "unknown launcher 'ray'")
