"""Read studies into pandas: one row per run, or one row per run and epoch.

    import roadmap.results as R
    runs = R.load("experiments/fashion_mnist_micro")      # a study, a run directory, or a glob
    curves = R.history("runs/*")                           # per-epoch, long form
    R.step_table(runs)                                     # per step: mean and std over seeds, beside the paper

Runs still training show status `running` with the epochs they finished; failed and
diverged runs keep their status and whatever they measured. A completed run that ended at
chance level is `collapsed` (a column apart from its status) and, like a run that did not
complete, is never averaged. A study that sweeps more
than steps and seeds (runs/<study>/recipe.lr=0.001/<step>/seed0/) gets one column per
swept key (`recipe.lr`), and the step table one block of rows per value.
"""

from __future__ import annotations

import dataclasses
import glob as globlib
import json
import os
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from roadmap import factors, paper, rundir, stats
from roadmap.config import PARENTS, SIDE_BRANCHES, STEPS, step_order
from roadmap.errors import ResultsError
from roadmap.rundir import RunSummary, Status
from roadmap.tables import markdown_lines

PathLike = Union[str, Path]

# One column per field of a run's summary (one name per quantity, as in summary.json), with
# the study, its swept keys, the step's place in the roadmap and the run's directory.
SUMMARY_COLUMNS = [f.name for f in dataclasses.fields(RunSummary) if f.name != "versions"]
RUN_COLUMNS = ["study", "swept", "order", *SUMMARY_COLUMNS, "collapsed", "left_out", "run_dir"]
# Where a run's summary is missing, its config says what the run is.
FROM_CONFIG = {"step": "step.name", "change": "step.change", "regime": "regime.name", "data": "data.name",
               "recipe": "recipe.name", "seed": "seed", "epochs": "recipe.epochs"}


NUMERIC_COLUMNS = ["epochs_done", "epochs", "params", "gmacs", "top1", "top5", "best_top1", "best_top5", "images_per_s",
                   "data_share", "peak_memory_mb", "wall_time_s"]


def run_dirs(paths: Union[PathLike, Iterable[PathLike]]) -> List[Path]:
    """Every run directory under the given studies, run directories or globs. ResultsError
    for a path that does not exist or a glob that matches nothing: a typo is not 'no runs'."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    found = []
    for p in paths:
        matches = sorted(globlib.glob(str(p)))
        if not matches:
            raise ResultsError(f"{p} does not exist: give a study directory (e.g. experiments/fashion_mnist_micro), "
                               "a run directory, or a glob that matches some")
        for match in matches:
            m = Path(match)
            if not m.is_dir():
                raise ResultsError(
                    f"{m} is a file, not a study or run directory: give the directory that holds the runs"
                )
            if (m / rundir.SUMMARY).exists() or (m / rundir.CONFIG).exists():
                found.append(m)
            else:
                found.extend(runs_under(m))
    return list(dict.fromkeys(found))


def runs_under(study: Path) -> List[Path]:
    """The directories under `study` that hold a summary or a config, symlinks followed (a
    step directory linked to a bigger disk is part of its study)."""
    found, seen = [], set()
    for folder, subfolders, files in os.walk(study, followlinks=True):
        seen.add(os.path.realpath(folder))
        subfolders[:] = [s for s in subfolders if os.path.realpath(os.path.join(folder, s)) not in seen]  # no loop
        if rundir.SUMMARY in files or rundir.CONFIG in files:
            found.append(Path(folder))
    return sorted(found)


def study_dirs(paths: Iterable[PathLike]) -> List[Path]:
    """The study directories a command was given; ResultsError naming the first that is not one."""
    missing = [p for p in paths if not Path(p).is_dir()]
    if missing:
        raise ResultsError(
            f"{missing[0]} is not a directory: give study directories such as experiments/fashion_mnist_micro"
        )
    return [Path(p) for p in paths]


def _flat_config(run: Path) -> Dict[str, Any]:
    """The run's config.yaml flattened into `cfg.*` keys, and the level of every factor of
    the roadmap (`factor.<name>`, roadmap/factors.py); {} when it is missing or unreadable."""
    path = run / rundir.CONFIG
    try:
        container = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception:  # missing, truncated, not YAML: the run's status says so
        return {}
    if not isinstance(container, dict):
        return {}
    out = {f"cfg.{k}": (json.dumps(v) if isinstance(v, list) else v) for k, v in rundir.flat_config(container).items()}
    try:
        out.update({f"factor.{k}": v for k, v in factors.levels_of(container).items()})
    except (KeyError, TypeError):  # a config from before the factor table's fields
        pass
    return out


def layout(run: Path, step: Optional[str]) -> Tuple[str, Dict[str, Any]]:
    """(study, swept values) of a run directory as the sweep lays them out:
    <study>/[<key>=<value>/ ...]<step>/seed<k>. A run anywhere else is a study of its own."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not (step and run.parent.name == step and re.fullmatch(r"seed-?\d+", run.name)):
        return run.name, {}
    parser, swept, folder = OverridesParser.create(), {}, run.parent.parent
    while "=" in folder.name:
        try:
            override = parser.parse_override(folder.name)
        except Exception:  # a study whose own name has '=' in it
            break
        value = override.value()
        swept[override.key_or_group] = (
            value if isinstance(value, (str, int, float, bool)) else override.get_value_element_as_str()
        )
        folder = folder.parent
    return folder.name, dict(reversed(list(swept.items())))


def swept_keys(frame: pd.DataFrame) -> List[str]:
    """The keys a study swept besides step and seed, in the order they came (the `swept`
    column of load() and step_table(), a comma-separated list per row)."""
    if "swept" not in frame.columns:
        return []
    return list(dict.fromkeys(k for keys in frame["swept"].dropna() for k in str(keys).split(",") if k))


def load(paths: Union[PathLike, Iterable[PathLike]]) -> pd.DataFrame:
    """One row per run: the summary's figures, one column per swept key (besides the
    run columns regime, data and recipe, which a group sweep fills), and the run's config
    (`cfg.*` columns)."""
    rows = [_run_row(run) for run in run_dirs(paths)]
    if not rows:
        return pd.DataFrame(columns=RUN_COLUMNS)
    keys = list(dict.fromkeys(k for row in rows for k in row["swept"]))
    for row in rows:  # a run that did not sweep a key ran at its config's value
        swept = row["swept"]
        for k in keys:
            row[k] = swept[k] if k in swept else row.get(f"cfg.{k}", row.get(f"cfg.{k}.name", row.get(k)))
        row["swept"] = ",".join(keys)
    df = pd.DataFrame(rows)
    for column in NUMERIC_COLUMNS:  # None (a run without the figure) reads as NaN
        df[column] = pd.to_numeric(df[column], errors="coerce")
    df["seed"] = pd.to_numeric(df["seed"], errors="coerce")  # a damaged seed is left out (its left_out says why)
    df["left_out"] = df["left_out"].where(df["left_out"].notna(), foreign(df))
    extra = [k for k in keys if k not in RUN_COLUMNS]
    df = df[[*RUN_COLUMNS[:2], *extra, *RUN_COLUMNS[2:], *[c for c in df.columns if c.startswith(("factor.", "cfg."))]]]
    return df.sort_values(["study", *keys, "order", "seed"], kind="stable").reset_index(drop=True)


# A completed run whose test accuracy stays under this multiple of chance learned nothing:
# it is marked `collapsed` and, like a run that did not complete, never averaged in.
CHANCE_MULTIPLE = 1.5


def collapsed(top1: Optional[float], num_classes: Optional[int]) -> bool:
    """Whether a final top-1 (%) is at chance level for `num_classes` classes."""
    if top1 is None or not num_classes:
        return False
    return top1 < CHANCE_MULTIPLE * 100.0 / float(num_classes)


def _run_row(run: Path) -> Dict[str, Any]:
    summary, status = rundir.summary_and_status(run)
    cfg = _flat_config(run)
    if not cfg and (run / rundir.CONFIG).exists():
        status = Status.unreadable
    row: Dict[str, Any] = {name: None for name in SUMMARY_COLUMNS}
    if summary is not None:
        row.update({k: v for k, v in summary.to_dict().items() if k in row})
    for name, key in FROM_CONFIG.items():
        if row[name] is None:
            row[name] = cfg.get(f"cfg.{key}")
    study, swept = layout(run, row["step"])
    left_out = damage(row, status)
    at_chance = not left_out and status is Status.completed and collapsed(row["top1"], cfg.get("cfg.data.num_classes"))
    order = step_order(row["step"]) + design_order(row["step"], cfg.get("cfg.step.reference"))
    return {**row, "status": status.value, "collapsed": at_chance, "left_out": left_out, "study": study, "order": order,
            "run_dir": str(run), "swept": swept, **cfg}


def damage(row: Dict[str, Any], status: Status) -> Optional[str]:
    """Why a run's record cannot be averaged although its directory says it completed (a
    seed that is not an integer, a top-1 that is not a finite number); None when it can."""
    seed = row.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        return f"its seed {seed!r} is not an integer"
    top1 = row.get("top1")
    if status is Status.completed and not (isinstance(top1, (int, float)) and not isinstance(top1, bool)
                                      and np.isfinite(top1)):
        return f"its top-1 {top1!r} is not a finite number"
    return None


def foreign(df: pd.DataFrame) -> pd.Series:
    """Per run, why it does not belong with the others of its study and swept value: a
    regime or data set other than theirs (the most common one); None where it belongs."""
    out = pd.Series([None] * len(df), index=df.index, dtype=object)
    keys = ["study", *swept_keys(df)]
    for _, group in df.groupby(keys, sort=False, dropna=False):
        for column in ("regime", "data"):
            if column in keys[1:] or group[column].dropna().nunique() < 2:
                continue
            usual = group[column].mode().iloc[0]
            odd = group.index[group[column].notna() & (group[column] != usual)]
            out[odd] = [f"a {column} of {v} in a study of {usual}" for v in df.loc[odd, column]]
    return out


def completed(runs: pd.DataFrame) -> pd.Series:
    """Per run, whether it trained every epoch (collapsed and damaged runs included)."""
    return runs["status"] == Status.completed.value


def averaged(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs that count: completed, not collapsed, and nothing in `left_out`."""
    kept = runs["left_out"].isna() if "left_out" in runs else True
    return runs[completed(runs) & ~runs["collapsed"].fillna(False).astype(bool) & kept]


def run_outcomes(runs: pd.DataFrame) -> pd.Series:
    """Each run's status, reading `collapsed` for a completed run that ended at chance and
    'left out: <why>' for a run whose record cannot be averaged."""
    status = runs["status"].where(~runs["collapsed"].fillna(False).astype(bool), "collapsed")
    if "left_out" not in runs:
        return status
    return status.where(runs["left_out"].isna(), "left out: " + runs["left_out"].astype(str))


def design_order(step: Optional[str], reference: Optional[str]) -> float:
    """Where a design's network sorts after the paper's steps: its reference first, then one
    network per factor in roadmap order (convnext-minus-<factor>), then the rest by name."""
    if step is None or step in PARENTS or step == "resnet":
        return 0
    if not isinstance(reference, str):
        return 0.0
    factor = factors.varied_by(step)
    return 1 + factors.NAMES.index(factor) if factor is not None else 100


def history(paths: Union[PathLike, Iterable[PathLike]], runs: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """One row per run, epoch and metric: study, swept keys, step, seed, epoch, metric, value.
    `runs`: load(paths), where the caller has already read it."""
    runs = load(paths) if runs is None else runs
    rows = []
    for run, study, step, seed in zip(runs["run_dir"], runs["study"], runs["step"], runs["seed"]):
        _, swept = layout(Path(run), step)
        for record in rundir.read_metrics(Path(run)):
            for metric, value in dataclasses.asdict(record).items():
                if metric != "epoch":
                    rows.append({"study": study, **swept, "step": step, "seed": seed,
                                 "epoch": record.epoch, "metric": metric, "value": value})
    columns = ["study", "step", "seed", "epoch", "metric", "value"]
    df = pd.DataFrame(rows, columns=None if rows else columns)
    return df[[c for c in df.columns if c not in columns[1:]] + columns[1:]]


def step_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per study, swept value and step: top-1 mean and std over the seeds that
    completed (collapsed and diverged runs are counted apart, never averaged), the change
    from the step it builds on as a paired difference per seed with its 95% t-interval
    (roadmap.stats), and the paper's top-1 and change (r50's column for micro)."""
    keys = ["study", *swept_keys(runs)]
    out: List[dict] = []
    for values, group in runs.groupby(keys, sort=False, dropna=False):
        out.extend(_step_rows(group, {**dict(zip(keys, values)), "swept": ",".join(keys[1:])}))
    return pd.DataFrame(out)


def builds_on(group: pd.DataFrame) -> Dict[str, str]:
    """step -> what its change is measured against: the step it builds on (PARENTS), or a
    design network's reference (convnext for convnext-minus-<factor>)."""
    out = dict(PARENTS)
    if "cfg.step.reference" in group.columns:
        out.update({s: r for s, r in zip(group["step"], group["cfg.step.reference"]) if isinstance(r, str)})
    return out


def seed_deltas(group: pd.DataFrame, column: str = "top1") -> Dict[str, Dict[int, float]]:
    """step -> seed -> its top-1 (or `column`) minus that of what it builds on (builds_on),
    same seed, for every seed both completed (one study and swept value)."""
    done = averaged(group)
    done = done[done[column].notna()]
    top1 = {(s, int(k)): v for s, k, v in zip(done["step"], done["seed"], done[column])}
    parents = builds_on(group)
    out: Dict[str, Dict[int, float]] = {}
    for (step, seed), value in top1.items():
        parent = parents.get(step)
        if (parent, seed) in top1:
            out.setdefault(step, {})[seed] = value - top1[(parent, seed)]
    return out


def _step_rows(group: pd.DataFrame, values: Dict[str, Any]) -> List[dict]:
    out, pairs, parents = [], seed_deltas(group), builds_on(group)
    for step, g in sorted(group.groupby("step"), key=lambda kv: (kv[1]["order"].iloc[0], kv[0])):
        done = averaged(g)
        regime = g["regime"].iloc[0]
        ref_regime = paper.reference_regime(regime)
        ref, parent = paper.row(ref_regime, step), parents.get(step)
        parent_ref = paper.row(ref_regime, parent) if parent else None
        out.append({
            **values, "step": step, "order": g["order"].iloc[0], "change": g["change"].iloc[0],
            "side_branch": step in SIDE_BRANCHES, "builds_on": parent, "regime": regime,
            "params_m": g["params"].iloc[0] / 1e6 if g["params"].notna().any() else float("nan"),
            "gmacs": g["gmacs"].iloc[0], "top1_mean": done["top1"].mean() if len(done) else float("nan"),
            "top1_std": done["top1"].std(ddof=1) if len(done) > 1 else float("nan"),  # one seed: no spread
            "seeds": len(done), "runs": len(g),
            **stats.interval_columns(stats.t_interval(list(pairs.get(step, {}).values()))),
            "images_per_s": done["images_per_s"].mean() if len(done) else float("nan"),
            "paper_top1": ref.top1 if ref else float("nan"),
            "paper_top1_std": ref.top1_std if ref and ref.top1_std is not None else float("nan"),
            "paper_gflops": ref.gflops if ref else float("nan"),
            "paper_delta": ref.top1 - parent_ref.top1 if (ref and parent_ref) else float("nan"),
            "statuses": ", ".join(f"{k}: {v}" for k, v in run_outcomes(g).value_counts().items()),
        })
    return out


def transfer(runs: pd.DataFrame) -> Optional[stats.Transfer]:
    """How the per-step changes of one study (and swept value) agree with the paper's:
    signs and rank correlations over the main path's steps and the side branches, the same
    over the paper's clear steps with the slope of our changes on its, and ConvNeXt minus
    ResNet end to end (roadmap.stats.transfer_of)."""
    regime = paper.reference_regime(runs["regime"].dropna().iloc[0]) if runs["regime"].notna().any() else "r50"
    changes = {s: paper.change(regime, s, p) for s, p in PARENTS.items()}
    theirs = {s: c[0] for s, c in changes.items() if c is not None}
    first, last = STEPS[0], STEPS[-1]
    ends = paper.change(regime, last, first)
    return stats.transfer_of(seed_deltas(runs), theirs, clear=paper.clear_steps(regime, PARENTS),
                          gain=end_to_end(runs, first, last), paper_gain=ends[0] if ends else float("nan"),
                          clear_multiple=paper.CLEAR_MULTIPLE)


def end_to_end(runs: pd.DataFrame, first: str, last: str) -> Dict[int, float]:
    """seed -> top-1 of `last` minus top-1 of `first`, for every seed both completed."""
    done = averaged(runs)
    top1 = {(s, int(k)): v for s, k, v in zip(done["step"], done["seed"], done["top1"])}
    return {k: v - top1[(first, k)] for (s, k), v in top1.items() if s == last and (first, k) in top1}


def split_by_swept(table: pd.DataFrame) -> List[Tuple[Dict[str, Any], pd.DataFrame]]:
    """The step table split by the values of the swept keys: [(values, rows)], one block
    per combination ([({}, table)] for a study that swept only steps and seeds)."""
    keys = swept_keys(table)
    if not keys or table.empty:
        return [({}, table)]
    return [(dict(zip(keys, v)), g) for v, g in table.groupby(keys, sort=False, dropna=False)]


def variant_name(values: Dict[str, Any]) -> str:
    """'model.kernel_size=5, recipe.lr=0.001' for a block of the step table ('' for none)."""
    return ", ".join(f"{k}={v}" for k, v in values.items())


def markdown_table(table: pd.DataFrame, runs: Optional[pd.DataFrame] = None) -> str:
    """The step table as Markdown, ours beside the paper's, one table per swept value; with
    the runs, a footer: how Δ is measured, runs not averaged, and the transfer statistics."""
    if table.empty:
        return "(no runs)"
    blocks = []
    for values, rows in split_by_swept(table):
        head = [f"**{variant_name(values)}**", ""] if values else []
        block = runs if runs is None else matching(runs, values)
        blocks.append(
            "\n".join(head + markdown_lines(*measured_cells(rows, *_markdown_rows(rows)))
                      + ([""] + _footer(rows, block) if block is not None else []))
        )
    return "\n\n".join(blocks)


def matching(runs: pd.DataFrame, values: Dict[str, Any]) -> pd.DataFrame:
    """The runs (or history rows) of one block of the step table: those with these swept
    values (a frame without a key's column has nothing to tell apart by it)."""
    for k, v in values.items():
        if k in runs.columns:
            runs = runs[(runs[k] == v) | (runs[k].isna() & pd.isna(v))]
    return runs


def _markdown_rows(table: pd.DataFrame) -> Tuple[List[str], List[List[str]]]:
    """The step table's Markdown heading and cells, ours beside the paper's, in roadmap order."""
    ref = paper.reference_regime(table["regime"].iloc[0])
    f = lambda v, spec: "" if pd.isna(v) else format(v, spec)  # noqa: E731
    head = ["step", "what changes", "params (M)", "GMACs", "top-1 (%)", "± std", "seeds", "Δ top-1", "95% interval",
            "img/s", f"paper top-1 ({ref})", "paper Δ"]
    cells = []
    for _, r in table.sort_values("order").iterrows():
        interval = "" if pd.isna(r["delta_lo"]) else f"[{r['delta_lo']:+.2f}, {r['delta_hi']:+.2f}]"
        mark = " *" if r["delta_excludes_zero"] else ""
        cells.append([f"{r['step']}", f"{r['change']}", f(r["params_m"], ".2f"), f(r["gmacs"], ".4g"),
                      f(r["top1_mean"], ".2f"), f(r["top1_std"], ".2f"), f"{r['seeds']}/{r['runs']}",
                      f"{f(r['delta'], '+.2f')}{mark}", interval, f(r["images_per_s"], ".0f"),
                      f(r["paper_top1"], ".2f"), f(r["paper_delta"], "+.2f")])
    return head, cells


def _footer(table: pd.DataFrame, runs: pd.DataFrame) -> List[str]:
    lines = ["Δ top-1: the change from the step each builds on, a paired difference per seed (same seed for both), "
             "mean and 95% Student-t interval (n - 1 degrees of freedom); * where the interval excludes zero."]
    if len(averaged(runs)) and averaged(runs).groupby("step")["seed"].nunique().max() == 1:
        lines.append("1 seed: no spread or interval (the ± std and interval cells stay empty).")
    left = runs.drop(averaged(runs).index)
    if len(left):
        names = ", ".join(f"{Path(r).parent.name} {Path(r).name} ({s})"
                          for r, s in zip(left["run_dir"], run_outcomes(left)))
        lines.append(f"Not averaged: {names}.")
    t = transfer(runs) if runs["seed"].notna().any() else None
    if t is not None:
        lines.extend(t.summary(paper.reference_regime(table["regime"].iloc[0])).splitlines())
    return lines + measured_footer(table)


TABLE_COLUMNS = [
    "step",
    "change",
    "builds_on",
    "params_m",
    "gmacs",
    "top1_mean",
    "top1_std",
    "seeds",
    "runs",
    "delta",
    "delta_lo",
    "delta_hi",
    "delta_pairs",
    "delta_excludes_zero",
    "images_per_s",
    "paper_top1",
    "paper_delta",
    "statuses",
]


def save_tables(
    study: PathLike, folder: Optional[PathLike] = None, with_runs: bool = True
) -> Tuple[pd.DataFrame, str, List[Path]]:
    """Read a study and write table.md and table.csv (per swept value and step) and,
    `with_runs`, results.csv (one row per run) into `folder` (the study's root by default).
    One process at a time (a lock in `folder`: the study itself may be read-only), each file
    replaced atomically: what is written is always the run directories as they were when it
    was written, whichever sweep writes last. A file whose content would not change is not
    rewritten; ResultsError (one line, naming the path) when a write fails, a full disk say.
    Returns the runs, the Markdown and the paths."""
    folder = Path(folder or study)
    run_dirs(study)  # a study that does not exist is named, before anything is written
    try:
        with rundir.exclusive(folder / TABLES_LOCK):
            return _write_tables(study, folder, with_runs)
    except OSError as e:
        raise ResultsError(
            f"cannot write the tables of {study} into {folder} ({e.strerror or e}): free space there, or write them "
            "elsewhere (analysis.plots --out)"
        ) from e


def _write_tables(study: PathLike, folder: Path, with_runs: bool) -> Tuple[pd.DataFrame, str, List[Path]]:
    runs = with_measured(load(study), study, folder)  # ERF and mCE columns where analysis.erf/robustness measured
    table = measured_columns(step_table(runs), runs)
    text = markdown_table(table, runs)
    keys = [k for k in swept_keys(runs) if k not in TABLE_COLUMNS]
    columns = [*keys, *TABLE_COLUMNS, *measured_names(table)]
    files = {
        folder / "table.md": text + "\n",
        folder / "table.csv": table[columns].to_csv(index=False) if not table.empty else "",
    }
    if with_runs:
        files[folder / "results.csv"] = runs[[c for c in runs.columns if not c.startswith("cfg.")]].to_csv(index=False)
    for path, content in files.items():
        if not (path.is_file() and path.read_bytes() == content.encode()):
            rundir.atomic_write(path, content.encode())
    return runs, text, list(files)


TABLES_LOCK = ".tables.lock"


def writable(folder: PathLike) -> bool:
    """Whether `folder` exists or can be made, and takes a file (a read-only mount does not)."""
    try:
        rundir.check_writable(Path(folder))
        return True
    except rundir.RunDirError:
        return False


def design_of(runs: pd.DataFrame) -> str:
    """The design a study's runs come from: path, leave_one_out, add_one or random."""
    column = runs.get("cfg.design.name")
    names = set(column.dropna()) if column is not None else set()
    return names.pop() if len(names) == 1 else "path"


def factor_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run that completed: its top-1, MACs and the level of every factor (0/1)."""
    done = averaged(runs)
    columns = [f"factor.{name}" for name in factors.NAMES if f"factor.{name}" in runs.columns]
    out = done[["step", "seed", "top1", "gmacs", *columns]].copy()
    out[columns] = out[columns].astype(float)
    return out.rename(columns={c: c.removeprefix("factor.") for c in columns})


def main_effects(runs: pd.DataFrame, with_macs: bool = False) -> pd.DataFrame:
    """Top-1 regressed on the factor indicators (and log MACs, `with_macs`): one row per
    term with its effect in points and 95% interval (roadmap.stats.fit_main_effects)."""
    table = factor_table(runs)
    names = [n for n in factors.NAMES if n in table.columns]
    x = table[names].to_numpy()
    if with_macs:
        x = np.column_stack([x, np.log(table["gmacs"].to_numpy(dtype=float))])
        names = [*names, "log_gmacs"]
    effects = stats.fit_main_effects(x, table["top1"].to_numpy(dtype=float), names)
    return pd.DataFrame([dataclasses.asdict(e) for e in effects])


# ----------------------------------------------------------------------------- measured beyond accuracy
# analysis.erf and analysis.robustness measure each run's checkpoint and write one row per run
# (`run`: its directory relative to the study) into the study's figures folder. Where such a
# file sits beside the tables being written, or in <study>/figures, the step table gains its
# column: the mean and 95% t-interval over seeds, and the change from the step each builds on,
# paired per seed as top-1's is. Nothing here measures; a study without the files is unchanged.

# name -> (file, its column, the Markdown heading)
MEASURED = {"erf50": ("erf_runs.csv", "erf50_side", "ERF 50% (px)"), "mce": ("robustness_runs.csv", "mce", "mCE")}


def run_key(run_dir: PathLike, study: PathLike) -> str:
    """A run's directory relative to its study (resnet/seed0): how measurements name runs."""
    return Path(os.path.relpath(run_dir, study)).as_posix()


def with_measured(runs: pd.DataFrame, study: PathLike, folder: Optional[PathLike] = None) -> pd.DataFrame:
    """The runs with a column per measurement found for them (MEASURED), NaN where a run has none."""
    runs = runs.copy()
    keys = [run_key(r, study) for r in runs["run_dir"]]
    for name, (file, column, _) in MEASURED.items():
        found = next((p for p in (Path(folder or study) / file, Path(study) / "figures" / file) if p.is_file()), None)
        if found is None:
            continue
        try:
            values = pd.read_csv(found).set_index("run")[column]
        except (OSError, ValueError, KeyError, pd.errors.ParserError) as e:
            raise ResultsError(f"{found} is unreadable ({type(e).__name__}): delete it, or measure the study again "
                               f"(python -m analysis.{file.split('_')[0]})") from e
        runs[name] = pd.to_numeric(pd.Series([values.get(k) for k in keys], index=runs.index), errors="coerce")
    return runs


def column_table(runs: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per study, swept value and step, of one per-run figure: `<column>_mean`, `_lo`, `_hi`
    (95% t-interval over the seeds averaged) and `_seeds`, and the change from the step each
    builds on, paired per seed (`<column>_delta`, `_delta_lo`, `_delta_hi`, `_delta_excludes_zero`)."""
    keys = ["study", *swept_keys(runs)]
    out = []
    for values, group in runs.groupby(keys, sort=False, dropna=False):
        pairs = seed_deltas(group, column)
        for step, g in group.groupby("step", sort=False):
            done = averaged(g)[column].dropna()
            level, change = stats.t_interval(list(done)), stats.t_interval(list(pairs.get(step, {}).values()))
            out.append({**dict(zip(keys, values)), "step": step, f"{column}_mean": level.mean, f"{column}_lo": level.lo,
                        f"{column}_hi": level.hi, f"{column}_seeds": level.n, f"{column}_delta": change.mean,
                        f"{column}_delta_lo": change.lo, f"{column}_delta_hi": change.hi,
                        f"{column}_delta_excludes_zero": change.excludes_zero})
    return pd.DataFrame(out)


def measured_columns(table: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """The step table with the columns of every measurement its runs carry (with_measured)."""
    for name in (n for n in MEASURED if n in runs.columns and runs[n].notna().any()):
        keys = ["study", *swept_keys(runs), "step"]
        table = table.merge(column_table(runs, name), on=keys, how="left")
    return table


def measured_names(table: pd.DataFrame) -> List[str]:
    """The csv columns of the measurements a step table carries."""
    return [c for c in table.columns if c.split("_")[0] in MEASURED and c.split("_")[0] != c]


def measured_cells(table: pd.DataFrame, head: List[str], cells: List[List[str]]) -> Tuple[List[str], List[List[str]]]:
    """The step table's heading and cells (_markdown_rows) with a value and a change cell per measurement."""
    names = [n for n in MEASURED if f"{n}_mean" in table.columns]
    if not names:
        return head, cells
    head = head + [h for n in names for h in (MEASURED[n][2], f"Δ {MEASURED[n][2]}")]
    out = []
    for row, (_, r) in zip(cells, table.sort_values("order").iterrows()):
        extra = []
        for n in names:
            mark = " *" if r[f"{n}_delta_excludes_zero"] else ""
            interval = "" if pd.isna(r[f"{n}_delta_lo"]) else f" [{r[f'{n}_delta_lo']:+.1f}, {r[f'{n}_delta_hi']:+.1f}]"
            change = "" if pd.isna(r[f"{n}_delta"]) else f"{r[f'{n}_delta']:+.1f}{mark}{interval}"
            extra += ["" if pd.isna(r[f"{n}_mean"]) else format(r[f"{n}_mean"], ".1f"), change]
        out.append(row + extra)
    return head, out


def measured_footer(table: pd.DataFrame) -> List[str]:
    """What the measured columns are, where the table has them."""
    lines = []
    if "erf50_mean" in table.columns:
        lines.append("ERF 50%: side (px) of the smallest centred square holding half of the effective receptive "
                     "field's mass, on inputs larger than the training size (analysis.erf; erf.md says how large, "
                     "and has 20% and 99%).")
    if "mce_mean" in table.columns:
        lines.append("mCE: mean corruption error on the grey-image ImageNet-C families, 100 = the resnet step "
                     "(analysis.robustness; robustness.md has every family). Their Δ are paired per seed as top-1's.")
    return lines
