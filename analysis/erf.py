"""The effective receptive field (ERF) of every step, from the runs' own checkpoints.

    python -m analysis.erf                         # every study under runs/ and experiments/ that keeps checkpoints
    python -m analysis.erf STUDY [--out DIR] [--images 50] [--scale 4]

RepLKNet's measurement (Ding et al., Scaling Up Your Kernels to 31x31, CVPR 2022; its
erf/visualize_erf.py and erf/analyze_erf.py): test images resized to `scale` times the
training size (128 px for 32-px networks, so that borders do not clip the field); the sum of
the last stage's channels at its centre position, after a ReLU, differentiated with respect
to the input; the gradient's ReLU summed over channels and averaged over the images. Its
size: the side of the smallest centred square that holds 20%, 50% and 99% of the map's mass
(sides 1, 3, 5, ... px at the measuring size), and that square's share of the input's area.

Two choices differ from analyze_erf.py, both so that steps compare on the field's width
alone. The mass is the gradient's own, not log10(1 + gradient) (a log of an unnormalised
gradient depends on its scale, which norms and widths change). The squares are centred on the
map's centre of mass, not the image's centre: the field of the centre output sits at pixel 64
of a 128-px input for a network that strides with centred 3x3 convs (the ResNet steps) but at
79.5 for one that strides with 4x4 patches and 2x2 convs (ConvNeXt's), and a square fixed on
the image's centre would charge the latter 15 px for where its field sits.

Writes into --out (default <study>/figures): erf.md and erf.csv (per step: the mean and 95%
t-interval over seeds of each size, and the change of the 50% side from the step each builds
on, paired per seed), erf_runs.csv (per run; roadmap.results merges its 50% side into the
study's table.md as the `ERF 50%` column), and erf.png/.pdf (a row of heat maps along the path,
each the mean over seeds of the runs' normalised maps, over the sides per step).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.colors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from analysis import checkpoints, design_figures, plots  # noqa: E402
from roadmap.augment import prepare_eval  # noqa: E402
from roadmap.config import SIDE_BRANCHES  # noqa: E402
from roadmap.tables import markdown_lines  # noqa: E402

FRACTIONS = (0.2, 0.5, 0.99)
IMAGES = 50
SCALE = 4


def label(fraction: float) -> str:
    return f"erf{round(100 * fraction)}"


def last_stage(model) -> Callable[[torch.Tensor], torch.Tensor]:
    """A roadmap ConvNet's last stage's feature map (before pooling, the head norm and the classifier)."""
    return lambda x: model.stages(model.stem_norm(model.stem(x)))


def erf_map(features: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """RepLKNet's get_input_grad, summed over a batch: the ReLU of the gradient of the sum of
    ReLU(features) at the centre position with respect to each input, summed over channels
    and images, (H, W). In eval mode the images do not interact, so one backward pass gives
    every image's own gradient."""
    x = images.detach().clone().requires_grad_(True)
    out = features(x)
    h, w = out.shape[-2:]
    centre = F.relu(out[:, :, h // 2, w // 2]).sum()
    (grad,) = torch.autograd.grad(centre, x)
    return F.relu(grad).sum((0, 1)).detach()


def centre_of_mass(m: torch.Tensor) -> Tuple[int, int]:
    """The map's centre of mass, to the nearest pixel (the image's centre for an empty map)."""
    h, w = m.shape
    total = float(m.sum())
    if total <= 0:
        return h // 2, w // 2
    y = float((m.sum(1) * torch.arange(h, dtype=m.dtype)).sum()) / total
    x = float((m.sum(0) * torch.arange(w, dtype=m.dtype)).sum()) / total
    return int(round(y)), int(round(x))


def square_side(m: torch.Tensor, fraction: float, centre: Optional[Tuple[int, int]] = None) -> float:
    """The side (px) of the smallest square of odd side, centred on `centre` (default: the
    map's centre of mass) and clipped to the map, that holds `fraction` of its mass; nan for
    a map without mass."""
    h, w = m.shape
    total = float(m.sum())
    if total <= 0:
        return float("nan")
    cy, cx = centre if centre is not None else centre_of_mass(m)
    for i in range(max(h, w) + 1):
        box = m[max(cy - i, 0):cy + i + 1, max(cx - i, 0):cx + i + 1]
        if float(box.sum()) >= fraction * total * (1 - 1e-9):
            return float(min(2 * i + 1, max(h, w)))
    return float(max(h, w))


def sizes(m: torch.Tensor, fractions: Sequence[float] = FRACTIONS) -> Dict[str, float]:
    """Side (px) and area ratio of the centred square holding each fraction of the map's mass."""
    h, w = m.shape
    centre = centre_of_mass(m)
    out: Dict[str, float] = {"centre_y": centre[0], "centre_x": centre[1]}
    for f in fractions:
        side = square_side(m, f, centre)
        out[f"{label(f)}_side"] = side
        out[f"{label(f)}_area"] = min(side, h) * min(side, w) / (h * w)
    return out


def inputs(images: torch.Tensor, side: int, mean, std) -> torch.Tensor:
    """uint8 test images resized (bilinear) to side x side, normalised as for evaluation."""
    x = F.interpolate(images.float(), size=(side, side), mode="bilinear", align_corners=False)
    return prepare_eval(x.round().clamp(0, 255), mean, std)


def measure_run(run: Path, count: int, scale: int) -> Tuple[Dict[str, float], torch.Tensor]:
    """One run's ERF sizes and its map (normalised to sum 1)."""
    model, data = checkpoints.load_network(run)
    test = checkpoints.test_images(data, count)
    side = data.image_size * scale
    m = erf_map(last_stage(model), inputs(test.images, side, data.mean, data.std)) / len(test)
    return {"size": side, "images": len(test), **sizes(m)}, m / m.sum().clamp_min(1e-30)


def measure_erf(study: Path, out: Path, args: argparse.Namespace) -> List[Path]:
    """Every measurable run of a study: erf_runs.csv, erf.csv, erf.md and the figure, into `out`."""
    runs = checkpoints.measurable(study)
    rows, maps = [], {}
    for _, r in runs.iterrows():
        values, m = measure_run(Path(r["run_dir"]), args.images, args.scale)
        rows.append({"run": r["run"], "step": r["step"], "seed": int(r["seed"]), **values})
        maps.setdefault(r["step"], []).append(m)
    measured = pd.DataFrame(rows)
    runs = runs.merge(measured.drop(columns=["step", "seed"]), on="run")
    columns = [f"{label(f)}_{k}" for f in FRACTIONS for k in ("side", "area")]
    table = checkpoints.per_step(runs, columns)
    mean_maps = {s: torch.stack(ms).mean(0) for s, ms in maps.items()}
    written = checkpoints.write(out, {"erf_runs.csv": measured.to_csv(index=False),
                                      "erf.csv": table.to_csv(index=False),
                                      "erf.md": erf_markdown(table, measured, str(study))})
    return written + erf_figure(table, mean_maps, measured, out, str(study))


def erf_markdown(table: pd.DataFrame, measured: pd.DataFrame, study: str) -> str:
    size, images = int(measured["size"].iloc[0]), int(measured["images"].iloc[0])
    lines = [f"# Effective receptive field per step: {Path(study).name}", "",
             f"{images} test images (a fixed subset, seed 0) resized to {size} px; RepLKNet's gradient map of the "
             "last stage's centre; the side (px, at that size) of the smallest square around the map's centre of "
             "mass that holds 20%, 50% and 99% of its mass, and the 50% square's share of the input's area. Mean "
             "[95% t-interval] over seeds; Δ: the change of the 50% side from the step each builds on, paired per "
             "seed (* the interval excludes zero).", ""]
    head = ["step", "seeds", "ERF 20% (px)", "ERF 50% (px)", "ERF 99% (px)", "50% area ratio", "Δ ERF 50% (px)"]
    cell = checkpoints.cell
    cells = [[f"{r['step']}", f"{int(r['erf50_side_seeds'])}", cell(r, "erf20_side"), cell(r, "erf50_side"),
              cell(r, "erf99_side"), cell(r, "erf50_area", ".3f"), checkpoints.change_cell(r, "erf50_side")]
             for _, r in table.iterrows()]
    return "\n".join(lines + markdown_lines(head, cells)) + "\n"


def erf_figure(table: pd.DataFrame, maps: Dict[str, torch.Tensor], measured: pd.DataFrame, out: Path,
           study: str) -> List[Path]:
    """A row of heat maps along the path (log scale, each normalised; the 50% square drawn),
    and below it the sides per step with their intervals."""
    steps = [s for s in table["step"] if s in maps]
    fig = plt.figure(figsize=(max(1.15 * len(steps), 6), 4.6))
    grid = fig.add_gridspec(2, len(steps), height_ratios=[1, 1.25], hspace=0.15, wspace=0.08)
    norm = matplotlib.colors.LogNorm(vmin=1e-3, vmax=1)
    for i, step in enumerate(steps):
        ax = fig.add_subplot(grid[0, i])
        m = maps[step] / maps[step].max().clamp_min(1e-30)
        ax.imshow(m.clamp_min(1e-3).numpy(), cmap="magma", norm=norm)
        row = table[table["step"] == step].iloc[0]
        side, (cy, cx) = row["erf50_side_mean"], centre_of_mass(maps[step])
        if pd.notna(side):
            ax.add_patch(plt.Rectangle((cx - side / 2, cy - side / 2), side, side, fill=False, ec="#7fdbff", lw=0.8))
        ax.set_title(f"{plots._number(step)} {step}", fontsize=6.5, rotation=30, ha="left", loc="left")
        ax.set_xticks([])
        ax.set_yticks([])
    sides_plot(fig.add_subplot(grid[1, :]), table, steps)
    size = int(measured["size"].iloc[0])
    fig.suptitle(f"Effective receptive field along the path: {Path(study).name} ({size}-px inputs; the 50% square "
                 "outlined)", fontsize=10, y=1.04)
    return design_figures.save(fig, out, "erf")


def sides_plot(ax, table: pd.DataFrame, steps: Sequence[str]) -> None:
    x = list(range(len(steps)))
    t = table.set_index("step").loc[list(steps)]
    for f, colour in zip(FRACTIONS, ("#2ca02c", "#1f77b4", "#d62728")):
        c = f"{label(f)}_side"
        err = [(t[f"{c}_mean"] - t[f"{c}_lo"]).fillna(0), (t[f"{c}_hi"] - t[f"{c}_mean"]).fillna(0)]
        ax.errorbar(x, t[f"{c}_mean"], yerr=err, fmt="-o", ms=3, capsize=2, color=colour, lw=1,
                    label=f"{round(100 * f)}% of the mass")
    for xi, step in zip(x, steps):
        if step in SIDE_BRANCHES:
            ax.axvspan(xi - 0.4, xi + 0.4, color="#eeeeee", zorder=0)
    ax.set_xticks(x)
    ax.set_xticklabels([plots._number(s) for s in steps], fontsize=7)
    ax.set_xlim(-0.5, len(steps) - 0.5)
    ax.set_xlabel("step (grey: side branch, not adopted)", fontsize=8)
    ax.set_ylabel("side of the centred square (px)", fontsize=8)
    ax.legend(fontsize=7, ncol=3, loc="upper left")
    ax.grid(alpha=0.3)


def erf_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=IMAGES, help=f"test images averaged per run (default "
                        f"{IMAGES}, RepLKNet's; a fixed subset drawn with seed 0)")
    parser.add_argument("--scale", type=int, default=SCALE, help=f"the input's side as a multiple of the training "
                        f"size (default {SCALE}: 128 px for 32-px networks)")


check = checkpoints.at_least({"images": 1, "scale": 1, "threads": 1})


def main(argv: Sequence[str] = ()) -> None:
    checkpoints.main(argv, "python -m analysis.erf", __doc__, measure_erf, erf_options, check)


if __name__ == "__main__":
    main(sys.argv[1:])
