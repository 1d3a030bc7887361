"""Loading a base Stable Diffusion pipeline: profiles, hub ids, local folders, single files.

    pipe = load_pipeline("tiny")                      # the embedded model, CPU, offline
    pipe = load_pipeline("sd15", task="txt2img")      # a profile's hub model
    pipe = load_pipeline("path/to/diffusers_folder")
    pipe = load_pipeline("model.safetensors", config="path/to/diffusers_folder")

Device and dtype are chosen for the machine (CUDA, MPS, CPU; half precision on
GPUs, float32 on CPU). :func:`as_task` switches between txt2img and img2img
without loading anything again.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import warnings
from pathlib import Path

import torch
from diffusers import (
    AutoPipelineForImage2Image,
    AutoPipelineForText2Image,
    DiffusionPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from diffusers.utils import logging as diffusers_logging
from safetensors import safe_open
from transformers.utils import logging as transformers_logging

from .diffusion import prediction_type
from .profiles import PROFILES

__all__ = [
    "PICKLE_SUFFIXES",
    "ModelLoadError",
    "as_task",
    "bf16_native",
    "cpu_name",
    "decode_latents",
    "encode_pixels",
    "export_single_file",
    "is_sdxl",
    "load_pipeline",
    "original_unet_names",
    "pick_device",
    "pick_dtype",
    "pick_mixed_precision",
    "quiet_loading",
    "size_multiple",
    "text_encoders",
    "tiny_model_dir",
    "tokenize",
]

PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".pkl"}
TASKS = {"img2img": AutoPipelineForImage2Image, "txt2img": AutoPipelineForText2Image}
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says why and what to do."""


def tiny_model_dir() -> Path:
    """The folder of the embedded tiny model shipped inside the package."""
    return Path(__file__).parent / "tiny" / "model"


def pick_device(device: str = "auto") -> torch.device:
    """``"auto"`` picks CUDA, then Apple MPS, then the CPU."""
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the system has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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


@contextlib.contextmanager
def cpu_threads(wanted: int = 0, processes: int = 1):
    """Run the block with torch on ``wanted`` threads (0: all its share), never more than this process's share of the
    cores (cores / ``processes``), so that processes training side by side do not spin against each other. A count the
    user chose with ``OMP_NUM_THREADS`` is kept. The previous count is restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(thread_share(wanted, processes))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def thread_share(wanted: int = 0, processes: int = 1) -> int:
    """The torch threads :func:`cpu_threads` runs a block with: ``wanted`` (0: all of this process's share of the
    cores), at most that share; the current count when the user chose one with ``OMP_NUM_THREADS``."""
    if "OMP_NUM_THREADS" in os.environ:
        return torch.get_num_threads()
    share = max(1, available_cores() // processes)
    return min(wanted, share) if wanted else share


def bf16_native() -> bool:
    """Whether the CUDA card computes bfloat16 natively (compute capability 8.0, Ampere, and newer).

    ``torch.cuda.is_bf16_supported()`` also answers True on a T4 (7.5), where bf16 is emulated and several times slower than fp16.
    """
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8


def pick_mixed_precision(requested: str = "auto") -> str:
    """``"auto"``: bf16 on cards that compute it natively, fp16 on other CUDA cards, ``"no"`` elsewhere."""
    if requested != "auto":
        return requested
    if not torch.cuda.is_available():
        return "no"
    return "bf16" if bf16_native() else "fp16"


def pick_dtype(device: torch.device, dtype: str | torch.dtype = "auto", prefer_bf16: bool = False) -> torch.dtype:
    """``"auto"``: float32 on CPU, float16 on MPS, float16 or (where native and preferred) bfloat16 on CUDA."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype != "auto":
        return {
            "fp32": torch.float32,
            "float32": torch.float32,
            "fp16": torch.float16,
            "float16": torch.float16,
            "bf16": torch.bfloat16,
            "bfloat16": torch.bfloat16,
        }[dtype]
    if device.type == "cuda":
        return torch.bfloat16 if prefer_bf16 and bf16_native() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    """Token ids of ``captions``, padded to the tokenizer's full length (what Stable Diffusion's text encoder expects)."""
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids


def is_sdxl(pipe) -> bool:
    """Whether ``pipe`` has SDXL's layout (two text encoders, pooled text and size conditioning)."""
    return getattr(pipe, "text_encoder_2", None) is not None


def text_encoders(pipe) -> list:
    """The pipeline's text encoders: one for Stable Diffusion 1.x / 2.x, two for SDXL."""
    return [pipe.text_encoder, pipe.text_encoder_2] if is_sdxl(pipe) else [pipe.text_encoder]


def size_multiple(pipe) -> int:
    """What every image side must be a multiple of for ``pipe``: its autoencoder's factor times its UNet's downsampling
    (64 for Stable Diffusion 1.5 and SDXL, 16 for the tiny model)."""
    return pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1)


@contextlib.contextmanager
def _vae_precision(vae):
    """Run an fp16 VAE that its config says to upcast (SDXL's: it overflows to NaN in fp16) in fp32, then put it back."""
    upcast = vae.dtype == torch.float16 and vae.config.get("force_upcast", False)
    if upcast:
        with quiet_loading():  # diffusers notes every such cast
            vae.to(torch.float32)
    try:
        yield vae.dtype
    finally:
        if upcast:
            with quiet_loading():
                vae.to(torch.float16)


@torch.no_grad()
def encode_pixels(vae, pixels: torch.Tensor) -> torch.Tensor:
    """Posterior means of ``pixels`` (in [-1, 1]), scaled as the UNet expects; float32."""
    with _vae_precision(vae) as dtype:
        return vae.encode(pixels.to(vae.device, dtype)).latent_dist.mean.float() * vae.config.scaling_factor


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1] of scaled ``latents``; float32."""
    with _vae_precision(vae) as dtype:
        return vae.decode((latents / vae.config.scaling_factor).to(vae.device, dtype)).sample.float()


def as_task(pipe: DiffusionPipeline, task: str) -> DiffusionPipeline:
    """The same loaded components as a txt2img or img2img pipeline (nothing is reloaded)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: use 'img2img' or 'txt2img'")
    switched = TASKS[task].from_pipe(pipe)
    switched.set_progress_bar_config(disable=True)
    return switched


def load_pipeline(
    model: str | os.PathLike = "tiny",
    task: str = "img2img",
    device: str = "auto",
    dtype: str | torch.dtype = "auto",
    allow_pickle: bool = False,
    config: str | os.PathLike | None = None,
    safety_checker: bool = False,
) -> DiffusionPipeline:
    """Load a Stable Diffusion pipeline ready for ``task`` on the chosen device.

    Args:
        model: a profile name (``"tiny"``, ``"sd15"``, ``"sdxl"``), a hub id
            (``"org/name"``), a local diffusers folder, or a single-file
            checkpoint (``.safetensors``; pickle files only with ``allow_pickle``).
        task: ``"img2img"`` or ``"txt2img"``; switch later with :func:`as_task`.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``...
        dtype: ``"auto"``, ``"fp32"``, ``"fp16"``, ``"bf16"`` or a torch dtype.
        allow_pickle: accept ``.ckpt`` / ``.pt`` / ``.bin`` files, which can run code when loaded.
        config: for a single file, a diffusers folder or hub id giving the component configs.
        safety_checker: keep the NSFW checker that some models ship (SD 1.5's, 0.6 GB); off by default,
            and never needed for training. The stylizer runs it on every result when it is kept.

    From the hub, half precision downloads the repository's fp16 variant where it has one
    (half the download: about 2.7 GB instead of 5.5 for SD 1.5).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: use 'img2img' or 'txt2img'")
    source, is_xl = _resolve(model)
    target = pick_device(device)
    torch_dtype = pick_dtype(target, dtype, prefer_bf16=is_xl)
    path = Path(source)
    checker = {} if safety_checker else {"safety_checker": None, "requires_safety_checker": False}
    with quiet_loading():
        if path.suffix.lower() in PICKLE_SUFFIXES | {".safetensors"}:
            pipe = _load_single_file(path, torch_dtype, allow_pickle, config)
        elif path.is_dir():
            _check_diffusers_folder(path)
            pipe = DiffusionPipeline.from_pretrained(path, torch_dtype=torch_dtype, use_safetensors=not allow_pickle, **checker)
        else:
            pipe = _load_from_hub(str(source), torch_dtype, allow_pickle, checker)
    try:
        prediction_type(pipe.scheduler)
    except ValueError as error:
        raise ModelLoadError(str(error)) from None
    pipe.set_progress_bar_config(disable=True)
    return as_task(pipe.to(target), task)


@contextlib.contextmanager
def quiet_loading():
    """Loading (or encoding prompts) without per-component progress bars, dtype-argument deprecation notes, info-level
    warnings, or a note each time a caption is cut to the text encoder's length (it always was)."""
    verbosity, text_verbosity = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            # several style adapters in one model is what the stylizer wants
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute", category=UserWarning)
            yield
    finally:
        diffusers_logging.set_verbosity(verbosity)
        transformers_logging.set_verbosity(text_verbosity)
        diffusers_logging.enable_progress_bar()
        transformers_logging.enable_progress_bar()


def _resolve(model) -> tuple[str | Path, bool]:
    """Map a profile name to its model; say whether it is an SDXL model."""
    name = str(model)
    if name in PROFILES:
        profile = PROFILES[name]
        if profile.base_model != "embedded":
            return profile.base_model, profile.pipeline == "sdxl"
        if not (tiny_model_dir() / "model_index.json").exists():
            raise ModelLoadError(
                f"the embedded tiny model is missing from {tiny_model_dir()}: reinstall stylekit, or retrain it with `python -m stylekit.tiny train`"
            )
        return tiny_model_dir(), False
    path = Path(name)
    if path.exists():
        return path, False
    if path.suffix.lower() in PICKLE_SUFFIXES | {".safetensors"}:
        raise ModelLoadError(f"checkpoint file {path} does not exist; check the path")
    if _HUB_ID.match(name) and not name.startswith((".", "~")):
        return name, "xl" in name.lower()
    if path.is_absolute() or name.startswith((".", "~")) or os.sep in name:
        raise ModelLoadError(f"model folder {path} does not exist; check the path, or save a pipeline there with pipe.save_pretrained")
    raise ModelLoadError(
        f"{name!r} is not a profile ({', '.join(PROFILES)}), an existing folder or file, or a hub id like 'org/model'; "
        "check the spelling or the path"
    )


def _check_diffusers_folder(path: Path) -> None:
    index = path / "model_index.json"
    if not index.exists():
        raise ModelLoadError(f"{path} is not a diffusers model folder: {index.name} is missing (save one with pipe.save_pretrained)")
    components = json.loads(index.read_text())
    missing = [
        name
        for name, spec in components.items()
        if not name.startswith("_") and isinstance(spec, list) and spec[0] is not None and not (path / name).is_dir()
    ]
    if missing:
        raise ModelLoadError(
            f"{path} is incomplete: component folder(s) {', '.join(missing)} missing; copy or download the whole model folder again"
        )


def _load_single_file(path: Path, torch_dtype, allow_pickle: bool, config) -> DiffusionPipeline:
    if not path.exists():
        raise ModelLoadError(f"checkpoint file {path} does not exist; check the path")
    if path.suffix.lower() in PICKLE_SUFFIXES and not allow_pickle:
        raise ModelLoadError(
            f"{path} is a pickle checkpoint, which can run arbitrary code when loaded; "
            "use a .safetensors file, or pass allow_pickle=True if you trust its source"
        )
    pipeline_class = StableDiffusionXLPipeline if _is_sdxl_checkpoint(path) else StableDiffusionPipeline
    kwargs = {"torch_dtype": torch_dtype}
    if config is not None:
        kwargs["config"] = str(config)
    try:
        return pipeline_class.from_single_file(str(path), **kwargs)
    except OSError as error:
        if _offline(error):
            raise ModelLoadError(
                f"loading {path} needs the component configs of its base model, which are not cached and the hub is not reachable; "
                "pass config= a local diffusers folder of the same architecture"
            ) from error
        raise


def _is_sdxl_checkpoint(path: Path) -> bool:
    if path.suffix.lower() != ".safetensors":
        return False
    with safe_open(str(path), framework="pt") as handle:
        return any(key.startswith("conditioner.embedders.1.") for key in handle.keys())  # noqa: SIM118 (safe_open is not iterable)


def _from_pretrained(model_id: str, **kwargs) -> DiffusionPipeline:
    """``from_pretrained`` with the fp16 variant when loading in half precision, the full weights when there is no such variant."""
    if kwargs["torch_dtype"] != torch.float32:
        try:
            return DiffusionPipeline.from_pretrained(model_id, variant="fp16", **kwargs)
        except (OSError, ValueError) as error:
            if "variant" not in str(error).lower():
                raise
    return DiffusionPipeline.from_pretrained(model_id, **kwargs)


def _load_from_hub(model_id: str, torch_dtype, allow_pickle: bool, checker: dict) -> DiffusionPipeline:
    kwargs = {"torch_dtype": torch_dtype, "use_safetensors": not allow_pickle, **checker}
    try:
        return _from_pretrained(model_id, local_files_only=True, **kwargs)
    except (OSError, ValueError) as cached_error:
        if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
            raise _offline_error(model_id) from cached_error
    try:
        return _from_pretrained(model_id, **kwargs)
    except OSError as error:
        if _offline(error):
            raise _offline_error(model_id) from error
        raise ModelLoadError(f"could not load {model_id!r} from the hub: {error}") from error


def _offline_error(model_id: str) -> ModelLoadError:
    return ModelLoadError(
        f"{model_id!r} is a hub id, but it is not in the local cache and the hub cannot be reached (offline). "
        f"Download it once where there is network (`hf download {model_id}`), or use the 'tiny' profile, which works offline. "
        f"If you meant a local folder: ./{model_id} does not exist"
    )


def _offline(error: BaseException) -> bool:
    text = repr(error).lower()
    return any(
        word in text for word in ("offline", "connect", "resolve", "network", "timed out", "max retries", "cannot find the requested files")
    )


# ---------------------------------------------------------------------------
# Single-file export (the original Stable Diffusion key layout)
# ---------------------------------------------------------------------------

_RESNET_RENAMES = [
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("time_emb_proj.", "emb_layers.1."),
    ("conv_shortcut.", "skip_connection."),
]


def _unet_prefix_map(config) -> list[tuple[str, str]]:
    """Diffusers -> original (ldm) prefixes for a UNet of any depth."""
    per_level = config["layers_per_block"]
    levels = len(config["block_out_channels"])
    pairs = [
        ("time_embedding.linear_1.", "time_embed.0."),
        ("time_embedding.linear_2.", "time_embed.2."),
        ("conv_in.", "input_blocks.0.0."),
        ("conv_norm_out.", "out.0."),
        ("conv_out.", "out.2."),
        ("mid_block.attentions.0.", "middle_block.1."),
    ]
    pairs += [(f"mid_block.resnets.{j}.", f"middle_block.{2 * j}.") for j in range(2)]
    for i in range(levels):
        for j in range(per_level):
            block = (per_level + 1) * i + j + 1
            pairs += [
                (f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{block}.0."),
                (f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{block}.1."),
            ]
        if i < levels - 1:
            pairs.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(per_level + 1) * (i + 1)}.0.op."))
        has_attention = "CrossAttn" in config["up_block_types"][i]
        for j in range(per_level + 1):
            block = (per_level + 1) * i + j
            pairs += [
                (f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{block}.0."),
                (f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{block}.1."),
            ]
        if i < levels - 1:
            pairs.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{(per_level + 1) * i + per_level}.{2 if has_attention else 1}."))
    return pairs


def _vae_prefix_map(config) -> list[tuple[str, str]]:
    levels = len(config["block_out_channels"])
    pairs = []
    for part in ("encoder", "decoder"):
        pairs.append((f"{part}.conv_norm_out.", f"{part}.norm_out."))
        pairs += [(f"{part}.mid_block.resnets.{j}.", f"{part}.mid.block_{j + 1}.") for j in range(2)]
    for i in range(levels):
        pairs += [
            (f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block."),
            (f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."),
        ]
        pairs += [
            (f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{levels - 1 - i}.block."),
            (f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{levels - 1 - i}.upsample."),
        ]
    return pairs


def _rename(key: str, prefixes: list[tuple[str, str]], resnet_renames: list[tuple[str, str]]) -> str:
    for new, old in prefixes:
        if key.startswith(new):
            key = old + key[len(new) :]
            if "resnets" in new:
                for a, b in resnet_renames:
                    key = key.replace(a, b)
            return key
    return key


def original_unet_names(unet) -> dict[str, str]:
    """Every UNet layer's name in the original (ldm / sgm) layout, by its diffusers name:
    ``down_blocks.1.attentions.0.proj_in`` -> ``input_blocks.4.1.proj_in``, ``down_blocks.0.resnets.0.conv1`` -> ``input_blocks.1.0.in_layers.2``.
    Kohya's SDXL LoRA files name layers this way."""
    prefixes = _unet_prefix_map(unet.config)
    return {name: _rename(name + ".", prefixes, _RESNET_RENAMES)[:-1] for name, _ in unet.named_modules() if name}


def export_single_file(pipe: StableDiffusionPipeline, path: str | os.PathLike) -> Path:
    """Write a Stable Diffusion 1.x pipeline as one ``.safetensors`` checkpoint in the original layout.

    The file loads in AUTOMATIC1111 / ComfyUI-style tools and back through
    :func:`load_pipeline` (with ``config=`` a folder of the same architecture).
    """
    from safetensors.torch import save_file

    if pipe.vae.config.get("mid_block_add_attention", True):
        raise ValueError(
            "export_single_file supports autoencoders without a mid-block attention (reshaping those weights is not implemented)"
        )
    unet_map, vae_map = _unet_prefix_map(pipe.unet.config), _vae_prefix_map(pipe.vae.config)
    vae_inner = [("conv_shortcut.", "nin_shortcut.")]
    tensors = {}
    for key, value in pipe.unet.state_dict().items():
        tensors["model.diffusion_model." + _rename(key, unet_map, _RESNET_RENAMES)] = value
    for key, value in pipe.vae.state_dict().items():
        tensors["first_stage_model." + _rename(key, vae_map, vae_inner)] = value
    for key, value in pipe.text_encoder.state_dict().items():
        # the original layout nests CLIP under text_model. (recent transformers flatten it)
        tensors["cond_stage_model.transformer." + ("" if key.startswith("text_model.") else "text_model.") + key] = value
    path = Path(path)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path
