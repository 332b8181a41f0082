"""Train and evaluate one step of the roadmap.

    python -m roadmap.train +step=separate_downsampling          # the default study
    python -m roadmap.train +step=resnet +experiment=smoke        # seconds
    python -m roadmap.train +step=gelu data=cifar10 recipe.epochs=30 seed=1
    torchrun --nproc_per_node=8 -m roadmap.train +step=gelu +experiment=imagenet_r50

The run directory (Hydra's output directory; `hydra.run.dir=...` moves it) gets the
resolved config, metrics.jsonl, summary.json and the last checkpoint. Running the same
command again resumes an interrupted run and leaves a finished one alone.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import resource
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from roadmap import rundir
from roadmap.augment import BatchAugment, prepare_eval
from roadmap.complexity import complexity
from roadmap.config import Device, RunConfig, validate
from roadmap.errors import ConfigError, RoadmapError
from roadmap.data import IN_MEMORY, batches, folder_datasets, load_in_memory
from roadmap.model import ConvNet, num_params
from roadmap.recipe import build_optimizer, build_scheduler


class Diverged(Exception):
    pass


# ----------------------------------------------------------------------------- machine


def setup_distributed(device_kind: Device) -> Tuple[int, int, int]:
    """(rank, world size, local rank), from torchrun's environment; (0, 1, 0) without it.
    The process group is set up once per process and serves every run it trains."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    if not dist.is_initialized():
        cuda = device_kind is not Device.cpu and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # before NCCL picks a device
        dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def is_main_process() -> bool:
    """Rank 0 of a distributed run (or the only process): the one that writes and reports."""
    return (dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))) == 0


def from_main_process(value):
    """Rank 0's `value`, on every rank (the value itself without a process group)."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def pick_device(kind: Device, local_rank: int) -> torch.device:
    if kind is Device.cuda or (kind is Device.auto and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("train.device=cuda but no CUDA device is visible: use train.device=cpu or auto")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def code_version() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def library_versions() -> Dict[str, str]:
    import hydra
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__, "hydra": hydra.__version__}


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """Every epoch's random streams derive from (seed, epoch, rank): a run resumed at an
    epoch boundary draws exactly what the uninterrupted run drew."""
    return (seed * 1_000_003 + epoch * 1_009 + rank) % (2**63)


# ----------------------------------------------------------------------------- data


class Data:
    """Training batches (uint8, then augmented on the device) and evaluation batches."""

    def __init__(self, run: RunConfig, device: torch.device, rank: int, world: int, per_rank_batch: int):
        d, r = run.data, run.recipe
        self.device, self.rank, self.world, self.batch = device, rank, world, per_rank_batch
        self.in_memory = d.source in IN_MEMORY
        if self.in_memory:
            self.train, self.test = load_in_memory(d, run.seed)
        else:
            self.train, self.test = folder_datasets(d, tuple(r.crop_scale), r.hflip, r.interpolation.value)
        self.mean, self.std = d.mean, d.std
        self.augment = BatchAugment(
            crop=self.in_memory,  # image folders are cropped and flipped in the workers
            crop_scale=r.crop_scale, hflip=r.hflip if self.in_memory else 0.0, interpolation=r.interpolation.value,
            randaugment=r.randaugment, randaugment_scale=r.regularization, random_erasing=r.scaled(r.random_erasing),
            mixup=r.scaled(r.mixup), cutmix=r.scaled(r.cutmix), num_classes=d.num_classes, mean=d.mean, std=d.std,
        )
        self.workers = d.workers
        self.global_batch = per_rank_batch * world

    def steps_per_epoch(self) -> int:
        return len(self.train) // self.global_batch

    def train_batches(self, epoch: int, seed: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        order = torch.Generator().manual_seed(epoch_seed(seed, epoch))  # the same on every rank
        if self.in_memory:
            yield from batches(self.train, self.batch, order, self.rank, self.world)
            return
        sampler = torch.utils.data.DistributedSampler(self.train, self.world, self.rank, shuffle=True, seed=seed, drop_last=True)
        sampler.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(
            self.train, self.batch, sampler=sampler, num_workers=self.workers, drop_last=True,
            pin_memory=self.device.type == "cuda", generator=torch.Generator().manual_seed(epoch_seed(seed, epoch, self.rank)),
            persistent_workers=False,
        )
        yield from loader

    def augmented_batches(self, epoch: int, seed: int, g: torch.Generator) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """Training batches on the device, augmented per image from `g`. (Inline: a producer
        thread running ahead cost 25% of training throughput on 2 CPU cores, by contention.
        On a GPU the augmentation kernels queue behind the training step anyway.)"""
        for images, labels in self.train_batches(epoch, seed):
            images = images.to(self.device, non_blocking=True)
            yield self.augment.per_image(images, g), labels.to(self.device, non_blocking=True)

    def test_batches(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """This rank's share of the test set, in order."""
        if self.in_memory:
            n = len(self.test)
            for b in range(self.rank * 1024, n, 1024 * self.world):
                yield self.test.images[b : b + 1024], self.test.labels[b : b + 1024]
            return
        shard = torch.utils.data.Subset(self.test, list(range(self.rank, len(self.test), self.world)))
        yield from torch.utils.data.DataLoader(shard, 256, num_workers=self.workers)


# ----------------------------------------------------------------------------- loggers


class WandbLogger:
    def __init__(self, run: RunConfig, cfg: DictConfig, run_dir: Path):
        try:
            import wandb
        except ImportError as e:
            raise ConfigError("logger=wandb needs the wandb package: pip install wandb (or drop logger=wandb)") from e
        mode = run.logger.mode
        if mode == "auto":
            mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
        self.wandb = wandb
        self.run = wandb.init(
            project=run.logger.project, entity=run.logger.entity, mode=mode, dir=str(run_dir),
            name=f"{run.step.name}-seed{run.seed}", group=run_dir.parent.parent.name,
            config=OmegaConf.to_container(cfg, resolve=True), resume="allow", id=_wandb_id(run_dir),
        )

    def log(self, metrics: Dict) -> None:
        self.run.log(metrics, step=metrics["epoch"])

    def finish(self, summary: Dict) -> None:
        for k, v in summary.items():
            if isinstance(v, (int, float, str)):
                self.run.summary[k] = v
        self.run.finish()


def _wandb_id(run_dir: Path) -> str:
    path = run_dir / "wandb_id"
    if not path.exists():
        import uuid

        rundir.atomic_write(path, uuid.uuid4().hex[:12].encode())
    return path.read_text().strip()


class NoLogger:
    def log(self, metrics: Dict) -> None:
        pass

    def finish(self, summary: Dict) -> None:
        pass


# ----------------------------------------------------------------------------- training


def build_ema(model: torch.nn.Module, decay: float) -> torch.nn.Module:
    """An exponential moving average of the weights and of the buffers (BatchNorm's running
    statistics), as timm's ModelEma keeps it: evaluating it needs both."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def evaluate(model: torch.nn.Module, data: Data, autocast, channels_last: bool) -> Dict[str, float]:
    model.eval()
    correct1 = correct5 = total = 0
    with torch.no_grad(), autocast():
        for images, labels in data.test_batches():
            x = prepare_eval(images.to(data.device, non_blocking=True), data.mean, data.std)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            labels = labels.to(data.device)
            top = model(x).float().topk(min(5, data.augment.num_classes), 1).indices
            correct1 += (top[:, 0] == labels).sum().item()
            correct5 += (top == labels[:, None]).any(1).sum().item()
            total += len(labels)
    if dist.is_initialized():
        t = torch.tensor([correct1, correct5, total], dtype=torch.float64, device=data.device if data.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        correct1, correct5, total = t.tolist()
    model.train()
    return {"top1": 100.0 * correct1 / max(total, 1), "top5": 100.0 * correct5 / max(total, 1)}


def _progress(iterable, total: int, desc: str, enabled: bool):
    if enabled and sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)
    return iterable


def train(cfg: DictConfig, run_dir: Path) -> Dict:
    """Train the run `cfg` describes in `run_dir`; returns its summary. Resumes from
    the run directory's checkpoint; returns a finished run's summary untouched."""
    run = validate(cfg)
    run_dir = Path(run_dir)
    rank, world, local_rank = setup_distributed(run.train.device)
    main = rank == 0
    summary = rundir.read_summary(run_dir)
    if summary and summary.get("status") in rundir.FINISHED:
        rundir.check_config(run_dir, cfg)
        return summary
    if main:
        rundir.check_writable(run_dir)
    has_config = rundir.check_config(run_dir, cfg)
    if run.train.threads:
        torch.set_num_threads(run.train.threads)
    device = pick_device(run.train.device, local_rank)
    cuda = device.type == "cuda"

    recipe = run.recipe
    per_rank, accum, micro = recipe.split(world)

    data = Data(run, device, rank, world, per_rank)
    steps_per_epoch = data.steps_per_epoch()
    if steps_per_epoch == 0:
        raise ConfigError(
            f"recipe.batch_size={recipe.batch_size} is larger than the {len(data.train)} training images: use a smaller batch"
        )
    if main and not has_config:  # the data is there: the run starts
        rundir.atomic_write(run_dir / rundir.CONFIG, OmegaConf.to_yaml(cfg, resolve=True).encode())

    torch.manual_seed(epoch_seed(run.seed, -1))
    model = ConvNet(run.model).to(device)
    if run.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, recipe)
    scheduler = build_scheduler(optimizer, recipe, steps_per_epoch)
    ema = build_ema(model, recipe.ema_decay) if recipe.ema else None

    start_epoch, history = 0, []
    ckpt_path = run_dir / rundir.CHECKPOINT
    if ckpt_path.exists():
        state = rundir.load_checkpoint(ckpt_path)
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if ema is not None:
                ema.load_state_dict(state["ema"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise rundir.RunDirError(
                f"checkpoint {ckpt_path} does not fit this run ({type(e).__name__}: {str(e).splitlines()[0][:120]}): "
                "delete it to train this run from the start"
            ) from e
        start_epoch, history = state["epoch"], state["history"]

    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if cuda else None)
    if run.train.compile:
        net = torch.compile(net)

    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if (cuda and run.train.bf16) else contextlib.nullcontext
    cost = complexity(run.model, run.data.image_size)
    logger = (WandbLogger(run, cfg, run_dir) if run.logger.kind == "wandb" else NoLogger()) if main else NoLogger()
    base = {
        "step": run.step.name, "change": run.step.change, "regime": run.regime.name, "data": run.data.name, "recipe": recipe.name, "seed": run.seed,
        "params": cost.params, "gmacs": cost.gmacs, "resolution": cost.resolution, "epochs": recipe.epochs,
        "world_size": world, "device": str(device), "code_version": code_version(), "versions": library_versions(),
    }
    started = time.time() - sum(h["seconds"] for h in history)

    def write_summary(status: str, **extra) -> Dict:
        best = max(history, key=lambda h: h["test_top1"]) if history else {}
        last = history[-1] if history else {}
        trained = [h for h in history if h.get("images_per_s")]
        summary = {
            **base, "status": status, "epochs_done": len(history),
            "final_top1": last.get("test_top1"), "final_top5": last.get("test_top5"),
            "best_top1": best.get("test_top1"), "best_top5": best.get("test_top5"),
            "train_images_per_s": sum(h["images_per_s"] for h in trained) / len(trained) if trained else None,
            "data_share": sum(h["data_share"] for h in trained) / len(trained) if trained else None,
            "peak_memory_mb": peak_memory_mb(device), "wall_time_s": time.time() - started, **extra,
        }
        if main:
            rundir.write_json(run_dir / rundir.SUMMARY, summary)
        return summary

    if main:
        rundir.write_lines(run_dir / rundir.METRICS, history)  # drop lines of an epoch the checkpoint lacks
        write_summary("running")
        print(f"[{run.step.name} seed{run.seed}] {cost.mparams:.2f} M params, {cost.gmacs:.4g} GMACs at {cost.resolution}px, "
              f"{recipe.name} recipe, {recipe.epochs} epochs of {steps_per_epoch} steps, {device} x{world} -> {run_dir}", flush=True)

    model.train()
    for epoch in range(start_epoch, recipe.epochs):
        torch.manual_seed(epoch_seed(run.seed, epoch, rank))  # stochastic depth, MixUp/CutMix
        aug_rng = torch.Generator().manual_seed(epoch_seed(run.seed, epoch, rank) + 1)
        t0 = time.perf_counter()
        data_time = loss_sum = 0.0
        seen = 0
        t_data = time.perf_counter()
        for x, labels in _progress(data.augmented_batches(epoch, run.seed, aug_rng), steps_per_epoch, f"epoch {epoch + 1}/{recipe.epochs}", main and run.train.progress):
            x, target = data.augment.mix_batch(x, labels)
            if run.train.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            data_time += time.perf_counter() - t_data
            step_loss = 0.0
            for i in range(accum):
                sl = slice(i * micro, (i + 1) * micro)
                sync = contextlib.nullcontext() if (i == accum - 1 or world == 1) else net.no_sync()
                with sync, autocast():
                    loss = F.cross_entropy(net(x[sl]).float(), target[sl], label_smoothing=recipe.scaled(recipe.label_smoothing))
                    (loss / accum).backward()
                step_loss += loss.item() / accum
            if not math.isfinite(step_loss):
                if main:
                    print(f"[{run.step.name} seed{run.seed}] diverged in epoch {epoch + 1}: loss {step_loss}", flush=True)
                summary = write_summary("diverged", diverged_epoch=epoch + 1, diverged_loss=str(step_loss))
                logger.finish(summary)
                return summary
            if recipe.clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.clip_grad)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            loss_sum += step_loss
            seen += len(labels) * world
            t_data = time.perf_counter()
        seconds = time.perf_counter() - t0
        # the bare model: DDP's forward would sync buffers across ranks, whose test shards differ in length
        metrics = evaluate(ema.module if ema is not None else model, data, autocast, run.train.channels_last)
        record = {
            "epoch": epoch + 1, "train_loss": loss_sum / max(steps_per_epoch, 1), "lr": optimizer.param_groups[0]["lr"],
            "test_top1": metrics["top1"], "test_top5": metrics["top5"],
            "images_per_s": seen / seconds, "data_share": data_time / seconds, "seconds": time.perf_counter() - t0,
        }
        history.append(record)
        if main:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "epoch": epoch + 1, "history": history}
            if ema is not None:
                state["ema"] = ema.state_dict()
            rundir.save_checkpoint(ckpt_path, state)
            rundir.write_lines(run_dir / rundir.METRICS, history)
            write_summary("running")
            logger.log(record)
            print(f"[{run.step.name} seed{run.seed}] epoch {epoch + 1}/{recipe.epochs}: loss {record['train_loss']:.4f}, "
                  f"top-1 {record['test_top1']:.2f}%, top-5 {record['test_top5']:.2f}%, {record['images_per_s']:.0f} img/s, "
                  f"data {100 * record['data_share']:.1f}%, {record['seconds']:.1f}s", flush=True)

    extra = {}
    if world > 1:
        extra["ddp_in_sync"] = in_sync(model)
    summary = write_summary("completed", **extra)
    logger.finish(summary)
    return summary


def in_sync(model: torch.nn.Module) -> bool:
    """Whether every process holds the same weights (DDP keeps them so)."""
    vec = torch.cat([p.detach().float().flatten() for p in model.parameters()])  # on the model's device: NCCL needs CUDA, gloo takes either
    gathered: List[torch.Tensor] = [torch.empty_like(vec) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, vec)
    return all(torch.equal(g, vec) for g in gathered)


# ----------------------------------------------------------------------------- command line


def run_one(cfg: DictConfig, run_dir: Path, stop_on_interrupt: bool = False) -> int:
    """Train, turning every expected failure into one line (said by rank 0) and an exit
    code. Ctrl-C ends the run with 130, or, `stop_on_interrupt`, goes on up (a sweep stops)."""
    say = is_main_process()
    try:
        summary_before = rundir.read_summary(run_dir)
        summary = train(cfg, run_dir)
    except RoadmapError as e:
        if say:
            print(f"error: {e}", file=sys.stderr)
            rundir.remove_if_unused(run_dir)
        return 2
    except KeyboardInterrupt:
        if stop_on_interrupt:
            raise
        if say:
            print(f"interrupted: run the same command again to resume from {run_dir / rundir.CHECKPOINT}", file=sys.stderr)
        return 130
    except Exception as e:  # a crash inside training: record it, say where the traceback is
        if say:
            record_failure(run_dir, e)
            print(f"error: the run failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                  f"traceback in {Path(run_dir) / rundir.ERROR}", file=sys.stderr)
        return 1
    if summary_before and summary_before.get("status") in rundir.FINISHED:
        if say:
            print(f"{run_dir} already holds a {summary['status']} run (top-1 {summary.get('final_top1')}): nothing to do. "
                  "Choose another hydra.run.dir to train it again.")
        return 0
    if summary["status"] == "diverged":
        if say:
            print(f"error: the run diverged in epoch {summary['diverged_epoch']} (loss {summary['diverged_loss']}); "
                  f"{run_dir / rundir.SUMMARY} records it", file=sys.stderr)
        return 3
    if say:
        print(f"[{summary['step']} seed{summary['seed']}] completed: top-1 {summary['final_top1']:.2f}% "
              f"(best {summary['best_top1']:.2f}%), {summary['train_images_per_s']:.0f} img/s, "
              f"data {100 * summary['data_share']:.1f}% of step time, {summary['wall_time_s']:.0f}s -> {run_dir}")
    return 0


def record_failure(run_dir: Path, error: Exception) -> None:
    """A crashed run: its traceback in error.txt, status `failed` in summary.json."""
    if not Path(run_dir).is_dir():
        return
    rundir.atomic_write(Path(run_dir) / rundir.ERROR, traceback.format_exc().encode())
    try:
        prev = rundir.read_summary(run_dir) or {}
    except rundir.RunDirError:
        prev = {}
    rundir.write_json(Path(run_dir) / rundir.SUMMARY, {**prev, "status": "failed", "error": f"{type(error).__name__}: {error}"})


def main() -> None:
    from roadmap.cli import hydra_main

    try:
        hydra_main(run_one, task="train")
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    main()
