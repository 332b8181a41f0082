"""Corruption robustness of every step, from the runs' own checkpoints.

    python -m analysis.robustness                  # every study under runs/ and experiments/ that keeps checkpoints
    python -m analysis.robustness STUDY [--out DIR] [--images 500] [--reference resnet]

Every measurable run (completed, with its checkpoint.pt) is evaluated on a fixed subset of
its test set (`--images`, drawn once with seed 0) and on corrupted copies of it: the ImageNet-C
families that apply to grey images (analysis/corruptions.py: CIFAR-10-C's parameters from
hendrycks' make_cifar_c.py, implemented in torch), 5 severities each, the same corrupted images
for every run. Families that cannot apply are listed as skipped, never replaced.

Following Hendrycks and Dietterich (ICLR 2019), with the `--reference` step in AlexNet's place
(its errors averaged over its seeds):
  E(c, s)       top-1 error (%) under corruption c at severity s; E(clean) on the same images;
  CE(c)         100 x sum_s E(c, s) / sum_s E_ref(c, s);       mCE: the mean of CE over c;
  rel. CE(c)    100 x sum_s (E(c, s) - E(clean)) / sum_s (E_ref(c, s) - E_ref(clean)); relative mCE.
Lower is more robust; the reference step scores 100 on average.

Writes into --out (default <study>/figures): robustness.md and robustness.csv (per step: clean
error, mCE and relative mCE with their 95% t-intervals over seeds and their changes from the step
each builds on, paired per seed; CE per family), robustness_runs.csv (per run, every error;
roadmap.results merges its mCE into the study's table.md), and robustness.png/.pdf (mCE along
the path beside top-1, and CE per family). A run whose checkpoint has not changed since its
row in robustness_runs.csv was written (same size and time, same settings) is not evaluated again.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from analysis import checkpoints, corruptions, design_figures, plots  # noqa: E402
from roadmap import rundir  # noqa: E402
from roadmap.augment import prepare_eval  # noqa: E402
from roadmap.config import SIDE_BRANCHES  # noqa: E402
from roadmap.errors import ResultsError  # noqa: E402
from roadmap.tables import markdown_lines  # noqa: E402

IMAGES = 500
REFERENCE = "resnet"
SEED = 0
BATCH = 1000
SETTINGS = ("images", "corruption_seed")


def error_column(name: str, severity: int) -> str:
    return f"err.{name}.{severity}"


def ce(errors: Mapping[int, float], reference: Mapping[int, float]) -> float:
    """Corruption error of one family: 100 x the sum over severities of the errors over the reference's."""
    return 100.0 * sum(errors.values()) / sum(reference[s] for s in errors)


def relative_ce(errors: Mapping[int, float], clean: float, reference: Mapping[int, float], ref_clean: float) -> float:
    """Relative corruption error: the errors' rise over clean, against the reference's rise
    (nan where the reference's errors do not rise)."""
    rise = sum(reference[s] - ref_clean for s in errors)
    return 100.0 * sum(e - clean for e in errors.values()) / rise if rise else float("nan")


def mce(errors: Mapping[str, Mapping[int, float]], reference: Mapping[str, Mapping[int, float]]) -> float:
    """Mean corruption error over the families: `errors[c][s]` against `reference[c][s]` (%)."""
    return sum(ce(errors[c], reference[c]) for c in errors) / len(errors)


def relative_mce(errors: Mapping[str, Mapping[int, float]], clean: float,
                 reference: Mapping[str, Mapping[int, float]], ref_clean: float) -> float:
    return sum(relative_ce(errors[c], clean, reference[c], ref_clean) for c in errors) / len(errors)


@torch.no_grad()
def top1_errors(model, sets: Dict[str, torch.Tensor], labels: torch.Tensor, mean, std) -> Dict[str, float]:
    """Top-1 error (%) of a network on every image set (uint8, (N, C, H, W)), channels-last,
    normalised as roadmap.engine.evaluate does."""
    model = model.to(memory_format=torch.channels_last)
    names = list(sets)
    stacked = torch.cat([sets[n] for n in names])
    wrong = []
    for start in range(0, len(stacked), BATCH):
        x = prepare_eval(stacked[start:start + BATCH], mean, std).contiguous(memory_format=torch.channels_last)
        wrong.append(model(x).argmax(1) != labels.repeat(len(names))[start:start + BATCH])
    wrong = torch.cat(wrong).view(len(names), len(labels)).float()
    return {n: 100.0 * float(w.mean()) for n, w in zip(names, wrong)}


def image_sets(images: torch.Tensor, seed: int) -> Dict[str, torch.Tensor]:
    """The clean images and every family at every severity, by column name."""
    sets = {"clean_error": images}
    sets.update({error_column(c, s): x for (c, s), x in corruptions.corrupted_sets(images, seed).items()})
    return sets


def fingerprint(run: Path) -> str:
    """The checkpoint's size and modification time: a row measured from it is reused while it is unchanged."""
    st = (Path(run) / rundir.CHECKPOINT).stat()
    return f"{st.st_size}-{st.st_mtime_ns}"


def previous(out: Path) -> pd.DataFrame:
    """The rows measured before, from robustness_runs.csv in `out` (none when unreadable)."""
    try:
        return pd.read_csv(out / "robustness_runs.csv").set_index("run")
    except (OSError, ValueError, KeyError, pd.errors.ParserError):
        return pd.DataFrame()


def reused(before: pd.DataFrame, run: str, stamp: str, settings: Dict[str, int]) -> Optional[Dict[str, float]]:
    """A run's errors from an earlier row, where its checkpoint and the settings are the same."""
    if run not in before.index or "checkpoint" not in before.columns:
        return None
    row = before.loc[run]
    columns = ["clean_error", *(error_column(c, s) for c in corruptions.FAMILIES for s in corruptions.SEVERITIES)]
    if str(row["checkpoint"]) != stamp or any(row.get(k) != v for k, v in settings.items()):
        return None
    if any(c not in row.index or pd.isna(row[c]) for c in columns):
        return None
    return {c: float(row[c]) for c in columns}


def corrupted(data, args: argparse.Namespace, cache: Dict) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """The labels and image sets of a run's data (made once per data set and size)."""
    key = (data.source, data.root, data.image_size, data.resize, data.channels)
    if key not in cache:
        test = checkpoints.test_images(data, args.images)
        cache[key] = (test.labels, image_sets(test.images, args.seed))
    return cache[key]


def evaluate_runs(runs: pd.DataFrame, out: Path, args: argparse.Namespace) -> pd.DataFrame:
    """Every run's errors (clean and per family and severity), reusing unchanged rows."""
    before, cache = previous(out), {}
    settings = {"images": args.images, "corruption_seed": args.seed}
    rows, fresh, started = [], 0, time.perf_counter()
    for _, r in runs.iterrows():
        stamp = fingerprint(Path(r["run_dir"]))
        errors = reused(before, r["run"], stamp, settings)
        if errors is None:
            model, data = checkpoints.load_network(Path(r["run_dir"]))
            labels, sets = corrupted(data, args, cache)
            errors, fresh = top1_errors(model, sets, labels, data.mean, data.std), fresh + 1
        rows.append({"run": r["run"], "step": r["step"], "seed": int(r["seed"]), "checkpoint": stamp, **settings,
                     **errors})
    print(f"evaluated {fresh} of {len(rows)} runs on {1 + len(corruptions.FAMILIES) * 5} sets of {args.images} "
          f"images in {time.perf_counter() - started:.0f} s ({len(rows) - fresh} unchanged since the last time)")
    return pd.DataFrame(rows)


def scores(measured: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Each run's CE per family, mCE, relative CE and relative mCE against the reference step's
    errors averaged over its seeds."""
    ref_rows = measured[measured["step"] == reference]
    if ref_rows.empty:
        raise ResultsError(f"no measured run of the reference step {reference} (steps measured: "
                           f"{', '.join(dict.fromkeys(measured['step']))}): choose one with --reference")
    ref = ref_rows.mean(numeric_only=True)
    families, out = list(corruptions.FAMILIES), measured.copy()
    grid = {c: {s: ref[error_column(c, s)] for s in corruptions.SEVERITIES} for c in families}
    for i, r in measured.iterrows():
        errors = {c: {s: r[error_column(c, s)] for s in corruptions.SEVERITIES} for c in families}
        for c in families:
            out.loc[i, f"ce.{c}"] = ce(errors[c], grid[c])
            out.loc[i, f"relative_ce.{c}"] = relative_ce(errors[c], r["clean_error"], grid[c], ref["clean_error"])
        out.loc[i, "mce"] = mce(errors, grid)
        out.loc[i, "relative_mce"] = relative_mce(errors, r["clean_error"], grid, ref["clean_error"])
    return out


def measure_robustness(study: Path, out: Path, args: argparse.Namespace) -> List[Path]:
    """Every measurable run of a study: robustness_runs.csv, robustness.csv, robustness.md and
    the figure, into `out`."""
    runs = checkpoints.measurable(study)
    measured = scores(evaluate_runs(runs, out, args), args.reference)
    runs = runs.merge(measured.drop(columns=["step", "seed"]), on="run")
    families = list(corruptions.FAMILIES)
    table = checkpoints.per_step(runs, ["top1", "clean_error", "mce", "relative_mce", *(f"ce.{c}" for c in families)])
    written = checkpoints.write(out, {"robustness_runs.csv": measured.to_csv(index=False),
                                      "robustness.csv": table.to_csv(index=False),
                                      "robustness.md": robustness_markdown(table, args, str(study))})
    return written + robustness_figure(table, families, args.reference, out, str(study))


def setup_text(args: argparse.Namespace) -> List[str]:
    skipped = "; ".join(f"{name} ({why})" for name, why in corruptions.SKIPPED.items())
    return [f"{args.images} test images (a fixed subset, seed 0), each family at severities 1-5 with CIFAR-10-C's "
            "parameters (hendrycks' make_cifar_c.py, in torch: analysis/corruptions.py), corruption seed "
            f"{args.seed}: {', '.join(corruptions.FAMILIES)}.", "",
            f"Skipped, not replaced: {skipped}.", "",
            f"CE and mCE: 100 = the {args.reference} step (its errors averaged over its seeds); relative mCE counts "
            "only the errors' rise over clean. Lower is more robust. Mean [95% t-interval] over seeds; Δ: the change "
            "from the step each builds on, paired per seed (* the interval excludes zero). top-1: the run's own "
            "figure on the whole test set; clean error: on the subset."]


def robustness_markdown(table: pd.DataFrame, args: argparse.Namespace, study: str) -> str:
    cell, change = checkpoints.cell, checkpoints.change_cell
    head = ["step", "seeds", "top-1 (%)", "clean error (%)", "mCE", "Δ mCE", "relative mCE", "Δ relative mCE"]
    cells = [[f"{r['step']}", f"{int(r['mce_seeds'])}", cell(r, "top1", ".2f"), cell(r, "clean_error"), cell(r, "mce"),
              change(r, "mce"), cell(r, "relative_mce"), change(r, "relative_mce")] for _, r in table.iterrows()]
    families = list(corruptions.FAMILIES)
    per_family = [[f"{r['step']}", *(f"{r[f'ce.{c}_mean']:.0f}" for c in families)] for _, r in table.iterrows()]
    lines = [f"# Corruption robustness per step: {Path(study).name}", "", *setup_text(args), "",
             *markdown_lines(head, cells), "", "CE per family (mean over seeds; 100 = the reference step):", "",
             *markdown_lines(["step", *families], per_family)]
    return "\n".join(lines) + "\n"


def bars(ax, table: pd.DataFrame, column: str, xlabel: str, reference: Optional[float] = None) -> None:
    """One horizontal bar per step with its 95% interval over seeds, coloured as Figure 2's groups."""
    y = list(range(len(table)))[::-1]
    mean = table[f"{column}_mean"]
    err = [(mean - table[f"{column}_lo"]).fillna(0), (table[f"{column}_hi"] - mean).fillna(0)]
    colours = [plots.COLOURS[plots.GROUP_OF.get(s, "micro design")] for s in table["step"]]
    lo = float(np.nanmin(table[f"{column}_lo"].fillna(mean))) if mean.notna().any() else 0.0
    left = max(0.0, lo - 0.08 * (float(mean.max()) - lo + 1))
    drawn = ax.barh(y, mean - left, left=left, xerr=err, color=colours, alpha=0.85,
                    error_kw={"ecolor": "black", "capsize": 2, "lw": 0.8})
    for bar, step in zip(drawn, table["step"]):
        if step in SIDE_BRANCHES:
            bar.set_alpha(0.35)
            bar.set_hatch("//")
    for yi, v, hi in zip(y, mean, table[f"{column}_hi"]):
        if pd.notna(v):
            ax.text(hi if pd.notna(hi) else v, yi, f" {v:.1f}", va="center", fontsize=7, color=plots.ADOPTED)
    if reference is not None:
        ax.axvline(reference, color="#777777", lw=0.8, ls="--")
    ax.set_ylim(-0.5, len(table) - 0.5)  # row for row beside the family map
    ax.set_yticks(y)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.grid(axis="x", alpha=0.3)


def family_map(ax, table: pd.DataFrame, families: Sequence[str]) -> None:
    """CE per family and step, a diverging map around 100 (the reference)."""
    values = np.array([[r[f"ce.{c}_mean"] for c in families] for _, r in table.iterrows()], dtype=float)
    spread = max(float(np.nanmax(np.abs(values - 100))), 1.0) if np.isfinite(values).any() else 1.0
    ax.imshow(values, cmap="RdBu_r", vmin=100 - spread, vmax=100 + spread, aspect="auto")
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=5.5)
    ax.set_xticks(range(len(families)))
    ax.set_xticklabels([c.replace("_", " ") for c in families], rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(table)))
    ax.set_yticklabels([])
    ax.set_title("CE per family (100 = reference)", fontsize=9)


def robustness_figure(table: pd.DataFrame, families: Sequence[str], reference: str, out: Path,
                      study: str) -> List[Path]:
    """mCE along the path beside top-1, and CE per family."""
    n = len(table)
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(15, 0.36 * n + 2.2), gridspec_kw={"width_ratios": [1, 1, 1.6]})
    bars(a1, table, "mce", f"mCE (100 = {reference}; lower is more robust)", reference=100.0)
    a1.set_yticklabels([f"{plots._number(s)} {s}" for s in table["step"]], fontsize=8)
    a1.set_title("mean corruption error", fontsize=9)
    bars(a2, table, "top1", "top-1 accuracy, clean test set (%)")
    a2.set_yticklabels([])
    a2.set_title("top-1", fontsize=9)
    family_map(a3, table, families)
    fig.suptitle(f"Corruption robustness along the path: {Path(study).name} (95% intervals over seeds)", fontsize=11)
    fig.tight_layout()
    return design_figures.save(fig, out, "robustness")


def robustness_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=IMAGES, help=f"test images per set (default {IMAGES}: "
                        "a fixed subset drawn with seed 0; 71 sets of them per run)")
    parser.add_argument("--reference", default=REFERENCE, help=f"the step whose errors are 100 (default "
                        f"{REFERENCE}, in AlexNet's place)")
    parser.add_argument("--seed", type=int, default=SEED, help=f"seed of the corruptions' draws (default {SEED})")


check = checkpoints.at_least({"images": 1, "threads": 1, "seed": 0})


def main(argv: Sequence[str] = ()) -> None:
    checkpoints.main(argv, "python -m analysis.robustness", __doc__, measure_robustness, robustness_options, check)


if __name__ == "__main__":
    main(sys.argv[1:])
