"""Adapter files from outside stylekit, and stylekit's files read by other tools, on random SD 1.5- and SDXL-layout pipelines.

The "community" files here are written by the tests themselves, with the key names kohya's sd-scripts, AUTOMATIC1111
and ComfyUI use (``lora_te_text_model_...``, ``lora_te1_`` / ``lora_te2_``, ``lora_unet_...``), not by stylekit's code.
DoRA files are applied by AUTOMATIC1111's and ComfyUI's rules, written out here from their code.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from layouts import build_sd15, build_sdxl
from PIL import Image
from safetensors.torch import load_file, save_file

from stylekit.adapters import AdapterFileError, AdapterMismatch, kohya_layer_names, load_adapter, set_adapter_weights
from stylekit.cli import main
from stylekit.data import build_demo_sets
from stylekit.models import load_pipeline
from stylekit.stylize import Stylizer
from stylekit.train import TrainConfig, train_adapter
from stylekit.widgets import StylizerApp

RESOLUTION = 64
UNET_LINEAR = re.compile(r"attn[12]\.(to_q|to_k|to_v|to_out\.0)$")
UNET_CONV = re.compile(r"resnets\.\d+\.conv1$")
TEXT_LINEAR = re.compile(r"(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])$")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    return {"sd15": build_sd15(root / "sd15"), "sdxl": build_sdxl(root / "sdxl")}


@pytest.fixture(scope="module")
def pipes(folders):
    return {name: load_pipeline(str(folder), device="cpu") for name, folder in folders.items()}


def _kohya_text_name(prefix: str, name: str) -> str:
    """kohya's name of a CLIP text layer: always under ``text_model``, whichever transformers built the module."""
    inner = name[len("text_model.") :] if name.startswith("text_model.") else name
    return f"{prefix}_text_model_{inner.replace('.', '_')}"


def _pair(module, rank: int, generator) -> tuple[torch.Tensor, torch.Tensor]:
    weight = module.weight
    if weight.dim() == 4:  # kohya's convolution layout: a k x k down, a 1 x 1 up
        down = torch.randn(rank, weight.shape[1], *weight.shape[2:], generator=generator)
        up = torch.randn(weight.shape[0], rank, 1, 1, generator=generator)
    else:
        down, up = torch.randn(rank, weight.shape[1], generator=generator), torch.randn(weight.shape[0], rank, generator=generator)
    return down * 0.3, up * 0.3


def community_lora(pipe, path, unet=True, text=True, conv=False, rank=2, alpha=1.0, metadata=None):
    """A LoRA file as kohya's trainer writes one for ``pipe``'s layout (SD 1.x: diffusers layer names; SDXL: text encoders only)."""
    generator = torch.Generator().manual_seed(1)
    layers = {}
    if unet:
        for name, module in pipe.unet.named_modules():
            if UNET_LINEAR.search(name) or (conv and UNET_CONV.search(name)):
                layers[f"lora_unet_{name.replace('.', '_')}"] = module
    if text:
        encoders = (
            [("lora_te1", pipe.text_encoder), ("lora_te2", pipe.text_encoder_2)]
            if hasattr(pipe, "text_encoder_2")
            else [("lora_te", pipe.text_encoder)]
        )
        for prefix, encoder in encoders:
            layers.update({_kohya_text_name(prefix, n): m for n, m in encoder.named_modules() if TEXT_LINEAR.search(n)})
    tensors = {}
    for key, module in layers.items():
        down, up = _pair(module, rank, generator)
        tensors.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(alpha)})
    save_file(tensors, str(path), metadata=metadata or {"ss_network_module": "networks.lora"})
    return path, layers


def _stylize(folder, photo, output, *style_args) -> np.ndarray:
    argv = ["stylize", str(photo), str(output), "--model", str(folder), "--resolution", str(RESOLUTION), "--steps", "4"]
    assert main([*argv, "--method", "img2img", "--content-strength", "0.5", *style_args]) == 0
    return np.asarray(Image.open(output), dtype=np.float32)


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.new("RGB", (80, 64), (180, 110, 60)).save(path)
    return path


@pytest.mark.parametrize(
    "profile, unet, conv",
    [("sd15", True, True), ("sd15", False, False), ("sdxl", False, False)],
    ids=["sd15 unet+conv+text encoder", "sd15 text encoder", "sdxl both text encoders"],
)
def test_community_kohya_file_changes_the_picture_through_stylize(profile, unet, conv, folders, pipes, photo, tmp_path, capsys):
    file, layers = community_lora(pipes[profile], tmp_path / "community.safetensors", unet=unet, conv=conv)
    assert any(k.startswith(("lora_te_text_model_encoder_layers_0_", "lora_te1_text_model_")) for k in layers)
    base = _stylize(folders[profile], photo, tmp_path / "base.png", "--style", str(file), "--style-strength", "0")
    styled = _stylize(folders[profile], photo, tmp_path / "styled.png", "--style", f"{file}=1")
    assert np.abs(styled - base).mean() > 0.5, "the community LoRA changes the picture"


def test_kohya_file_applies_each_layer_as_kohya_defines_it(folders, tmp_path):
    """W + alpha / rank * up @ down, for a linear UNet layer, a convolution and a text-encoder layer."""
    pipe = load_pipeline(str(folders["sd15"]), device="cpu")
    file, layers = community_lora(pipe, tmp_path / "exact.safetensors", conv=True, rank=2, alpha=1.0)
    tensors = load_file(str(file))
    checked = [next(k for k in layers if k.endswith(suffix)) for suffix in ("attn1_to_q", "resnets_0_conv1", "self_attn_k_proj")]
    inputs = {}
    for key in checked:
        module = layers[key]
        shape = (2, module.weight.shape[1], 6, 6) if module.weight.dim() == 4 else (2, module.weight.shape[1])
        inputs[key] = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = {key: layers[key](inputs[key]) for key in checked}
    load_adapter(pipe, file, "exact")
    index = {name: module for component in ("unet", "text_encoder") for name, module in getattr(pipe, component).named_modules()}
    for key in checked:
        module = next(m for n, m in index.items() if n and getattr(m, "base_layer", None) is layers[key])  # peft's wrapper
        x, down, up = inputs[key], tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"]
        scale = tensors[f"{key}.alpha"] / down.shape[0]
        with torch.no_grad():
            if down.dim() == 4:
                expected = before[key] + scale * F.conv2d(F.conv2d(x, down, padding=layers[key].padding), up)
            else:
                expected = before[key] + scale * F.linear(F.linear(x, down), up)
            torch.testing.assert_close(module(x), expected, atol=1e-5, rtol=1e-4)


def test_bad_files_get_an_error_that_names_them_without_traceback(folders, pipes, photo, tmp_path, capsys):
    good, _ = community_lora(pipes["sd15"], tmp_path / "good.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    pickled = tmp_path / "pickled.safetensors"
    torch.save({"lora_unet_x.lora_down.weight": torch.zeros(1)}, pickled)
    sdxl, _ = community_lora(
        pipes["sdxl"], tmp_path / "for_sdxl.safetensors", unet=False, metadata={"ss_base_model_version": "sdxl_base_v1-0"}
    )
    expected = {truncated: "truncated", pickled: "pickle", sdxl: "for SDXL"}
    for file, words in expected.items():
        code = main(["stylize", str(photo), str(tmp_path / "out.png"), "--model", str(folders["sd15"]), "--style", str(file)])
        err = capsys.readouterr().err
        assert code == 2 and str(file) in err and words in err and "Traceback" not in err, err


def test_unknown_keys_stop_the_load_and_nothing_is_applied(pipes, tmp_path):
    file, _ = community_lora(pipes["sd15"], tmp_path / "odd.safetensors")
    tensors = load_file(str(file))
    tensors["lora_unet_down_blocks_0_attentions_0_proj_in.lora_magic.weight"] = torch.zeros(2, 2)
    save_file(tensors, str(file))
    pipe = pipes["sd15"]
    with pytest.raises(AdapterMismatch, match="lora_magic"):
        load_adapter(pipe, file, "odd")
    assert "odd" not in pipe.get_list_adapters().get("unet", [])


def test_stylizer_blends_a_community_file_with_a_trained_style(folders, pipes, tmp_path, monkeypatch):
    monkeypatch.setenv("STYLEKIT_OUTPUTS", str(tmp_path / "outputs"))
    dataset = build_demo_sets(tmp_path / "data", ["anime"], count=4, resolution=RESOLUTION)["anime"]
    config = TrainConfig(
        name="anime", dataset=str(dataset), profile="sd15", model=str(folders["sd15"]), steps=2, batch_size=2, resolution=RESOLUTION
    )
    train_adapter(config, progress=False)
    file, _ = community_lora(pipes["sd15"], tmp_path / "community.safetensors")
    stylizer = Stylizer(str(folders["sd15"]), device="cpu", resolution=RESOLUTION)
    stylizer.add_style("community", file)
    photo = Image.new("RGB", (64, 64), (90, 140, 200))
    _, recipe = stylizer.stylize(photo, {"anime": 0.5, "community": 0.5}, steps=4, method="img2img", content_strength=0.5)
    assert recipe.styles == {"anime": 0.5, "community": 0.5} and set(recipe.adapter_hashes) == {"anime", "community"}
    with pytest.raises(AdapterFileError, match="broken.safetensors"):
        (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 10)
        stylizer.add_style("broken", tmp_path / "broken.safetensors")
    assert "broken" not in stylizer.styles


def test_widget_adds_a_style_file(tiny_copy, tmp_path):
    pipe = load_pipeline(str(tiny_copy), device="cpu")
    file, _ = community_lora(pipe, tmp_path / "my_lora.safetensors", conv=False)
    app = StylizerApp(Stylizer(str(tiny_copy), styles_dir=tmp_path / "none", profile="tiny"))
    app.style_file.value = str(tmp_path / "missing.safetensors")
    app.add_file.click()
    assert "Could not add" in app.status.value and "missing.safetensors" in app.status.value
    app.style_file.value = str(file)
    app.add_file.click()
    assert app.style.value == "my_lora" and "my_lora" in app.second_style.options
    app.steps.value = 4
    app.generate.click()
    assert app.result[1].styles == {"my_lora": 1.0}


def _a1111_dora(weight, up, down, alpha, dora_scale, multiplier=1.0):
    """AUTOMATIC1111's Lora extension (network.py): scale by alpha / rank, decompose per input column, then the multiplier."""
    updown = (up.flatten(1) @ down.flatten(1)).reshape(weight.shape) * (alpha / down.shape[0])
    merged = updown + weight
    dims = weight.dim() - 1
    norm = (
        merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1, keepdim=True).reshape(merged.shape[1], *[1] * dims).transpose(0, 1)
    )
    return weight + multiplier * (merged * (dora_scale / norm) - weight)


def _comfyui_dora(weight, up, down, alpha, dora_scale):
    """ComfyUI's weight_decompose: the output-axis branch when dora_scale has one row per output, else per input column."""
    calc = weight + (up.flatten(1) @ down.flatten(1)).reshape(weight.shape) * (alpha / down.shape[0])
    if dora_scale.shape[0] == calc.shape[0]:
        norm = weight.reshape(weight.shape[0], -1).norm(dim=1, keepdim=True).reshape(weight.shape[0], *[1] * (weight.dim() - 1))
    else:
        norm = calc.transpose(0, 1).reshape(calc.shape[1], -1).norm(dim=1, keepdim=True)
        norm = norm.reshape(calc.shape[1], *[1] * (calc.dim() - 1)).transpose(0, 1)
    return calc * (dora_scale / (norm + torch.finfo(weight.dtype).eps))


def _with_weight(module, x, weight):
    """``module``'s output for ``x`` with ``weight`` in place of its own."""
    if weight.dim() == 4:
        return F.conv2d(x, weight, module.bias, padding=module.padding)
    return F.linear(x, weight, module.bias)


def test_dora_file_is_applied_by_automatic1111_and_comfyui_as_stylekit_applies_it(folders, tmp_path, monkeypatch):
    monkeypatch.setenv("STYLEKIT_OUTPUTS", str(tmp_path / "outputs"))
    dataset = build_demo_sets(tmp_path / "data", ["anime"], count=4, resolution=RESOLUTION)["anime"]
    config = TrainConfig(
        name="dora", dataset=str(dataset), profile="sd15", model=str(folders["sd15"]), kind="dora", conv=True, steps=6, batch_size=2,
        resolution=RESOLUTION, learning_rate=5e-2, save_precision="fp32",
    )  # fmt: skip
    result = train_adapter(config, progress=False)
    file = result.files["lycoris"]
    tensors = load_file(str(file))
    pipe = load_pipeline(str(folders["sd15"]), device="cpu")
    names = kohya_layer_names(pipe)["unet"]
    checked = {
        name: pipe.unet.get_submodule(name)
        for name in ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "down_blocks.0.resnets.0.conv1")
    }
    originals = {name: module.weight.detach().clone() for name, module in checked.items()}
    load_adapter(pipe, file, "dora")
    moved = []
    for name, module in checked.items():
        key, weight = names[name], originals[name]
        up, down, alpha, scale = (tensors[f"{key}.{p}"] for p in ("lora_up.weight", "lora_down.weight", "alpha", "dora_scale"))
        assert scale.shape == (1, weight.shape[1], *[1] * (weight.dim() - 2)), "one magnitude per input column"
        moved.append((scale.flatten() - weight.transpose(0, 1).flatten(1).norm(dim=1)).abs().max())
        x = torch.randn(2, weight.shape[1], *([6, 6] if weight.dim() == 4 else []), generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            ours = module(x)
            for rule in (_a1111_dora(weight, up, down, alpha, scale), _comfyui_dora(weight, up, down, alpha, scale)):
                theirs = _with_weight(module, x, rule)
                assert (theirs - ours).norm() / ours.norm() < 0.02
        set_adapter_weights(pipe, {"dora": 0.5})
        with torch.no_grad():
            half = module(x)
        set_adapter_weights(pipe, {"dora": 1.0})
        assert (half - ours).abs().max() > 0  # the multiplier reaches DoRA layers
        theirs = _with_weight(module, x, _a1111_dora(weight, up, down, alpha, scale, multiplier=0.5))
        assert (theirs - half).norm() / half.norm() < 0.02  # half strength as AUTOMATIC1111 applies it
    assert max(moved) > 1e-4, "training moved the magnitudes, so the axis matters"


@pytest.mark.parametrize("form", ["lora_te_", "lora_te1_text_model_", "lora_te1_"], ids=["no text_model", "te1", "te1 no text_model"])
def test_text_encoder_names_in_circulation_read_the_same(form, folders, tmp_path):
    """Files name SD 1.x's text encoder ``lora_te_text_model_...`` (kohya), ``lora_te1_...`` (some tools), and stylekit's
    own files before this fix had no ``text_model``: each form applies to the same layers."""
    pipe = load_pipeline(str(folders["sd15"]), device="cpu")
    file, _ = community_lora(pipe, tmp_path / "kohya.safetensors", unet=False)
    renamed = {key.replace("lora_te_text_model_", form): tensor for key, tensor in load_file(str(file)).items()}
    save_file(renamed, str(tmp_path / "renamed.safetensors"))
    ids = pipe.tokenizer(["a house"], padding="max_length", return_tensors="pt").input_ids
    states = []
    for path in (file, tmp_path / "renamed.safetensors"):
        fresh = load_pipeline(str(folders["sd15"]), device="cpu")
        load_adapter(fresh, path, "text")
        with torch.no_grad():
            states.append(fresh.text_encoder(ids)[0])
    with torch.no_grad():
        plain = pipe.text_encoder(ids)[0]
    assert (states[0] - plain).abs().max() > 1e-3
    torch.testing.assert_close(states[1], states[0])
