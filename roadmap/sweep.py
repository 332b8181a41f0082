"""Train every step of the roadmap: one study, one table.

    python -m roadmap.sweep +step=all                          # the default study (~13 min on 2 cores)
    python -m roadmap.sweep +step=all seed=0,1,2               # three seeds
    python -m roadmap.sweep +step=stage_ratio,patchify_stem data=cifar10 recipe.epochs=30
    python -m roadmap.sweep +step=all +experiment=imagenet_r50 hydra/launcher=slurm hydra.launcher.partition=gpu
    python -m roadmap.sweep +step=all hydra/launcher=joblib hydra.launcher.n_jobs=2 train.threads=1

Each (step, seed) is one Hydra multirun job whose run directory is
experiments/<study>/<step>/seed<k>/ (the study defaults to <data>_<regime>; `study=`
names it, `hydra.sweep.dir=` moves it). Running the same command again skips finished
runs, resumes interrupted ones and refuses runs whose saved config differs. A per-run
lock keeps two sweeps on one study from training the same run. A run that fails or
diverges does not stop the others; the exit code says whether all completed.
The study root gets results.csv (one row per run, rewritten after every run) and, at
the end, table.md / table.csv: each step beside the paper.
"""

from __future__ import annotations

import csv
import fcntl
import io
import math
import os
import re
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from omegaconf import DictConfig, OmegaConf

from roadmap import paper, rundir
from roadmap.config import CONF_DIR, PARENTS, STEPS, ConfigError, available_steps, compose, run_dir_of

RESULT_COLUMNS = [
    "study", "step", "order", "change", "seed", "status", "final_top1", "final_top5", "best_top1", "params", "gmacs",
    "train_images_per_s", "data_share", "epochs_done", "epochs", "wall_time_s", "regime", "data", "recipe", "run_dir",
]


# ----------------------------------------------------------------------------- one job


def run_job(cfg: DictConfig, run_dir: Path) -> int:
    """One (step, seed) of the sweep: locked, resumable, never raising."""
    from roadmap.train import run_one

    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            print(f"skipped: another process is training {run_dir}", flush=True)
            return 0
        setup_slurm_distributed()
        code = run_one(cfg, run_dir)
    write_results(run_dir.parent.parent)
    return code


def setup_slurm_distributed() -> None:
    """Under submitit with several tasks per node, export torchrun's variables (RANK,
    WORLD_SIZE, MASTER_ADDR, ...) so that the run trains with DDP."""
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "WORLD_SIZE" not in os.environ:
        try:
            import submitit

            submitit.helpers.TorchDistributedEnvironment().export()
        except (ImportError, RuntimeError):
            pass


# ----------------------------------------------------------------------------- results


def result_rows(study_dir: Path) -> List[Dict]:
    rows = []
    order = {s: i for i, s in enumerate(available_steps())}
    for path in sorted(Path(study_dir).glob("*/seed*/" + rundir.SUMMARY)):
        s = rundir.read_summary(path.parent)
        if not s:
            continue
        rows.append({**{k: s.get(k) for k in RESULT_COLUMNS}, "study": Path(study_dir).name,
                     "order": order.get(s.get("step"), len(order)), "run_dir": str(path.parent)})
    rows.sort(key=lambda r: (r["order"], r["seed"] if r["seed"] is not None else -1))
    return rows


def write_results(study_dir: Path) -> List[Dict]:
    """results.csv in the study root, rebuilt from every run's summary.json and
    replaced atomically: always whole, readable while the sweep goes on."""
    rows = result_rows(study_dir)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, RESULT_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    rundir.atomic_write(Path(study_dir) / "results.csv", buf.getvalue().encode())
    return rows


def _mean_std(values: List[float]) -> Tuple[Optional[float], Optional[float]]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def study_table(rows: List[Dict], regime: str) -> List[Dict]:
    """One row per step: params, GMACs, top-1 mean and std over completed seeds, the
    change from the step it builds on, images/s, and the paper's top-1 and change
    (the r50 column for the micro regime, which follows r50's path)."""
    ref_regime = "r200" if regime == "r200" else "r50"
    by_step: Dict[str, List[Dict]] = {}
    for r in rows:
        by_step.setdefault(r["step"], []).append(r)
    table, mean_of = [], {}
    for step in [s for s in available_steps() if s in by_step]:
        runs = by_step[step]
        done = [r for r in runs if r["status"] == "completed"]
        mean, std = _mean_std([float(r["final_top1"]) for r in done])
        mean_of[step] = mean
        ref = paper.row(ref_regime, step)
        parent = PARENTS.get(step)
        parent_ref = paper.row(ref_regime, parent) if parent else None
        table.append({
            "step": step, "change": runs[0].get("change") or "", "builds_on": parent or "", "params_m": float(runs[0]["params"]) / 1e6, "gmacs": float(runs[0]["gmacs"]),
            "top1_mean": mean, "top1_std": std, "seeds": len(done), "runs": len(runs),
            "delta": (mean - mean_of[parent]) if (mean is not None and parent in mean_of and mean_of[parent] is not None) else None,
            "images_per_s": _mean_std([float(r["train_images_per_s"]) for r in done if r["train_images_per_s"]])[0],
            "paper_top1": ref.top1 if ref else None,
            "paper_delta": (ref.top1 - parent_ref.top1) if (ref and parent_ref) else None,
            "not_completed": ", ".join(f"seed{r['seed']} {r['status']}" for r in runs if r["status"] != "completed"),
        })
    return table


def render_table(table: List[Dict], regime: str) -> str:
    ref = "r200" if regime == "r200" else "r50"
    fmt = lambda v, spec: "" if v is None else format(v, spec)  # noqa: E731
    lines = [
        f"| step | what changes | params (M) | GMACs | top-1 (%) | ± std | seeds | Δ top-1 | img/s | paper top-1 ({ref}) | paper Δ |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in table:
        lines.append(
            f"| {t['step']} | {t['change']} | {t['params_m']:.2f} | {t['gmacs']:.4g} | {fmt(t['top1_mean'], '.2f')} | {fmt(t['top1_std'], '.2f')} "
            f"| {t['seeds']}/{t['runs']} | {fmt(t['delta'], '+.2f')} | {fmt(t['images_per_s'], '.0f')} "
            f"| {fmt(t['paper_top1'], '.2f')} | {fmt(t['paper_delta'], '+.2f')} |"
        )
    return "\n".join(lines)


def finish(study_dir: Path, regime: str) -> Tuple[str, List[Dict]]:
    rows = write_results(study_dir)
    table = study_table(rows, regime)
    text = render_table(table, regime)
    rundir.atomic_write(Path(study_dir) / "table.md", (text + "\n").encode())
    buf = io.StringIO()
    if table:
        writer = csv.DictWriter(buf, list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    rundir.atomic_write(Path(study_dir) / "table.csv", buf.getvalue().encode())
    return text, rows


# ----------------------------------------------------------------------------- command line

INT = re.compile(r"^-?\d+$")


def parse_seeds(overrides: Sequence[str]) -> List[int]:
    for ov in overrides:
        if ov.startswith("seed="):
            value = ov.split("=", 1)[1]
            m = re.fullmatch(r"range\((-?\d+),\s*(-?\d+)\)", value)
            if m:
                return list(range(int(m[1]), int(m[2])))
            parts = [p.strip() for p in value.split(",")]
            bad = [p for p in parts if not INT.match(p)]
            if bad:
                raise ConfigError(f"seed={value} is not valid: '{bad[0]}' is not an integer; write seed=0 or seed=0,1,2")
            return [int(p) for p in parts]
    return [compose(STEPS[0]).seed]


def check_no_other_sweeps(overrides: Sequence[str]) -> None:
    for ov in overrides:
        key, _, value = ov.partition("=")
        if key != "seed" and not key.startswith(("hydra", "+hydra")) and ("," in value and not value.strip().startswith("[")):
            raise ConfigError(
                f"{key}={value} sweeps a value, which would put two configs in one run directory: "
                f"run one sweep per value, each with its own study=<name>"
            )


def plan(argv: Sequence[str]) -> Tuple[List[str], List[int], List[str], List[str]]:
    """Check the command line; (steps, seeds, overrides without step and seed, hydra args)."""
    from roadmap.cli import is_hydra_arg, split_steps

    hydra_args = [a for a in argv if is_hydra_arg(a)]
    steps, rest = split_steps([a for a in argv if not is_hydra_arg(a)])
    if not steps:
        raise ConfigError("no steps given: add +step=all, or a list such as +step=stage_ratio,patchify_stem")
    seeds = parse_seeds(rest)
    overrides = [a for a in rest if not a.startswith("seed=")]
    check_no_other_sweeps(overrides)
    for step in dict.fromkeys(steps):
        compose(step, *overrides, f"seed={seeds[0]}")  # every step's config is valid
    check_launcher(hydra_args)
    return steps, seeds, overrides, hydra_args


def check_launcher(hydra_args: Sequence[str]) -> None:
    for arg in hydra_args:
        if arg.startswith("hydra/launcher="):
            name = arg.split("=", 1)[1]
            ours = (CONF_DIR / "hydra" / "launcher" / f"{name}.yaml").exists()
            plugins = {"joblib": "hydra_plugins.hydra_joblib_launcher", "submitit_local": "hydra_plugins.hydra_submitit_launcher",
                       "submitit_slurm": "hydra_plugins.hydra_submitit_launcher", "slurm": "hydra_plugins.hydra_submitit_launcher",
                       "basic": None}
            if name not in plugins and not ours:
                raise ConfigError(f"unknown launcher '{name}': choose basic, joblib, submitit_local, submitit_slurm or slurm")
            module = plugins.get(name)
            if module:
                import importlib.util

                if importlib.util.find_spec(module) is None:
                    pkg = "hydra-joblib-launcher" if "joblib" in module else "hydra-submitit-launcher"
                    raise ConfigError(f"launcher '{name}' is not installed: pip install {pkg}")


def main(argv: Optional[Sequence[str]] = None) -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip())
        sys.exit(0)
    try:
        bad = [a for a in argv if "=" not in a and not a.startswith("-")]
        if bad:
            raise ConfigError(f"'{bad[0]}' is not an override: write key=value, e.g. +step=all or seed=0,1,2")
        steps, seeds, overrides, hydra_args = plan(argv)
        study_dir = run_dir_of(steps[0], [*overrides, f"seed={seeds[0]}", *hydra_args]).parent.parent
        sweep_dir = _sweep_dir(steps[0], overrides, seeds[0], hydra_args) or study_dir
        rundir.check_writable(sweep_dir)
    except (ConfigError, rundir.RunDirError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)

    regime = compose(steps[0], *overrides).regime.name
    print(f"sweep: {len(steps)} steps x {len(seeds)} seeds -> {sweep_dir}", flush=True)
    sys.argv = [sys.argv[0], "--multirun", f"+step={','.join(steps)}", f"seed={','.join(map(str, seeds))}", *overrides, *hydra_args]

    @hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
    def _task(cfg: DictConfig) -> int:
        return run_job(cfg, Path(HydraConfig.get().runtime.output_dir))

    try:
        _task()
    except SystemExit:
        pass
    text, rows = finish(sweep_dir, regime)
    print(text)
    print(f"results: {sweep_dir / 'results.csv'}, table: {sweep_dir / 'table.md'}")
    wanted = {(s, k) for s in steps for k in seeds}
    status = {(r["step"], r["seed"]): r["status"] for r in rows}
    refused = []
    for step, seed in sorted(wanted, key=lambda x: (STEPS.index(x[0]) if x[0] in STEPS else 99, x[1])):
        try:
            rundir.check_config(sweep_dir / step / f"seed{seed}", compose(step, *overrides, f"seed={seed}"))
        except rundir.RunDirError:
            refused.append((step, seed))
    bad = [f"{s} seed{k}: {status.get((s, k), 'not run')}" for s, k in sorted(wanted) if status.get((s, k)) != "completed" and (s, k) not in refused]
    bad += [f"{s} seed{k}: refused (its run directory holds another config)" for s, k in refused]
    if bad:
        print(f"{len(bad)} of {len(wanted)} runs did not complete: " + "; ".join(bad), file=sys.stderr)
        sys.exit(1)
    print(f"all {len(wanted)} runs completed.")


def _sweep_dir(step: str, overrides: Sequence[str], seed: int, hydra_args: Sequence[str]) -> Optional[Path]:
    for arg in hydra_args:
        if arg.startswith("hydra.sweep.dir="):
            return Path(arg.split("=", 1)[1])
    return None


if __name__ == "__main__":
    main()
