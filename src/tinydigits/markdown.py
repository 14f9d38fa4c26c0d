"""The one Markdown table writer, for every table the package prints or writes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]],
                   left: int | None = None) -> list[str]:
    """A Markdown table as lines. The first ``left`` columns are left-aligned and the rest
    right-aligned (numbers); with ``left=None`` every column is left-aligned."""
    width = len(header)
    left = width if left is None else left
    align = ["---" if index < left else "---:" for index in range(width)]
    lines = [f"| {' | '.join(str(cell) for cell in cells)} |" for cells in (header, *rows)]
    return [lines[0], f"|{'|'.join(align)}|", *lines[1:]]
