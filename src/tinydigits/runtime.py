"""Where and how to run: device choice and CPU thread count; what the machine and a
process use (load average, peak memory)."""

from __future__ import annotations

import os
import sys

import torch


def select_device(name: str | None = None) -> torch.device:
    """``name`` if given ("cpu", "cuda", "cuda:1"), else CUDA when present, else the CPU."""
    if name:
        try:
            device = torch.device(name)
        except RuntimeError:
            raise ValueError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but CUDA is not available here")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads: ``threads``, else $TINYDIGITS_THREADS, else torch's default.

    On a quiet 2-core machine 2 threads are fastest; when other processes compete
    for the cores, 1 thread avoids spinning, hence the knob.
    """
    if threads is None and os.environ.get("TINYDIGITS_THREADS"):
        threads = int(os.environ["TINYDIGITS_THREADS"])
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
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
