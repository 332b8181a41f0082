"""A run directory: what one training run leaves behind, written so that a kill at any
moment leaves every file whole.

    config.yaml      the resolved config (written once, when the run starts)
    metrics.jsonl    one line per finished epoch
    summary.json     status (running, completed, diverged, failed) and the final figures
    checkpoint.pt    the state after the last finished epoch
    error.txt        the traceback of a failed run
    .lock            held (flock) by the one process that trains the run; names it
                     (sweep.lock chooses another directory for it, or none)
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Dict, Iterator, List, Optional, Tuple

import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from roadmap.errors import Choice, RunDirError

CONFIG, METRICS, SUMMARY, CHECKPOINT, ERROR, LOCK = (
    "config.yaml", "metrics.jsonl", "summary.json", "checkpoint.pt", "error.txt", ".lock")


class Status(Choice):
    """How a run stands. A run writes the first four into summary.json; a reader of run
    directories sees the last two where there is no summary to read."""

    running = "running"  # training, or stopped (killed, interrupted) before its last epoch
    completed = "completed"  # trained every epoch: its top-1 is the run's number
    diverged = "diverged"  # a loss became NaN or infinite; the run stopped there
    failed = "failed"  # crashed: error.txt holds the traceback
    unreadable = "unreadable"  # read only: summary.json or config.yaml is there but broken
    incomplete = "incomplete"  # read only: the directory holds no summary yet

    @property
    def finished(self) -> bool:
        """Completed or diverged: training it again changes nothing."""
        return self in (Status.completed, Status.diverged)


WRITTEN = (Status.running, Status.completed, Status.diverged, Status.failed)  # what summary.json may hold

# Keys that do not change what a run computes: a run may resume with other values.
NEUTRAL_KEYS = (
    "study",
    "design",
    "logger",
    "train.progress",
    "train.threads",
    "data.root",
    "data.download",
    "data.workers",
    "sweep",  # where the run's lock lives
    "train.tf32",  # the rounding of CUDA's float32 products only: no CPU number depends on it
)


# ----------------------------------------------------------------------------- the records

# Names the files of earlier versions used, read in this one place: one name per quantity.
OLD_NAMES = {"final_top1": "top1", "final_top5": "top5", "test_top1": "top1", "test_top5": "top5",
             "train_images_per_s": "images_per_s"}


def _known(cls, record: Dict[str, Any]) -> Dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    renamed = {OLD_NAMES.get(k, k): v for k, v in record.items()}
    return {k: v for k, v in renamed.items() if k in names}


@dataclass
class EpochRecord:
    """One line of metrics.jsonl: an epoch of training and the test after it."""

    epoch: int
    """Epochs finished, counting from 1."""
    train_loss: float
    """Mean training loss of the epoch: cross-entropy against the mixed, smoothed targets."""
    lr: float
    """The learning rate at the end of the epoch."""
    top1: float
    """Test top-1 accuracy after the epoch (%)."""
    top5: float
    """Test top-5 accuracy after the epoch (%)."""
    images_per_s: float
    """Training images per second of the epoch, over all processes."""
    data_share: float
    """Share of the epoch's training time spent producing batches (loading, augmenting)."""
    seconds: float
    """Wall time of the epoch, its test included."""

    @classmethod
    def from_dict(cls, record: Dict[str, Any]) -> "EpochRecord":
        return cls(**_known(cls, record))


@dataclass
class RunSummary:
    """summary.json: what a run is and how it went. Written when the run starts, after every
    epoch and at the end; every field but the status is None until known."""

    status: Status
    """running, completed, diverged or failed (Status)."""
    step: Optional[str] = None
    """The roadmap step (conf/step/<step>.yaml)."""
    change: Optional[str] = None
    """What the step changes, in the paper's words."""
    regime: Optional[str] = None
    """r50, r200 or micro."""
    data: Optional[str] = None
    """The dataset's name (data.name)."""
    recipe: Optional[str] = None
    """classic or convnext."""
    seed: Optional[int] = None
    """The run's seed."""
    params: Optional[int] = None
    """Parameters of the network."""
    gmacs: Optional[float] = None
    """Multiply-accumulates of one image at `resolution` (10^9)."""
    resolution: Optional[int] = None
    """The image side `gmacs` is counted at (the data's image_size)."""
    epochs: Optional[int] = None
    """Epochs the recipe trains."""
    epochs_done: int = 0
    """Epochs finished so far."""
    top1: Optional[float] = None
    """Test top-1 after the last epoch (%): the number the tables report."""
    top5: Optional[float] = None
    """Test top-5 after the last epoch (%)."""
    best_top1: Optional[float] = None
    """The best epoch's test top-1 (the official code's number; optimistic)."""
    best_top5: Optional[float] = None
    """The best epoch's test top-5 (%)."""
    images_per_s: Optional[float] = None
    """Mean training images per second over the epochs."""
    data_share: Optional[float] = None
    """Mean share of training time spent producing batches."""
    peak_memory_mb: Optional[float] = None
    """Peak memory: CUDA's allocator, or the process's peak RSS on the CPU (MiB)."""
    wall_time_s: Optional[float] = None
    """Wall time of the run so far, across resumptions (seconds)."""
    world_size: Optional[int] = None
    """Processes that trained the run together (DDP)."""
    device: Optional[str] = None
    """Rank 0's device (cpu, cuda:0)."""
    threads: Optional[int] = None
    """torch's intra-op CPU threads."""
    code_version: Optional[str] = None
    """The git commit of the code, +dirty with uncommitted changes."""
    versions: Dict[str, str] = field(default_factory=dict)
    """python, torch, torchvision and hydra-core versions."""
    ddp_in_sync: Optional[bool] = None
    """Distributed runs: whether every process ended with the same weights."""
    diverged_epoch: Optional[int] = None
    """A diverged run: the epoch whose loss became NaN or infinite."""
    diverged_loss: Optional[str] = None
    """A diverged run: that loss, as text (nan, inf)."""
    error: Optional[str] = None
    """A failed run: the exception, one line (the traceback is in error.txt)."""

    def __post_init__(self) -> None:
        self.status = Status(self.status)  # "completed" reads as Status.completed; ValueError for no status of ours

    @classmethod
    def from_dict(cls, record: Dict[str, Any]) -> "RunSummary":
        """ValueError for a status that is none of Status's."""
        known = _known(cls, record)
        known.setdefault("status", None)  # none recorded: refused by Status, as an unknown one is
        return cls(**known)

    def to_dict(self) -> Dict[str, Any]:
        return {**dataclasses.asdict(self), "status": self.status.value}


# ----------------------------------------------------------------------------- files


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
        raise RunDirError(
            f"checkpoint {path} is unreadable ({type(e).__name__}): delete it to train this run from the start"
        ) from e


def read_summary(run_dir: Path) -> Optional[RunSummary]:
    """The run's summary; None when there is none yet. RunDirError when the file is there
    but unreadable (truncated, edited, not a summary)."""
    path = Path(run_dir) / SUMMARY
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunDirError(f"{path} is unreadable ({type(e).__name__}): delete it to rebuild it from the checkpoint, "
                          "or delete the run directory to train the run again") from e
    try:
        summary = RunSummary.from_dict(record) if isinstance(record, dict) else None
    except ValueError:  # no status, or none of Status's
        summary = None
    valid = summary is not None and summary.status in WRITTEN
    if valid and summary.status is Status.completed:  # a completed run has its figure
        valid = isinstance(summary.top1, (int, float))
    if not valid:
        raise RunDirError(
            f"{path} is not a run summary (no valid status): delete it to rebuild it from the checkpoint, "
            "or delete the run directory to train the run again"
        )
    return summary


def write_summary(run_dir: Path, summary: RunSummary) -> None:
    write_json(Path(run_dir) / SUMMARY, summary.to_dict())


def read_metrics(run_dir: Path) -> List[EpochRecord]:
    """The epochs of metrics.jsonl; a line cut short by a kill (the run stopped there), or one
    that is no epoch record (not an object, an epoch that is not a whole number, a figure
    that is not a number), is left out."""
    path = Path(run_dir) / METRICS
    out = []
    for text in path.read_text(errors="replace").splitlines() if path.exists() else []:
        try:
            record = EpochRecord.from_dict(json.loads(text))
        except (json.JSONDecodeError, TypeError, AttributeError):
            continue
        figures = [v for k, v in dataclasses.asdict(record).items() if k != "epoch"]
        if isinstance(record.epoch, int) and all(isinstance(v, (int, float)) or v is None for v in figures):
            out.append(record)
    return out


def write_metrics(run_dir: Path, history: List[EpochRecord]) -> None:
    write_lines(Path(run_dir) / METRICS, [dataclasses.asdict(r) for r in history])


def summary_and_status(run_dir: Path) -> Tuple[Optional[RunSummary], Status]:
    """The run's summary and its status for a reader: the summary's, `unreadable` for a
    broken summary, `incomplete` for a directory that holds no summary."""
    try:
        summary = read_summary(run_dir)
    except RunDirError:
        return None, Status.unreadable
    return summary, summary.status if summary else Status.incomplete


def remove_if_unused(run_dir: Path) -> None:
    """Remove a run directory that holds nothing but its lock (a run refused before it
    wrote anything), so that no empty run is left behind."""
    run_dir = Path(run_dir)
    if run_dir.is_dir() and all(p.name == LOCK for p in run_dir.iterdir()):
        (run_dir / LOCK).unlink(missing_ok=True)
        run_dir.rmdir()


def flat_config(config: Dict[str, Any]) -> Dict[str, Any]:
    """A config's leaves by dotted key ('recipe.lr'): the top level's own values first, then
    each group's, in the file's order (the order pandas.json_normalize gives, and so the
    columns of results.csv). A list is one leaf."""
    top = {k: v for k, v in config.items() if not isinstance(v, dict)}
    return {**top, **{key: v for group in config if isinstance(config[group], dict)
                      for key, v in _leaves(config[group], f"{group}.").items()}}


def _leaves(d: Dict[str, Any], prefix: str) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in d.items():
        out.update(_leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def run_identity(config: Dict[str, Any]) -> Dict[str, Any]:
    """What a checkpoint belongs to: the step, the seed and twelve hex digits that change
    with every key deciding the run's numbers (NEUTRAL_KEYS left out, as in
    config_differences), from the config as config.yaml holds it (identity_of gives that)."""
    flat = flat_config(config)
    kept = sorted((k, v) for k, v in flat.items() if not k.startswith(NEUTRAL_KEYS))
    digest = hashlib.sha256(json.dumps(kept, default=str).encode()).hexdigest()[:12]
    return {"step": str((config.get("step") or {}).get("name")), "seed": config.get("seed"), "config": digest}


def identity_of(cfg: DictConfig) -> Dict[str, Any]:
    """run_identity of a composed config, read back as config.yaml writes it (so a reader
    of the run directory computes the same identity)."""
    return run_identity(yaml.safe_load(OmegaConf.to_yaml(cfg, resolve=True)))


def identity_mismatch(saved: Optional[Dict[str, Any]], wanted: Dict[str, Any]) -> Optional[str]:
    """How a checkpoint's recorded run differs from this one (copied or moved in), or None;
    a checkpoint of an earlier version, which records no run, is taken as this run's."""
    if saved is None or saved == wanted:
        return None

    def named(r: Dict[str, Any]) -> str:
        return f"{r.get('step')} seed {r.get('seed')}, config {r.get('config')}"

    return f"belongs to another run ({named(saved)}), not to this one ({named(wanted)})"


def config_differences(saved: Dict, wanted: Dict) -> List[str]:
    """Keys whose values differ, as 'key: saved -> wanted', ignoring NEUTRAL_KEYS."""
    a, b = flat_config(saved), flat_config(wanted)
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
        raise RunDirError(
            f"cannot write to the {what} directory {run_dir} ({e.strerror}): choose a writable {option}"
        ) from e


# ----------------------------------------------------------------------------- the lock


# flock's answers when another process holds the lock (EACCES where Python emulates flock with fcntl);
# any other (ENOSYS, ENOLCK, EOPNOTSUPP, ...) says that the filesystem cannot lock
HELD = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)


class CannotLock(RunDirError):
    """The filesystem refuses flock (Lustre mounted noflock: ENOSYS; NFS without lockd: ENOLCK)."""


def lock_path(run_dir: Path, where: str = "run") -> Optional[Path]:
    """The run's lock file for sweep.lock=`where`: the run directory's .lock (run), one file
    per run in the directory `where`, or None (none)."""
    if where == "none":
        return None
    if where == "run":
        return Path(run_dir) / LOCK
    key = hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:20]
    return Path(where).expanduser() / f"{key}{LOCK}"


def _try_lock(path: Path) -> Optional[IO]:
    """The open, locked file; None when another process holds it; CannotLock where flock fails."""
    lock = open(path, "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        lock.close()
        if e.errno in HELD:
            return None
        raise CannotLock(cannot_lock_message(path, e)) from e
    return lock


def cannot_lock_message(path: Path, e: OSError) -> str:
    """One line: which filesystem refuses the lock, why, and the two ways out."""
    return (f"the filesystem of {path.parent} ({filesystem(path.parent)}) cannot lock files "
            f"({errno.errorcode.get(e.errno or 0, e.errno)}: {e.strerror}): put the locks on a local disk "
            "(sweep.lock=/tmp/roadmap-locks, for sweeps on this machine), "
            "or run one sweep at a time with sweep.lock=none")


def filesystem(path: Path) -> str:
    """The type of the filesystem holding `path` (/proc/mounts' longest matching mount), or 'unknown'."""
    try:
        mounts = [line.split()[1:3] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "unknown"
    where = os.path.realpath(path)
    found = [(m, t) for m, t in mounts if where == m or where.startswith(m.rstrip("/") + "/")]
    return max(found, key=lambda mt: len(mt[0]))[1] if found else "unknown"


class _NoLock:
    """sweep.lock=none: a claim that always succeeds and holds nothing."""

    def close(self) -> None:
        pass


def claim(run_dir: Path, where: str = "run") -> Optional[IO]:
    """Take the run's lock without waiting: the open lock file (keep it open while training,
    close it to release), or None when another process holds it. The kernel releases the
    lock of a process that dies, SIGKILL included, so a lock is never stale. CannotLock,
    with its one line, where the filesystem cannot lock."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    path = lock_path(run_dir, where)
    if path is None:
        return _NoLock()  # type: ignore[return-value]
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = _try_lock(path)
    if lock is not None:
        try:  # unbuffered: a write that fails leaves nothing for close() to flush
            os.ftruncate(lock.fileno(), 0)
            os.pwrite(lock.fileno(), f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        except OSError as e:  # a full disk, a quota
            lock.close()
            raise RunDirError(f"cannot write the lock {path} ({e.strerror}): free space there, or choose another "
                              "hydra.sweep.dir") from e
    return lock


def check_lockable(folder: Path, where: str = "run") -> None:
    """CannotLock unless a lock can be taken where sweep.lock=`where` puts the locks of
    runs under `folder` (a study): said before anything trains."""
    if where == "none":
        return
    path = (Path(folder) if where == "run" else Path(where).expanduser()) / ".lock-test"
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = _try_lock(path)
    if lock is not None:
        lock.close()
    path.unlink(missing_ok=True)


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


def holder(run_dir: Path, where: str = "run") -> Optional[str]:
    """Who trains the run now ('pid 123 on node1'), or None when nobody holds its lock (or
    there is no lock to hold: sweep.lock=none, a filesystem that cannot lock)."""
    path = lock_path(run_dir, where)
    if path is None or not path.exists():
        return None
    try:
        lock = _try_lock(path)
    except CannotLock:
        return None
    if lock is not None:
        lock.close()
        return None
    try:
        return path.read_text().strip() or "another process"
    except OSError:
        return "another process"
