import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from stylekit import stylize
from stylekit.cli import main
from stylekit.data import load_photos
from stylekit.models import load_pipeline
from stylekit.stylize import Stylizer, blend, read_recipe, reproduce, save_with_recipe

TWO_STYLES = ["anime", "watercolor"]


@pytest.fixture(scope="module")
def stylizer(trained_outputs):
    return Stylizer("tiny")


@pytest.fixture(scope="module")
def photo():
    return next(p.image for p in load_photos() if p.file_name == "coffee.jpg").resize((100, 60))


def _array(image):
    return np.asarray(image, dtype=np.float32) / 255.0


def test_output_keeps_the_photos_size_and_aspect(stylizer, photo):
    image, recipe = stylizer.stylize(photo, "anime", content_strength=0.5)
    assert image.size == photo.size
    width, height = recipe.work_size
    assert width % stylizer.multiple == 0 and height % stylizer.multiple == 0 and width > height


def test_content_strength_one_returns_the_photo(stylizer, photo):
    image, _ = stylizer.stylize(photo, "anime", content_strength=1.0)
    assert np.abs(_array(image) - _array(photo)).mean() < 0.05
    with pytest.raises(ValueError, match="between 0 and 1"):
        stylizer.stylize(photo, "anime", content_strength=1.5)


def test_style_strength_zero_is_the_base_model(stylizer, photo):
    off, recipe = stylizer.stylize(photo, "anime", style_strength=0.0, seed=2, method="img2img")
    on, _ = stylizer.stylize(photo, "anime", style_strength=1.0, seed=2, method="img2img")
    base = load_pipeline("tiny")
    expected = base(
        prompt=recipe.full_prompt,
        image=recipe.source,
        strength=1 - recipe.content_strength,
        num_inference_steps=recipe.steps,
        guidance_scale=recipe.guidance,
        generator=torch.Generator().manual_seed(2),
    ).images[0]
    np.testing.assert_array_equal(_array(off), _array(expected.resize(photo.size, Image.Resampling.LANCZOS)))
    assert np.abs(_array(on) - _array(off)).mean() > 1e-3


def test_inversion_with_the_adapter_off_returns_the_autoencoders_copy(stylizer, photo, monkeypatch):
    # the replay with the adapter (all but) off leads back to the photo's latents: what makes strength 0's shortcut exact
    replayed, recipe = stylizer.stylize(photo, "anime", style_strength=1e-9, content_strength=0.2, seed=4, method="inversion")
    assert recipe.method == "inversion" and "Stylize method: inversion" in recipe.parameters()
    copy = stylizer.autoencode(recipe.source).resize(photo.size, Image.Resampling.LANCZOS)
    assert np.abs(_array(replayed) - _array(copy)).max() <= 2 / 255
    calls = []
    predict = stylizer._predicted_clean
    monkeypatch.setattr(stylizer, "_predicted_clean", lambda *args: calls.append(args[1]) or predict(*args))
    off, _ = stylizer.stylize(photo, "anime", style_strength=0.0, content_strength=0.2, seed=4, method="inversion")
    np.testing.assert_array_equal(_array(off), _array(copy))
    assert not calls  # at strength 0 the copy is made directly, without the two passes
    with pytest.raises(KeyError, match="no trained style"):
        stylizer.stylize(photo, "not_a_style", style_strength=0.0, method="inversion")
    on, _ = stylizer.stylize(photo, "anime", style_strength=1.0, content_strength=0.2, seed=4, method="inversion")
    assert np.abs(_array(on) - _array(off)).mean() > 1e-3


@pytest.mark.parametrize(("content", "runs"), [(0.8, 4), (0.9, 2), (0.85, 3)])
def test_content_strength_sets_the_inversion_steps_exactly(stylizer, photo, monkeypatch, content, runs):
    calls = []
    predict = stylizer._predicted_clean
    monkeypatch.setattr(stylizer, "_predicted_clean", lambda *args: calls.append(args[1]) or predict(*args))
    stylizer.recordings.clear()
    stylizer.stylize(photo, "anime", content_strength=content, steps=20, method="inversion")
    assert len(calls) == 2 * runs  # the recording pass with the base model, then the replay with the style


def test_a_recorded_inversion_is_replayed_for_another_style_strength(stylizer, photo, monkeypatch):
    calls = []
    predict = stylizer._predicted_clean
    monkeypatch.setattr(stylizer, "_predicted_clean", lambda *args: calls.append(args[1]) or predict(*args))
    stylizer.recordings.clear()
    stylizer.stylize(photo, "anime", style_strength=0.5, seed=7, method="inversion")
    replayed, recipe = stylizer.stylize(photo, "anime", style_strength=1.0, seed=7, method="inversion")
    runs = stylize.denoising_steps(recipe)
    assert len(calls) == 3 * runs  # recorded once, replayed twice
    stylizer.recordings.clear()
    recorded, _ = stylizer.stylize(photo, "anime", style_strength=1.0, seed=7, method="inversion")
    assert len(calls) == 5 * runs
    np.testing.assert_array_equal(_array(replayed), _array(recorded))  # a replay is exactly a new recording's result
    stylizer.stylize(photo, "anime", style_strength=1.0, seed=8, method="inversion")  # another seed: other noise, recorded anew
    assert len(calls) == 7 * runs
    for seed in range(stylize.RECORDINGS_KEPT + 2):
        stylizer.stylize(photo, "anime", content_strength=0.9, seed=seed, method="inversion")
    assert len(stylizer.recordings) == stylize.RECORDINGS_KEPT  # the oldest go


def test_inversion_keeps_the_photo_where_img2img_redraws_it(stylizer):
    from stylekit.data import center_square
    from stylekit.metrics import ssim

    for p in load_photos(split="held_out"):  # the base model alone (style 0): what each method keeps of a photo
        photo = center_square(p.image, 64)
        kept = {m: ssim(photo, stylizer.stylize(photo, "anime", 0.0, content_strength=0.3, method=m)[0]) for m in ("img2img", "inversion")}
        assert kept["inversion"] > kept["img2img"] + 0.2, kept


def test_unknown_method_is_a_clear_error(stylizer, photo):
    with pytest.raises(ValueError, match="unknown stylize method 'magic'"):
        stylizer.stylize(photo, "anime", method="magic")


def test_blending_two_styles(stylizer, photo):
    assert blend("anime") == {"anime": 1.0} and blend("anime", "watercolor", 0.25) == {"anime": 0.75, "watercolor": 0.25}
    assert blend("anime", "watercolor", 1.0) == {"watercolor": 1.0}
    mixed, recipe = stylizer.stylize(photo, blend("anime", "watercolor", 0.5))
    anime, _ = stylizer.stylize(photo, "anime")
    watercolor, _ = stylizer.stylize(photo, "watercolor")
    assert np.abs(_array(mixed) - _array(anime)).mean() > 1e-4 and np.abs(_array(mixed) - _array(watercolor)).mean() > 1e-4
    assert "<lora:anime:0.5> <lora:watercolor:0.5>" in recipe.parameters()


def test_switching_styles_never_reloads(stylizer, photo, monkeypatch):
    for style in TWO_STYLES:
        stylizer.stylize(photo, style)
    loads = []
    monkeypatch.setattr(stylizer.pipe, "load_lora_weights", lambda *a, **k: loads.append(a))
    unet = stylizer.pipe.unet
    for style in [*TWO_STYLES, blend(*TWO_STYLES, 0.3)]:
        for strength in (0.3, 1.0):
            stylizer.stylize(photo, style, style_strength=strength)
    assert loads == [] and stylizer.pipe.unet is unet


def test_unknown_style_is_a_clear_error(stylizer, photo):
    with pytest.raises(KeyError, match="no trained style 'cubism'; styles found: .*anime"):
        stylizer.stylize(photo, "cubism")


def test_a_style_added_from_any_folder_stylizes_as_the_found_one(stylizer, photo, tmp_path):
    copy = tmp_path / "elsewhere" / "my_watercolor"
    shutil.copytree(stylizer.styles["watercolor"], copy)
    stylizer.add_style("my_watercolor", copy)
    found, _ = stylizer.stylize(photo, "watercolor")
    added, recipe = stylizer.stylize(photo, "my_watercolor")
    assert recipe.full_prompt.startswith("watercolor style")  # the trigger it was trained with
    assert np.array_equal(_array(found), _array(added)) and not np.array_equal(
        _array(added), _array(stylizer.stylize(photo, "my_watercolor", style_strength=0.0)[0])
    )
    with pytest.raises(FileNotFoundError, match=f"no adapter weights in {tmp_path}"):
        stylizer.add_style("empty", tmp_path)


@pytest.mark.parametrize("method", ["img2img", "inversion"])
def test_recipe_in_png_reproduces_pixel_identical(stylizer, photo, tmp_path, method):
    image, recipe = stylizer.stylize(
        photo, {"anime": 0.6, "watercolor": 0.4}, style_strength=0.9, content_strength=0.4, seed=7, prompt="a cup of coffee", method=method
    )
    path = save_with_recipe(image, recipe, tmp_path / "out.png")
    with Image.open(path) as saved:
        parameters = saved.text["parameters"]
    assert parameters.startswith("anime style, watercolor style, a cup of coffee <lora:anime:0.54> <lora:watercolor:0.36>")
    assert "Steps: 20" in parameters and "Seed: 7" in parameters and "Denoising strength: 0.6" in parameters
    stored = read_recipe(path)
    assert stored.seed == 7 and stored.styles == {"anime": 0.6, "watercolor": 0.4} and stored.source.size == recipe.work_size
    assert stored.method == method
    again = reproduce(path, tmp_path / "again.png", stylizer=stylizer)
    np.testing.assert_array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(path)))


def test_reproduce_refuses_a_changed_adapter(stylizer, photo, tmp_path, monkeypatch):
    image, recipe = stylizer.stylize(photo, "anime", seed=1)
    path = save_with_recipe(image, recipe, tmp_path / "out.png")
    monkeypatch.setattr(stylize, "_adapter_hash", lambda _: "something-else")
    with pytest.raises(ValueError, match="has changed"):
        reproduce(path, tmp_path / "again.png", stylizer=stylizer)


def test_cli_stylizes_a_folder_and_reproduces(trained_outputs, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in load_photos(split="held_out"):
        p.image.save(folder / p.file_name)
    out = tmp_path / "stylized"
    code = main(
        [
            "stylize",
            str(folder),
            str(out),
            "--style",
            "anime=0.7",
            "--style",
            "watercolor=0.3",
            "--style-strength",
            "0.8",
            "--content-strength",
            "0.5",
            "--seed",
            "3",
        ]
    )
    assert code == 0
    written = sorted(out.glob("*.png"))
    assert [p.name for p in written] == ["chelsea.png", "coffee.png"]
    assert main(["reproduce", str(written[0]), str(tmp_path / "again.png")]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "again.png")), np.asarray(Image.open(written[0])))


def test_accelerate_launch_splits_a_folder_between_processes(trained_outputs, tmp_path):
    import os
    import subprocess
    import sys

    folder = tmp_path / "photos"
    folder.mkdir()
    for p in load_photos(split="held_out"):
        p.image.save(folder / p.file_name)
    stylize = ["-m", "stylekit", "stylize", str(folder), str(tmp_path / "split"), "--style", "watercolor", "--seed", "2"]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    launch += ["--dynamo_backend", "no", "--multi_gpu", *stylize]
    env = dict(os.environ, STYLEKIT_OUTPUTS=str(trained_outputs), OMP_NUM_THREADS="1")
    result = subprocess.run(launch, env=env, timeout=600, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("1 image(s) written") == 2, result.stdout  # one photo each
    assert main(["stylize", str(folder), str(tmp_path / "single"), "--style", "watercolor", "--seed", "2"]) == 0
    for name in ("chelsea.png", "coffee.png"):
        split, single = (np.asarray(Image.open(tmp_path / run / name), dtype=np.int16) for run in ("split", "single"))
        assert np.abs(split - single).max() <= 2, name
