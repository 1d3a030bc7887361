"""Training speed: one style at the tiny defaults against another commit, and the trainer against a plain loop.

    python benchmarks/train_speed.py                    # tiny profile on this machine
    python benchmarks/train_speed.py --against a7143a0  # also the same training by that commit's code, side by side
    python benchmarks/train_speed.py --repeats 5        # more runs of each (median reported; default 3)
    python benchmarks/train_speed.py --steps 60         # longer plain-loop comparison, steadier figures

One style's adapter at the tiny profile's defaults (its steps, batch, rank...),
as ``stylekit train`` runs it, caching and checkpoints included; with
``--against REV`` the code of commit REV (its own defaults) trains the same
demo set in the same way, the two taking turns on this machine (``--repeats`` each; medians compared).

Both variants train the same LoRA on the same demo dataset with the same
settings. The plain loop runs the VAE encoder and the text encoder on every
batch, the way the diffusers example script trains; the stylekit trainer uses
its cached latents and embeddings. Each variant runs in its own process so its
peak memory is its own. With a CUDA GPU the script also measures the SD 1.5
architecture (random weights, 512 px) at batch 1 and 4, with and without
gradient checkpointing.

Prints a table and appends it to ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
from common import NO_GPU, machine, publish


def _peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def run_stylekit(dataset: str, steps: int, batch: int) -> dict:
    """The stylekit trainer (cached latents and embeddings; caching time included)."""
    from stylekit.train import TrainConfig, train_adapter

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        result = train_adapter(
            TrainConfig(name="bench", dataset=dataset, steps=steps, batch_size=batch, checkpoint_every=10**9, output_dir=out),
            progress=False,
        )
        total = time.perf_counter() - start
    return {"images_per_second": steps * batch / result.seconds, "seconds_with_setup": total, "peak_mb": _peak_memory_mb()}


def run_tiny_defaults(dataset: str) -> dict:
    """One style's adapter at the tiny profile's defaults, the way ``stylekit train`` runs it (caching included)."""
    from stylekit.profiles import get_profile
    from stylekit.train import TrainConfig, train_adapter

    defaults = get_profile("tiny").train
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        result = train_adapter(TrainConfig(name="bench", dataset=dataset, output_dir=out), progress=False)
        total = time.perf_counter() - start
    return {"steps": defaults.steps, "batch": defaults.batch_size, "train_seconds": result.seconds, "seconds_with_setup": total}


def run_plain(dataset: str, steps: int, batch: int) -> dict:
    """A plain loop: VAE and text encoder on every batch, then the UNet."""
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    from stylekit.adapters import AdapterSpec, attach_adapter, trainable_parameters
    from stylekit.data import prepare_dataset
    from stylekit.models import load_pipeline
    from stylekit.profiles import get_profile

    profile = get_profile("tiny")
    pipe = load_pipeline("tiny")
    data = prepare_dataset(dataset, profile.resolution, trigger="anime")
    attach_adapter(pipe.unet, pipe.text_encoder, AdapterSpec(rank=profile.train.rank, alpha=profile.train.alpha, conv=profile.train.conv))
    params = trainable_parameters(pipe.unet)
    optimizer = torch.optim.AdamW(params, lr=profile.train.learning_rate)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    generator = torch.Generator().manual_seed(0)
    pipe.unet.train()
    start = time.perf_counter()
    for _ in range(steps):
        picks = torch.randint(len(data), (batch,), generator=generator).tolist()
        items = [data[i] for i in picks]
        pixels = torch.stack([item["pixels"] for item in items])
        ids = pipe.tokenizer(
            [item["caption"] for item in items],
            padding="max_length",
            max_length=pipe.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        with torch.no_grad():
            latents = pipe.vae.encode(pixels).latent_dist.sample(generator) * pipe.vae.config.scaling_factor
            states = pipe.text_encoder(ids).last_hidden_state
        noise = torch.randn(latents.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=generator)
        loss = F.mse_loss(pipe.unet(scheduler.add_noise(latents, noise, t), t, encoder_hidden_states=states).sample, noise)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    seconds = time.perf_counter() - start
    return {"images_per_second": steps * batch / seconds, "seconds_with_setup": seconds, "peak_mb": _peak_memory_mb()}


def run_sd15_gpu(batch: int, checkpointing: bool, steps: int = 10) -> dict:
    """SD 1.5's UNet architecture with random weights at 512 px (64 x 64 latents), LoRA rank 16, fp16 base."""
    import torch.nn.functional as F
    from diffusers import UNet2DConditionModel

    from stylekit.adapters import AdapterSpec

    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768).to("cuda", torch.float16)
    unet.requires_grad_(False)
    unet.add_adapter(AdapterSpec(rank=16, alpha=16).unet_config())
    params = [p for p in unet.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    if checkpointing:
        unet.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    latents = torch.randn(batch, 4, 64, 64, device="cuda")
    states = torch.randn(batch, 77, 768, device="cuda", dtype=torch.float16)
    torch.cuda.reset_peak_memory_stats()
    for step in range(steps + 2):
        if step == 2:
            torch.cuda.synchronize()
            start = time.perf_counter()
        t = torch.randint(0, 1000, (batch,), device="cuda")
        with torch.autocast("cuda", dtype=torch.float16):
            loss = F.mse_loss(unet(latents, t, encoder_hidden_states=states).sample.float(), latents)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    torch.cuda.synchronize()
    return {"images_per_second": steps * batch / (time.perf_counter() - start), "peak_mb": torch.cuda.max_memory_allocated() / 2**20}


def _in_subprocess(function: str, source: Path | None = None, **kwargs) -> dict:
    """``function(**kwargs)`` in a fresh process (its own memory peak, its own cache folder), importing stylekit from
    ``source`` when given (another commit's tree), else from the installed package."""
    paths = [str(Path(__file__).parent)] + ([str(source)] if source else [])
    code = f"import json, sys; sys.path[:0] = {paths!r}; import train_speed; print(json.dumps(train_speed.{function}(**{kwargs!r})))"
    with tempfile.TemporaryDirectory() as outputs:
        env = {**os.environ, "STYLEKIT_OUTPUTS": outputs}
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def _commit_tree(revision: str, folder: Path) -> Path:
    """The files of ``revision`` of this repository, written under ``folder``."""
    repo = Path(__file__).resolve().parent.parent
    archive = subprocess.run(["git", "-C", str(repo), "archive", revision], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def _commit_name(revision: str) -> str:
    repo = Path(__file__).resolve().parent.parent
    return subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short", revision], check=True, capture_output=True, text=True
    ).stdout.strip()


def defaults_lines(dataset: str, against: str | None, repeats: int) -> list[str]:
    """The table of one style at the tiny defaults: this code, and ``against``'s code when given, ``repeats`` times each,
    taking turns (a slow moment of a shared machine then hits both); the median of each is compared."""
    with tempfile.TemporaryDirectory() as tree:
        sources = {"this code (working tree)": None}
        if against:
            sources[f"commit {_commit_name(against)}"] = _commit_tree(against, Path(tree))
        runs = {name: [] for name in sources}
        for _ in range(repeats):
            for name, source in sources.items():
                runs[name].append(_in_subprocess("run_tiny_defaults", source, dataset=dataset))
    lines = [
        f"### One style at the tiny defaults ({date.today()}, {machine()})",
        "",
        f"The watercolor demo set (400 pairs, 64 px); each run in its own process, {repeats} run(s) of each taking turns; median, with all runs.",
        "",
        "| code | steps x batch | training (s) | with loading and caching (s) |",
        "| --- | --- | --- | --- |",
    ]
    medians = {}
    for name, found in runs.items():
        train, total = (sorted(r[key] for r in found) for key in ("train_seconds", "seconds_with_setup"))
        medians[name] = (statistics.median(train), statistics.median(total))
        every = ", ".join(f"{t:.1f}" for t in total)
        lines.append(f"| {name} | {found[0]['steps']} x {found[0]['batch']} | {medians[name][0]:.1f} | {medians[name][1]:.1f} ({every}) |")
    if against:
        (new_train, new_total), (old_train, old_total) = medians.values()
        lines += [
            "",
            f"This code trains a style **{old_train / new_train:.1f}x** faster, **{old_total / new_total:.1f}x** with loading and caching.",
        ]
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--against", metavar="REV", help="also train with the code of this commit, side by side")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each code at the tiny defaults (median reported)")
    args = parser.parse_args()

    from stylekit.data import build_demo_sets
    from stylekit.profiles import get_profile

    with tempfile.TemporaryDirectory() as tmp:
        demo = str(build_demo_sets(Path(tmp) / "demo", ["watercolor"], resolution=64)["watercolor"])
        publish(defaults_lines(demo, args.against, args.repeats))
        dataset = str(build_demo_sets(tmp, ["anime"], count=32)["anime"])
        plain = _in_subprocess("run_plain", dataset=dataset, steps=args.steps, batch=args.batch)
        cached = _in_subprocess("run_stylekit", dataset=dataset, steps=args.steps, batch=args.batch)
    tiny = get_profile("tiny").train
    lines = [
        f"### Training speed, tiny profile ({date.today()}, {machine()})",
        "",
        f"The tiny profile's LoRA (rank {tiny.rank}{', convolutions too' if tiny.conv else ''}), batch {args.batch}, "
        f"{args.steps} steps, 32 anime images at 64 px.",
        "",
        "| trainer | images / s | peak memory (MB, process RSS) |",
        "| --- | --- | --- |",
        f"| plain loop (VAE + text encoder every step) | {plain['images_per_second']:.1f} | {plain['peak_mb']:.0f} |",
        f"| stylekit (cached latents and embeddings) | {cached['images_per_second']:.1f} | {cached['peak_mb']:.0f} |",
        "",
        f"Speed-up: **{cached['images_per_second'] / plain['images_per_second']:.2f}x** "
        f"(stylekit's one-off caching and set-up included: {cached['seconds_with_setup']:.1f} s in all).",
        "",
    ]
    if torch.cuda.is_available():
        lines += [
            f"### SD 1.5 architecture on {torch.cuda.get_device_name()} (random weights, 512 px, LoRA rank 16, fp16 autocast)",
            "",
            "| batch | gradient checkpointing | images / s | peak GPU memory (MB) |",
            "| --- | --- | --- | --- |",
        ]
        for batch in (1, 4):
            for checkpointing in (False, True):
                r = _in_subprocess("run_sd15_gpu", batch=batch, checkpointing=checkpointing)
                lines.append(f"| {batch} | {'on' if checkpointing else 'off'} | {r['images_per_second']:.2f} | {r['peak_mb']:.0f} |")
        lines.append("")
    else:
        lines += [NO_GPU, ""]
    publish(lines)


if __name__ == "__main__":
    main()
