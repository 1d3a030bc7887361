"""The diffusion maths that training, stylization, pretraining and notebook 00 share.

A noise schedule is a table ``alphas_cumprod``: at step ``t`` a clean latent
``x0`` and noise ``eps`` mix as ``x_t = sqrt(a) x0 + sqrt(1 - a) eps`` with
``a = alphas_cumprod[t]``. A UNet is trained to predict either the noise
(``"epsilon"``) or the velocity ``v = sqrt(a) eps - sqrt(1 - a) x0``
(``"v_prediction"``); from ``x_t`` and either one, the clean latent follows.
Everything here is a few lines of that algebra, written once.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

__all__ = [
    "PREDICTION_TYPES",
    "added_conditioning",
    "clean_from_prediction",
    "min_snr_weights",
    "posterior_mean",
    "prediction_target",
    "prediction_type",
    "read_run_config",
    "style_prompt",
]

PREDICTION_TYPES = ("epsilon", "v_prediction")


def prediction_type(scheduler) -> str:
    """What the UNet predicts, ``"epsilon"`` or ``"v_prediction"``, read from ``scheduler``'s config.

    Raises:
        ValueError: for any other kind (such as ``"sample"``), named in the model's own word.
    """
    kind = scheduler.config.get("prediction_type", "epsilon")
    if kind not in PREDICTION_TYPES:
        raise ValueError(f"this model predicts {kind!r}; stylekit trains and inverts epsilon- and v-prediction models only")
    return kind


def _per_item(alpha: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``alpha`` (a scalar or one value per item) shaped to broadcast over ``like``'s items."""
    alpha = alpha.to(like.device)
    return alpha.view(-1, *([1] * (like.dim() - 1))) if alpha.dim() else alpha


def clean_from_prediction(prediction: torch.Tensor, noisy: torch.Tensor, alpha: torch.Tensor, kind: str) -> torch.Tensor:
    """The clean latents that a UNet's ``prediction`` at ``noisy`` implies.

    Args:
        prediction: the UNet's output (noise or velocity).
        noisy: the latents it was given.
        alpha: ``alphas_cumprod`` at their timestep(s): a scalar or one value per item.
        kind: ``"epsilon"`` or ``"v_prediction"``.
    """
    a = _per_item(alpha, noisy)
    if kind == "v_prediction":
        return a.sqrt() * noisy - (1 - a).sqrt() * prediction
    return (noisy - (1 - a).sqrt() * prediction) / a.sqrt()


def prediction_target(noisy: torch.Tensor, x0: torch.Tensor, alpha: torch.Tensor, kind: str) -> torch.Tensor:
    """What the UNet should predict at ``noisy`` so that its estimate of the clean latents is exactly ``x0``.

    For an epsilon model that is the noise that leads from ``x0`` to ``noisy``; for a v-prediction model the
    velocity of that same noise. In ordinary training ``noisy`` was made from ``x0``, so this is the noise that
    was added; for photo/style pairs ``noisy`` is a noised photo and ``x0`` its styled image.

    Args:
        noisy: the noised latents the UNet sees.
        x0: the clean latents its prediction must lead to.
        alpha: ``alphas_cumprod`` at the items' timesteps (one value per item, or a scalar).
        kind: ``"epsilon"`` or ``"v_prediction"``.
    """
    a = _per_item(alpha, noisy)
    noise = (noisy - a.sqrt() * x0) / (1 - a).sqrt()
    if kind == "v_prediction":
        return a.sqrt() * noise - (1 - a).sqrt() * x0
    return noise


def min_snr_weights(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, gamma: float | None, kind: str = "epsilon") -> torch.Tensor:
    """Min-SNR-gamma loss weights per item (Hang et al. 2023): ``min(SNR, gamma) / SNR`` for epsilon,
    ``min(SNR, gamma) / (SNR + 1)`` for v-prediction; ones when ``gamma`` is ``None`` or 0.

    A zero-terminal-SNR schedule (SNR 0 at the last step) gets weight 0 there.
    """
    if not gamma:
        return torch.ones(len(timesteps))
    alphas = alphas_cumprod[timesteps.cpu()]
    snr = alphas / (1 - alphas)
    clipped = torch.clamp(snr, max=gamma)
    if kind == "v_prediction":
        return clipped / (snr + 1)
    return torch.where(snr > 0, clipped / snr.clamp(min=1e-12), torch.zeros_like(snr))


def posterior_mean(latents: torch.Tensor, x0: torch.Tensor, alpha: torch.Tensor, alpha_prev: torch.Tensor) -> torch.Tensor:
    """Mean of the DDPM step from ``latents`` (at ``alpha``) to the previous step (at ``alpha_prev``; 1 for the
    clean image), given the predicted clean latents ``x0``: the mean of q(x_prev | x_t, x0)."""
    ratio = alpha / alpha_prev
    return (alpha_prev.sqrt() * (1 - ratio) * x0 + ratio.sqrt() * (1 - alpha_prev) * latents) / (1 - alpha)


def added_conditioning(pooled: torch.Tensor, size_ids: torch.Tensor) -> dict:
    """SDXL's ``added_cond_kwargs``: the pooled text of the second encoder and six size numbers per image
    (original height and width, crop top and left, target height and width)."""
    return {"text_embeds": pooled, "time_ids": size_ids}


def style_prompt(trigger: str, prompt: str = "") -> str:
    """The prompt that calls a style: ``"<trigger> style, <prompt>"`` (the form of every stylekit caption)."""
    return f"{trigger} style, {prompt}" if prompt else f"{trigger} style"


def read_run_config(folder: Path) -> dict:
    """The ``config.json`` a trained style's folder holds (an empty dict where there is none, as for a single file)."""
    path = Path(folder) / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}
