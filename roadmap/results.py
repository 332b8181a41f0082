"""Read studies into pandas: one row per run, or one row per run and epoch.

    import roadmap.results as R
    runs = R.load("experiments/fashion_mnist_micro")      # a study, a run directory, or a glob
    curves = R.history("experiments/*")                    # per-epoch, long form
    R.step_table(runs)                                     # per step: mean and std over seeds, beside the paper

Runs still training show status `running` with the epochs they finished; failed and
diverged runs keep their status and whatever they measured.
"""

from __future__ import annotations

import glob as globlib
import json
from pathlib import Path
from typing import Iterable, List, Union

import pandas as pd
from omegaconf import OmegaConf

from roadmap import paper, rundir
from roadmap.config import PARENTS, SIDE_BRANCHES, STEPS

PathLike = Union[str, Path]

RUN_COLUMNS = [
    "study", "step", "order", "change", "regime", "data", "recipe", "seed", "status", "epochs_done", "epochs",
    "params", "gmacs", "top1", "top5", "best_top1", "images_per_s", "data_share", "peak_memory_mb", "wall_time_s", "run_dir",
]


def run_dirs(paths: Union[PathLike, Iterable[PathLike]]) -> List[Path]:
    """Every run directory under the given studies, run directories or globs."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    found = []
    for p in paths:
        for match in sorted(globlib.glob(str(p))) or [str(p)]:
            m = Path(match)
            if (m / rundir.SUMMARY).exists() or (m / rundir.CONFIG).exists():
                found.append(m)
            else:
                found.extend(sorted({s.parent for s in m.rglob(rundir.SUMMARY)} | {c.parent for c in m.rglob(rundir.CONFIG)}))
    return list(dict.fromkeys(found))


def _flat_config(run: Path) -> dict:
    path = run / rundir.CONFIG
    if not path.exists():
        return {}
    flat = pd.json_normalize(OmegaConf.to_container(OmegaConf.load(path), resolve=False), sep=".")
    return {f"cfg.{k}": (json.dumps(v) if isinstance(v, list) else v) for k, v in flat.iloc[0].to_dict().items()}


def load(paths: Union[PathLike, Iterable[PathLike]]) -> pd.DataFrame:
    """One row per run: the summary's figures and the run's config (`cfg.*` columns)."""
    order = {s: i for i, s in enumerate(STEPS)}
    rows = []
    for run in run_dirs(paths):
        s = rundir.read_summary(run) or {}
        cfg = _flat_config(run)
        step = s.get("step") or cfg.get("cfg.step.name")
        rows.append({
            "study": run.parent.parent.name, "step": step, "order": order.get(step, len(order)),
            "change": s.get("change", cfg.get("cfg.step.change")), "regime": s.get("regime", cfg.get("cfg.regime.name")),
            "data": s.get("data", cfg.get("cfg.data.name")), "recipe": s.get("recipe", cfg.get("cfg.recipe.name")),
            "seed": s.get("seed", cfg.get("cfg.seed")), "status": s.get("status", "not started"),
            "epochs_done": s.get("epochs_done", 0), "epochs": s.get("epochs", cfg.get("cfg.recipe.epochs")),
            "params": s.get("params"), "gmacs": s.get("gmacs"), "top1": s.get("final_top1"), "top5": s.get("final_top5"),
            "best_top1": s.get("best_top1"), "images_per_s": s.get("train_images_per_s"), "data_share": s.get("data_share"),
            "peak_memory_mb": s.get("peak_memory_mb"), "wall_time_s": s.get("wall_time_s"), "run_dir": str(run), **cfg,
        })
    df = pd.DataFrame(rows, columns=RUN_COLUMNS if not rows else None)
    if rows:
        df = df.sort_values(["study", "order", "seed"], kind="stable").reset_index(drop=True)
    return df


def history(paths: Union[PathLike, Iterable[PathLike]]) -> pd.DataFrame:
    """One row per run, epoch and metric: study, step, seed, epoch, metric, value."""
    rows = []
    for run in run_dirs(paths):
        s = rundir.read_summary(run) or {}
        metrics = run / rundir.METRICS
        if not metrics.exists():
            continue
        for line in metrics.read_text().splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            for key, value in rec.items():
                if key != "epoch":
                    rows.append({"study": run.parent.parent.name, "step": s.get("step", run.parent.name), "seed": s.get("seed"),
                                 "epoch": rec["epoch"], "metric": key, "value": value})
    return pd.DataFrame(rows, columns=["study", "step", "seed", "epoch", "metric", "value"])


def step_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per study and step: top-1 mean and std over completed seeds, the change
    from the step it builds on, and the paper's top-1 and change (r50's column for the
    micro regime, which follows r50's path)."""
    out = []
    for study, group in runs.groupby("study", sort=False):
        means = {}
        for step, g in sorted(group.groupby("step"), key=lambda kv: kv[1]["order"].iloc[0]):
            done = g[g["status"] == "completed"]
            regime = g["regime"].iloc[0]
            ref_regime = "r200" if regime == "r200" else "r50"
            ref, parent = paper.row(ref_regime, step), PARENTS.get(step)
            parent_ref = paper.row(ref_regime, parent) if parent else None
            mean = done["top1"].mean() if len(done) else float("nan")
            means[step] = mean
            out.append({
                "study": study, "step": step, "order": g["order"].iloc[0], "change": g["change"].iloc[0],
                "side_branch": step in SIDE_BRANCHES, "builds_on": parent, "regime": regime,
                "params_m": g["params"].iloc[0] / 1e6 if g["params"].notna().any() else float("nan"),
                "gmacs": g["gmacs"].iloc[0], "top1_mean": mean,
                "top1_std": done["top1"].std(ddof=1) if len(done) > 1 else (0.0 if len(done) == 1 else float("nan")),
                "seeds": len(done), "runs": len(g),
                "delta": mean - means[parent] if parent in means else float("nan"),
                "images_per_s": done["images_per_s"].mean() if len(done) else float("nan"),
                "paper_top1": ref.top1 if ref else float("nan"),
                "paper_top1_std": ref.top1_std if ref and ref.top1_std is not None else float("nan"),
                "paper_gflops": ref.gflops if ref else float("nan"),
                "paper_delta": ref.top1 - parent_ref.top1 if (ref and parent_ref) else float("nan"),
                "statuses": ", ".join(f"{k}: {v}" for k, v in g["status"].value_counts().items()),
            })
    return pd.DataFrame(out)


def markdown_table(table: pd.DataFrame) -> str:
    """The step table as Markdown: ours beside the paper's."""
    if table.empty:
        return "(no runs)"
    ref = "r200" if table["regime"].iloc[0] == "r200" else "r50"
    f = lambda v, spec: "" if pd.isna(v) else format(v, spec)  # noqa: E731
    lines = [
        f"| step | what changes | params (M) | GMACs | top-1 (%) | ± std | seeds | Δ top-1 | img/s | paper top-1 ({ref}) | paper Δ |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, r in table.sort_values("order").iterrows():
        lines.append(
            f"| {r['step']} | {r['change']} | {f(r['params_m'], '.2f')} | {f(r['gmacs'], '.4g')} | {f(r['top1_mean'], '.2f')} "
            f"| {f(r['top1_std'], '.2f')} | {r['seeds']}/{r['runs']} | {f(r['delta'], '+.2f')} | {f(r['images_per_s'], '.0f')} "
            f"| {f(r['paper_top1'], '.2f')} | {f(r['paper_delta'], '+.2f')} |"
        )
    return "\n".join(lines)


TABLE_COLUMNS = ["step", "change", "builds_on", "params_m", "gmacs", "top1_mean", "top1_std", "seeds", "runs", "delta",
                 "images_per_s", "paper_top1", "paper_delta", "statuses"]
