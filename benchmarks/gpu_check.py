"""The GPU path on Stable Diffusion 1.5's shapes (random weights, no download): correct, and how fast.

    python benchmarks/gpu_check.py                 # on a CUDA GPU: SD 1.5 shapes at 512 px, a few minutes
    python benchmarks/gpu_check.py --scale mini    # anywhere (CPU too): a shrunken model, to check the script

1. Every adapter kind, in fp16 and bf16 (fp32 on a CPU): trains a few steps with stylekit's
   trainer, is saved, reloads into a fresh pipeline with every tensor on the pipeline's device
   and dtype, and stylizes; the table shows the largest difference between the in-memory and
   the reloaded adapter's image.
2. Training speed: stylekit's trainer against a plain loop that encodes every batch (what
   diffusers' LoRA example does), at the sd15 profile's defaults (batch 4, no checkpointing), and at the old ones (batch 1 x accumulation 4, checkpointing).
3. Stylization: seconds per image with two adapters loaded against plain diffusers img2img.
4. The layout tests (``tests/test_layouts.py``: SD 1.5 and SDXL layouts, every kind trained,
   reloaded in stylekit and diffusers and stylized by both methods, kohya names, accumulation,
   two precisions, v-prediction) run on this device, where training picks it and its precision.

Prints a table and appends it to ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import date
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import machine, publish

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
SHAPES = {  # UNet, autoencoder and text-encoder sizes; sd15 is Stable Diffusion 1.5's
    "sd15": {"unet": {"sample_size": 64, "cross_attention_dim": 768}, "vae": (128, 256, 512, 512), "vae_layers": 2, "text": (768, 12)},
    "mini": {
        "unet": {
            "sample_size": 8,
            "cross_attention_dim": 64,
            "block_out_channels": (32, 64, 64, 64),
            "layers_per_block": 1,
            "attention_head_dim": 4,
        },
        "vae": (32, 32, 32, 32),
        "vae_layers": 1,
        "text": (64, 2),
    },
}


def build_model(folder: Path, scale: str) -> None:
    """A random-weight Stable Diffusion pipeline with the chosen shapes, saved as a diffusers folder."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from stylekit.tiny.pretrain import build_tokenizer

    torch.manual_seed(0)
    shapes = SHAPES[scale]
    tokenizer = build_tokenizer(["anime style, a photo of a cat", "watercolor style, a house by a lake"], 600, 77)
    width, layers = shapes["text"]
    text = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=width * 4,
        num_hidden_layers=layers,
        num_attention_heads=max(4, width // 64),
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=shapes["vae"],
        layers_per_block=shapes["vae_layers"],
        norm_num_groups=32 if scale == "sd15" else 16,
    )
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1)
    pipe = StableDiffusionPipeline(
        vae=vae,
        unet=UNet2DConditionModel(**shapes["unet"]),
        text_encoder=CLIPTextModel(text),
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)


def _config(model: Path, dataset: Path, out: Path, name: str, **changes):
    from stylekit.train import TrainConfig

    settings = {"profile": "sd15", "model": str(model), "checkpoint_every": 10**9, "output_dir": str(out), "steps": 3}
    if not CUDA:
        settings["mixed_precision"] = "no"
    return TrainConfig(name=name, dataset=str(dataset), **{**settings, **changes})


def _stylize(pipe, image):
    from stylekit.models import as_task

    img2img = as_task(pipe, "img2img")
    result = img2img(
        "anime style", image=image, strength=0.5, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np"
    )
    return result.images[0]


def kind_rows(model: Path, dataset: Path, work: Path, photo) -> list[str]:
    """Train, reload and stylize every kind in every half precision the device offers."""
    from stylekit.adapters import KINDS, load_adapter
    from stylekit.models import load_pipeline
    from stylekit.train import train_adapter

    precisions = ["fp16", "bf16"] if CUDA else ["no"]
    rows = []
    for precision in precisions:
        for kind in KINDS:
            try:
                result = train_adapter(
                    _config(model, dataset, work / precision, f"{kind}_{precision}", kind=kind, mixed_precision=precision, conv=True),
                    progress=False,
                    keep_pipeline=True,
                )
                dtype = {"fp16": "fp16", "bf16": "bf16", "no": "fp32"}[precision]
                fresh = load_pipeline(str(model), device=DEVICE, dtype=dtype)
                base = next(fresh.unet.parameters())
                load_adapter(fresh, result.folder, kind)
                networks = getattr(fresh, "lycoris_networks", {}).values()
                modules = [fresh.unet] + [layer for network in networks for layer in network.loras]
                follows = all(
                    t.device == base.device and t.dtype == base.dtype
                    for m in modules
                    for t in [*m.parameters(), *m.buffers()]
                    if t.is_floating_point()
                )
                trained = result.pipeline.to(DEVICE, fresh.unet.dtype)
                difference = float(np.abs(_stylize(fresh, photo) - _stylize(trained, photo)).max() * 255)
                rows.append(f"| {kind} | {dtype} | yes | {'yes' if follows else 'NO'} | {difference:.1f} |")
            except Exception as error:  # a failing kind is a row of the table, not the end of the check
                rows.append(f"| {kind} | {precision} | FAILED: {type(error).__name__}: {str(error)[:120]} | | |")
                traceback.print_exc()
    return rows


def plain_loop_images_per_second(model: Path, dataset: Path, steps: int, batch: int, resolution: int) -> float:
    """diffusers' LoRA example per step: autoencoder and text encoder on every batch, LoRA on attention, fp16 autocast."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from peft import LoraConfig

    from stylekit.data import check_dataset, prepare_dataset

    dtype = torch.float16 if CUDA else torch.float32
    pipe = StableDiffusionPipeline.from_pretrained(model, torch_dtype=dtype).to(DEVICE)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.requires_grad_(False)
    pipe.unet.add_adapter(
        LoraConfig(r=16, lora_alpha=16, init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v", "to_out.0"])
    )
    params = [p for p in pipe.unet.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    data = prepare_dataset(check_dataset(dataset), resolution)
    generator = torch.Generator().manual_seed(0)
    start = None
    for step in range(steps + 1):  # the first step warms up and is not timed
        if step == 1:
            torch.cuda.synchronize() if CUDA else None
            start = time.perf_counter()
        items = [data[i] for i in torch.randint(len(data), (batch,), generator=generator).tolist()]
        pixels = torch.stack([item["pixels"] for item in items]).to(DEVICE, dtype)
        ids = pipe.tokenizer([item["caption"] for item in items], padding="max_length", truncation=True, return_tensors="pt").input_ids.to(
            DEVICE
        )
        with torch.no_grad():
            latents = pipe.vae.encode(pixels).latent_dist.sample() * pipe.vae.config.scaling_factor
            states = pipe.text_encoder(ids)[0]
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (batch,), device=DEVICE)
        with torch.autocast(DEVICE, dtype=torch.float16, enabled=CUDA):
            prediction = pipe.unet(scheduler.add_noise(latents, noise, t), t, states).sample
        F.mse_loss(prediction.float(), noise.float()).backward()
        optimizer.step()
        optimizer.zero_grad()
    torch.cuda.synchronize() if CUDA else None
    return steps * batch / (time.perf_counter() - start)


def speed_rows(model: Path, dataset: Path, work: Path, steps: int, resolution: int) -> list[str]:
    from stylekit.train import train_adapter

    old = {"batch_size": 1, "gradient_accumulation": 4, "gradient_checkpointing": True}
    ours = train_adapter(_config(model, dataset, work / "speed", "speed_b4", steps=steps), progress=False)  # the sd15 defaults
    before = train_adapter(_config(model, dataset, work / "speed", "speed_old_defaults", steps=steps, **old), progress=False)
    plain = plain_loop_images_per_second(model, dataset, steps, 4, resolution)
    return [
        f"| stylekit trainer, sd15 defaults (batch 4, no checkpointing) | {ours.images_per_second:.2f} | {ours.peak_memory_mb:.0f} |",
        f"| plain loop, batch 4, no checkpointing | {plain:.2f} | |",
        f"| ratio (target >= 1.3) | {ours.images_per_second / plain:.2f}x | |",
        f"| stylekit trainer, the old defaults (batch 1 x accumulation 4, checkpointing) | {before.images_per_second:.2f} | {before.peak_memory_mb:.0f} |",
    ]


def stylize_rows(model: Path, work: Path, photo, repeats: int = 3) -> list[str]:
    from diffusers import StableDiffusionImg2ImgPipeline

    from stylekit.stylize import Stylizer

    stylizer = Stylizer(str(model), styles_dir=work / "speed", device=DEVICE)
    names = list(stylizer.styles)
    settings = {"content_strength": 0.5, "method": "img2img"}
    for name in reversed(names):  # every adapter loaded once; the last one used stays active
        stylizer.stylize(photo, name, **settings)
    ours = _seconds(lambda: stylizer.stylize(photo, names[0], **settings), repeats)
    plain = StableDiffusionImg2ImgPipeline.from_pretrained(model, torch_dtype=stylizer.pipe.unet.dtype).to(DEVICE)
    steps, guidance = stylizer.profile.inference.steps, stylizer.profile.inference.guidance
    source = photo.resize((stylizer.profile.resolution, stylizer.profile.resolution))

    def run():
        plain("anime style", image=source, strength=0.5, num_inference_steps=steps, guidance_scale=guidance)

    run()
    theirs = _seconds(run, repeats)
    return [
        f"| stylekit, {len(names)} adapters loaded, one active | {ours:.3f} |",
        f"| plain diffusers img2img, no adapter | {theirs:.3f} |",
        f"| ratio (target <= 1.1) | {ours / theirs:.2f}x |",
    ]


def layout_test_rows() -> list[str]:
    """``tests/test_layouts.py`` on this machine (on a GPU, training runs there in its mixed precision)."""
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_layouts.py", "-k", "not profiles_keep"]
    run = subprocess.run(command, cwd=root, capture_output=True, text=True)
    failures = re.findall(r"^FAILED (\S+)", run.stdout, flags=re.MULTILINE)
    summary = (run.stdout.strip().splitlines() or ["no output"])[-1].strip("= ")
    print(run.stdout[-4000:], run.stderr[-2000:])
    return [f"| tests/test_layouts.py on {DEVICE} | {summary} |", *(f"| failed | {name} |" for name in failures)]


def _seconds(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize() if CUDA else None
        start = time.perf_counter()
        function()
        torch.cuda.synchronize() if CUDA else None
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=list(SHAPES), default="sd15" if CUDA else "mini")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps (default: 20 on sd15, 2 on mini)")
    parser.add_argument("--no-layout-tests", action="store_true", help="skip section 4 (about 8 minutes on a 2-core CPU)")
    args = parser.parse_args(argv)
    from stylekit.data import build_demo_sets, load_photos

    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    model = work / "model"
    build_model(model, args.scale)
    resolution = 512  # the sd15 profile's, which both scales train at
    dataset = build_demo_sets(work / "datasets", ["anime"], count=16, resolution=resolution)["anime"]
    photo = load_photos(split="held_out")[0].image.resize((resolution, resolution))
    device = torch.cuda.get_device_name() if CUDA else "CPU"
    lines = [
        f"### GPU check, {args.scale} shapes ({date.today()}, {device}, {machine()})",
        "",
        "| kind | dtype | trains and saves | every tensor on the pipeline's device and dtype after reload | largest reload difference (of 255) |",
        "| --- | --- | --- | --- | --- |",
        *kind_rows(model, dataset, work / "kinds", photo),
        "",
        "| training | images / s | peak memory (MB) |",
        "| --- | --- | --- |",
        *speed_rows(model, dataset, work, args.steps or (20 if args.scale == "sd15" else 2), resolution),
        "",
        "| stylization, 512 px img2img at content 0.5 | seconds per image |"
        if args.scale == "sd15"
        else "| stylization, img2img at content 0.5 | seconds per image |",
        "| --- | --- |",
        *stylize_rows(model, work, photo),
        "",
    ]
    if not args.no_layout_tests:
        lines += ["| layout tests | result |", "| --- | --- |", *layout_test_rows(), ""]
    publish(lines)


if __name__ == "__main__":
    main()
