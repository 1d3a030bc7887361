"""Stylization speed: seconds per image and the cost of a style switch.

    python benchmarks/stylize_speed.py

On the tiny profile (CPU): seconds per image at the profile's defaults, for
each stylize method (target: at most 1 s on a 2-core CPU), and the time a style switch adds (target: under 10 % of one stylization; adapters
are loaded once, so switching is only ``set_adapters``). Each of these stylizes the photo as if new; one more row
moves only the style strength, as the stylizer's slider does, so the inversion recorded for the photo is replayed. Trains the two demo
styles it needs if they are missing. With a CUDA GPU it also measures the SD
1.5 UNet architecture at 512 px (random weights): UNet steps per second in
eager mode and with ``torch.compile``, with a LoRA adapter fused and unfused.

Prints a table and appends it to ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import statistics
import time
from datetime import date

import torch
from common import NO_GPU, machine, publish


def _median_seconds(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def tiny_figures(repeats: int = 15) -> dict:
    from stylekit.data import load_photos
    from stylekit.stylize import METHODS, Stylizer
    from stylekit.launcher import ensure_trained

    ensure_trained(["anime", "watercolor"], "tiny")
    stylizer = Stylizer("tiny")
    photo = load_photos(split="held_out")[0].image
    for style in ("anime", "watercolor"):  # first use loads each adapter once
        stylizer.stylize(photo, style)

    def new_photo(style="anime", **settings):  # as for a photo not seen before: nothing recorded to replay
        stylizer.recordings.clear()
        stylizer.stylize(photo, style, **settings)

    same = _median_seconds(new_photo, repeats)
    per_method = {m: _median_seconds(lambda m=m: new_photo(method=m), repeats) for m in METHODS}
    styles = iter(["watercolor", "anime"] * repeats)
    switching = _median_seconds(lambda: new_photo(next(styles)), repeats)
    strengths = iter([0.5, 1.0] * repeats)
    replayed = _median_seconds(lambda: stylizer.stylize(photo, "anime", style_strength=next(strengths)), repeats)
    switch_only = (
        _median_seconds(lambda: (stylizer.activate({"watercolor": 1.0}, 1.0), stylizer.activate({"anime": 1.0}, 1.0)), repeats) / 2
    )
    return {
        "seconds_per_image": same,
        "per_method": per_method,
        "seconds_per_image_switching": switching,
        "seconds_per_image_replayed": replayed,
        "switch_seconds": switch_only,
    }


def sd15_unet_steps_per_second(compiled: bool, fused: bool, steps: int = 30) -> float:
    """UNet forward passes per second (batch 2 for guidance, fp16, 64 x 64 latents) with a rank-16 LoRA."""
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768).to("cuda", torch.float16).eval()
    unet.add_adapter(LoraConfig(r=16, lora_alpha=16, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    if fused:
        unet.fuse_lora()
    if compiled:
        unet = torch.compile(unet)
    latents = torch.randn(2, 4, 64, 64, device="cuda", dtype=torch.float16)
    states = torch.randn(2, 77, 768, device="cuda", dtype=torch.float16)
    t = torch.tensor([500, 500], device="cuda")
    with torch.no_grad():
        for _ in range(5):  # warm-up, compilation included
            unet(latents, t, encoder_hidden_states=states)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            unet(latents, t, encoder_hidden_states=states)
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


def main() -> None:
    from stylekit.profiles import PROFILES

    figures = tiny_figures()
    share = figures["switch_seconds"] / figures["seconds_per_image"]
    defaults = PROFILES["tiny"].inference
    lines = [
        f"### Stylization speed, tiny profile ({date.today()}, {machine()})",
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| seconds per image (tiny defaults: method {defaults.method}, {defaults.steps} steps, content {defaults.content_strength:g}, "
        f"guidance {defaults.guidance:g}) | {figures['seconds_per_image']:.3f} |",
        *[f"| seconds per image, method {method} | {seconds:.3f} |" for method, seconds in figures["per_method"].items()],
        f"| seconds per image, alternating two styles | {figures['seconds_per_image_switching']:.3f} |",
        f"| seconds per image, the same photo at another style strength (inversion replayed) | {figures['seconds_per_image_replayed']:.3f} |",
        f"| style switch alone (`set_adapters`) | {figures['switch_seconds'] * 1000:.1f} ms = {share:.1%} of one stylization |",
        "",
    ]
    if torch.cuda.is_available():
        lines += [
            f"### SD 1.5 UNet on {torch.cuda.get_device_name()} (random weights, 512 px, fp16, batch 2)",
            "",
            "| mode | LoRA | UNet steps / s |",
            "| --- | --- | --- |",
        ]
        for compiled in (False, True):
            for fused in (False, True):
                lines.append(
                    f"| {'torch.compile' if compiled else 'eager'} | {'fused' if fused else 'unfused'} | {sd15_unet_steps_per_second(compiled, fused):.1f} |"
                )
        lines.append("")
    else:
        lines += [NO_GPU, ""]
    publish(lines)


if __name__ == "__main__":
    main()
