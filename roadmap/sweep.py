"""Train every step of the roadmap, and any other axis: one study, one table.

    python -m roadmap.sweep +step=all                              # the default study (~10 min on 2 cores)
    python -m roadmap.sweep +step=all seed=0,1,2                   # three seeds
    python -m roadmap.sweep +step=all recipe.lr=1e-3,2e-3,4e-3     # the whole path at three learning rates
    python -m roadmap.sweep +step=kernel_7 model.kernel_size=5,7 'seed=range(0,3)'
    python -m roadmap.sweep +step=stage_ratio,patchify_stem data=cifar10 recipe.epochs=30
    python -m roadmap.sweep +step=all hydra/launcher=joblib hydra.launcher.n_jobs=2 train.threads=1
    torchrun --nproc_per_node=2 -m roadmap.sweep +step=resnet,gelu +experiment=smoke   # each run with DDP
    python -m roadmap.sweep +step=all +experiment=imagenet_r50 hydra/launcher=slurm hydra.launcher.gpus_per_node=8

Every combination of the swept values is one run: one Hydra multirun job with its own
directory, runs/<study>/<step>/seed<k>/, and one more level for each other key swept,
named by its value (runs/<study>/recipe.lr=0.001/<step>/seed<k>/). The study defaults to
<data>_<regime>; `study=` names it, `hydra.sweep.dir=` moves it. A key given one value
applies to every run. Running the same command again skips finished runs, resumes
interrupted ones and refuses runs whose saved config differs. One process per run (rank 0
under torchrun or submitit) holds the run's lock, so two sweeps never train one run
twice, and the other ranks join it with DDP (sweep.lock puts the locks elsewhere, or,
`none`, takes none where the filesystem cannot lock). A run that fails or diverges does not stop
the others; Ctrl-C stops the sweep (run the command again to resume). The study root
gets results.csv (one row per run, rewritten after every run) and, at the end, table.md
and table.csv: each step beside the paper, one table per value of the swept keys.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import importlib.util
import itertools
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from hydra.core.override_parser.types import Glob, Override
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from roadmap import designs, progress, results, rundir, schedule
from roadmap.cli import CommandLine, check, launch, line, one_line_errors, read, step_names
from roadmap.config import (
    CONF_DIR,
    GROUPS,
    STEPS,
    ConfigError,
    Design,
    compose_overrides,
    hydra_config,
    options,
    validate,
)
from roadmap.errors import ResultsError
from roadmap.machine import (
    Device,
    export_srun_environment,
    from_main_process,
    is_main_process,
    setup_distributed,
    shutdown_distributed,
)
from roadmap.recipe import RecipeConfig
from roadmap.rundir import Status
from roadmap.train import run_one

EXAMPLE = "+step=all or seed=0,1,2"
MAX_RUNS = 5000
"""The most runs one sweep plans (README: split a larger one by a swept key, into one study)."""
PLAN_BAR_FROM = 50
"""Configs to compose from which planning shows its progress (a bar on a terminal, a line otherwise)."""
SWEEP_PID = "ROADMAP_SWEEP_PID"
"""The sweep's process id, in its environment: a process whose parent it is is one of its workers."""
PR_SET_PDEATHSIG = 1
"""prctl's option (linux/prctl.h): the signal a process gets when its parent dies."""
TERMINATED: List[int] = []
"""SIGTERM, once it stopped the sweep (it exits 143, not Ctrl-C's 130). A list, not an Event:
the runs' function, pickled by value for joblib's workers when the sweep runs as __main__, refers to it."""
QUIET_TRACKER = "ignore:resource_tracker:UserWarning"
"""loky's resource tracker cleans up after workers that a signal stopped, and warns of what it
cleaned: noise on the user's screen (PYTHONWARNINGS filter, inherited by the tracker)."""
# Launchers a sweep can use: Hydra's own, the plugins the project depends on, and conf/hydra/launcher/.
LAUNCHER_PLUGINS = {
    "basic": None,
    "joblib": "hydra_plugins.hydra_joblib_launcher",
    "submitit_local": "hydra_plugins.hydra_submitit_launcher",
    "submitit_slurm": "hydra_plugins.hydra_submitit_launcher",
    "slurm": "hydra_plugins.hydra_submitit_launcher",
}


# ----------------------------------------------------------------------------- the plan


@dataclass
class Plan:
    """What a sweep runs: every combination of its steps, swept values and seeds."""

    steps: List[str]
    seeds: List[int]
    axes: Dict[str, List[str]]
    """The other swept keys (as typed, `+` included) -> their values, as Hydra writes them into each job."""
    sweeps: List[str]
    """The axes' overrides as typed: Hydra expands them the same way."""
    fixed: List[str]
    """Overrides that every run gets."""
    hydra: List[str]
    """Overrides of Hydra's own config (launcher, directories)."""
    sweep_dir: Path
    configs: Dict[Tuple[str, str], DictConfig]
    """(variant, step) -> its composed config, for the first seed."""
    jobs: int = 1
    """Runs that train side by side (Hydra's joblib launcher), each on its train.threads cores."""
    skipped: List["designs.Skipped"] = field(default_factory=list)
    """A design's combinations without meaning, with their reasons (not trained)."""
    launch_order: List[str] = field(default_factory=list)
    """The steps in the order their runs start: `steps`, or the costliest first when runs
    train side by side (so that the last runs to finish are short ones)."""

    def variants(self) -> List[str]:
        """Each combination of the axes' values as its directory, the way Hydra's
        override_dirname writes it: 'model.kernel_size=5/recipe.lr=0.001' ('' without axes)."""
        combos = itertools.product(*[[f"{k}={v}" for v in values] for k, values in self.axes.items()])
        return ["/".join(sorted(c)) for c in combos]

    def runs(self) -> List[Tuple[str, str, int]]:
        """(variant, step, seed) of every run, seed-major as Hydra launches them: a study
        stopped part-way is complete for its first seeds."""
        return [(v, step, seed) for seed in self.seeds for v in self.variants() for step in self.steps]

    def run_dir(self, variant: str, step: str, seed: int) -> Path:
        return self.sweep_dir / variant / step / f"seed{seed}"

    def config(self, variant: str, step: str, seed: int) -> DictConfig:
        cfg = copy.deepcopy(self.configs[(variant, step)])
        cfg.seed = seed
        return cfg

    def hydra_argv(self) -> List[str]:
        """The command line Hydra's multirun gets: seeds outermost (seed-major), then the
        axes, then the steps (Hydra's basic sweeper nests its sweeps in the order given)."""
        subdir, naming = "${step.name}/seed${seed}", []
        if self.axes:
            subdir = "${hydra:job.override_dirname}/" + subdir
            exclude = ["step", "seed", *(key_of(f) for f in self.fixed)]
            naming = [f"hydra.job.config.override_dirname.exclude_keys=[{','.join(dict.fromkeys(exclude))}]"]
        return [
            "--multirun",
            f"seed={','.join(map(str, self.seeds))}",
            *self.sweeps,
            f"+step={','.join(self.launch_order or self.steps)}",
            *self.fixed,
            *self.hydra,
            f"hydra.sweep.dir={quote(str(self.sweep_dir))}",
            f"hydra.sweep.subdir='{subdir}'",
            *naming,
            *(["hydra/launcher=joblib", f"hydra.launcher.n_jobs={self.jobs}"] if self.jobs > 1 else []),
        ]


def key_of(override_line: str) -> str:
    return override_line.split("=", 1)[0].lstrip("+~")


def quote(value: str) -> str:
    """A value Hydra's override parser reads back as this exact string."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def plan(cmd: CommandLine) -> Plan:
    """Check the command line and compose every run's config before anything trains."""
    steps, search, skipped = networks(cmd)
    axes = {o.get_key_element(): axis_values(o) for o in cmd.sweeps("step", "seed")}
    p = Plan(
        steps=list(dict.fromkeys(steps)), seeds=seed_values(cmd.get("seed")), axes=axes,
        sweeps=[line(o) for o in cmd.sweeps("step", "seed")],
        fixed=[line(o) for o in cmd.app if not o.is_sweep_override() and o.key_or_group not in ("step", "seed")],
        hydra=[h for h in cmd.hydra if not h.startswith("hydra.sweep.dir=")] + search, sweep_dir=Path(), configs={},
        skipped=skipped,
    )
    check_launcher(cmd)
    check_size(p)
    compose_all(p, search)
    if not p.seeds:
        p.seeds = [int(next(iter(p.configs.values())).seed)]
    first = filter(None, p.variants()[0].split("/"))
    p.sweep_dir = Path(hydra_config(p.steps[0], [*p.fixed, *first, *cmd.hydra, *search]).sweep.dir)
    p.jobs = runs_at_once(cmd, p)
    p.launch_order = longest_first(p) if p.jobs > 1 else list(p.steps)
    return p


def check_size(p: Plan) -> None:
    """ConfigError for a sweep above MAX_RUNS, before its plan is made (Hydra composes each
    network's config in about 0.3 s on a laptop core: planning alone would take hours)."""
    count = len(p.steps) * len(p.variants()) * max(1, len(p.seeds))
    if count > MAX_RUNS:
        widest = max(p.axes, key=lambda k: len(p.axes[k]), default="seed")
        raise ConfigError(f"the sweep has {count:,} runs, more than the {MAX_RUNS:,} one sweep takes: split it, "
                          f"e.g. one sweep per value of {widest} (each into the same hydra.sweep.dir)")


def compose_all(p: Plan, search: List[str]) -> None:
    """Compose and check each network's config of every swept value (Hydra's compose), with
    a bar on a terminal where there are many."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    todo = [(variant, step) for variant in p.variants() for step in p.steps]
    many = len(todo) >= PLAN_BAR_FROM and is_main_process()
    if many and not sys.stderr.isatty():
        print(f"sweep: planning {len(todo)} configs (Hydra composes each)", file=sys.stderr, flush=True)
    seed = [f"seed={p.seeds[0]}"] if p.seeds else []
    for variant, step in tqdm(todo, desc="planning", unit="config", leave=False, disable=not many or None):
        cfg = compose_overrides(f"+step={step}", *p.fixed, *filter(None, variant.split("/")), *seed, *search)
        recipe: RecipeConfig = OmegaConf.to_object(cfg.recipe)  # type: ignore[assignment]  (compose validated cfg)
        recipe.split(world)  # under torchrun: the batch must split over the ranks
        p.configs[(variant, step)] = cfg


def longest_first(p: Plan) -> List[str]:
    """The steps, costliest network first (schedule.costliest_first), as the first swept
    value builds them."""
    return schedule.costliest_first({step: validate(p.configs[(p.variants()[0], step)]) for step in p.steps})


def networks(cmd: CommandLine) -> Tuple[List[str], List[str], List[designs.Skipped]]:
    """The networks a sweep trains: +step= names them, or +design= builds them (its step files
    written into the study, put on Hydra's search path); (steps, hydra overrides, skipped)."""
    if cmd.get("design") is None:
        steps = cmd.steps()
        if not steps:
            raise ConfigError("no steps given: add +step=all, a list such as +step=stage_ratio,patchify_stem, "
                              "or a design such as +design=leave_one_out")
        return steps, [], []
    if cmd.get("step") is not None:
        raise ConfigError("+design= chooses the networks and +step= names them: give one of the two")
    if cmd.get("design").is_sweep_override():
        raise ConfigError(f"{line(cmd.get('design'))} sweeps designs: run one design per sweep")
    single = [line(o) for o in cmd.app if not o.is_sweep_override()]
    design = validate(compose_overrides("+step=resnet", *single)).design
    if design.name is Design.path:
        return list(STEPS), [], []
    nets, skipped = designs.expand(design)
    study = Path(hydra_config("resnet", [*single, *cmd.hydra]).sweep.dir)
    folder = designs.write_steps(nets, study / "designs").resolve()
    return [n.name for n in nets], [f"hydra.searchpath=[{quote('file://' + str(folder))}]"], skipped


def runs_at_once(cmd: CommandLine, p: Plan) -> int:
    """How many runs train at once: 1 where a launcher is chosen or under torchrun, else as
    many as schedule.side_by_side lets the runs' configs share the cores."""
    if any(o.key_or_group == "hydra/launcher" for o in cmd.overrides) or "WORLD_SIZE" in os.environ:
        return 1
    return schedule.side_by_side(p.configs.values(), len(p.runs()))


def skipped_lines(skipped: List["designs.Skipped"], most: int = 5) -> List[str]:
    """'<network>: <reason>' per skipped combination; past `most`, one line per reason with
    its count and first network (a random design may reject dozens of draws)."""
    if len(skipped) <= most:
        return [f"{s.name}: {s.reason}" for s in skipped]
    by_reason: Dict[str, List[str]] = {}
    for s in skipped:
        key = "a repeated draw" if s.reason.startswith("the same network as") else s.reason
        by_reason.setdefault(key, []).append(s.name)
    return [f"{len(names)} draws, {reason} (e.g. {names[0]})" for reason, names in by_reason.items()]


def seed_values(seed: Optional[Override]) -> List[int]:
    """seed=3, seed=0,1,2 or seed=range(0,3) -> the seeds; [] when not given (the config's)."""
    if seed is None:
        return []
    values = list(seed.sweep_iterator()) if seed.is_discrete_sweep() else [seed.value()]
    bad = [v for v in values if not isinstance(v, int) or isinstance(v, bool)]
    if bad:
        raise ConfigError(
            f"{line(seed)} is not valid: '{bad[0]}' is not an integer; write seed=0, seed=0,1,2 or seed='range(0,3)'"
        )
    return list(dict.fromkeys(values))


def axis_values(o: Override) -> List[str]:
    """The values a swept key takes, as Hydra writes them into each job's overrides (and so
    into the run directory's name); refused when two runs would share a directory."""
    value = o.value()
    if o.is_interval_sweep():
        raise ConfigError(f"{line(o)}: interval() needs an optimizing sweeper; list the values or use range()")
    if isinstance(value, Glob):
        if o.key_or_group not in GROUPS:
            raise ConfigError(f"{line(o)}: glob() chooses among the options of a config group ({', '.join(GROUPS)})")
        values = value.filter(options(o.key_or_group))
    else:
        values = list(o.sweep_string_iterator())
    if not values:
        raise ConfigError(f"{line(o)} sweeps no value: give at least one")
    repeated = next((v for i, v in enumerate(values) if v in values[:i]), None)
    if repeated is not None:
        raise ConfigError(
            f"{line(o)} gives two runs the same directory ({o.get_key_element()}={repeated}): list each value once"
        )
    slashed = next((v for v in values if "/" in v), None)
    if slashed is not None:
        raise ConfigError(f"{line(o)}: the value {slashed} cannot name a run directory ('/'); run one sweep per value")
    return values


def check_launcher(cmd: CommandLine) -> None:
    for o in cmd.overrides:
        if o.key_or_group != "hydra/launcher":
            continue
        name = str(o.value())
        ours = (CONF_DIR / "hydra" / "launcher" / f"{name}.yaml").exists()
        if name not in LAUNCHER_PLUGINS and not ours:
            raise ConfigError(f"unknown launcher '{name}': choose {', '.join(LAUNCHER_PLUGINS)}")
        module = LAUNCHER_PLUGINS.get(name)
        if module and importlib.util.find_spec(module) is None:
            package = "hydra-joblib-launcher" if "joblib" in module else "hydra-submitit-launcher"
            raise ConfigError(f"launcher '{name}' is not installed: pip install {package}")


def check_run_dirs(p: Plan) -> None:
    """Before any run trains: every run directory is a directory or can be made one. A symlink
    to a directory is followed; one to nothing, or a file on the way, is refused."""
    for variant, step, seed in p.runs():
        run_dir = p.run_dir(variant, step, seed)
        for path in [run_dir, *run_dir.parents]:
            if path.is_symlink() and not path.exists():
                raise ConfigError(f"{path} is a symlink to {os.readlink(path)}, which does not exist: "
                                  "remove the link, or point it to a directory, then rerun")
            if path.exists() and not path.is_dir():
                raise ConfigError(f"{path} is a file where the run {step} seed{seed} needs a directory: "
                                  "move it away, or choose another hydra.sweep.dir")
            if path == p.sweep_dir or path.is_dir():
                break


# ----------------------------------------------------------------------------- one job


def run_job(cfg: DictConfig, run_dir: Path, study_dir: Path) -> int:
    """One run of the sweep. One process takes its lock (rank 0, where several processes
    train it together); every process then trains it, or every process skips it."""
    if is_worker():
        become_worker(cfg)
    export_cluster_environment()
    setup_distributed(Device(cfg.train.device))
    lock, refused = None, None
    if is_main_process():
        try:
            lock = rundir.claim(run_dir, cfg.sweep.lock)
        except rundir.RunDirError as e:  # the filesystem cannot lock, or the disk is full
            refused = str(e)
    held, refused = from_main_process((lock is None, refused))
    if refused or held:
        if is_main_process():
            if refused:
                rundir.remove_if_unused(run_dir)
            print(f"error: {refused}" if refused else
                  f"skipped: {run_dir} is being trained by another process ({rundir.holder(run_dir, cfg.sweep.lock)})",
                  file=sys.stderr if refused else sys.stdout, flush=True)
        return 2 if refused else 0
    try:
        with said_by_the_display():
            code = run_one(cfg, run_dir, stop_on_interrupt=True)  # Ctrl-C stops the sweep, not only this run
    finally:
        if lock is not None:
            lock.close()
    if is_main_process():
        try:
            results.save_tables(study_dir)
        except ResultsError as e:  # a full disk: the run is kept, the tables are written at the end
            print(f"error: {e}", file=sys.stderr, flush=True)
    return code


def is_worker() -> bool:
    """True in a process that the sweep's launcher started for its runs (joblib's workers),
    not in the sweep itself nor in a job of a scheduler (submitit keeps its own signals)."""
    return os.environ.get(SWEEP_PID) == str(os.getppid())


def become_worker(cfg: DictConfig) -> None:
    """A worker dies with the sweep (Linux's parent-death signal: a sweep killed by SIGKILL
    or the OOM killer leaves no run training, and no lock held), stops on SIGTERM as on
    Ctrl-C, and draws no bar of its own (the runs share the terminal)."""
    die_with_parent()
    if os.getppid() != int(os.environ[SWEEP_PID]):  # the sweep died before the signal was set
        os._exit(1)
    signal.signal(signal.SIGTERM, stop_as_on_ctrl_c)
    cfg.train.progress = False


def die_with_parent() -> None:
    """prctl(PR_SET_PDEATHSIG, SIGKILL) where the C library has prctl (Linux); else nothing."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: a killed sweep's workers end their runs, then stop
        pass


def stop_as_on_ctrl_c(signum: int, frame: object) -> None:
    """SIGTERM (a scheduler, `kill`): the runs in flight keep their last epoch, as on Ctrl-C."""
    TERMINATED.append(signum)
    raise KeyboardInterrupt


@contextlib.contextmanager
def said_by_the_display() -> Iterator[None]:
    """While the sweep's display says the runs' lines (progress.QUIET), a worker prints none."""
    if not os.environ.get(progress.QUIET):
        yield
        return
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield


def export_cluster_environment() -> None:
    """Under submitit with several tasks per job (SLURM, or submitit_local), export torchrun's
    variables (RANK, WORLD_SIZE, MASTER_ADDR, ...) from the job's environment, so that the
    tasks train the run together with DDP. Nothing to do under torchrun or for one task."""
    if "WORLD_SIZE" in os.environ:
        return
    try:
        import submitit

        env = submitit.JobEnvironment()
    except (ImportError, RuntimeError):
        return  # not inside a submitit job
    if env.num_tasks > 1:
        # LOCAL_RANK picks the GPU, as under torchrun: keep every GPU of the node visible
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


# ----------------------------------------------------------------------------- the end


def unfinished(p: Plan, runs) -> List[str]:
    """'<run>: <why>' for every planned run that did not complete, in the plan's order."""
    status = {Path(r).resolve(): s for r, s in zip(runs["run_dir"], runs["status"])} if len(runs) else {}
    out, lock = [], next(iter(p.configs.values())).sweep.lock
    for variant, step, seed in p.runs():
        run_dir = p.run_dir(variant, step, seed)
        name = f"{variant + ' ' if variant else ''}{step} seed{seed}"
        who = rundir.holder(run_dir, lock)
        if who:
            out.append(f"{name}: being trained by another process ({who})")
            continue
        try:
            rundir.check_config(run_dir, p.config(variant, step, seed))
        except rundir.RunDirError:
            out.append(f"{name}: refused (its run directory holds another config)")
            continue
        state = status.get(run_dir.resolve(), "not run")
        if state != Status.completed.value:  # a collapsed run completed; the table says it is not averaged
            out.append(f"{name}: {state}")
    return out


def finish(p: Plan, interrupted: bool) -> int:
    """Write the study's tables, print them and say what did not complete; the exit code."""
    try:
        runs, text, _ = results.save_tables(p.sweep_dir)
    except ResultsError as e:  # a full disk, a study others cannot read: the runs are kept
        print(f"error: {e}", file=sys.stderr)
        return stopped_code() if interrupted else 1
    print(text)
    print(f"results: {p.sweep_dir / 'results.csv'}, table: {p.sweep_dir / 'table.md'}")
    if interrupted:
        how = "terminated (SIGTERM)" if TERMINATED else "interrupted"
        print(f"{how}: the sweep stopped; run the same command again to resume (finished runs are kept)",
              file=sys.stderr)
        return stopped_code()
    bad = unfinished(p, runs)
    if bad:
        print(f"{len(bad)} of {len(p.runs())} runs did not complete: " + "; ".join(bad), file=sys.stderr)
        return 1
    print(f"all {len(p.runs())} runs completed.")
    return 0


# ----------------------------------------------------------------------------- command line


def show(cmd: CommandLine, argv: Sequence[str]) -> None:
    """--cfg, --info, --help: Hydra shows the first run's config (Hydra shows one config)."""
    first, count = {}, 1
    for o in cmd.app:
        if o.key_or_group == "step":
            names = step_names(o)
            first[line(o)], count = f"+step={names[0]}", count * len(names)
        elif o.is_sweep_override():
            values = axis_values(o) if o.key_or_group != "seed" else [str(s) for s in seed_values(o)]
            first[line(o)], count = f"{o.get_key_element()}={values[0]}", count * len(values)
    shown = [first.get(a, a) for a in argv]
    check(read(shown, EXAMPLE), "sweep")
    if count > 1 and not cmd.flags.help:
        print(f"# the config of the first of {count} runs", file=sys.stderr)
    launch(lambda cfg, run_dir: 0, shown, "sweep")


def main(argv: Optional[Sequence[str]] = None) -> None:
    export_srun_environment()  # under plain srun, the tasks train each run together, and only rank 0 reports
    signal.signal(signal.SIGTERM, stop_as_on_ctrl_c)  # a scheduler's stop, as Ctrl-C; the exit code says which
    try:
        sweep(list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:  # before the first run or while writing the tables
        print("interrupted: run the same command again to resume (finished runs are kept)", file=sys.stderr)
        sys.exit(stopped_code())


def stopped_code() -> int:
    """130 after Ctrl-C, 143 after SIGTERM (the shell's 128 + the signal)."""
    return 128 + (signal.SIGTERM if TERMINATED else signal.SIGINT)


def sweep(argv: List[str]) -> None:
    with one_line_errors():
        cmd = read(argv, EXAMPLE)
        if cmd.shows:
            return show(cmd, argv)
        p = plan(cmd)
        rundir.check_writable(p.sweep_dir, option="hydra.sweep.dir")
        rundir.check_lockable(p.sweep_dir, next(iter(p.configs.values())).sweep.lock)
        check_run_dirs(p)
    say = is_main_process()
    if say:
        announce(p)
    interrupted = False
    display = progress.Display(display_runs(p), p.jobs) if say and progress.wanted(p.jobs) else None
    os.environ[SWEEP_PID] = str(os.getpid())  # the launcher's workers know the sweep by it
    os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), QUIET_TRACKER]))
    try:
        if display:
            display.start()
        launch(lambda cfg, run_dir: run_job(cfg, run_dir, p.sweep_dir), p.hydra_argv(), "sweep")
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if display:
            display.stop()
        shutdown_distributed()
    code = finish(p, interrupted) if say else (stopped_code() if interrupted else 0)
    sys.exit(code)


def announce(p: Plan) -> None:
    at_once = f", {p.jobs} at a time" if p.jobs > 1 else ""
    print(
        f"sweep: {len(p.runs())} runs ({len(p.steps)} networks x {len(p.variants())} values x {len(p.seeds)} seeds"
        f"{at_once}) -> {p.sweep_dir}",
        flush=True,
    )
    for text in skipped_lines(p.skipped):
        print(f"  not trained: {text}", flush=True)


def display_runs(p: Plan) -> List[Tuple[str, int, Path, int]]:
    """(step, seed, run directory, epochs) of every run, for the sweep's display."""
    return [(step, seed, p.run_dir(v, step, seed), int(p.configs[(v, step)].recipe.epochs))
            for v, step, seed in p.runs()]


if __name__ == "__main__":
    main()
