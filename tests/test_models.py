import json
import time

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from stylekit import models
from stylekit.models import ModelLoadError, as_task, export_single_file, load_pipeline, pick_device, pick_dtype, tiny_model_dir
from stylekit.profiles import PROFILES, get_profile


def _img2img(pipe, seed=0):
    photo = Image.new("RGB", (64, 64), (90, 140, 200))
    generator = torch.Generator().manual_seed(seed)
    return pipe(prompt="a red house", image=photo, strength=0.5, num_inference_steps=10, generator=generator, output_type="np").images[0]


def test_profiles_are_documented():
    assert set(PROFILES) == {"tiny", "sd15", "sdxl"}
    assert PROFILES["sd15"].base_model == "stable-diffusion-v1-5/stable-diffusion-v1-5" and PROFILES["sd15"].resolution == 512
    assert PROFILES["sdxl"].base_model == "stabilityai/stable-diffusion-xl-base-1.0" and PROFILES["sdxl"].resolution == 1024
    for profile in PROFILES.values():
        assert profile.description and profile.train.steps > 0 and 0 < profile.inference.content_strength <= 1
    with pytest.raises(KeyError, match="tiny, sd15, sdxl"):
        get_profile("sd16")


def test_tiny_profile_loads_offline_and_runs_both_tasks(tiny_pipe):
    assert type(tiny_pipe).__name__ == "StableDiffusionImg2ImgPipeline"
    assert tiny_pipe.device.type == "cpu" and tiny_pipe.unet.dtype == torch.float32
    image = _img2img(tiny_pipe)
    assert image.shape == (64, 64, 3) and np.isfinite(image).all()
    txt2img = as_task(tiny_pipe, "txt2img")
    assert type(txt2img).__name__ == "StableDiffusionPipeline"
    assert txt2img.unet is tiny_pipe.unet and txt2img.vae is tiny_pipe.vae  # nothing reloaded
    generated = txt2img("a house by a lake", num_inference_steps=5, generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    assert generated.shape == (64, 64, 3) and generated.std() > 0.01


def test_tiny_profile_loads_quickly():
    start = time.perf_counter()
    load_pipeline("tiny", task="txt2img", device="cpu")
    assert time.perf_counter() - start < 30  # generous bound for a loaded CI machine; the model card reports the real figure


def test_local_folder_gives_the_same_model(tiny_pipe):
    pipe = load_pipeline(str(tiny_model_dir()), device="cpu")
    np.testing.assert_array_equal(_img2img(pipe), _img2img(tiny_pipe))


def test_single_file_round_trip(tiny_pipe, tmp_path):
    path = export_single_file(tiny_pipe, tmp_path / "tiny.safetensors")
    keys = load_file(str(path)).keys()
    assert any(k.startswith("model.diffusion_model.input_blocks.") for k in keys)
    assert any(k.startswith("first_stage_model.encoder.down.") for k in keys)
    assert any(k.startswith("cond_stage_model.transformer.text_model.") for k in keys)
    pipe = load_pipeline(path, config=tiny_model_dir(), device="cpu")
    np.testing.assert_allclose(_img2img(pipe), _img2img(tiny_pipe), atol=1e-6)


def test_pickle_checkpoint_refused_unless_allowed(tiny_pipe, tmp_path):
    single = export_single_file(tiny_pipe, tmp_path / "tiny.safetensors")
    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": load_file(str(single))}, ckpt)
    with pytest.raises(ModelLoadError, match="pickle.*allow_pickle=True"):
        load_pipeline(ckpt, config=tiny_model_dir())
    pipe = load_pipeline(ckpt, config=tiny_model_dir(), allow_pickle=True, device="cpu")
    np.testing.assert_allclose(_img2img(pipe), _img2img(tiny_pipe), atol=1e-6)


def test_missing_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_pipeline(tmp_path / "no_such_model")


def test_missing_single_file(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_pipeline(tmp_path / "model.safetensors")


def test_folder_without_model_index(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(ModelLoadError, match="model_index.json is missing"):
        load_pipeline(tmp_path)


def test_incomplete_folder_names_the_missing_component(tiny_copy):
    import shutil

    shutil.rmtree(tiny_copy / "unet")
    with pytest.raises(ModelLoadError, match="incomplete.*unet"):
        load_pipeline(tiny_copy)


def test_hub_id_while_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelLoadError, match="offline.*tiny"):
        load_pipeline("someone/not-a-cached-model")


def test_unknown_profile():
    with pytest.raises(ModelLoadError, match="not a profile \\(tiny, sd15, sdxl\\)"):
        load_pipeline("tinyy")


def test_unknown_task():
    with pytest.raises(ValueError, match="img2img"):
        load_pipeline("tiny", task="inpaint")


def test_device_and_dtype_choice():
    assert pick_device("cpu").type == "cpu"
    assert pick_device().type in {"cpu", "cuda", "mps"}
    assert pick_dtype(torch.device("cpu")) == torch.float32
    assert pick_dtype(torch.device("cuda")) == torch.float16
    assert pick_dtype(torch.device("mps")) == torch.float16
    assert pick_dtype(torch.device("cpu"), "bf16") == torch.bfloat16


def test_shipped_model_is_fp16_safetensors_within_budget():
    files = [p for p in tiny_model_dir().rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix == ".safetensors"]
    assert len(weights) == 3  # unet, vae, text encoder
    assert not [p for p in files if p.suffix in {".bin", ".ckpt", ".pt"}]
    assert sum(p.stat().st_size for p in files) < 25 * 2**20
    for path in weights:
        assert {t.dtype for t in load_file(str(path)).values()} == {torch.float16}
    index = json.loads((tiny_model_dir() / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"


def test_cpu_threads_give_each_process_its_share_and_restore(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(models, "available_cores", lambda: 4)
    before = torch.get_num_threads()
    for wanted, processes, expected in [(0, 1, 4), (0, 2, 2), (1, 1, 1), (3, 2, 2), (0, 8, 1)]:
        with models.cpu_threads(wanted, processes):
            assert torch.get_num_threads() == expected, (wanted, processes)
        assert torch.get_num_threads() == before
    monkeypatch.setenv("OMP_NUM_THREADS", str(before))  # the user's choice is kept
    with models.cpu_threads(1):
        assert torch.get_num_threads() == before
