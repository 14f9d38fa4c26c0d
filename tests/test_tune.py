"""Optuna tuning: validation-only scoring, and several workers sharing one SQLite study."""

import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

from tinydigits.cli import main
from tinydigits.lab.tune import recipe_command
from tinydigits.recipes import get_recipe

optuna = pytest.importorskip("optuna")

# Each worker trains on a slice of the real data so that a trial takes seconds.
WORKER = textwrap.dedent("""
    import sys
    from tinydigits import data
    from tinydigits.lab.tune import tune
    full = data.load_mnist()
    mnist = data.MNIST(full.train_images[:1000], full.train_labels[:1000],
                       full.test_images[:10], full.test_labels[:10])
    tune("ultrasmall", 2, storage=sys.argv[1], study_name="shared", epochs=1, mnist=mnist,
         runs_root=sys.argv[2], threads=1, val_size=200)
""")


def test_two_workers_share_one_sqlite_study(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    # Create the study first, as a user's first worker would, so the two don't race to.
    optuna.create_study(study_name="shared", storage=storage, direction="maximize")
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, storage, str(tmp_path / f"runs{i}")],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for i in range(2)]
    outputs = [worker.communicate(timeout=600)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    study = optuna.load_study(study_name="shared", storage=storage)
    trials = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    for trial in trials:
        assert 0 < trial.value <= 100
        assert set(trial.params) >= {"lr", "weight_decay", "batch_size", "rotation"}
        assert trial.user_attrs["recipe"]["lr"] == trial.params["lr"]
    # Each worker ran two trials, in its own run directories.
    assert sorted(len(list((tmp_path / f"runs{i}").iterdir())) for i in range(2)) == [2, 2]
    # The test set is never evaluated while tuning.
    assert not list(tmp_path.glob("runs*/*/test.json"))


def test_recipe_command_lists_only_the_changed_fields():
    recipe = get_recipe("small").replace(lr=0.123456, nesterov=False, batch_size=64).to_dict()
    assert recipe_command("small", recipe) == (
        "tinydigits train --model small --lr 0.123456 --no-nesterov --batch-size 64")


def test_bad_storage_url_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(main, ["tune", "--model", "ultrasmall", "--trials", "1",
                                       "--storage", "nosuchdb://x"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot open Optuna storage 'nosuchdb://x'")
    assert len(result.output.strip().splitlines()) == 1
