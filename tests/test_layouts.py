"""The sd15 and sdxl paths on random pipelines of Stable Diffusion 1.5's and SDXL's exact layouts (tiny widths).

Every adapter kind trains, saves, reloads (in stylekit, and in diffusers for LoRA) and stylizes
by both methods; the kohya files are named for the tools that read them; accumulation, two precisions
in one process and v-prediction are checked where the tiny model cannot show them.
"""

from __future__ import annotations

import gc
import re
import weakref
from dataclasses import replace

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from conftest import round_like_file
from diffusers import DDPMScheduler, DiffusionPipeline
from layouts import build_sd15, build_sdxl
from PIL import Image
from safetensors import safe_open

import stylekit.cache as cache_module
import stylekit.train as train_module
from stylekit.adapters import KINDS, AdapterMismatch, AdapterSpec, attach_adapter, trainable_parameters
from stylekit.cli import main
from stylekit.data import build_demo_sets
from stylekit.models import ModelLoadError, load_pipeline, original_unet_names, pick_mixed_precision, text_encoders
from stylekit.profiles import PROFILES
from stylekit.stylize import METHODS, Stylizer, read_recipe
from stylekit.train import TrainConfig, pipeline_precision, train_adapter, validation_images

pytestmark = pytest.mark.slow  # every test here trains or samples SD 1.5- and SDXL-layout pipelines

LAYOUTS = {"sd15": build_sd15, "sdxl": build_sdxl}
RESOLUTION = 64
KOHYA_KEY = re.compile(r"^lora_(unet|te|te1|te2)_[a-z0-9_]+\.(lora_down\.weight|lora_up\.weight|alpha|dora_scale)$")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    return {name: build(root / name) for name, build in LAYOUTS.items()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return build_demo_sets(tmp_path_factory.mktemp("layout_data"), ["anime"], count=6, resolution=RESOLUTION)["anime"]


@pytest.fixture
def outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("STYLEKIT_OUTPUTS", str(tmp_path / "outputs"))
    return tmp_path / "outputs"


def _config(profile, folder, dataset, name, **changes) -> TrainConfig:
    settings = dict(steps=2, batch_size=2, gradient_accumulation=1, resolution=RESOLUTION, learning_rate=2e-2, checkpoint_every=50)
    return TrainConfig(name=name, dataset=str(dataset), profile=profile, model=str(folder), **{**settings, **changes})


def _unet_output(pipe) -> torch.Tensor:
    """The UNet's prediction for fixed inputs (with SDXL's pooled text and size numbers)."""
    generator = torch.Generator().manual_seed(0)
    size = RESOLUTION // pipe.vae_scale_factor
    latents = torch.randn(1, pipe.unet.config.in_channels, size, size, generator=generator)
    states = torch.randn(1, pipe.tokenizer.model_max_length, pipe.unet.config.cross_attention_dim, generator=generator)
    extra = {}
    if pipe.unet.config.addition_embed_type == "text_time":
        pooled = torch.randn(1, pipe.text_encoder_2.config.projection_dim, generator=generator)
        extra["added_cond_kwargs"] = {
            "text_embeds": pooled,
            "time_ids": torch.tensor([[RESOLUTION, RESOLUTION, 0, 0, RESOLUTION, RESOLUTION]]),
        }
    with torch.no_grad():
        return pipe.unet(latents, torch.tensor([500]), encoder_hidden_states=states, **extra).sample


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("profile", list(LAYOUTS))
def test_every_kind_trains_reloads_and_stylizes(profile, kind, folders, dataset, outputs):
    result = train_adapter(_config(profile, folders[profile], dataset, kind, kind=kind, conv=True), progress=False, keep_pipeline=True)
    trained = _unet_output(round_like_file(result.pipeline, next(iter(result.files.values()))))
    fresh = DiffusionPipeline.from_pretrained(folders[profile])
    assert (trained - _unet_output(fresh)).abs().max() > 1e-4, "the adapter changes the UNet"

    reloaded = load_pipeline(str(folders[profile]), device="cpu")
    from stylekit.adapters import load_adapter

    load_adapter(reloaded, result.folder, kind)
    torch.testing.assert_close(_unet_output(reloaded), trained, atol=1e-5, rtol=1e-4)
    if kind == "lora":  # diffusers' own loader reads stylekit's diffusers file exactly
        fresh.load_lora_weights(str(result.folder), weight_name="pytorch_lora_weights.safetensors")
        torch.testing.assert_close(_unet_output(fresh), _unet_output(result.pipeline), atol=1e-5, rtol=1e-4)

    stylizer = Stylizer(str(folders[profile]), device="cpu", resolution=RESOLUTION)
    assert stylizer.profile.name == profile and kind in stylizer.styles
    photo = Image.new("RGB", (96, 80), (200, 120, 40))
    for method in ("img2img", "inversion"):
        image, recipe = stylizer.stylize(photo, kind, method=method, steps=4, content_strength=0.5)
        pixels = np.asarray(image, dtype=np.float32)
        assert image.size == photo.size and recipe.method == method and np.isfinite(pixels).all() and pixels.std() > 0


# fp16 on SDXL's layout is left out: on a CPU accelerate wraps the UNet for bf16 only
@pytest.mark.parametrize(("profile", "precision"), [("sd15", "bf16"), ("sd15", "fp16"), ("sdxl", "bf16")])
def test_previews_run_in_half_precision_after_accelerate_prepares_the_unet(profile, precision, folders, monkeypatch):
    """As on a GPU: weights in half precision, the UNet through ``accelerator.prepare`` (which makes it answer in
    float32), then the previews (text-to-image and the photo) by each stylize method."""
    pipe = load_pipeline(str(folders[profile]), device="cpu", dtype=precision)
    attach_adapter(pipe.unet, text_encoders(pipe), AdapterSpec(conv=True, text_encoder=True))
    for parameter in trainable_parameters(pipe.unet, *text_encoders(pipe)):
        parameter.data = parameter.data.float()  # as training keeps them
    AcceleratorState._reset_state()  # as each training run starts from a clean accelerate state
    accelerator = Accelerator(cpu=True, mixed_precision=precision)
    accelerator.prepare(pipe.unet)
    patched = pipe.unet.__dict__.get("forward")  # accelerate's float32 wrapper (on a CPU, for bf16 only)
    assert patched is not None or precision == "fp16"
    config = _config(profile, folders[profile], "unused", "preview", validation_prompts=("a house",)).resolved()
    photo = Image.new("RGB", (64, 64), (100, 150, 200))
    for method in METHODS:
        fast = replace(PROFILES[profile], inference=replace(PROFILES[profile].inference, steps=2, method=method))
        monkeypatch.setitem(PROFILES, profile, fast)
        with pipeline_precision(pipe.unet, accelerator):
            images = validation_images(pipe, config, photo)
        assert len(images) == 2 and all(np.isfinite(np.asarray(image, dtype=np.float32)).all() for image in images), method
        assert {image.size for image in images} == {(RESOLUTION, RESOLUTION)}  # the training's size, not the profile's 1024
    assert pipe.unet.__dict__.get("forward") is patched  # training's float32 answers come back after the previews


@pytest.mark.parametrize("profile", list(LAYOUTS))
def test_validation_previews_the_adapter_being_trained_text_encoders_too(profile, folders, dataset, outputs, monkeypatch):
    # a short preview, by inversion: its recording turns every adapter off, so the test sees whether all come back on
    fast = replace(PROFILES[profile], inference=replace(PROFILES[profile].inference, steps=4, method="inversion"))
    monkeypatch.setitem(PROFILES, profile, fast)
    config = _config(profile, folders[profile], dataset, "watched", steps=3, validation_every=2, text_encoder_lora=True)
    result = train_adapter(config, progress=False)  # step 1 runs at warm-up's learning rate 0: the preview after step 2 counts
    assert sorted(p.name for p in (result.folder / "validation").iterdir()) == ["step_00002.png", "step_00003.png"]
    plain = train_adapter(replace(config, validation_every=0, output_dir=str(outputs / "plain")), progress=False)
    assert result.losses == plain.losses  # the preview turned every adapter back on


@pytest.mark.parametrize("profile", list(LAYOUTS))
def test_kohya_file_loads_in_diffusers_and_names_layers_as_kohya_does(profile, folders, dataset, outputs):
    result = train_adapter(_config(profile, folders[profile], dataset, "te", text_encoder_lora=True, conv=True), progress=False)
    kohya = result.files["kohya"]
    with safe_open(str(kohya), framework="pt") as handle:
        keys, metadata = list(handle.keys()), handle.metadata()
    assert all(KOHYA_KEY.match(k) for k in keys), [k for k in keys if not KOHYA_KEY.match(k)][:3]
    prefixes = {k.split("_")[1] for k in keys}
    text_layers = {k.split(".")[0] for k in keys if not k.startswith("lora_unet_")}
    # kohya, AUTOMATIC1111 and ComfyUI name CLIP's layers under text_model, whatever transformers calls the module
    assert text_layers and all(re.match(r"lora_te[12]?_text_model_encoder_layers_\d+_self_attn_[qkvout]+_proj$", k) for k in text_layers)
    architecture = {"sd15": "stable-diffusion-v1/lora", "sdxl": "stable-diffusion-xl-v1-base/lora"}[profile]
    assert metadata["modelspec.architecture"] == architecture and metadata["modelspec.resolution"] == "64x64"
    if profile == "sdxl":
        assert prefixes == {"unet", "te1", "te2"} and metadata["ss_base_model_version"] == "sdxl_base_v1-0"
        # kohya's SDXL files name UNet layers as the original (sgm) model does: input_blocks, middle_block, output_blocks
        fresh = DiffusionPipeline.from_pretrained(folders[profile])
        sgm = {"lora_unet_" + name.replace(".", "_") for name in original_unet_names(fresh.unet).values()}
        unet_layers = {k.split(".")[0] for k in keys if k.startswith("lora_unet_")}
        assert unet_layers <= sgm and any(k.startswith("lora_unet_input_blocks_") for k in unet_layers)
        assert not any(k.startswith("lora_unet_down_blocks_") for k in unet_layers)
    else:
        assert prefixes == {"unet", "te"} and metadata["ss_base_model_version"] == "sd_v1"

    fresh = DiffusionPipeline.from_pretrained(folders[profile])
    before = _unet_output(fresh)
    fresh.load_lora_weights(str(kohya.parent), weight_name=kohya.name)
    after = _unet_output(fresh)
    assert (after - before).abs().max() > 1e-4, "diffusers applies the kohya file"
    reference = DiffusionPipeline.from_pretrained(folders[profile])
    reference.load_lora_weights(str(result.folder), weight_name="pytorch_lora_weights.safetensors")
    torch.testing.assert_close(after, _unet_output(reference), atol=2e-3, rtol=1e-2)  # the kohya file stores fp16

    stylekit_pipe = load_pipeline(str(folders[profile]), device="cpu")
    from stylekit.adapters import load_adapter

    load_adapter(stylekit_pipe, kohya, "te")  # stylekit's own fit check knows lora_te_, lora_te1_ and lora_te2_


def test_gradient_accumulation_matches_a_larger_batch(folders, dataset, outputs, monkeypatch):
    """batch 2 x accumulation 1 and batch 1 x accumulation 2 see the same items and give the same gradient (before clipping)."""
    gradients = []
    original = train_module.Accelerator.clip_grad_norm_

    def record(self, parameters, *args, **kwargs):
        parameters = list(parameters)
        gradients[-1].append(torch.cat([p.grad.flatten().clone() for p in parameters]))
        return original(self, parameters, *args, **kwargs)

    monkeypatch.setattr(train_module.Accelerator, "clip_grad_norm_", record)
    for name, batch, accumulation in (("big", 2, 1), ("accumulated", 1, 2)):
        gradients.append([])
        config = _config(
            "sd15", folders["sd15"], dataset, name, steps=1, batch_size=batch, gradient_accumulation=accumulation, trigger="anime"
        )
        train_adapter(config, progress=False)
    big, accumulated = gradients[0][0], gradients[1][0]
    assert big.abs().max() > 0
    torch.testing.assert_close(accumulated, big, atol=1e-6, rtol=1e-4)


def test_two_trainings_with_different_precisions_in_one_process(dataset, outputs, monkeypatch):
    """accelerate keeps its state per process; a second run with another precision must not fail (the GPU check mocked)."""
    precisions = iter(["bf16", "no"])  # the CPU autocasts bf16 only; "no" after "bf16" is the same state change as fp16 after bf16
    monkeypatch.setattr(train_module, "training_precision", lambda requested: next(precisions))
    for name in ("bf16_run", "fp32_run"):
        config = TrainConfig(name=name, dataset=str(dataset), steps=1, batch_size=2, checkpoint_every=50)
        result = train_adapter(config, progress=False)
        assert np.isfinite(result.losses).all()
    assert train_module.AcceleratorState().mixed_precision == "no"


def test_training_releases_its_pipeline_unless_asked(folders, dataset, outputs, monkeypatch):
    loaded = []
    original = train_module.load_pipeline

    def remember(*args, **kwargs):
        pipe = original(*args, **kwargs)
        loaded.append(weakref.ref(pipe.unet))
        return pipe

    monkeypatch.setattr(train_module, "load_pipeline", remember)
    result = train_adapter(_config("sd15", folders["sd15"], dataset, "released"), progress=False)
    gc.collect()
    assert result.pipeline is None and loaded[0]() is None, "nothing holds the trained pipeline"
    kept = train_adapter(_config("sd15", folders["sd15"], dataset, "kept"), progress=False, keep_pipeline=True)
    assert kept.pipeline.unet is loaded[1]()


def test_v_prediction_trains_on_the_velocity_and_inverts(tmp_path, dataset, outputs):
    from stylekit.diffusion import min_snr_weights, prediction_target

    folder = build_sd15(tmp_path / "v_model", prediction_type="v_prediction", zero_terminal_snr=True)
    scheduler = DDPMScheduler.from_config(load_pipeline(str(folder), device="cpu").scheduler.config)
    assert scheduler.config.prediction_type == "v_prediction" and scheduler.alphas_cumprod[-1] < 1e-6  # zero terminal SNR kept
    x0, noise = torch.randn(2, 3, 4, 8, 8).unbind(0)
    t = torch.tensor([10, 500, 999])
    noisy = scheduler.add_noise(x0, noise, t)
    kind = "v_prediction"
    torch.testing.assert_close(
        prediction_target(noisy, x0, scheduler.alphas_cumprod[t], kind), scheduler.get_velocity(x0, noise, t), atol=1e-4, rtol=1e-4
    )
    weights = min_snr_weights(scheduler.alphas_cumprod, t, 5.0, kind)
    snr = scheduler.alphas_cumprod[t] / (1 - scheduler.alphas_cumprod[t])
    torch.testing.assert_close(weights, torch.clamp(snr, max=5.0) / (snr + 1))
    assert torch.isfinite(weights).all()

    result = train_adapter(_config("sd15", folder, dataset, "v_style"), progress=False)
    assert np.isfinite(result.losses).all()
    stylizer = Stylizer(str(folder), device="cpu")
    # the inversion reads a v prediction as v: an exact velocity gives back the exact clean latents
    a = stylizer.ddpm.alphas_cumprod[400]
    exact = a.sqrt() * noise - (1 - a).sqrt() * x0
    stylizer.pipe.unet.forward = lambda *args, **kwargs: type("Out", (), {"sample": exact})()
    torch.testing.assert_close(stylizer._predicted_clean(a.sqrt() * x0 + (1 - a).sqrt() * noise, 400, {}, 1.0), x0, atol=1e-4, rtol=1e-4)


def test_sample_prediction_is_refused_by_name(tmp_path):
    folder = build_sd15(tmp_path / "sample_model", prediction_type="sample")
    with pytest.raises(ModelLoadError, match="'sample'"):
        load_pipeline(str(folder), device="cpu")


def test_cli_trains_and_stylizes_a_local_sdxl_folder(folders, dataset, outputs, tmp_path, capsys):
    common = ["--profile", "sdxl", "--model", str(folders["sdxl"])]
    assert main(["train", str(dataset), "--name", "xl", *common, "--steps", "1", "--batch-size", "1", "--resolution", str(RESOLUTION)]) == 0
    assert (outputs / "sdxl" / "loras" / "xl" / "xl.safetensors").exists()
    photo = tmp_path / "photo.png"
    Image.new("RGB", (80, 64), (20, 150, 90)).save(photo)
    options = ["--style", "xl", "--model", str(folders["sdxl"]), "--steps", "4"]
    for method, resolution in (("img2img", []), ("inversion", ["--resolution", str(RESOLUTION)])):
        target = tmp_path / f"{method}.png"
        assert main(["stylize", str(photo), str(target), *options, "--method", method, *resolution]) == 0
        assert Image.open(target).size == (80, 64)
    assert min(read_recipe(tmp_path / "img2img.png").work_size) > 512  # the profile's 1024 px
    assert read_recipe(tmp_path / "inversion.png").work_size == (64, 64)  # --resolution


def test_profiles_keep_their_outputs_apart_and_an_adapter_names_its_profile(folders, dataset, outputs, trained_outputs):
    import shutil

    tiny_style = trained_outputs / "tiny" / "loras" / "anime"
    borrowed = outputs / "sd15" / "loras" / "anime"
    shutil.copytree(tiny_style, borrowed)
    stylizer = Stylizer(str(folders["sd15"]), device="cpu")
    assert stylizer.profile.name == "sd15" and "anime" in stylizer.styles
    with pytest.raises(AdapterMismatch, match="trained on the 'tiny' profile"):
        stylizer.stylize(Image.new("RGB", (64, 64)), "anime")


def test_bf16_only_where_the_gpu_computes_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *args: (7, 5))  # T4: bf16 emulated
    assert pick_mixed_precision("auto") == "fp16"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *args: (8, 0))  # A100
    assert pick_mixed_precision("auto") == "bf16"
    assert pick_mixed_precision("fp16") == "fp16"


def test_hub_loads_the_fp16_variant_where_there_is_one(monkeypatch):
    from stylekit import models

    calls = []

    def fake(model_id, **kwargs):
        calls.append(kwargs.get("variant"))
        if kwargs.get("variant") and model_id == "org/no-variant":
            raise ValueError("You are trying to load the model files of the `variant=fp16`, but no such modeling files are available.")
        return "pipeline"

    monkeypatch.setattr(models.DiffusionPipeline, "from_pretrained", fake)
    assert models._from_pretrained("org/model", torch_dtype=torch.float16) == "pipeline" and calls == ["fp16"]
    calls.clear()
    assert models._from_pretrained("org/no-variant", torch_dtype=torch.float16) == "pipeline" and calls == ["fp16", None]
    calls.clear()
    models._from_pretrained("org/model", torch_dtype=torch.float32)
    assert calls == [None]


def test_safety_checker_when_asked_judges_both_methods_alike(folders, dataset, outputs):
    """A flagged result comes back black by img2img and by inversion alike (the checker stands in for SD 1.5's)."""
    train_adapter(_config("sd15", folders["sd15"], dataset, "checked"), progress=False)
    seen = []

    class Extractor:
        def __call__(self, images, return_tensors):
            return type("Features", (), {"pixel_values": torch.zeros(len(images), 3, 8, 8)})()

    class Checker:
        device, dtype = torch.device("cpu"), torch.float32

        def __call__(self, images, clip_input):
            seen.append(images.shape)
            return images, [True] * len(images)

    stylizer = Stylizer(str(folders["sd15"]), device="cpu", resolution=RESOLUTION)
    photo = Image.new("RGB", (64, 64), (200, 120, 40))
    unchecked = stylizer.stylize(photo, "checked", steps=4, content_strength=0.5)[0]
    assert np.asarray(unchecked).max() > 0 and not seen  # off by default
    stylizer.checker = (Checker(), Extractor())
    for method in ("img2img", "inversion"):
        image = stylizer.stylize(photo, "checked", method=method, steps=4, content_strength=0.5)[0]
        assert np.asarray(image).max() == 0, method
    assert len(seen) == 2


@pytest.mark.parametrize("profile", list(LAYOUTS))
def test_latents_cached_in_the_background_train_the_same_layouts(profile, folders, dataset, outputs, monkeypatch):
    started = []

    class Recorded(cache_module.BackgroundLatents):
        def __init__(self, *args, **kwargs):
            started.append(True)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(cache_module, "BackgroundLatents", Recorded)
    monkeypatch.setattr(train_module, "available_cores", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    result = train_adapter(_config(profile, folders[profile], dataset, "background", cpu_threads=1), progress=False)
    assert started and result.files["kohya"].exists()  # one training thread of two cores: the other one cached
    assert np.isfinite(result.losses).all()
    (cache,) = (outputs / "cache").glob("*.safetensors")
    with safe_open(str(cache), framework="pt") as handle:
        keys = set(handle.keys())
    assert {"latent.0", "latent_flip.0", "source.0", "source_flip.0"} <= keys  # mirrors and photos too, written once the thread was done


def test_sd_profiles_train_non_square_images_in_aspect_ratio_buckets(folders, outputs, tmp_path, monkeypatch):
    """sd15 keeps each image's aspect ratio by default (kohya's buckets, sides a multiple of 64), ``buckets=False`` crops squares."""
    folder = tmp_path / "wide_and_tall"
    folder.mkdir()
    for index, size in enumerate([(320, 160), (300, 150), (160, 320), (150, 300)]):
        Image.new("RGB", size, (40 * index, 120, 200 - 40 * index)).save(folder / f"{index}.png")
        (folder / f"{index}.txt").write_text("a flat colour field")
    prepared = []
    original = train_module.prepare_dataset
    monkeypatch.setattr(train_module, "prepare_dataset", lambda *a, **k: prepared.append(original(*a, **k)) or prepared[-1])
    settings = dict(steps=2, batch_size=2, resolution=192, paired=False)
    config = TrainConfig(name="buckets", dataset=str(folder), profile="sd15", model=str(folders["sd15"]), **settings)
    result = train_adapter(config, progress=False)
    assert sorted({image.size for image in prepared[-1].images}) == [(128, 256), (256, 128)] and all(np.isfinite(result.losses))
    train_adapter(replace(config, name="squares", buckets=False), progress=False)
    assert {image.size for image in prepared[-1].images} == {(192, 192)}
