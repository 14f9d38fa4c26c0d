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


@pytest.mark.skipif(not os.path.exists("/proc/loadavg"), reason="no /proc/loadavg: busy cores are not told")
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
    for bad in ("two", "\u00b2", "0"):  # "²" is a digit to str.isdigit, not a number
        monkeypatch.setenv("TINYDIGITS_THREADS", bad)
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


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="no /proc: threads are not told")
def test_this_processs_own_busy_threads_are_counted_as_its_own():
    """A thread of ours busy in torch (it runs outside the GIL, as a server's workers or an
    OpenMP pool do) is runnable too; counted as other work, it would halve our own threads.
    (Compared with the machine-wide count this would race other processes; the own count
    does not.)"""
    import threading

    from tinydigits.runtime import _own_running_threads

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    stop = threading.Event()

    def work() -> None:
        x, w = torch.randn(64, 8, 28, 28), torch.randn(8, 8, 3, 3)
        while not stop.is_set():
            torch.conv2d(x, w, padding=1)

    # Other threads of ours (a pytest worker's, say) may run too: the fewest before against the
    # most while the worker runs (it waits on the GIL now and then, hence several readings).
    idle = min(_own_running_threads() for _ in range(50))
    worker = threading.Thread(target=work)
    worker.start()
    try:
        time.sleep(0.2)
        assert max(_own_running_threads() for _ in range(50)) >= idle + 1
    finally:
        stop.set()
        worker.join()
        torch.set_num_threads(before)


def test_busy_cores_is_the_machines_runnable_tasks_less_our_own(monkeypatch):
    import tinydigits.runtime as runtime

    monkeypatch.setattr(runtime, "_machine_running_tasks", lambda: 5)
    monkeypatch.setattr(runtime, "_own_running_threads", lambda: 5)
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(runtime, "usable_cores", lambda: 8)
    assert busy_cores() == 0
    monkeypatch.setattr(runtime, "_own_running_threads", lambda: 3)
    assert busy_cores() == 2
    monkeypatch.setattr(runtime, "usable_cores", lambda: 2)  # a quarter of the machine: its share
    assert busy_cores() == 1  # ceil(2 * 2 / 8)
    monkeypatch.setattr(runtime, "_own_running_threads", lambda: 9)
    assert busy_cores() == 0  # never below none
    monkeypatch.setattr(runtime, "_machine_running_tasks", lambda: None)
    assert busy_cores() == 0  # the system does not tell
