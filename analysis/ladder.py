"""The proxy ladder: which cheap setting keeps ImageNet's ranking of the design decisions?

    python -m analysis.ladder                          # the committed rungs under experiments/
    python -m analysis.ladder STUDY [STUDY ...] [--out DIR]

Each rung is a study of the whole path (conf/experiment/ladder_*.yaml: the default study
with one knob moved). Per rung, over the seeds on which every step completed (a rung with
fewer is marked partial; its other runs are named, never averaged in): its knobs, its cost
(training compute against the default's, and CPU-minutes per seed on the machine that ran
it), the sign agreement on the paper's clear steps with its binomial p, Spearman and Kendall
there with bootstrap intervals over seeds, the slope of our changes on the paper's, and
ConvNeXt minus ResNet paired per seed. A rung on fewer seeds is read against the range one
seed of the default's own setting shows (the default and its retrain, each seed scored alone).
Writes ladder.md, ladder.csv, ladder_one_seed.csv and ladder.png/.pdf to --out (default
experiments/figures/); reads the studies only.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.design_figures import save  # noqa: E402
from roadmap import results  # noqa: E402
from roadmap.config import STEPS  # noqa: E402
from roadmap.tables import markdown_lines  # noqa: E402

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
DEFAULT = EXPERIMENTS / "fashion_mnist_micro"
"""Today's default study, the rung every other is measured against."""
OUT = EXPERIMENTS / "figures"
# A rung's knobs: the config keys the ladder moves, and how the table writes each.
KNOBS = {
    "cfg.recipe.epochs": lambda v: f"{int(v)} epoch{'s' if int(v) != 1 else ''}",
    "cfg.data.image_size": lambda v: f"{int(v)} px",
    "cfg.recipe.regularization": lambda v: f"regularization x{v:g}",
    "cfg.recipe.crop_scale": lambda v: "" if json.loads(v) == [1.0, 1.0] else "crop " + "-".join(
        f"{x:g}" for x in json.loads(v)),  # results.load keeps lists as their JSON text
    "cfg.recipe.hflip": lambda v: f"flip {v:g}" if v else "",
}


def rungs(args: Sequence[str]) -> List[Path]:
    """The studies named, or the default and every committed ladder rung beside it."""
    if args:
        return results.study_dirs(args)
    found = [DEFAULT, *sorted(p for p in DEFAULT.parent.glob(DEFAULT.name + "_*") if (p / "resnet").is_dir())]
    found = [p for p in found if p.is_dir() and not p.name.endswith("_calibration")]
    if not found:
        raise results.ResultsError(f"no ladder studies under {EXPERIMENTS}: name them, e.g. experiments/{DEFAULT.name}")
    return found


def complete_seeds(runs: pd.DataFrame) -> List[int]:
    """Seeds on which every step of the paper's path completed without collapsing."""
    done = results.averaged(runs)
    return sorted(int(k) for k, g in done.groupby("seed") if set(g["step"]) >= set(STEPS))


def read_rung(study: Path) -> Optional[dict]:
    """One rung: its runs restricted to its complete seeds, and what was left out; when no
    seed is complete, only why it is not scored ("skipped"); None when it has no runs."""
    runs = results.load(study)
    if runs.empty:
        print(f"{study}: skipped, no runs", file=sys.stderr)
        return None
    foreign = sorted(set(runs["step"].dropna()) - set(STEPS))
    if foreign:
        raise results.ResultsError(
            f"{study} does not train the paper's path ({', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}): "
            "a rung is a study of +step=all, e.g. python -m roadmap.sweep +step=all +experiment=ladder_epochs10"
        )
    seeds = complete_seeds(runs)
    left = runs[~runs["seed"].isin(seeds)]
    if not seeds:
        why = not_scored(left)
        print(f"{study}: skipped, {why}", file=sys.stderr)
        return {"study": study, "skipped": why}
    if len(left):
        print(f"{study}: partial, seeds {', '.join(map(str, seeds))} only ({len(left)} runs of other seeds left out: "
              f"{', '.join(sorted(set(results.run_outcomes(left))))})", file=sys.stderr)
    return {"study": study, "runs": runs[runs["seed"].isin(seeds)], "partial": bool(len(left)), "left_out": len(left)}


def not_scored(runs: pd.DataFrame) -> str:
    """Why a rung is left out of the table: what it has so far, per seed and by outcome."""
    per_seed = ", ".join(f"{len(g)} of seed {int(k)}" for k, g in runs.groupby("seed"))
    outcomes = ", ".join(f"{n} {o}" for o, n in results.run_outcomes(runs).value_counts().sort_index().items())
    return (f"no seed on which all {len(STEPS)} steps of the path completed ({len(runs)} runs so far: {per_seed}; "
            f"{outcomes})")


def read_ladder(studies: Sequence[Path]) -> Tuple[List[dict], List[dict]]:
    """The rungs that can be scored, and those that cannot yet (each with why); ResultsError
    when none can be scored, the default is not among them, or they differ in regime."""
    found = [r for r in map(read_rung, studies) if r is not None]
    read, skipped = [r for r in found if "skipped" not in r], [r for r in found if "skipped" in r]
    if not read:
        raise results.ResultsError("no rung has a seed on which every step completed: nothing to draw")
    if not any(rung_name(r["study"]) == DEFAULT_RUNG for r in read):
        raise results.ResultsError(f"no default study among the scored rungs: name a {DEFAULT.name} directory with a "
                                   f"complete seed (e.g. experiments/{DEFAULT.name}); costs and the decision are "
                                   "measured against it")
    check_alike(read)
    return read, skipped


def check_alike(read: List[dict]) -> None:
    """A ladder compares studies of one regime: ResultsError otherwise."""
    regimes = {r["study"].name: set(r["runs"]["regime"].dropna()) for r in read}
    if len(set.union(*regimes.values())) > 1:
        named = "; ".join(f"{s}: {', '.join(sorted(v))}" for s, v in regimes.items())
        raise results.ResultsError(f"the rungs differ in regime ({named}): a ladder compares studies of one regime")


def knobs(runs: pd.DataFrame) -> str:
    """The rung's setting, from the convnext-recipe runs' configs ('3 epochs, 32 px')."""
    row = runs[runs["step"] == STEPS[-1]].iloc[0]
    return ", ".join(filter(None, (fmt(row[k]) for k, fmt in KNOBS.items() if k in row and pd.notna(row[k]))))


def cost(runs: pd.DataFrame) -> dict:
    """Per seed: training compute per training image (forward GMACs x epochs, summed over the
    steps: the same data everywhere, so its ratio is the ratio of work whatever the machine),
    and CPU-minutes on the machine that ran it (wall time x threads; nan where a run did not
    record its threads)."""
    seeds = runs["seed"].nunique()
    compute = float((runs["gmacs"] * runs["epochs"]).sum(min_count=len(runs))) / seeds  # nan if a run lacks it
    threads = pd.to_numeric(runs["threads"], errors="coerce").fillna(runs["cfg.train.threads"]).replace(0, math.nan)
    cpu = float((runs["wall_time_s"] * threads).sum(min_count=len(runs)) / 60 / seeds)
    return {"compute": compute, "cpu_minutes": cpu}


def rung_row(rung: dict) -> dict:
    """The ladder table's row of one rung."""
    runs, t = rung["runs"], results.transfer(rung["runs"])
    out = {"rung": rung_name(rung["study"]), "study": str(rung["study"]), "knobs": knobs(runs),
           "seeds": runs["seed"].nunique(), "partial": rung["partial"], **cost(runs)}
    if t is None or t.clear is None:
        return out
    c = t.clear
    return {**out, "clear_steps": len(c.steps), "clear_agree": c.agree, "clear_sign_p": c.sign_p,
            **_interval("spearman", c.spearman), **_interval("kendall", c.kendall), **_interval("slope", t.slope),
            **_interval("gain", t.gain), "paper_gain": t.paper_gain, "all_agree": t.all.agree,
            "all_steps": len(t.all.steps)}


def _interval(name: str, iv) -> dict:
    return {name: iv.mean, f"{name}_lo": iv.lo, f"{name}_hi": iv.hi}


DEFAULT_RUNG = "default"
"""The ladder's name for today's default study."""


def rung_name(study: Path) -> str:
    """DEFAULT_RUNG for today's default study, else what its name adds to the default's."""
    if study.name == DEFAULT.name:
        return DEFAULT_RUNG
    return study.name.removeprefix(DEFAULT.name + "_")


def default_row(frame: pd.DataFrame) -> pd.Series:
    """The default study's row of the ladder table (read_ladder made sure there is one)."""
    return frame[frame["rung"] == DEFAULT_RUNG].iloc[0]


def table(read: List[dict]) -> pd.DataFrame:
    """One row per rung, in the order given: cost relative to the default's, and whether it
    transfers measurably better than the default."""
    frame = pd.DataFrame([rung_row(r) for r in read])
    default = default_row(frame)
    frame["cost_x_default"] = frame["compute"] / default["compute"]
    frame["better"] = [better_than(r, default) for _, r in frame.iterrows()]
    return frame


def better_than(r: pd.Series, default: pd.Series) -> bool:
    """Issue 19's rule for "measurably better": at least two more clear steps with the
    paper's sign, or a Kendall interval (on the clear steps) wholly above the default's."""
    more_signs = r.get("clear_agree", math.nan) >= default.get("clear_agree", math.nan) + 2
    above = r.get("kendall_lo", math.nan) > default.get("kendall_hi", math.nan)
    return bool(more_signs or above)


MAX_COST = 1.5
"""Issue 19: a rung may replace the default study only if it costs at most this many times as much."""
NOISE_FLOOR = "retrain"
"""Rungs named so (fashion_mnist_micro_retrain...) train the default's own setting again: they
measure how far a retrain moves the score, and are never candidates to replace it."""


def is_noise_floor(rung: str) -> bool:
    """Whether the rung of this name trains the default's own setting again (NOISE_FLOOR)."""
    return rung.startswith(NOISE_FLOOR)


RULE = (f"costs at most {MAX_COST:g}x the default's, is measured on as many seeds, and transfers measurably better "
        "(at least two more clear steps with the paper's sign, or a Kendall interval wholly above the default's)")


@dataclass
class Decision:
    """Issue 19's decision about the default study, rung names in each group."""

    successors: List[str]  # within the cost, as many seeds, measurably better: the default should become one
    not_better: List[str]  # within the cost, as many seeds, not measurably better
    undecided: List[str]  # within the cost (or of unknown cost), but partial or on fewer seeds: not decided yet
    dearer: List[str]  # over MAX_COST: not candidates, whatever they show
    noise_floor: List[str]  # the default's own setting trained again

    def sentence(self) -> str:
        if self.successors:
            return f"The default study should become {', '.join(self.successors)}: it {RULE}."
        groups = (("not better", self.not_better), ("within the cost but not decided yet (partial or fewer "
                  "seeds)", self.undecided), (f"dearer than {MAX_COST:g}x, so not candidates whatever they show",
                  self.dearer), ("the default's setting again (the noise floor)", self.noise_floor))
        return f"The default stays: no rung {RULE}" + "".join(f"; {w}: {', '.join(r)}" for w, r in groups if r) + "."


def decide(frame: pd.DataFrame) -> Decision:
    """Sort the rungs other than the default by issue 19's rule (see Decision)."""
    default, others = default_row(frame), frame[frame["rung"] != DEFAULT_RUNG]
    floor = others["rung"].map(is_noise_floor).astype(bool)  # bool even with no other rung
    dearer = ~floor & (others["cost_x_default"] > MAX_COST + 1e-9)
    candidate = ~floor & ~dearer  # an unknown cost stays a candidate, undecided
    ready = candidate & others["cost_x_default"].notna() & ~others["partial"].astype(bool) \
        & (others["seeds"] >= default["seeds"])
    better = others["better"].astype(bool)

    def names(mask: pd.Series) -> List[str]:
        return list(others.loc[mask, "rung"])

    return Decision(successors=names(ready & better), not_better=names(ready & ~better),
                    undecided=names(candidate & ~ready), dearer=names(dearer), noise_floor=names(floor))


SCORES = {"clear_agree": ("{} clear steps with the paper's sign", ".0f"), "kendall": ("Kendall {}", "+.2f"),
          "slope": ("slope {}", "+.2f"), "gain": ("ConvNeXt - ResNet {}", "+.2f")}
"""The scores a one-seed rung is read by: how a sentence writes each, and its format."""


def one_seed_range(read: List[dict]) -> pd.DataFrame:
    """Each seed of the default's own setting (the default and its noise-floor retrains)
    scored alone: what one seed of the default can show, to read a one-seed rung against.
    One row per (rung, seed), columns SCORES."""
    rows = []
    for r in read:
        name = rung_name(r["study"])
        if name != DEFAULT_RUNG and not is_noise_floor(name):
            continue
        for seed, runs in r["runs"].groupby("seed"):
            row = rung_row({"study": r["study"], "runs": runs, "partial": False})  # the table's row of this seed alone
            if "clear_agree" in row:
                rows.append({"rung": name, "seed": int(seed), **{k: row[k] for k in SCORES}})
    return pd.DataFrame(rows, columns=["rung", "seed", *SCORES])


def range_sentence(frame: pd.DataFrame, spread: pd.DataFrame) -> str:
    """The one-seed range of the default's setting, and how each rung on fewer seeds than
    the default reads against it ('' with fewer than two seeds to make a range of)."""
    if len(spread) < 2:
        return ""
    lo, hi = spread[list(SCORES)].min(), spread[list(SCORES)].max()
    seeds = ", ".join(f"{n} of {r}" for r, n in spread["rung"].value_counts(sort=False).items())
    said = ", ".join(_score(k, lo[k], hi[k]) for k in SCORES)
    few = frame[(frame["rung"] != DEFAULT_RUNG) & (frame["seeds"] < default_row(frame)["seeds"])]
    read = [f"{r['rung']}: " + ("; ".join(_score(k, r[k]) + f", {side}" for k, side in outside(r, lo, hi).items())
                                or "within it on every score") for _, r in few.iterrows()]
    return (f"One seed of the default's setting, each seed scored alone ({len(spread)} seeds: {seeds}): {said}."
            + (f" Rungs on fewer seeds, against that range: {'. '.join(read)}." if read else ""))


def _score(key: str, v: float, to: Optional[float] = None) -> str:
    """A score as the sentences write it: 'Kendall +0.08', or a range 'Kendall +0.08 to +0.26'."""
    words, spec = SCORES[key]
    return words.format(format(v, spec) + ("" if to is None else f" to {to:{spec}}"))


def outside(r: pd.Series, lo: pd.Series, hi: pd.Series) -> dict:
    """The SCORES of rung row `r` outside [lo, hi]: score -> 'below' or 'above'."""
    return {k: "below" if r[k] < lo[k] else "above" for k in SCORES
            if pd.notna(r.get(k, math.nan)) and not lo[k] <= r[k] <= hi[k]}


def _cell(v: float, lo: float, hi: float, spec: str = "+.2f") -> str:
    if not pd.notna(v):
        return ""
    return format(v, spec) + (f" [{lo:{spec}}, {hi:{spec}}]" if pd.notna(lo) and pd.notna(hi) else "")


def ladder_markdown(frame: pd.DataFrame, skipped: Sequence[dict] = (), spread: Optional[pd.DataFrame] = None) -> str:
    """The ladder table: per rung, its cost and how its changes transfer, with the footnote,
    the decision, the one-seed range of the default's setting (one_seed_range) with the
    one-seed rungs read against it, and the rungs not scored yet, each with what it has so far."""
    gain = frame["paper_gain"].dropna() if "paper_gain" in frame else pd.Series(dtype=float)
    head = ["rung", "knobs", "cost (x default)", "CPU-min per seed", "seeds", "clear steps with the paper's sign (p)",
            "Spearman (clear)", "Kendall (clear)", "slope",
            f"ConvNeXt - ResNet{f' (paper {gain.iloc[0]:+.2f})' if len(gain) else ''}"]
    one_seed = range_sentence(frame, spread) if spread is not None else ""
    cells = []
    for _, r in frame.iterrows():
        signs = f"{int(r['clear_agree'])} of {int(r['clear_steps'])} (p {r['clear_sign_p']:.2g})" \
            if pd.notna(r.get("clear_agree", math.nan)) else ""
        intervals = [_cell(r.get(k), r.get(f"{k}_lo"), r.get(f"{k}_hi"))
                     for k in ("spearman", "kendall", "slope", "gain")]
        cpu = "" if not pd.notna(r["cpu_minutes"]) else format(r["cpu_minutes"], ".0f")
        cells.append([f"{r['rung']}{' (partial)' if r['partial'] else ''}", f"{r['knobs']}",
                      f"{r['cost_x_default']:.2f}", cpu, f"{r['seeds']}", signs, *intervals])
    return "\n".join([*markdown_lines(head, cells), "",
                      "Intervals: 95%; rank correlations bootstrap over seeds (none with one seed), the slope a "
                      "t-interval over the clear steps, ConvNeXt - ResNet a t-interval over paired seeds (none with "
                      "one seed). Cost: training compute per seed (forward GMACs x epochs over the 17 steps) against "
                      "the default's; CPU-minutes on the machine that ran the rung (empty where runs did not record "
                      "their threads).", "", decide(frame).sentence(),
                      *(["", one_seed] if one_seed else []),
                      *(f"\nNot scored yet: {rung_name(r['study'])}: {r['skipped']}." for r in skipped)])


PANELS = (
    ("kendall", "Kendall's tau on the clear steps", 1.0),
    ("slope", "slope of our changes on the paper's", 1.0),
    ("gain", "ConvNeXt minus ResNet (points)", None),
)


def ladder_figure(frame: pd.DataFrame, spread: pd.DataFrame, out: Path) -> List[Path]:
    """Transfer against cost, one point per rung: the default a star, partial rungs hollow,
    and a grey band where one seed of the default's setting falls (one_seed_range)."""
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5.2 * len(PANELS), 4.4))
    # Rungs of one cost (the default and its retrain) stand side by side, not on each other.
    at = frame["cost_x_default"].round(3)
    same, siblings = frame.groupby(at).cumcount(), frame.groupby(at)["rung"].transform("size")
    x = frame["cost_x_default"] * 1.08 ** same
    left = (same % 2 == 0) & (siblings > 1)  # of rungs at one cost, every other is labelled on its left
    for ax, (key, label, ideal) in zip(axes, PANELS):
        for i, r in frame.iterrows():
            v = r.get(key, math.nan)
            if not pd.notna(v):
                continue
            lo, hi = r.get(f"{key}_lo", math.nan), r.get(f"{key}_hi", math.nan)
            err = [[v - lo], [hi - v]] if pd.notna(lo) and pd.notna(hi) else None
            default = r["rung"] == DEFAULT_RUNG
            ax.errorbar(x[i], v, yerr=err, fmt="*" if default else "o", ms=13 if default else 7,
                        color="#d62728" if default else "#1f77b4", mfc="white" if r["partial"] else None, capsize=3)
            seeds = f"{r['seeds']} seed{'s' if r['seeds'] > 1 else ''}{', partial' if r['partial'] else ''}"
            ax.annotate(f"{r['rung']} ({seeds})", (x[i], v), textcoords="offset points",
                        xytext=(-8 if left[i] else 6, 4 - 11 * (same[i] // 2)), ha="right" if left[i] else "left",
                        fontsize=8)
        if len(spread) >= 2:
            ax.axhspan(spread[key].min(), spread[key].max(), color="#bbbbbb", alpha=0.3, lw=0,
                       label=f"one seed of the default's setting ({len(spread)} seeds)")
            ax.legend(loc="best", fontsize=7, frameon=False)
        ax.axhline(0, color="#999999", lw=0.8)
        if ideal is not None:
            ax.axhline(ideal, color="#999999", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.margins(x=0.2)
        ax.set_xticks(sorted(set(at.dropna())))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:.2g}x"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.tick_params(axis="x", labelrotation=45)  # close costs (3.3x, 4x) would print on each other
        ax.set_xlabel("cost per seed (training compute, x the default study)")
        ax.set_title(label, fontsize=10)
    fig.suptitle("Which proxy keeps ImageNet's ranking? (95% intervals; dashed: the paper itself)", fontsize=11)
    fig.tight_layout()
    return save(fig, out, "ladder")


def write_ladder(frame: pd.DataFrame, spread: pd.DataFrame, skipped: Sequence[dict], out: Path) -> List[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "ladder.md").write_text(ladder_markdown(frame, skipped, spread) + "\n")
    frame.to_csv(out / "ladder.csv", index=False)
    spread.to_csv(out / "ladder_one_seed.csv", index=False)
    return [out / "ladder.md", out / "ladder.csv", out / "ladder_one_seed.csv", *ladder_figure(frame, spread, out)]


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m analysis.ladder", description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="*", help=f"the rungs' study directories (default: experiments/{DEFAULT.name} "
                        "and its rungs beside it)")
    parser.add_argument("--out", type=Path, default=OUT, help="where the table and figure go (default: experiments/"
                        "figures)")
    args = parser.parse_args(argv)
    try:
        read, skipped = read_ladder(rungs(args.studies))
        frame, spread = table(read), one_seed_range(read)
        written = write_ladder(frame, spread, skipped, args.out)
    except (results.ResultsError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(ladder_markdown(frame, skipped, spread))
    print("ladder: " + ", ".join(str(p) for p in written))


if __name__ == "__main__":
    main(sys.argv[1:])
