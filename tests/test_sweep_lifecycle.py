"""A sweep's life from start to kill: nothing overwritten, nothing orphaned (issue 24).

Checkpoints know their run; a sweep's workers die with it; SIGTERM stops it as Ctrl-C does;
its run directories are checked before anything trains; keys that no schema declares are
refused; and runs side by side share one screen."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import roadmap
import roadmap.results as R
from analysis import checkpoints
from roadmap import progress, rundir
from roadmap.errors import ResultsError
from roadmap.rundir import EpochRecord, RunSummary
from roadmap.train import epoch_line, run_one
from tests.conftest import one_line_error

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ("+experiment=smoke", "recipe.epochs=1")
# Two runs side by side through Hydra's joblib launcher, whatever the machine's core count;
# epochs long enough to be stopped in flight
SIDE_BY_SIDE = ("+step=resnet,gelu", "+experiment=smoke", "data.train_limit=2048", "recipe.batch_size=128",
                "recipe.epochs=3", "train.threads=1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")


def cli(module, *args, **kw):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=600, **kw)


def files_of(run_dir):
    return {p.name: p.read_bytes() for p in Path(run_dir).iterdir() if p.name != rundir.LOCK}


# ----------------------------------------------------------------------------- 1. checkpoints know their run


def mixed_up(tmp_path):
    """gelu's checkpoint copied into an interrupted layer_norm run (a user's cp, a sync tool)."""
    gelu, layer_norm = tmp_path / "gelu" / "seed0", tmp_path / "layer_norm" / "seed0"
    assert run_one(roadmap.compose("gelu", *SMOKE), gelu) == 0
    assert run_one(roadmap.compose("layer_norm", *SMOKE), layer_norm) == 0
    summary = json.loads((layer_norm / rundir.SUMMARY).read_text())
    (layer_norm / rundir.SUMMARY).write_text(json.dumps({**summary, "status": "running"}))  # as if interrupted
    shutil.copy(gelu / rundir.CHECKPOINT, layer_norm / rundir.CHECKPOINT)
    return gelu, layer_norm


def test_a_checkpoint_of_another_run_is_refused_by_name_and_the_run_is_left_as_it_was(tmp_path):
    _, layer_norm = mixed_up(tmp_path)
    before = files_of(layer_norm)
    out = cli("roadmap.train", "+step=layer_norm", *SMOKE, f"hydra.run.dir={layer_norm}")
    one_line_error(out, "belongs to another run (gelu seed 0", "not to this one (layer_norm seed 0")
    assert files_of(layer_norm) == before


def test_the_checkpoint_records_step_seed_and_a_hash_that_only_numbers_change(tmp_path):
    run = tmp_path / "gelu" / "seed1"
    cfg = roadmap.compose("gelu", *SMOKE, "seed=1")
    assert run_one(cfg, run) == 0
    recorded = rundir.load_checkpoint(run / rundir.CHECKPOINT)["run"]
    assert recorded == rundir.identity_of(cfg)
    assert (recorded["step"], recorded["seed"]) == ("gelu", 1)
    assert rundir.identity_of(roadmap.compose("gelu", *SMOKE, "seed=1", "train.threads=3")) == recorded  # neutral
    assert rundir.identity_of(roadmap.compose("gelu", *SMOKE, "seed=1", "recipe.lr=0.001")) != recorded


def test_a_checkpoint_of_an_earlier_version_without_its_run_still_resumes(tmp_path):
    run = tmp_path / "gelu" / "seed0"
    cfg = roadmap.compose("gelu", "+experiment=smoke", "recipe.epochs=2")
    assert run_one(cfg, run) == 0
    checkpoint = rundir.load_checkpoint(run / rundir.CHECKPOINT)
    del checkpoint["run"]
    checkpoint["history"] = checkpoint["history"][:1]  # stopped after epoch 1
    rundir.save_checkpoint(run / rundir.CHECKPOINT, checkpoint)
    (run / rundir.SUMMARY).unlink()
    assert run_one(cfg, run) == 0
    assert rundir.read_summary(run).epochs_done == 2


def test_the_robustness_and_erf_tools_refuse_a_checkpoint_of_another_run(tmp_path):
    _, layer_norm = mixed_up(tmp_path)
    with pytest.raises(ResultsError, match="belongs to another run"):
        checkpoints.load_network(layer_norm)


# ----------------------------------------------------------------------------- 2. workers die with their sweep


def from_a_shell():
    """The sweep as a shell starts it: its own process group, SIGINT neither ignored nor blocked."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    os.setsid()


def start_sweep(study):
    """The side-by-side sweep, once both runs have a checkpoint (their first epoch done)."""
    proc = subprocess.Popen([sys.executable, "-m", "roadmap.sweep", *SIDE_BY_SIDE, f"hydra.sweep.dir={study}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            preexec_fn=from_a_shell)
    deadline = time.time() + 300
    while time.time() < deadline and not all(
            rundir.read_metrics(study / step / "seed0") for step in ("resnet", "gelu")):
        time.sleep(0.05)
    return proc


def group_alive(pgid, seconds):
    """Whether any process of the group is still alive after `seconds`."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        time.sleep(0.2)
    return True


@pytest.mark.slow
def test_kill_9_of_the_sweep_leaves_no_worker_alive_and_the_rerun_trains(tmp_path):
    proc = start_sweep(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)  # the sweep's main process only: what an OOM killer does
    proc.communicate(timeout=60)
    alive = group_alive(proc.pid, 10)
    if alive:
        os.killpg(proc.pid, signal.SIGKILL)
    assert not alive, "a worker of the killed sweep is still running"
    rerun = cli("roadmap.sweep", *SIDE_BY_SIDE, f"hydra.sweep.dir={tmp_path}")
    assert rerun.returncode == 0, rerun.stderr
    assert "being trained by another process" not in rerun.stdout
    assert list(R.load(tmp_path)["status"]) == ["completed"] * 2


@pytest.mark.slow
@pytest.mark.parametrize("sig, code, said", [
    (signal.SIGTERM, 143, "terminated (SIGTERM): the sweep stopped"),
    (signal.SIGINT, 130, "interrupted: the sweep stopped"),
])
def test_a_signal_to_the_sweeps_process_group_stops_it_cleanly_and_the_rerun_resumes(tmp_path, sig, code, said):
    proc = start_sweep(tmp_path)
    os.killpg(proc.pid, sig)  # as a terminal (Ctrl-C) or a scheduler (SIGTERM) sends it
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    assert stderr.strip().splitlines()[-1].startswith(said)
    assert "Traceback" not in stderr and "leaked" not in stderr and "Warning" not in stderr
    assert not group_alive(proc.pid, 10)
    for step in ("resnet", "gelu"):  # the runs in flight kept their last epoch
        assert rundir.load_checkpoint(tmp_path / step / "seed0" / rundir.CHECKPOINT)["history"]
    rerun = cli("roadmap.sweep", *SIDE_BY_SIDE, f"hydra.sweep.dir={tmp_path}")
    assert rerun.returncode == 0, rerun.stderr
    assert list(R.load(tmp_path)["status"]) == ["completed"] * 2


# ----------------------------------------------------------------------------- 3. run directories checked first


def test_a_run_directory_that_is_a_file_is_refused_before_any_run_trains(tmp_path):
    (tmp_path / "gelu").write_text("not a directory")
    out = cli("roadmap.sweep", "+step=resnet,gelu", *SMOKE, f"hydra.sweep.dir={tmp_path}")
    one_line_error(out, f"{tmp_path / 'gelu'} is a file")
    assert not (tmp_path / "resnet").exists()  # nothing trained


def test_a_dangling_symlink_for_a_run_directory_is_refused(tmp_path):
    (tmp_path / "gelu").symlink_to(tmp_path / "elsewhere")
    out = cli("roadmap.sweep", "+step=resnet,gelu", *SMOKE, f"hydra.sweep.dir={tmp_path}")
    one_line_error(out, "is a symlink to", "which does not exist")
    assert not (tmp_path / "resnet").exists()


@pytest.mark.slow
def test_a_symlinked_step_directory_is_followed_trained_and_counted(tmp_path):
    study, elsewhere = tmp_path / "study", tmp_path / "bigger_disk" / "gelu"
    elsewhere.mkdir(parents=True)
    study.mkdir()
    (study / "gelu").symlink_to(elsewhere)
    out = cli("roadmap.sweep", "+step=resnet,gelu", *SMOKE, f"hydra.sweep.dir={study}")
    assert out.returncode == 0, out.stderr
    assert (elsewhere / "seed0" / rundir.SUMMARY).exists()
    assert sorted(R.load(study)["step"]) == ["gelu", "resnet"]


# ----------------------------------------------------------------------------- 4. keys no schema declares


@pytest.mark.parametrize("module", ["roadmap.train", "roadmap.sweep"])
@pytest.mark.parametrize("key, schema", [("+recipe.lr_warmup=3", "RecipeConfig"), ("+lr=0.1", "RunConfig"),
                                         ("+model.kernel_sizes=3", "ModelConfig")])
def test_a_key_that_no_schema_declares_is_refused_in_one_line(tmp_path, module, key, schema):
    out = cli(module, "+step=resnet", *SMOKE, key, f"hydra.run.dir={tmp_path}/run", f"hydra.sweep.dir={tmp_path}")
    one_line_error(out, key.split("=")[0], schema)
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------- 5. one screen for runs side by side


def write_run(run_dir, status, epochs_done, epochs=3):
    run_dir.mkdir(parents=True, exist_ok=True)
    history = [EpochRecord(e, 1.0 / e, 0.1, 50.0 + e, 90.0, 100.0, 0.01, 2.0) for e in range(1, epochs_done + 1)]
    rundir.write_metrics(run_dir, history)
    top1 = history[-1].top1 if history else None
    rundir.write_summary(run_dir, RunSummary(status=status, step=run_dir.parent.name, seed=0, epochs=epochs,
                                             epochs_done=epochs_done, top1=top1, best_top1=top1, images_per_s=100.0,
                                             data_share=0.01, wall_time_s=6.0))
    return history


def test_the_display_says_each_epoch_once_counts_the_sweep_and_bars_only_runs_in_flight(tmp_path, capsys):
    done_before, a, b = tmp_path / "resnet" / "seed0", tmp_path / "gelu" / "seed0", tmp_path / "layer_norm" / "seed0"
    write_run(done_before, "completed", 3)  # an earlier session's: counted, not said again
    time.sleep(0.05)
    display = progress.Display([("resnet", 0, done_before, 3), ("gelu", 0, a, 3), ("layer_norm", 0, b, 3)], jobs=2)
    assert display.sweep.n == 3
    first = write_run(a, "running", 1)
    display.poll()
    display.poll()  # nothing new: nothing said twice
    history = write_run(a, "completed", 3)
    write_run(b, "running", 2)
    display.poll()
    flying = [w.step for w in display.runs if w.bar is not None]
    counted = display.sweep.n
    display.stop()
    said = capsys.readouterr().out.splitlines()
    epochs = [s for s in said if " epoch " in s and "training" not in s]
    assert epochs == [epoch_line("gelu", 0, 3, first[0])] + [epoch_line("gelu", 0, 3, r) for r in history[1:]] + [
        epoch_line("layer_norm", 0, 3, r) for r in rundir.read_metrics(b)]
    assert sum("gelu seed0] completed" in s for s in said) == 1 and not any("resnet" in s for s in said)
    assert flying == ["layer_norm"] and counted == 3 + 3 + 2


def test_the_display_is_drawn_only_for_runs_side_by_side_on_a_terminal():
    assert not progress.wanted(1)
    assert not progress.wanted(2)  # pytest captures the output: not a terminal


@pytest.mark.slow
def test_runs_side_by_side_piped_to_a_file_say_plain_lines_each_once(tmp_path):
    out = cli("roadmap.sweep", *SIDE_BY_SIDE, f"hydra.sweep.dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    assert "\r" not in out.stdout + out.stderr and "\x1b[" not in out.stdout + out.stderr  # no bar, no cursor codes
    for step in ("resnet", "gelu"):
        for epoch in (1, 2, 3):
            assert out.stdout.count(f"[{step} seed0] epoch {epoch}/3:") == 1


# ----------------------------------------------------------------------------- 6. a full disk


@pytest.mark.slow
def test_a_full_disk_is_said_in_one_line_and_a_rerun_with_nothing_to_write_succeeds(tmp_path):
    disk, study = tmp_path / "disk", tmp_path / "disk" / "study"
    disk.mkdir()
    sweep = f"{sys.executable} -m roadmap.sweep +experiment=smoke recipe.epochs=1 hydra.sweep.dir={study}"
    script = f"""mount -t tmpfs -o size=8m tmpfs {disk} || exit 1
{sweep} +step=resnet > /dev/null 2>&1 || exit 98
dd if=/dev/zero of={disk}/fill bs=64k 2> /dev/null
{sweep} +step=resnet > {tmp_path}/unchanged.out 2>&1; echo $? > {tmp_path}/unchanged.rc
{sweep} +step=gelu > {tmp_path}/new.out 2> {tmp_path}/new.err; echo $? > {tmp_path}/new.rc
"""
    # a small disk of its own: a tmpfs in a private mount namespace (a user namespace maps a non-root user to root)
    unshare = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-rm"]
    setup = subprocess.run([*unshare, "sh", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert setup.returncode == 0, setup.stderr
    assert (tmp_path / "unchanged.rc").read_text().strip() == "0"  # the tables need no write
    assert (tmp_path / "new.rc").read_text().strip() == "1"
    errors = (tmp_path / "new.err").read_text()
    assert "Traceback" not in errors
    assert any(s.startswith("error: ") and "No space left on device" in s and str(study) in s
               for s in errors.splitlines())


# ----------------------------------------------------------------------------- 7. a sweep too large to plan


def test_a_sweep_above_the_largest_plan_is_refused_before_composing_with_how_to_split_it(tmp_path):
    out = cli("roadmap.sweep", "+step=all", "recipe.lr=range(1,400)", "seed=range(0,3)", *SMOKE,
              f"hydra.sweep.dir={tmp_path}")
    one_line_error(out, "20,349 runs", "more than the 5,000", "one sweep per value of recipe.lr")
    assert not any(tmp_path.iterdir())
