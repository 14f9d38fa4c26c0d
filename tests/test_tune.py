"""Optuna tuning: validation-only scoring, and several workers sharing one SQLite study."""

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from tinydigits.cli import main
from tinydigits.lab.tune import SEARCHED_FIELDS, recipe_command, redact
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
    # A trial trained on a subset: the command trains on the same one.
    assert recipe_command("small", recipe, 1200) == (
        "tinydigits train --model small --lr 0.123456 --no-nesterov --batch-size 64 --subset 1200")


def test_tune_exports_the_study_trials_best_first(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    command = ["tune", "--model", "ultrasmall", "--trials", "2", "--storage", storage, "--epochs", "1",
               "--subset", "1200", "--val-size", "200", "--threads", "1",
               "--export", "trials/ultrasmall.json"]
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 0, result.output
    assert "wrote trials/ultrasmall.json" in result.output
    document = json.loads((tmp_path / "trials" / "ultrasmall.json").read_text())
    study = optuna.load_study(study_name="tinydigits-ultrasmall", storage=storage)
    assert document["study"] == "tinydigits-ultrasmall" and document["direction"] == "maximize"
    assert storage not in json.dumps(document)
    # The worker that created the study ran the default recipe first.
    default = get_recipe("ultrasmall")
    assert study.trials[0].params == {name: getattr(default, name) for name in SEARCHED_FIELDS}
    assert set(study.trials[1].params) == set(SEARCHED_FIELDS)
    values = [trial["val_accuracy"] for trial in document["trials"]]
    assert sorted(values, reverse=True) == values == sorted((t.value for t in study.trials), reverse=True)
    for trial in document["trials"]:
        assert trial["state"] == "complete" and trial["seconds"] > 0
        assert trial["params"] == study.trials[trial["number"]].params
        # The command trains that trial's recipe again.
        assert trial["command"].startswith("tinydigits train --model ultrasmall ")
        assert "--epochs 1 " in trial["command"] and "--val-size 200" in trial["command"]
        searched_lr = trial["params"]["lr"] != default.lr
        assert (f"--lr {trial['params']['lr']} " in trial["command"]) == searched_lr
        assert trial["command"].endswith(" --subset 1200")


    # --trials 0 runs nothing and exports the same study again, e.g. from another machine.
    again = CliRunner().invoke(main, [*command[:4], "0", *command[5:-1], "again.json"])
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "again.json").read_text()) == document
    assert len(optuna.load_study(study_name="tinydigits-ultrasmall", storage=storage).trials) == 2

    # The best trial's command trains what the trial trained: the same validation accuracy.
    best = document["trials"][0]
    assert f"train it with: {best['command']}" in result.output
    rerun = CliRunner().invoke(main, [*shlex.split(best["command"])[1:], "--threads", "1", "--no-progress",
                                      "--run-dir", "rerun"])
    assert rerun.exit_code == 0, rerun.output
    history = [json.loads(line) for line in (tmp_path / "rerun" / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["val_accuracy"] == best["val_accuracy"]


def test_tune_export_of_a_missing_study_is_a_one_line_error(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    result = CliRunner().invoke(main, ["tune", "--model", "ultrasmall", "--trials", "0", "--storage", storage,
                                       "--study-name", "nosuch", "--export", str(tmp_path / "t.json")])
    assert result.exit_code == 1
    assert result.output == (f"Error: no study 'nosuch' in {storage!r}; give --study-name, "
                             "or run some trials first\n")
    assert not (tmp_path / "t.json").exists()


def test_tune_export_to_a_folder_is_refused(tmp_path):
    result = CliRunner().invoke(main, ["tune", "--model", "ultrasmall", "--export", str(tmp_path)])
    assert result.exit_code == 2
    assert "is a directory" in result.output


def test_storage_passwords_are_never_printed(tmp_path):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for url in (f"postgresql+psycopg://tuner:secret@127.0.0.1:{port}/optuna",
                f"postgresql://tuner:secret@127.0.0.1:{port}/optuna"):
        for trials in ("1", "0"):  # creating the study, and only reading it to --export it
            result = CliRunner().invoke(main, ["tune", "--model", "ultrasmall", "--trials", trials,
                                               "--storage", url, "--export", str(tmp_path / "t.json")])
            assert result.exit_code == 1, result.output
            assert "secret" not in result.output
            shown = url.replace("secret", "***")
            assert result.output.startswith(f"Error: cannot open Optuna storage {shown!r}: "), result.output
            assert len(result.output.strip().splitlines()) == 1
    # The password runs to the last @ (a stray @ in it, or a /, hides the rest too).
    assert redact("postgresql://u:p@ss/w@db.example:5432/x?sslmode=require") == (
        "postgresql://u:***@db.example:5432/x?sslmode=require")
    assert redact("postgresql://u@db/x") == "postgresql://u@db/x"  # no password: as it was
    assert redact("sqlite:///runs/tune/small.db") == "sqlite:///runs/tune/small.db"


def test_bad_storage_url_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(main, ["tune", "--model", "ultrasmall", "--trials", "1",
                                       "--storage", "nosuchdb://x"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot open Optuna storage 'nosuchdb://x'")
    assert len(result.output.strip().splitlines()) == 1


# ------------------------------------------------------------------ PostgreSQL


def _postgres_programs() -> Path | None:
    """The folder of initdb and pg_ctl: Debian keeps them per version under /usr/lib/postgresql."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@pytest.fixture(scope="module")
def postgres_url():
    """A throw-away PostgreSQL cluster listening on a Unix socket in a fresh folder (no TCP port,
    so nothing to clash with), run as the postgres user when the tests run as root."""
    programs = _postgres_programs()
    if programs is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed; scripts/setup.sh installs it")
        pytest.skip("PostgreSQL is not installed (scripts/setup.sh installs it)")
    pytest.importorskip("psycopg")
    folder = Path(tempfile.mkdtemp(prefix="tinydigits-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(folder, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]

    def run(*command: str) -> None:
        subprocess.run([*as_user, *command], check=True, capture_output=True, text=True, timeout=120)

    data_dir = folder / "data"
    run(str(programs / "initdb"), "-D", str(data_dir), "-A", "trust", "-U", "postgres", "--no-sync",
        "-E", "UTF8", "--locale=C")
    options = f"-c listen_addresses='' -c unix_socket_directories='{folder}' -c fsync=off"
    pg_ctl = str(programs / "pg_ctl")
    run(pg_ctl, "-D", str(data_dir), "-o", options, "-l", str(folder / "log"), "-w", "start")
    try:
        run(str(programs / "createdb"), "-h", str(folder), "-U", "postgres", "tinydigits")
        # +psycopg: the psycopg 3 driver (the [postgres] extra), whichever SQLAlchemy's default is.
        yield f"postgresql+psycopg://postgres@/tinydigits?host={folder}"
    finally:
        run(pg_ctl, "-D", str(data_dir), "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def test_two_tune_workers_share_one_postgresql_study(postgres_url, tmp_path):
    # The first worker a user starts creates the study; here the test does, so the two don't race to.
    optuna.create_study(study_name="shared", storage=postgres_url, direction="maximize")
    command = [sys.executable, "-m", "tinydigits", "tune", "--model", "ultrasmall", "--trials", "2",
               "--storage", postgres_url, "--study-name", "shared", "--epochs", "1", "--subset", "1200",
               "--val-size", "200", "--threads", "1"]
    for i in range(2):
        (tmp_path / f"w{i}").mkdir()
    workers = [subprocess.Popen(command, cwd=tmp_path / f"w{i}", stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = [worker.communicate(timeout=600)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    trials = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]  # four distinct trials, none run twice
    assert len({t.params["lr"] for t in trials}) == 4 and all(0 < t.value <= 100 for t in trials)
    # Each worker ran two of them, in run directories of its own.
    assert sorted(len(list((tmp_path / f"w{i}" / "runs" / "tune").iterdir())) for i in range(2)) == [2, 2]
    # Each reports the best trial finished when it stopped. The worker that ran the study's best
    # trial stopped after it, so the best report is the study's best trial.
    pattern = r"best of \d+ trials: #(\d+), validation accuracy ([\d.]+)%"
    reported = [re.search(pattern, out) for out in outputs]
    assert all(reported), outputs
    values = {t.number: t.value for t in trials}
    for match in reported:
        assert float(match.group(2)) == pytest.approx(values[int(match.group(1))], abs=0.005)
    best = max(reported, key=lambda m: float(m.group(2)))
    assert float(best.group(2)) == pytest.approx(study.best_value, abs=0.005)
    assert "train it with: tinydigits train --model ultrasmall" in outputs[0] + outputs[1]
