"""Where and how to run: device choice and CPU thread count; what the machine and a
process use (load average, peak memory); which code ran (package version, git commit)."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import subprocess
import sys
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
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"TINYDIGITS_THREADS must be a whole number of at least 1, got {value!r}")
    return int(value)


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads: ``threads``, else $TINYDIGITS_THREADS, else torch's default.

    On a quiet 2-core machine 2 threads are fastest; when other processes compete
    for the cores, 1 thread avoids spinning, hence the knob.
    """
    if threads is None:
        threads = env_threads()
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


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
