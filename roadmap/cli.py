"""Command-line plumbing shared by the entry points (inspect, train, sweep).

Hydra reads every command line: its argument parser takes the flags (`--help`, `--cfg job`,
`-c job --package step`, `--info`, `--resolve`, `--shell-completion`, `--hydra-help`) and its
override parser reads every override, sweeps and functions included (`seed=range(0,3)`,
`recipe.lr=1e-3,2e-3`, `regime=glob(r*)`). Bad input ends in one line, `error: ...`, and
exit code 2; under torchrun only rank 0 says it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, List, NoReturn, Optional, Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob, Override
from hydra.errors import HydraException

from roadmap.config import CONF_DIR, ConfigError, available_steps, compose, compose_overrides, expand_steps, run_dir_of
from roadmap.errors import RoadmapError
from roadmap.rundir import check_writable

# Flags with which Hydra shows something (help, the config, completion) and runs nothing.
SHOW_FLAGS = ("help", "hydra_help", "cfg", "info", "shell_completion")
GRAMMAR = "https://hydra.cc/docs/advanced/override_grammar/basic/"


# ----------------------------------------------------------------------------- reading


@dataclass
class CommandLine:
    """A command line as Hydra reads it: its flags and its parsed overrides."""

    flags: argparse.Namespace
    overrides: List[Override]

    @property
    def shows(self) -> bool:
        """Whether a flag asks Hydra to show something instead of running."""
        return any(getattr(self.flags, f, None) for f in SHOW_FLAGS)

    @property
    def app(self) -> List[Override]:
        """The overrides of the run's config: all but hydra.* and hydra/*."""
        return [o for o in self.overrides if not is_hydra(o)]

    @property
    def hydra(self) -> List[str]:
        """The overrides of Hydra's own config, as typed."""
        return [line(o) for o in self.overrides if is_hydra(o)]

    def get(self, key: str) -> Optional[Override]:
        """The override of `key` (the last one, as in Hydra), or None."""
        found = [o for o in self.app if o.key_or_group == key]
        return found[-1] if found else None

    def app_lines(self, *without: str) -> List[str]:
        """The run config's overrides as typed, leaving out the keys `without`."""
        return [line(o) for o in self.app if o.key_or_group not in without]

    def steps(self) -> Optional[List[str]]:
        """The steps that +step= names (all, a list, or glob(...)), or None without +step."""
        step = self.get("step")
        return None if step is None else step_names(step)

    def sweeps(self, *without: str) -> List[Override]:
        return [o for o in self.app if o.is_sweep_override() and o.key_or_group not in without]


def read(argv: Sequence[str], example: str) -> CommandLine:
    """Parse a command line with Hydra's own parsers; ConfigError names what is wrong."""

    def refuse(message: str) -> NoReturn:
        raise ConfigError(f"{message}: give key=value overrides, e.g. {example}, and Hydra's flags (see --help)")

    flags = hydra_flags(argv, refuse)
    return CommandLine(flags, parse_overrides(flags.overrides, example))


def parse_overrides(lines: Sequence[str], example: str) -> List[Override]:
    parser = OverridesParser.create()
    out: List[Override] = []
    for text in lines:
        try:
            out.extend(parser.parse_overrides([text]))
        except HydraException as e:
            raise ConfigError(_unreadable(text, e, example)) from None
    return out


def _unreadable(text: str, error: HydraException, example: str) -> str:
    if "=" not in text:
        return f"'{text}' is not an override: write key=value, e.g. {example}"
    key, _, value = text.partition("=")
    if not value.isascii() or " " in value:
        return (f"'{text}' cannot be read as an override: quote a value with spaces or non-ASCII characters, "
                f"as in \"{key}='{value}'\"")
    detail = [ln for ln in str(error).splitlines() if ln.strip() and not ln.startswith(("Error parsing", "See "))]
    return f"'{text}' cannot be read as an override ({detail[0].strip() if detail else 'syntax'}): see {GRAMMAR}"


def line(o: Override) -> str:
    assert o.input_line is not None
    return o.input_line


def is_hydra(o: Override) -> bool:
    return o.key_or_group == "hydra" or o.key_or_group.startswith(("hydra.", "hydra/"))


def step_names(step: Override) -> List[str]:
    """+step=all, +step=a,b, +step=glob(kernel_*) or +step=a -> the step names, checked."""
    value = step.value()
    if isinstance(value, Glob):
        names = value.filter(available_steps())
    elif step.is_discrete_sweep():
        names = list(step.sweep_iterator())
    else:
        names = [value]
    out = expand_steps(names)
    if not out:
        raise ConfigError(f"{line(step)} names no step: choose from {', '.join(available_steps())}, or all")
    return out


def answer_help(argv: Sequence[str], usage: str) -> None:
    """Entry points that are not Hydra apps: -h or --help prints the usage and exits 0."""
    if any(a in ("-h", "--help") for a in argv):
        print(usage.strip())
        sys.exit(0)


def read_argv(usage: str, example: str, argv: Optional[Sequence[str]] = None) -> List[str]:
    """For entry points that are not Hydra apps (bench): --help, then key=value only."""
    argv = list(sys.argv[1:] if argv is None else argv)
    answer_help(argv, usage)
    bad = [a for a in argv if "=" not in a]
    if bad:
        with one_line_errors():
            raise ConfigError(f"'{bad[0]}' is not an option: write key=value, e.g. {example}")
    return argv


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Bad input ends the program with `error: <one line>` and exit code 2 (said once, by rank 0)."""
    try:
        yield
    except RoadmapError as e:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


# ----------------------------------------------------------------------------- entry points


def run(main: Callable[[CommandLine], int], usage: str) -> None:
    """A plain entry point (no run directory, not a Hydra app): main(command line) -> exit code."""
    argv = sys.argv[1:]
    answer_help(argv, usage)
    with one_line_errors():
        code = main(read(argv, "regime=r50 or +step=all"))
    sys.exit(code)


def one_step(cmd: CommandLine, task: str) -> str:
    steps = cmd.steps()
    if not steps:
        raise ConfigError(
            "no step given: add +step=<name>, e.g. +step=separate_downsampling "
            "(see python -m roadmap.inspect +step=all)"
        )
    if len(steps) != 1:
        listed = ",".join(steps) if len(steps) < 4 else "all"
        raise ConfigError(f"{task} takes one step, not {len(steps)}: use python -m roadmap.sweep +step={listed}")
    swept = cmd.sweeps("step")
    if swept:
        raise ConfigError(f"{line(swept[0])} sweeps values, and {task} trains one run: use python -m roadmap.sweep")
    return steps[0]


def check(cmd: CommandLine, task: str) -> None:
    """The checks `task` makes before Hydra starts: the config composes (shown or run), and
    a run has one step and a writable run directory."""
    if cmd.flags.shell_completion:
        return  # its key=value arguments are the completion's own (install=bash)
    if cmd.shows:
        steps = cmd.steps() or []
        if len(steps) > 1 or cmd.sweeps("step"):
            raise ConfigError(f"{task} shows one config: name one step and one value per key")
        compose_overrides(*([f"+step={steps[0]}"] if steps else []), *cmd.app_lines("step"))
        return
    step = one_step(cmd, task)
    compose(step, *cmd.app_lines("step"))
    check_writable(run_dir_of(step, [*cmd.app_lines("step"), *cmd.hydra]))


def hydra_main(task_fn: Callable, task: str, argv: Optional[Sequence[str]] = None) -> None:
    """Check the command line as roadmap.compose does (one line for any bad input), then
    hand it to Hydra, which sets up the run directory and calls task_fn(cfg, run_dir), or
    answers --help, --cfg, --info and --shell-completion itself."""
    argv = list(sys.argv[1:] if argv is None else argv)
    with one_line_errors():
        check(read(argv, "+step=resnet or seed=1"), task)
    code = launch(task_fn, argv, task)
    if code:
        sys.exit(code)


def launch(task_fn: Callable, argv: Sequence[str], task: str) -> int:
    """Run Hydra on `argv` as the app `task`; the task function's exit code (0 in multirun)."""
    from hydra.core.hydra_config import HydraConfig

    codes: List[int] = []

    def job(cfg) -> None:
        codes.append(task_fn(cfg, Path(HydraConfig.get().runtime.output_dir)) or 0)

    hydra_app(job, argv, task)
    return codes[-1] if codes else 0


# ----------------------------------------------------------------------------- Hydra's private parts

# Everything below leans on Hydra beyond its documented API, and nothing else in roadmap
# does: checked against hydra-core 1.3.8 (pinned >=1.3,<1.4). tests/test_cli.py checks each
# assumption on the installed release and fails naming the one a release broke.
HYDRA_CHECKED = "1.3.8"


def hydra_flags(argv: Sequence[str], refuse: Callable[[str], NoReturn]) -> argparse.Namespace:
    """`argv` read by hydra.main's own argument parser (hydra._internal.utils.get_args_parser:
    every flag Hydra takes, and the overrides); `refuse` gets argparse's message where it
    would print the usage and exit."""
    from hydra._internal.utils import get_args_parser

    parser = get_args_parser()
    parser.error = refuse  # type: ignore[method-assign]
    return parser.parse_args(list(argv))


def hydra_app(job: Callable[[Any], None], argv: Sequence[str], task: str) -> None:
    """hydra.main on `argv` (it reads only sys.argv) as the app roadmap.<task> (it names the
    job, and --help's usage, after the task function's module)."""
    import hydra

    job.__module__ = f"roadmap.{task}"
    sys.argv = [sys.argv[0], *argv]
    hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")(job)()
