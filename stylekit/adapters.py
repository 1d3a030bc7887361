"""Style adapters: one description (kind, rank, alpha, targets), attach, save, load.

LoRA and DoRA go through peft, the way diffusers trains them. Each trained
style is saved twice:

- ``pytorch_lora_weights.safetensors``: the diffusers layout, for
  ``pipe.load_lora_weights(folder)``;
- ``<name>.safetensors``: a kohya-format single file (``lora_unet_...``
  keys with ``lora_down`` / ``lora_up`` / ``alpha`` and ``ss_*`` metadata) that
  AUTOMATIC1111 and ComfyUI load, and diffusers too.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import convert_state_dict_to_kohya
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

from .checkpoints import atomic_write
from .models import quiet_loading

__all__ = ["DIFFUSERS_WEIGHTS", "AdapterSpec", "adapter_state", "attach_adapter", "load_adapter", "save_adapter", "trainable_parameters"]

DIFFUSERS_WEIGHTS = "pytorch_lora_weights.safetensors"
ATTENTION_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
CONV_TARGETS = ("conv1", "conv2", "conv_shortcut", "proj_in", "proj_out")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


@dataclass
class AdapterSpec:
    """What to train: the adapter kind, its size, and where it goes.

    Args:
        kind: ``"lora"`` or ``"dora"`` (weight-decomposed LoRA).
        rank: rank of the low-rank update (more = more capacity, bigger file).
        alpha: the update is scaled by ``alpha / rank``.
        target_modules: UNet module names to adapt (default: attention projections).
        conv: also adapt the UNet's ResNet convolutions and attention in/out projections.
        text_encoder: also adapt the text encoder's attention projections.
    """

    kind: str = "lora"
    rank: int = 4
    alpha: float = 4.0
    target_modules: tuple[str, ...] = ATTENTION_TARGETS
    conv: bool = False
    text_encoder: bool = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in ("lora", "dora"):
            raise ValueError(f"unknown adapter kind {self.kind!r}: use 'lora' or 'dora'")
        self.target_modules = tuple(self.target_modules)

    def unet_config(self) -> LoraConfig:
        targets = list(self.target_modules) + (list(CONV_TARGETS) if self.conv else [])
        return LoraConfig(
            r=self.rank, lora_alpha=self.alpha, init_lora_weights="gaussian", target_modules=targets, use_dora=self.kind == "dora"
        )

    def text_config(self) -> LoraConfig:
        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            init_lora_weights="gaussian",
            target_modules=list(TEXT_TARGETS),
            use_dora=self.kind == "dora",
        )


def attach_adapter(unet, text_encoder, spec: AdapterSpec) -> None:
    """Freeze the base model and add fresh trainable adapter layers as described by ``spec``."""
    unet.requires_grad_(False)
    text_encoder.requires_grad_(False)
    unet.add_adapter(spec.unet_config())
    if spec.text_encoder:
        text_encoder.add_adapter(spec.text_config())


def trainable_parameters(*modules) -> list[torch.nn.Parameter]:
    """The parameters that training updates (the adapter's), in a stable order."""
    return [p for module in modules for p in module.parameters() if p.requires_grad]


def adapter_state(unet, text_encoder, spec: AdapterSpec) -> dict[str, dict[str, torch.Tensor]]:
    """The adapter weights in peft naming, per component."""
    state = {"unet": get_peft_model_state_dict(unet)}
    if spec.text_encoder:
        state["text_encoder"] = get_peft_model_state_dict(text_encoder)
    return state


def _metadata(config: LoraConfig) -> dict:
    return json.loads(json.dumps(config.to_dict(), default=lambda v: sorted(v) if isinstance(v, set) else str(v)))


def save_adapter(unet, text_encoder, spec: AdapterSpec, folder: Path, name: str, training_info: dict | None = None) -> dict[str, Path]:
    """Write both files of a trained adapter into ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    state = adapter_state(unet, text_encoder, spec)
    # peft key names (lora_A / lora_B), which diffusers loads as they are, for linear and conv layers alike
    unet_layers = {k: v.detach().float().cpu().contiguous() for k, v in state["unet"].items()}
    text_layers = {k: v.detach().float().cpu().contiguous() for k, v in state["text_encoder"].items()} if "text_encoder" in state else None
    atomic_write(
        folder / DIFFUSERS_WEIGHTS,
        lambda tmp: StableDiffusionPipeline.save_lora_weights(
            Path(tmp).parent,
            unet_lora_layers=unet_layers,
            text_encoder_lora_layers=text_layers,
            weight_name=Path(tmp).name,
            unet_lora_adapter_metadata=_metadata(spec.unet_config()),
            text_encoder_lora_adapter_metadata=_metadata(spec.text_config()) if text_layers else None,
        ),
    )
    kohya_path = folder / f"{name}.safetensors"
    kohya = _kohya_state(state, spec)
    metadata = _kohya_metadata(spec, name, training_info or {})
    atomic_write(kohya_path, lambda tmp: save_file(kohya, tmp, metadata=metadata))
    return {"diffusers": folder / DIFFUSERS_WEIGHTS, "kohya": kohya_path}


def _kohya_state(state: dict[str, dict[str, torch.Tensor]], spec: AdapterSpec) -> dict[str, torch.Tensor]:
    prefixed = {f"unet.{k}": v for k, v in state["unet"].items()}
    prefixed.update({f"text_encoder.{k}": v for k, v in state.get("text_encoder", {}).items()})
    kohya = convert_state_dict_to_kohya(prefixed)
    for key in [k for k in kohya if k.endswith(".lora_down.weight")]:
        kohya[key.replace(".lora_down.weight", ".alpha")] = torch.tensor(float(spec.alpha))
    return {k: v.detach().float().cpu().contiguous() for k, v in kohya.items()}


def _kohya_metadata(spec: AdapterSpec, name: str, info: dict) -> dict[str, str]:
    """The ``ss_*`` keys that kohya's sd-scripts write and A1111 / ComfyUI read."""
    metadata = {
        "ss_output_name": name,
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(spec.rank),
        "ss_network_alpha": str(spec.alpha),
        "ss_network_args": json.dumps({"conv": spec.conv, "dora": spec.kind == "dora"}),
        "ss_base_model_version": "sd_v1",
        "ss_training_comment": "trained with stylekit",
        "stylekit_adapter": json.dumps(asdict(spec)),
    }
    metadata.update({f"ss_{k}": str(v) for k, v in info.items()})
    return metadata


def load_adapter(pipe, path: Path, adapter_name: str, scale: float = 1.0) -> None:
    """Load an adapter file or folder (either format) into ``pipe`` under ``adapter_name``."""
    path = Path(path)
    folder, weight_name = (path, DIFFUSERS_WEIGHTS) if path.is_dir() else (path.parent, path.name)
    with quiet_loading():
        pipe.load_lora_weights(str(folder), weight_name=weight_name, adapter_name=adapter_name)
    pipe.set_adapters([adapter_name], adapter_weights=[scale])
