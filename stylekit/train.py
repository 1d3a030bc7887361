"""The training loop: one style adapter, with accelerate, checkpoints and resume.

    result = train_adapter(TrainConfig(name="anime", dataset="outputs/<profile>/datasets/anime"))

Each step trains only the UNet's adapter on latents and caption conditioning
from :mod:`stylekit.cache`; every step's images, noise and timesteps are drawn
from (seed, step) alone, so a resumed or multi-process run trains on exactly
the same items. The objective follows the model's scheduler (epsilon or
v-prediction, :mod:`stylekit.diffusion`); SDXL's size conditioning comes with
each image. A checkpoint (adapter, optimizer, LR schedule, RNG, step) is
written atomically every ``checkpoint_every`` steps and a rerun with the same
settings continues from it. Runs unchanged under ``accelerate launch``;
:mod:`stylekit.launcher` runs trainings as processes side by side.

Read top to bottom: the run's settings, how a step draws its items, the loss,
checkpoints, the set-up, previews, and at the end :func:`train_adapter` itself.
"""

from __future__ import annotations

import gc
import json
import math
import os
import textwrap
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from pathlib import Path

import numpy as np
import psutil
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from diffusers import DDPMScheduler
from diffusers.optimization import get_scheduler
from PIL import Image

from .adapters import (
    AdapterSpec,
    attach_adapter,
    save_adapter,
    save_dtype,
    switch_trained_adapter,
    trainable_parameters,
)
from .cache import (
    BackgroundLatents,
    cache_key,
    caption_conditioning,
    encode_captions,
    encode_jobs,
    latent_key,
    load_or_build_cache,
    stack_conditioning,
)
from .checkpoints import (
    CHECKPOINT,
    checkpoint_state,
    load_checkpoint,
    optimizer_state,
    restore_optimizer,
    restore_rng,
    rng_state,
    save_checkpoint,
)
from .diffusion import added_conditioning, min_snr_weights, prediction_target, prediction_type, read_run_config, style_prompt
from .data import PreparedDataset, center_square, check_dataset, load_photos, prepare_dataset, trigger_word
from .models import (
    as_task,
    available_cores,
    cpu_threads,
    load_pipeline,
    pick_device,
    pick_mixed_precision,
    size_multiple,
    text_encoders,
    thread_share,
)
from .paths import outputs_dir, profile_dir
from .plots import image_grid, loss_curve, save
from .profiles import get_profile
from .progress import progress_bar
from .stylize import Stylizer

__all__ = [
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "before_after_grid",
    "train_adapter",
]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainConfig:
    """Everything that defines a training run; ``None`` means "the profile's default".

    Args:
        name: the style's name; results go to ``outputs/<profile>/loras/<name>/``.
        dataset: a dataset folder (see :mod:`stylekit.data`).
        profile: ``"tiny"``, ``"sd15"`` or ``"sdxl"``: base model, resolution and defaults.
        model: another base model (hub id, folder, single file) at the profile's settings.
        steps: optimizer steps. batch_size: images per micro-batch (per process).
        gradient_accumulation: micro-batches per optimizer step.
        learning_rate, lr_scheduler, warmup_steps: AdamW learning rate and its schedule
            (``constant``, ``constant_with_warmup``, ``cosine``, ``linear``).
        kind, rank, alpha, factor, conv, text_encoder_lora: the adapter (see :class:`AdapterSpec`):
            ``kind`` is one of ``lora``, ``dora``, ``locon``, ``loha``, ``lokr``, ``oft``, ``boft``.
        resolution: training size in pixels (default: the profile's).
        mixed_precision: ``"no"``, ``"fp16"``, ``"bf16"`` or ``"auto"`` (bf16 on GPUs that compute it natively,
            compute capability 8.0 and newer, fp16 on others such as a T4); the CPU trains in fp32.
        gradient_checkpointing: recompute activations to save memory on large UNets (turned on by itself when
            the GPU has less free memory than the profile's ``checkpointing_below_gb``).
        cpu_threads: torch threads per process when training on a CPU (0: the process's share of the cores; default:
            the profile's, 1 for the tiny model, whose layers are too small to split across cores).
        min_snr_gamma: min-SNR loss weighting (Hang et al. 2023), for epsilon- and v-prediction models; ``None`` turns it off.
        noise_offset: adds per-channel offset noise (helps very dark / bright styles).
        flip: also train on mirror images. caption_dropout: share of steps with the trigger only.
        paired: when the dataset pairs each styled image with its source photo (the demo sets do),
            learn the change from photo to style: the noisy input is made from the photo, the target is the styled image.
        unpaired_share: of a paired set, the share of items that learn the styled image itself instead (noisy input made
            from it, as unpaired training does): what text-to-image needs, since it starts from noise, not from a photo
            (default: the profile's).
        trigger: the word that calls the style in prompts (default: from ``name``).
        buckets: keep each image's aspect ratio, training on size buckets of about ``resolution**2`` pixels (kohya's
            aspect-ratio buckets), instead of centre-cropping every image to a square (default: the profile's: on for
            sd15 and sdxl, off for tiny).
        checkpoint_every, validation_every: steps between checkpoints / validation images (0: only at the end).
        save_precision: how the kohya / LyCORIS file stores its weights, ``"fp16"`` (kohya's default) or ``"fp32"``.
    """

    name: str
    dataset: str
    profile: str = "tiny"
    model: str | None = None
    steps: int | None = None
    batch_size: int | None = None
    gradient_accumulation: int | None = None
    resolution: int | None = None
    learning_rate: float | None = None
    lr_scheduler: str = "cosine"
    warmup_steps: int = 10
    kind: str = "lora"
    rank: int | None = None
    alpha: float | None = None
    factor: int = -1
    conv: bool | None = None
    text_encoder_lora: bool = False
    mixed_precision: str | None = None
    gradient_checkpointing: bool | None = None
    cpu_threads: int | None = None
    min_snr_gamma: float | None = 5.0
    noise_offset: float = 0.0
    flip: bool = True
    paired: bool = True
    unpaired_share: float | None = None
    caption_dropout: float = 0.0
    trigger: str | None = None
    buckets: bool | None = None
    seed: int = 0
    checkpoint_every: int = 50
    validation_every: int = 0
    validation_prompts: tuple[str, ...] = (
        "a red house and two trees on green hills under a blue sky",
        "a landscape on snowy hills under a night sky",
    )
    output_dir: str | None = None
    save_precision: str = "fp16"

    def __post_init__(self):
        save_dtype(self.save_precision)  # an unknown precision fails here, not after training

    def resolved(self) -> TrainConfig:
        """A copy with every ``None`` filled in from the profile."""
        profile = get_profile(self.profile)
        defaults = profile.train
        own = {f.name for f in fields(self)}
        filled = {f.name: getattr(defaults, f.name) for f in fields(defaults) if f.name in own and getattr(self, f.name) is None}
        if self.resolution is None:
            filled["resolution"] = profile.resolution
        if self.trigger is None:
            filled["trigger"] = trigger_word(self.name)
        if self.output_dir is None:
            filled["output_dir"] = str(profile_dir(self.profile) / "loras")
        return replace(self, **filled)

    def adapter(self) -> AdapterSpec:
        return AdapterSpec(
            kind=self.kind, rank=self.rank, alpha=self.alpha, factor=self.factor, conv=self.conv, text_encoder=self.text_encoder_lora
        )


@dataclass
class TrainResult:
    """Where a run's files are and what it measured."""

    folder: Path
    files: dict[str, Path]
    losses: list[float]
    seconds: float
    images_per_second: float
    resumed_from: int
    peak_memory_mb: float = float("nan")  # memory the training loop added (see MemoryMonitor)
    pipeline: object = field(default=None, repr=False)  # the trained pipeline, only with train_adapter(..., keep_pipeline=True)


def _step_generator(seed: int, step: int) -> torch.Generator:
    """Batches, noise and timesteps depend only on (seed, step): a resumed run replays them exactly."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step * 1009)


def _global_batch(buckets: dict[tuple[int, int], list[int]], batch: int, flip: bool, generator) -> tuple[list[int], torch.Tensor]:
    """Indices of one step's items (all from one size bucket) and a mirror flag per item."""
    keys = sorted(buckets, key=lambda size: (size[1], size[0]))  # by height, then width
    weights = torch.tensor([len(buckets[k]) for k in keys], dtype=torch.float)
    bucket = buckets[keys[int(torch.multinomial(weights, 1, generator=generator))]]
    picks = [bucket[i] for i in torch.randint(len(bucket), (batch,), generator=generator).tolist()]
    mirrored = (torch.rand(batch, generator=generator) < 0.5) & flip
    return picks, mirrored


def first_use_order(
    cfg: TrainConfig, dataset: PreparedDataset, buckets: dict[tuple[int, int], list[int]], processes: int = 1
) -> list[tuple[str, int, bool]]:
    """Every latent of :func:`encode_images` as ``(kind, index, mirrored)``: those the run's steps read, in the order
    they first read them (the draws replay from the seed), then the others."""
    images = [(kind, index) for jobs in encode_jobs(dataset).values() for kind, index, _ in jobs]
    sourced = {index for kind, index in images if kind == "source"}
    order: dict[tuple[str, int, bool], None] = {}
    for step in range(cfg.steps):
        picks, mirrored, _ = _step_picks(cfg, buckets, step, processes)
        for index, flag in zip(picks, mirrored.tolist()):
            order[("latent", index, flag)] = None
            if index in sourced:
                order[("source", index, flag)] = None
    for kind, index in images:
        for flag in (False, True) if cfg.flip else (False,):
            order.setdefault((kind, index, flag), None)
    return list(order)


@dataclass
class StepDraw:
    """Everything one optimizer step trains on, for all processes and micro-batches together: image indices, mirror
    flags, noise and timesteps. Drawn from (seed, step) alone, so batch 2 x accumulation 1, batch 1 x accumulation 2
    and two processes of batch 1 train on exactly the same items."""

    picks: list[int]
    mirrored: list[bool]
    noise: torch.Tensor
    timesteps: torch.Tensor
    unpaired: list[bool]  # items that learn the styled image itself even in a paired set (TrainConfig.unpaired_share)

    def share(self, micro: int, process: int, processes: int, batch: int) -> slice:
        """The items of one process in one micro-batch."""
        first = (micro * processes + process) * batch
        return slice(first, first + batch)


def _step_picks(cfg, buckets, step: int, processes: int) -> tuple[list[int], torch.Tensor, torch.Generator]:
    """The step's items and mirror flags, and its generator, which draws the rest of the step next."""
    generator = _step_generator(cfg.seed, step)
    picks, mirrored = _global_batch(buckets, cfg.batch_size * processes * cfg.gradient_accumulation, cfg.flip, generator)
    return picks, mirrored, generator


def _draw_step(cfg, scheduler, latent_shape, buckets, step: int, processes: int) -> StepDraw:
    picks, mirrored, generator = _step_picks(cfg, buckets, step, processes)
    items = len(picks)
    shape = (items, *latent_shape(picks[0]))
    noise = torch.randn(shape, generator=generator)
    if cfg.noise_offset:
        noise = noise + cfg.noise_offset * torch.randn((*shape[:2], 1, 1), generator=generator)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (items,), generator=generator)
    unpaired = torch.rand(items, generator=generator) < cfg.unpaired_share
    return StepDraw(picks, mirrored.tolist(), noise, timesteps, unpaired.tolist())


def _micro_batch_loss(cfg, pipe, unet, scheduler, latents, embeddings, dataset, draw: StepDraw, micro, accelerator) -> torch.Tensor:
    """The loss of this process's share of one micro-batch of the step's draw."""
    share = draw.share(micro, accelerator.process_index, accelerator.num_processes, cfg.batch_size)
    items = list(zip(draw.picks[share], draw.mirrored[share]))
    x0 = torch.stack([latents[latent_key("latent", i, m)] for i, m in items])
    start = x0
    if cfg.paired and latent_key("source", items[0][0], False) in latents:
        sources = torch.stack([latents[latent_key("source", i, m)] for i, m in items])
        start = torch.where(torch.tensor(draw.unpaired[share])[:, None, None, None], x0, sources)
    size_ids = torch.tensor([dataset.windows[i].time_ids(dataset.images[i].size, m) for i, m in items])
    device = accelerator.device
    x0, start, noise, timesteps = x0.to(device), start.to(device), draw.noise[share].to(device), draw.timesteps[share].to(device)
    text = _text_conditioning(cfg, pipe, embeddings, [dataset.caption(i) for i, _ in items], accelerator)
    with accelerator.autocast():
        return denoising_loss(
            unet, scheduler, start, x0, noise, timesteps, _unet_conditioning(text, size_ids.to(device)), cfg.min_snr_gamma
        )


def denoising_loss(unet, scheduler, start, x0, noise, timesteps, conditioning: dict, min_snr_gamma: float | None = None) -> torch.Tensor:
    """One batch's training loss: noise ``start`` to ``timesteps``, let the UNet predict, compare with the target.

    ``start`` is what gets noised and ``x0`` what the prediction must lead to: the same latents in
    ordinary training, the photo and its styled image for pairs (see :func:`stylekit.diffusion.prediction_target`).
    ``conditioning`` holds the UNet's text inputs (``encoder_hidden_states``, and SDXL's
    ``added_cond_kwargs``). Mean squared error per item, min-SNR weighted when ``min_snr_gamma`` is set.
    """
    noisy = scheduler.add_noise(start, noise, timesteps)
    prediction = unet(noisy, timesteps, **conditioning).sample
    kind = prediction_type(scheduler)
    target = prediction_target(noisy, x0, scheduler.alphas_cumprod[timesteps.cpu()], kind)
    per_item = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    return (per_item * min_snr_weights(scheduler.alphas_cumprod, timesteps, min_snr_gamma, kind).to(per_item.device)).mean()


def _text_conditioning(cfg, pipe, embeddings, captions: list[str], accelerator) -> dict[str, torch.Tensor]:
    """The captions' conditioning on the training device: from the cache, or through the text encoders when they train."""
    if cfg.text_encoder_lora:
        with accelerator.autocast():
            return caption_conditioning(pipe, captions)
    missing = sorted({c for c in captions if c not in embeddings})
    if missing:  # shuffled tags make new caption strings
        embeddings.update(encode_captions(pipe, missing))
    return {kind: tensor.to(accelerator.device) for kind, tensor in stack_conditioning(embeddings, captions).items()}


def _unet_conditioning(text: dict[str, torch.Tensor], size_ids: torch.Tensor) -> dict:
    """The UNet's keyword arguments: the text states (and which are real, where long captions padded a batch), and for
    SDXL the pooled text and the six size numbers per image."""
    conditioning = {"encoder_hidden_states": text["states"]}
    if "mask" in text:
        conditioning["encoder_attention_mask"] = text["mask"]
    if "pooled" in text:
        conditioning["added_cond_kwargs"] = added_conditioning(text["pooled"], size_ids)
    return conditioning


def average_over_processes(params: list[torch.nn.Parameter], accelerator) -> None:
    """Average the gradients of ``params`` over the training processes, as DDP does for the UNet's adapter: the text
    encoders' adapters (with ``text_encoder_lora``) are called inside ``encode_prompt``, outside any DDP wrapper."""
    if accelerator.num_processes > 1:
        for param in params:
            if param.grad is not None:
                param.grad = accelerator.reduce(param.grad, reduction="mean")


def _save_training_state(path, params, named, optimizer, lr_scheduler, step, losses) -> None:
    tensors = {f"adapter.{name}": p.detach() for name, p in zip(named, params)}
    optim_tensors, optim_meta = optimizer_state(optimizer)
    rng_tensors, rng_meta = rng_state()
    state = {"step": step, "losses": losses, "optimizer": optim_meta, "rng": rng_meta, "lr_scheduler": lr_scheduler.state_dict()}
    save_checkpoint(path, {**tensors, **optim_tensors, **rng_tensors}, state)


def _resume(path, params, named, optimizer, lr_scheduler) -> tuple[int, list[float]]:
    if not path.exists():
        return 0, []
    tensors, state = load_checkpoint(path)
    with torch.no_grad():
        for name, p in zip(named, params):
            p.copy_(tensors[f"adapter.{name}"])
    restore_optimizer(optimizer, tensors, state["optimizer"])
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    restore_rng(tensors, state["rng"])
    return state["step"], state["losses"]


def _check_same_run(run_dir: Path, cfg: TrainConfig, data_key: str, accelerator) -> None:
    """A checkpoint is only resumed by a run with the same settings and data. A finished run with other settings or data
    (a changed parameter, a rebuilt demo set, new defaults) is trained again from the start; an unfinished one is refused,
    so that its progress is not thrown away by mistake."""
    stamp, checkpoint = run_dir / "run.json", run_dir / CHECKPOINT
    current = json.loads(json.dumps({"config": asdict(cfg), "data": data_key, "processes": accelerator.num_processes}))
    for key in ("output_dir", "cpu_threads"):  # where results go and how fast: not what is learned
        current["config"].pop(key)
    previous = json.loads(stamp.read_text()) if stamp.exists() and checkpoint.exists() else current
    if previous != current and checkpoint_state(checkpoint)["step"] < previous.get("config", {}).get("steps", 0):
        raise RuntimeError(
            f"{run_dir} holds an unfinished checkpoint of a run with other settings or data; run again with its settings "
            f"(in {stamp}) to finish it, or delete {checkpoint} to start over"
        )
    accelerator.wait_for_everyone()  # every process has read the stamp before it changes
    if accelerator.is_main_process:
        if previous != current:
            changed = [key for key, value in current.items() if key != "config" and previous.get(key) != value]
            changed += [key for key, value in current["config"].items() if previous.get("config", {}).get(key) != value]
            print(f"{cfg.name}: its finished run had other {', '.join(changed)}; training it again from the start")
            checkpoint.unlink()
        stamp.write_text(json.dumps(current, indent=2))
    accelerator.wait_for_everyone()


def training_precision(requested: str) -> str:
    """The mixed precision a run uses: ``"no"`` on the CPU (it trains in fp32), else ``requested`` with ``"auto"`` resolved."""
    return "no" if pick_device().type == "cpu" else pick_mixed_precision(requested)


def _fresh_accelerator(cfg: TrainConfig) -> Accelerator:
    """An Accelerator for this run. accelerate keeps one state per process; a second training in the same kernel
    (with another precision, say) starts from a clean one instead of failing with "already initialized"."""
    AcceleratorState._reset_state()
    GradientState._reset_state()
    on_cpu = pick_device().type == "cpu"  # cpu=True also makes several launched CPU processes one DDP group
    return Accelerator(
        gradient_accumulation_steps=cfg.gradient_accumulation, mixed_precision=training_precision(cfg.mixed_precision), cpu=on_cpu
    )


def _checkpointing(cfg: TrainConfig) -> bool:
    """Gradient checkpointing as configured, or turned on because the GPU has less free memory than batch training needs."""
    threshold = get_profile(cfg.profile).train.checkpointing_below_gb
    if cfg.gradient_checkpointing or not threshold or not torch.cuda.is_available():
        return cfg.gradient_checkpointing
    free_gb = torch.cuda.mem_get_info()[0] / 2**30
    if free_gb < threshold:
        print(
            f"{cfg.name}: {free_gb:.1f} GB of GPU memory free (batch training without checkpointing wants {threshold:g}): checkpointing on"
        )
        return True
    return False


def free_memory() -> None:
    """Give back what a finished run held: Python garbage first, then the CUDA allocator's cache."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


ESTIMATE_AFTER = 10  # steps timed before the estimate of the time left is printed


def _spare_threads(cfg: TrainConfig, accelerator) -> int:
    """Torch threads this process's share of the cores has beyond training's own (0 on a GPU, or when the user set
    ``OMP_NUM_THREADS``): what caching latents in the background may use."""
    if accelerator.device.type != "cpu" or "OMP_NUM_THREADS" in os.environ:
        return 0
    processes = accelerator.num_processes
    return max(0, available_cores() // processes - thread_share(cfg.cpu_threads, processes))


def _latent_shape(pipe, dataset: PreparedDataset, index: int) -> tuple[int, int, int]:
    width, height = dataset.images[index].size
    factor = pipe.vae_scale_factor
    return (pipe.vae.config.latent_channels, height // factor, width // factor)


def _finish_caching(latents) -> None:
    if isinstance(latents, BackgroundLatents):
        latents.finish()


def _print_estimate(cfg: TrainConfig, steps: int, seconds: float, processes: int) -> None:
    """One line with the measured speed and the time left, for runs long enough to need it (over a minute left)."""
    left = seconds / steps * (cfg.steps - steps)
    if left > 60:
        images = steps * cfg.batch_size * cfg.gradient_accumulation * processes
        print(f"{cfg.name}: {images / seconds:.1f} images/s over the first {steps} steps; about {left / 60:.0f} min left", flush=True)


def _named_parameters(unet, encoders: list) -> list[tuple[str, torch.nn.Parameter]]:
    """The UNet's parameters and the text encoders' (``te.``, ``te2.``), with names for checkpoints."""
    named = list(unet.named_parameters())
    for number, encoder in enumerate(encoders, 1):
        prefix = "te." if number == 1 else f"te{number}."
        named += [(prefix + n, p) for n, p in encoder.named_parameters()]
    return named


class MemoryMonitor:
    """Peak memory added while a block runs, in MB: the CUDA allocator's peak on a GPU, else resident memory sampled every 5 ms.

    On a CPU the figure is what the process grew by, not the bytes training touched:
    memory freed earlier (while loading) is reused first, so it can read low.
    """

    def __init__(self):
        self.cuda = torch.cuda.is_available()
        self.peak_mb = 0.0

    def __enter__(self) -> MemoryMonitor:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return self
        self.process = psutil.Process()
        self.start = self.highest = self.process.memory_info().rss
        self.running = True
        self.sampler = threading.Thread(target=self._sample, daemon=True)
        self.sampler.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.highest = max(self.highest, self.process.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self.peak_mb = (torch.cuda.max_memory_allocated() - self.start) / 2**20
        else:
            self.running = False
            self.sampler.join()
            self.peak_mb = (self.highest - self.start) / 2**20


@torch.no_grad()
def prompt_images(txt2img, cfg: TrainConfig) -> list[Image.Image]:
    """The fixed validation prompts with the style's trigger, at the training's size and the profile's steps and guidance (seed 0)."""
    defaults = get_profile(cfg.profile).inference
    return [
        txt2img(
            style_prompt(cfg.trigger, prompt),
            height=cfg.resolution,
            width=cfg.resolution,
            num_inference_steps=defaults.steps,
            guidance_scale=defaults.guidance,
            generator=torch.Generator().manual_seed(0),
        ).images[0]
        for prompt in cfg.validation_prompts
    ]


class _TrainingPreview(Stylizer):
    """The stylizer on the pipeline being trained, at the training's size: its adapter is the style, switched on and off in place."""

    def __init__(self, pipe, cfg: TrainConfig):
        super().__init__(cfg.model or cfg.profile, profile=cfg.profile, pipe=pipe, resolution=cfg.resolution)
        self.cfg = cfg

    def activate(self, styles: dict[str, float], style_strength: float) -> None:
        switch_trained_adapter(self.pipe.unet, text_encoders(self.pipe), on=bool(styles) and style_strength != 0)

    def trigger(self, name: str) -> str:
        return self.cfg.trigger


@torch.no_grad()
def validation_images(pipe, cfg: TrainConfig, photo: Image.Image) -> list[Image.Image]:
    """During training: the validation prompts and one held-out photo through the stylizer at the profile's defaults."""
    try:
        styled_photo = _TrainingPreview(pipe, cfg).stylize(photo, cfg.name)[0]
    finally:
        switch_trained_adapter(pipe.unet, text_encoders(pipe), on=True)
    return [*prompt_images(as_task(pipe, "txt2img"), cfg), styled_photo]


@contextmanager
def pipeline_precision(unet, accelerator):
    """While previews run: the UNet answers in the pipeline's own (half) precision, under autocast.

    With mixed precision, ``accelerator.prepare`` makes the UNet return float32 for the loss; a pipeline's sampler would
    then hand float32 latents to its half-precision autoencoder and fail ("Input type (float) and bias type (c10::Half)").
    """
    patched, original = unet.__dict__.get("forward"), unet.__dict__.get("_original_forward")
    if patched is None or original is None:  # no mixed precision: nothing was patched
        yield
        return
    unet.forward = original
    try:
        with accelerator.autocast():
            yield
    finally:
        unet.forward = patched


def _save_validation(pipe, unet, cfg, photo, run_dir: Path, step: int, accelerator) -> None:
    unet.eval()
    with pipeline_precision(pipe.unet, accelerator):
        images = validation_images(pipe, cfg, photo)
    unet.train()
    folder = run_dir / "validation"
    folder.mkdir(exist_ok=True)
    save(image_grid([images], col_labels=_column_labels(cfg), title=f"{cfg.name}, step {step}"), folder / f"step_{step:05d}.png")


def _write_outputs(
    pipe, cfg: TrainConfig, run_dir: Path, losses: list[float], photo, start: int, cost: dict, accelerator
) -> dict[str, Path]:
    info = {
        "steps": cfg.steps,
        "learning_rate": cfg.learning_rate,
        "batch_size": cfg.batch_size,
        "gradient_accumulation": cfg.gradient_accumulation,
        "seed": cfg.seed,
        "resolution": cfg.resolution,
    }
    files = save_adapter(pipe, cfg.adapter(), run_dir, cfg.name, info, precision=cfg.save_precision)
    (run_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    (run_dir / "losses.json").write_text(json.dumps({"losses": losses, "resumed_from": start, **cost}))
    save(loss_curve({cfg.name: losses}), run_dir / "loss_curve.png")
    files.update(config=run_dir / "config.json", loss_curve=run_dir / "loss_curve.png")
    if cfg.validation_every:
        _save_validation(pipe, pipe.unet, cfg, photo, run_dir, cfg.steps, accelerator)
    return files


def train_adapter(config: TrainConfig, progress: bool = True, keep_pipeline: bool = False) -> TrainResult:
    """Train one style adapter as described by ``config``; resumes from its checkpoint if there is one.

    The pipeline is released when training ends (several styles in a row then fit on one GPU);
    ``keep_pipeline=True`` returns it in :attr:`TrainResult.pipeline`, with the trained adapter active.
    """
    cfg = config.resolved()
    accelerator = _fresh_accelerator(cfg)
    torch.manual_seed(cfg.seed)
    pipe = load_pipeline(
        cfg.model or cfg.profile,
        device=str(accelerator.device),
        dtype="fp32" if accelerator.mixed_precision == "no" else accelerator.mixed_precision,
    )
    report = check_dataset(cfg.dataset, min_size=cfg.resolution // 2)
    dataset = prepare_dataset(
        report,
        cfg.resolution,
        buckets=cfg.buckets,
        bucket_multiple=size_multiple(pipe),
        trigger=cfg.trigger,
        caption_dropout=cfg.caption_dropout,
        seed=cfg.seed,
    )
    buckets = dataset.buckets()  # item indices by image size, fixed for the run
    spare = _spare_threads(cfg, accelerator)
    background = (first_use_order(cfg, dataset, buckets, accelerator.num_processes), spare) if spare else None
    latents, embeddings, _ = load_or_build_cache(pipe, dataset, cfg.flip, outputs_dir() / "cache", background)
    data_key = cache_key(pipe, dataset, dataset.captions, cfg.flip)

    encoders = text_encoders(pipe)
    attach_adapter(pipe.unet, encoders, cfg.adapter())
    if _checkpointing(cfg):
        pipe.unet.enable_gradient_checkpointing()
    named = [n for n, p in _named_parameters(pipe.unet, encoders) if p.requires_grad]
    params = trainable_parameters(pipe.unet, *encoders)
    text_params = trainable_parameters(*encoders)  # the text encoders run inside diffusers' encode_prompt, not through DDP
    for p in params:
        p.data = p.data.float()  # adapters train in fp32 even when the base runs in half precision
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=1e-2)
    lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.steps)
    unet, optimizer = accelerator.prepare(pipe.unet, optimizer)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)  # keeps the model's prediction type and zero-terminal-SNR setting

    run_dir = Path(cfg.output_dir) / cfg.name
    run_dir.mkdir(parents=True, exist_ok=True)
    _check_same_run(run_dir, cfg, data_key, accelerator)
    start, losses = _resume(run_dir / CHECKPOINT, params, named, optimizer, lr_scheduler)
    photo = center_square(load_photos(split="held_out")[0].image, cfg.resolution)

    unet.train()
    started = time.perf_counter()
    bar = progress_bar(
        range(start, cfg.steps),
        initial=start,
        total=cfg.steps,
        desc=f"training {cfg.name}",
        disable=not (progress and accelerator.is_main_process),
        mininterval=1.0,  # one update a second, not one a step (a flood drops a kernel's messages)
    )
    latent_shape = partial(_latent_shape, pipe, dataset)
    on_cpu = accelerator.device.type == "cpu"
    threads = cpu_threads(cfg.cpu_threads, accelerator.num_processes) if on_cpu else nullcontext()
    with threads, MemoryMonitor() as memory:  # what training adds on top of the loaded model and data
        torch_threads = torch.get_num_threads()
        for step in bar:
            dataset.epoch = step
            step_loss = 0.0
            draw = _draw_step(cfg, scheduler, latent_shape, buckets, step, accelerator.num_processes)
            for micro in range(cfg.gradient_accumulation):
                sync = micro == cfg.gradient_accumulation - 1
                with nullcontext() if sync else accelerator.no_sync(unet):
                    loss = _micro_batch_loss(cfg, pipe, unet, scheduler, latents, embeddings, dataset, draw, micro, accelerator)
                    accelerator.backward(loss)  # accelerate divides by the accumulation steps itself
                step_loss += accelerator.reduce(loss.detach(), reduction="mean").item() / cfg.gradient_accumulation
            if not math.isfinite(step_loss):
                raise TrainingDiverged(
                    f"{cfg.name}: the loss became {step_loss} at step {step + 1}; training stopped. The last good checkpoint "
                    f"({run_dir / CHECKPOINT}) is kept. Lower the learning rate (now {cfg.learning_rate}) and run again."
                )
            average_over_processes(text_params, accelerator)
            accelerator.clip_grad_norm_(params, 1.0)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(step_loss)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", refresh=False)
            done = step + 1
            if done == start + ESTIMATE_AFTER and accelerator.is_main_process:
                _print_estimate(cfg, done - start, time.perf_counter() - started, accelerator.num_processes)
            if accelerator.is_main_process and ((cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or done == cfg.steps):
                _save_training_state(run_dir / CHECKPOINT, params, named, optimizer, lr_scheduler, done, losses)
            if accelerator.is_main_process and cfg.validation_every and done % cfg.validation_every == 0 and done < cfg.steps:
                _finish_caching(latents)  # the autoencoder is the caching thread's until then
                _save_validation(pipe, unet, cfg, photo, run_dir, done, accelerator)
        _finish_caching(latents)
    seconds = time.perf_counter() - started
    accelerator.wait_for_everyone()
    unet.eval()
    files: dict[str, Path] = {}
    if accelerator.is_main_process:
        cost = {"seconds_this_session": round(seconds, 2), "peak_memory_mb": round(memory.peak_mb, 1), "torch_threads": torch_threads}
        files = _write_outputs(pipe, cfg, run_dir, losses, photo, start, cost, accelerator)
    trained = (cfg.steps - start) * cfg.batch_size * cfg.gradient_accumulation * accelerator.num_processes
    result = TrainResult(run_dir, files, losses, seconds, trained / seconds if seconds > 0 else 0.0, start, memory.peak_mb)
    if keep_pipeline:
        result.pipeline = pipe
    else:
        del pipe, unet, optimizer, params, latents, embeddings
        accelerator.free_memory()
        free_memory()
    return result


def before_after_grid(results: dict[str, TrainResult]):
    """The validation prompts and a held-out photo through the stylizer at the profile's defaults, without adapter and then
    with each style's saved file."""
    configs = {name: TrainConfig(**read_run_config(r.folder)) for name, r in results.items()}
    first = next(iter(configs.values())).resolved()
    stylizer = Stylizer(first.model or first.profile, profile=first.profile, resolution=first.resolution)
    for name, result in results.items():
        stylizer.add_style(name, result.folder)
    txt2img = as_task(stylizer.pipe, "txt2img")
    photo = center_square(load_photos(split="held_out")[0].image, first.resolution)
    rows, labels = [], []
    for name, cfg in {"no adapter": first, **configs}.items():
        styles = {} if name == "no adapter" else {name: 1.0}
        stylizer.activate(styles, 1.0)
        rows.append([*prompt_images(txt2img, cfg), stylizer.stylize(photo, styles)[0]])
        labels.append(name)
    return image_grid(rows, row_labels=labels, col_labels=_column_labels(first))


def _column_labels(cfg: TrainConfig) -> list[str]:
    """The validation grid's column titles: each prompt, shortened and wrapped, then how the photo was stylized."""
    defaults = get_profile(cfg.profile).inference
    prompts = [textwrap.fill(textwrap.shorten(p, 34, placeholder="..."), 18) for p in cfg.validation_prompts]
    return [*prompts, f"held-out photo,\n{defaults.method}, content {defaults.content_strength:g}"]
