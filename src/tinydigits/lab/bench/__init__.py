"""``tinydigits bench``: training and inference speed on this machine, as docs/BENCHMARKS.md.

:mod:`.measure` takes the figures, :mod:`.report` writes them, :mod:`.child` measures peak
memory in a fresh process.
"""

from .measure import run_benchmark
from .report import render_markdown, write_report

__all__ = ["render_markdown", "run_benchmark", "write_report"]
