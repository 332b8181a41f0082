"""The training engine: real data, the paper's recipes, run directories that survive kills."""

import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import roadmap
from roadmap.train import run_one
from tests.conftest import one_line_error

SMOKE = ("+experiment=smoke",)


def cli(*args, env=None, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "roadmap.train", *args], capture_output=True, text=True, env=env, cwd=cwd
    )


def summary(path):
    return json.loads((Path(path) / "summary.json").read_text())


def train_inprocess(run_dir, step, *overrides):
    return run_one(roadmap.compose(step, *SMOKE, *overrides), Path(run_dir))


@pytest.mark.slow
def test_a_smoke_run_writes_the_whole_run_directory(tmp_path):
    out = cli("+step=separate_downsampling", *SMOKE, f"hydra.run.dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    assert {"config.yaml", "metrics.jsonl", "summary.json", "checkpoint.pt"} <= {p.name for p in tmp_path.iterdir()}
    cfg = (tmp_path / "config.yaml").read_text()
    assert "${" not in cfg and "separate_downsampling" in cfg  # resolved
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert {"train_loss", "lr", "top1", "top5", "images_per_s", "data_share", "seconds"} <= set(lines[0])
    s = summary(tmp_path)
    expected = roadmap.complexity(roadmap.compose("separate_downsampling"))
    assert s["status"] == "completed" and s["resolution"] == 32
    assert (s["params"], s["gmacs"]) == (expected.params, expected.gmacs)
    for key in ("top1", "top5", "best_top1", "best_top5", "gmacs", "images_per_s", "peak_memory_mb",
                "wall_time_s", "seed", "code_version", "versions", "data_share"):
        assert s[key] is not None, key
    assert s["top1"] > 10  # better than chance on 10 classes, even after 16 steps
    assert "completed: top-1" in out.stdout


@pytest.mark.slow
def test_a_finished_run_is_never_retrained_or_overwritten(tmp_path):
    assert train_inprocess(tmp_path, "gelu") == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    out = cli("+step=gelu", *SMOKE, f"hydra.run.dir={tmp_path}")
    assert out.returncode == 0 and "nothing to do" in out.stdout
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


@pytest.mark.slow
def test_another_config_in_the_same_run_directory_is_refused(tmp_path):
    assert train_inprocess(tmp_path, "gelu") == 0
    out = cli("+step=gelu", *SMOKE, "model.kernel_size=5", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"error: {tmp_path} holds a run of another config (model.kernel_size: 7 -> 5): "
        "choose another hydra.run.dir, or delete it to retrain"
    ]


@pytest.mark.slow
def test_killed_mid_epoch_and_resumed_ends_exactly_as_an_uninterrupted_run(tmp_path):
    args = ["+step=layer_norm", *SMOKE, "data.train_limit=6144", "recipe.epochs=3", "recipe.batch_size=128"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert cli(*args, f"hydra.run.dir={whole}").returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "roadmap.train", *args, f"hydra.run.dir={killed}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 1):
        time.sleep(0.05)
    time.sleep(0.5)  # into the second epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert summary(killed)["status"] == "running"  # really killed mid-run
    out = cli(*args, f"hydra.run.dir={killed}")
    assert out.returncode == 0, out.stderr
    a, b = summary(whole), summary(killed)
    assert (a["top1"], a["top5"], a["best_top1"]) == (b["top1"], b["top5"], b["best_top1"])
    la = [json.loads(x) for x in (whole / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [(r["train_loss"], r["top1"]) for r in la] == [(r["train_loss"], r["top1"]) for r in lb]
    wa = torch.load(whole / "checkpoint.pt", weights_only=False)["model"]
    wb = torch.load(killed / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_nan_loss_stops_the_run_as_diverged_with_its_epoch(tmp_path):
    out = cli("+step=separate_downsampling", *SMOKE, "recipe.lr=1e12", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 3
    assert "diverged in epoch 1" in out.stderr and "Traceback" not in out.stderr
    s = summary(tmp_path)
    assert s["status"] == "diverged" and s["diverged_epoch"] == 1


@pytest.mark.slow
def test_two_processes_train_one_model_in_step_with_ddp_on_gloo(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "roadmap.train",
         "+step=fewer_norms", *SMOKE, "train.device=cpu", "train.threads=1", f"hydra.run.dir={tmp_path}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both workers
    assert proc.returncode == 0, stderr[-2000:]
    out = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    s = summary(tmp_path)
    assert s["status"] == "completed" and s["world_size"] == 2
    assert s["ddp_in_sync"] is True  # both processes hold the same weights after training
    assert out.stdout.count("completed: top-1") == 1  # only rank 0 reports and writes


@pytest.mark.slow
def test_wandb_logs_offline_without_network(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env.pop("WANDB_API_KEY", None)
    out = cli("+step=gelu", *SMOKE, "logger=wandb", f"hydra.run.dir={tmp_path}", env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))


def test_gradient_accumulation_matches_the_whole_batch(tmp_path):
    # LayerNorm network, no stochastic depth: micro-batches add up to the same gradient
    common = ("recipe.epochs=1", "data.train_limit=128", "model.drop_path_rate=0", "recipe.batch_size=64")
    assert train_inprocess(tmp_path / "whole", "separate_downsampling", *common) == 0
    assert train_inprocess(tmp_path / "accum", "separate_downsampling", *common, "recipe.device_batch=16") == 0
    wa = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=False)["model"]
    wb = torch.load(tmp_path / "accum" / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.slow
def test_a_corrupt_checkpoint_is_named_and_left_alone(tmp_path):
    assert train_inprocess(tmp_path, "gelu", "recipe.epochs=1") == 0
    (tmp_path / "summary.json").write_text(json.dumps({**summary(tmp_path), "status": "running"}))
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    out = cli("+step=gelu", *SMOKE, "recipe.epochs=1", f"hydra.run.dir={tmp_path}")
    one_line_error(out, "checkpoint.pt is unreadable", "delete it")
    assert (tmp_path / "checkpoint.pt").read_bytes() == b"not a checkpoint"


@pytest.mark.slow
@pytest.mark.parametrize("records_its_run, said", [
    (True, "belongs to another run (resnet seed 0"),  # today's checkpoints name their run
    (False, "does not fit this run"),  # an earlier version's: its shapes give it away
])
def test_a_checkpoint_of_another_network_is_refused(tmp_path, records_its_run, said):
    assert train_inprocess(tmp_path / "a", "gelu", "recipe.epochs=1") == 0
    assert train_inprocess(tmp_path / "b", "resnet", "recipe.epochs=1") == 0
    (tmp_path / "a" / "summary.json").write_text(json.dumps({**summary(tmp_path / "a"), "status": "running"}))
    checkpoint = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    if not records_its_run:
        del checkpoint["run"]
    torch.save(checkpoint, tmp_path / "a" / "checkpoint.pt")
    out = cli("+step=gelu", *SMOKE, "recipe.epochs=1", f"hydra.run.dir={tmp_path / 'a'}")
    one_line_error(out, said)


def test_a_missing_dataset_says_how_to_get_it(tmp_path):
    out = cli(
        "+step=gelu",
        *SMOKE,
        "data=cifar10",
        f"data.root={tmp_path}",
        "data.download=false",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    one_line_error(out, "CIFAR10 not found under", "cifar-10-batches-py")


def test_missing_fashion_mnist_points_to_make_data(tmp_path, monkeypatch):
    monkeypatch.setattr("roadmap.data.DEBIAN_FASHION_MNIST", tmp_path / "none")
    monkeypatch.chdir(tmp_path)  # no data/ here either
    from roadmap.data import DataError, load_fashion_mnist

    with pytest.raises(DataError, match=r"Fashion-MNIST not found .* no local copy: run `make data`"):
        load_fashion_mnist(None, download=False)


def test_an_unwritable_run_directory_is_refused_before_training(tmp_path):
    (tmp_path / "file").write_text("")
    out = cli("+step=gelu", *SMOKE, f"hydra.run.dir={tmp_path / 'file' / 'run'}")
    one_line_error(out, "cannot write to the run directory", "choose a writable hydra.run.dir")


def test_train_takes_one_step_and_points_to_the_sweep():
    one_line_error(cli("+step=all", *SMOKE), "train takes one step", "roadmap.sweep")
    one_line_error(cli(*SMOKE), "no step given")
    one_line_error(cli("+step=gelu", "recipe.epochs=0"), "recipe.epochs=0 is not valid")
    one_line_error(cli("+step=gelu", "recipe=adam"), "unknown recipe 'adam': choose one of classic, convnext")


TRAIN_STEPS = """
import sys, torch
from roadmap.machine import keep_freed_memory
print(keep_freed_memory() if sys.argv[1] == "keep" else None)
torch.set_num_threads(1)
torch.manual_seed(0)
import roadmap
from roadmap.config import validate
from roadmap.model import ConvNet
from roadmap.recipe import build_optimizer
run = validate(roadmap.compose("separate_downsampling"))
model = ConvNet(run.model).to(memory_format=torch.channels_last)
opt = build_optimizer(model, run.recipe)
for _ in range(3):
    x = torch.randn(256, 1, 32, 32).contiguous(memory_format=torch.channels_last)
    torch.nn.functional.cross_entropy(model(x), torch.randint(0, 10, (256,))).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
print(sum(p.double().sum().item() for p in model.parameters()).hex())
"""


def test_keeping_freed_memory_for_the_next_step_changes_no_number():
    kept, default = [subprocess.run([sys.executable, "-c", TRAIN_STEPS, how], capture_output=True, text=True,
                                    check=True).stdout.split() for how in ("keep", "default")]
    assert kept[0] == str(platform.libc_ver()[0] == "glibc")  # set where the C library is glibc (Linux)
    assert kept[1] == default[1] and kept[1].startswith("0x")  # the same weights, bit for bit
