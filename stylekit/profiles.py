"""Named model profiles: which base model, at which resolution, with which defaults.

A notebook or command picks a profile by name (``profile="tiny"``); switching
from the embedded CPU model to real Stable Diffusion weights is changing that
one name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["PROFILES", "InferenceDefaults", "Profile", "TrainDefaults", "get_profile"]


@dataclass(frozen=True)
class TrainDefaults:
    """Adapter-training settings that suit a profile."""

    steps: int = 400  # optimizer steps per style
    batch_size: int = 4  # images per step, before gradient accumulation
    gradient_accumulation: int = 1  # micro-batches summed before each optimizer step
    learning_rate: float = 1e-4  # AdamW learning rate after warmup
    rank: int = 8  # LoRA rank: the size of the low-rank update
    alpha: float = 8.0  # LoRA alpha: the update is scaled by alpha / rank
    conv: bool = False  # also adapt the convolutions (needed where a style repaints more than attention can)
    mixed_precision: str = "no"  # "no", "fp16", "bf16", or "auto": bf16 where the GPU computes it natively (8.0+), else fp16
    gradient_checkpointing: bool = False  # trade compute for memory on big UNets
    # free GPU memory (GB, after loading the model) that training without checkpointing needs; below it, checkpointing
    # turns on by itself (0: never)
    checkpointing_below_gb: float = 0.0
    cpu_threads: int = 0  # torch threads per training process on a CPU (0: the process's share of the cores)
    unpaired_share: float = 0.0  # of a paired dataset, the share of items that learn the styled image itself (text-to-image)
    buckets: bool = False  # keep each image's aspect ratio (kohya's aspect-ratio buckets) instead of a centre-cropped square


@dataclass(frozen=True)
class InferenceDefaults:
    """Stylization settings that suit a profile."""

    steps: int = 20  # denoising steps of the full schedule (img2img runs the last part)
    guidance: float = 5.0  # classifier-free guidance scale
    style_strength: float = 1.0  # multiplier of the style adapter
    content_strength: float = 0.5  # 1 keeps the photo unchanged; img2img at 0 ignores it
    method: str = "img2img"  # how the photo is carried into the result: "img2img" or "inversion" (see stylize.METHODS)


@dataclass(frozen=True)
class Profile:
    """A base model and the settings that go with it."""

    name: str
    base_model: str  # hub id, local folder, or "embedded" for the shipped tiny model
    resolution: int  # training and generation size in pixels (square)
    description: str
    pipeline: str = "sd"  # "sd" (Stable Diffusion 1.x/2.x layout) or "sdxl"
    train: TrainDefaults = field(default_factory=TrainDefaults)
    inference: InferenceDefaults = field(default_factory=InferenceDefaults)


PROFILES: dict[str, Profile] = {
    "tiny": Profile(
        name="tiny",
        base_model="embedded",
        resolution=64,
        description="the embedded tiny Stable Diffusion: CPU, offline, minutes end to end",
        # conv: paired sets need the convolutions to repaint a photo; one thread: the tiny UNet's layers are too small to
        # split across cores; unpaired_share 0.5: what text-to-image needs; 6e-3: benchmarks/adapter_recipe.py on the base of
        # issue 33. Measurements behind each value: docs/tiny_recipe.md
        train=TrainDefaults(steps=225, batch_size=8, learning_rate=6e-3, rank=16, alpha=16.0, conv=True, cpu_threads=1, unpaired_share=0.5),
        # inversion at content 0.5: chosen by benchmarks/stylize_methods.py (docs/tiny_recipe.md)
        inference=InferenceDefaults(steps=20, guidance=3.0, content_strength=0.5, method="inversion"),
    ),
    "sd15": Profile(
        name="sd15",
        base_model="stable-diffusion-v1-5/stable-diffusion-v1-5",
        resolution=512,
        description="Stable Diffusion 1.5 at 512 px: a GPU with 8 GB or more (16 GB Colab T4 for training)",
        # 500 steps x batch 4 = 2,000 images per style, as common kohya recipes show a style (e.g. 20 images x 10 repeats x 10
        # epochs). Batch 4 without checkpointing peaked at 8.6 GB on SD 1.5's shapes (H200, fp16; benchmarks/RESULTS.md) and ran
        # 7x faster than batch 1 x accumulation 4 with checkpointing; a card with less than 8 GB free turns checkpointing on.
        # buckets: real style sets are mostly not square; kohya buckets them rather than cut their edges off.
        # unpaired_share 0.5 matters only for paired sets (photo -> styled, as the demo sets are; an ordinary style set is
        # unpaired and learns the styled images whatever this says). All-paired training never shows the UNet a noised
        # styled image, so the trigger word cannot steer text-to-image, which starts from noise: on the tiny model such
        # adapters drew blank or black pictures, at 0.5 they gained text-to-image and kept the photo-to-style change. Not
        # measured on SD 1.5 or SDXL weights (no model hub here): the same reasoning holds for any base that starts from noise.
        train=TrainDefaults(
            steps=500,
            batch_size=4,
            gradient_accumulation=1,
            learning_rate=1e-4,
            rank=16,
            alpha=16.0,
            mixed_precision="auto",
            gradient_checkpointing=False,
            checkpointing_below_gb=8.0,
            unpaired_share=0.5,
            buckets=True,
        ),
        inference=InferenceDefaults(steps=30, guidance=7.0),
    ),
    "sdxl": Profile(
        name="sdxl",
        base_model="stabilityai/stable-diffusion-xl-base-1.0",
        resolution=1024,
        description="Stable Diffusion XL base at 1024 px: a GPU with 24 GB or more for training",
        pipeline="sdxl",
        # 500 steps x 1 x accumulation 4 = 2,000 images per style; checkpointing always on (not yet measured on a GPU);
        # buckets and unpaired_share as for sd15, for the same reasons
        train=TrainDefaults(
            steps=500,
            batch_size=1,
            gradient_accumulation=4,
            learning_rate=1e-4,
            rank=16,
            alpha=16.0,
            mixed_precision="auto",
            gradient_checkpointing=True,
            unpaired_share=0.5,
            buckets=True,
        ),
        inference=InferenceDefaults(steps=30, guidance=6.0),
    ),
}


def get_profile(name: str) -> Profile:
    """The profile called ``name``; a clear error lists the known ones."""
    try:
        return PROFILES[name]
    except KeyError:
        raise KeyError(f"unknown profile {name!r}: choose one of {', '.join(PROFILES)}, or pass a hub id or a local model path") from None
