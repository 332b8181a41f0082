"""Where a run's epochs go besides its run directory: nowhere, or Weights & Biases.
`logger=<kind>` picks one through LOGGERS; the run directory is always written."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Callable, Dict

from omegaconf import DictConfig, OmegaConf

from roadmap import rundir
from roadmap.config import LoggerKind, RunConfig, WandbMode
from roadmap.errors import ConfigError


class NoLogger:
    def log(self, record: Dict[str, Any]) -> None:
        pass

    def finish(self, summary: Dict[str, Any]) -> None:
        pass


class WandbLogger:
    """One W&B run per run directory, resumed with it; offline without an API key."""

    def __init__(self, run: RunConfig, cfg: DictConfig, run_dir: Path):
        try:
            import wandb
        except ImportError as e:
            raise ConfigError("logger=wandb needs the wandb package: pip install wandb (or drop logger=wandb)") from e
        mode = run.logger.mode
        if mode is WandbMode.auto:
            mode = WandbMode.online if os.environ.get("WANDB_API_KEY") else WandbMode.offline
        self.run = wandb.init(
            project=run.logger.project, entity=run.logger.entity, mode=mode.value, dir=str(run_dir),
            name=f"{run.step.name}-seed{run.seed}", group=run.study,
            config=OmegaConf.to_container(cfg, resolve=True), resume="allow", id=_wandb_id(run_dir),
        )

    def log(self, record: Dict[str, Any]) -> None:
        self.run.log(record, step=record["epoch"])

    def finish(self, summary: Dict[str, Any]) -> None:
        for k, v in summary.items():
            if isinstance(v, (int, float, str)):
                self.run.summary[k] = v
        self.run.finish()


def _wandb_id(run_dir: Path) -> str:
    path = run_dir / "wandb_id"
    if not path.exists():
        rundir.atomic_write(path, uuid.uuid4().hex[:12].encode())
    return path.read_text().strip()


LOGGERS: Dict[LoggerKind, Callable[[RunConfig, DictConfig, Path], Any]] = {
    LoggerKind.none: lambda run, cfg, run_dir: NoLogger(),
    LoggerKind.wandb: WandbLogger,
}
