"""Benchmark: how fast every network of the roadmap trains and infers on this machine,
against the reference implementations of its two ends and the machine's own limit.

    make bench                                         # the CPU table (about 10 minutes on 2 cores)
    python -m roadmap.bench steps=resnet reps=1        # a cheap form (CI runs one like it)
    python -m roadmap.bench device=cuda                # the GPU table: r50 ends at 224, bf16

What it measures, all in one process, on identical random input:
  - train (forward, cross-entropy, backward, AdamW step) and inference images/s of every
    step: micro at 32x32 (Fashion-MNIST's shapes), r50 at 64x64 (3 channels, 1000
    classes), and the two ends of r200; repetitions interleaved across all networks,
    the median kept;
  - the references at both ends, built with the same depths, widths and drop-path rate
    and checked to be the same network (our importer loads their weights strictly), and
    ours / theirs;
  - the training FLOP rate (6 x counted MACs per image: forward + backward) as a share of
    the dense matrix-multiply rate measured in the same loop;
  - peak memory of one training step;
  - the data pipeline (Fashion-MNIST batches with the convnext recipe's augmentation)
    against the micro networks' training images/s;
  - the time to count params and MACs of every step of r50 and r200 (compose + count).
The table is printed and written to <out>/bench_<device>.md and .csv.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from roadmap.cli import one_line_errors, read_argv
from roadmap.steps import complexity, count_steps
from roadmap.config import STEPS, compose, expand_steps, model_config, validate
from roadmap import wall_time
from roadmap.data import Data
from roadmap.errors import NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, ConfigError, DataError, check_ranges
from roadmap.machine import Machine, autocast, keep_freed_memory, library_versions
from roadmap.model import ConvNet, ModelConfig
from roadmap.weights import WeightImportError, import_weights

# (resolution, batch) per regime and device: the same for ours and the references.
SHAPES = {
    "cpu": {"micro": (32, 256), "r50": (64, 32), "r200": (64, 16)},
    "cuda": {"micro": (32, 1024), "r50": (224, 128), "r200": (224, 64)},
}
ENDS = ("resnet", "separate_downsampling")
PAPER_A100_CONVNEXT_T = 1943.5  # img/s, inference, A100, TF32, channels-last (Table 1)


@dataclass
class BenchConfig:
    device: str = "cpu"
    """cpu, or cuda (bf16 autocast, channels-last, each network also under torch.compile)."""
    regimes: List[str] = field(default_factory=lambda: ["micro", "r50", "r200"])
    steps: str = "all"
    """Steps of micro and r50 (all, or a comma list); r200 runs its two ends only."""
    reps: int = 5
    """Interleaved repetitions; the median is kept."""
    seconds: float = 0.3
    """Target length of one repetition of one network (whole steps, at least one)."""
    threads: int = 0
    """torch threads; 0 = every core this process may use."""
    references: bool = True
    """Time torchvision's and timm's networks at both ends beside ours."""
    data: bool = True
    """Time the trainer's data pipeline at full augmentation strength (needs Fashion-MNIST)."""
    count: bool = True
    """Time composing and counting every step of r50 and r200."""
    study: bool = True
    """Project the default study's wall time, one run at a time against runs side by side."""
    out: str = "benchmarks"
    """Where bench_<device>.md and .csv go."""

    def __post_init__(self) -> None:
        check_ranges(self, "", {"reps": POSITIVE_INT, "seconds": POSITIVE, "threads": NON_NEGATIVE_INT})


@dataclass
class Entry:
    regime: str
    name: str  # the step, or the reference's name
    impl: str  # roadmap, torchvision or timm
    build: Callable[[ModelConfig], nn.Module]
    cfg: ModelConfig  # the step's network (a reference is built from the same config)
    ours: Optional[str] = None  # a reference: the step it is the same network as
    compiled: bool = False
    result: Dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- references


def torchvision_resnet(cfg: ModelConfig) -> nn.Module:
    """torchvision's ResNet class with the config's depths and widths (resnet50 for r50;
    torchvision has no resnet200 builder but its class builds one)."""
    from torchvision.models.resnet import Bottleneck, ResNet

    m = ResNet(Bottleneck, cfg.depths, num_classes=cfg.num_classes)
    if cfg.widths != [64, 128, 256, 512] or cfg.in_chans != 3:  # its constructor fixes these: rebuild them its way
        m.inplanes = cfg.widths[0]
        m.conv1 = nn.Conv2d(cfg.in_chans, cfg.widths[0], 7, 2, 3, bias=False)
        m.bn1 = nn.BatchNorm2d(cfg.widths[0])
        for i, (depth, width) in enumerate(zip(cfg.depths, cfg.widths)):
            setattr(m, f"layer{i + 1}", m._make_layer(Bottleneck, width, depth, stride=1 if i == 0 else 2))
        m.fc = nn.Linear(cfg.widths[-1] * 4, cfg.num_classes)
    return m


def timm_resnet(cfg: ModelConfig) -> nn.Module:
    from timm.models.resnet import Bottleneck, ResNet

    return ResNet(Bottleneck, cfg.depths, channels=cfg.widths, in_chans=cfg.in_chans, num_classes=cfg.num_classes)


def torchvision_convnext(cfg: ModelConfig) -> nn.Module:
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    widths = cfg.widths + [None]
    setting = [CNBlockConfig(widths[i], widths[i + 1], d) for i, d in enumerate(cfg.depths)]
    m = ConvNeXt(
        setting, stochastic_depth_prob=cfg.drop_path_rate, layer_scale=cfg.layer_scale, num_classes=cfg.num_classes
    )
    if cfg.in_chans != 3 or cfg.patch_size != 4:  # its stem conv is fixed at 3 channels, 4x4
        m.features[0][0] = nn.Conv2d(cfg.in_chans, cfg.widths[0], cfg.patch_size, cfg.patch_size)
    return m


def timm_convnext(cfg: ModelConfig) -> nn.Module:
    from timm.models.convnext import ConvNeXt

    return ConvNeXt(in_chans=cfg.in_chans, num_classes=cfg.num_classes, depths=cfg.depths, dims=cfg.widths,
                    drop_path_rate=cfg.drop_path_rate, ls_init_value=cfg.layer_scale, patch_size=cfg.patch_size)


HAS_TIMM = importlib.util.find_spec("timm") is not None  # a test extra: without it, torchvision's references only

# Each end's references: (implementation, builder, whether it can build this config).
REFERENCES = {
    "resnet": [
        ("torchvision", torchvision_resnet, lambda c: True),
        ("timm", timm_resnet, lambda c: HAS_TIMM and c.widths[0] == 64),
    ],  # timm's stem is 64 channels whatever the widths
    "separate_downsampling": [
        ("torchvision", torchvision_convnext, lambda c: True),
        ("timm", timm_convnext, lambda c: HAS_TIMM),
    ],
}


def overrides_for(regime: str, device: str) -> List[str]:
    resolution = SHAPES[device][regime][0]
    data = [] if regime == "micro" else ["data=imagenet", f"data.image_size={resolution}"]
    return [f"regime={regime}", *data]


def entries(cfg: BenchConfig) -> List[Entry]:
    out = []
    for regime in cfg.regimes:
        steps = (
            expand_steps(cfg.steps)
            if regime != "r200"
            else [s for s in ENDS if s in expand_steps(cfg.steps)] or list(ENDS)
        )
        for step in steps:
            mcfg = model_config(compose(step, *overrides_for(regime, cfg.device)))
            variants = [False, True] if cfg.device == "cuda" else [False]
            for compiled in variants:
                out.append(Entry(regime, step, "roadmap", ConvNet, mcfg, compiled=compiled))
                if cfg.references:
                    for impl, build, fits in REFERENCES.get(step, []):
                        if fits(mcfg):
                            out.append(Entry(regime, step, impl, build, mcfg, ours=step, compiled=compiled))
    return out


# ----------------------------------------------------------------------------- measuring


class Runner:
    """One network, ready to train and infer on the batch, and to be timed."""

    def __init__(
        self, entry: Entry, device: torch.device, batch: int, resolution: int, in_chans: int, num_classes: int
    ):
        self.device = device
        torch.manual_seed(0)
        self.model = entry.build(entry.cfg).to(device, memory_format=torch.channels_last)
        self.net = torch.compile(self.model) if entry.compiled else self.model
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        g = torch.Generator().manual_seed(0)
        self.x = (
            torch.randn(batch, in_chans, resolution, resolution, generator=g)
            .to(device)
            .contiguous(memory_format=torch.channels_last)
        )
        self.y = torch.randint(0, num_classes, (batch,), generator=g).to(device)
        self.batch = batch
        self._autocast = autocast(device, bf16=True)  # as the trainer: bf16 on CUDA, fp32 on the CPU

    def train_step(self) -> None:
        self.model.train()
        with self._autocast():
            loss = F.cross_entropy(self.net(self.x).float(), self.y)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def infer_step(self) -> None:
        self.model.eval()
        with torch.inference_mode(), self._autocast():
            self.net(self.x)

    def seconds(self, fn: Callable[[], None], iters: int) -> float:
        _sync(self.device)
        t = time.perf_counter()
        for _ in range(iters):
            fn()
        _sync(self.device)
        return (time.perf_counter() - t) / iters

    def peak_memory_mb(self) -> float:
        """Peak memory of one training step of this network alone: what of it is live before
        the step (weights, optimizer state, batch) plus the most the step allocates on top
        (activations, gradients). Other networks held on the same device do not count."""
        live = (
            sum(t.numel() * t.element_size() for t in _tensors(self.model, self.optimizer))
            + self.x.nbytes
            + self.y.nbytes
        )
        if self.device.type == "cuda":
            return (live + cuda_step_growth(self.train_step, self.device)) / 2**20
        return (live + cpu_step_growth(self.train_step)) / 2**20


def _tensors(model: nn.Module, optimizer: torch.optim.Optimizer):
    yield from model.parameters()
    yield from model.buffers()
    for state in optimizer.state.values():
        yield from (v for v in state.values() if torch.is_tensor(v))


def cuda_step_growth(fn: Callable[[], None], device: torch.device) -> int:
    """The most bytes CUDA's allocator holds during `fn` on top of what it held when `fn`
    began: the peak is reset, and what was allocated before (other networks) subtracted."""
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def cpu_step_growth(fn: Callable[[], None]) -> int:
    """The most bytes the CPU allocator holds on top of what was live when `fn` began,
    from the profiler's allocation events (torch keeps no CPU memory statistics)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        events = json.loads(path.read_text())["traceEvents"]
    totals = [e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"]
    return max(totals, default=0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(device: torch.device, n: int) -> Callable[[], float]:
    """One timing of a dense n x n matrix product (fp32 on the CPU, bf16 on a GPU)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))

    def once() -> float:
        a @ b  # warm
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        return 2 * n**3 / (time.perf_counter() - t) / 1e9

    return once


def data_pipeline(device: torch.device) -> Optional[Callable[[int], float]]:
    """Images/s of the training data path for Fashion-MNIST under the convnext recipe's
    augmentation at full strength (budget=paper), batch 256: batching, crop and flip,
    RandAugment, erasing, MixUp/CutMix, channels-last. None if the data is missing."""
    run = validate(compose("separate_downsampling", "budget=paper", "recipe.batch_size=256"))
    try:
        data = Data(run.data, run.recipe, run.seed, Machine(0, 1, 0, device), 256)
    except DataError:
        return None
    g = torch.Generator().manual_seed(0)
    stream = [data.augmented_batches(0, 0, g)]

    def images_per_s(batches: int) -> float:
        _sync(device)
        t = time.perf_counter()
        for _ in range(batches):
            try:
                x, labels = next(stream[0])
            except StopIteration:
                stream[0] = data.augmented_batches(1, 0, g)
                x, labels = next(stream[0])
            x, _ = data.augment.mix_batch(x, labels)
            x.contiguous(memory_format=torch.channels_last)
        _sync(device)
        return batches * 256 / (time.perf_counter() - t)

    return images_per_s


def time_counting() -> float:
    """Seconds to compose and count params + MACs of every step of r50 and r200."""
    t = time.perf_counter()
    for regime in ("r50", "r200"):
        count_steps(STEPS, f"regime={regime}", "data=imagenet", resolution=224)
    return time.perf_counter() - t


# ----------------------------------------------------------------------------- the run


def run(cfg: BenchConfig) -> Dict:
    device = torch.device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif device.type == "cpu":
        torch.set_num_threads(len(os.sched_getaffinity(0)))
    if device.type == "cpu":
        keep_freed_memory()  # as a training run does: every implementation gets the same allocator
    counting = time_counting() if cfg.count else None
    steps = expand_steps(cfg.steps)  # the default study's runs: all steps for make bench
    study = wall_time.project(steps, seconds=max(cfg.seconds, 0.2)) if cfg.study and device.type == "cpu" else None

    todo = entries(cfg)
    matmul = matmul_gflops(device, 8192 if device.type == "cuda" else 2048)
    pipeline = data_pipeline(device) if cfg.data and "micro" in cfg.regimes else None
    matmul_rates, data_rates = [], []
    for regime in cfg.regimes:  # one regime's networks at a time: all of r50 with AdamW state is ~7 GB
        group = [e for e in todo if e.regime == regime]
        runners = [prepare(e, device, cfg) for e in group]
        for rep in range(cfg.reps):  # interleaved: every network sees the machine in the same states
            matmul_rates.append(matmul())
            if pipeline is not None and regime == "micro":
                data_rates.append(pipeline(20))
            for e, r in zip(group, runners):
                it, ii = e.result["iters"]
                e.result.setdefault("train_s", []).append(r.seconds(r.train_step, it))
                e.result.setdefault("infer_s", []).append(r.seconds(r.infer_step, ii))
            print(f"  {regime}: repetition {rep + 1}/{cfg.reps} done", flush=True)
        del runners

    peak = statistics.median(matmul_rates)
    for e in todo:
        res = e.result
        res["train_img_s"] = res["batch"] / statistics.median(res["train_s"])
        res["infer_img_s"] = res["batch"] / statistics.median(res["infer_s"])
        res["train_gflop_s"] = 6 * res["gmacs"] * res["train_img_s"]
        res["matmul_share"] = res["train_gflop_s"] / peak
    by_key = {(e.regime, e.name, e.impl, e.compiled): e for e in todo}
    for e in todo:
        if e.ours:
            ours = by_key[(e.regime, e.ours, "roadmap", e.compiled)].result
            e.result["ratio_train"] = ours["train_img_s"] / e.result["train_img_s"]
            e.result["ratio_infer"] = ours["infer_img_s"] / e.result["infer_img_s"]
            for kind in ("train", "infer"):  # per repetition: theirs and ours timed in the same pass
                reps = [t / o for t, o in zip(e.result[f"{kind}_s"], ours[f"{kind}_s"])]
                e.result[f"ratio_{kind}_spread"] = (min(reps), max(reps))
    return {"entries": todo, "matmul_gflops": peak, "data_img_s": statistics.median(data_rates) if data_rates else None,
            "counting_s": counting, "study": study}


def prepare(e: Entry, device: torch.device, cfg: BenchConfig) -> Runner:
    """Build, check, warm up and size one network's measurement."""
    resolution, batch = SHAPES[cfg.device][e.regime]
    mcfg = e.cfg
    r = Runner(e, device, batch, resolution, mcfg.in_chans, mcfg.num_classes)
    e.result.update(params=sum(p.numel() for p in r.model.parameters()), batch=batch, resolution=resolution)
    e.result["gmacs"] = complexity(mcfg, resolution).gmacs
    if e.ours:
        e.result["same_network"] = same_network(ConvNet(mcfg), r.model)
    for _ in range(2):
        r.train_step()
        r.infer_step()
    e.result["peak_memory_mb"] = r.peak_memory_mb()
    t_train, t_infer = r.seconds(r.train_step, 1), r.seconds(r.infer_step, 1)
    e.result["iters"] = (max(1, round(cfg.seconds / t_train)), max(1, round(cfg.seconds / t_infer)))
    print(f"  ready {e.regime:5s} {e.impl:11s} {e.name}{' (compiled)' if e.compiled else ''}", flush=True)
    return r


def same_network(ours: nn.Module, ref: nn.Module) -> bool:
    try:
        import_weights(ours, ref.state_dict())
    except WeightImportError:
        return False
    return True


# ----------------------------------------------------------------------------- the report

COLUMNS = [
    ("regime", "regime", "{}"), ("network", "network", "{}"), ("impl", "implementation", "{}"),
    ("params_m", "params (M)", "{:.2f}"), ("gmacs", "GMACs", "{:.4g}"), ("batch", "batch", "{}"),
    ("train_img_s", "train img/s", "{:.0f}"), ("infer_img_s", "infer img/s", "{:.0f}"),
    ("train_gflop_s", "train GFLOP/s", "{:.1f}"), ("matmul_pct", "% of matmul", "{:.0f}%"),
    ("peak_memory_mb", "peak MB", "{:.0f}"), ("ratio_train", "ours/this train", "{:.2f}"),
    ("ratio_infer", "ours/this infer", "{:.2f}"),
]


def rows(result: Dict) -> List[Dict]:
    out = []
    for e in result["entries"]:
        r = e.result
        name = f"{e.name}{' (compiled)' if e.compiled else ''}"
        if e.ours:
            name = f"{name} (same network: {'yes' if r['same_network'] else 'NO'})"
        out.append(
            {
                "regime": f"{e.regime} @{r['resolution']}",
                "network": name,
                "impl": e.impl,
                "params_m": r["params"] / 1e6,
                "gmacs": r["gmacs"],
                "batch": r["batch"],
                "train_img_s": r["train_img_s"],
                "infer_img_s": r["infer_img_s"],
                "train_gflop_s": r["train_gflop_s"],
                "matmul_pct": 100 * r["matmul_share"],
                "peak_memory_mb": r["peak_memory_mb"],
                "ratio_train": r.get("ratio_train"),
                "ratio_infer": r.get("ratio_infer"),
            }
        )
    return out


def markdown(table: List[Dict]) -> str:
    head = "| " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    lines = [head, "|" + "---|" * len(COLUMNS)]
    for row in table:
        cells = ["" if row[k] is None else fmt.format(row[k]) for k, _, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def targets(result: Dict, device: str) -> List[str]:
    """The issue's targets, each with the measured figure and PASS or MISS."""
    entries = result["entries"]
    lines = [f"dense matmul ({'bf16 8192' if device == 'cuda' else 'fp32 2048'}^2): "
             f"{result['matmul_gflops']:.1f} GFLOP/s (median)"]
    for e in (e for e in entries if e.ours and e.regime in ("micro", "r50")):
        r = e.result
        ok = r["ratio_train"] >= 1.0 and r["ratio_infer"] >= 1.0
        spread = [r[f"ratio_{k}_spread"] for k in ("train", "infer")]
        medians = (r["ratio_train"], r["ratio_infer"])
        within = not ok and all(hi >= 1.0 for (_, hi), m in zip(spread, medians) if m < 1.0)
        lines.append(f"ours / {e.impl} {e.name} ({e.regime}{', compiled' if e.compiled else ''}): "
                     f"train {r['ratio_train']:.2f} ({spread[0][0]:.2f}-{spread[0][1]:.2f}), inference "
                     f"{r['ratio_infer']:.2f} ({spread[1][0]:.2f}-{spread[1][1]:.2f}) (target >= 1.0, per-repetition "
                     f"range in brackets): {verdict(ok)}{' (1.0 is inside the run-to-run range)' if within else ''}")
    r50 = [e for e in entries if e.regime == "r50" and e.impl == "roadmap" and not e.compiled]
    if r50 and device == "cpu":
        worst = min(r50, key=lambda e: e.result["matmul_share"])
        median = statistics.median(e.result["matmul_share"] for e in r50)
        lines.append(f"r50 training FLOP rate: lowest {100 * worst.result['matmul_share']:.0f}% of matmul "
                     f"({worst.name}), median {100 * median:.0f}% (target >= 35%): "
                     f"{verdict(worst.result['matmul_share'] >= 0.35)}")
    lines += data_and_counting_targets(result, entries)
    if device == "cuda":
        for e in entries:
            if e.regime == "r50" and e.name == "separate_downsampling" and e.impl == "roadmap":
                lines.append(f"ConvNeXt-T inference{' (compiled)' if e.compiled else ''}: "
                             f"{e.result['infer_img_s']:.0f} img/s, paper (A100, TF32): {PAPER_A100_CONVNEXT_T} img/s")
    return lines


def data_and_counting_targets(result: Dict, entries: List[Entry]) -> List[str]:
    lines = []
    micro = [e for e in entries if e.regime == "micro" and e.impl == "roadmap"]
    if result["data_img_s"] is not None and micro:
        fastest = max(micro, key=lambda e: e.result["train_img_s"])
        ratio = result["data_img_s"] / fastest.result["train_img_s"]
        lines.append(f"data pipeline (Fashion-MNIST, convnext recipe augmentation, batch 256): "
                     f"{result['data_img_s']:.0f} img/s = {ratio:.1f}x the fastest micro training "
                     f"({fastest.name}, {fastest.result['train_img_s']:.0f} img/s) "
                     f"(target >= 10x): {verdict(ratio >= 10)}")
    elif micro:
        lines.append("data pipeline: not measured (no Fashion-MNIST here: make data)")
    if result["counting_s"] is not None:
        lines.append(f"compose + count params and MACs of all {2 * len(STEPS)} steps of r50 and r200: "
                     f"{result['counting_s']:.2f} s (target <= 5 s): {verdict(result['counting_s'] <= 5)}")
    return lines


def machine(device: torch.device) -> str:
    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else platform.processor()
    )
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu}, {torch.get_num_threads()} threads"
    return f"{where}; " + ", ".join(f"{k} {v}" for k, v in library_versions("timm").items())


def report(result: Dict, cfg: BenchConfig, command: str) -> str:
    device = torch.device(cfg.device)
    lines = [f"Machine: {machine(device)}", f"Command: `{command}`",
             f"Train step: forward, cross-entropy, backward, AdamW; {'bf16 autocast, ' if cfg.device == 'cuda' else ''}"
             f"channels-last; median of {cfg.reps} interleaved repetitions.", "",
             markdown(rows(result)), "", *[f"- {t}" for t in targets(result, cfg.device)]]
    if result.get("study"):
        lines += ["", *study_lines(result["study"])]
    return "\n".join(lines) + "\n"


def study_lines(study: Dict) -> List[str]:
    """The default study's projected wall time both ways, and the rates behind it."""
    n, cores, epochs = len(study["alone"]), study["cores"], study["epochs"]
    old, new = study["old_s"], study["new_s"]
    lines = [f"Default study ({n} runs of {epochs} epochs, Fashion-MNIST 60k train / 10k test), projected wall time: "
             f"one run at a time on {cores} threads {old / 60:.1f} min; {cores} runs side by side, 1 thread each "
             f"{new / 60:.1f} min ({new / old:.2f}x).", "",
             f"| step | train img/s, alone ({cores} threads) | test img/s, alone | train img/s, side by side (each) "
             "| test img/s, side by side (each) |", "|---|---|---|---|---|"]
    for a, b in zip(study["alone"], study["shared"]):
        lines.append(f"| {a.step} | {a.train_img_s:.0f} | {a.test_img_s:.0f} | {b.train_img_s:.0f} "
                     f"| {b.test_img_s:.0f} |")
    return lines


def write(result: Dict, cfg: BenchConfig, text: str) -> List[Path]:
    import pandas as pd

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    md, csv = out / f"bench_{cfg.device}.md", out / f"bench_{cfg.device}.csv"
    md.write_text(text)
    pd.DataFrame(rows(result)).to_csv(csv, index=False)
    return [md, csv]


def parse(argv: List[str]) -> BenchConfig:
    try:
        merged = OmegaConf.merge(OmegaConf.structured(BenchConfig), OmegaConf.from_dotlist(argv))
        cfg: BenchConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except ConfigError:
        raise
    except (OmegaConfBaseException, ValueError) as e:
        raise ConfigError(f"{str(e).splitlines()[0]}: see python -m roadmap.bench --help") from e
    if cfg.device not in SHAPES:
        raise ConfigError(f"device={cfg.device} is not valid: choose cpu or cuda")
    given = {a.split("=", 1)[0] for a in argv}
    if cfg.device == "cuda":  # the GPU table: ResNet-50 and ConvNeXt-T at 224, unless asked otherwise
        cfg.regimes = cfg.regimes if "regimes" in given else ["r50"]
        cfg.steps = cfg.steps if "steps" in given else ",".join(ENDS)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is visible: use device=cpu")
    bad = [r for r in cfg.regimes if r not in SHAPES[cfg.device]]
    if bad:
        raise ConfigError(f"regimes has '{bad[0]}': choose from {', '.join(SHAPES[cfg.device])}")
    expand_steps(cfg.steps)  # an unknown step fails here, naming the valid ones
    return cfg


def main(argv: Optional[List[str]] = None) -> int:
    argv = read_argv(__doc__, "steps=resnet reps=1", argv)
    with one_line_errors():
        cfg = parse(argv)
        try:
            Path(cfg.out).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"out={cfg.out} cannot be created ({e.strerror}): choose a writable directory") from e
    result = run(cfg)
    text = report(result, cfg, " ".join(["python -m roadmap.bench", *argv]))
    print(text)
    for path in write(result, cfg, text):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
