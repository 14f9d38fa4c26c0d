"""Where and how to run: device choice and CPU thread count."""

from __future__ import annotations

import os

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
