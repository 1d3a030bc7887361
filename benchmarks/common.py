"""What the benchmark scripts share: the machine's description and where results go."""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from stylekit.models import available_cores

RESULTS = Path(__file__).with_name("RESULTS.md")
NO_GPU = "No CUDA GPU on this machine: the SD 1.5 measurements were not run."


def cpu_name() -> str:
    """The CPU as lscpu names it, with its family/model and widest vector unit (timings differ between machines of one name)."""
    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or platform.machine()
    flags = fields.get("flags", "").split()
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return (
        f"{fields.get('model name', platform.machine())} (family {fields.get('cpu family', '?')} model {fields.get('model', '?')}, "
        f"{vector}), {available_cores()} cores"
    )


def machine() -> str:
    return f"{cpu_name()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def publish(lines: list[str]) -> None:
    """Print a result section and append it to RESULTS.md."""
    text = "\n".join(lines)
    print(text)
    with RESULTS.open("a") as handle:
        handle.write(text + "\n")
