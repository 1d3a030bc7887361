"""The shared diffusion maths against diffusers' schedulers, written out independently."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from stylekit.diffusion import (
    clean_from_prediction,
    min_snr_weights,
    posterior_mean,
    prediction_target,
    prediction_type,
    read_run_config,
    style_prompt,
)


def _scheduler(kind: str = "epsilon") -> DDPMScheduler:
    return DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type=kind, clip_sample=False)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_the_target_is_what_diffusers_trains_on_and_leads_back_to_the_clean_latents(kind):
    scheduler = _scheduler(kind)
    x0, noise = torch.randn(2, 3, 4, 8, 8, generator=torch.Generator().manual_seed(0)).unbind(0)
    t = torch.tensor([3, 400, 990])
    noisy = scheduler.add_noise(x0, noise, t)
    alphas = scheduler.alphas_cumprod[t]
    target = prediction_target(noisy, x0, alphas, kind)
    expected = scheduler.get_velocity(x0, noise, t) if kind == "v_prediction" else noise
    torch.testing.assert_close(target, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(clean_from_prediction(target, noisy, alphas, kind), x0, atol=1e-3, rtol=1e-3)


def test_a_scalar_alpha_works_for_a_whole_batch():
    x0, noise = torch.randn(2, 2, 4, 8, 8).unbind(0)
    alpha = _scheduler().alphas_cumprod[500]
    noisy = alpha.sqrt() * x0 + (1 - alpha).sqrt() * noise
    torch.testing.assert_close(clean_from_prediction(noise, noisy, alpha, "epsilon"), x0, atol=1e-4, rtol=1e-4)


def test_the_posterior_mean_is_the_mean_of_diffusers_ddpm_step():
    scheduler = _scheduler()
    scheduler.set_timesteps(20)
    t, t_prev = scheduler.timesteps[5].item(), scheduler.timesteps[6].item()
    latents, eps = torch.randn(2, 1, 4, 8, 8, generator=torch.Generator().manual_seed(1)).unbind(0)
    stepped = scheduler.step(eps, t, latents, generator=torch.Generator().manual_seed(7)).prev_sample
    added = torch.randn(latents.shape, generator=torch.Generator().manual_seed(7)) * scheduler._get_variance(t) ** 0.5
    alphas = scheduler.alphas_cumprod
    x0 = clean_from_prediction(eps, latents, alphas[t], "epsilon")
    torch.testing.assert_close(posterior_mean(latents, x0, alphas[t], alphas[t_prev]), stepped - added, atol=1e-4, rtol=1e-4)


def test_min_snr_weights_cap_the_easy_timesteps_only():
    scheduler = _scheduler()
    t = torch.tensor([0, 300, 999])
    snr = scheduler.alphas_cumprod[t] / (1 - scheduler.alphas_cumprod[t])
    weights = min_snr_weights(scheduler.alphas_cumprod, t, 5.0)
    assert weights[0] < 0.01 and weights[2] == 1.0  # near-clean steps weigh little, noisy ones fully
    torch.testing.assert_close(weights, torch.clamp(snr, max=5.0) / snr)
    assert torch.equal(min_snr_weights(scheduler.alphas_cumprod, t, None), torch.ones(3))


def test_other_prediction_types_are_refused_by_name():
    assert prediction_type(_scheduler("v_prediction")) == "v_prediction"
    with pytest.raises(ValueError, match="'sample'"):
        prediction_type(_scheduler("sample"))


def test_prompt_template_and_run_config(tmp_path):
    assert style_prompt("oil painting", "a cat") == "oil painting style, a cat"
    assert style_prompt("anime") == "anime style"
    assert read_run_config(tmp_path) == {}
    (tmp_path / "config.json").write_text('{"trigger": "sks"}')
    assert read_run_config(tmp_path) == {"trigger": "sks"}
