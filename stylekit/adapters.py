"""Style adapters: one description (kind, rank, alpha, targets), attach, save, load.

LoRA goes through peft, the way diffusers trains it, and is saved twice:

- ``pytorch_lora_weights.safetensors``: the diffusers layout, for
  ``pipe.load_lora_weights(folder)``;
- ``<name>.safetensors``: a kohya-format single file (``lora_unet_...`` keys with
  ``lora_down`` / ``lora_up`` / ``alpha``, ``ss_*`` and ``modelspec.*`` metadata)
  that AUTOMATIC1111 and ComfyUI load, and diffusers too. As kohya's sd-scripts
  name them: Stable Diffusion 1.x / 2.x layers by their diffusers names
  (``lora_unet_down_blocks_0_attentions_0_...``, text encoder
  ``lora_te_text_model_encoder_...``); SDXL layers by their original (sgm) names
  (``lora_unet_input_blocks_4_1_...``, text encoders ``lora_te1_text_model_...`` /
  ``lora_te2_text_model_...``), whatever the installed transformers calls them.

DoRA and the LyCORIS kinds (LoCon, LoHa, LoKr, OFT, BOFT) go through the
``lycoris`` package, targeting the same UNet layers by name, and are saved once,
as ``<name>.safetensors`` with LyCORIS's own keys (``lora_unet_...hada_w1_a``,
``lokr_w1``, ``oft_blocks``...) that AUTOMATIC1111 and ComfyUI load; stylekit
loads them back through ``lycoris`` with a multiplier for strength. DoRA keeps
one magnitude per input column (``dora_scale`` shaped ``[1, in, ...]``), the one
axis that AUTOMATIC1111 and ComfyUI both read the way stylekit applies it.

Any file a user brings loads the same way (:func:`load_adapter`): kohya LoRA,
LoCon, LoHa, LoKr and DoRA files, LyCORIS files and diffusers files. A file is
checked against the model before anything is applied: layers it names that the
model lacks, keys it holds that stylekit cannot place, or shapes that differ stop
the load with an :class:`AdapterMismatch` that lists them (and says which model
the file was made for, where it tells); a file that is not a readable
``.safetensors`` file stops it with an :class:`AdapterFileError`.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import save_file

from .checkpoints import atomic_write
from .models import is_sdxl, original_unet_names, quiet_loading, text_encoders
from .plots import Table

__all__ = [
    "DIFFUSERS_WEIGHTS",
    "KINDS",
    "SAVE_PRECISIONS",
    "AdapterFileError",
    "AdapterMismatch",
    "AdapterSpec",
    "adapter_file",
    "find_adapter_file",
    "adapter_state",
    "attach_adapter",
    "load_adapter",
    "read_adapter_file",
    "save_adapter",
    "save_dtype",
    "set_adapter_weights",
    "trainable_parameters",
]

DIFFUSERS_WEIGHTS = "pytorch_lora_weights.safetensors"
SAVE_PRECISIONS = {"fp16": torch.float16, "fp32": torch.float32}  # how the kohya and LyCORIS files store their weights
ATTENTION_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
# the UNet's first and last convolutions too: without them an adapter cannot move the predicted image far (a
# norm sits before conv_out), which a style that repaints a photo (pencil on white paper) needs
CONV_TARGETS = ("conv1", "conv2", "conv_shortcut", "proj_in", "proj_out", "conv_in", "conv_out")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
PEFT_KINDS = ("lora",)
# stylekit kind -> lycoris algo; DoRA is LyCORIS's LoRA with weight decomposition (see LYCORIS_OPTIONS)
LYCORIS_ALGOS = {"dora": "lora", "locon": "locon", "loha": "loha", "lokr": "lokr", "oft": "diag-oft", "boft": "boft"}
# DoRA's magnitude per input column: AUTOMATIC1111 reads dora_scale only that way, ComfyUI reads it by its shape
LYCORIS_OPTIONS = {"dora": {"dora_wd": True, "wd_on_output": False}}
KINDS = (*PEFT_KINDS, *LYCORIS_ALGOS)
LYCORIS_PREFIX = "lora_unet"  # key prefix that AUTOMATIC1111 and ComfyUI expect for UNet layers
LYCORIS_MODULE = "lycoris"  # the trained LyCORIS network is registered on the UNet under this name
TEXT_ENCODER_NAMES = ("text_encoder", "text_encoder_2")  # the pipeline's attribute for each text encoder, in order
TEXT_MODEL = "text_model"  # the level CLIP's text layers sit under in kohya's names (transformers 5 dropped it from CLIPTextModel)
# names files use beside kohya's: LyCORIS names SDXL's UNet layers by their diffusers names too, and some SD 1.x files call
# their one text encoder lora_te1
FILE_ALIASES = {"unet": LYCORIS_PREFIX, "text_encoder": "lora_te1"}
KOHYA_PARAMETERS = ("lora_down.weight", "lora_up.weight", "alpha")
PICKLE_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save's zip archive, a bare pickle
# lycoris keeps its preset on the class: every preset stylekit applies starts from this empty one
EMPTY_PRESET = {
    "target_module": [],
    "target_name": [],
    "module_algo_map": {},
    "name_algo_map": {},
    "exclude_name": [],
    "use_fnmatch": False,
}


class AdapterMismatch(ValueError):
    """An adapter file does not fit the model it is being loaded into."""


class AdapterFileError(ValueError):
    """A file given as an adapter is not a readable ``.safetensors`` file (truncated, corrupted, or a pickle)."""


@dataclass
class AdapterSpec:
    """What to train: the adapter kind, its size, and where it goes.

    Args:
        kind: ``"lora"``, ``"dora"`` (weight-decomposed LoRA), or a LyCORIS kind: ``"locon"``,
            ``"loha"`` (Hadamard product of two low-rank pairs), ``"lokr"`` (Kronecker product),
            ``"oft"`` (block-diagonal orthogonal fine-tuning), ``"boft"`` (butterfly OFT).
        rank: rank of the low-rank update (LoRA, DoRA, LoCon, LoHa, LoKr); for OFT and BOFT,
            the block size (LyCORIS's ``dim``). More = more capacity, bigger file.
        alpha: the update is scaled by ``alpha / rank`` (low-rank kinds).
        factor: LoKr's Kronecker factor (``-1``: as balanced as the layer allows).
        target_modules: UNet layer names to adapt (default: attention projections).
        conv: also adapt the UNet's ResNet convolutions, attention in/out projections and its first and last convolutions.
        text_encoder: also adapt the text encoder's attention projections (LoRA only).
    """

    kind: str = "lora"
    rank: int = 4
    alpha: float = 4.0
    factor: int = -1
    target_modules: tuple[str, ...] = ATTENTION_TARGETS
    conv: bool = False
    text_encoder: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown adapter kind {self.kind!r}: choose one of {', '.join(KINDS)}")
        if self.text_encoder and self.lycoris:
            raise ValueError(f"text-encoder adapters are LoRA only; train {self.kind!r} on the UNet (text_encoder=False)")
        self.target_modules = tuple(self.target_modules)

    @property
    def lycoris(self) -> bool:
        """Whether this kind is trained and loaded through the lycoris package."""
        return self.kind in LYCORIS_ALGOS

    def unet_targets(self) -> list[str]:
        return list(self.target_modules) + (list(CONV_TARGETS) if self.conv else [])

    def lycoris_preset(self) -> dict:
        """A LyCORIS preset that wraps exactly the layers named by :meth:`unet_targets`, nothing else.

        LyCORIS's built-in presets wrap every linear and convolution inside whole
        blocks (``Transformer2DModel``, ``ResnetBlock2D``...), feed-forward layers
        included; naming the layers keeps every kind on the same targets as LoRA.
        """
        names = "|".join(re.escape(t) for t in self.unet_targets())
        return {**EMPTY_PRESET, "target_name": [rf"(.*\.)?({names})$"], "enable_conv": True, "lora_prefix": LYCORIS_PREFIX}

    def unet_config(self) -> LoraConfig:
        targets = self.unet_targets()
        return LoraConfig(r=self.rank, lora_alpha=self.alpha, init_lora_weights="gaussian", target_modules=targets)

    def text_config(self) -> LoraConfig:
        return LoraConfig(r=self.rank, lora_alpha=self.alpha, init_lora_weights="gaussian", target_modules=list(TEXT_TARGETS))


def _quiet_lycoris():
    from lycoris.logging import logger

    logger.setLevel(logging.ERROR)


def attach_adapter(unet, text_encoder, spec: AdapterSpec) -> None:
    """Freeze the base model and add fresh trainable adapter layers as described by ``spec``.

    ``text_encoder`` is the text encoder, or a list of them (SDXL has two); with
    ``spec.text_encoder`` each gets its own LoRA. A LyCORIS network is registered on
    the UNet (``unet.lycoris``), so optimizers, DDP and checkpoints see its parameters as the UNet's.
    """
    encoders = list(text_encoder) if isinstance(text_encoder, (list, tuple)) else [text_encoder]
    unet.requires_grad_(False)
    for encoder in encoders:
        encoder.requires_grad_(False)
    if spec.lycoris:
        from lycoris import LycorisNetwork, create_lycoris

        _quiet_lycoris()
        LycorisNetwork.apply_preset(spec.lycoris_preset())
        network = create_lycoris(
            unet,
            1.0,
            linear_dim=spec.rank,
            linear_alpha=spec.alpha,
            algo=LYCORIS_ALGOS[spec.kind],
            factor=spec.factor,
            conv_dim=spec.rank,
            **LYCORIS_OPTIONS.get(spec.kind, {}),
        )
        if not network.loras:
            raise ValueError(f"no UNet layer matches the targets {spec.unet_targets()}")
        network.apply_to()
        for layer in network.loras:
            if getattr(layer, "wd", False):  # DoRA: strength as in the files stylekit writes and loads
                _strength_as_automatic1111(layer)
        network.requires_grad_(True)
        unet.add_module(LYCORIS_MODULE, network)
        return
    unet.add_adapter(spec.unet_config())
    if spec.text_encoder:
        for encoder in encoders:
            encoder.add_adapter(spec.text_config())


LAYER_GROUPS = (
    ("attention q/k/v/out", r"attn[12]\.(to_q|to_k|to_v|to_out\.0)$"),
    ("attention proj in/out", r"\.(proj_in|proj_out)$"),
    ("feed-forward", r"\.ff\."),
    ("ResNet convolutions", r"resnets\.\d+\.(conv1|conv2|conv_shortcut)$"),
    ("time embedding", r"(time_emb_proj|time_embedding)"),
    ("norms", r"norm"),
    ("up/down-sampling convs", r"(upsamplers|downsamplers)"),
    ("first and last convs", r"^(conv_in|conv_out)$"),
)


def layer_group(name: str) -> str:
    """A readable group for a UNet layer name (what a preset's coverage is reported by)."""
    return next((group for group, pattern in LAYER_GROUPS if re.search(pattern, name)), "other")


def _coverage_presets() -> dict[str, dict]:
    from lycoris.config import PRESET

    return {
        "lycoris defaults (no preset)": {"target_module": ["Linear", "Conv1d", "Conv2d", "Conv3d", "GroupNorm", "LayerNorm"]},
        "classes of the 'full' preset": {
            "target_module": PRESET["full"]["unet_target_module"],
            "target_name": PRESET["full"]["unet_target_name"],
        },
        "classes of the 'attn-only' preset": {"target_module": PRESET["attn-only"]["unet_target_module"]},
        "stylekit: attention": AdapterSpec(kind="loha").lycoris_preset(),
        "stylekit: attention + conv": AdapterSpec(kind="loha", conv=True).lycoris_preset(),
    }


def lycoris_coverage(unet, presets: dict[str, dict] | None = None) -> dict[str, list[str]]:
    """The UNet layers that ``create_lycoris`` wraps under each preset (``{label: preset dict}``); the UNet is not changed.

    By default compares lycoris's own defaults and the UNet classes its built-in presets
    name with stylekit's named targets: a preset naming classes this model does not use wraps nothing.
    """
    from lycoris import LycorisNetwork, create_lycoris

    presets = presets or _coverage_presets()
    _quiet_lycoris()
    names = {f"{LYCORIS_PREFIX}_{n}".replace(".", "_"): n for n, _ in unet.named_modules() if n}
    coverage = {}
    for label, preset in presets.items():
        LycorisNetwork.apply_preset({**EMPTY_PRESET, **preset, "lora_prefix": LYCORIS_PREFIX})
        network = create_lycoris(unet, 1.0, linear_dim=1, linear_alpha=1, algo="locon", warn_on_unmatched=False)
        coverage[label] = [names[lora.lora_name] for lora in network.loras]
    return coverage


def coverage_table(coverage: dict[str, list[str]]) -> Table:
    """Layers wrapped per preset, counted by layer group."""
    groups = [group for group, _ in LAYER_GROUPS] + ["other"]
    rows = [[label, len(layers), *[sum(layer_group(n) == g for n in layers) for g in groups]] for label, layers in coverage.items()]
    return Table(["preset", "layers", *groups], rows)


def trainable_parameters(*modules) -> list[torch.nn.Parameter]:
    """The parameters that training updates (the adapter's), in a stable order."""
    return [p for module in modules for p in module.parameters() if p.requires_grad]


def adapter_state(pipe, spec: AdapterSpec) -> dict[str, dict[str, torch.Tensor]]:
    """The adapter weights per component (``unet``, ``text_encoder``, ``text_encoder_2``): peft naming for LoRA / DoRA,
    LyCORIS naming for the others."""
    if spec.lycoris:
        return {"unet": pipe.unet.get_submodule(LYCORIS_MODULE).state_dict()}
    state = {"unet": get_peft_model_state_dict(pipe.unet)}
    if spec.text_encoder:
        state.update({name: get_peft_model_state_dict(encoder) for name, encoder in zip(TEXT_ENCODER_NAMES, text_encoders(pipe))})
    return state


def _metadata(config: LoraConfig) -> dict:
    return json.loads(json.dumps(config.to_dict(), default=lambda v: sorted(v) if isinstance(v, set) else str(v)))


def save_dtype(precision: str) -> torch.dtype:
    """The dtype the kohya and LyCORIS files store for ``precision`` (``"fp16"`` or ``"fp32"``)."""
    if precision not in SAVE_PRECISIONS:
        raise ValueError(f"unknown save precision {precision!r}: use one of {', '.join(SAVE_PRECISIONS)}")
    return SAVE_PRECISIONS[precision]


def _stored(tensors: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", dtype).contiguous() for k, v in tensors.items()}


def save_adapter(
    pipe, spec: AdapterSpec, folder: Path, name: str, training_info: dict | None = None, precision: str = "fp16"
) -> dict[str, Path]:
    """Write the files of the adapter trained on ``pipe`` into ``folder``; returns their paths by format.

    The kohya and LyCORIS files (for AUTOMATIC1111 and ComfyUI) are stored in ``precision``:
    fp16 by default, as kohya's scripts write them, or fp32. The diffusers file stays fp32,
    as diffusers' own training scripts write it.
    """
    dtype = save_dtype(precision)
    folder.mkdir(parents=True, exist_ok=True)
    state = adapter_state(pipe, spec)
    metadata = {**_kohya_metadata(pipe, spec, name, training_info or {}), "ss_save_precision": precision}
    if spec.lycoris:
        path = folder / f"{name}.safetensors"
        layers = _stored(state["unet"], dtype)
        atomic_write(path, lambda tmp: save_file(layers, tmp, metadata=metadata))
        return {"lycoris": path}
    _save_diffusers_file(pipe, spec, state, folder / DIFFUSERS_WEIGHTS)
    kohya_path = folder / f"{name}.safetensors"
    kohya = _stored(_kohya_state(pipe, state, spec), dtype)
    atomic_write(kohya_path, lambda tmp: save_file(kohya, tmp, metadata=metadata))
    return {"diffusers": folder / DIFFUSERS_WEIGHTS, "kohya": kohya_path}


def _save_diffusers_file(pipe, spec: AdapterSpec, state: dict[str, dict[str, torch.Tensor]], path: Path) -> None:
    """peft key names (lora_A / lora_B), which diffusers loads as they are, written by diffusers' own save function."""
    layers = {f"{component}_lora_layers": _stored(tensors) for component, tensors in state.items()}
    configs = {component: spec.unet_config() if component == "unet" else spec.text_config() for component in state}
    metadata = {f"{component}_lora_adapter_metadata": _metadata(config) for component, config in configs.items()}
    saver = StableDiffusionXLPipeline if is_sdxl(pipe) else StableDiffusionPipeline
    atomic_write(path, lambda tmp: saver.save_lora_weights(Path(tmp).parent, weight_name=Path(tmp).name, **layers, **metadata))


def kohya_prefixes(pipe) -> dict[str, str]:
    """The kohya key prefix of each component: ``lora_unet``, and ``lora_te`` (SD 1.x / 2.x) or ``lora_te1`` / ``lora_te2`` (SDXL)."""
    if is_sdxl(pipe):
        return {"unet": "lora_unet", "text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}
    return {"unet": "lora_unet", "text_encoder": "lora_te"}


def text_layer_name(name: str) -> str:
    """A text-encoder layer's name as kohya writes it, under ``text_model`` whatever the installed transformers calls it:
    ``encoder.layers.0.self_attn.q_proj`` (transformers 5) and ``text_model.encoder.layers.0.self_attn.q_proj`` (4.x)
    both give ``text_model.encoder.layers.0.self_attn.q_proj``; ``text_projection`` stays as it is."""
    inner = name.removeprefix(f"{TEXT_MODEL}.")
    return name if name in (TEXT_MODEL, "text_projection") else f"{TEXT_MODEL}.{inner}"


def kohya_layer_names(pipe) -> dict[str, dict[str, str]]:
    """Per component, each layer's kohya name by its diffusers name (SDXL's UNet layers under their original sgm names,
    text-encoder layers under ``text_model``)."""
    names = {}
    for component, prefix in kohya_prefixes(pipe).items():
        module = getattr(pipe, component)
        if component == "unet":
            layers = original_unet_names(module) if is_sdxl(pipe) else {n: n for n, _ in module.named_modules() if n}
        else:
            layers = {n: text_layer_name(n) for n, _ in module.named_modules() if n}
        names[component] = {name: f"{prefix}_{original.replace('.', '_')}" for name, original in layers.items()}
    return names


def _kohya_state(pipe, state: dict[str, dict[str, torch.Tensor]], spec: AdapterSpec) -> dict[str, torch.Tensor]:
    """peft's LoRA weights under kohya's names: ``lora_down`` / ``lora_up`` / ``alpha``."""
    names = kohya_layer_names(pipe)
    kohya = {}
    for component, tensors in state.items():
        for key, tensor in tensors.items():
            layer, parameter = _layer_of(f"{component}.{key}")
            layer = layer.partition(".")[2]
            name = names[component][layer]
            if parameter == "lora_A.weight":
                kohya[f"{name}.lora_down.weight"] = tensor
                kohya[f"{name}.alpha"] = torch.tensor(float(spec.alpha))
            elif parameter == "lora_B.weight":
                kohya[f"{name}.lora_up.weight"] = tensor
            else:
                raise ValueError(f"unexpected adapter weight {key!r} in {component}")
    return kohya


def base_model_version(pipe) -> str:
    """kohya's ``ss_base_model_version``: ``sdxl_base_v1-0``, ``sd_v2`` (1024-wide text conditioning) or ``sd_v1``."""
    if is_sdxl(pipe):
        return "sdxl_base_v1-0"
    return "sd_v2" if pipe.unet.config.cross_attention_dim == 1024 else "sd_v1"


MODELSPEC_ARCHITECTURES = {"sdxl_base_v1-0": "stable-diffusion-xl-v1-base", "sd_v2": "stable-diffusion-v2", "sd_v1": "stable-diffusion-v1"}


def _kohya_metadata(pipe, spec: AdapterSpec, name: str, info: dict) -> dict[str, str]:
    """The ``ss_*`` keys that kohya's sd-scripts write and A1111 / ComfyUI read, and the ``modelspec.*`` keys of the
    model-spec convention (``modelspec.architecture`` such as ``stable-diffusion-xl-v1-base/lora``)."""
    if spec.lycoris:
        module = "lycoris.kohya"
        args = {"algo": LYCORIS_ALGOS[spec.kind], "conv_dim": spec.rank if spec.conv else 0, "factor": spec.factor}
        args.update(LYCORIS_OPTIONS.get(spec.kind, {}))
    else:
        module, args = "networks.lora", {"conv": spec.conv}
    version = base_model_version(pipe)
    architecture = f"{MODELSPEC_ARCHITECTURES[version]}/{'lora' if spec.kind in ('lora', 'dora') else 'lycoris'}"
    metadata = {
        "ss_output_name": name,
        "ss_network_module": module,
        "ss_network_dim": str(spec.rank),
        "ss_network_alpha": str(spec.alpha),
        "ss_network_args": json.dumps(args),
        "ss_base_model_version": version,
        "ss_v2": str(version == "sd_v2"),
        "ss_v_parameterization": str(pipe.scheduler.config.get("prediction_type") == "v_prediction"),
        "ss_training_comment": "trained with stylekit",
        "stylekit_adapter": json.dumps(asdict(spec)),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": architecture,
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models" if is_sdxl(pipe) else "diffusers",
        "modelspec.title": name,
        "modelspec.resolution": f"{pipe.unet.config.sample_size * pipe.vae_scale_factor}x{pipe.unet.config.sample_size * pipe.vae_scale_factor}",
        "modelspec.prediction_type": "v" if pipe.scheduler.config.get("prediction_type") == "v_prediction" else "epsilon",
    }
    metadata.update({f"ss_{k}": str(v) for k, v in info.items()})
    return metadata


def find_adapter_file(folder: Path) -> Path | None:
    """The weights file of an adapter folder (diffusers file for LoRA / DoRA, ``<name>.safetensors`` for LyCORIS), if any."""
    folder = Path(folder)
    return next((f for f in (folder / DIFFUSERS_WEIGHTS, folder / f"{folder.name}.safetensors") if f.is_file()), None)


def adapter_file(path: Path) -> Path:
    """``path`` itself when it is a file, else its folder's adapter file (see :func:`find_adapter_file`)."""
    path = Path(path)
    found = path if path.is_file() else find_adapter_file(path)
    if found is None:
        raise FileNotFoundError(f"{path} holds no adapter ({DIFFUSERS_WEIGHTS} or {path.name}.safetensors)")
    return found


def read_adapter_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of an adapter file; :class:`AdapterFileError` naming the file when it is not a readable
    ``.safetensors`` file (truncated, corrupted, or a pickle under another name: stylekit never unpickles an adapter)."""
    path = Path(path)
    try:
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open handles are not iterable)
    except Exception as error:  # safetensors raises its own error type for a bad header, OSError for a short file
        with open(path, "rb") as handle:
            pickled = handle.read(4).startswith(PICKLE_MAGIC)
        if pickled:
            raise AdapterFileError(
                f"{path} is a PyTorch pickle, not a .safetensors file; stylekit loads adapters from .safetensors only "
                "(pickles can run code): convert it with a tool you trust, or ask its author for a .safetensors file"
            ) from None
        raise AdapterFileError(f"{path} is not a readable .safetensors file (truncated or corrupted?): {error}") from None
    if not tensors:
        raise AdapterFileError(f"{path} holds no tensors")
    return tensors, metadata


def _is_lycoris_file(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bool:
    """Files only lycoris builds: LyCORIS kinds, LoCon with a Tucker core, and DoRA (``dora_scale``) of any kind."""
    if metadata.get("ss_network_module", "").startswith("lycoris"):
        return True
    return any(part in key for key in tensors for part in (".hada_", ".lokr_", ".oft_", ".dora_scale", ".lora_mid."))


def _is_diffusers_file(tensors: dict[str, torch.Tensor]) -> bool:
    return all(key.startswith(("unet.", "text_encoder.", "text_encoder_2.")) for key in tensors)


def _layer_index(pipe) -> dict[str, tuple[str, str, torch.nn.Module]]:
    """Every layer of the UNet and text encoders, as (component, diffusers name, module), under each name adapter files
    use: diffusers (``unet.down_blocks...``), kohya (:func:`kohya_layer_names`), text-encoder names with and without
    ``text_model`` and the other names files carry (:data:`FILE_ALIASES`)."""
    index = {}
    for component, names in kohya_layer_names(pipe).items():
        prefix = kohya_prefixes(pipe)[component]
        prefixes = [prefix] + ([FILE_ALIASES[component]] if component in FILE_ALIASES else [])
        for name, layer in getattr(pipe, component).named_modules():
            if not name:
                continue
            entry = (component, name, layer)
            named = text_layer_name(name)
            forms = {name} if component == "unet" else {name, named, named.removeprefix(f"{TEXT_MODEL}.")}
            for form in forms:
                index[f"{component}.{form}"] = entry
                for alias in prefixes:
                    index[f"{alias}_{form.replace('.', '_')}"] = entry
            index[names[name]] = entry
    return index


def _layer_of(key: str) -> tuple[str, str]:
    """Split a file key into (layer name, parameter name), for diffusers and kohya / LyCORIS keys."""
    if key.startswith(("unet.", "text_encoder.", "text_encoder_2.")):
        match = re.search(r"\.(lora_[AB]\.|lora_magnitude_vector)", key)
        if match:
            return key[: match.start()], key[match.start() + 1 :]
        layer, _, parameter = key.rpartition(".")
        return layer, parameter
    layer, _, parameter = key.partition(".")
    return layer, parameter


def _io_features(module) -> tuple[int, int] | None:
    for inputs, outputs in (("in_features", "out_features"), ("in_channels", "out_channels")):
        if hasattr(module, inputs):
            return getattr(module, inputs), getattr(module, outputs)
    return None


def file_architecture(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str | None:
    """The base model a file says it was made for (kohya's ``ss_base_model_version`` values), from its metadata or, failing
    that, from SDXL-only key names (a second text encoder); None when it does not tell."""
    architecture = metadata.get("modelspec.architecture", "")
    by_spec = next((version for version, name in MODELSPEC_ARCHITECTURES.items() if architecture.startswith(f"{name}/")), None)
    version = metadata.get("ss_base_model_version") or by_spec
    if version:
        return "sdxl_base_v1-0" if version.startswith("sdxl") else "sd_v2" if version.startswith("sd_v2") else "sd_v1"
    return "sdxl_base_v1-0" if any(key.startswith("lora_te2_") for key in tensors) else None


MODEL_NAMES = {"sdxl_base_v1-0": "SDXL", "sd_v2": "Stable Diffusion 2.x", "sd_v1": "Stable Diffusion 1.x"}


def check_fits(pipe, path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Raise :class:`AdapterMismatch` naming every layer of ``tensors`` that ``pipe`` lacks or whose LoRA shapes differ,
    and the model the file was made for when it says so and that is not this one."""
    index = _layer_index(pipe)
    missing, mismatched = set(), set()
    for key, tensor in tensors.items():
        layer, parameter = _layer_of(key)
        if layer not in index:
            missing.add(layer)
            continue
        module = index[layer][2]
        features = _io_features(getattr(module, "base_layer", module))
        if features is None:
            continue
        if parameter.startswith(("lora_A.", "lora_down.")) and tensor.shape[1] != features[0]:
            mismatched.add(f"{layer} (input {tensor.shape[1]} vs {features[0]})")
        if parameter.startswith(("lora_B.", "lora_up.")) and tensor.shape[0] != features[1]:
            mismatched.add(f"{layer} (output {tensor.shape[0]} vs {features[1]})")
    if missing or mismatched:
        made_for, this_model = file_architecture(tensors, metadata or {}), base_model_version(pipe)
        other = (
            f"it is an adapter for {MODEL_NAMES[made_for]}, this model is {MODEL_NAMES[this_model]}"
            if made_for and made_for != this_model
            else None
        )
        _raise_mismatch(path, missing, mismatched, other)


def _listed(items) -> str:
    items = sorted(items)
    return ", ".join(items[:5]) + (" ..." if len(items) > 5 else "")


def _raise_mismatch(path: Path, missing, mismatched, reason: str | None = None, unknown=()) -> None:
    if not missing and not mismatched and not unknown:
        return
    parts = [reason] if reason else []
    if missing:
        parts.append(f"{len(missing)} layer(s) this model lacks: {_listed(missing)}")
    if mismatched:
        parts.append(f"{len(mismatched)} layer(s) of another shape: {_listed(mismatched)}")
    if unknown:
        parts.append(f"{len(unknown)} key(s) stylekit cannot apply: {_listed(unknown)}")
    guess = "" if reason else " (was it made for another base model?)"
    raise AdapterMismatch(f"{path} does not fit this model{guess}; nothing was applied. " + "; ".join(parts))


def _lycoris_layer(name: str, tensors: dict[str, torch.Tensor], target: torch.nn.Module):
    """One LyCORIS layer built from a file's tensors against ``target``; DoRA's magnitude axis is read from its shape
    (``[out, 1, ...]`` per output row, ``[1, in, ...]`` per input column), as ComfyUI reads it."""
    from lycoris.modules import LoConModule, get_module, make_module

    own = {k.partition(".")[2]: v for k, v in tensors.items() if k.partition(".")[0] == name}
    scale = own.get("dora_scale")
    if scale is not None and "lora_down.weight" in own:
        rank = own["lora_down.weight"].shape[0]
        per_output = scale.shape[0] != 1 or target.weight.shape[0] == 1
        layer = LoConModule(
            name,
            target,
            1.0,
            rank,
            float(own.get("alpha", rank)),
            use_tucker="lora_mid.weight" in own,
            weight_decompose=True,
            wd_on_out=per_output,
        )
        _strength_as_automatic1111(layer)
    else:
        layer = make_module(*get_module(tensors, name), name, target)
    if layer is None:
        raise RuntimeError("not a LyCORIS layer kind this lycoris version builds")
    layer.load_state_dict(own, strict=True)
    return layer


def _strength_as_automatic1111(layer) -> None:
    """Scale a DoRA layer's change as AUTOMATIC1111 does: ``W + m (W' - W)``, with ``W'`` the decomposed weight at full
    strength. LyCORIS scales the magnitude instead, ``(W + dW)(m (s - 1) + 1)``, which keeps the whole low-rank
    update ``dW`` at a small multiplier, so its style strength would not start from the base model."""
    decompose = layer.apply_weight_decompose

    def scaled(weight: torch.Tensor, multiplier: float = 1.0) -> torch.Tensor:
        full = decompose(weight, 1.0)
        base = layer._current_weight().to(full)
        return base + multiplier * (full - base)

    layer.apply_weight_decompose = scaled


def _load_lycoris(pipe, path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str], adapter_name: str) -> None:
    """Build every LyCORIS layer of the file against the UNet and text encoders, check them all, and only then hook them in."""
    from lycoris import LycorisNetwork

    _quiet_lycoris()
    check_fits(pipe, path, tensors, metadata)
    index = _layer_index(pipe)
    layers, mismatched = [], set()
    for name in sorted({key.partition(".")[0] for key in tensors}):
        target = index[name][2]
        try:
            # a layer already wrapped by a peft adapter is hooked at its base layer, which the wrapper calls
            layer = _lycoris_layer(name, tensors, getattr(target, "base_layer", target))
            layer.to(device=target.weight.device, dtype=target.weight.dtype)  # the adapter follows the pipeline, whatever the file stores
        except (RuntimeError, TypeError, KeyError) as error:
            mismatched.add(f"{name} ({str(error).strip().splitlines()[-1]})")
            continue
        layers.append(layer)
    _raise_mismatch(path, set(), mismatched)
    network = LycorisNetwork(pipe.unet, init_only=True)
    network.loras = layers
    network.apply_to()
    network.hooked = True
    network.requires_grad_(False)
    networks = getattr(pipe, "lycoris_networks", {})
    networks[adapter_name] = network
    pipe.lycoris_networks = networks


def peft_state_from_kohya(pipe, path: Path, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A kohya-format LoRA (``lora_down`` / ``lora_up`` / ``alpha`` per layer) as diffusers-layout peft weights
    (``unet.<layer>.lora_A.weight``...), each layer's ``alpha / rank`` folded into its ``lora_up``; a key that is none of
    these stops the conversion with an :class:`AdapterMismatch` that names it."""
    index = _layer_index(pipe)
    unknown = sorted(key for key in tensors if _layer_of(key)[1] not in KOHYA_PARAMETERS)
    _raise_mismatch(path, set(), set(), unknown=unknown)
    converted = {}
    for layer in sorted({_layer_of(key)[0] for key in tensors}):
        component, name, module = index[layer]
        down, up = tensors.get(f"{layer}.lora_down.weight"), tensors.get(f"{layer}.lora_up.weight")
        if down is None or up is None:
            _raise_mismatch(path, set(), {f"{layer} (lora_down and lora_up must come together)"})
        rank = down.shape[0]
        alpha = float(tensors[f"{layer}.alpha"]) if f"{layer}.alpha" in tensors else rank
        weight = getattr(module, "base_layer", module).weight
        shaped = (lambda t: t.flatten(1)) if weight.dim() == 2 else (lambda t: t.reshape(*t.shape[:2], *t.shape[2:], *[1] * (4 - t.dim())))
        converted[f"{component}.{name}.lora_A.weight"] = shaped(down).float()
        converted[f"{component}.{name}.lora_B.weight"] = shaped(up).float() * (alpha / rank)
    return converted


def load_adapter(pipe, path: Path, adapter_name: str, scale: float = 1.0) -> None:
    """Load an adapter file or folder into ``pipe`` under ``adapter_name``, active at ``scale``.

    Args:
        pipe: the pipeline; the adapter takes its device and dtype.
        path: a ``.safetensors`` file (kohya LoRA, LoCon, LoHa, LoKr, DoRA; LyCORIS; diffusers) or an adapter folder.
        adapter_name: the name the adapter is switched by (:func:`set_adapter_weights`).
        scale: its weight once loaded.

    Raises :class:`AdapterFileError` for a file that is not a readable ``.safetensors`` file and :class:`AdapterMismatch`
    when it does not fit the model; either way nothing is applied.
    """
    file = adapter_file(path)
    tensors, metadata = read_adapter_file(file)
    if _is_lycoris_file(tensors, metadata):
        _load_lycoris(pipe, file, tensors, metadata, adapter_name)
    else:
        check_fits(pipe, file, tensors, metadata)
        source = tensors if _is_diffusers_file(tensors) else peft_state_from_kohya(pipe, file, tensors)
        with quiet_loading():
            if source is tensors:
                pipe.load_lora_weights(str(file.parent), weight_name=file.name, adapter_name=adapter_name)
            else:
                pipe.load_lora_weights(source, adapter_name=adapter_name)
    set_adapter_weights(pipe, {adapter_name: scale})


def switch_trained_adapter(unet, encoders, on: bool) -> None:
    """Turn the adapter that :func:`attach_adapter` added (being trained) on or off in place; its weights stay as they are."""
    if LYCORIS_MODULE in dict(unet.named_children()):
        unet.get_submodule(LYCORIS_MODULE).set_multiplier(1.0 if on else 0.0)
        return
    for model in (unet, *encoders):
        if getattr(model, "peft_config", None):
            model.enable_adapters() if on else model.disable_adapters()


def _hook_lycoris(network, active: bool) -> None:
    """Hook a LyCORIS network's layers into the UNet only while it is active: an inactive adapter costs nothing."""
    if active != network.hooked:
        for layer in network.loras:
            if active:
                layer.apply_to()
            else:
                layer.restore()
        network.hooked = active


def set_adapter_weights(pipe, weights: dict[str, float]) -> None:
    """Make exactly the adapters in ``weights`` active, each at its weight (a LyCORIS multiplier or a peft adapter weight)."""
    networks = getattr(pipe, "lycoris_networks", {})
    for name, network in networks.items():
        network.set_multiplier(weights.get(name, 0.0))
        _hook_lycoris(network, weights.get(name, 0.0) != 0)
    peft = {name: weight for name, weight in weights.items() if name not in networks and weight != 0}
    if peft:
        pipe.enable_lora()
        pipe.set_adapters(list(peft), adapter_weights=list(peft.values()))
    elif any(pipe.get_list_adapters().values()):
        pipe.disable_lora()
