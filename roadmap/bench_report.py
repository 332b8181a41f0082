"""What the benchmark measured, and how it reads: the records of one run (which network,
its size, its timings per repetition), the targets it is held to, the table and the
verdicts. `roadmap.bench` measures and fills these; nothing here measures."""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from roadmap.machine import describe
from roadmap.tables import markdown_lines
from roadmap.wall_time import StudyProjection

# The dense matrix product whose rate is the machine's limit, per device: (number format, side).
MATMUL = {"cpu": ("fp32", 2048), "cuda": ("bf16", 8192)}
DATA_BATCH = 256  # images per batch of the timed data pipeline
PAPER_A100_CONVNEXT_T = 1943.5  # img/s, inference, A100, TF32, channels-last (Table 1)


@dataclass(frozen=True)
class Target:
    """One figure the benchmark holds the code to: the bound, and why it matters."""

    name: str
    """What is held to it."""
    threshold: float
    """The bound a measured figure must reach (or stay under, `at_most`)."""
    unit: str
    """How the threshold reads: "" a ratio (1.0), "%" a share (35%), "x" a multiple (10x), "s" seconds (5 s)."""
    why: str
    """What meeting it shows."""
    at_most: bool = False
    """Met at or below the threshold (a time), else at or above it."""

    def met(self, value: float) -> bool:
        """Whether a measured figure meets the target."""
        return value <= self.threshold if self.at_most else value >= self.threshold

    @property
    def shown(self) -> str:
        """The threshold as the report writes it."""
        return {"": f"{self.threshold:.1f}", "%": f"{self.threshold:.0%}", "x": f"{self.threshold:g}x",
                "s": f"{self.threshold:g} s"}[self.unit]

    @property
    def text(self) -> str:
        """'target >= 35%', as a verdict line quotes it."""
        return f"target {'<=' if self.at_most else '>='} {self.shown}"


TARGETS: Tuple[Target, ...] = (
    Target("ours_over_reference", 1.0, "", "the generator's networks train and infer as fast as torchvision's and "
           "timm's implementations of the same networks: generality costs nothing"),
    Target("r50_matmul_share", 0.35, "%", "every r50 step trains at a fair share of the machine's dense matmul rate: "
           "no step loses its time to overhead around the convolutions"),
    Target("data_over_training", 10, "x", "the data pipeline (full augmentation) outruns the fastest micro network's "
           "training tenfold: the trainer never waits for data"),
    Target("counting_s", 5, "s", "counting every step of r50 and r200 stays interactive (make inspect, the tests)",
           at_most=True),
)
TARGET: Dict[str, Target] = {t.name: t for t in TARGETS}


@dataclass(frozen=True)
class BenchedNetwork:
    """Which network a row of the table is."""

    regime: str
    """micro, r50 or r200."""
    name: str
    """The step (a reference: the step of ours it is the same network as)."""
    impl: str
    """roadmap, torchvision or timm."""
    compiled: bool = False
    """Timed under torch.compile (device=cuda only)."""

    @property
    def reference(self) -> bool:
        """A reference implementation, compared with ours."""
        return self.impl != "roadmap"

    @property
    def ours(self) -> BenchedNetwork:
        """Our network this one is compared with (itself, for ours)."""
        return dataclasses.replace(self, impl="roadmap")

    @property
    def label(self) -> str:
        """The step, marked when compiled."""
        return f"{self.name}{' (compiled)' if self.compiled else ''}"


@dataclass
class Measured:
    """One network's measurement: its size, and its seconds per step in every repetition."""

    network: BenchedNetwork
    """Which network."""
    resolution: int
    """The side of its square input (px)."""
    batch: int
    """Images per step."""
    params: int
    """Parameters."""
    gmacs: float
    """Forward multiply-accumulates of one image, in billions (roadmap.complexity)."""
    peak_memory_mb: float
    """Peak memory of one training step of this network alone (MiB)."""
    same_network: Optional[bool] = None
    """A reference: whether our importer loads its weights strictly into ours (None for ours)."""
    train_s: List[float] = field(default_factory=list)
    """Seconds per training step, one figure per repetition."""
    infer_s: List[float] = field(default_factory=list)
    """Seconds per inference step, one figure per repetition."""

    @property
    def train_img_s(self) -> float:
        """Training images per second, from the median repetition."""
        return self.batch / statistics.median(self.train_s)

    @property
    def infer_img_s(self) -> float:
        """Inference images per second, from the median repetition."""
        return self.batch / statistics.median(self.infer_s)

    @property
    def train_gflop_s(self) -> float:
        """The training FLOP rate: 6 x MACs per image (forward + backward) x images per second."""
        return 6 * self.gmacs * self.train_img_s


@dataclass(frozen=True)
class Ratio:
    """Ours against a reference on one task, train or inference (above 1: ours is faster)."""

    median: float
    """Our images per second over theirs, each from its median repetition."""
    low: float
    """The lowest ratio of one repetition (theirs and ours are timed in the same pass)."""
    high: float
    """The highest ratio of one repetition."""


@dataclass
class BenchResult:
    """What one run of the benchmark measured."""

    measured: List[Measured]
    """Every network, in the table's order."""
    matmul_gflops: float
    """The dense matrix product's rate (MATMUL), median over repetitions (GFLOP/s)."""
    data_img_s: Optional[float] = None
    """The data pipeline's images per second (None: not measured)."""
    counting_s: Optional[float] = None
    """Seconds to compose and count every step of r50 and r200 (None: not measured)."""
    counted_steps: int = 0
    """How many networks that count counted."""
    study: Optional[StudyProjection] = None
    """The default study's projected wall time (None: not projected)."""

    def matmul_share(self, m: Measured) -> float:
        """A network's training FLOP rate as a share of the dense matmul rate."""
        return m.train_gflop_s / self.matmul_gflops

    def ratios(self, m: Measured) -> Optional[Tuple[Ratio, Ratio]]:
        """A reference's (train, inference) ratios against ours; None for ours."""
        if not m.network.reference:
            return None
        ours = next(o for o in self.measured if o.network == m.network.ours)
        return (_ratio(ours.train_img_s / m.train_img_s, m.train_s, ours.train_s),
                _ratio(ours.infer_img_s / m.infer_img_s, m.infer_s, ours.infer_s))


def _ratio(median: float, theirs_s: Sequence[float], ours_s: Sequence[float]) -> Ratio:
    per_repetition = [t / o for t, o in zip(theirs_s, ours_s)]
    return Ratio(median, min(per_repetition), max(per_repetition))


# ----------------------------------------------------------------------------- the table

# (csv column, heading, format) of each column of the table
COLUMNS = [
    ("regime", "regime", "{}"), ("network", "network", "{}"), ("impl", "implementation", "{}"),
    ("params_m", "params (M)", "{:.2f}"), ("gmacs", "GMACs", "{:.4g}"), ("batch", "batch", "{}"),
    ("train_img_s", "train img/s", "{:.0f}"), ("infer_img_s", "infer img/s", "{:.0f}"),
    ("train_gflop_s", "train GFLOP/s", "{:.1f}"), ("matmul_pct", "% of matmul", "{:.0f}%"),
    ("peak_memory_mb", "peak MB", "{:.0f}"), ("ratio_train", "ours/this train", "{:.2f}"),
    ("ratio_infer", "ours/this infer", "{:.2f}"),
]


def table_rows(result: BenchResult) -> List[Dict]:
    """One row per network, keyed by COLUMNS' csv names (bench_<device>.csv)."""
    out = []
    for m in result.measured:
        n, ratios = m.network, result.ratios(m)
        name = n.label if not n.reference else f"{n.label} (same network: {'yes' if m.same_network else 'NO'})"
        out.append({"regime": f"{n.regime} @{m.resolution}", "network": name, "impl": n.impl,
                    "params_m": m.params / 1e6, "gmacs": m.gmacs, "batch": m.batch, "train_img_s": m.train_img_s,
                    "infer_img_s": m.infer_img_s, "train_gflop_s": m.train_gflop_s,
                    "matmul_pct": 100 * result.matmul_share(m), "peak_memory_mb": m.peak_memory_mb,
                    "ratio_train": ratios[0].median if ratios else None,
                    "ratio_infer": ratios[1].median if ratios else None})
    return out


def table_markdown(table: List[Dict]) -> str:
    """The table as Markdown, empty cells where a row has no value."""
    cells = [["" if row[k] is None else fmt.format(row[k]) for k, _, fmt in COLUMNS] for row in table]
    return "\n".join(markdown_lines([title for _, title, _ in COLUMNS], cells))


# ----------------------------------------------------------------------------- the verdicts


def verdict(ok: bool) -> str:
    """How every target line ends."""
    return "PASS" if ok else "MISS"


def target_lines(result: BenchResult, device: str) -> List[str]:
    """The targets, each with the measured figure and PASS or MISS."""
    number, side = MATMUL[device]
    lines = [f"dense matmul ({number} {side}^2): {result.matmul_gflops:.1f} GFLOP/s (median)"]
    lines += [reference_line(result, m) for m in result.measured
              if m.network.reference and m.network.regime in ("micro", "r50")]
    ours = [m for m in result.measured if not m.network.reference]
    r50 = [m for m in ours if m.network.regime == "r50" and not m.network.compiled]
    if r50 and device == "cpu":
        lines.append(matmul_line(result, r50))
    lines += data_and_counting_lines(result)
    if device == "cuda":
        lines += [f"ConvNeXt-T inference{' (compiled)' if m.network.compiled else ''}: {m.infer_img_s:.0f} img/s, "
                  f"paper (A100, TF32): {PAPER_A100_CONVNEXT_T} img/s" for m in ours
                  if (m.network.regime, m.network.name) == ("r50", "separate_downsampling")]
    return lines


def reference_line(result: BenchResult, m: Measured) -> str:
    """Ours against one reference, both tasks, with the per-repetition ranges."""
    target, n = TARGET["ours_over_reference"], m.network
    train, infer = result.ratios(m)  # type: ignore[misc]
    ok = target.met(train.median) and target.met(infer.median)
    within = not ok and all(target.met(r.high) for r in (train, infer) if not target.met(r.median))
    return (f"ours / {n.impl} {n.name} ({n.regime}{', compiled' if n.compiled else ''}): "
            f"train {train.median:.2f} ({train.low:.2f}-{train.high:.2f}), inference "
            f"{infer.median:.2f} ({infer.low:.2f}-{infer.high:.2f}) ({target.text}, per-repetition "
            f"range in brackets): {verdict(ok)}{f' ({target.shown} is inside the run-to-run range)' if within else ''}")


def matmul_line(result: BenchResult, r50: List[Measured]) -> str:
    """r50's lowest and median training FLOP rate against the matmul rate."""
    target = TARGET["r50_matmul_share"]
    worst = min(r50, key=result.matmul_share)
    median = statistics.median(result.matmul_share(m) for m in r50)
    return (f"r50 training FLOP rate: lowest {100 * result.matmul_share(worst):.0f}% of matmul "
            f"({worst.network.name}), median {100 * median:.0f}% ({target.text}): "
            f"{verdict(target.met(result.matmul_share(worst)))}")


def data_and_counting_lines(result: BenchResult) -> List[str]:
    """The data pipeline against the fastest micro training, and the time to count every step."""
    lines = []
    micro = [m for m in result.measured if m.network.regime == "micro" and not m.network.reference]
    if result.data_img_s is not None and micro:
        target = TARGET["data_over_training"]
        fastest = max(micro, key=lambda m: m.train_img_s)
        ratio = result.data_img_s / fastest.train_img_s
        lines.append(f"data pipeline (Fashion-MNIST, convnext recipe augmentation, batch {DATA_BATCH}): "
                     f"{result.data_img_s:.0f} img/s = {ratio:.1f}x the fastest micro training "
                     f"({fastest.network.name}, {fastest.train_img_s:.0f} img/s) "
                     f"({target.text}): {verdict(target.met(ratio))}")
    elif micro:
        lines.append("data pipeline: not measured (no Fashion-MNIST here: make data)")
    if result.counting_s is not None:
        target = TARGET["counting_s"]
        lines.append(f"compose + count params and MACs of all {result.counted_steps} steps of r50 and r200: "
                     f"{result.counting_s:.2f} s ({target.text}): {verdict(target.met(result.counting_s))}")
    return lines


# ----------------------------------------------------------------------------- the report


def report(result: BenchResult, device: str, reps: int, command: str) -> str:
    """The whole report, as printed and written to bench_<device>.md."""
    lines = [f"Machine: {describe(torch.device(device), 'timm')}", f"Command: `{command}`",
             "Train step: the trainer's (forward, cross-entropy, backward, the step's optimizer and schedule: "
             f"roadmap.engine.optimizer_step); {'bf16 autocast, ' if device == 'cuda' else ''}"
             f"channels-last; median of {reps} interleaved repetitions.", "",
             table_markdown(table_rows(result)), "", *[f"- {t}" for t in target_lines(result, device)]]
    if result.study is not None:
        lines += ["", *study_lines(result.study)]
    return "\n".join(lines) + "\n"


def study_lines(study: StudyProjection) -> List[str]:
    """The default study's projected wall time both ways, and the rates behind it."""
    n, cores, epochs = len(study.alone), study.cores, study.epochs
    old, new = study.alone_s, study.side_by_side_s
    head = ["step", f"train img/s, alone ({cores} threads)", "test img/s, alone", "train img/s, side by side (each)",
            "test img/s, side by side (each)"]
    cells = [[a.step, f"{a.train_img_s:.0f}", f"{a.test_img_s:.0f}", f"{b.train_img_s:.0f}", f"{b.test_img_s:.0f}"]
             for a, b in zip(study.alone, study.shared)]
    return [f"Default study ({n} runs of {epochs} epochs, Fashion-MNIST 60k train / 10k test), projected wall time: "
            f"one run at a time on {cores} threads {old / 60:.1f} min; {cores} runs side by side, 1 thread each "
            f"{new / 60:.1f} min ({new / old:.2f}x).", "", *markdown_lines(head, cells)]


def write_bench(result: BenchResult, out: Path, device: str, text: str) -> List[Path]:
    """The report and the table into `out`: bench_<device>.md and .csv."""
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    md, csv = out / f"bench_{device}.md", out / f"bench_{device}.csv"
    md.write_text(text)
    pd.DataFrame(table_rows(result)).to_csv(csv, index=False)
    return [md, csv]
