"""The one renderer of Markdown tables: every table the project writes (the study tables,
the benchmark's, the analyses') goes through `markdown_lines`."""

from __future__ import annotations

from typing import Iterable, List, Sequence


def markdown_lines(header: Sequence[str], rows: Iterable[Sequence[str]]) -> List[str]:
    """A Markdown table's lines, every cell as given (formatted by the caller) and unpadded,
    so that a table's bytes follow from its values alone and diff line by line."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]
