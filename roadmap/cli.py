"""Command-line plumbing shared by the entry points: Hydra-style overrides in,
one clear line and exit code 2 out for any bad input."""

from __future__ import annotations

import sys
from typing import Callable, List, Optional, Sequence, Tuple

from roadmap.config import ConfigError, expand_steps


def split_steps(argv: Sequence[str]) -> Tuple[Optional[List[str]], List[str]]:
    """Take `+step=a,b` / `+step=all` out of the overrides: (steps or None, the rest)."""
    steps, rest = None, []
    for arg in argv:
        if arg.startswith(("+step=", "step=")):
            steps = expand_steps(arg.split("=", 1)[1])
        else:
            rest.append(arg)
    return steps, rest


def run(main: Callable[[List[str]], int], usage: str, argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(usage.strip())
        sys.exit(0)
    bad = [a for a in argv if "=" not in a]
    try:
        if bad:
            raise ConfigError(f"'{bad[0]}' is not an override: write key=value, e.g. regime=r50 or +step=all")
        code = main(argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code)
