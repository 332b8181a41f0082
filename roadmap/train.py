"""Train and evaluate one step of the roadmap.

    python -m roadmap.train +step=separate_downsampling          # the default study
    python -m roadmap.train +step=resnet +experiment=smoke        # seconds
    python -m roadmap.train +step=gelu data=cifar10 recipe.epochs=30 seed=1
    torchrun --nproc_per_node=8 -m roadmap.train +step=gelu +experiment=imagenet_r50
    srun --ntasks-per-node=8 --gpus-per-node=8 python -m roadmap.train +step=gelu +experiment=imagenet_r50

The run directory (Hydra's output directory; `hydra.run.dir=...` moves it) gets the
resolved config, metrics.jsonl, summary.json and the last checkpoint. Running the same
command again resumes an interrupted run and leaves a finished one alone.
"""

from __future__ import annotations

import dataclasses
import errno
import sys
import time
import traceback
from pathlib import Path
from typing import Any, List, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from roadmap import rundir
from roadmap.complexity import complexity
from roadmap.config import RunConfig, validate
from roadmap.data import Data
from roadmap.engine import Diverged, TrainState, build_state, evaluate, train_one_epoch
from roadmap.errors import ConfigError, RoadmapError
from roadmap.loggers import LOGGERS, NoLogger
from roadmap.machine import (
    Machine,
    code_version,
    export_srun_environment,
    in_sync,
    is_main_process,
    library_versions,
    peak_memory_mb,
    setup,
    shutdown_distributed,
)
from roadmap.rundir import EpochRecord, RunSummary, Status

# ----------------------------------------------------------------------------- the run, phase by phase


def train(cfg: DictConfig, run_dir: Path) -> RunSummary:
    """Train the run `cfg` describes in `run_dir`; its summary. Resumes from the run
    directory's checkpoint; returns a finished run's summary untouched."""
    finished = finished_run(Path(run_dir), cfg)
    return finished if finished is not None else _train(cfg, Path(run_dir))


def _train(cfg: DictConfig, run_dir: Path) -> RunSummary:
    """train() for a run that has not finished: from the start, or from its checkpoint."""
    run = validate(cfg)
    machine = setup(run.train.device, run.train.threads, run.train.tf32)
    check_run_dir(run_dir, cfg, machine)
    data = build_data(run, machine)
    log = RunLog(run_dir, cfg, run, machine, data.steps_per_epoch())
    state = build_state(run, machine, data.steps_per_epoch())
    log.resume(state)
    for epoch in range(len(log.history), run.recipe.epochs):
        started = time.perf_counter()
        try:
            stats = train_one_epoch(state, data, run, epoch, machine.main and run.train.progress)
        except Diverged as d:
            return log.finish(Status.diverged, diverged_epoch=d.epoch, diverged_loss=str(d.loss))
        top1, top5 = evaluate(state.eval_model, data, state.forward_format, run.train.channels_last)
        log.epoch(EpochRecord(epoch + 1, stats.train_loss, stats.lr, top1, top5, stats.images_per_s, stats.data_share,
                              time.perf_counter() - started), state)
    return log.finish(Status.completed, ddp_in_sync=in_sync(state.model) if machine.world > 1 else None)


def finished_run(run_dir: Path, cfg: DictConfig) -> Optional[RunSummary]:
    """The summary of a run already completed or diverged here (with this config), or None."""
    summary = rundir.read_summary(run_dir)
    if summary is None or not summary.status.finished:
        return None
    rundir.check_config(run_dir, cfg)
    return summary


def check_run_dir(run_dir: Path, cfg: DictConfig, machine: Machine) -> None:
    """The run directory can be written, and holds no run of another config."""
    if machine.main:
        rundir.check_writable(run_dir)
    rundir.check_config(run_dir, cfg)


def build_data(run: RunConfig, machine: Machine) -> Data:
    per_rank, _, _ = run.recipe.split(machine.world)
    data = Data(run.data, run.recipe, run.seed, machine, per_rank)
    if data.steps_per_epoch() == 0:
        raise ConfigError(
            f"recipe.batch_size={run.recipe.batch_size} is larger than the {len(data.train)} training images: "
            "use a smaller batch"
        )
    return data


# ----------------------------------------------------------------------------- the run directory, as it goes


class RunLog:
    """Everything a run writes and says, from rank 0: config.yaml when it starts (its data
    is there), then after every epoch the checkpoint, metrics.jsonl, summary.json, the
    logger and a line; at the end the final summary."""

    def __init__(self, run_dir: Path, cfg: DictConfig, run: RunConfig, machine: Machine, steps_per_epoch: int):
        self.run_dir, self.run, self.machine, self.steps = run_dir, run, machine, steps_per_epoch
        self.history: List[EpochRecord] = []
        self.identity = rundir.identity_of(cfg)  # what the checkpoint belongs to
        self.started = time.time()
        self.main = machine.main
        if self.main and not (run_dir / rundir.CONFIG).exists():
            rundir.atomic_write(run_dir / rundir.CONFIG, OmegaConf.to_yaml(cfg, resolve=True).encode())
        self.logger = LOGGERS[run.logger.kind](run, cfg, run_dir) if self.main else NoLogger()
        cost = complexity(run.model, run.data.image_size)
        self.base = RunSummary(
            status=Status.running, step=run.step.name, change=run.step.change, regime=run.regime.name,
            data=run.data.name, recipe=run.recipe.name, seed=run.seed, params=cost.params, gmacs=cost.gmacs,
            resolution=cost.resolution, epochs=run.recipe.epochs, world_size=machine.world, device=str(machine.device),
            threads=torch.get_num_threads(), code_version=code_version(), versions=library_versions(),
        )

    def resume(self, state: TrainState) -> None:
        """Load the checkpoint of an interrupted run, if any; write and say where it stands."""
        path = self.run_dir / rundir.CHECKPOINT
        if path.exists():
            checkpoint = rundir.load_checkpoint(path)
            mismatch = rundir.identity_mismatch(checkpoint.get("run"), self.identity)
            if mismatch:
                raise rundir.RunDirError(f"checkpoint {path} {mismatch}: move it back to its own run directory, "
                                         "or delete it to train this run from the start")
            try:
                state.load_state_dict(checkpoint)
            except (KeyError, RuntimeError, ValueError) as e:
                raise rundir.RunDirError(
                    f"checkpoint {path} does not fit this run ({type(e).__name__}: {str(e).splitlines()[0][:120]}): "
                    "delete it to train this run from the start") from e
            self.history = [EpochRecord.from_dict(h) for h in checkpoint["history"]]
        self.started -= sum(h.seconds for h in self.history)
        if self.main:
            rundir.write_metrics(self.run_dir, self.history)  # drops lines of an epoch the checkpoint lacks
            self.write(Status.running)
            b, r = self.base, self.run
            print(f"[{b.step} seed{b.seed}] {b.params / 1e6:.2f} M params, {b.gmacs:.4g} GMACs at {b.resolution}px, "
                  f"{r.recipe.name} recipe, {r.recipe.epochs} epochs of {self.steps} steps, {b.device} x{b.world_size} "
                  f"-> {self.run_dir}", flush=True)

    def epoch(self, record: EpochRecord, state: TrainState) -> None:
        self.history.append(record)
        if not self.main:
            return
        rundir.save_checkpoint(
            self.run_dir / rundir.CHECKPOINT,
            {**state.state_dict(), "epoch": record.epoch, "history": [dataclasses.asdict(h) for h in self.history],
             "run": self.identity},
        )
        rundir.write_metrics(self.run_dir, self.history)
        self.write(Status.running)
        self.logger.log(dataclasses.asdict(record))
        print(epoch_line(self.base.step, self.base.seed, self.run.recipe.epochs, record), flush=True)

    def finish(self, status: Status, **extra: Any) -> RunSummary:
        summary = self.write(status, **extra)
        if self.main:
            if status is Status.diverged:
                print(f"[{summary.step} seed{summary.seed}] diverged in epoch {summary.diverged_epoch}: "
                      f"loss {summary.diverged_loss}", flush=True)
            self.logger.finish(summary.to_dict())
        return summary

    def write(self, status: Status, **extra: Any) -> RunSummary:
        """The summary of the run so far (written by rank 0)."""
        h = self.history
        best = max(h, key=lambda e: e.top1) if h else None
        summary = dataclasses.replace(
            self.base,
            status=status,
            epochs_done=len(h),
            top1=h[-1].top1 if h else None,
            top5=h[-1].top5 if h else None,
            best_top1=best.top1 if best else None,
            best_top5=best.top5 if best else None,
            images_per_s=_mean([e.images_per_s for e in h]),
            data_share=_mean([e.data_share for e in h]),
            peak_memory_mb=peak_memory_mb(self.machine.device),
            wall_time_s=time.time() - self.started,
            **extra,
        )
        if self.main:
            rundir.write_summary(self.run_dir, summary)
        return summary


def epoch_line(step: str, seed: int, epochs: int, record: EpochRecord) -> str:
    """The line a run says after each epoch (and a sweep's display, for runs side by side)."""
    return (f"[{step} seed{seed}] epoch {record.epoch}/{epochs}: loss {record.train_loss:.4f}, "
            f"top-1 {record.top1:.2f}%, top-5 {record.top5:.2f}%, {record.images_per_s:.0f} img/s, "
            f"data {100 * record.data_share:.1f}%, {record.seconds:.1f}s")


def _mean(values: List[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None


# ----------------------------------------------------------------------------- command line

DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
"""A disk that cannot take the run's files: said in one line, the run kept for a rerun (not a crash)."""


def run_one(cfg: DictConfig, run_dir: Path, stop_on_interrupt: bool = False) -> int:
    """Train, turning every expected failure into one line (said by rank 0) and an exit
    code. Ctrl-C ends the run with 130, or, `stop_on_interrupt`, goes on up (a sweep stops)."""
    say = is_main_process()
    try:
        already = finished_run(Path(run_dir), cfg)
        summary = already or _train(cfg, Path(run_dir))
    except RoadmapError as e:
        if say:
            print(f"error: {e}", file=sys.stderr)
            rundir.remove_if_unused(run_dir)
        return 2
    except KeyboardInterrupt:
        if stop_on_interrupt:
            raise
        if say:
            print(
                f"interrupted: run the same command again to resume from {run_dir / rundir.CHECKPOINT}", file=sys.stderr
            )
        return 130
    except Exception as e:  # a crash inside training, or a full disk
        if say:
            if not out_of_room(e):
                record_failure(run_dir, e)  # a crash: error.txt and status `failed`
            print(failure(run_dir, e), file=sys.stderr)
        return 1
    failed = summary.status is Status.diverged and not already
    if say:
        print(outcome(summary, run_dir, already is not None), file=sys.stderr if failed else sys.stdout)
    return 3 if failed else 0


def outcome(summary: RunSummary, run_dir: Path, already: bool) -> str:
    """The line a finished run ends with."""
    if already:
        return (f"{run_dir} already holds a {summary.status} run (top-1 {summary.top1}): nothing to do. "
                "Choose another hydra.run.dir to train it again.")
    if summary.status is Status.diverged:
        return (f"error: the run diverged in epoch {summary.diverged_epoch} (loss {summary.diverged_loss}); "
                f"{run_dir / rundir.SUMMARY} records it")
    return (
        f"[{summary.step} seed{summary.seed}] completed: top-1 {summary.top1:.2f}% (best {summary.best_top1:.2f}%), "
        f"{summary.images_per_s:.0f} img/s, data {100 * summary.data_share:.1f}% of step time, "
        f"{summary.wall_time_s:.0f}s -> {run_dir}"
    )


def out_of_room(e: Exception) -> bool:
    """Whether `e` is a disk that cannot take the run's files (not a crash: the run resumes once there is room)."""
    return isinstance(e, OSError) and e.errno in DISK_ERRORS


def failure(run_dir: Path, e: Exception) -> str:
    """The line a failed run ends with: a crash names its traceback (error.txt, written by
    record_failure); a disk without room says how to resume."""
    if out_of_room(e):
        return (f"error: cannot write into {run_dir} ({e.strerror}): free space there, then run the same command "
                "again to resume from its last epoch")
    return (f"error: the run failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            f"traceback in {Path(run_dir) / rundir.ERROR}")


def record_failure(run_dir: Path, error: Exception) -> None:
    """A crashed run: its traceback in error.txt, status `failed` in summary.json."""
    if not Path(run_dir).is_dir():
        return
    rundir.atomic_write(Path(run_dir) / rundir.ERROR, traceback.format_exc().encode())
    try:
        before = rundir.read_summary(run_dir) or RunSummary(status=Status.failed)
    except rundir.RunDirError:
        before = RunSummary(status=Status.failed)
    rundir.write_summary(
        run_dir, dataclasses.replace(before, status=Status.failed, error=f"{type(error).__name__}: {error}")
    )


def main() -> None:
    from roadmap.cli import hydra_main

    export_srun_environment()  # under plain srun, before anything speaks: only rank 0 reports
    try:
        hydra_main(run_one, task="train")
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    main()
