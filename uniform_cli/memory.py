"""Peak memory of this process, the one way generation, training and the benchmarks measure it."""

from __future__ import annotations

import resource
import sys

import torch


def reset_peak_memory(device: torch.device | str) -> None:
    """Start a new CUDA peak on `device`; nothing on the CPU (a process's peak resident set cannot be reset)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device | str) -> tuple[int, str]:
    """(bytes, kind): the peak CUDA allocation on `device` since the last reset ("cuda_allocated"), or on the
    CPU the process's peak resident set since it started ("cpu_peak_rss")."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda_allocated"
    # Linux's ru_maxrss carries the parent's resident set across fork + exec (a process started by a 2 GB
    # Python reports at least 2 GB); VmHWM is this process image's own peak.
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024, "cpu_peak_rss"
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux, bytes on macOS
    return rss * (1 if sys.platform == "darwin" else 1024), "cpu_peak_rss"
