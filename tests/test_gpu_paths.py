"""The GPU and cluster paths, checked on the CPU: the data path's copies to the device
(counted on the meta device), datasets that pickle, ranks and devices from SLURM's
variables, ranks that agree on divergence, a lock on a filesystem that cannot lock, the
CUDA switches and bench's per-network peak memory."""

import errno
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import roadmap
from roadmap import augment, bench, machine, rundir
from roadmap.augment import BatchAugment
from roadmap.config import validate
from roadmap.data import folder_datasets
from roadmap.engine import epoch_streams
from roadmap.errors import ConfigError
from tests.conftest import image_folder

ROOT = Path(__file__).resolve().parent.parent


class HostToDevice(TorchDispatchMode):
    """Counts the operations that take a host tensor (not a 0-dim scalar) to the meta device:
    on a GPU, each is one host-to-device copy."""

    def __init__(self):
        super().__init__()
        self.copies = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        host = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor) and t.device.type == "cpu"]
        sent = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor) and t.device.type == "meta"]
        if sent and any(t.dim() > 0 for t in host):
            self.copies.append(sum(t.nbytes for t in host))
        return out


def imagenet_augment():
    run = validate(roadmap.compose("separate_downsampling", "+experiment=imagenet_r50", "recipe.batch_size=512"))
    return BatchAugment.for_recipe(run.recipe, 1000, run.data.mean, run.data.std, crop=False)


# ----------------------------------------------------------------------------- the data path


def test_an_imagenet_step_of_augmentation_sends_its_draws_to_the_device_in_one_small_copy():
    aug = imagenet_augment()  # RandAugment, erasing 0.25, MixUp/CutMix: the paper's recipe
    images = torch.empty(512, 3, 224, 224, dtype=torch.uint8, device="meta")
    labels = torch.empty(512, dtype=torch.int64, device="meta")
    g = torch.Generator().manual_seed(0)
    counts = []
    for _ in range(3):
        with HostToDevice() as h2d:
            x, target = aug.mix_batch(aug.per_image(images, g), labels)
        counts.append(h2d.copies)
    assert x.shape == (512, 3, 224, 224) and target.shape == (512, 1000)
    assert len(counts[0]) <= 4  # the first step also copies the fill colour and the normalization once
    assert [len(c) for c in counts[1:]] == [1, 1]  # was 27 copies (79.6 MiB) per step
    assert max(counts[-1]) < 1 << 20  # the erasing noise is drawn on the device, not sent


def test_draws_sent_packed_give_the_images_the_draws_give_in_place():
    aug = BatchAugment(crop=True, randaugment="rand-m9-mstd0.5-inc1", random_erasing=0.5, mean=(0.4, 0.5, 0.6),
                       std=(0.2, 0.25, 0.3))
    images = torch.randint(0, 256, (16, 3, 24, 20), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    draws = aug.draw(images.shape, torch.Generator().manual_seed(2), torch.device("cpu"))
    packed = augment.send(draws, torch.device("cpu"), pack=True)
    assert packed.theta.data_ptr() != draws.theta.data_ptr()  # one buffer's views, not the originals
    in_place = aug.apply(images.float(), draws)
    assert torch.equal(aug.apply(images.float(), packed), in_place)
    assert torch.equal(aug.per_image(images, torch.Generator().manual_seed(2)), in_place)  # the CPU path's images


def test_the_cpu_path_sends_nothing_and_keeps_its_draws():
    draws = BatchAugment(crop=True, random_erasing=1.0).draw((4, 1, 8, 8), torch.Generator(), torch.device("cpu"))
    assert augment.send(draws, torch.device("cpu")) is draws
    assert draws.erase.noise is not None  # drawn from the host generator, as the CPU path always drew it


def test_an_image_folder_dataset_loads_through_forkserver_workers(tmp_path):
    image_folder(tmp_path, (12, 10), (40, 80, 120))
    cfg = validate(roadmap.compose("gelu", "data=imagefolder", f"data.root={tmp_path}", "data.num_classes=2",
                                   "data.image_size=32")).data
    train, _ = folder_datasets(cfg, (0.5, 1.0))
    loader = torch.utils.data.DataLoader(train, 2, num_workers=1, multiprocessing_context="forkserver")
    images, labels = next(iter(loader))  # the dataset pickled into a worker that forkserver started
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.uint8 and sorted(labels.tolist()) == [0, 1]


# ----------------------------------------------------------------------------- ranks and devices


SRUN_TASK = {"SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "16", "SLURM_PROCID": "11",
             "SLURM_LOCALID": "3", "SLURM_STEP_NUM_NODES": "2", "SLURM_STEP_NODELIST": "gpu[07-08]"}


def test_a_task_of_plain_srun_gets_its_rank_world_and_the_jobs_first_node():
    env = machine.srun_ranks(SRUN_TASK)
    assert {k: env[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR")} == {
        "RANK": "11", "WORLD_SIZE": "16", "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "8", "MASTER_ADDR": "gpu07"}
    assert env["MASTER_PORT"] == machine.srun_ranks({**SRUN_TASK, "SLURM_PROCID": "0"})["MASTER_PORT"]  # all agree
    assert machine.srun_ranks({**SRUN_TASK, "SLURM_STEP_NUM_TASKS": "8"})["WORLD_SIZE"] == "8"  # the step's tasks


@pytest.mark.parametrize("env", [
    {k: v for k, v in SRUN_TASK.items() if k != "SLURM_STEP_ID"},  # the batch script: its tasks are not started
    {**SRUN_TASK, "SLURM_NTASKS": "1"},  # one task
    {**SRUN_TASK, "WORLD_SIZE": "16"},  # torchrun, or submitit, set the ranks already
    {},  # no SLURM
], ids=["batch_script", "one_task", "torchrun", "no_slurm"])
def test_slurm_ranks_are_taken_only_inside_an_srun_step_with_several_tasks(env):
    assert machine.srun_ranks(env) is None


def test_plain_srun_exports_torchruns_variables_and_only_task_0_is_main(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(key, "")  # remembered, so that what the export sets is undone after the test
        monkeypatch.delenv(key)
    for key, value in SRUN_TASK.items():
        monkeypatch.setenv(key, value)
    assert not machine.is_main_process()  # task 11 says nothing, before any process group exists
    machine.export_srun_environment()
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("11", "16", "3")


@pytest.mark.parametrize("visible, expected", [(8, 3), (1, 0), (4, 3), (2, 1)])
def test_the_gpu_is_the_local_rank_among_the_gpus_the_task_sees(monkeypatch, visible, expected):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    assert machine.device_index(3) == expected  # one GPU bound per task: every task's GPU 0


def test_neighbouring_ranks_never_share_a_random_stream_and_rank_0_keeps_its_own():
    streams = [s for rank in range(64) for s in epoch_streams(7, 2, rank)]
    assert len(set(streams)) == len(streams)
    seed = 7 * 1_000_003 + 2 * 1_009  # what a single process has always drawn from
    assert epoch_streams(7, 2, 0) == (seed, seed + 1)


# ----------------------------------------------------------------------------- divergence under DDP


DRIVER = """
import os, sys, torch
import roadmap.engine as engine
if os.environ["RANK"] == "1":  # this rank alone sees a NaN loss at its third step
    real, calls = engine.F.cross_entropy, [0]
    def cross_entropy(*args, **kwargs):
        calls[0] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls[0] == 3 else loss
    engine.F.cross_entropy = cross_entropy
from roadmap.train import main
sys.argv = ["roadmap.train", *sys.argv[1:]]
main()
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two processes, as the other DDP tests
def test_a_nan_that_one_rank_alone_sees_ends_the_run_diverged_on_both_ranks_at_once(tmp_path):
    port = free_port()
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen(
            [sys.executable, "-c", DRIVER, "+step=resnet", "+experiment=smoke", "recipe.epochs=1",
             "data.train_limit=256", "data.test_limit=64", "train.device=cpu", "train.threads=1",
             "train.progress=false", f"hydra.run.dir={tmp_path}"],
            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        outs = [p.communicate(timeout=150) for p in procs]
        ended = time.monotonic()
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [3, 3], [err[-2000:] for _, err in outs]
    s = rundir.read_summary(tmp_path)
    assert (s.status, s.diverged_epoch, s.world_size) == ("diverged", 1, 2)
    assert ended - (tmp_path / rundir.SUMMARY).stat().st_mtime < 10  # both left as the summary was written


# ----------------------------------------------------------------------------- the lock


def refuse_flock(monkeypatch, code):
    def flock(f, op):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(rundir.fcntl, "flock", flock)


@pytest.mark.parametrize("code", [errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP])
def test_a_filesystem_that_cannot_lock_is_named_with_the_fix_not_taken_for_a_held_lock(tmp_path, monkeypatch, code):
    refuse_flock(monkeypatch, code)
    with pytest.raises(rundir.CannotLock) as refused:
        rundir.claim(tmp_path / "gelu" / "seed0")
    line = str(refused.value)
    assert "\n" not in line and f"({rundir.filesystem(tmp_path)})" in line and errno.errorcode[code] in line
    assert "sweep.lock=none" in line and "sweep.lock=/" in line
    assert rundir.holder(tmp_path / "gelu" / "seed0") is None


def test_a_lock_another_process_holds_is_still_held(tmp_path, monkeypatch):
    refuse_flock(monkeypatch, errno.EWOULDBLOCK)
    assert rundir.claim(tmp_path) is None


def test_a_sweep_on_a_filesystem_that_cannot_lock_stops_with_one_line_before_training(tmp_path, monkeypatch, capsys):
    from roadmap import sweep

    refuse_flock(monkeypatch, errno.ENOSYS)
    with pytest.raises(SystemExit) as done:
        sweep.main(["+step=gelu", "+experiment=smoke", f"hydra.sweep.dir={tmp_path}"])
    err = capsys.readouterr()
    assert done.value.code == 2 and "skipped" not in err.out + err.err
    lines = err.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the filesystem of ") and "sweep.lock=none" in lines[0]
    assert not (tmp_path / "gelu").exists()


def test_a_job_whose_lock_the_filesystem_refuses_fails_with_the_line_and_never_says_skipped(tmp_path, monkeypatch,
                                                                                          capsys):
    from roadmap.sweep import run_job

    refuse_flock(monkeypatch, errno.ENOLCK)
    code = run_job(roadmap.compose("gelu", "+experiment=smoke"), tmp_path / "gelu" / "seed0", tmp_path)
    err = capsys.readouterr()
    assert code == 2 and "skipped" not in err.out and err.err.startswith("error: the filesystem of ")
    assert not (tmp_path / "gelu" / "seed0").exists()


def test_sweep_lock_none_takes_no_lock_and_a_lock_directory_holds_one_file_per_run(tmp_path):
    run = tmp_path / "study" / "gelu" / "seed0"
    nothing = rundir.claim(run, "none")
    nothing.close()
    assert not (run / rundir.LOCK).exists() and rundir.holder(run, "none") is None
    locks = tmp_path / "locks"
    first = rundir.claim(run, str(locks))
    try:
        assert rundir.claim(run, str(locks)) is None and len(list(locks.iterdir())) == 1
        assert rundir.holder(run, str(locks)).startswith(f"pid {os.getpid()} on ")
        assert not (run / rundir.LOCK).exists()
    finally:
        first.close()


def test_sweep_lock_is_run_none_or_an_absolute_directory():
    assert roadmap.compose("gelu").sweep.lock == "run"
    with pytest.raises(ConfigError, match="sweep.lock=nnoe is not valid"):
        roadmap.compose("gelu", "sweep.lock=nnoe")


# ----------------------------------------------------------------------------- CUDA switches, bench, SLURM


@pytest.mark.parametrize("tf32", [True, False])
def test_cuda_runs_autotune_convolutions_and_use_tf32_as_train_tf32_says(tf32):
    saved = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        machine.tune_cuda(tf32)
        assert torch.backends.cudnn.benchmark
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (tf32, tf32)
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_benchs_cuda_peak_is_the_step_on_top_of_what_it_began_with_not_the_other_networks(monkeypatch):
    held = {"now": 6 << 30, "peak": 9 << 30}  # earlier networks hold 6 GiB; an earlier peak reached 9

    def allocate(nbytes):
        held["now"] += nbytes
        held["peak"] = max(held["peak"], held["now"])

    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: held["now"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: held["peak"])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: held.update(peak=held["now"]))

    def step():  # 300 MiB of activations, freed, then 100 MiB of gradients kept
        allocate(300 << 20)
        allocate(-(300 << 20))
        allocate(100 << 20)

    assert bench.cuda_step_growth(step, torch.device("cuda")) == 300 << 20


def test_the_slurm_preset_asks_per_gpu_resources_and_a_timeout_that_requeues(tmp_path, monkeypatch):
    import submitit
    from hydra import compose, initialize_config_dir
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    from roadmap.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["+step=gelu", "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=8",
                                           f"hydra.sweep.dir={tmp_path}"], return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["timeout_min"] <= 24 * 60 and launcher["max_num_timeout"] >= 5
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit looks for srun before it writes
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    executor = submitit.AutoExecutor(cluster="slurm", folder=tmp_path, slurm_max_num_timeout=12)
    base = set(OmegaConf.structured(BaseQueueConf).keys())  # as the launcher plugin passes them on
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in launcher.items()
                                  if k not in ("_target_", "submitit_folder", "max_num_timeout")})
    script = executor._executor._make_submission_file_text("python -m roadmap.sweep", "uid")
    for line in ("--mem-per-gpu=40G", "--cpus-per-task=10", "--gpus-per-node=8", "--ntasks-per-node=8",
                 f"--time={launcher['timeout_min']}"):
        assert f"#SBATCH {line}\n" in script
    assert "#SBATCH --mem=" not in script  # no per-node total that 8 GPUs' tasks would outgrow
