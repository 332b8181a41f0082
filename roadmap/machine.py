"""The machine a run trains on: its processes (DDP, from torchrun's variables), its
device and number format, and what a run's summary records about it (library versions,
code version, peak memory). The trainer and the benchmark share these."""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import resource
import subprocess
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, List, Tuple

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


def setup(kind: Device, threads: int = 0) -> Machine:
    """The processes (DDP under torchrun), the device and the CPU threads of a run."""
    rank, world, local_rank = setup_distributed(kind)
    if threads:
        torch.set_num_threads(threads)
    device = pick_device(kind, local_rank)
    if device.type == "cpu":
        keep_freed_memory()
    return Machine(rank, world, local_rank, device)


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
    """(rank, world size, local rank), from torchrun's environment; (0, 1, 0) without it.
    The process group is set up once per process and serves every run it trains."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    if not dist.is_initialized():
        cuda = kind is not Device.cpu and torch.cuda.is_available()
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


def from_main_process(value: Any) -> Any:
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
    """Whether every process holds the same weights (DDP keeps them so)."""
    vec = torch.cat(
        [p.detach().float().flatten() for p in model.parameters()]
    )  # on the model's device: NCCL needs CUDA
    gathered: List[torch.Tensor] = [torch.empty_like(vec) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, vec)
    return all(torch.equal(g, vec) for g in gathered)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


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
