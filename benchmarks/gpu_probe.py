"""One rank of the 8-GPU ImageNet recipe, probed (benchmarks/gpu_check.sh runs it): the
augmentation's time against the training step's, its host-to-device copies, the blocking
syncs of a step, and the step with cuDNN's autotuner and TF32. Prints one JSON line.

    python benchmarks/gpu_probe.py cuda   # 512 images at 224 px, 4 micro-batches of 128
    python benchmarks/gpu_probe.py cpu    # the dry run: 16 images at 32 px
"""

import json
import sys
import time
import warnings

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from roadmap.augment import BatchAugment
from roadmap.config import compose, validate
from roadmap.engine import build_state, optimizer_step
from roadmap.machine import Machine, tune_cuda


class HostToMeta(TorchDispatchMode):
    """Counts the operations that take a host tensor to the meta device (one copy each on a GPU)."""

    def __init__(self):
        super().__init__()
        self.copies = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        host = any(t.device.type == "cpu" and t.dim() for t in tensors)
        self.copies += host and any(isinstance(t, torch.Tensor) and t.device.type == "meta" for t in tree_leaves(out))
        return out


class Probe:
    def __init__(self, device: torch.device):
        self.cpu = device.type == "cpu"
        self.n, self.side, self.reps = (16, 32, 1) if self.cpu else (512, 224, 4)
        self.run = validate(compose("separate_downsampling", "+experiment=imagenet_r50", f"recipe.batch_size={self.n}",
                                    *(["recipe.device_batch=8"] if self.cpu else [])))
        r = self.run
        self.aug = BatchAugment.for_recipe(r.recipe, 1000, r.data.mean, r.data.std, crop=False)
        self.state = build_state(r, Machine(0, 1, 0, device), 100)
        self.images = torch.randint(0, 256, (self.n, 3, self.side, self.side), dtype=torch.uint8, device=device)
        self.labels = torch.randint(0, 1000, (self.n,), device=device)
        self.g, self.device = torch.Generator().manual_seed(0), device

    def sync(self) -> None:
        if not self.cpu:
            torch.cuda.synchronize()

    def prep(self):
        x, t = self.aug.mix_batch(self.aug.per_image(self.images, self.g), self.labels)
        return x.contiguous(memory_format=torch.channels_last), t

    def step(self, x, t) -> None:
        optimizer_step(self.state, x, t, self.run, 1)

    def ms(self, fn) -> float:
        fn()
        self.sync()
        t0 = time.perf_counter()
        for _ in range(self.reps):
            fn()
        self.sync()
        return round((time.perf_counter() - t0) / self.reps * 1e3, 1)

    def copies(self) -> dict:
        """Host-to-device copies of one step's augmentation: CUDA's memcpy events, or (CPU) a count on meta."""
        if self.cpu:
            meta = torch.empty(self.n, 3, self.side, self.side, dtype=torch.uint8, device="meta")
            self.aug.per_image(meta, self.g)  # the first call also copies the fill colour and normalization, once
            with HostToMeta() as count:
                self.aug.per_image(meta, self.g)
            return {"h2d_copies_per_step": count.copies}
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
            self.prep()
            self.sync()
        names = [e.name for e in p.events() if "HtoD" in e.name]
        return {"h2d_copies_per_step": len(names), "h2d_pinned": sum("Pinned" in k for k in names)}

    def syncs_per_step(self) -> int:
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            self.step(*self.prep())
        torch.cuda.set_sync_debug_mode(0)
        return sum("synchroniz" in str(m.message) for m in w)


def micro_augmentation_ms(p: Probe) -> float:
    """The micro study's augmentation at full strength: 256 grey 32x32 images, crop and flip included."""
    mi = BatchAugment.for_recipe(p.run.recipe, 10, [0.5], [0.5], crop=True)
    images = torch.randint(0, 256, (256, 1, 32, 32), dtype=torch.uint8, device=p.device)
    labels = torch.randint(0, 10, (256,), device=p.device)
    return p.ms(lambda: mi.mix_batch(mi.per_image(images, p.g), labels))


def main(device: torch.device) -> dict:
    p = Probe(device)
    res = {"device": str(device), "images": p.n, "side": p.side, "aug_ms": p.ms(p.prep)}
    p.aug.erasing = 0.0
    res["aug_no_erasing_ms"] = p.ms(p.prep)
    p.aug.erasing = 0.25
    res.update(p.copies())
    x, t = p.prep()
    res["step_ms"] = p.ms(lambda: p.step(x, t))
    res["aug_then_step_ms"] = p.ms(lambda: p.step(*p.prep()))
    if not p.cpu:
        tune_cuda(True)  # what machine.setup does for a training run on CUDA
        res["step_ms_cudnn_benchmark_tf32"] = p.ms(lambda: p.step(x, t))
        res["syncs_per_step"] = p.syncs_per_step()
        res["peak_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    res["micro_aug_ms_256x32px"] = micro_augmentation_ms(p)
    return res


if __name__ == "__main__":
    print(json.dumps(main(torch.device(sys.argv[1] if len(sys.argv) > 1 else "cuda"))))
