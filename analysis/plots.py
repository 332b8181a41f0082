"""The paper's figures for a study's logged results.

    python -m analysis.plots                       # every study under runs/ and experiments/
    python -m analysis.plots experiments/fashion_mnist_micro
    python -m analysis.plots <study> --out <folder>  # a study you cannot (or do not want to) write into

Writes into <study>/figures/ (or --out; a read-only study's go to runs/figures/<study>),
as PNG and PDF (a study that sweeps other keys gets each figure once per value, named
after it: figure2__recipe.lr=0.001.png):
  figure2        the paper's Figure 2 for this study: one bar per step, grouped as in the
                 paper, top-1 with a seed error bar, GMACs beside each bar, side branches
                 marked as not adopted, and the paper's ImageNet top-1 beside it;
  path           top-1 against GMACs, the path drawn through numbered steps;
  deltas         the change in top-1 at each step, this study beside the paper;
  curves         test top-1 and training loss per epoch, for every step;
and the numbers as table.md and table.csv. Nothing is trained.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from analysis import design_figures  # noqa: E402
from roadmap import paper, results  # noqa: E402
from roadmap.config import SIDE_BRANCHES, STEPS  # noqa: E402

# Figure 2's groups, in the paper's order.
GROUPS = [
    ("ResNet", ("resnet", "modern_recipe")),
    ("macro design", ("stage_ratio", "patchify_stem")),
    ("ResNeXt", ("depthwise_conv", "wider")),
    ("inverted bottleneck", ("inverted_bottleneck",)),
    ("large kernel", ("move_up_depthwise", "kernel_5", "kernel_7", "kernel_9", "kernel_11")),
    ("micro design", ("gelu", "fewer_activations", "fewer_norms", "layer_norm", "separate_downsampling")),
]
GROUP_OF = {s: g for g, steps in GROUPS for s in steps}
COLOURS = dict(zip([g for g, _ in GROUPS], ["#7f7f7f", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#d62728"]))
ADOPTED = "#444444"
ROOTS = ("runs", "experiments")  # where make plots looks for studies: users' runs, committed reference studies


def _number(step: str) -> str:
    """A step's number in the paper's path ('-' for a step a user added)."""
    return str(STEPS.index(step)) if step in STEPS else "-"


def _title(table: pd.DataFrame) -> str:
    values = results.variant_name({k: table[k].iloc[0] for k in results.swept_keys(table)})
    return f"{table['study'].iloc[0]}{', ' + values if values else ''} (regime {table['regime'].iloc[0]})"


def figure2(table: pd.DataFrame, out: Path, suffix: str = "") -> List[Path]:
    t = table.sort_values("order").reset_index(drop=True)
    ref = paper.reference_regime(t["regime"].iloc[0])
    n = len(t)
    fig, (ax, axp) = plt.subplots(
        1, 2, figsize=(12, 0.42 * n + 1.6), sharey=True, gridspec_kw={"width_ratios": [1.15, 1]}
    )
    y = list(range(n))[::-1]
    for ax_, col, err, title in (
        (ax, "top1_mean", "top1_std", "this study"),
        (axp, "paper_top1", "paper_top1_std", f"paper, ImageNet-1K ({ref})"),
    ):
        vals = t[col]
        colours = [COLOURS[GROUP_OF.get(s, "micro design")] for s in t["step"]]
        hatches = ["//" if s in SIDE_BRANCHES else "" for s in t["step"]]
        finite = vals.dropna()
        lo = (finite.min() - 2.0) if len(finite) else 0
        hi = (finite.max() + 1.2) if len(finite) else 1
        bars = ax_.barh(y, vals.fillna(lo) - lo, left=lo, xerr=t[err].fillna(0), color=colours, alpha=0.85,
                        hatch=None, edgecolor="white", error_kw={"ecolor": "black", "capsize": 2, "lw": 0.8})
        for bar, h, side in zip(bars, hatches, t["step"].isin(SIDE_BRANCHES)):
            if side:
                bar.set_alpha(0.35)
                bar.set_hatch(h)
        ax_.set_xlim(lo, hi + (0.9 if ax_ is ax else 0.2))
        ax_.set_xlabel("top-1 accuracy (%)")
        ax_.set_title(title, fontsize=11)
        ax_.grid(axis="x", alpha=0.3)
        for yi, v, e in zip(y, vals, t[err].fillna(0)):
            if pd.notna(v):
                ax_.text(v + e + 0.08, yi, f"{v:.2f}", va="center", fontsize=7.5, color=ADOPTED)
    for yi, g in zip(y, t["gmacs"]):
        ax.text(ax.get_xlim()[1] - 0.05, yi, f"{g * 1e3:.2f} M" if g < 0.1 else f"{g:.2f} G", va="center", ha="right",
                fontsize=7.5, color="#777777")
    labels = [f"{s}{'  (not adopted)' if s in SIDE_BRANCHES else ''}" for s in t["step"]]
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8.5)
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLOURS[g]) for g, _ in GROUPS]
    handles.append(plt.Rectangle((0, 0), 1, 1, facecolor="white", edgecolor="#999999", hatch="//"))
    fig.legend(handles, [g for g, _ in GROUPS] + ["side branch (not adopted)"], loc="lower center", ncol=7, fontsize=8,
               frameon=False, bbox_to_anchor=(0.5, -0.02))
    ax.text(1.0, 1.0, "MACs/image →", transform=ax.transAxes, ha="right", va="bottom", fontsize=7.5, color="#777777")
    fig.suptitle(f"Modernizing a ResNet toward a ConvNeXt: {_title(t)}", fontsize=12)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return design_figures.save(fig, out, "figure2" + suffix)


def path_plot(table: pd.DataFrame, out: Path, suffix: str = "") -> List[Path]:
    t = table.sort_values("order").reset_index(drop=True)
    scale, unit = (1e3, "MMACs") if t["gmacs"].max() < 0.1 else (1.0, "GMACs")
    fig, ax = plt.subplots(figsize=(8.5, 5.5))
    main = t[~t["step"].isin(SIDE_BRANCHES)]
    ax.plot(main["gmacs"] * scale, main["top1_mean"], "-", color="#bbbbbb", zorder=1)
    for _, r in t.iterrows():
        side = r["step"] in SIDE_BRANCHES
        colour = COLOURS[GROUP_OF.get(r["step"], "micro design")]
        ax.errorbar(r["gmacs"] * scale, r["top1_mean"], yerr=r["top1_std"] if pd.notna(r["top1_std"]) else None,
                    fmt="o", mfc="white" if side else colour, mec=colour, ecolor=colour, ms=7, capsize=2, zorder=2)
        ax.annotate(_number(r["step"]), (r["gmacs"] * scale, r["top1_mean"]),
                    textcoords="offset points", xytext=(5, -11) if side else (6, 4), fontsize=8)
    key = "\n".join(f"{_number(s)}  {s}{' (side)' if s in SIDE_BRANCHES else ''}" for s in t["step"])
    ax.text(1.02, 1.0, key, transform=ax.transAxes, va="top", fontsize=7.5, family="monospace")
    ax.set_xlabel(f"multiply-accumulates per image ({unit})")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"Accuracy against compute along the path: {_title(t)}", fontsize=11)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return design_figures.save(fig, out, "path" + suffix)


def delta_plot(table: pd.DataFrame, out: Path, suffix: str = "") -> List[Path]:
    t = table.sort_values("order").reset_index(drop=True).iloc[1:]
    ref = paper.reference_regime(t["regime"].iloc[0])
    fig, ax = plt.subplots(figsize=(9, 0.42 * len(t) + 1.4))
    y = list(range(len(t)))[::-1]
    h = 0.38
    err = [(t["delta"] - t["delta_lo"]).fillna(0).clip(lower=0), (t["delta_hi"] - t["delta"]).fillna(0).clip(lower=0)]
    ax.barh([v + h / 2 for v in y], t["delta"], height=h, color="#1f77b4", xerr=err,
            error_kw={"ecolor": "#0b3c61", "capsize": 2, "lw": 0.8}, label="this study (95% interval over seeds)")
    ax.barh([v - h / 2 for v in y], t["paper_delta"], height=h, color="#ff7f0e", label=f"paper, ImageNet-1K ({ref})")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(y)
    ax.set_yticklabels([f"{s}{' *' if sig else ''}  (vs {p})"
                        for s, p, sig in zip(t["step"], t["builds_on"], t["delta_excludes_zero"])], fontsize=8)
    ax.set_xlabel("change in top-1 from the step it builds on (percentage points; * interval excludes zero)")
    ax.set_title(f"Which design decisions carry over: {_title(t)}", fontsize=11)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return design_figures.save(fig, out, "deltas" + suffix)


def curves_plot(hist: pd.DataFrame, table: pd.DataFrame, out: Path, suffix: str = "") -> List[Path]:
    steps = [s for s in table.sort_values("order")["step"]]
    cmap = plt.get_cmap("viridis", max(len(steps), 2))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.8))
    for i, step in enumerate(steps):
        h = hist[hist["step"] == step]
        for metric, ax in (("top1", a1), ("train_loss", a2)):
            m = h[h["metric"] == metric].groupby("epoch")["value"].mean()
            if len(m):
                ax.plot(
                    m.index,
                    m.values,
                    marker="o",
                    ms=3,
                    color=cmap(i),
                    ls="--" if step in SIDE_BRANCHES else "-",
                    label=step,
                )
    a1.set_ylabel("test top-1 accuracy (%)")
    a2.set_ylabel("training loss (cross-entropy)")
    for ax in (a1, a2):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    a2.legend(
        fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), title="step (mean over seeds)", title_fontsize=7
    )
    fig.suptitle(f"Training curves: {_title(table)}", fontsize=11)
    fig.tight_layout()
    return design_figures.save(fig, out, "curves" + suffix)


def say_left_out(study: Path, runs) -> None:
    """Name the runs no figure averages: those that did not complete, those at chance, and
    those whose record cannot be averaged (a damaged seed or top-1, another regime)."""
    def names(rows) -> str:
        return ", ".join(f"{Path(r).relative_to(study) if Path(r).is_relative_to(study) else r} ({s})"
                         for r, s in zip(rows["run_dir"], results.run_outcomes(rows)))

    left_out = runs.drop(results.averaged(runs).index)
    damaged = left_out[left_out["left_out"].notna()]
    left_out = left_out[left_out["left_out"].isna()]
    done = results.completed(left_out)
    unfinished, at_chance = left_out[~done], left_out[done]
    for rows, what in ((unfinished, "that did not complete"), (at_chance, "that ended at chance level"),
                       (damaged, "whose records cannot be averaged")):
        if len(rows):
            print(f"{study}: left out {len(rows)} of {len(runs)} runs {what}: {names(rows)}")


# The path's figures: name -> (can it be drawn from this step table and history?, why not, how to draw it).
# A step without a number is drawn as missing (a study being written, runs at chance), not left out.
PATH_FIGURES = {
    "figure2": (lambda t, h: len(t) > 0, "the study has no step", lambda t, h, o, s: figure2(t, o, s)),
    "path": (lambda t, h: len(t) > 0, "the study has no step", lambda t, h, o, s: path_plot(t, o, s)),
    "deltas": (lambda t, h: len(t) > 1, "one step has no change from a step it builds on",
               lambda t, h, o, s: delta_plot(t, o, s)),
    "curves": (lambda t, h: len(h) > 0, "no run logged an epoch", lambda t, h, o, s: curves_plot(h, t, o, s)),
}


def draw(study: Path, name: str, fn, *args) -> List[Path]:
    """One figure; a figure that cannot be drawn from what the study holds is named, with why."""
    try:
        return fn(*args)
    except (ValueError, IndexError, KeyError, TypeError, ZeroDivisionError) as e:
        print(f"{study}: skipped the {name} figure ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
        return []


def output_folder(study: Path, out: Optional[Path]) -> Path:
    """Where a study's figures go: `out`, else <study>/figures when it can be written, else
    runs/figures/<study> (a read-only study is read, never written)."""
    if out is not None:
        return Path(out)
    own = Path(study) / "figures"
    if results.writable(own):
        return own
    else:
        fallback = Path("runs") / "figures" / Path(study).resolve().name
        print(f"{study}: cannot write {own}, so its figures go to {fallback} (choose the folder with --out)")
        return fallback


def plot_study(study: Path, out: Optional[Path] = None) -> List[Path]:
    """Every figure and table of a study that its runs allow, into `out` (output_folder);
    runs that did not complete are left out, and named, and so is each figure skipped."""
    out = output_folder(study, out)
    runs, _, written = results.save_tables(study, out, with_runs=False)
    if runs.empty:
        raise results.ResultsError(
            f"no runs under {study}: give a study directory such as experiments/fashion_mnist_micro"
        )
    say_left_out(study, runs)
    hist = results.history(study, runs)
    design = results.design_of(runs)
    for values, table in results.split_by_swept(results.step_table(runs)):
        suffix = "".join(f"__{k}={v}" for k, v in values.items())
        curves = results.matching(hist, values)
        if design != "path":
            written += draw(study, design, design_figures.for_design, results.matching(runs, values), table, out,
                            design, str(study))
            written += draw(study, "curves", curves_plot, curves, table, out, suffix)
            continue
        for name, (can, why, fn) in PATH_FIGURES.items():
            if can(table, curves):
                written += draw(study, name + suffix, fn, table, curves, out, suffix)
            else:
                print(f"{study}: skipped the {name + suffix} figure: {why}")
    return written


def studies(args: Sequence[str]) -> List[Path]:
    if args:
        return results.study_dirs(args)
    found = sorted({study_root(p.parent) for top in ROOTS for p in Path(top).rglob("summary.json")})
    found = [p for p in found if p.parts[:2] != ("runs", "figures")]
    if not found:
        raise results.ResultsError(
            "no studies under runs/ or experiments/: run python -m roadmap.sweep +step=all first, or name a study"
        )
    return found


def study_root(run: Path) -> Path:
    """The study directory a run belongs to: <study>/[<key>=<value>/ ...]<step>/seed<k>."""
    folder = run.parent.parent
    while "=" in folder.name:
        folder = folder.parent
    return folder


def main(argv: Sequence[str] = ()) -> None:
    parser = argparse.ArgumentParser(prog="python -m analysis.plots", description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="*", help="study directories (default: every study under runs/ and "
                        "experiments/)")
    parser.add_argument("--out", type=Path, help="where the figures and tables go (default: <study>/figures, or "
                        "runs/figures/<study> for a study that cannot be written); with several studies, one folder "
                        "per study inside it")
    args = parser.parse_args(list(argv))
    drew = 0
    try:
        found = studies(args.studies)
    except results.ResultsError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    for study in found:
        out = None if args.out is None else (args.out if len(found) == 1 else args.out / study.resolve().name)
        try:
            written = plot_study(study, out)
        except results.ResultsError as e:
            print(f"error: {e}", file=sys.stderr)
            continue
        drew += 1
        print(f"{study}: " + ", ".join(p.name for p in written) + f" (in {written[0].parent})" * bool(written))
    sys.exit(0 if drew else 2)


if __name__ == "__main__":
    main(sys.argv[1:])
