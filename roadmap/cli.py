"""Command-line plumbing shared by the entry points (inspect, train, sweep):
Hydra-style overrides in, one clear line and exit code 2 out for any bad input."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

from roadmap.config import CONF_DIR, ConfigError, compose, expand_steps, run_dir_of
from roadmap.rundir import RunDirError, check_writable


def read_argv(usage: str, example: str, argv: Optional[Sequence[str]] = None) -> List[str]:
    """The arguments, after answering --help; anything that is not key=value is refused."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(usage.strip())
        sys.exit(0)
    bad = [a for a in argv if "=" not in a and not a.startswith("-")]
    if bad:
        with one_line_errors():
            raise ConfigError(f"'{bad[0]}' is not an override: write key=value, e.g. {example}")
    return argv


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Bad input ends the program with `error: <one line>` and exit code 2."""
    try:
        yield
    except (ConfigError, RunDirError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def split_steps(argv: Sequence[str]) -> Tuple[Optional[List[str]], List[str]]:
    """Take `+step=a,b` / `+step=all` out of the overrides: (steps or None, the rest)."""
    steps, rest = None, []
    for arg in argv:
        if arg.startswith(("+step=", "step=")):
            steps = expand_steps(arg.split("=", 1)[1])
        else:
            rest.append(arg)
    return steps, rest


def is_hydra_arg(arg: str) -> bool:
    return arg.startswith(("hydra.", "hydra/", "+hydra", "-"))


def run(main: Callable[[List[str]], int], usage: str) -> None:
    """A plain entry point (no run directory): main(overrides) -> exit code."""
    argv = read_argv(usage, "regime=r50 or +step=all")
    with one_line_errors():
        code = main(argv)
    sys.exit(code)


def one_step(argv: Sequence[str], task: str) -> Tuple[str, List[str]]:
    steps, rest = split_steps([a for a in argv if not is_hydra_arg(a)])
    if not steps:
        raise ConfigError("no step given: add +step=<name>, e.g. +step=separate_downsampling (see python -m roadmap.inspect +step=all)")
    if len(steps) != 1:
        raise ConfigError(f"{task} takes one step, not {len(steps)}: use python -m roadmap.sweep +step={','.join(steps) if len(steps) < 4 else 'all'}")
    return steps[0], rest


def hydra_main(task_fn: Callable, usage: str, task: str) -> None:
    """Check the command line as roadmap.compose does (one line for any bad input), then
    hand it to Hydra, which sets up the run directory and calls task_fn(cfg, run_dir)."""
    import hydra
    from hydra.core.hydra_config import HydraConfig

    argv = read_argv(usage, "+step=resnet or seed=1")
    with one_line_errors():
        step, rest = one_step(argv, task)
        compose(step, *rest)
        hydra_args = [a for a in argv if is_hydra_arg(a) and not a.startswith("-")]
        check_writable(run_dir_of(step, [*rest, *hydra_args]))

    @hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
    def _main(cfg) -> None:
        code = task_fn(cfg, Path(HydraConfig.get().runtime.output_dir))
        if code:
            sys.exit(code)

    _main()
