"""The course helpers: exercise checks, picture sizes, and the loss that notebook 00 writes out by hand."""

import io

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from PIL import Image

from stylekit import exercises, plots, train
from stylekit.models import load_pipeline


def test_a_check_says_works_not_yet_or_the_error_and_never_raises(capsys):
    exercises.check("sum", lambda: 1 + 1 == 2, "add")
    exercises.check("stub", lambda: (_ for _ in ()).throw(NotImplementedError), "write it")
    exercises.check("wrong", lambda: 1 + 1 == 3, "look again")
    exercises.check("broken", lambda: [][1], "mind the index")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "sum: works ✓"
    assert "not written yet" in lines[1] and "write it" in lines[1]
    assert lines[2].startswith("wrong: not yet") and "look again" in lines[2]
    assert "IndexError" in lines[3]


def test_grid_tiles_are_at_least_180_pixels_high_and_stay_crisp():
    tile = Image.fromarray(np.indices((64, 64)).sum(0).astype(np.uint8) % 2 * 255).convert("RGB")  # a checkerboard
    fig = plots.image_grid([[tile, tile], [tile]], row_labels=["a", "b"], col_labels=["x", "y"])
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi)
    height = Image.open(buffer).height
    assert height >= 2 * plots.MIN_TILE_PIXELS
    wide = plots.image_grid([[tile.resize((96, 64))]], col_labels=["a 3:2 photo"])
    buffer = io.BytesIO()
    wide.savefig(buffer, format="png", dpi=wide.dpi, bbox_inches="tight")
    assert Image.open(buffer).height >= plots.MIN_TILE_PIXELS
    enlarged = np.asarray(plots._enlarged(tile, plots.MIN_TILE_PIXELS))
    assert enlarged.shape[0] >= 180 and set(np.unique(enlarged)) == {0, 255}  # nearest neighbour: no grey in between


def test_pixels_and_latent_channels_become_pictures():
    pixels = torch.linspace(-1, 1, 3 * 4 * 5).view(1, 3, 4, 5)
    picture = np.asarray(plots.pixels_to_image(pixels))
    assert picture.shape == (4, 5, 3) and picture.min() == 0 and picture.max() == 255
    channels = plots.channel_images(torch.randn(1, 8, 6, 6))
    assert len(channels) == 8 and all(np.asarray(c).min() == 0 and np.asarray(c).max() == 255 for c in channels)


def test_denoising_loss_is_the_loss_written_by_hand_with_min_snr_weights():
    pipe = load_pipeline("tiny", task="txt2img", device="cpu")
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, pipe.unet.config.in_channels, 8, 8, generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    timesteps = torch.tensor([5, 300, 900])
    text = torch.randn(3, pipe.tokenizer.model_max_length, pipe.unet.config.cross_attention_dim, generator=generator)
    with torch.no_grad():
        prediction = pipe.unet(scheduler.add_noise(x0, noise, timesteps), timesteps, encoder_hidden_states=text).sample
        assert scheduler.config.prediction_type == "v_prediction"  # the tiny model predicts the velocity (notebook 00)
        per_item = F.mse_loss(prediction, scheduler.get_velocity(x0, noise, timesteps), reduction="none").mean(dim=(1, 2, 3))
        snr = scheduler.alphas_cumprod[timesteps] / (1 - scheduler.alphas_cumprod[timesteps])
        plain = train.denoising_loss(pipe.unet, scheduler, x0, x0, noise, timesteps, {"encoder_hidden_states": text})
        weighted = train.denoising_loss(pipe.unet, scheduler, x0, x0, noise, timesteps, {"encoder_hidden_states": text}, 5.0)
    assert torch.allclose(plain, per_item.mean(), atol=1e-6)
    assert torch.allclose(weighted, (per_item * snr.clamp(max=5) / (snr + 1)).mean(), atol=1e-6)
    assert weighted < plain  # timestep 5 (SNR in the hundreds) counts far less
