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

import contextlib
import fcntl
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import IO, Any, Dict, Iterator, List, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from roadmap.errors import RunDirError

CONFIG, METRICS, SUMMARY, CHECKPOINT, ERROR, LOCK = (
    "config.yaml", "metrics.jsonl", "summary.json", "checkpoint.pt", "error.txt", ".lock")
FINISHED = ("completed", "diverged")
STATUSES = ("running", "completed", "diverged", "failed")

# Keys that do not change what a run computes: a run may resume with other values.
NEUTRAL_KEYS = ("study", "logger", "train.progress", "train.threads", "data.root", "data.download", "data.workers")


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
    """The run's summary; None when there is none yet. RunDirError when the file is there
    but unreadable (truncated, edited, not a summary)."""
    path = Path(run_dir) / SUMMARY
    try:
        summary = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunDirError(f"{path} is unreadable ({type(e).__name__}): delete it to rebuild it from the checkpoint, "
                          "or delete the run directory to train the run again") from e
    valid = isinstance(summary, dict) and summary.get("status") in STATUSES
    if valid and summary["status"] == "completed":  # a completed run has its figure
        valid = isinstance(summary.get("final_top1"), (int, float))
    if not valid:
        raise RunDirError(f"{path} is not a run summary (no valid status): delete it to rebuild it from the checkpoint, "
                          "or delete the run directory to train the run again")
    return summary


def run_status(run_dir: Path) -> str:
    """The run's status for a reader: its summary's, `unreadable` for a broken summary,
    `incomplete` for a directory that holds no summary."""
    try:
        summary = read_summary(run_dir)
    except RunDirError:
        return "unreadable"
    return summary["status"] if summary else "incomplete"


def remove_if_unused(run_dir: Path) -> None:
    """Remove a run directory that holds nothing but its lock (a run refused before it
    wrote anything), so that no empty run is left behind."""
    run_dir = Path(run_dir)
    if run_dir.is_dir() and all(p.name == LOCK for p in run_dir.iterdir()):
        (run_dir / LOCK).unlink(missing_ok=True)
        run_dir.rmdir()


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


def check_writable(run_dir: Path, option: str = "hydra.run.dir") -> None:
    """RunDirError unless `run_dir` can be created and written; the message names `option`,
    the command-line key that chooses the directory."""
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write-test."):
            pass
    except OSError as e:
        what = "study" if option == "hydra.sweep.dir" else "run"
        raise RunDirError(f"cannot write to the {what} directory {run_dir} ({e.strerror}): choose a writable {option}") from e


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


@contextlib.contextmanager
def exclusive(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive lock on `lock_file` (created if needed), waiting for it: one
    process at a time reads a study and writes its tables."""
    Path(lock_file).parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


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
