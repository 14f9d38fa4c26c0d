"""Threads on a shared machine: the default leaves the cores other work keeps busy, idle
OpenMP threads sleep, and an explicit choice always wins."""

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


IDLE_GAPS = """
import time, torch
torch.set_num_threads(2)
x, w = torch.randn(2, 16, 28, 28), torch.randn(16, 16, 3, 3)
torch.conv2d(x, w, padding=1)
start, cpu = time.perf_counter(), time.process_time()
for _ in range(100):  # a little parallel work, then a pause (as a server or a data loader has)
    torch.conv2d(x, w, padding=1)
    time.sleep(0.003)
print(round((time.process_time() - cpu) / (time.perf_counter() - start), 3))
"""


@pytest.mark.parametrize("preset", [None, "ACTIVE"])
def test_importing_tinydigits_makes_idle_openmp_threads_sleep(preset):
    """OMP_WAIT_POLICY is set before torch loads OpenMP, and a user's own value is kept. With it,
    torch's idle worker threads take no CPU in the pauses between parallel steps; spinning,
    they kept a core busy throughout (CPU time ~ wall time here)."""
    env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    if preset:
        env["OMP_WAIT_POLICY"] = preset
    code = "import tinydigits, os, sys; print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True).stdout.split()
    assert out == [preset or "PASSIVE", "True"]
    if preset is None:
        busy_fraction = float(subprocess.run([sys.executable, "-c", "import tinydigits\n" + IDLE_GAPS],
                                             capture_output=True, text=True, env=env, check=True).stdout)
        assert busy_fraction < 0.5
