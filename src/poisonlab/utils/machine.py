"""What machine a run ran on: CPU model, cores, threads, library versions (for reports and docs)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def describe(processes: int, threads: int) -> dict[str, Any]:
    """The run's machine: CPU, cores, ``processes`` x ``threads`` per process, torch and open_clip."""
    import open_clip
    import torch

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "processes": processes, "threads": threads,
            "torch": torch.__version__, "open_clip": open_clip.__version__,
            "accelerator": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"}


def one_line(machine: dict[str, Any]) -> str:
    """``'2-core AMD EPYC, 2 processes x 1 thread, torch 2.14.1'``."""
    threads = machine["threads"]
    procs = machine["processes"]
    return (f"{machine['cores']}-core {machine['cpu']}, {procs} process{'es' if procs != 1 else ''} x "
            f"{threads} thread{'s' if threads != 1 else ''}, torch {machine['torch']}"
            + (f", {machine['accelerator']}" if machine.get("accelerator", "none") != "none" else ""))
