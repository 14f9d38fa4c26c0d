"""The models table is computed, and the README shows exactly what `tinydigits table` prints."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from tinydigits.cli import main
from tinydigits.lab.reproduce import load_results
from tinydigits.lab.table import (
    ABLATION_BLOCK,
    README_END,
    README_START,
    ablation_table,
    models_table,
    readme_table,
    update_readme,
)
from tinydigits.models import MODELS
from tinydigits.weights import get_weights, shipped_models

ROOT = Path(__file__).resolve().parents[1]


def test_readme_table_is_the_table_command_output():
    result = CliRunner().invoke(main, ["table", "--results-dir", str(ROOT / "results")])
    assert result.exit_code == 0, result.output
    assert readme_table((ROOT / "README.md").read_text()) == result.output, (
        "README table is stale: run `tinydigits table --update-readme README.md`")


def test_table_rows_carry_the_measured_figures():
    table = models_table(ROOT / "results")
    rows = table.splitlines()[2:]
    assert len(rows) == len(MODELS)
    for row, (name, spec) in zip(rows, MODELS.items(), strict=True):
        if name not in shipped_models():  # registered, not trained yet
            assert row.startswith(f"| {spec.title} | {spec.parameters:,} | not shipped | not shipped |")
            continue
        weights = get_weights(name)
        ours = load_results(name, root=ROOT / "results")
        reference = load_results(name, "reference", root=ROOT / "results")
        assert row.startswith(f"| {spec.title} | {spec.parameters:,} | {weights.file_bytes:,} B")
        assert f"{weights.test_accuracy:.2f}% (seed {weights.meta.seed})" in row
        assert f"{ours['test_accuracy']['mean']:.2f} ± {ours['test_accuracy']['std']:.2f}% (5 seeds)" in row
        if spec.reference_accuracy is not None:  # the reference project's models
            assert f"{reference['test_accuracy']['mean']:.2f}" in row and reference["seeds"] >= 3
        assert f"tinydigits reproduce --model {name} --seeds 5" in row


def test_update_readme_replaces_only_the_marked_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nbefore\n{README_START}\nold table\n{README_END}\nafter\n")
    assert update_readme(readme, "| new |\n") is True
    assert readme.read_text() == f"# Title\n\nbefore\n{README_START}\n| new |\n{README_END}\nafter\n"
    assert update_readme(readme, "| new |\n") is False


def test_readme_without_markers_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no models-table markers"):
        readme_table("# no table here\n")


def test_readme_ablation_table_is_the_command_output():
    result = CliRunner().invoke(main, ["table", "--ablation", "--results-dir", str(ROOT / "results")])
    assert result.exit_code == 0, result.output
    assert ABLATION_BLOCK.read((ROOT / "README.md").read_text()) == result.output, (
        "README ablation table is stale: run `tinydigits table --ablation --update-readme README.md`")


def test_ablation_rows_are_computed_from_the_result_files(tmp_path):
    import json

    root = tmp_path / "ablation"
    base = load_results("medium", root=ROOT / "results" / "ablation" / "baseline")
    experiments = [("baseline", {}, [99.0, 99.2]), ("longer", {"epochs": 99}, [99.4, 99.6])]
    for experiment, changes, vals in experiments:
        (root / experiment).mkdir(parents=True)
        runs = [{"seed": i, "val_accuracy": v, "test_accuracy": 0.0} for i, v in enumerate(vals)]
        results = {**base, "recipe": {**base["recipe"], **changes}, "runs": runs, "seeds": len(runs),
                   "val_accuracy": {"mean": sum(vals) / 2, "std": 0.1414, "min": min(vals), "max": max(vals)}}
        (root / experiment / "medium.json").write_text(json.dumps(results))
    rows = ablation_table(tmp_path).splitlines()[2:]
    assert rows[0].startswith("| `baseline` | the recipe before this study | 99.10 ± 0.14 (2) | not run")
    others = " | ".join(["not run"] * (len(MODELS) - 1))
    assert rows[1] == f"| `longer` | epochs 15 → 99 | 99.50 ± 0.14 (2) | {others} | — |"


def test_readme_readers_table_is_the_command_output():
    from tinydigits.lab.table import READERS_BLOCK, readers_table

    result = CliRunner().invoke(main, ["table", "--readers", "--results-dir", str(ROOT / "results")])
    assert result.exit_code == 0, result.output
    stale = "README readers table is stale: run `tinydigits table --readers --update-readme README.md`"
    assert READERS_BLOCK.read((ROOT / "README.md").read_text()) == result.output, stale
    assert result.output == readers_table(ROOT / "results")
    assert CliRunner().invoke(main, ["table", "--readers", "--ablation"]).exit_code == 2
