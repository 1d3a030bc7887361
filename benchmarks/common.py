"""What the benchmark scripts share: the machine's description and where results go."""

from __future__ import annotations

from pathlib import Path

import torch

RESULTS = Path(__file__).with_name("RESULTS.md")
NO_GPU = "No CUDA GPU on this machine: the SD 1.5 measurements were not run."


def machine() -> str:
    from stylekit.models import cpu_name  # here, not at import: the workers of --against import another commit's stylekit

    kernels = torch.backends.cpu.get_cpu_capability()  # lower than the CPU's widest unit where ATEN_CPU_CAPABILITY limits it
    return f"{cpu_name()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, {kernels} kernels"


def publish(lines: list[str]) -> None:
    """Print a result section and append it to RESULTS.md."""
    text = "\n".join(lines)
    print(text)
    with RESULTS.open("a") as handle:
        handle.write(text + "\n")
