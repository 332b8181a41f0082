"""The one renderer of Markdown tables: every table the project writes or prints (the study
tables, the benchmark's, the analyses', inspect's) goes through `markdown_lines`."""

from __future__ import annotations

import re
from typing import Iterable, List, Sequence

NUMBER = re.compile(r"[+-]?\d[\d,]*(\.\d+)?(e[+-]?\d+)?%?")  # a cell that reads as a number: right-aligned


def markdown_lines(header: Sequence[str], rows: Iterable[Sequence[str]], aligned: bool = False) -> List[str]:
    """A Markdown table's lines, every cell as given (formatted by the caller). Files get
    unpadded cells, so that a table's bytes follow from its values alone and diff line by
    line; `aligned` pads each column to its widest cell (numbers to the right) for a terminal."""
    rows = [list(r) for r in rows]
    if not aligned:
        return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                *("| " + " | ".join(r) + " |" for r in rows)]
    widths = [max(len(c) for c in column) for column in zip(header, *rows)]

    def pad(cells: Sequence[str]) -> str:
        padded = (c.rjust(w) if NUMBER.fullmatch(c) else c.ljust(w) for c, w in zip(cells, widths))
        return "| " + " | ".join(padded) + " |"

    return [pad(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *(pad(r) for r in rows)]
