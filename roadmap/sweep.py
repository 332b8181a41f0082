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

import fcntl
import os
import re
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from omegaconf import DictConfig, OmegaConf

from roadmap import results, rundir
from roadmap.config import CONF_DIR, STEPS, ConfigError, compose, run_dir_of

RESULT_COLUMNS = [
    "study", "step", "order", "change", "seed", "status", "top1", "top5", "best_top1", "params", "gmacs",
    "images_per_s", "data_share", "epochs_done", "epochs", "wall_time_s", "regime", "data", "recipe", "run_dir",
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


def write_results(study_dir: Path):
    """results.csv in the study root, rebuilt from every run's summary.json and
    replaced atomically: always whole, readable while the sweep goes on."""
    runs = results.load(study_dir)
    rundir.atomic_write(Path(study_dir) / "results.csv", runs[RESULT_COLUMNS].to_csv(index=False).encode())
    return runs


def finish(study_dir: Path) -> Tuple[str, object]:
    """results.csv, then the step table as table.md and table.csv; returns the Markdown and the runs."""
    runs = write_results(study_dir)
    table = results.step_table(runs)
    text = results.markdown_table(table)
    rundir.atomic_write(Path(study_dir) / "table.md", (text + "\n").encode())
    csv_text = table[results.TABLE_COLUMNS].to_csv(index=False) if not table.empty else ""
    rundir.atomic_write(Path(study_dir) / "table.csv", csv_text.encode())
    return text, runs


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

    from roadmap.cli import one_line_errors, read_argv

    argv = read_argv(__doc__, "+step=all or seed=0,1,2", argv)
    with one_line_errors():
        steps, seeds, overrides, hydra_args = plan(argv)
        sweep_dir = run_dir_of(steps[0], [*overrides, f"seed={seeds[0]}", *hydra_args]).parent.parent
        for arg in hydra_args:
            if arg.startswith("hydra.sweep.dir="):
                sweep_dir = Path(arg.split("=", 1)[1])
        rundir.check_writable(sweep_dir)

    print(f"sweep: {len(steps)} steps x {len(seeds)} seeds -> {sweep_dir}", flush=True)
    sys.argv = [sys.argv[0], "--multirun", f"+step={','.join(steps)}", f"seed={','.join(map(str, seeds))}", *overrides, *hydra_args]

    @hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
    def _task(cfg: DictConfig) -> int:
        return run_job(cfg, Path(HydraConfig.get().runtime.output_dir))

    try:
        _task()
    except SystemExit:
        pass
    text, runs = finish(sweep_dir)
    print(text)
    print(f"results: {sweep_dir / 'results.csv'}, table: {sweep_dir / 'table.md'}")
    wanted = {(s, k) for s in steps for k in seeds}
    status = {(r.step, r.seed): r.status for r in runs.itertuples()}
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


if __name__ == "__main__":
    main()
