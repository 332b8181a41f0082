"""Figures of the designs beyond the path (roadmap/designs.py), and the four answers side by side.

    python -m analysis.plots <study>          # a design study's own figures (this module draws them)
    python -m analysis.design_figures PATH LOO ADD RANDOM [OUT]   # the summary figure of four studies

leave_one_out, add_one   one bar per factor: the change in top-1 against the reference
                         network (ConvNeXt; the modern-recipe ResNet), a paired difference
                         per seed with its 95% interval (the paper's Figure 2 style);
random                   the EDF of top-1 error per factor level (pycls's error
                         distribution functions), top-1 against MACs coloured by level,
                         and each factor's main effect from a least-squares fit;
summary                  per factor: its change on the path, what leaving it out of
                         ConvNeXt costs, what adding it to the ResNet gains, its main effect.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, List, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from roadmap import factors, results  # noqa: E402

LEVEL_COLOURS = {0.0: "#1f77b4", 1.0: "#d62728"}  # ResNet level, ConvNeXt level


def save(fig, out: Path, name: str) -> List[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight", metadata={"CreationDate": None})
    plt.close(fig)
    return paths


def factor_of(network: str) -> str:
    """The factor a leave-one-out or add-one network varies (its name's suffix)."""
    return factors.varied_by(network) or network


def bar_table(table: pd.DataFrame, design: str) -> pd.DataFrame:
    """factor, mean, lo, hi, excludes_zero: what each factor is worth, in roadmap order. For
    add_one the change it brings to the modern-recipe ResNet; for leave_one_out the top-1
    ConvNeXt loses without it (the change of convnext-minus-<factor>, negated)."""
    t = table[table["builds_on"].notna()].sort_values("order")
    sign = -1 if design == "leave_one_out" else 1
    ends = np.sort(np.stack([sign * t["delta_lo"].to_numpy(float), sign * t["delta_hi"].to_numpy(float)]), axis=0)
    return pd.DataFrame({"factor": [factor_of(s) for s in t["step"]], "mean": sign * t["delta"].to_numpy(float),
                         "lo": ends[0], "hi": ends[1], "excludes_zero": t["delta_excludes_zero"].to_numpy(bool)})


def keep_on_the_bars(ax, ys, means, los, his) -> None:
    """Limit the x axis to the bars and the intervals within 1.5x the largest bar: one wild
    interval (a recipe that fails on one seed) must not flatten the rest. An interval cut
    at the edge is written out there."""
    means, los, his = (np.asarray(v, dtype=float) for v in (means, los, his))
    if not np.isfinite(means).any():
        return
    reach = 1.5 * np.nanmax(np.abs(means)) + 0.5
    left = min(np.nanmin(means), max(np.nanmin(los, initial=0.0), -reach)) - 0.3
    right = max(np.nanmax(means), min(np.nanmax(his, initial=0.0), reach)) + 0.3
    ax.set_xlim(left, right)
    for y, lo, hi in zip(ys, los, his):
        if lo < left or hi > right:
            ax.annotate(f"interval [{lo:+.1f}, {hi:+.1f}] cut", (right if hi > right else left, y), fontsize=7,
                        ha="right" if hi > right else "left", va="center", color="0.3",
                        xytext=(-3 if hi > right else 3, 0), textcoords="offset points")


def factor_bars(table: pd.DataFrame, out: Path, design: str) -> List[Path]:
    """One bar per factor: the change against the reference network, with its interval."""
    t = table[table["builds_on"].notna()].sort_values("order")
    reference = table[table["builds_on"].isna()]
    b = bar_table(table, design)
    fig, ax = plt.subplots(figsize=(8.5, 0.42 * len(b) + 1.6))
    y = np.arange(len(b))[::-1]
    colours = ["#2ca02c" if v > 0 else "#d62728" for v in b["mean"].fillna(0)]
    err = [(b["mean"] - b["lo"]).fillna(0), (b["hi"] - b["mean"]).fillna(0)]
    ax.barh(y, b["mean"], color=colours, alpha=0.85, xerr=err, error_kw={"capsize": 2, "lw": 0.8})
    keep_on_the_bars(ax, y, b["mean"], b["lo"], b["hi"])
    ax.set_yticks(y)
    ax.set_yticklabels([f"{f}{' *' if z else ''}" for f, z in zip(b["factor"], b["excludes_zero"])], fontsize=8.5)
    ax.axvline(0, color="black", lw=0.8)
    what = ("top-1 lost when the factor is left out of ConvNeXt" if design == "leave_one_out"
            else "top-1 gained when the factor is added to the modern-recipe ResNet")
    ref = reference.iloc[0] if len(reference) else None
    ax.set_xlabel(f"{what} (points; 95% interval over paired seeds, * excludes zero)")
    ax.set_title(
        f"{design}: {t['study'].iloc[0]}"
        + (f" (reference {ref['step']}: {ref['top1_mean']:.2f}%)" if ref is not None else ""),
        fontsize=10,
    )
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return save(fig, out, design)


def factor_grid(frame: pd.DataFrame, **kw):
    """One small panel per factor that varies: (figure, [(axes, factor)]), spare panels hidden."""
    names = [n for n in factors.NAMES if n in frame.columns and frame[n].nunique() > 1]
    rows, cols = -(-len(names) // 4), 4
    fig, axes = plt.subplots(rows, cols, figsize=(13, 2.6 * rows), squeeze=False, **kw)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    return fig, list(zip(axes.flat, names))


def finish_grid(fig, out: Path, name: str, xlabel: str, ylabel: str, title: str) -> List[Path]:
    fig.supxlabel(xlabel)
    fig.supylabel(ylabel)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save(fig, out, name)


def edfs(frame: pd.DataFrame, out: Path) -> List[Path]:
    """Per factor, the empirical distribution of top-1 error at each level."""
    fig, panels = factor_grid(frame)
    error = 100 - frame["top1"]
    for ax, name in panels:
        for level, label in ((0.0, "ResNet level"), (1.0, "ConvNeXt level")):
            e = np.sort(error[frame[name] == level].to_numpy())
            if len(e):
                ax.step(e, np.arange(1, len(e) + 1) / len(e), where="post", color=LEVEL_COLOURS[level],
                        label=f"{label} (n={len(e)})")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, loc="lower right")
    return finish_grid(fig, out, "edf", "top-1 error (%)", "fraction of networks with lower error",
                       "Error distribution functions per factor level (random design)")


def macs_scatter(frame: pd.DataFrame, out: Path) -> List[Path]:
    """Per factor, top-1 against MACs, each network coloured by the factor's level."""
    fig, panels = factor_grid(frame, sharex=True, sharey=True)
    for ax, name in panels:
        ax.scatter(frame["gmacs"] * 1e3, frame["top1"], s=12, c=[LEVEL_COLOURS[v] for v in frame[name]], alpha=0.8)
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
    return finish_grid(fig, out, "macs", "multiply-accumulates per image (MMACs)", "top-1 (%)",
                       "Accuracy against compute, blue: ResNet level, red: ConvNeXt level (random design)")


def effects(runs: pd.DataFrame, out: Path) -> List[Path]:
    """Each factor's main effect, with and without log MACs as a covariate."""
    plain, adjusted = results.main_effects(runs), results.main_effects(runs, with_macs=True)
    adjusted = adjusted[adjusted["name"] != "log_gmacs"].reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(8.5, 0.45 * len(plain) + 1.6))
    y = np.arange(len(plain))[::-1]
    for offset, table, label, colour in ((0.18, plain, "main effect", "#1f77b4"),
                                         (-0.18, adjusted, "adjusted for log MACs", "#ff7f0e")):
        err = [(table["effect"] - table["lo"]).fillna(0), (table["hi"] - table["effect"]).fillna(0)]
        ax.errorbar(table["effect"], y + offset, xerr=err, fmt="o", color=colour, capsize=2, ms=4, label=label)
    ax.set_yticks(y)
    ax.set_yticklabels(plain["name"], fontsize=8.5)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("effect on top-1 of the ConvNeXt level (points; 95% interval, least squares)")
    ax.set_title(f"Main effects in {len(results.factor_table(runs))} random networks", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return save(fig, out, "effects")


def for_design(runs: pd.DataFrame, table: pd.DataFrame, out: Path, design: str, study: str = "") -> List[Path]:
    """A design's figures, those its completed networks allow; each one skipped is named, with why."""
    if design in ("leave_one_out", "add_one"):
        if table["delta"].notna().any():
            return factor_bars(table, out, design)
        print(f"{study}: skipped the {design} figure: no network has a change from its reference on one seed")
        return []
    frame = results.factor_table(runs)
    varying = [n for n in factors.NAMES if n in frame.columns and frame[n].nunique() > 1]
    written: List[Path] = []
    if varying:
        written += edfs(frame, out) + macs_scatter(frame, out)
    else:
        print(f"{study}: skipped the edf and macs figures: {len(frame)} completed networks vary no factor")
    if len(frame) > len(varying) + 1:
        written += effects(runs, out)
    else:
        print(f"{study}: skipped the effects figure: the main effects of {len(varying)} factors cannot be estimated "
              f"from {len(frame)} completed networks (it needs more networks than factors plus one)")
    return written


# ----------------------------------------------------------------------------- the four answers side by side


def answers(path: pd.DataFrame, loo: pd.DataFrame, add: pd.DataFrame, rand: pd.DataFrame) -> pd.DataFrame:
    """Per factor: (mean, lo, hi) of its change on the path, its leave-one-out cost, its
    add-one gain and its main effect; one row per factor and answer."""
    rows: List[Dict] = []

    def take(answer: str, table: pd.DataFrame, network: Dict[str, str], sign: int = 1) -> None:
        for factor, step in network.items():
            r = table[table["step"] == step]
            if len(r) and pd.notna(r["delta"].iloc[0]):
                lo, hi = sorted((sign * r["delta_lo"].iloc[0], sign * r["delta_hi"].iloc[0]))
                rows.append({"factor": factor, "answer": answer, "mean": sign * r["delta"].iloc[0], "lo": lo, "hi": hi})

    take("change on the path", results.step_table(path), {f: f for f in factors.NAMES})
    take("cost of leaving it out", results.step_table(loo), {f: f"convnext-minus-{f}" for f in factors.NAMES}, -1)
    take("gain of adding it alone", results.step_table(add), {f: f"modern_resnet-plus-{f}" for f in factors.NAMES})
    for e in results.main_effects(rand).itertuples():
        rows.append({"factor": e.name, "answer": "main effect (random)", "mean": e.effect, "lo": e.lo, "hi": e.hi})
    return pd.DataFrame(rows)


def summary_figure(table: pd.DataFrame, out: Path) -> List[Path]:
    names = [f for f in factors.NAMES if f in set(table["factor"])]
    kinds = list(dict.fromkeys(table["answer"]))
    colours = ["#7f7f7f", "#d62728", "#2ca02c", "#1f77b4"]
    fig, ax = plt.subplots(figsize=(9, 0.7 * len(names) + 1.6))
    y = np.arange(len(names))[::-1]
    h = 0.8 / len(kinds)
    drawn = []
    for i, (kind, colour) in enumerate(zip(kinds, colours)):
        t = table[table["answer"] == kind].set_index("factor").reindex(names)
        err = [(t["mean"] - t["lo"]).fillna(0).clip(lower=0), (t["hi"] - t["mean"]).fillna(0).clip(lower=0)]
        ax.barh(y + 0.4 - h * (i + 0.5), t["mean"], height=h, color=colour, xerr=err, label=kind,
                error_kw={"capsize": 1.5, "lw": 0.6})
        drawn.append(pd.DataFrame({"y": y + 0.4 - h * (i + 0.5), "mean": t["mean"].to_numpy(),
                                   "lo": t["lo"].to_numpy(), "hi": t["hi"].to_numpy()}))
    every = pd.concat(drawn)
    keep_on_the_bars(ax, every["y"], every["mean"], every["lo"], every["hi"])
    ax.set_yticks(y)
    ax.set_yticklabels(names, fontsize=8.5)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("top-1 points (95% intervals)")
    ax.set_title("Does each decision help? Four answers per factor", fontsize=11)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return save(fig, out, "factors_summary")


# analysis.design_figures' four arguments, by the design each records
ORDER = ("path", "leave_one_out", "add_one", "random")


def check_order(paths: Sequence[str], studies: Sequence[pd.DataFrame]) -> None:
    """ResultsError unless each study records the design its argument position takes."""
    for i, (path, runs, wanted) in enumerate(zip(paths, studies, ORDER)):
        if runs.empty:
            raise results.ResultsError(f"{path} holds no runs: give four studies ({', '.join(ORDER)})")
        found = results.design_of(runs)
        if found != wanted:
            raise results.ResultsError(
                f"argument {i + 1} ({path}) is a study of design {found}, where one of design {wanted} goes: give the "
                f"four studies in the order {', '.join(ORDER)}"
            )


def main(argv: Sequence[str]) -> None:
    if len(argv) not in (4, 5):
        print("error: give four studies (path, leave_one_out, add_one, random) and optionally a folder for the figure",
              file=sys.stderr)
        sys.exit(2)
    try:
        studies = [results.load(a) for a in argv[:4]]
        check_order(argv[:4], studies)
    except results.ResultsError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    table = answers(*studies)
    out = Path(argv[4]) if len(argv) == 5 else Path("experiments") / "figures"
    written = summary_figure(table, out)
    table.to_csv(out / "factors_summary.csv", index=False)
    print(", ".join(str(p) for p in written))


if __name__ == "__main__":
    main(sys.argv[1:])
