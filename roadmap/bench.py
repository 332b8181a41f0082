"""Benchmark: how fast every network of the roadmap trains and infers on this machine,
against the reference implementations of its two ends and the machine's own limit.

    make bench                                         # the CPU table (about 10 minutes on 2 cores)
    python -m roadmap.bench steps=resnet reps=1        # a cheap form (CI runs one like it)
    python -m roadmap.bench device=cuda                # the GPU table: r50 ends at 224, bf16

What it measures, all in one process, on identical random input:
  - train and inference images/s of every step: micro at 32x32 (Fashion-MNIST's shapes),
    r50 at 64x64 (3 channels, 1000 classes), and the two ends of r200; repetitions
    interleaved across all networks, the median kept. The train step is the trainer's
    own (roadmap.engine.optimizer_step: forward, cross-entropy, backward, the step's
    optimizer and schedule), on the training state the trainer builds;
  - the references at both ends, built with the same depths, widths and drop-path rate
    and checked to be the same network (our importer loads their weights strictly), and
    ours / theirs;
  - the training FLOP rate (6 x counted MACs per image: forward + backward) as a share of
    the dense matrix-multiply rate measured in the same loop;
  - peak memory of one training step;
  - the data pipeline (Fashion-MNIST batches with the convnext recipe's augmentation)
    against the micro networks' training images/s;
  - the time to count params and MACs of every step of r50 and r200 (compose + count).
The table is printed and written to <out>/bench_<device>.md and .csv. The references are
built in roadmap/references.py; the records, the targets, the table and the verdicts are
in roadmap/bench_report.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from roadmap import wall_time
from roadmap.bench_report import DATA_BATCH, MATMUL, BenchedNetwork, BenchResult, Measured, report, write_bench
from roadmap.cli import one_line_errors, read_argv
from roadmap.complexity import complexity, count_steps
from roadmap.config import STEPS, RunConfig, compose, expand_steps, validate
from roadmap.data import Data
from roadmap.engine import TrainState, optimizer_step, state_for
from roadmap.errors import NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, ConfigError, DataError, check_ranges
from roadmap.machine import Machine, keep_freed_memory
from roadmap.model import ConvNet, ModelConfig
from roadmap.references import REFERENCES, same_network

# (resolution, batch) per regime and device: the same for ours and the references.
SHAPES = {
    "cpu": {"micro": (32, 256), "r50": (64, 32), "r200": (64, 16)},
    "cuda": {"micro": (32, 1024), "r50": (224, 128), "r200": (224, 64)},
}
ENDS = ("resnet", "separate_downsampling")
SCHEDULE_STEPS = 1000  # optimizer steps per epoch the schedule is built for: any will do, steps cost the same anywhere


@dataclass
class BenchConfig:
    """What `python -m roadmap.bench` measures, and where its table goes."""

    device: str = "cpu"
    """cpu, or cuda (bf16 autocast, channels-last, each network also under torch.compile)."""
    regimes: List[str] = field(default_factory=lambda: ["micro", "r50", "r200"])
    """The regimes timed, each at its SHAPES."""
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
    """One network to measure: which it is, how it is built, and the run it trains as."""

    network: BenchedNetwork
    """Which network (its row of the table)."""
    build: Callable[[ModelConfig], nn.Module]
    """ConvNet, or a reference's builder (roadmap.references), applied to the run's model config."""
    run: RunConfig
    """The step's run at the benchmark's batch and compile setting: what the trainer would train."""


def overrides_for(regime: str, device: str) -> List[str]:
    """The overrides that compose a step in `regime` at the benchmark's resolution."""
    resolution = SHAPES[device][regime][0]
    data = [] if regime == "micro" else ["data=imagenet", f"data.image_size={resolution}"]
    return [f"regime={regime}", *data]


def bench_run(step: str, regime: str, device: str, compiled: bool) -> RunConfig:
    """The step's run config as the benchmark trains it: the regime's shapes, its batch, compiled or not."""
    batch = SHAPES[device][regime][1]
    run = validate(compose(step, *overrides_for(regime, device), f"recipe.batch_size={batch}"))
    return dataclasses.replace(run, train=dataclasses.replace(run.train, compile=compiled))


def entries(cfg: BenchConfig) -> List[Entry]:
    """Every network to time, regime by regime: each step, then its references."""
    out = []
    for regime in cfg.regimes:
        chosen = expand_steps(cfg.steps)
        steps = chosen if regime != "r200" else [s for s in ENDS if s in chosen] or list(ENDS)
        for step in steps:
            for compiled in [False, True] if cfg.device == "cuda" else [False]:
                run = bench_run(step, regime, cfg.device, compiled)
                out.append(Entry(BenchedNetwork(regime, step, "roadmap", compiled), ConvNet, run))
                if cfg.references:
                    out += [Entry(BenchedNetwork(regime, step, impl, compiled), build, run)
                            for impl, build, fits in REFERENCES.get(step, []) if fits(run.model)]
    return out


# ----------------------------------------------------------------------------- measuring


class Runner:
    """One network in the training state the trainer builds, ready to train and infer on
    one batch, and to be timed."""

    def __init__(self, entry: Entry, device: torch.device, resolution: int):
        self.device, self.run = device, entry.run
        torch.manual_seed(0)
        model = entry.build(entry.run.model)
        self.state: TrainState = state_for(model, entry.run, Machine(0, 1, 0, device), SCHEDULE_STEPS)
        batch, mcfg = entry.run.recipe.batch_size, entry.run.model
        g = torch.Generator().manual_seed(0)
        self.x = (
            torch.randn(batch, mcfg.in_chans, resolution, resolution, generator=g)
            .to(device)
            .contiguous(memory_format=torch.channels_last)
        )
        self.y = torch.randint(0, mcfg.num_classes, (batch,), generator=g).to(device)

    def train_step(self) -> None:
        """One step of the trainer's (engine.optimizer_step), in training mode."""
        self.state.model.train()
        optimizer_step(self.state, self.x, self.y, self.run, world=1)

    def infer_step(self) -> None:
        """One forward pass of the batch in eval mode, in the trainer's number format."""
        self.state.model.eval()
        with torch.inference_mode(), self.state.forward_format():
            self.state.net(self.x)

    def seconds(self, fn: Callable[[], None], iters: int) -> float:
        """Seconds per call of `fn`, over `iters` calls."""
        _sync(self.device)
        t = time.perf_counter()
        for _ in range(iters):
            fn()
        _sync(self.device)
        return (time.perf_counter() - t) / iters

    def peak_memory_mb(self) -> float:
        """Peak memory of one training step of this network alone: what of it is live before
        the step (weights, optimizer state, EMA, batch) plus the most the step allocates on
        top (activations, gradients). Other networks held on the same device do not count."""
        live = sum(t.numel() * t.element_size() for t in _tensors(self.state)) + self.x.nbytes + self.y.nbytes
        if self.device.type == "cuda":
            return (live + cuda_step_growth(self.train_step, self.device)) / 2**20
        return (live + cpu_step_growth(self.train_step)) / 2**20


def _tensors(state: TrainState) -> Iterator[torch.Tensor]:
    for module in (state.model, state.ema):
        if module is not None:
            yield from module.parameters()
            yield from module.buffers()
    for values in state.optimizer.state.values():
        yield from (v for v in values.values() if torch.is_tensor(v))


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


def matmul_gflops(device: torch.device) -> Callable[[], float]:
    """One timing of the device's dense matrix product (bench_report.MATMUL: fp32 on the CPU, bf16 on a GPU)."""
    number, n = MATMUL[device.type]
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[number]
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
    augmentation at full strength (budget=paper), batch DATA_BATCH: batching, crop and flip,
    RandAugment, erasing, MixUp/CutMix, channels-last. None if the data is missing."""
    run = validate(compose("separate_downsampling", "budget=paper", f"recipe.batch_size={DATA_BATCH}"))
    try:
        data = Data(run.data, run.recipe, run.seed, Machine(0, 1, 0, device), DATA_BATCH)
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
        return batches * DATA_BATCH / (time.perf_counter() - t)

    return images_per_s


COUNTED_REGIMES = ("r50", "r200")  # the regimes whose every step time_counting composes and counts


def time_counting() -> float:
    """Seconds to compose and count params + MACs of every step of r50 and r200."""
    t = time.perf_counter()
    for regime in COUNTED_REGIMES:
        count_steps(STEPS, f"regime={regime}", "data=imagenet", resolution=224)
    return time.perf_counter() - t


# ----------------------------------------------------------------------------- the run


@dataclass
class Rates:
    """The machine's own rates, timed once per repetition beside the networks."""

    time_matmul: Callable[[], float]
    """One timing of the dense matrix product (GFLOP/s)."""
    time_data: Optional[Callable[[int], float]]
    """Images/s of that many batches of the data pipeline (None: no data here, or not asked)."""
    matmul: List[float] = field(default_factory=list)
    """The matrix product's rate, one figure per repetition."""
    data: List[float] = field(default_factory=list)
    """The data pipeline's images/s, one figure per repetition of the micro regime."""

    def data_img_s(self) -> Optional[float]:
        """The data pipeline's median images/s (None: not measured)."""
        return statistics.median(self.data) if self.data else None


def benchmark(cfg: BenchConfig) -> BenchResult:
    """Measure everything `cfg` asks for, regime by regime (all of r50 with its optimizer state is ~7 GB)."""
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
    rates = Rates(matmul_gflops(device), data_pipeline(device) if cfg.data and "micro" in cfg.regimes else None)
    measured: List[Measured] = []
    for regime in cfg.regimes:
        measured += time_regime(regime, [e for e in todo if e.network.regime == regime], device, cfg, rates)
    return BenchResult(measured, statistics.median(rates.matmul), rates.data_img_s(), counting,
                       len(COUNTED_REGIMES) * len(STEPS), study)


def time_regime(regime: str, group: List[Entry], device: torch.device, cfg: BenchConfig,
                rates: Rates) -> List[Measured]:
    """One regime's networks, prepared together and timed in interleaved repetitions, so
    that every network sees the machine in the same states."""
    prepared = [prepare(e, device, cfg) for e in group]
    for rep in range(cfg.reps):
        rates.matmul.append(rates.time_matmul())
        if rates.time_data is not None and regime == "micro":
            rates.data.append(rates.time_data(20))
        for runner, m, (it, ii) in prepared:
            m.train_s.append(runner.seconds(runner.train_step, it))
            m.infer_s.append(runner.seconds(runner.infer_step, ii))
        print(f"  {regime}: repetition {rep + 1}/{cfg.reps} done", flush=True)
    return [m for _, m, _ in prepared]


def prepare(e: Entry, device: torch.device, cfg: BenchConfig) -> Tuple[Runner, Measured, Tuple[int, int]]:
    """Build, check, warm up and size one network's measurement: its runner, its record and
    its (train, inference) steps per repetition."""
    resolution, batch = SHAPES[cfg.device][e.network.regime]
    r = Runner(e, device, resolution)
    params = sum(p.numel() for p in r.state.model.parameters())
    gmacs = complexity(e.run.model, resolution).gmacs
    same = same_network(ConvNet(e.run.model), r.state.model) if e.network.reference else None
    for _ in range(2):
        r.train_step()
        r.infer_step()
    m = Measured(e.network, resolution, batch, params, gmacs, r.peak_memory_mb(), same)
    t_train, t_infer = r.seconds(r.train_step, 1), r.seconds(r.infer_step, 1)
    iters = (max(1, round(cfg.seconds / t_train)), max(1, round(cfg.seconds / t_infer)))
    print(f"  ready {e.network.regime:5s} {e.network.impl:11s} {e.network.label}", flush=True)
    return r, m, iters


# ----------------------------------------------------------------------------- the command


def parse_config(argv: List[str]) -> BenchConfig:
    """The options of `python -m roadmap.bench`, checked (ConfigError, one line)."""
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
        cfg = parse_config(argv)
        try:
            Path(cfg.out).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"out={cfg.out} cannot be created ({e.strerror}): choose a writable directory") from e
    result = benchmark(cfg)
    text = report(result, cfg.device, cfg.reps, " ".join(["python -m roadmap.bench", *argv]))
    print(text)
    for path in write_bench(result, Path(cfg.out), cfg.device, text):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
