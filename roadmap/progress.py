"""One screen for runs that train side by side: the sweep's own progress display.

Runs side by side train in joblib's worker processes, whose bars would overwrite each
other on one terminal. When the sweep's output is a terminal, the workers keep quiet
(QUIET in their environment) and the sweep draws one display from what the runs write
into their directories: each run's epoch and end lines, as the run itself says them,
scroll above; below them stay one bar for the sweep (epochs done of all its runs, runs
done, tqdm's ETA from the measured rate) and one bar per run in flight (tqdm's own
multi-bar: `position`, `tqdm.write`). Output piped to a file keeps the runs' own plain
lines and no bar; one run at a time keeps the run's per-epoch bar.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

from tqdm import tqdm

from roadmap import rundir
from roadmap.rundir import Status
from roadmap.train import epoch_line, outcome

QUIET = "ROADMAP_SWEEP_DRAWS"
"""Set in the workers' environment when the sweep draws the display: the runs print no line of their own."""
SWEEP_BAR = "{desc} {bar} {n_fmt}/{total_fmt} epochs [{elapsed}<{remaining}]"
"""The sweep's bar: runs done and training (its description), epochs done of all, tqdm's ETA."""
POLL_S = 0.5
"""How often the display reads the run directories (a summary and a metrics file per run in flight)."""


@dataclass
class Watched:
    """One run of the sweep, as the display follows it."""

    step: str
    seed: int
    run_dir: Path
    epochs: int
    """Epochs the run trains in all (its recipe's)."""
    said: int = 0
    """Epoch lines already said (those of an earlier session are not said again)."""
    done: bool = False
    """Completed, diverged or failed: nothing more to follow."""
    bar: Optional[tqdm] = None
    """Its bar while it trains (one line below the sweep's)."""


def wanted(jobs: int) -> bool:
    """Whether the sweep draws the display: runs side by side, said to a terminal."""
    return jobs > 1 and sys.stdout.isatty() and sys.stderr.isatty()


class Display:
    """The sweep's display over `runs` (step, seed, run directory, epochs), from a thread of
    the sweep's own process: start() before the runs are launched, stop() after."""

    def __init__(self, runs: List[Tuple[str, int, Path, int]], jobs: int):
        self.runs = [Watched(step, seed, Path(d), epochs) for step, seed, d, epochs in runs]
        self.jobs, self.since = jobs, time.time()
        for w in self.runs:  # what an earlier session did is counted, not said again
            summary, _ = rundir.summary_and_status(w.run_dir)
            w.said = len(rundir.read_metrics(w.run_dir))
            w.done = summary is not None and summary.status is not Status.running
        total = sum(w.epochs for w in self.runs)
        self.sweep = tqdm(total=total, initial=self.epochs_done(), unit="epoch", position=0, dynamic_ncols=True,
                          desc=self.label(), bar_format=SWEEP_BAR)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.loop, name="sweep-display", daemon=True)

    def start(self) -> None:
        os.environ[QUIET] = "1"  # the workers, spawned after this, inherit it
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join()
        self.poll()  # the last lines
        for w in self.runs:
            if w.bar is not None:
                w.bar.close()
        self.sweep.close()
        os.environ.pop(QUIET, None)

    def loop(self) -> None:
        while not self.stopping.wait(POLL_S):
            self.poll()

    def poll(self) -> None:
        for w in self.runs:
            if not w.done:
                try:
                    self.follow(w)
                except (OSError, TypeError, ValueError):  # a file being replaced, a damaged record: read it next time
                    continue
        self.sweep.set_description_str(self.label(), refresh=False)
        self.sweep.update(self.epochs_done() - self.sweep.n)  # tqdm's rate (and ETA) from the epochs done here

    def follow(self, w: Watched) -> None:
        """Say the run's new epochs and its end; keep its bar while it trains in this sweep."""
        summary, status = rundir.summary_and_status(w.run_dir)
        if summary is None or (status is Status.running and self.stale(w)):
            return  # not started, or left running by an earlier session and not resumed yet
        records = rundir.read_metrics(w.run_dir)
        for record in records[w.said:]:
            tqdm.write(epoch_line(w.step, w.seed, w.epochs, record))
        w.said = max(w.said, len(records))
        if status is Status.running:
            if w.bar is None:
                tqdm.write(f"[{w.step} seed{w.seed}] training, epoch {w.said + 1} of {w.epochs} -> {w.run_dir}")
                w.bar = tqdm(total=w.epochs, initial=w.said, unit="epoch", position=self.free_position(),
                             leave=False, dynamic_ncols=True, desc=f"  [{w.step} seed{w.seed}]",
                             bar_format="{desc} epoch {n_fmt}/{total_fmt} {bar} [{elapsed}<{remaining}]")
            w.bar.update(w.said - w.bar.n)
            return
        w.done = True
        if w.bar is not None:
            w.bar.close()
            w.bar = None
        if status is Status.completed:  # the worker says a diverged or failed run on stderr itself
            tqdm.write(outcome(summary, w.run_dir, already=False))

    def stale(self, w: Watched) -> bool:
        """True when the run's summary predates this sweep (a run not resumed yet)."""
        try:
            return (w.run_dir / rundir.SUMMARY).stat().st_mtime < self.since
        except OSError:
            return True

    def free_position(self) -> int:
        taken = {w.bar.pos for w in self.runs if w.bar is not None}
        return next(i for i in range(1, len(self.runs) + 2) if i not in taken and -i not in taken)

    def epochs_done(self) -> int:
        return sum(min(w.said, w.epochs) for w in self.runs)

    def label(self) -> str:
        done = sum(w.done for w in self.runs)
        flying = sum(w.bar is not None for w in self.runs)
        return f"sweep: {done}/{len(self.runs)} runs done, {flying} training"

