"""The stylizer: a photo in, the same photo in a trained style out, with its recipe.

    stylizer = Stylizer("tiny")
    image, recipe = stylizer.stylize(photo, "anime", style_strength=0.8, content_strength=0.6, seed=1)
    image, recipe = stylizer.stylize(photo, {"anime": 0.7, "watercolor": 0.3})
    save_with_recipe(image, recipe, "out.png")     # the recipe travels inside the PNG
    reproduce("out.png", "again.png")              # pixel-identical on the same machine

*Style strength* multiplies the style adapter(s); *content strength* sets how
many of the last denoising steps run (1 minus img2img's denoising strength): with
img2img 1 keeps the photo and 0 ignores it; with inversion every replayed step is
led back to the photo, so its layout survives at any content strength. Each adapter is loaded once; changing style,
blend or strength never reloads anything.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler
from PIL import Image, PngImagePlugin

from . import __version__
from .adapters import AdapterMismatch, adapter_file, find_adapter_file, load_adapter, set_adapter_weights
from .data import IMAGE_SUFFIXES, open_image, trigger_word
from .diffusion import added_conditioning, clean_from_prediction, posterior_mean, prediction_type, read_run_config, style_prompt
from .models import decode_latents, encode_pixels, is_sdxl, load_pipeline, quiet_loading, size_multiple
from .paths import profile_dir
from .profiles import PROFILES, Profile
from .progress import progress_bar

__all__ = ["METHODS", "Recipe", "Stylizer", "blend", "find_styles", "read_recipe", "reproduce", "save_with_recipe"]

RECIPE_KEY = "stylekit"  # PNG text chunk with the settings as JSON
SOURCE_KEY = "stylekit_source"  # PNG text chunk with the photo as the pipeline saw it
METHODS = {
    "img2img": "SDEdit: noise the photo part of the way, then denoise with the style active (Meng et al. 2022)",
    "inversion": "edit-friendly DDPM inversion: record the noise that rebuilds the photo, then replay it with the style active "
    "(Huberman-Spiegelglas et al. 2024)",
}
SAMPLER_NAMES = {
    "DPMSolverMultistepScheduler": "DPM++ 2M",
    "EulerDiscreteScheduler": "Euler",
    "DDIMScheduler": "DDIM",
    "PNDMScheduler": "PLMS",
}


@dataclass
class Recipe:
    """Everything needed to make a stylized image again."""

    model: str
    styles: dict[str, float]
    style_strength: float
    content_strength: float
    seed: int
    steps: int
    guidance: float
    prompt: str
    full_prompt: str
    negative_prompt: str
    size: tuple[int, int]  # the photo's size, and the output's
    work_size: tuple[int, int]  # the size the model ran at
    adapter_hashes: dict[str, str] = field(default_factory=dict)
    sampler: str = ""
    method: str = "img2img"  # how the photo is carried into the result: one of METHODS
    version: str = __version__
    source: Image.Image | None = field(default=None, repr=False, compare=False)  # the photo at work size, as the model saw it

    def to_json(self) -> str:
        """The settings as JSON (everything but the source photo)."""
        return json.dumps({f.name: getattr(self, f.name) for f in fields(self) if f.name != "source"})

    def parameters(self) -> str:
        """The recipe in AUTOMATIC1111's ``parameters`` form."""
        loras = " ".join(f"<lora:{name}:{weight * self.style_strength:g}>" for name, weight in self.styles.items())
        hashes = ", ".join(f"{name}: {digest}" for name, digest in self.adapter_hashes.items())
        settings = [
            f"Steps: {self.steps}",
            f"Sampler: {self.sampler}",
            f"CFG scale: {self.guidance:g}",
            f"Seed: {self.seed}",
            f"Size: {self.work_size[0]}x{self.work_size[1]}",
            f"Model: {self.model}",
            f"Denoising strength: {1 - self.content_strength:g}",
            f"Stylize method: {self.method}",
        ]
        if hashes:
            settings.append(f'Lora hashes: "{hashes}"')
        settings.append(f"Version: stylekit {self.version}")
        return f"{self.full_prompt} {loras}".strip() + f"\nNegative prompt: {self.negative_prompt}\n" + ", ".join(settings)


RECORDINGS_KEPT = 8  # inversions a Stylizer keeps (a few photos' worth): moving the style slider replays one


def blend(first: str, second: str | None = None, share: float = 0.0) -> dict[str, float]:
    """Blend weights for one style, or two with ``share`` going to the second."""
    if not second or second == first or share <= 0:
        return {first: 1.0}
    if share >= 1:
        return {second: 1.0}
    return {first: 1.0 - share, second: share}


def find_styles(folder: Path | None = None, profile: str = "tiny") -> dict[str, Path]:
    """Trained adapters of any kind in ``outputs/<profile>/loras`` (or ``folder``): style name -> adapter folder."""
    folder = Path(folder) if folder else profile_dir(profile) / "loras"
    if not folder.is_dir():
        return {}
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_dir() and find_adapter_file(p)}


def _adapter_hash(folder: Path) -> str:
    return hashlib.sha256(adapter_file(folder).read_bytes()).hexdigest()[:12]


def denoising_steps(recipe: Recipe) -> int:
    """How many of the recipe's steps run: ``steps x (1 - content)``, rounded so that 1 - 0.8 counts as 0.2 (4 of 20, not 3)."""
    return int(round(recipe.steps * (1.0 - recipe.content_strength), 6))


def working_size(width: int, height: int, resolution: int, multiple: int) -> tuple[int, int]:
    """About ``resolution**2`` pixels with the photo's aspect ratio, each side a multiple of ``multiple``."""
    scale = (resolution * resolution / (width * height)) ** 0.5
    return max(multiple, round(width * scale / multiple) * multiple), max(multiple, round(height * scale / multiple) * multiple)


def profile_of(model: str, pipe) -> Profile:
    """The profile whose settings suit ``model``: its own when it names one, else ``sdxl`` or ``sd15`` by the pipeline's layout."""
    return PROFILES.get(model) or PROFILES["sdxl" if is_sdxl(pipe) else "sd15"]


class Stylizer:
    """img2img with style adapters, loaded once and switched by weight.

    Args:
        model: a profile name (``"tiny"``, ``"sd15"``...), hub id or local model (see :func:`load_pipeline`).
        styles_dir: where trained adapters are found (default ``outputs/<profile>/loras``).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        profile: the profile for a hub id or local model (default: ``sdxl`` or ``sd15`` by the model's layout).
        safety_checker: run the model's NSFW checker (SD 1.5 ships one) on every result, whichever the method;
            a flagged result comes back black. Off by default.
        resolution: the model runs on about ``resolution**2`` pixels, the photo's aspect ratio kept (default: the
            profile's, e.g. 1024 for SDXL); lower is faster and needs less memory, at some cost in detail.
        pipe: an img2img pipeline already loaded for ``model`` (a training run's), used instead of loading one.
    """

    def __init__(
        self,
        model: str = "tiny",
        styles_dir: Path | None = None,
        device: str = "auto",
        profile: str | None = None,
        safety_checker: bool = False,
        resolution: int | None = None,
        pipe=None,
    ):
        self.model = str(model)
        self.pipe = pipe if pipe is not None else load_pipeline(self.model, task="img2img", device=device, safety_checker=safety_checker)
        self.profile = PROFILES[profile] if profile else profile_of(self.model, self.pipe)
        self.resolution = resolution or self.profile.resolution
        self.checker = (
            (self.pipe.components.get("safety_checker"), self.pipe.components.get("feature_extractor")) if safety_checker else None
        )
        if self.checker:
            self.pipe.safety_checker = None  # run once, by check_safety, after either method
        self.styles = find_styles(styles_dir, self.profile.name)
        self.loaded: set[str] = set()
        self.recordings: dict[tuple, tuple[torch.Tensor, list[torch.Tensor]]] = {}  # inversions recorded, least recently used first
        self.ddpm = DDPMScheduler.from_config(self.pipe.scheduler.config)  # the training noise schedule, for inversion
        self.prediction = prediction_type(self.ddpm)  # what the UNet's output means: epsilon or velocity
        self.multiple = size_multiple(self.pipe)

    def add_style(self, name: str, source: Path) -> None:
        """Make an adapter available as style ``name``: a folder trained anywhere, or a single ``.safetensors`` file
        (a community LoRA, LoCon, LoHa, LoKr or DoRA in kohya's or LyCORIS's layout, or a diffusers file).

        The file is read and checked against the model here, so a file that does not fit is refused before it is used.
        """
        source = Path(source)
        if source.is_dir() and not find_adapter_file(source):
            raise FileNotFoundError(f"no adapter weights in {source}")
        if not source.exists():
            raise FileNotFoundError(f"no adapter file or folder {source}")
        if name in self.loaded:
            raise ValueError(f"style {name!r} is loaded already; add {source} under another name")
        self.styles[name] = source
        try:
            self._check_profile(name)
            load_adapter(self.pipe, source, adapter_name=name, scale=0.0)
        except Exception:
            del self.styles[name]
            raise
        self.loaded.add(name)

    def trigger(self, name: str) -> str:
        """The word that calls style ``name``: the trigger it was trained with (its ``config.json``), else from the name."""
        trained = read_run_config(self.styles[name]).get("trigger") if name in self.styles else None
        return trained or trigger_word(name)

    def activate(self, styles: dict[str, float], style_strength: float) -> None:
        """Load any adapter not loaded yet, then set the blend (no reloads)."""
        for name in styles:
            if name not in self.styles:
                known = ", ".join(self.styles) or "none (train one in notebook 02)"
                raise KeyError(f"no trained style {name!r}; styles found: {known}")
            if name not in self.loaded:
                self._check_profile(name)
                load_adapter(self.pipe, self.styles[name], adapter_name=name)
                self.loaded.add(name)
        if self.loaded:
            set_adapter_weights(self.pipe, {name: weight * style_strength for name, weight in styles.items()})

    def _check_profile(self, name: str) -> None:
        """An adapter trained on another profile is refused by name, before its layers are compared."""
        trained_on = read_run_config(self.styles[name]).get("profile")
        if trained_on and trained_on != self.profile.name:
            raise AdapterMismatch(
                f"style {name!r} ({self.styles[name]}) was trained on the {trained_on!r} profile; this stylizer runs {self.profile.name!r} "
                f"({self.model}). Train it again with profile={self.profile.name!r}, or stylize with Stylizer({trained_on!r})"
            )

    def stylize(
        self,
        image: Image.Image,
        style: str | dict[str, float],
        style_strength: float | None = None,
        content_strength: float | None = None,
        seed: int = 0,
        steps: int | None = None,
        guidance: float | None = None,
        prompt: str = "",
        negative_prompt: str = "",
        method: str | None = None,
    ) -> tuple[Image.Image, Recipe]:
        """Stylize ``image``; returns the result (same size as ``image``) and its recipe.

        Args:
            style: a style name, or several with blend weights ``{"anime": 0.7, "watercolor": 0.3}``.
            style_strength: multiplier of the adapter(s): 0 is the base model, 1 the trained style (default: the profile's).
            content_strength: 1 keeps the photo; lower runs more steps with the style (img2img at 0 ignores the photo) (default: the profile's).
            prompt: what the photo shows, appended to the styles' trigger words.
            method: how the photo is carried into the result, one of :data:`METHODS` (default: the profile's).
        """
        defaults = self.profile.inference
        styles = {style: 1.0} if isinstance(style, str) else dict(style)
        style_strength = defaults.style_strength if style_strength is None else style_strength
        content = defaults.content_strength if content_strength is None else content_strength
        if not 0.0 <= content <= 1.0:
            raise ValueError(f"content_strength must be between 0 and 1, not {content}")
        steps = steps or defaults.steps
        method = method or defaults.method
        guidance = defaults.guidance if guidance is None else guidance
        image = image.convert("RGB")
        work = working_size(image.width, image.height, self.resolution, self.multiple)
        triggers = ", ".join(style_prompt(self.trigger(name)) for name in styles)
        recipe = Recipe(
            model=self.model,
            styles=styles,
            style_strength=style_strength,
            content_strength=content,
            seed=seed,
            steps=steps,
            guidance=guidance,
            prompt=prompt,
            full_prompt=", ".join(p for p in (triggers, prompt) if p),
            negative_prompt=negative_prompt,
            size=image.size,
            work_size=work,
            adapter_hashes={name: _adapter_hash(self.styles[name]) for name in styles if name in self.styles},
            sampler="DDPM (edit-friendly inversion)"
            if method == "inversion"
            else SAMPLER_NAMES.get(type(self.pipe.scheduler).__name__, type(self.pipe.scheduler).__name__),
            method=method,
        )
        recipe.source = image.resize(work, Image.Resampling.LANCZOS)
        return self.run(recipe), recipe

    def run(self, recipe: Recipe) -> Image.Image:
        """Run a recipe on its source photo (at working size); the result is at the photo's size."""
        source = recipe.source
        if recipe.method not in METHODS:
            raise ValueError(f"unknown stylize method {recipe.method!r}: choose one of {', '.join(METHODS)}")
        if denoising_steps(recipe) < 1:  # not a single denoising step: the photo comes back as it is
            return source.resize(tuple(recipe.size), Image.Resampling.LANCZOS)
        generator = torch.Generator(device="cpu").manual_seed(recipe.seed)
        if recipe.method == "inversion":
            result = self._inversion(recipe, generator)
        else:
            self.activate(recipe.styles, recipe.style_strength)
            with quiet_loading():  # SDXL's img2img upcasts its autoencoder itself, with a note each time
                result = self.pipe(
                    prompt=recipe.full_prompt,
                    negative_prompt=recipe.negative_prompt or None,
                    image=source,
                    strength=1.0 - recipe.content_strength,
                    num_inference_steps=recipe.steps,
                    guidance_scale=recipe.guidance,
                    generator=generator,
                ).images[0]
        return self.check_safety(result).resize(tuple(recipe.size), Image.Resampling.LANCZOS)

    @torch.no_grad()
    def check_safety(self, image: Image.Image) -> Image.Image:
        """``image``, or a black image where the model's safety checker (when it was asked for) flags it."""
        if not self.checker or self.checker[0] is None:
            return image
        checker, extractor = self.checker
        features = extractor([image], return_tensors="pt").pixel_values.to(checker.device, checker.dtype)
        pixels = np.asarray(image, dtype=np.float32)[None] / 255.0
        _, flagged = checker(images=pixels, clip_input=features)
        return Image.new("RGB", image.size) if flagged[0] else image

    # -- edit-friendly DDPM inversion ---------------------------------------------------------

    def encode(self, image: Image.Image) -> torch.Tensor:
        """The photo's latents (posterior mean, scaled as the UNet expects), in the UNet's dtype."""
        return encode_pixels(self.pipe.vae, self.pipe.image_processor.preprocess(image)).to(self.pipe.unet.dtype)

    def decode(self, latents: torch.Tensor) -> Image.Image:
        return self.pipe.image_processor.postprocess(decode_latents(self.pipe.vae, latents), output_type="pil")[0]

    def autoencode(self, image: Image.Image) -> Image.Image:
        """``image`` through the autoencoder alone: the most of a photo any method here can keep."""
        return self.decode(self.encode(image))

    @torch.no_grad()
    def _conditioning(self, recipe: Recipe) -> dict:
        """The UNet's keyword arguments for the prompt, the negative prompt's half first when guidance is on (encoded once per
        pass). SDXL adds the pooled text and its size numbers (the working size, uncropped)."""
        guided = recipe.guidance > 1
        with quiet_loading():
            encoded = self.pipe.encode_prompt(
                prompt=recipe.full_prompt,
                device=self.pipe.device,
                num_images_per_prompt=1,
                do_classifier_free_guidance=guided,
                negative_prompt=recipe.negative_prompt or None,
            )

        def both(positive, negative):
            return torch.cat([negative, positive]) if guided else positive

        kwargs = {"encoder_hidden_states": both(encoded[0], encoded[1])}
        if is_sdxl(self.pipe):
            width, height = recipe.work_size
            sizes = torch.tensor([[height, width, 0, 0, height, width]] * (2 if guided else 1), device=self.pipe.device)
            kwargs["added_cond_kwargs"] = added_conditioning(both(encoded[2], encoded[3]), sizes)
        return kwargs

    @torch.no_grad()
    def _predicted_clean(self, latents, t: int, conditioning: dict, guidance: float) -> torch.Tensor:
        """The UNet's estimate of the clean latents at step ``t`` (with classifier-free guidance), from epsilon or v."""
        if guidance <= 1:
            prediction = self.pipe.unet(latents, t, **conditioning).sample
        else:
            unconditional, conditional = self.pipe.unet(torch.cat([latents, latents]), t, **conditioning).sample.chunk(2)
            prediction = unconditional + guidance * (conditional - unconditional)
        return clean_from_prediction(prediction, latents, self.ddpm.alphas_cumprod[t], self.prediction)

    def _posterior_mean(self, latents, t: int, t_prev: int, x0) -> torch.Tensor:
        """Mean of the DDPM step from ``t`` to ``t_prev`` (-1: the clean image) given the predicted clean latents."""
        alphas = self.ddpm.alphas_cumprod.to(latents.device)
        return posterior_mean(latents, x0, alphas[t], alphas[t_prev] if t_prev >= 0 else torch.ones((), device=latents.device))

    def _inversion(self, recipe: Recipe, generator: torch.Generator) -> Image.Image:
        """Record, with the base model, the noise that leads each DDPM step back to the photo; replay it with the style on.

        With style strength 0 the replay returns the photo's latents exactly, so the result
        is the autoencoder's reconstruction (made directly, without the two passes); the style changes only what the
        adapter changes.
        """
        if not any(weight * recipe.style_strength for weight in recipe.styles.values()):
            self.activate(recipe.styles, 0.0)  # an unknown style is still refused
            return self.autoencode(recipe.source)
        self.ddpm.set_timesteps(recipe.steps)
        timesteps = self.ddpm.timesteps.tolist()[-denoising_steps(recipe) :]
        steps = list(zip(timesteps, timesteps[1:] + [-1]))
        latents, residuals = self._recording(recipe, timesteps, steps, generator)
        self.activate(recipe.styles, recipe.style_strength)
        styled = (self._conditioning(recipe), recipe.guidance)
        for (t, t_prev), residual in zip(steps, residuals):
            latents = self._posterior_mean(latents, t, t_prev, self._predicted_clean(latents, t, *styled)) + residual
        return self.decode(latents)

    def _recording(self, recipe: Recipe, timesteps: list[int], steps: list[tuple[int, int]], generator) -> tuple[torch.Tensor, list]:
        """The inversion's start latents and per-step residuals, recorded with the base model. The last
        :data:`RECORDINGS_KEPT` used are kept: another style strength or adapter on the same photo and prompt replays one."""
        key = (hashlib.sha256(recipe.source.tobytes()).hexdigest(), recipe.work_size, tuple(timesteps), recipe.seed)
        key += (recipe.full_prompt, recipe.negative_prompt, recipe.guidance)
        recording = self.recordings.pop(key, None)
        if recording is None:
            photo = self.encode(recipe.source)
            alphas = self.ddpm.alphas_cumprod
            noisy = {
                t: alphas[t].sqrt() * photo + (1 - alphas[t]).sqrt() * torch.randn(photo.shape, generator=generator).to(photo)
                for t in timesteps
            }
            noisy[-1] = photo
            self.activate({}, 0.0)
            base = (self._conditioning(recipe), recipe.guidance)  # encoded per pass: an adapter may reach the text encoder
            residuals = [
                noisy[t_prev] - self._posterior_mean(noisy[t], t, t_prev, self._predicted_clean(noisy[t], t, *base)) for t, t_prev in steps
            ]
            recording = (noisy[timesteps[0]], residuals)
        self.recordings[key] = recording  # the most recently used last
        while len(self.recordings) > RECORDINGS_KEPT:
            del self.recordings[next(iter(self.recordings))]
        return recording

    def stylize_folder(self, source: Path, target: Path, style, share: tuple[int, int] = (0, 1), **settings) -> list[Path]:
        """Stylize every image in ``source`` into ``target`` (PNG with recipe), with a progress bar.

        ``share=(index, count)``: this process's part when ``count`` processes split the folder (every count-th photo).
        """
        source, target = Path(source), Path(target)
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"no images in {source}")
        target.mkdir(parents=True, exist_ok=True)
        index, count = share
        written = []
        for path in progress_bar(files[index::count], desc="stylizing" if count == 1 else f"stylizing, process {index + 1} of {count}"):
            photo = open_image(path)
            image, recipe = self.stylize(photo, style, **settings)
            written.append(save_with_recipe(image, recipe, target / f"{path.stem}.png"))
        return written


def save_with_recipe(image: Image.Image, recipe: Recipe, path: Path) -> Path:
    """Save a PNG carrying its recipe (A1111 ``parameters``, stylekit JSON and the working-size source photo)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", recipe.parameters())
    info.add_text(RECIPE_KEY, recipe.to_json())
    if recipe.source is not None:
        buffer = io.BytesIO()
        recipe.source.save(buffer, format="PNG")
        info.add_text(SOURCE_KEY, base64.b64encode(buffer.getvalue()).decode(), zip=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, pnginfo=info)
    return path


def read_recipe(path: Path) -> Recipe:
    """The recipe stored in a PNG written by :func:`save_with_recipe` (with its source photo when stored)."""
    with Image.open(path) as image:
        text = dict(image.text)
    if RECIPE_KEY not in text:
        raise ValueError(f"{path} has no stylekit recipe (was it saved by stylekit, and not re-encoded since?)")
    settings = json.loads(text[RECIPE_KEY])
    settings["size"], settings["work_size"] = tuple(settings["size"]), tuple(settings["work_size"])
    if SOURCE_KEY in text:
        settings["source"] = Image.open(io.BytesIO(base64.b64decode(text[SOURCE_KEY]))).convert("RGB")
    return Recipe(**settings)


def reproduce(path: Path, output: Path, stylizer: Stylizer | None = None) -> Path:
    """Make the image in ``path`` again from its recipe and stored source photo."""
    recipe = read_recipe(path)
    if recipe.source is None:
        raise ValueError(f"{path} stores its recipe but not its source photo; it cannot be reproduced from the file alone")
    stylizer = stylizer or Stylizer(recipe.model)
    for name, digest in recipe.adapter_hashes.items():
        if name in stylizer.styles and _adapter_hash(stylizer.styles[name]) != digest:
            raise ValueError(f"the adapter {name!r} has changed since {path} was made (hash {digest}); retrain or restore it to reproduce")
    return save_with_recipe(stylizer.run(recipe), recipe, output)
