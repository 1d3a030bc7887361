"""Running trainings as processes: ``stylekit train`` commands side by side, with a progress bar each.

The course's later notebooks, ``compare`` and ``evaluate`` start trainings here
without importing the trainer: each training is its own ``stylekit train``
process, and its progress is read from the bar it prints on stderr.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .adapters import DIFFUSERS_WEIGHTS
from .checkpoints import CHECKPOINT
from .data import DEMO_STAMP, ensure_demo_sets
from .models import available_cores, pick_device, tiny_model_dir
from .paths import profile_dir
from .profiles import get_profile
from .progress import progress_bar

__all__ = ["ensure_trained", "run_trainings", "trainings_at_once"]

STEPS_DONE = re.compile(r"training [^:]*:.*?(\d+)/(\d+) \[")  # a trainer's bar on stderr: "training lora:  45%|...| 134/300 ["


def _follow(command: list[str], name: str, steps_done: dict[str, int], total: int, env: dict[str, str]) -> tuple[int, str]:
    """Run ``command``, noting in ``steps_done[name]`` that it started and then the steps its own progress bar reports;
    returns the exit code and its last messages."""
    steps_done[name] = 0
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    tail = ""
    while chunk := os.read(process.stderr.fileno(), 4096):
        tail = (tail + chunk.decode(errors="replace"))[-2000:]
        steps = STEPS_DONE.findall(tail)
        if steps and steps[-1][1] == str(total):
            steps_done[name] = int(steps[-1][0])
    return process.wait(), tail


def run_trainings(commands: dict[str, list[str]], total: int, at_once: int = 1, progress: bool = True) -> None:
    """Run ``stylekit train`` commands (name -> command line of ``total`` steps each), ``at_once`` at a time, each in its
    own process; a bar per training appears when it starts. The bars are drawn here, in the caller's thread (a notebook
    takes output from there), from the steps each process reports. Raises if a training failed, with its last messages.
    Side by side on a CPU, each process gets its share of the cores as ``OMP_NUM_THREADS`` (unless the user set it): its
    caching and loading then do not spin against the other's training."""
    steps_done: dict[str, int] = {}  # name -> steps, from the moment its process starts
    bars = {}
    env = dict(os.environ)
    if at_once > 1 and pick_device().type == "cpu":
        env.setdefault("OMP_NUM_THREADS", str(max(1, available_cores() // at_once)))
    with ThreadPoolExecutor(at_once) as pool:
        runs = {name: pool.submit(_follow, command, name, steps_done, total, env) for name, command in commands.items()}
        while len(bars) < len(commands) or any(not bar.disable for bar in bars.values()):
            for name in [n for n in commands if n in steps_done]:
                if name not in bars:
                    bars[name] = progress_bar(total=total, desc=f"training {name}", disable=not progress)
                bars[name].update(steps_done[name] - bars[name].n)
                if runs[name].done():
                    bars[name].close()  # its time stops here, not when the last training ends
            time.sleep(0.5)
    for name, run in runs.items():
        returncode, messages = run.result()
        if returncode != 0:
            raise RuntimeError(f"training {name} failed:\n{messages}")


def trainings_at_once(profile: str) -> int:
    """How many trainings of ``profile`` fit side by side: on a CPU, its cores over the threads each one takes (two of the
    tiny model's one-thread trainings on 2 cores); on a GPU one, which a training fills."""
    threads = int(os.environ.get("OMP_NUM_THREADS") or get_profile(profile).train.cpu_threads)
    if pick_device().type != "cpu" or threads < 1:
        return 1
    return max(1, available_cores() // threads)


def ensure_trained(styles: list[str], profile: str = "tiny", seed: int = 0) -> dict[str, Path]:
    """Make sure each demo style has a trained adapter (building its dataset and training it if needed).

    Lets any later notebook run on its own. An adapter older than its demo set, or than the shipped tiny base it was
    trained on, is trained again (as ``make`` would). Missing styles train in their own processes, side by side where the CPU
    allows (:func:`trainings_at_once`). Returns style -> adapter folder.
    """
    datasets = ensure_demo_sets(styles, profile, seed)
    folders = {style: profile_dir(profile) / "loras" / style for style in styles}
    missing = [style for style in styles if _outdated(folders[style] / DIFFUSERS_WEIGHTS, datasets[style] / DEMO_STAMP, profile)]
    for style in missing:
        start_over(folders[style])
    command = [sys.executable, "-m", "stylekit", "train", "--profile", profile, "--seed", str(seed)]
    commands = {style: [*command, str(datasets[style]), "--name", style] for style in missing}
    run_trainings(commands, get_profile(profile).train.steps, trainings_at_once(profile))
    return folders


def start_over(run_dir: Path) -> None:
    """Forget an outdated adapter's run: its weights and the finished checkpoint they came from (a finished run of the same
    settings and data but an older base would otherwise be taken as done). A run without weights is an interrupted one
    and keeps its checkpoint, so it resumes."""
    weights = run_dir / DIFFUSERS_WEIGHTS
    if weights.exists():
        (run_dir / CHECKPOINT).unlink(missing_ok=True)
        weights.unlink()


def _outdated(weights: Path, dataset_stamp: Path, profile: str) -> bool:
    """Whether ``weights`` are missing or older than what they were trained from (the demo set; the tiny base)."""
    if not weights.exists():
        return True
    inputs = [dataset_stamp] + ([tiny_model_dir() / "unet" / "diffusion_pytorch_model.safetensors"] if profile == "tiny" else [])
    return any(path.exists() and path.stat().st_mtime > weights.stat().st_mtime for path in inputs)
