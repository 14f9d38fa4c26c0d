"""The models table: every figure in it is read or computed, never typed.

Parameters, receptive field and MACs come from the models themselves, file size and the
shipped weights' accuracy from the package's weights, and the seed statistics from the
committed ``results/*.json``. The README's table is this module's output; a test keeps
the two equal.
"""

from __future__ import annotations

from pathlib import Path

from ..analysis import summarize
from ..markdown import GeneratedBlock, markdown_table
from ..models import MODELS, build_model
from ..weights import PRETRAINED_DIR, get_weights
from . import DEFAULT_SEEDS
from .commands import tinydigits_line
from .reproduce import RESULTS_DIR, load_results

README_BLOCK = GeneratedBlock("models-table", "tinydigits table")
README_START, README_END = README_BLOCK.start, README_BLOCK.end

COLUMNS = (
    "Model", "Parameters", "Weights file", "Test acc. (shipped weights)",
    "Ours: final epoch, mean ± std", "Reference recipe, same harness", "Reference, published",
    "Conv blocks", "Max RF", "MACs", "Weights", "Reproduce",
)


def _seed_cell(results: dict | None) -> str:
    if not results:
        return "not run"
    summary = results["test_accuracy"]
    return f"{summary['mean']:.2f} ± {summary['std']:.2f}% ({results['seeds']} seeds)"


def models_table(results_root: str | Path = RESULTS_DIR) -> str:
    """The Markdown models table."""
    rows = []
    for name, spec in MODELS.items():
        summary = summarize(build_model(name), name)
        weights = get_weights(name)
        ours = load_results(name, "default", results_root)
        reference = load_results(name, "reference", results_root)
        seeds = ours["seeds"] if ours else DEFAULT_SEEDS
        cells = [
            spec.title,
            f"{summary.total_parameters:,}",
            f"{weights.file_bytes:,} B ({weights.file_bytes / 1024:.1f} KB)",
            f"{weights.test_accuracy:.2f}% (seed {weights.meta.seed})",
            _seed_cell(ours),
            _seed_cell(reference),
            f"{spec.reference_accuracy:.2f}% (best epoch on test)",
            str(spec.conv_blocks),
            f"{summary.max_receptive_field} px",
            f"{summary.total_macs:,}",
            f"`src/tinydigits/{PRETRAINED_DIR.name}/{weights.path.name}`",
            f"`{tinydigits_line('reproduce', {'model': name, 'seeds': seeds})}`",
        ]
        rows.append(cells)
    return "\n".join(markdown_table(COLUMNS, rows)) + "\n"


def readme_table(readme_text: str) -> str:
    """The generated table as it stands in the README, between the markers."""
    return README_BLOCK.read(readme_text)


def update_readme(path: str | Path, table: str) -> bool:
    """Replace the README's table with ``table``; True when the file changed."""
    return README_BLOCK.update(path, table)
