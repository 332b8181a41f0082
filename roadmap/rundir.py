"""A run directory: what one training run leaves behind, written so that a kill at any
moment leaves every file whole.

    config.yaml      the resolved config (written once, when the run starts)
    metrics.jsonl    one line per finished epoch
    summary.json     status (running, completed, diverged, failed) and the final figures
    checkpoint.pt    the state after the last finished epoch
    error.txt        the traceback of a failed run
    .lock            held (flock) by the one process that trains the run; names it
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import IO, Any, Dict, List, Optional

import torch
from omegaconf import DictConfig, OmegaConf

CONFIG, METRICS, SUMMARY, CHECKPOINT, ERROR, LOCK = (
    "config.yaml", "metrics.jsonl", "summary.json", "checkpoint.pt", "error.txt", ".lock")
FINISHED = ("completed", "diverged")

# Keys that do not change what a run computes: a run may resume with other values.
NEUTRAL_KEYS = ("study", "logger", "train.progress", "train.threads", "data.root", "data.download", "data.workers")


class RunDirError(RuntimeError):
    """A run directory that cannot be used as asked; the message says why and what to do."""


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())


def write_lines(path: Path, rows: List[Dict]) -> None:
    atomic_write(path, "".join(json.dumps(r, default=str) + "\n" for r in rows).encode())


def save_checkpoint(path: Path, state: Dict) -> None:
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, buf.getvalue())


def load_checkpoint(path: Path) -> Dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise RunDirError(f"checkpoint {path} is unreadable ({type(e).__name__}): delete it to train this run from the start") from e


def read_summary(run_dir: Path) -> Optional[Dict]:
    try:
        return json.loads((Path(run_dir) / SUMMARY).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _flatten(d: Dict, prefix: str = "") -> Dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(saved: Dict, wanted: Dict) -> List[str]:
    """Keys whose values differ, as 'key: saved -> wanted', ignoring NEUTRAL_KEYS."""
    a, b = _flatten(saved), _flatten(wanted)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key.startswith(NEUTRAL_KEYS):
            continue
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            diffs.append(f"{key}: {a.get(key, '<absent>')} -> {b.get(key, '<absent>')}")
    return diffs


def check_config(run_dir: Path, cfg: DictConfig) -> bool:
    """True if the run directory holds this config already; False if it holds none.
    A different config raises RunDirError naming the differing keys."""
    path = Path(run_dir) / CONFIG
    if not path.exists():
        return False
    saved = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    diffs = config_differences(saved, OmegaConf.to_container(cfg, resolve=True))
    if diffs:
        shown = "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")
        raise RunDirError(
            f"{run_dir} holds a run of another config ({shown}): choose another hydra.run.dir, or delete it to retrain"
        )
    return True


def check_writable(run_dir: Path) -> None:
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write-test."):
            pass
    except OSError as e:
        raise RunDirError(f"cannot write to the run directory {run_dir} ({e.strerror}): choose a writable hydra.run.dir") from e


# ----------------------------------------------------------------------------- the lock


def _try_lock(run_dir: Path) -> Optional[IO]:
    lock = open(Path(run_dir) / LOCK, "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        return None
    return lock


def claim(run_dir: Path) -> Optional[IO]:
    """Take the run's lock without waiting: the open lock file (keep it open while training,
    close it to release), or None when another process holds it. The kernel releases the
    lock of a process that dies, SIGKILL included, so a lock is never stale."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    lock = _try_lock(run_dir)
    if lock is not None:
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        lock.flush()
    return lock


def holder(run_dir: Path) -> Optional[str]:
    """Who trains the run now ('pid 123 on node1'), or None when nobody holds its lock."""
    if not (Path(run_dir) / LOCK).exists():
        return None
    lock = _try_lock(run_dir)
    if lock is not None:
        lock.close()
        return None
    try:
        return (Path(run_dir) / LOCK).read_text().strip() or "another process"
    except OSError:
        return "another process"
