"""Measure the tiny model on held-out data and write its model card.

    python -m stylekit.tiny.card                 # the package's tiny model
    python -m stylekit.tiny.card --model DIR     # a model that `python -m stylekit.tiny train --out DIR` made

Figures (all on data never used in training): autoencoder PSNR on the
held-out photos; UNet denoising loss with the right captions against
shuffled captions; SSIM kept by img2img at denoising strength 0.5; load and
img2img times on this machine. Writes ``README.md``, ``figures.json`` and two
image grids into the model folder.
"""

from __future__ import annotations

import argparse
from collections import Counter
import json
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler
from PIL import Image
from skimage.metrics import structural_similarity

from . import corpus, synth
from ..data import center_square, load_photos
from ..diffusion import prediction_target, prediction_type
from ..models import as_task, cpu_name, load_pipeline, tiny_model_dir, tokenize
from ..plots import image_grid
from ..profiles import PROFILES
from .pretrain import PretrainConfig, to_model_range

__all__ = ["measure", "write_model_card"]

HELD_OUT_SCENE_SEED = 1_000_000  # far beyond the seeds used for training
PROMPTS = [
    "a red house and two trees on green hills under a blue sky, with the sun",
    "a landscape on snowy hills under a night sky, with the moon, mountains",
    "two trees on sand dunes under a sunset sky, with the sea",
    "a photo of an astronaut in front of a flag",
]


def _as_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a - b) ** 2)))


@torch.no_grad()
def reconstruct(pipe, image: Image.Image) -> Image.Image:
    x = to_model_range(torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].contiguous())
    decoded = pipe.vae.decode(pipe.vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    return Image.fromarray(((decoded[0].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8))


@torch.no_grad()
def denoising_loss(pipe, images: list[Image.Image], captions: list[str], draws: int = 64) -> float:
    """Mean squared error of the UNet's prediction (noise or velocity, as the model predicts) over fixed timesteps and
    noise (same draws for any captions)."""
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    kind = prediction_type(scheduler)
    x = torch.stack([to_model_range(torch.from_numpy(np.array(im)).permute(2, 0, 1).contiguous()) for im in images])
    latents = pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor
    states = pipe.text_encoder(tokenize(pipe.tokenizer, captions)).last_hidden_state
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(draws):
        t = torch.randint(0, 1000, (len(images),), generator=generator)
        noise = torch.randn(latents.shape, generator=generator)
        noisy = scheduler.add_noise(latents, noise, t)
        pred = pipe.unet(noisy, t, encoder_hidden_states=states).sample
        losses.append(torch.mean((pred - prediction_target(noisy, latents, scheduler.alphas_cumprod[t], kind)) ** 2).item())
    return float(np.mean(losses))


GROUND_BAND = (0.66, 0.76)  # the rows every demo scene fills with its ground: below the lowest horizon, above any water


def _sky_and_ground(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """The median colour of the top third (the sky, RGB 0-1) and the chromaticity of the median colour of the ground band
    (:data:`GROUND_BAND`; chromaticity, r, g, b over their sum, so that a ground darkened at night keeps its colour)."""
    array = _as_array(image)
    height = array.shape[0]
    sky = np.median(array[: height // 3].reshape(-1, 3), axis=0)
    ground = np.median(array[int(height * GROUND_BAND[0]) : int(height * GROUND_BAND[1])].reshape(-1, 3), axis=0)
    return sky, ground / max(float(ground.sum()), 1e-6)


def scene_colours(count: int = 400, size: int = 64) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Each sky's and each ground's mean colour (see :func:`_sky_and_ground`), as held-out demo scenes draw them."""
    skies: dict[str, list] = {name: [] for name in synth.SKIES}
    grounds: dict[str, list] = {name: [] for name in synth.GROUNDS}
    for scene in synth.make_scenes(count, size, seed=HELD_OUT_SCENE_SEED):
        top, bottom = _sky_and_ground(scene.image)
        skies[next(name for name in synth.SKIES if f"under {name}" in scene.caption)].append(top)
        grounds[next(name for name in synth.GROUNDS if f"on {name} under" in scene.caption)].append(bottom)
    return {k: np.mean(v, axis=0) for k, v in skies.items()}, {k: np.mean(v, axis=0) for k, v in grounds.items()}


def _nearest(colour: np.ndarray, references: dict[str, np.ndarray]) -> str:
    return min(references, key=lambda name: float(np.sum((references[name] - colour) ** 2)))


CAPTION_SEEDS = tuple(range(8))  # seeds per caption for the sky and ground accuracy (two move it by up to 0.1)
SCENE_GRID_SEEDS = 2  # of them, how many the scenes grid shows


def caption_following(pipe, seeds: tuple[int, ...] = CAPTION_SEEDS) -> tuple[dict, list[Image.Image]]:
    """How often text-to-image draws the sky and the ground a caption names.

    For every sky and ground of the demo scenes, "a landscape on GROUND under SKY" is drawn with each seed;
    a picture counts for the sky when its top third is nearest in colour to the named sky (as the scenes
    draw it) among the four, and for the ground likewise with its ground band (:func:`_sky_and_ground`).
    Chance is 25 %; the measure reads 99-100 % of real demo scenes right.
    Returns the accuracies and the pictures (sky-major, then ground, then seed).
    """
    defaults = PROFILES["tiny"].inference
    sky_colours, ground_colours = scene_colours(size=pipe.unet.config.sample_size * pipe.vae_scale_factor)
    txt2img = as_task(pipe, "txt2img")
    pictures, sky_hits, ground_hits = [], [], []
    for sky in synth.SKIES:
        for ground in synth.GROUNDS:
            for seed in seeds:
                picture = txt2img(
                    f"a landscape on {ground} under {sky}",
                    num_inference_steps=defaults.steps,
                    guidance_scale=defaults.guidance,
                    generator=torch.Generator().manual_seed(seed),
                ).images[0]
                top, bottom = _sky_and_ground(picture)
                sky_hits.append(_nearest(top, sky_colours) == sky)
                ground_hits.append(_nearest(bottom, ground_colours) == ground)
                pictures.append(picture)
    scores = {"sky_accuracy": round(float(np.mean(sky_hits)), 3), "ground_accuracy": round(float(np.mean(ground_hits)), 3)}
    return {**scores, "pictures": len(pictures), "seeds": len(seeds), "guidance": defaults.guidance, "steps": defaults.steps}, pictures


def measure(model_dir: Path, corpus_root: Path = Path("/")) -> tuple[dict, dict[str, list[Image.Image]]]:
    """All model-card figures, plus the images behind them (``corpus_root``: where the corpus's packages are)."""
    size = PretrainConfig().resolution
    start = time.perf_counter()
    pipe = load_pipeline(model_dir, device="cpu")
    load_seconds = time.perf_counter() - start
    defaults = PROFILES["tiny"].inference

    photos = load_photos(split="held_out")
    originals = [center_square(p.image, size) for p in photos]
    recons = [reconstruct(pipe, im) for im in originals]
    psnrs = [psnr(_as_array(a), _as_array(b)) for a, b in zip(originals, recons)]
    unseen = [center_square(entry.image, size) for entry in corpus.load_corpus("unseen", corpus_root)]
    unseen_psnrs = [psnr(_as_array(image), _as_array(reconstruct(pipe, image))) for image in unseen]

    scenes = synth.make_scenes(32, size, seed=HELD_OUT_SCENE_SEED)
    scene_images, scene_captions = [s.image for s in scenes], [s.caption for s in scenes]
    shuffled = scene_captions[1:] + scene_captions[:1]
    photo_captions = [p.caption for p in photos]

    stylized, times, ssims = [], [], []
    for image, caption in zip(originals, photo_captions):
        t0 = time.perf_counter()
        out = pipe(
            prompt=caption,
            image=image,
            strength=0.5,
            num_inference_steps=defaults.steps,
            guidance_scale=defaults.guidance,
            generator=torch.Generator().manual_seed(0),
        ).images[0]
        times.append(time.perf_counter() - t0)
        stylized.append(out)
        ssims.append(float(structural_similarity(_as_array(image), _as_array(out), channel_axis=2, data_range=1.0)))

    figures = {
        "autoencoder_psnr_db_held_out_photos": {p.file_name: round(v, 2) for p, v in zip(photos, psnrs)},
        "autoencoder_psnr_db_mean": round(float(np.mean(psnrs)), 2),
        "autoencoder_psnr_db_unseen_corpus_photos_mean": round(float(np.mean(unseen_psnrs)), 2),
        "autoencoder_psnr_db_unseen_corpus_photos_min": round(float(np.min(unseen_psnrs)), 2),
        "denoising_loss_held_out_scenes_right_captions": round(denoising_loss(pipe, scene_images, scene_captions), 4),
        "denoising_loss_held_out_scenes_shuffled_captions": round(denoising_loss(pipe, scene_images, shuffled), 4),
        "denoising_loss_held_out_scenes_empty_captions": round(denoising_loss(pipe, scene_images, [""] * len(scenes)), 4),
        "denoising_loss_held_out_photos_right_captions": round(denoising_loss(pipe, originals, photo_captions), 4),
        "denoising_loss_held_out_photos_swapped_captions": round(denoising_loss(pipe, originals, photo_captions[::-1]), 4),
        "img2img_strength_0.5_ssim_held_out_photos": {p.file_name: round(v, 3) for p, v in zip(photos, ssims)},
        "img2img_strength_0.5_ssim_mean": round(float(np.mean(ssims)), 3),
        "load_seconds": round(load_seconds, 2),
        "img2img_seconds_per_image": round(float(np.median(times)), 3),
        "img2img_settings": {"steps": defaults.steps, "strength": 0.5, "guidance": defaults.guidance},
        "machine": f"{cpu_name()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
    }
    following, scene_pictures = caption_following(pipe)
    figures["text_to_image_sky_accuracy"] = following["sky_accuracy"]
    figures["text_to_image_ground_accuracy"] = following["ground_accuracy"]
    figures["text_to_image_seeds"] = following["seeds"]
    txt2img = as_task(pipe, "txt2img")
    samples = [
        [
            txt2img(
                prompt, num_inference_steps=defaults.steps, guidance_scale=defaults.guidance, generator=torch.Generator().manual_seed(seed)
            ).images[0]
            for seed in range(4)
        ]
        for prompt in PROMPTS
    ]
    images = {"originals": originals, "reconstructions": recons, "img2img": stylized, "samples": [im for row in samples for im in row]}
    images["scenes"] = [picture for i, picture in enumerate(scene_pictures) if i % len(CAPTION_SEEDS) < SCENE_GRID_SEEDS]
    return figures, images


def write_model_card(model_dir: Path, corpus_root: Path = Path("/")) -> dict:
    """Measure the model in ``model_dir`` and (re)write its README.md, figures.json and grids."""
    model_dir = Path(model_dir)
    figures, images = measure(model_dir, corpus_root)
    (model_dir / "figures.json").write_text(json.dumps(figures, indent=2))
    n = len(images["originals"])
    photo_grid = image_grid(
        [[images["originals"][i], images["reconstructions"][i], images["img2img"][i]] for i in range(n)],
        col_labels=["held-out photo", "autoencoder", "img2img 0.5"],
    )
    photo_grid.savefig(model_dir / "held_out.png", dpi=80, bbox_inches="tight")
    samples = images["samples"]
    sample_grid = image_grid([samples[i : i + 4] for i in range(0, len(samples), 4)], row_labels=[p[:28] + "..." for p in PROMPTS])
    sample_grid.savefig(model_dir / "samples.png", dpi=80, bbox_inches="tight")
    per_sky = len(images["scenes"]) // len(synth.SKIES)
    scene_grid = image_grid(
        [images["scenes"][i : i + per_sky] for i in range(0, len(images["scenes"]), per_sky)],
        row_labels=[sky.removeprefix("a ") for sky in synth.SKIES],
        col_labels=[ground for ground in synth.GROUNDS for _ in range(per_sky // len(synth.GROUNDS))],
    )
    scene_grid.savefig(model_dir / "scenes.png", dpi=80, bbox_inches="tight")
    training = json.loads((model_dir / "training.json").read_text())
    (model_dir / "README.md").write_text(_card_text(figures, training))
    return figures


def _card_text(figures: dict, training: dict) -> str:
    config = training["config"]
    params = training["parameters"]
    f = figures
    return f"""# stylekit tiny Stable Diffusion

A Stable Diffusion pipeline (diffusers layout: `AutoencoderKL`, `UNet2DConditionModel`,
CLIP text encoder and tokenizer, DPM-Solver++ scheduler) small enough to train and run
on a laptop CPU. stylekit trained it from scratch, offline, with `python -m stylekit.tiny train`,
on photos, digital artwork, generic artistic renderings and procedural scenes (below). It is the
`tiny` profile's base model: `load_pipeline("tiny")`.

- Resolution {config["resolution"]} x {config["resolution"]} px; autoencoder factor 4 (latents {config.get("latent_channels", 4)} x {config["resolution"] // 4} x {config["resolution"] // 4}).
- Parameters: UNet {params["unet"]:,}, autoencoder {params["vae"]:,}, text encoder {params["text_encoder"]:,} (stored in fp16).
- Tokenizer: byte-level BPE in CLIP's format, trained on the captions (at most {config["vocab_size"]} tokens), {config["max_tokens"]} tokens per prompt.
- Training: {_training_text(training)}

{_corpus_text(training)}
## Figures on held-out data

Measured by `python -m stylekit.tiny.card` ({f["machine"]}).

| measure | value |
| --- | --- |
| autoencoder PSNR, held-out photos (target >= 23 dB) | {f["autoencoder_psnr_db_mean"]} dB ({", ".join(f"{k}: {v}" for k, v in f["autoencoder_psnr_db_held_out_photos"].items())}) |
| autoencoder PSNR, the corpus's unseen photos | {f["autoencoder_psnr_db_unseen_corpus_photos_mean"]} dB mean, {f["autoencoder_psnr_db_unseen_corpus_photos_min"]} dB worst |
| UNet denoising loss, held-out scenes, right captions | {f["denoising_loss_held_out_scenes_right_captions"]} |
| UNet denoising loss, held-out scenes, shuffled captions | {f["denoising_loss_held_out_scenes_shuffled_captions"]} |
| UNet denoising loss, held-out scenes, empty captions | {f["denoising_loss_held_out_scenes_empty_captions"]} |
| text-to-image, "a landscape on GROUND under SKY" for the 4 x 4 demo skies and grounds, {f.get("text_to_image_seeds", 2)} seeds: top third nearest the named sky's colour / the ground band (66-76 % of the height) nearest the named ground's hue (chance 0.25) | {f.get("text_to_image_sky_accuracy", "not measured")} / {f.get("text_to_image_ground_accuracy", "not measured")} |
| UNet denoising loss, held-out photos, right / swapped captions | {f["denoising_loss_held_out_photos_right_captions"]} / {f["denoising_loss_held_out_photos_swapped_captions"]} |
| img2img at strength 0.5: SSIM to the held-out photo | {f["img2img_strength_0.5_ssim_mean"]} ({", ".join(f"{k}: {v}" for k, v in f["img2img_strength_0.5_ssim_held_out_photos"].items())}) |
| load time (`load_pipeline`) | {f["load_seconds"]} s |
| img2img time per image ({f["img2img_settings"]["steps"]} steps x strength 0.5, guidance {f["img2img_settings"]["guidance"]}) | {f["img2img_seconds_per_image"]} s |

Lower denoising loss with the right captions than with shuffled or empty ones means the text matters.

![held-out photos: original, autoencoder reconstruction, img2img at 0.5](held_out.png)

## What it can and cannot do

![four seeds for each of four prompts](samples.png)

![a landscape on each demo ground (columns, two seeds each) under each demo sky (rows)](scenes.png)

It draws the coarse layout of the procedural scenes (sky colour, ground, water, sun or moon) from a
caption and keeps a photo's composition through img2img. It cannot draw recognisable objects from
photographs, and fine detail is limited by the {config["resolution"]} px resolution. It exists so the course runs
offline in minutes; switch the profile to `sd15` or `sdxl` for real results.

{_schedule_text(config)}

## License

The weights were trained by the stylekit project and are released under the project's MIT license.
The shipped photos' licences are in `data/LICENSES.md`; every corpus image's package, licence and
copyright holder is in `data/pretrain_corpus.jsonl` (all allow redistribution and modification:
GPL-2+, LGPL-3, CC-BY-4.0, CC-BY-SA-3.0/4.0, CC0). The images themselves do not ship with stylekit.
"""


def _training_text(training: dict) -> str:
    """The training line: the run's stages, and before them those of the run it was fine-tuned from."""
    config = training["config"]
    unet = f"UNet and text encoder {config['unet_steps']} steps (batch {config['unet_batch']}, caption dropout {config['caption_dropout']} for guidance{_recipe_text(config)})"
    losses = f"Final losses: autoencoder {_loss_text(training.get('final_vae_loss'))}, UNet {_loss_text(training.get('final_unet_loss'))}."
    if "started_from" in training:
        return f"{_training_text(training['started_from'])}\n  Then fine-tuned: {unet}; data hash `{training['data_hash']}`. {losses}"
    return (
        f"autoencoder {config['vae_steps']} steps (batch {config['vae_batch']}, {config['vae_crop']} px crops), then {unet}; "
        f"seed {config['seed']}; data hash `{training['data_hash']}`.\n  {losses}"
    )


def _loss_text(loss: float | None) -> str:
    return "not trained in this run" if loss is None else f"{loss:.4f}"


def _recipe_text(config: dict) -> str:
    """The pretraining choices a run recorded beyond the basics (older runs recorded none)."""
    parts = []
    if config.get("ema_max_decay"):
        parts.append(f"EMA of the weights up to decay {config['ema_max_decay']}")
    if config.get("snr_gamma"):
        parts.append(f"min-SNR weighting, gamma {config['snr_gamma']:g}")
    if config.get("pooled_text"):
        parts.append("the pooled caption added to the time embedding")
    if config.get("vae_from"):
        parts.append("the autoencoder of an earlier run, kept as it was")
    if config.get("init_from"):
        parts.append("UNet, text encoder and tokenizer started from an earlier run (fine-tuning)")
    if config.get("prediction_type") == "v_prediction":
        parts.append("v-prediction")
    if config.get("zero_terminal_snr"):
        parts.append("the noise schedule rescaled to zero terminal SNR")
    if config.get("unet_lr_schedule", "constant") != "constant":
        parts.append(f"learning rate {config['unet_lr']:g}, {config['unet_lr_schedule']} decay after {config['unet_warmup']} warmup steps")
    return "".join(f"; {part}" for part in parts)


def _schedule_text(config: dict) -> str:
    """What the noise schedule means for pictures and img2img."""
    if config.get("zero_terminal_snr"):
        return """Its noise schedule ends in pure noise (zero terminal SNR, with v-prediction, as Lin et al. 2024 propose). On Stable
Diffusion's schedule, where the last step still holds a little of the image, a model this small takes the coarse colours of
the starting noise for the picture's (this project's earlier, noise-predicting base drew a night sky as light as a blue
one), and img2img keeps a photo's mean colour even at strength 1.0."""
    return """A known weakness: img2img keeps the photo's mean colour even at strength 1.0 (the 16 x 16 latent's average
survives Stable Diffusion's noise schedule, and the model was trained without offset noise), so style adapters
trained on it change photos less than they change text-to-image samples."""


def _corpus_text(training: dict) -> str:
    """The training-data section: sources, licences and counts."""
    config = training["config"]
    used = set(training.get("corpus_used", []))
    entries = [entry for entry in corpus.read_manifest() if entry.path in used]
    unseen = sum(entry.split == "unseen" for entry in corpus.read_manifest())
    packages: dict[str, Counter] = {}
    for entry in entries:
        packages.setdefault(entry.package, Counter())[entry.kind] += 1
    rows = "\n".join(
        f"| `{package}` | {kinds['photo']} | {kinds['artwork']} | {', '.join(sorted({e.license for e in entries if e.package == package}))} |"
        for package, kinds in sorted(packages.items())
    )
    kinds = training.get("images_per_kind", {})
    return f"""## Training data

| source | images | 64 px training images |
| --- | --- | --- |
| shipped photos, `train` split (`data/photos`, `data/LICENSES.md`) | {len(training["photos_used"])} | {config["crops_per_photo"]} random crops each |
| Debian wallpaper packages: photos | {sum(k["photo"] for k in packages.values())} | {config.get("crops_per_corpus_photo", 0)} random crops each |
| Debian wallpaper packages: digital artwork | {sum(k["artwork"] for k in packages.values())} | {config.get("crops_per_artwork", 0)} random crops each |
| generic artistic renderings of photo crops and scenes | {len(corpus.MEDIA)} media | {config.get("rendering_count", 0)} |
| procedural scenes (`stylekit.tiny.synth`) | - | {config["scene_count"]} |

In all {training["images"]:,} images: {kinds.get("photo", "-")} photo crops, {kinds.get("art", "-")} artwork crops and renderings,
{kinds.get("scene", "-")} scenes. An autoencoder batch is half photos, a quarter art, a quarter scenes.

| package | photos | artwork | licences |
| --- | --- | --- | --- |
{rows}

The renderings ({", ".join(corpus.MEDIA)}) are randomised operators in
`stylekit.tiny.corpus`, captioned "<medium> of <subject>". None of them is one of the five demo
styles, which the base never sees: only the adapters learn those. {unseen} corpus photos are kept out
of training (`split: unseen`) to check the course on photos nothing was trained on.
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m stylekit.tiny.card", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", type=Path, default=tiny_model_dir(), help="the model folder to measure (default: the package's tiny model)"
    )
    parser.add_argument("--corpus-root", type=Path, default=Path("/"), help="where the corpus's Debian packages are (default: /)")
    args = parser.parse_args(argv)
    write_model_card(args.model, args.corpus_root)


if __name__ == "__main__":
    main()
