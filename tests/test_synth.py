import numpy as np
import pytest
from PIL import Image, ImageDraw

from stylekit.tiny import synth
from stylekit.data import load_photos


@pytest.fixture(scope="module")
def photo():
    return load_photos(split="held_out")[0].image.resize((96, 64))


def _array(image):
    return np.asarray(image, dtype=np.float32) / 255.0


def _saturation(a):
    return (a.max(-1) - a.min(-1)).mean()


def _high_frequency(a):
    gray = a.mean(-1)
    return np.abs(np.diff(gray, axis=0)).mean() + np.abs(np.diff(gray, axis=1)).mean()


def test_scenes_are_deterministic_and_varied():
    a, b = synth.make_scene(7, 64), synth.make_scene(7, 64)
    assert a.caption == b.caption and np.array_equal(_array(a.image), _array(b.image))
    scenes = synth.make_scenes(40, 64)
    assert len({s.caption for s in scenes}) > 30
    assert all(s.image.size == (64, 64) and s.image.mode == "RGB" for s in scenes)
    assert any("house" in s.caption for s in scenes) and any("lake" in s.caption or "sea" in s.caption for s in scenes)


def test_scene_caption_matches_content():
    night = next(s for s in synth.make_scenes(60, 64) if "night sky" in s.caption)
    day = next(s for s in synth.make_scenes(60, 64) if "blue sky" in s.caption)
    assert _array(night.image)[:8].mean() < _array(day.image)[:8].mean()  # the top rows are sky


@pytest.mark.parametrize("name", list(synth.STYLES))
def test_filters_are_pure_deterministic_and_keep_shape(name, photo):
    before = _array(photo).copy()
    first, second = synth.apply_style(name, photo), synth.apply_style(name, photo)
    assert np.array_equal(_array(photo), before)  # input untouched
    assert first.size == photo.size and first.mode == "RGB"
    assert np.array_equal(_array(first), _array(second))
    assert np.abs(_array(first) - before).mean() > 0.02  # visibly changed


def test_anime_has_flat_colours_and_dark_outlines(photo):
    out = _array(synth.apply_style("anime", photo))
    colours_in = len(np.unique(_array(photo).reshape(-1, 3), axis=0))
    colours_out = len(np.unique(out.reshape(-1, 3), axis=0))
    assert colours_out <= 16 < colours_in
    assert (out.max(-1) < 0.15).mean() > 0.01  # outline pixels
    disc = _array(synth.apply_style("anime", _framed((230, 120, 40), shape="ellipse"))).max(-1)
    rows, columns = np.mgrid[0:64, 0:64]
    border = np.abs(np.hypot(rows - 31.5, columns - 31.5) - 24) < 2  # 4 pixels wide: a line of two fills half
    sector = (np.arctan2(rows - 31.5, columns - 31.5) // (np.pi / 4)).astype(int)
    dark = disc < 0.15
    assert all(dark[border & (sector == k)].mean() > 0.3 for k in range(-4, 4))  # a line all around the shape...
    assert dark[~border].mean() < 0.01  # ...and nowhere else


def _framed(fill, size=64, frame=(250, 250, 250), shape="rectangle"):
    """A flat shape of colour ``fill`` on a plain frame."""
    image = Image.new("RGB", (size, size), frame)
    getattr(ImageDraw.Draw(image), shape)([size // 8, size // 8, size - size // 8, size - size // 8], fill=fill)
    return image


def test_pencil_sketch_has_no_colour_and_is_mostly_paper(photo):
    out = _array(synth.apply_style("pencil_sketch", photo))
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
    assert np.median(out) > 0.8


def test_pencil_sketch_hatches_the_shadows():
    """A flat dark area becomes parallel lines: half of it dark, and the pattern repeats every 5 pixels across."""
    gray = _array(synth.apply_style("pencil_sketch", _framed((70, 70, 70)))).mean(-1)[20:44, 16:48]
    assert 0.3 < (gray < 0.5).mean() < 0.7
    shifted = [np.abs(gray[:, k:] - gray[:, :-k]).mean() for k in (1, 2, 5)]
    assert shifted[2] < 0.2 * min(shifted[:2])


def test_watercolor_is_lighter_and_softer(photo):
    before, out = _array(photo), _array(synth.apply_style("watercolor", photo))
    assert out.mean() > before.mean()
    assert _high_frequency(out) < _high_frequency(before)


def test_watercolor_pools_pigment_at_the_rim_and_leaves_paper_white():
    out = _array(synth.apply_style("watercolor", _framed((60, 110, 200), shape="ellipse"))).mean(-1)
    rows, columns = np.mgrid[0:64, 0:64]
    radius = np.hypot(rows - 32, columns - 32)
    assert out[(radius > 21) & (radius < 24)].mean() < out[radius < 12].mean() - 0.03  # a darker rim
    assert out[radius > 30].min() > 0.85  # the white frame stays paper


def test_oil_painting_is_richer_in_directional_strokes(photo):
    before, out = _array(photo), _array(synth.apply_style("oil_painting", photo))
    assert _saturation(out) > _saturation(before)
    paint = _array(synth.apply_style("oil_painting", Image.new("RGB", (64, 64), (150, 90, 60)))).mean(-1)
    along, across = np.abs(np.diff(paint, axis=0)).mean(), np.abs(np.diff(paint, axis=1)).mean()
    assert paint.std() > 0.03 and across > 2 * along  # a flat colour gets brush strokes, longer than wide


def test_3d_is_lit_from_the_top_left_with_highlights():
    out = _array(synth.apply_style("3d", _framed((200, 200, 200), frame=(60, 60, 60), shape="ellipse")))
    gray = out.mean(-1)
    top_left_rim, bottom_right_rim = gray[12:18, 12:18].mean(), gray[46:52, 46:52].mean()
    assert top_left_rim > bottom_right_rim + 0.1
    assert out.min(-1).max() > 0.95  # a white highlight on a light grey disc


def test_unknown_style_is_a_clear_error(photo):
    with pytest.raises(KeyError, match="unknown demo style"):
        synth.apply_style("cubism", photo)


@pytest.mark.parametrize("name", list(synth.STYLES))
def test_filters_scale_with_the_image(name):
    """At 512 px a filter changes a photo as it does at 64 px: its result, shrunk to 64 px, is close to the 64 px result.

    The same filter with its 64 px sizes (scale 1) on the 512 px photo is at least twice as far.
    """
    from stylekit.data import center_square

    def shrunk(image):
        return _array(image.resize((64, 64), Image.Resampling.BOX))

    scaled_gap, unscaled_gap = [], []
    for photo in [p.image for p in load_photos()][:4]:
        small, large = center_square(photo, 64), center_square(photo, 512)
        assert synth.filter_scale(large) == 8 and synth.filter_scale(small) == 1
        at_64 = _array(synth.apply_style(name, small))
        scaled_gap.append(np.abs(shrunk(synth.apply_style(name, large)) - at_64).mean())
        unscaled_gap.append(np.abs(shrunk(synth.apply_style(name, large, scale=1)) - at_64).mean())
    assert 2 * np.mean(scaled_gap) < np.mean(unscaled_gap)
