"""What analysis.erf and analysis.robustness share: a study's runs that can be measured, each
run's network with its checkpoint's weights, a fixed subset of its test set, the per-step
tables and the command line.

A run is measured when it completed (not collapsed, nothing in its `left_out`: the runs the
step table averages) and keeps its checkpoint.pt. The network is built from the run's own
config.yaml (its `model` node, roadmap.config.model_config) and takes the weights that its
evaluation used (the EMA where the recipe kept one); a checkpoint whose tensors do not fit that
network is refused, naming both files and the first tensor that differs.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import pandas as pd
import torch
import yaml
from omegaconf import OmegaConf
from torch import nn

from analysis import plots
from roadmap import results, rundir
from roadmap.config import model_config
from roadmap.data import DataConfig, TensorData, load_in_memory
from roadmap.errors import ResultsError, RoadmapError
from roadmap.model import ConvNet

HOW_TO_GET_THEM = ("measure the run directories that training left them in (each keeps its last checkpoint.pt; "
                   "the committed copies under experiments/ keep none), or train the runs again into a new "
                   "hydra.sweep.dir (a completed run is left alone where it is)")


def _names(keys: Sequence[str], most: int = 6) -> str:
    shown = ", ".join(keys[:most])
    return shown + (f" and {len(keys) - most} more" if len(keys) > most else "")


def measurable(study: Path) -> pd.DataFrame:
    """The runs of a study that can be measured (results.averaged, with a checkpoint), with
    their `run` key; ResultsError (one line) for a study none of whose runs keeps one. Runs
    that completed without a checkpoint are named in a line, and left out."""
    runs = results.load(study)
    if runs.empty:
        raise ResultsError(f"no runs under {study}: give a study directory such as runs/fashion_mnist_micro")
    done = results.averaged(runs).copy()
    done["run"] = [results.run_key(r, study) for r in done["run_dir"]]
    kept = done[[(Path(r) / rundir.CHECKPOINT).is_file() for r in done["run_dir"]]]
    lacking = list(done.loc[~done.index.isin(kept.index), "run"])
    if kept.empty:
        what = f"any of its {len(done)} completed runs" if len(done) else "any completed run"
        raise ResultsError(f"{study} holds no checkpoint.pt in {what} ({_names(lacking)}): {HOW_TO_GET_THEM}")
    if lacking:
        print(f"{study}: {len(lacking)} of {len(done)} completed runs keep no checkpoint.pt and are not measured "
              f"({_names(lacking)}): {HOW_TO_GET_THEM}")
    left = len(runs) - len(done)
    if left:
        print(f"{study}: {left} of {len(runs)} runs did not complete, ended at chance or cannot be averaged; "
              "not measured (analysis.plots names them)")
    return kept


def run_config(run: Path) -> Dict:
    """The run's config.yaml as plain data (not validated against today's schema: only its
    model, data and recipe.ema are read)."""
    path = Path(run) / rundir.CONFIG
    try:
        cfg = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:  # missing, truncated, not YAML
        raise ResultsError(f"{path} is unreadable ({type(e).__name__}): the run cannot be rebuilt") from e
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict) or not isinstance(cfg.get("data"), dict):
        raise ResultsError(f"{path} is not a run's config (no model and data nodes): the run cannot be rebuilt")
    return cfg


def data_config(cfg: Dict) -> DataConfig:
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataConfig), cfg["data"]))
    except Exception as e:
        raise ResultsError(f"the data node of a run's config.yaml is not valid ({type(e).__name__}: "
                           f"{str(e).splitlines()[0]})") from e


def evaluated_weights(checkpoint: Dict, cfg: Dict, path: Path) -> Dict[str, torch.Tensor]:
    """The weights the run's evaluation used: the EMA's where the recipe kept one, else the model's."""
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise ResultsError(f"{path} is not a training checkpoint (no model weights): measure a run's checkpoint.pt")
    ema = checkpoint.get("ema") if (cfg.get("recipe") or {}).get("ema") else None
    if ema is None:
        return checkpoint["model"]
    prefix = "module."
    return {k[len(prefix):]: v for k, v in ema.items() if k.startswith(prefix)}


def first_difference(wanted: Dict[str, torch.Tensor], found: Dict[str, torch.Tensor]) -> Optional[str]:
    """How a state dict does not fit a network's: the first missing, extra or misshapen tensor."""
    missing, extra = [k for k in wanted if k not in found], [k for k in found if k not in wanted]
    shape = lambda t: "x".join(map(str, t.shape)) or "scalar"  # noqa: E731
    for k in wanted:
        if k in found and tuple(found[k].shape) != tuple(wanted[k].shape):
            return f"{k} is {shape(found[k])} in the checkpoint but {shape(wanted[k])} in the network"
    if missing:
        return f"the checkpoint lacks {len(missing)} tensors of the network ({_names(missing, 2)})"
    if extra:
        return f"the checkpoint has {len(extra)} tensors the network lacks ({_names(extra, 2)})"
    return None


def load_network(run: Path) -> Tuple[nn.Module, DataConfig]:
    """The run's network, built from its config.yaml, with its checkpoint's weights, in eval
    mode; and its data config. ResultsError when the checkpoint does not fit the config."""
    run = Path(run)
    cfg = run_config(run)
    try:
        with torch.device("meta"):  # shapes only: the checkpoint's tensors become the weights (no init to pay for)
            model = ConvNet(model_config(OmegaConf.create({"model": cfg["model"]})))
    except RoadmapError as e:
        raise ResultsError(f"{run / rundir.CONFIG} does not describe a network: {e}") from e
    path = run / rundir.CHECKPOINT
    checkpoint = rundir.load_checkpoint(path)
    recorded = checkpoint.get("run") if isinstance(checkpoint, dict) else None
    mismatch = rundir.identity_mismatch(recorded, rundir.run_identity(cfg))
    if mismatch:
        raise ResultsError(f"checkpoint {path} {mismatch}: measure each checkpoint in its own run directory")
    weights = evaluated_weights(checkpoint, cfg, path)
    wanted = model.state_dict()
    difference = first_difference(wanted, weights)
    if difference is not None:
        step = (cfg.get("step") or {}).get("name", "?")
        raise ResultsError(f"checkpoint {path} does not fit the network of {run / rundir.CONFIG} (step {step}): "
                           f"{difference}; it comes from another config: measure each checkpoint in its own run "
                           "directory")
    model.load_state_dict(weights, assign=True)
    return model.eval(), data_config(cfg)


def test_images(cfg: DataConfig, count: int) -> TensorData:
    """A fixed subset of the test set: `count` images drawn once with seed 0 (TensorData.subset),
    whatever the run's seed or test_limit, so that every run sees the same images."""
    full = dataclasses.replace(cfg, train_limit=0, test_limit=0)
    _, test = load_in_memory(full)
    return test.subset(count, seed=0)


def per_step(runs: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """One row per step (and study, swept value): for every column its mean and 95%
    t-interval over seeds and its change, paired per seed (results.column_table)."""
    keys = ["study", *results.swept_keys(runs), "step"]
    first = runs.groupby(keys, sort=False, dropna=False)[["order"]].first().reset_index()
    table = first.assign(builds_on=[results.builds_on(runs).get(s) for s in first["step"]])
    for column in columns:
        table = table.merge(results.column_table(runs, column), on=keys, how="left")
    return table.sort_values(["order", "step"], kind="stable").reset_index(drop=True)


def cell(r: pd.Series, column: str, spec: str = ".1f") -> str:
    """A mean with its interval, for a Markdown table ('' where nothing was measured)."""
    mean, lo, hi = r.get(f"{column}_mean"), r.get(f"{column}_lo"), r.get(f"{column}_hi")
    if mean is None or pd.isna(mean):
        return ""
    return format(mean, spec) + ("" if pd.isna(lo) else f" [{format(lo, spec)}, {format(hi, spec)}]")


def change_cell(r: pd.Series, column: str, spec: str = "+.1f") -> str:
    """A paired change with its interval and * where it excludes zero."""
    mean = r.get(f"{column}_delta")
    if mean is None or pd.isna(mean):
        return ""
    mark = " *" if r[f"{column}_delta_excludes_zero"] else ""
    lo, hi = r[f"{column}_delta_lo"], r[f"{column}_delta_hi"]
    return format(mean, spec) + mark + ("" if pd.isna(lo) else f" [{format(lo, spec)}, {format(hi, spec)}]")


def write(out: Path, files: Dict[str, str]) -> List[Path]:
    """Text files into `out`, each replaced atomically."""
    paths = []
    for name, text in files.items():
        try:
            rundir.atomic_write(out / name, text.encode())
        except OSError as e:
            raise ResultsError(
                f"cannot write {out / name} ({e.strerror or e}): choose a writable folder with --out") from e
        paths.append(out / name)
    return paths


Measure = Callable[[Path, Path, argparse.Namespace], List[Path]]


def at_least(least: Dict[str, int]) -> Callable[[argparse.Namespace], None]:
    """A tool's check of its whole-number options (name -> least value): one line and exit 2 for one below it."""
    def check(args: argparse.Namespace) -> None:
        for name, low in least.items():
            if getattr(args, name) < low:
                print(f"error: --{name}={getattr(args, name)} is not valid: give a whole number of at least {low}",
                      file=sys.stderr)
                sys.exit(2)
    return check


def main(argv: Sequence[str], prog: str, doc: str, measure: Measure,
         options: Callable[[argparse.ArgumentParser], None], check: Callable[[argparse.Namespace], None]) -> None:
    """The command line both tools share: studies (default: every study under runs/ and
    experiments/ that keeps checkpoints), --out, and the tool's own options."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])
    parser.add_argument("studies", nargs="*", help="study directories (default: every study under runs/ and "
                        "experiments/ that keeps checkpoints; the others are named)")
    parser.add_argument("--out", type=Path, help="where the tables and figures go (default: <study>/figures, or "
                        "runs/figures/<study> for a study that cannot be written); with several studies, one folder "
                        "per study inside it")
    parser.add_argument("--threads", type=int, default=1, help="torch's CPU threads (default 1: leaves the other "
                        "cores to training that may run beside it)")
    options(parser)
    args = parser.parse_args(list(argv))
    check(args)
    torch.set_num_threads(args.threads)
    try:
        found = plots.studies(args.studies)
    except ResultsError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if not args.studies:
        found = with_checkpoints(found)
    failed = 0
    for study in found:
        out = None if args.out is None else (args.out if len(found) == 1 else args.out / study.resolve().name)
        try:
            written = measure(study, plots.output_folder(study, out), args)
        except RoadmapError as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
            continue
        print(f"{study}: " + ", ".join(p.name for p in written) + f" (in {written[0].parent})" * bool(written))
    sys.exit(2 if failed else 0)


def with_checkpoints(found: Sequence[Path]) -> List[Path]:
    """The studies that keep a checkpoint; the others named in one line."""
    kept = [s for s in found if any(Path(s).rglob(rundir.CHECKPOINT))]
    others = [str(s) for s in found if s not in kept]
    if others:
        print(f"no checkpoint.pt in {len(others)} studies, not measured ({_names(others, 4)}): {HOW_TO_GET_THEM}")
    return kept
