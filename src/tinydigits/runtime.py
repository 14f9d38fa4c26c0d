"""Where and how to run: device choice and CPU thread count; what the machine and a
process use (load average, peak memory); which code ran (package version, git commit)."""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from .errors import ConfigError

UNKNOWN = "unknown"


def cache_dir() -> Path:
    """``<user cache dir>/tinydigits``: ``$XDG_CACHE_HOME`` if set (and absolute), else ``~/.cache``."""
    cache = os.environ.get("XDG_CACHE_HOME")
    # XDG says a relative XDG_CACHE_HOME is invalid and must be ignored.
    base = Path(cache) if cache and os.path.isabs(cache) else Path.home() / ".cache"
    return base / "tinydigits"


def select_device(name: str | None = None) -> torch.device:
    """``name`` if given ("cpu", "cuda", "cuda:1"), else CUDA when present, else the CPU."""
    if name:
        try:
            device = torch.device(name)
        except RuntimeError:
            raise ConfigError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} asked for, but CUDA is not available here")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def env_threads() -> int | None:
    """$TINYDIGITS_THREADS as a number of threads, or None when it is not set."""
    value = os.environ.get("TINYDIGITS_THREADS", "").strip()
    if not value:
        return None
    if not value.isdecimal() or int(value) < 1:
        raise ConfigError(f"TINYDIGITS_THREADS must be a whole number of at least 1, got {value!r}")
    return int(value)


def usable_cores() -> int:
    """The CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity call (macOS, Windows)
        cores = os.cpu_count() or 1
    try:  # cgroup v2 (containers): "max 100000" or "<quota> <period>" in microseconds
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def _own_running_threads() -> int:
    """This process's threads the kernel counts as runnable now (at least the one reading)."""
    running = 0
    try:
        for task in Path("/proc/self/task").iterdir():
            try:  # "pid (name) S ...": the state follows the name, which may hold spaces
                running += (task / "stat").read_text().rpartition(")")[2].split()[0] == "R"
            except (OSError, IndexError):
                continue
    except OSError:
        return 1
    return max(1, running)


def _machine_running_tasks() -> int | None:
    """The tasks the kernel counts as runnable machine-wide (4th field of /proc/loadavg), or
    None where the system does not tell."""
    try:
        return int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None


def busy_cores(samples: int = 3, interval: float = 0.01) -> int:
    """How many of this process's usable CPUs other work keeps busy now: the tasks the kernel
    counts as runnable (the 4th field of /proc/loadavg, machine-wide) less this process's own,
    at the lowest of ``samples`` readings ``interval`` seconds apart (a busy process is runnable
    in all, a blip in one), scaled to the usable share of the machine when an affinity mask or
    a container limits this process to fewer CPUs. 0 where the system does not tell."""
    lowest = None
    for n in range(samples):
        if n:
            time.sleep(interval)
        running = _machine_running_tasks()
        if running is None:
            return 0
        others = running - _own_running_threads()
        lowest = others if lowest is None else min(lowest, others)
    busy = max(0, lowest or 0)
    machine = os.cpu_count() or 1
    usable = usable_cores()
    return busy if usable >= machine else math.ceil(busy * usable / machine)


def default_threads() -> int:
    """The intra-op threads to use when none are asked for: the usable cores that other work
    leaves free, at least 1. On a 2-core machine with one other busy process, 2 threads made a
    Medium epoch about 5x slower than 1 (each parallel step waits for the thread that lost its
    core), hence not simply the core count."""
    return max(1, usable_cores() - busy_cores())


def resolve_threads(threads: int | None = None) -> int:
    """``threads``, else $TINYDIGITS_THREADS, else :func:`default_threads`."""
    if threads is None:
        threads = env_threads()
    if threads is None:
        return default_threads()
    if threads < 1:
        raise ConfigError(f"threads must be at least 1, got {threads}")
    return threads


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads to :func:`resolve_threads` and return the number.

    torch's own default is the core count, which collapses when other processes compete for
    the cores. (OpenMP's wait policy is left alone: OMP_WAIT_POLICY=PASSIVE made a Medium epoch
    40% slower on a quiet machine and no faster on a busy one at the same thread count.)"""
    threads = resolve_threads(threads)
    torch.set_num_threads(threads)
    return threads


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed blocks of up to 32 MiB for reuse rather than hand each back
    to the kernel; True where it took effect (Linux with glibc).

    Its default threshold adapts only to the blocks a process happens to free: a full-data
    Medium run, distilling from the wide teachers with no validation pass to free a large
    block, kept mapping and unmapping the teachers' activations, ~19,000 page faults a step,
    and an epoch took twice as long as the same run with a validation split (AMD EPYC, 1
    thread). Fixed thresholds end that, for the rest of the process: it keeps up to 1 GiB of
    freed memory instead of returning it (docs/BENCHMARKS.md's training peaks rose 78-118 MiB
    with it)."""
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    import ctypes

    libc = ctypes.CDLL(None)
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    # A fixed mmap threshold also stops the adapting; 32 MiB is glibc's largest on 64-bit.
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))


def peak_rss_kib(pid: int | str = "self") -> int | None:
    """The peak resident memory of process ``pid`` (default: this one) in KiB, or None where
    it cannot be told.

    Read from ``VmHWM`` in ``/proc/<pid>/status``, which exec resets. Where there is no
    /proc, this process's own figure comes from ``ru_maxrss`` (not used first: on Linux it
    keeps the parent's peak across fork + exec, so a child would report its parent's).
    """
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        return None  # a /proc without the field (a kernel thread, a zombie)
    except (OSError, ValueError, IndexError):
        pass
    if pid not in ("self", os.getpid()):
        return None
    try:
        import resource  # POSIX only
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, but bytes on macOS
    return peak // 1024 if sys.platform == "darwin" else peak


def load_average() -> tuple[float, float, float] | None:
    """The machine's 1, 5 and 15 minute load averages, or None where the system does not tell."""
    try:
        one, five, fifteen = os.getloadavg()
    except (AttributeError, OSError):  # no getloadavg (Windows), or it cannot be read
        return None
    return one, five, fifteen


def cpu_name() -> str:
    """The CPU's model name, as figures name the machine they were measured on."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def package_version() -> str:
    """The installed tinydigits version, or "unknown" when it is run from a bare source tree."""
    try:
        return importlib.metadata.version("tinydigits")
    except importlib.metadata.PackageNotFoundError:
        return UNKNOWN


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The git commit of the checkout this package runs from, with ``-dirty`` when the package's
    own files differ from it; "unknown" outside a checkout or without git."""
    package_dir = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(package_dir), *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()

    try:
        git("ls-files", "--error-unmatch", "__init__.py")  # these files, not an enclosing repository's
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".")
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN
    return f"{commit}-dirty" if dirty else commit


def provenance() -> dict[str, str]:
    """Which code produced a result, recorded beside it like a paper's code hash."""
    return {"package_version": package_version(), "git_commit": git_commit()}
