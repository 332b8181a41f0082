"""The errors of every stage, the range checks of numeric config fields, and `Choice`,
the enum base of every option list.

This module sits at the bottom of the import graph: every stage raises these, and the
command line turns each into one line, `error: <message>`, and exit code 2. A message is
one line that names the problem and the fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any, Mapping


class Choice(str, Enum):
    """An option of a config field: compares equal to its value, and reads as its value in
    messages and interpolations (`${data.source}_smoke` is fashion_mnist_smoke)."""

    def __str__(self) -> str:
        return str(self.value)


class RoadmapError(Exception):
    """Any error of ours: the message is one line naming the problem and the fix."""


class ConfigError(RoadmapError, ValueError):
    """A bad config or argument."""


class DataError(RoadmapError, RuntimeError):
    """A dataset that cannot be read; the message says how to get it."""


class RunDirError(RoadmapError, RuntimeError):
    """A run directory that cannot be used as asked; the message says why and what to do."""


class ResultsError(RoadmapError, ValueError):
    """A path that holds no study, run directory or results."""


class WeightImportError(RoadmapError, ValueError):
    """A state dict that does not fit the model; the message names the tensors."""


@dataclass(frozen=True)
class Range:
    """Where a numeric field's values may lie; every value must also be finite."""

    lo: float = -math.inf
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False
    integer: bool = False
    text: str = ""
    """How the error message says it, e.g. 'in [0, 1)'."""

    def holds(self, x: Any) -> bool:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
            return False
        if self.integer and not float(x).is_integer():
            return False
        above = x > self.lo if self.lo_open else x >= self.lo
        below = x < self.hi if self.hi_open else x <= self.hi
        return above and below


POSITIVE = Range(0, lo_open=True, text="it must be a positive number")
POSITIVE_INT = Range(1, integer=True, text="it must be a positive integer")
NON_NEGATIVE = Range(0, text="it must be 0 or more")
NON_NEGATIVE_INT = Range(0, integer=True, text="it must be a whole number, 0 or more")
FRACTION = Range(0, 1, text="it must be in [0, 1]")
HALF_OPEN = Range(0, 1, hi_open=True, text="it must be in [0, 1)")
FINITE = Range(text="it must be a finite number")


def check_ranges(obj: Any, section: str, ranges: Mapping[str, Range]) -> None:
    """ConfigError for the first field of `obj` (or entry of a list field) outside its range."""
    for name, allowed in ranges.items():
        value = getattr(obj, name)
        listed = isinstance(value, (list, tuple))
        if not all(allowed.holds(x) for x in (value if listed else [value])):
            shown = list(value) if listed else value
            key = f"{section}.{name}" if section else name
            raise ConfigError(f"{key}={shown} is not valid: {allowed.text}{' (each entry)' if listed else ''}")
