"""Random-weight pipelines with the exact layouts of Stable Diffusion 1.5 and SDXL, at tiny widths.

What a hub model would exercise (SDXL's two text encoders, pooled text and size conditioning,
its fp16-unsafe autoencoder, v-prediction) is checked on these, as diffusers' own tests do:
the blocks, depths, attention kinds and conditioning of the real models, with 32-64 channels.
The tokenizer is the embedded tiny model's. Each builder saves a diffusers folder and returns it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from stylekit.models import tiny_model_dir

TEXT_WIDTH = 32


def _tokenizer() -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(tiny_model_dir() / "tokenizer")


def _text_config(tokenizer, projection_dim: int | None = None) -> CLIPTextConfig:
    extra = {"projection_dim": projection_dim} if projection_dim else {}
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_WIDTH,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def _vae(**config) -> AutoencoderKL:
    """Stable Diffusion's autoencoder layout: four levels (8x down), two ResNets per level, 4 latent channels."""
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 16, 32, 32),
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=8,
        **config,
    )


def build_sd15(folder: Path, prediction_type: str = "epsilon", zero_terminal_snr: bool = False) -> Path:
    """SD 1.5's layout: three cross-attention levels and a plain one, two ResNets each, 8 heads, PNDM schedule.

    ``prediction_type="v_prediction"`` (and ``zero_terminal_snr``) gives a Stable Diffusion 2.x-style model.
    """
    torch.manual_seed(0)
    tokenizer = _tokenizer()
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        skip_prk_steps=True,
        steps_offset=1,
        set_alpha_to_one=False,
        prediction_type=prediction_type,
        **({"timestep_spacing": "trailing"} if zero_terminal_snr else {}),
    )
    if zero_terminal_snr:
        scheduler.register_to_config(rescale_betas_zero_snr=True)
    pipe = StableDiffusionPipeline(
        vae=_vae(sample_size=64),
        unet=unet,
        text_encoder=CLIPTextModel(_text_config(tokenizer)),
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def build_sdxl(folder: Path) -> Path:
    """SDXL base's layout: a plain level then two cross-attention levels with 1, 2 and 10 transformer layers (10 in the
    middle block too), linear projections, two text encoders (states side by side, the second's pooled projection),
    six size numbers embedded as "text_time", an autoencoder that must not run in fp16, the Euler schedule."""
    torch.manual_seed(0)
    tokenizer = _tokenizer()
    time_width = 8
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(2, 4, 4),
        use_linear_projection=True,
        cross_attention_dim=2 * TEXT_WIDTH,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_width,
        projection_class_embeddings_input_dim=6 * time_width + TEXT_WIDTH,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        timestep_spacing="leading",
    )
    pipe = StableDiffusionXLPipeline(
        vae=_vae(sample_size=64, scaling_factor=0.13025, force_upcast=True),
        unet=unet,
        text_encoder=CLIPTextModel(_text_config(tokenizer)),
        text_encoder_2=CLIPTextModelWithProjection(_text_config(tokenizer, projection_dim=TEXT_WIDTH)),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        scheduler=scheduler,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return Path(folder)
