"""The models table: every figure in it is read or computed, never typed.

Parameters, receptive field and MACs come from the models themselves, file size and the
shipped weights' accuracy from the package's weights, and the seed statistics from the
committed ``results/*.json``. The README's table is this module's output; a test keeps
the two equal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..analysis import summarize
from ..errors import TinyDigitsError
from ..markdown import GeneratedBlock, markdown_table
from ..models import MODELS, READERS, build_model, count_parameters
from ..recipes import DEFAULT_RECIPES, REFERENCE_RECIPES, Recipe
from ..weights import PRETRAINED_DIR, get_weights, shipped_models
from . import DEFAULT_SEEDS
from .commands import tinydigits_line
from .reproduce import RESULTS_DIR, load_results

README_BLOCK = GeneratedBlock("models-table", "tinydigits table")
README_START, README_END = README_BLOCK.start, README_BLOCK.end
ABLATION_BLOCK = GeneratedBlock("ablation-table", "tinydigits table --ablation")
READERS_BLOCK = GeneratedBlock("readers-table", "tinydigits table --readers")
# Each experiment is a `tinydigits reproduce ... --results-dir results/ablation/<name>`;
# "baseline" holds the recipe the others change.
ABLATION_DIR = "ablation"

COLUMNS = (
    "Model", "Parameters", "Weights file", "Test acc. (shipped weights)",
    "Ours: final epoch, mean ± std", "Ours, trained on all 60k", "Reference recipe, same harness",
    "Reference, published",
    "Conv blocks", "Max RF", "MACs", "Weights", "Reproduce",
)


def _seed_cell(results: dict | None) -> str:
    if not results:
        return "not run"
    summary = results["test_accuracy"]
    seeds = results["seeds"]
    return f"{summary['mean']:.2f} ± {summary['std']:.2f}% ({seeds} seed{'' if seeds == 1 else 's'})"


def models_table(results_root: str | Path = RESULTS_DIR) -> str:
    """The Markdown models table."""
    rows = []
    shipped = shipped_models("digit")
    for name, spec in MODELS.items():
        summary = summarize(build_model(name), name)
        weights = get_weights(name) if name in shipped else None  # a model lands before its weights
        ours = load_results(name, "default", results_root)
        full = load_results(name, "full", results_root)
        reference = load_results(name, "reference", results_root)
        seeds = ours["seeds"] if ours else DEFAULT_SEEDS
        cells = [
            spec.title,
            f"{summary.total_parameters:,}",
            f"{weights.file_bytes:,} B ({weights.file_bytes / 1024:.1f} KB)" if weights else "not shipped",
            f"{weights.test_accuracy:.2f}% (seed {weights.meta.seed})" if weights else "not shipped",
            _seed_cell(ours),
            _seed_cell(full),
            _seed_cell(reference) if name in REFERENCE_RECIPES else "— (ours)",
            f"{spec.reference_accuracy:.2f}% (best epoch on test)" if spec.reference_accuracy else "— (ours)",
            str(spec.conv_blocks),
            f"{summary.max_receptive_field} px",
            f"{summary.total_macs:,}",
            f"`src/tinydigits/{PRETRAINED_DIR.name}/{weights.path.name}`" if weights else "not shipped",
            f"`{tinydigits_line('reproduce', {'model': name, 'seeds': seeds})}` (all 60k: `--recipe full`)",
        ]
        rows.append(cells)
    return "\n".join(markdown_table(COLUMNS, rows)) + "\n"


def readme_table(readme_text: str) -> str:
    """The generated table as it stands in the README, between the markers."""
    return README_BLOCK.read(readme_text)


def update_readme(path: str | Path, table: str) -> bool:
    """Replace the README's table with ``table``; True when the file changed."""
    return README_BLOCK.update(path, table)


def _validation_cell(results: dict[str, Any] | None) -> str:
    if not results:
        return "not run"
    summary = results["val_accuracy"]
    if summary is None:
        return "no validation split"
    if results["seeds"] == 1:
        return f"{summary['mean']:.2f} (1)"  # one run has no spread to show
    return f"{summary['mean']:.2f} ± {summary['std']:.2f} ({results['seeds']})"


def _changes(recipe: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    # Through Recipe: a field added since a file was written reads as its default there.
    recipe, baseline = Recipe.from_dict(recipe).to_dict(), Recipe.from_dict(baseline).to_dict()
    return {key: value for key, value in recipe.items() if key != "seed" and baseline[key] != value}


def _shown(value: Any) -> str:
    if value == "":
        return "(none)"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def ablation_table(results_root: str | Path = RESULTS_DIR) -> str:
    """Validation accuracy (mean ± std over seeds, final epoch) of each experiment under
    ``results/ablation/``, per model, and the models whose default recipe kept its change.
    The test set decides nothing here, so it is not shown."""
    root = Path(results_root) / ABLATION_DIR
    names = sorted(path.name for path in root.iterdir() if path.is_dir()) if root.is_dir() else []
    rows = []
    for experiment in sorted(names, key=lambda name: name != "baseline"):
        change = "the recipe before this study" if experiment == "baseline" else "(no baseline to compare)"
        kept, cells = [], []
        for name, spec in MODELS.items():
            results = load_results(name, "default", root / experiment)
            baseline = load_results(name, "default", root / "baseline")
            cells.append(_validation_cell(results))
            if experiment == "baseline" or not results or not baseline:
                continue
            changes = _changes(results["recipe"], baseline["recipe"])
            before = Recipe.from_dict(baseline["recipe"]).to_dict()
            change = ", ".join(f"{key} {_shown(before[key])} → {_shown(value)}"
                               for key, value in changes.items())
            # Kept: the model's default recipe is the baseline with exactly these changes.
            if changes and _changes(DEFAULT_RECIPES[name].to_dict(), baseline["recipe"]) == changes:
                kept.append(spec.title)
        rows.append([f"`{experiment}`", change, *cells, ", ".join(kept) or "—"])
    header = ["Experiment", "Recipe change", *(f"{s.title} val. %" for s in MODELS.values()), "Kept for"]
    return "\n".join(markdown_table(header, rows, left=2)) + "\n"


def _exact_cell(results: dict[str, Any] | None, kind: str, metric: str = "exact") -> str:
    if not results or "test_sets" not in results:
        return "not run"
    summary = results["test_sets"][kind][metric]
    return f"{summary['mean']:.2f} ± {summary['std']:.2f}%"


READER_SEEDS = 3  # a reader's seed takes about 30 minutes on 2 cores


def readers_table(results_root: str | Path = RESULTS_DIR) -> str:
    """The number readers' sizes and final-epoch figures on the frozen test sets (mean ± std
    over the seeds of results/<reader>.json), and the shipped file's."""
    rows = []
    for name, spec in READERS.items():
        results = load_results(name, "default", results_root)
        try:
            weights = get_weights(name)
            shipped = (f"{weights.meta.test_metrics['separate']['exact']:.2f}% / "
                       f"{weights.meta.test_metrics['touching']['exact']:.2f}% (seed {weights.meta.seed})")
        except TinyDigitsError:
            shipped = "not shipped"
        seeds = results["seeds"] if results else READER_SEEDS
        rows.append([spec.title, f"{count_parameters(build_model(name)):,}", _exact_cell(results, "separate"),
                     _exact_cell(results, "touching"), _exact_cell(results, "touching", "right_count"),
                     _exact_cell(results, "touching", "cer"),
                     f"{results['seeds']}" if results else "0", shipped,
                     f"`{tinydigits_line('reproduce', {'model': name, 'seeds': seeds})}`"])
    header = ["Reader", "Parameters", "Separate: exact", "Touching: exact", "Touching: right count",
              "Touching: CER", "Seeds", "Shipped file (separate / touching exact)", "Reproduce"]
    return "\n".join(markdown_table(header, rows)) + "\n"
