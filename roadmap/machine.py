"""The machine a run trains on: its processes (DDP, from torchrun's or SLURM's variables),
its device and number format, and what a run's summary records about it (library
versions, code version, peak memory, the CPU's name). The trainer and the benchmark share these."""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import random
import re
import resource
import subprocess
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, List, Mapping, Optional, Tuple

import torch
import torch.distributed as dist

from roadmap.errors import Choice, ConfigError


class Device(Choice):
    auto = "auto"  # CUDA when there is a GPU, else the CPU
    cpu = "cpu"
    cuda = "cuda"


@dataclass(frozen=True)
class Machine:
    """This process's place in a run: its rank among `world` processes and its device."""

    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes the run directory and reports."""
        return self.rank == 0

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def setup(kind: Device, threads: int = 0, tf32: bool = True) -> Machine:
    """The processes (DDP under torchrun or srun), the device and the CPU threads of a run;
    on CUDA, cuDNN's autotuner, TF32 as `tf32` says, and a fresh peak-memory count."""
    rank, world, local_rank = setup_distributed(kind)
    if threads:
        torch.set_num_threads(threads)
    device = pick_device(kind, local_rank)
    if device.type == "cpu":
        keep_freed_memory()
    else:
        tune_cuda(tf32)
        torch.cuda.reset_peak_memory_stats(device)
    return Machine(rank, world, local_rank, device)


def tune_cuda(tf32: bool) -> None:
    """cuDNN picks the fastest convolution for each shape (the shapes of a run are fixed), as
    the official ConvNeXt code, timm and torchvision's reference do; float32 matrix products
    and convolutions use TF32 on Ampere and newer where `tf32` (torchvision's default for
    convolutions), full float32 where not. bf16 autocast is unaffected."""
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


# glibc's mallopt parameters (malloc.h) and the sizes we give them
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest: blocks up to 32 MiB come from the heap, not from a fresh mmap
TRIM_THRESHOLD = 64 << 20  # free heap kept for the next step instead of handed back to the system
TOP_PAD = 32 << 20  # heap grown in 32 MiB strides


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep the memory a training step frees for the next one. By
    default it maps each activation over 128 KiB-32 MiB afresh and hands it back when it
    is freed, so every step page-faults (and zero-fills) its activations again: 5-20% of a
    small network's CPU step (BENCHMARKS.md). Only allocation changes, not one number.
    False where the C library has no mallopt (not glibc)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(param, value) == 1 for param, value in
               ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD)))


def setup_distributed(kind: Device) -> Tuple[int, int, int]:
    """(rank, world size, local rank), from torchrun's environment or an srun step's
    (SLURM's variables exported as torchrun's); (0, 1, 0) without either. The process group
    is set up once per process and serves every run it trains."""
    export_srun_environment()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        cuda = kind is not Device.cpu and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(device_index(local_rank))  # before NCCL picks a device
        dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), local_rank


def device_index(local_rank: int) -> int:
    """The GPU of a process: its local rank among the GPUs it sees. Where a site binds one
    GPU per task (each task sees one), that is GPU 0 for every task, as torchvision's
    reference does (rank % device_count)."""
    return local_rank % max(torch.cuda.device_count(), 1)


def srun_ranks(env: Mapping[str, str]) -> Optional[Dict[str, str]]:
    """torchrun's variables for one task of an srun step with several tasks, from SLURM's:
    RANK from SLURM_PROCID, WORLD_SIZE from SLURM_NTASKS (the step's, SLURM_STEP_NUM_TASKS,
    where srun gives it), LOCAL_RANK from SLURM_LOCALID, MASTER_ADDR the step's first node,
    MASTER_PORT from the job id (as submitit picks it). None outside such a step: under
    torchrun, outside SLURM, with one task, and in a batch script (no SLURM_STEP_ID), whose
    SLURM_NTASKS counts tasks it has not started."""
    world = int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or "1")
    if "WORLD_SIZE" in env or "SLURM_STEP_ID" not in env or world <= 1:
        return None
    nodes = first_node(env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "localhost")
    return {"RANK": env["SLURM_PROCID"], "WORLD_SIZE": str(world), "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
            "LOCAL_WORLD_SIZE": str(world // max(int(env.get("SLURM_STEP_NUM_NODES", "1")), 1)),
            "MASTER_ADDR": env.get("MASTER_ADDR", nodes),
            "MASTER_PORT": env.get("MASTER_PORT", str(_port(env.get("SLURM_JOB_ID", "0"))))}


def _port(job_id: str) -> int:
    """A port every task of a job derives alike from its id, as submitit's does."""
    return random.Random(job_id).randint(20000, 60000)


def first_node(nodelist: str) -> str:
    """The first host of a SLURM node list: gpu[07-08,11],cpu1 -> gpu07."""
    m = re.match(r"([^,\[]+)(?:\[([^\],-]+))?", nodelist)
    return (m[1] + (m[2] or "")) if m else nodelist


def export_srun_environment() -> None:
    """Under plain `srun` with several tasks, export torchrun's variables from SLURM's, so
    that the tasks train one run together with DDP (submitit and torchrun set their own)."""
    os.environ.update(srun_ranks(os.environ) or {})


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def is_main_process() -> bool:
    """Rank 0 of a distributed run (or the only process): the one that writes and reports."""
    if dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK") or (srun_ranks(os.environ) or {}).get("RANK", "0")) == 0


def from_main_process(value: Any) -> Any:
    """Rank 0's `value`, on every rank (the value itself without a process group)."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wants_cuda(kind: Device) -> bool:
    """Whether train.device=`kind` trains on CUDA here (auto: where a GPU is visible)."""
    return kind is Device.cuda or (kind is Device.auto and torch.cuda.is_available())


def pick_device(kind: Device, local_rank: int) -> torch.device:
    if wants_cuda(kind):
        if not torch.cuda.is_available():
            raise ConfigError("train.device=cuda but no CUDA device is visible: use train.device=cpu or auto")
        index = device_index(local_rank)
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def autocast(device: torch.device, bf16: bool) -> Callable[[], ContextManager]:
    """A factory of the forward pass's number format: bf16 autocast on CUDA, else fp32."""
    if device.type == "cuda" and bf16:
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def all_sum(values: List[float], device: torch.device) -> List[float]:
    """The sum over processes of each value (the values themselves without a process group)."""
    if not dist.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return t.tolist()


def in_sync(model: torch.nn.Module) -> bool:
    """Whether every process holds the same weights (DDP keeps them so): the element-wise
    maximum and minimum over processes are equal, in two all-reduces of one copy each of
    the weights (no process gathers every process's weights)."""
    vec = torch.cat([p.detach().float().flatten() for p in model.parameters()])  # on the model's device: NCCL
    high, low = vec.clone(), vec.clone()
    dist.all_reduce(high, dist.ReduceOp.MAX)
    dist.all_reduce(low, dist.ReduceOp.MIN)
    return bool(torch.equal(high, low))


def all_mean(value: torch.Tensor) -> float:
    """The mean over processes of a scalar tensor on the model's device, in one all-reduce
    and one read. A value that is not finite on one process is not finite on all of them, so
    that every process takes the same branch (one that left alone would hang the others in
    their next collective until the timeout)."""
    total = value.detach().double().reshape(1)
    dist.all_reduce(total)
    return total.item() / dist.get_world_size()


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def cpu_name() -> str:
    """The CPU's model name, from /proc/cpuinfo on Linux (platform's guess elsewhere)."""
    info = Path("/proc/cpuinfo")
    if not info.exists():
        return platform.processor()
    names = (line.split(":", 1)[1].strip() for line in info.read_text().splitlines() if line.startswith("model name"))
    return next(names, platform.processor())


def describe(device: torch.device, *extra: str) -> str:
    """The machine in one line, as a benchmark names it: the GPU, or the CPU and the threads
    torch uses; then the library versions (with any `extra` package's)."""
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        where = f"{cpu_name()}, {torch.get_num_threads()} threads"
    return f"{where}; " + ", ".join(f"{k} {v}" for k, v in library_versions(*extra).items())


def library_versions(*extra: str) -> Dict[str, str]:
    """python, torch, torchvision, hydra-core and any `extra` package: their versions."""
    out = {"python": platform.python_version()}
    for package in ("torch", "torchvision", "hydra-core", *extra):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "not installed"
    return out


def code_version() -> str:
    """The git commit of this code, +dirty with uncommitted changes; 'unknown' outside git."""
    here = Path(__file__).parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True,
                               text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else "unknown"
