"""Threads on a shared machine: the default leaves the cores other work keeps busy, a resumed
run keeps its thread count, and an explicit choice always wins."""

import os
import subprocess
import sys
import time

import pytest
import torch

from tinydigits.errors import ConfigError
from tinydigits.runtime import busy_cores, default_threads, resolve_threads, set_threads, usable_cores

SPIN = "import time\nend = time.monotonic() + 60\nwhile time.monotonic() < end: pass\n"


@pytest.fixture
def busy_process():
    """Another process keeping one core busy (a 1-thread job beside ours), for at most a minute."""
    spinner = subprocess.Popen([sys.executable, "-c", SPIN])
    time.sleep(0.3)  # running, not starting up
    yield spinner
    spinner.kill()
    spinner.wait()


def test_a_busy_process_is_counted_and_left_its_core(busy_process):
    assert busy_cores() >= 1
    assert 1 <= default_threads() <= max(1, usable_cores() - 1)


def test_an_explicit_count_or_the_environment_wins(monkeypatch, busy_process):
    monkeypatch.setenv("TINYDIGITS_THREADS", "3")
    assert resolve_threads() == 3
    assert resolve_threads(2) == 2
    monkeypatch.delenv("TINYDIGITS_THREADS")
    assert 1 <= resolve_threads() <= max(1, usable_cores() - 1)
    before = torch.get_num_threads()
    try:
        assert set_threads(2) == 2 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    monkeypatch.setenv("TINYDIGITS_THREADS", "two")
    with pytest.raises(ConfigError, match="TINYDIGITS_THREADS"):
        resolve_threads()
    with pytest.raises(ConfigError, match="at least 1"):
        resolve_threads(0)


def test_usable_cores_follow_the_affinity_mask():
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no CPU affinity on this system")
    code = ("import os; from tinydigits.runtime import usable_cores; "
            "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); print(usable_cores())")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "1"


def test_a_resumed_run_keeps_the_thread_count_it_recorded(tmp_path):
    from tinydigits.train import _recorded_threads

    (tmp_path / "config.json").write_text('{"threads": 1}')
    assert _recorded_threads(tmp_path) == 1
    (tmp_path / "config.json").write_text("not json")
    assert _recorded_threads(tmp_path) is None
    assert _recorded_threads(tmp_path / "missing") is None
