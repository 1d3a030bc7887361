"""Metrics on known cases: identical images, added noise, known filters, and the optional scorers' availability."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from safetensors.torch import save_file

from stylekit import judge, metrics
from stylekit.checkpoints import load_checkpoint
from stylekit.data import build_demo_sets, center_square, load_photos
from stylekit.tiny.synth import STYLES, apply_style


@pytest.fixture(scope="module")
def photo():
    return center_square(load_photos(split="held_out")[0].image, 64)


def _noisy(image, sigma, seed=0):
    array = np.asarray(image, dtype=np.float32) / 255 + np.random.default_rng(seed).normal(0, sigma, (*image.size[::-1], 3))
    return Image.fromarray((np.clip(array, 0, 1) * 255).round().astype(np.uint8))


def test_identical_images_score_perfectly(photo):
    assert metrics.ssim(photo, photo) == pytest.approx(1.0)
    assert metrics.psnr(photo, photo) == float("inf")
    assert metrics.edge_f1(photo, photo) == 1.0
    assert metrics.gram_distance(metrics.feature_net(), photo, [photo]) == pytest.approx(0.0, abs=1e-6)


def test_noise_lowers_content_scores_in_order(photo):
    scores = [metrics.content_scores(photo, _noisy(photo, sigma)) for sigma in (0.02, 0.05, 0.15)]
    for key in ("ssim", "psnr", "edge_f1"):
        values = [s[key] for s in scores]
        assert values[0] > values[1] > values[2], key
    # PSNR of Gaussian noise is known: 20 log10(1 / sigma), a little higher where clipping trims the noise
    assert scores[1]["psnr"] == pytest.approx(20 * np.log10(1 / 0.05), abs=1.0)


def test_known_filters(photo):
    blurred = photo.filter(ImageFilter.GaussianBlur(2))
    assert metrics.edge_f1(photo, blurred) < 0.7 < metrics.edge_f1(photo, _noisy(photo, 0.01))
    mirrored = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    assert metrics.ssim(photo, mirrored) < 0.5
    net = metrics.feature_net()
    assert metrics.gram_distance(net, mirrored, [photo]) < 0.05  # texture statistics ignore where things are
    sketch = apply_style("pencil_sketch", photo)
    assert metrics.gram_distance(net, sketch, [apply_style("pencil_sketch", photo.rotate(90))]) < metrics.gram_distance(
        net, sketch, [apply_style("watercolor", photo)]
    )


def test_sizes_are_matched(photo):
    bigger = photo.resize((128, 128), Image.Resampling.LANCZOS)
    assert metrics.ssim(photo, bigger) > 0.9 and metrics.edge_f1(photo, bigger) > 0.5


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STYLEKIT_OUTPUTS", str(tmp_path_factory.mktemp("outputs")))
        return judge.StyleReference.demo(list(STYLES))


@pytest.fixture(scope="module")
def held_out():
    return [center_square(p.image, 64) for p in load_photos(split="held_out")]


def test_style_classifier_recognises_the_demo_styles(reference, held_out):
    classifier = reference.classifier
    assert classifier.classes == [*STYLES, "photo"]
    assert classifier.held_out_accuracy > 0.7  # on unseen demo content; chance is 1/6
    images = [apply_style(style, image) for style in STYLES for image in held_out]
    labels = [style for style in STYLES for _ in held_out]
    assert classifier.accuracy(images, labels) >= 0.5  # held-out photos are harder: real photos, other subjects
    np.testing.assert_allclose(classifier.probabilities(images).sum(1), 1.0, atol=1e-5)


def test_folders_make_a_reference_too(tmp_path, held_out):
    folders = build_demo_sets(tmp_path, ["anime", "pencil_sketch"], count=12)
    reference = judge.StyleReference.from_folders(folders, held_out * 3)
    assert reference.classifier.classes == ["anime", "pencil_sketch", "photo"] and len(reference.images["anime"]) == 12
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no reference images for empty"):
        judge.StyleReference.from_folders({"empty": tmp_path / "empty"}, held_out)


def test_style_scores_against_the_exact_target(reference, held_out):
    own, unstyled = [], []
    for style in STYLES:
        for photo in held_out:
            target = apply_style(style, photo)
            grams = reference.mean_grams(style)
            exact = metrics.style_scores(target, style, reference.images[style], reference.classifier, target, reference_grams=grams)
            plain = metrics.style_scores(photo, style, reference.images[style], reference.classifier, target, reference_grams=grams)
            assert exact["target_ssim"] == pytest.approx(1.0) and exact["target_gram"] == pytest.approx(0.0, abs=1e-6)
            assert plain["target_ssim"] < 1.0 and plain["target_gram"] > 0.0
            own.append(exact["style_probability"])
            unstyled.append(plain["style_probability"])
    assert np.mean(own) > np.mean(unstyled) + 0.2


def test_scores_reuse_each_reference_sets_gram_matrices_with_the_same_result(reference, held_out):
    photo, style = held_out[0], "watercolor"
    stylized = apply_style(style, photo)
    cached = judge.score(photo, stylized, style, reference)
    fresh = metrics.gram_distance(reference.classifier.net, stylized, reference.images[style])
    assert cached["gram_distance"] == pytest.approx(fresh, rel=1e-5)
    assert reference.mean_grams(style) is reference.mean_grams(style)


def test_evenness_and_monotonicity():
    strengths = [0, 0.25, 0.5, 0.75, 1.0]
    assert metrics.evenness(strengths, [0.1, 0.2, 0.3, 0.4, 0.5]) == pytest.approx(1.0)
    assert metrics.evenness(strengths, [0.3] * 5) == 0.0
    assert metrics.evenness(strengths, [0.0, 0.0, 0.0, 0.0, 1.0]) < 0.6  # all of it in the last step
    assert metrics.is_monotonic([0.1, 0.2, 0.19, 0.4], tolerance=0.02)
    assert not metrics.is_monotonic([0.1, 0.2, 0.1, 0.4], tolerance=0.02)
    assert metrics.is_monotonic([0.9, 0.5, 0.2], increasing=False)


def test_mean_by_groups_numeric_columns():
    rows = [{"kind": "a", "x": 1.0, "s": "u"}, {"kind": "a", "x": 3.0, "s": "v"}, {"kind": "b", "x": 5.0, "s": "w"}]
    assert metrics.mean_by(rows, ["kind"]) == [{"kind": "a", "x": 2.0}, {"kind": "b", "x": 5.0}]


def test_vgg16_is_used_when_local_weights_exist(tmp_path, monkeypatch, photo):
    generator = torch.Generator().manual_seed(0)
    state, channels, index = {}, 3, 0
    for spec in metrics.VGG16_LAYERS:
        if spec == "M":
            index += 1
            continue
        state[f"features.{index}.weight"] = torch.randn((spec, channels, 3, 3), generator=generator) * 0.05
        state[f"features.{index}.bias"] = torch.zeros(spec)
        channels, index = spec, index + 2
    save_file(state, tmp_path / "vgg16.safetensors")
    monkeypatch.setenv("STYLEKIT_VGG16", str(tmp_path / "vgg16.safetensors"))
    net = metrics.feature_net()
    assert net.name == "vgg16" and len(net.activations([photo])) == 4
    save_file({"classifier.0.weight": torch.zeros(2, 2)}, tmp_path / "other.safetensors")
    monkeypatch.setenv("STYLEKIT_VGG16", str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a VGG-16"):
        metrics.feature_net()
    monkeypatch.setenv("STYLEKIT_VGG16", str(tmp_path / "vgg16.pth"))
    with pytest.raises(FileNotFoundError, match="safetensors"):
        metrics.feature_net()


def test_unavailable_scorers_are_reported_not_approximated(photo, monkeypatch):
    monkeypatch.delenv("STYLEKIT_CLIP", raising=False)
    monkeypatch.delenv("STYLEKIT_DINO", raising=False)
    monkeypatch.delenv("STYLEKIT_VGG16", raising=False)
    status = metrics.availability()
    assert status["lpips"].startswith("unavailable") and status["feature network"].startswith("random-filters")
    assert "lpips" not in metrics.content_scores(photo, photo)
    if not status["clip"].startswith("available"):
        assert "clip" not in metrics.style_scores(photo, "anime", [photo])


def test_local_clip_and_dino_weights_are_used(tmp_path, monkeypatch, photo):
    """Tiny random CLIP and DINOv2 models saved locally stand in for real weights: the code paths that load and score run."""
    from transformers import (
        BitImageProcessor,
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
        Dinov2Config,
        Dinov2Model,
    )

    from stylekit.models import tiny_model_dir

    tokenizer = CLIPTokenizer.from_pretrained(tiny_model_dir() / "tokenizer")
    clip = CLIPModel(
        CLIPConfig(
            text_config={
                "vocab_size": len(tokenizer),
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "max_position_embeddings": 32,
            },
            vision_config={
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "image_size": 32,
                "patch_size": 8,
            },
            projection_dim=16,
        )
    )
    clip.save_pretrained(tmp_path / "clip")
    image_size = {"shortest_edge": 32}, {"height": 32, "width": 32}
    CLIPProcessor(image_processor=CLIPImageProcessor(size=image_size[0], crop_size=image_size[1]), tokenizer=tokenizer).save_pretrained(
        tmp_path / "clip"
    )
    dino = Dinov2Model(
        Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, patch_size=8, image_size=32)
    )
    dino.save_pretrained(tmp_path / "dino")
    BitImageProcessor(size=image_size[0], crop_size=image_size[1]).save_pretrained(tmp_path / "dino")
    monkeypatch.setenv("STYLEKIT_CLIP", str(tmp_path / "clip"))
    monkeypatch.setenv("STYLEKIT_DINO", str(tmp_path / "dino"))

    status = metrics.availability()
    assert status["clip"].startswith("available") and status["dino"].startswith("available")
    content = metrics.content_scores(photo, photo)
    assert content["dino"] == pytest.approx(1.0, abs=1e-5)  # an image is most similar to itself
    assert metrics.content_scores(photo, photo.rotate(90))["dino"] < 1.0
    style = metrics.style_scores(photo, "anime", [photo])
    assert -1.0 <= style["clip"] <= 1.0


def test_target_gain_is_zero_for_the_photo_one_for_the_target_and_low_for_a_blur(held_out):
    from PIL import ImageFilter

    net = metrics.feature_net("random-filters")
    for photo in held_out:
        for style in STYLES:
            target = apply_style(style, photo)
            assert metrics.target_gain(net, photo, target, photo) == pytest.approx(0.0, abs=1e-6)
            assert metrics.target_gain(net, target, target, photo) == pytest.approx(1.0, abs=1e-6)
            assert metrics.target_gain(net, photo.filter(ImageFilter.GaussianBlur(0.7)), target, photo) < 0.25


def test_judge_check_flags_what_the_judge_can_and_cannot_tell(reference, held_out):
    rows = {r["style"]: r for r in judge.judge_check(reference.classifier, held_out, list(STYLES))}
    assert rows["pencil_sketch"]["valid"] and rows["pencil_sketch"]["on_target"] > 0.9 and rows["pencil_sketch"]["on_photo"] < 0.05
    for row in rows.values():
        assert row["valid"] == (row["on_target"] >= judge.JUDGE_ON_TARGET and row["on_photo"] <= judge.JUDGE_ON_PHOTO)


def test_image_statistics_of_a_batch_are_each_images_own():
    photo = center_square(load_photos(split="held_out")[0].image, 64)
    flat = Image.new("RGB", (64, 64), (200, 40, 40))
    together = judge.image_statistics([photo, flat, apply_style("anime", photo)])
    for row, image in zip(together, (photo, flat, apply_style("anime", photo))):
        assert torch.equal(row, judge.image_statistics([image])[0])
    # one colour: no saturation spread, no edges, no local variance, a palette of one colour in 64 x 64 pixels
    assert torch.equal(together[1][[6, 7, 8, 9, 10, 11]], torch.zeros(6)) and together[1][12] == pytest.approx(1 / 4096)
    assert together[2][12] < together[0][12]  # the anime filter's flat colours: fewer distinct colours than the photo


def test_the_demo_judge_is_fitted_once_then_read_back_while_its_features_hold(tmp_path, monkeypatch):
    monkeypatch.setenv("STYLEKIT_OUTPUTS", str(tmp_path))
    first = judge.StyleReference.demo(["anime", "3d"], classifier_images=24).classifier
    (kept,) = (tmp_path / "tiny" / judge.JUDGE_FOLDER).iterdir()
    monkeypatch.setattr(judge, "_FITTED", {})  # as a new process (another notebook's kernel) starts

    def no_fitting(*args):
        raise AssertionError("the kept judge was fitted again")

    monkeypatch.setattr(judge, "apply_style", no_fitting)  # fitting styles the content; reading back does not
    again = judge.StyleReference.demo(["anime", "3d"], classifier_images=24).classifier
    assert again.classes == first.classes == ["anime", "3d", "photo"] and again.held_out_accuracy == first.held_out_accuracy
    assert torch.equal(again.weight, first.weight) and torch.equal(again.scale, first.scale)
    probe = load_checkpoint(kept)[0]["probe"]
    assert judge.StyleClassifier.load(kept, again.net, probe) is not None
    assert judge.StyleClassifier.load(kept, again.net, probe * 1.01) is None  # other features: fit again
    assert judge.StyleClassifier.load(tmp_path / "none.safetensors", again.net, probe) is None

    first.save(kept, probe * 1.01)  # a kept judge that no longer holds (its features were computed otherwise)...
    monkeypatch.undo()
    monkeypatch.setenv("STYLEKIT_OUTPUTS", str(tmp_path))
    monkeypatch.setattr(judge, "_FITTED", {})
    refitted = judge.StyleReference.demo(["anime", "3d"], classifier_images=24).classifier
    assert torch.allclose(refitted.weight, first.weight, atol=1e-4)  # ...is fitted again, to the same weights...
    assert judge.StyleClassifier.load(kept, refitted.net, probe) is not None  # ...and written over the stale file
