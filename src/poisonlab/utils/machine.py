"""What machine a run ran on: CPU model, cores, threads, library versions (for reports and docs)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from poisonlab.errors import InputError


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo`` (empty where there is none)."""
    out: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            out[key.strip()] = value.strip()
    except OSError:
        pass
    return out


def cpu_model() -> str:
    """The CPU's model name with its family and the widest vector units the float kernels may use
    (``AMD EPYC, family 26, AVX-512``): CPUs of one name differ in these, and so do their numbers."""
    info = _cpuinfo()
    name = info.get("model name") or platform.processor() or platform.machine() or "unknown CPU"
    flags = set(info.get("flags", "").split())
    isa = next((label for flag, label in (("amx_tile", "AMX"), ("avx512f", "AVX-512"), ("avx2", "AVX2"))
                if flag in flags), None)
    family = info.get("cpu family")
    return ", ".join(x for x in (name, f"family {family}" if family else None, isa) if x)


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


def check_fits(need: int, what: str) -> None:
    """``InputError`` when ``need`` bytes (``what``: the sentence's subject, e.g. "--n 10^9 images of
    32x32 pixels") would take more than half of this machine's memory: checked before allocating."""
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > have // 2:
        raise InputError(f"{what} need {need / 2**30:.1f} GiB, more than half of this machine's {have / 2**30:.1f} GiB")
