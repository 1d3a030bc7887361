"""Every adapter kind trains through the same trainer, saves, reloads identically, and refuses a model it does not fit."""

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from conftest import round_like_file, stored_dtypes
from safetensors import safe_open

from stylekit import adapters
from stylekit.adapters import KINDS, AdapterMismatch, AdapterSpec, adapter_file, load_adapter, set_adapter_weights
from stylekit.cli import main
from stylekit.data import build_demo_sets
from stylekit.models import as_task, load_pipeline
from stylekit.train import TrainConfig, train_adapter

LYCORIS_KEYS = {"locon": "lora_down", "loha": "hada_w1_a", "lokr": "lokr_w1", "oft": "oft_blocks", "boft": "oft_blocks"}


@pytest.fixture(scope="module")
def anime_set(tmp_path_factory):
    return build_demo_sets(tmp_path_factory.mktemp("datasets"), ["anime"], count=8)["anime"]


@pytest.fixture(scope="module")
def trained(anime_set, tmp_path_factory):
    """Each kind trained a few steps on attention and convolution layers (module-wide, reused by the tests below)."""
    outputs = tmp_path_factory.mktemp("kinds")
    results = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STYLEKIT_OUTPUTS", str(outputs))
        for kind in KINDS:
            config = TrainConfig(name=f"style_{kind}", dataset=str(anime_set), kind=kind, steps=4, learning_rate=5e-3, conv=True)
            results[kind] = train_adapter(config, progress=False, keep_pipeline=True)
    return results


def _image(pipe, seed=0):
    txt2img = as_task(pipe, "txt2img")
    return txt2img("anime style, a house", num_inference_steps=6, generator=torch.Generator().manual_seed(seed), output_type="np").images[0]


@pytest.fixture(scope="module")
def base_image():
    return _image(load_pipeline("tiny"))


def test_kinds_listed():
    assert set(KINDS) >= {"lora", "dora", "locon", "loha", "lokr", "oft", "boft"}
    with pytest.raises(ValueError, match="unknown adapter kind"):
        AdapterSpec(kind="ia4")
    with pytest.raises(ValueError, match="LoRA only"):
        AdapterSpec(kind="loha", text_encoder=True)


@pytest.mark.parametrize("kind", KINDS)
def test_kind_reloads_identically_and_scales(kind, trained, base_image):
    result = trained[kind]
    in_memory = _image(round_like_file(result.pipeline, adapter_file(result.folder)))
    assert np.abs(in_memory - base_image).max() > 1e-3, "the trained adapter changes the output"

    pipe = load_pipeline("tiny")
    load_adapter(pipe, result.folder, kind)
    np.testing.assert_allclose(_image(pipe), in_memory, atol=1e-5)

    set_adapter_weights(pipe, {kind: 0.0})
    np.testing.assert_allclose(_image(pipe), base_image, atol=1e-6)  # multiplier 0 is the base model
    set_adapter_weights(pipe, {kind: 0.5})
    half = _image(pipe)
    assert np.abs(half - base_image).max() > 1e-4 and np.abs(half - in_memory).max() > 1e-4  # strength in between
    network = getattr(result.pipeline.unet, adapters.LYCORIS_MODULE, None)
    if network is not None:  # the network as trained, in memory, at the same strength
        network.set_multiplier(0.5)
        np.testing.assert_allclose(_image(result.pipeline), half, atol=1e-5)
        network.set_multiplier(1.0)


def _hooked(pipe) -> list[str]:
    return [name for name, module in pipe.unet.named_modules() if getattr(module, "_lycoris_wrappers", None)]


@pytest.mark.parametrize("kind", ["loha", "lokr"])
def test_an_inactive_lycoris_adapter_does_not_run(kind, trained, base_image):
    pipe = load_pipeline("tiny")
    load_adapter(pipe, trained[kind].folder, kind)
    active = _image(pipe)
    assert _hooked(pipe)
    set_adapter_weights(pipe, {})
    assert not _hooked(pipe)  # the UNet runs its own layers only
    np.testing.assert_array_equal(_image(pipe), base_image)
    set_adapter_weights(pipe, {kind: 1.0})
    np.testing.assert_array_equal(_image(pipe), active)


@pytest.mark.parametrize("kind", [k for k in KINDS if k in LYCORIS_KEYS])
def test_lycoris_files_use_lycoris_names(kind, trained):
    path = trained[kind].files["lycoris"]
    with safe_open(str(path), framework="pt") as handle:
        keys, metadata = list(handle.keys()), handle.metadata()
    assert all(k.startswith("lora_unet_") for k in keys)
    assert any(k.endswith(f".{LYCORIS_KEYS[kind]}") or f".{LYCORIS_KEYS[kind]}." in k for k in keys)
    assert any("_resnets_" in k for k in keys) and any("_attn1_to_q." in k for k in keys)  # conv and attention targets
    assert not any("_ff_" in k for k in keys)  # only the layers named, not whole blocks
    assert metadata["ss_network_module"] == "lycoris.kohya"
    assert adapter_file(trained[kind].folder) == path


def _other_model(channels):
    """The tiny pipeline with a UNet of other widths (same layer names, other shapes) or fewer attention levels."""
    pipe = load_pipeline("tiny")
    config = dict(pipe.unet.config)
    if channels == "fewer attention levels":
        config.update(
            down_block_types=["DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"],
            up_block_types=["CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
        )
    else:
        config.update(block_out_channels=channels)
    pipe.unet = UNet2DConditionModel.from_config(config)
    return pipe


@pytest.mark.parametrize("kind", ["lora", "loha", "oft"])
@pytest.mark.parametrize(("variant", "message"), [([32, 96, 96], "of another shape"), ("fewer attention levels", "this model lacks")])
def test_file_for_another_model_is_refused_whole(kind, variant, message, trained):
    pipe = _other_model(variant)
    before = _image(pipe)
    with pytest.raises(AdapterMismatch, match=message) as error:
        load_adapter(pipe, trained[kind].folder, kind)
    assert "down_blocks" in str(error.value) or "up_blocks" in str(error.value)  # names the layers
    assert not getattr(pipe, "lycoris_networks", {}) and not any(pipe.get_list_adapters().values())
    np.testing.assert_array_equal(_image(pipe), before)  # nothing was applied


def test_cli_trains_a_lycoris_kind(anime_set, tmp_path, capsys):
    assert main(["train", str(anime_set), "--name", "cli_loha", "--kind", "loha", "--steps", "2", "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "lycoris" in out and "cli_loha.safetensors" in out
    with pytest.raises(SystemExit):
        main(["train", str(anime_set), "--name", "x", "--kind", "ia4"])


def test_lycoris_coverage_shows_what_presets_wrap():
    unet = load_pipeline("tiny").unet
    coverage = adapters.lycoris_coverage(unet)
    assert not coverage["classes of the 'attn-only' preset"]  # diffusers' attention class is not CrossAttention
    attention, with_conv = coverage["stylekit: attention"], coverage["stylekit: attention + conv"]
    assert set(attention) == {n for n, _ in unet.named_modules() if n.endswith(("to_q", "to_k", "to_v", "to_out.0"))}
    assert set(attention) < set(with_conv) < set(coverage["lycoris defaults (no preset)"])
    assert any(adapters.layer_group(n) == "feed-forward" for n in coverage["lycoris defaults (no preset)"])
    table = adapters.coverage_table(coverage)
    assert [row[1] for row in table.rows] == [len(layers) for layers in coverage.values()]
    assert not getattr(unet, "lycoris", None)  # counting changed nothing


def test_files_for_other_tools_store_fp16_by_default_and_fp32_on_request(trained, anime_set, tmp_path, monkeypatch):
    assert stored_dtypes(trained["lora"].files["kohya"]) == {torch.float16}
    assert stored_dtypes(trained["loha"].files["lycoris"]) == {torch.float16}
    assert stored_dtypes(trained["lora"].files["diffusers"]) == {torch.float32}  # diffusers' own layout stays as diffusers writes it
    monkeypatch.setenv("STYLEKIT_OUTPUTS", str(tmp_path))
    config = TrainConfig(name="full", dataset=str(anime_set), steps=1, save_precision="fp32")
    assert stored_dtypes(train_adapter(config, progress=False).files["kohya"]) == {torch.float32}
    with pytest.raises(ValueError, match="unknown save precision"):
        TrainConfig(name="half", dataset=str(anime_set), save_precision="fp8")


def _adapter_tensors(pipe):
    """Every parameter and buffer of the UNet and of any LyCORIS network hooked into it."""
    modules = [pipe.unet] + [layer for network in getattr(pipe, "lycoris_networks", {}).values() for layer in network.loras]
    return [t for module in modules for t in [*module.parameters(), *module.buffers()] if t.is_floating_point()]


@pytest.mark.parametrize("kind", KINDS)
def test_a_loaded_adapter_follows_the_pipelines_device_and_dtype(kind, trained):
    pipe = load_pipeline("tiny", dtype="bf16")
    base = next(pipe.unet.parameters())
    load_adapter(pipe, trained[kind].folder, kind)
    tensors = _adapter_tensors(pipe)
    assert len(tensors) > len(list(load_pipeline("tiny").unet.parameters()))  # the adapter's own weights are among them
    assert all(t.dtype == torch.bfloat16 and t.device == base.device for t in tensors)
    assert np.isfinite(_image(pipe)).all()  # and it runs
