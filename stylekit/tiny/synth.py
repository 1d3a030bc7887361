"""The offline demo world: procedural content scenes and the demo style filters.

Scenes give the tiny base model variety beyond the few shipped photos. Each
style filter is a pure, deterministic function ``PIL.Image -> PIL.Image``:
because a demo style is a known function of its input, a stylization of any
photo can be compared with its exact target (``apply_style(name, photo)``).
The filters were designed at 64 px; on a larger image every size in pixels
(median windows, blurs, strokes, the slope of edges) grows with the image, so
a 512 px image changes as much as a 64 px one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage

__all__ = ["STYLES", "Scene", "apply_style", "filter_scale", "luminance", "make_scene", "make_scenes", "to_array", "to_image"]

# ---------------------------------------------------------------------------
# Procedural scenes
# ---------------------------------------------------------------------------

SKIES = {
    "a blue sky": ((70, 130, 220), (170, 210, 250)),
    "a sunset sky": ((90, 60, 140), (250, 150, 80)),
    "a night sky": ((10, 15, 45), (40, 50, 100)),
    "a grey cloudy sky": ((120, 125, 135), (190, 195, 200)),
}
GROUNDS = {
    "green hills": (70, 150, 60),
    "sand dunes": (215, 185, 120),
    "snowy hills": (235, 240, 250),
    "autumn fields": (190, 120, 50),
}
COLORS = {
    "red": (200, 40, 40),
    "yellow": (230, 200, 50),
    "white": (240, 240, 235),
    "blue": (60, 90, 200),
    "brown": (130, 85, 50),
}
NUMBER_WORDS = {1: "a", 2: "two", 3: "three", 4: "four"}


@dataclass(frozen=True)
class Scene:
    """A generated content image and the caption that describes it."""

    image: Image.Image
    caption: str


def _vertical_gradient(draw: ImageDraw.ImageDraw, box, top, bottom) -> None:
    x0, y0, x1, y1 = box
    for y in range(y0, y1):
        t = (y - y0) / max(1, y1 - y0 - 1)
        color = tuple(int(a + (b - a) * t) for a, b in zip(top, bottom))
        draw.line([(x0, y), (x1, y)], fill=color)


def _shade(color, factor: float):
    return tuple(max(0, min(255, int(c * factor))) for c in color)


def _draw_hills(draw, rng, size, horizon, color) -> None:
    for layer, factor in enumerate((0.8, 1.0)):
        phase, freq = rng.uniform(0, 6.3), rng.uniform(1.0, 2.5)
        amp = size * rng.uniform(0.04, 0.1)
        points = [(0, size)]
        for x in range(0, size + 1, max(1, size // 32)):
            y = horizon + layer * size * 0.06 - amp * np.sin(phase + freq * 2 * np.pi * x / size)
            points.append((x, y))
        points.append((size, size))
        draw.polygon(points, fill=_shade(color, factor))


def _draw_mountains(draw, rng, size, horizon) -> None:
    for _ in range(rng.randint(2, 3)):
        cx, width = rng.uniform(0, size), size * rng.uniform(0.3, 0.6)
        peak = horizon - size * rng.uniform(0.2, 0.35)
        draw.polygon([(cx - width / 2, horizon), (cx, peak), (cx + width / 2, horizon)], fill=(105, 100, 120))
        cap = peak + (horizon - peak) * 0.3
        half = width / 2 * 0.3
        draw.polygon([(cx - half, cap), (cx, peak), (cx + half, cap)], fill=(245, 245, 250))


def _draw_water(draw, rng, size, top, night: bool) -> None:
    deep, light = ((20, 30, 70), (60, 80, 130)) if night else ((30, 90, 160), (110, 170, 220))
    _vertical_gradient(draw, (0, int(top), size, size), light, deep)
    for _ in range(6):
        y = rng.uniform(top + 2, size - 2)
        x = rng.uniform(0, size * 0.8)
        draw.line([(x, y), (x + size * rng.uniform(0.05, 0.2), y)], fill=_shade(light, 1.25), width=max(1, size // 128))


def _draw_tree(draw, rng, x, base, height) -> None:
    trunk_w = max(2, height * 0.12)
    draw.rectangle([x - trunk_w / 2, base - height * 0.35, x + trunk_w / 2, base], fill=(90, 60, 30))
    green = (30, rng.randint(90, 140), 40)
    if rng.random() < 0.5:  # pine
        draw.polygon([(x - height * 0.3, base - height * 0.3), (x, base - height), (x + height * 0.3, base - height * 0.3)], fill=green)
    else:  # round crown
        r = height * 0.33
        draw.ellipse([x - r, base - height * 0.35 - 2 * r, x + r, base - height * 0.35], fill=green)


def _draw_house(draw, x, base, width, color) -> None:
    height = width * 0.7
    draw.rectangle([x, base - height, x + width, base], fill=color)
    draw.polygon(
        [(x - width * 0.1, base - height), (x + width / 2, base - height - width * 0.5), (x + width * 1.1, base - height)],
        fill=(120, 40, 30),
    )
    door = width * 0.2
    draw.rectangle([x + width * 0.4, base - height * 0.5, x + width * 0.4 + door, base], fill=(70, 45, 30))
    draw.rectangle([x + width * 0.1, base - height * 0.75, x + width * 0.3, base - height * 0.5], fill=(250, 230, 120))


def _count_phrase(count: int, noun: str) -> str:
    return f"{NUMBER_WORDS[count]} {noun}{'s' if count > 1 else ''}"


def make_scene(seed: int, size: int = 64) -> Scene:
    """Draw one varied landscape, deterministic for ``seed``, with its caption."""
    rng = random.Random(seed)
    canvas = size * 2  # drawn at twice the size, then downsampled for anti-aliasing
    image = Image.new("RGB", (canvas, canvas))
    draw = ImageDraw.Draw(image)
    sky_name = rng.choice(list(SKIES))
    ground_name = rng.choice(list(GROUNDS))
    night = sky_name == "a night sky"
    horizon = int(canvas * rng.uniform(0.45, 0.65))
    _vertical_gradient(draw, (0, 0, canvas, horizon + canvas // 8), *SKIES[sky_name])
    parts: list[str] = []

    if night:
        for _ in range(12):
            x, y = rng.uniform(0, canvas), rng.uniform(0, horizon * 0.8)
            draw.point((x, y), fill=(255, 255, 230))
    if rng.random() < 0.6 and sky_name != "a grey cloudy sky":
        r = canvas * rng.uniform(0.06, 0.1)
        cx, cy = rng.uniform(r, canvas - r), rng.uniform(r, horizon * 0.6)
        body, name = ((235, 235, 210), "the moon") if night else ((255, 220, 80), "the sun")
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=body)
        parts.append(name)
    if not night and rng.random() < 0.5:
        for _ in range(rng.randint(1, 3)):
            cx, cy, w = rng.uniform(0, canvas), rng.uniform(canvas * 0.05, horizon * 0.5), canvas * rng.uniform(0.12, 0.25)
            draw.ellipse([cx - w, cy - w * 0.3, cx + w, cy + w * 0.3], fill=(245, 245, 250))
        parts.append("clouds")
    if rng.random() < 0.4:
        _draw_mountains(draw, rng, canvas, horizon)
        parts.append("mountains")

    ground = GROUNDS[ground_name]
    if night:
        ground = _shade(ground, 0.45)
    _draw_hills(draw, rng, canvas, horizon, ground)

    if rng.random() < 0.45:
        _draw_water(draw, rng, canvas, canvas * rng.uniform(0.75, 0.85), night)
        parts.append(rng.choice(["a lake", "the sea"]))
    elif rng.random() < 0.5:
        left, right = canvas * rng.uniform(0.35, 0.48), canvas * rng.uniform(0.52, 0.65)
        draw.polygon(
            [
                (left + canvas * 0.12, horizon + canvas * 0.08),
                (right - canvas * 0.12, horizon + canvas * 0.08),
                (right + canvas * 0.2, canvas),
                (left - canvas * 0.2, canvas),
            ],
            fill=(80, 80, 85),
        )
        parts.append("a road")

    subjects: list[str] = []
    houses = rng.choice([0, 0, 1, 1, 2])
    if houses:
        color_name = rng.choice(list(COLORS))
        for _ in range(houses):
            width = canvas * rng.uniform(0.14, 0.22)
            x = rng.uniform(0, canvas - width)
            _draw_house(draw, x, horizon + canvas * rng.uniform(0.12, 0.2), width, COLORS[color_name])
        subjects.append(f"{_count_phrase(houses, color_name + ' house')}")
    trees = rng.choice([0, 1, 2, 3, 4])
    if trees:
        for _ in range(trees):
            height = canvas * rng.uniform(0.15, 0.3)
            _draw_tree(draw, rng, rng.uniform(0, canvas), horizon + canvas * rng.uniform(0.1, 0.25), height)
        subjects.append(_count_phrase(trees, "tree"))

    image = image.resize((size, size), Image.Resampling.LANCZOS)
    subject = " and ".join(subjects) if subjects else "a landscape"
    caption = f"{subject} on {ground_name} under {sky_name}"
    if parts:
        caption += ", with " + ", ".join(parts)
    return Scene(image=image, caption=caption)


def make_scenes(count: int, size: int = 64, seed: int = 0) -> list[Scene]:
    """``count`` scenes from consecutive seeds starting at ``seed``."""
    return [make_scene(seed + i, size) for i in range(count)]


# ---------------------------------------------------------------------------
# Style filters
# ---------------------------------------------------------------------------


BASE_SIZE = 64  # the filters' sizes in pixels are those of a 64 px image


def filter_scale(image: Image.Image) -> float:
    """How much larger than the filters' 64 px design ``image`` is (its short side / 64, at least 1)."""
    return max(1.0, min(image.size) / BASE_SIZE)


def to_array(image: Image.Image) -> np.ndarray:
    """An image as an H x W x 3 float array in [0, 1]."""
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def to_image(array: np.ndarray) -> Image.Image:
    """An H x W x 3 float array in [0, 1] as an image (clipped, rounded to 8 bits)."""
    return Image.fromarray((np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))


def luminance(array: np.ndarray) -> np.ndarray:
    """Rec. 601 luma of an H x W x 3 float array."""
    return array @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _blur(array: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur over the two image axes of an HxW or HxWxC float array (none for ``sigma`` 0)."""
    if sigma == 0:
        return array
    sigmas = (sigma, sigma) + (0,) * (array.ndim - 2)
    return ndimage.gaussian_filter(array, sigmas, mode="reflect")


def _median(image: Image.Image, size: int, scale: float) -> Image.Image:
    """A ``size`` x ``size`` median at 64 px, ``scale`` times wider on a larger image.

    A wide median is slow (5 s for 41 px at 512 px), so a scaled one runs on a copy
    shrunk by ``scale`` and is enlarged back: the filters blur the result anyway.
    """
    image = image.convert("RGB")
    if scale == 1:
        return image.filter(ImageFilter.MedianFilter(size))
    small = image.resize((round(image.width / scale), round(image.height / scale)), Image.Resampling.BOX)
    return small.filter(ImageFilter.MedianFilter(size)).resize(image.size, Image.Resampling.BICUBIC)


def _saturate(array: np.ndarray, factor: float) -> np.ndarray:
    gray = luminance(array)[..., None]
    return gray + (array - gray) * factor


def _noise(shape: tuple[int, int], sigma: float, seed: int, scale: float = 1.0) -> np.ndarray:
    """Fixed, seeded smooth noise of unit standard deviation (paper, pigment, paint), drawn at the filters' 64 px
    design size (``shape`` / ``scale``, ``sigma`` in its pixels) and enlarged: a larger image gets the same pattern."""
    small = tuple(max(1, round(side / scale)) for side in shape)
    noise = _blur(np.random.default_rng(seed).standard_normal(small).astype(np.float32), sigma)
    noise = ndimage.zoom(noise, [side / size for side, size in zip(shape, small)], order=1, mode="reflect", grid_mode=True)
    return noise / (noise.std() + 1e-6)


def _quantize(array: np.ndarray, colors: int) -> np.ndarray:
    """The image reduced to ``colors`` flat colours (median cut, no dithering)."""
    image = to_image(array).quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    return to_array(image.convert("RGB"))


def _sample(array: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """``array`` (H x W or H x W x C) read at fractional pixel positions, bilinearly."""
    if array.ndim == 2:
        return ndimage.map_coordinates(array, [rows, columns], order=1, mode="reflect")
    return np.stack([_sample(array[..., c], rows, columns) for c in range(array.shape[2])], axis=-1)


def _color_edges(array: np.ndarray, threshold: float) -> np.ndarray:
    """Pixels whose right or lower neighbour differs by more than ``threshold`` (summed over R, G and B)."""
    right = np.pad(np.abs(np.diff(array, axis=1)).sum(-1), ((0, 0), (0, 1)))
    below = np.pad(np.abs(np.diff(array, axis=0)).sum(-1), ((0, 1), (0, 0)))
    return np.maximum(right, below) > threshold


def _edge_direction(gray: np.ndarray, scale: float) -> np.ndarray:
    """The angle along the local edges (perpendicular to the smoothed structure tensor's main gradient)."""
    gy, gx = np.gradient(_blur(gray, scale))
    jxx, jyy, jxy = (_blur(v, 2.0 * scale) for v in (gx * gx, gy * gy, gx * gy))
    return 0.5 * np.arctan2(2 * jxy, jxx - jyy) + np.pi / 2


def _smear(array: np.ndarray, angle: np.ndarray, length: float, samples: int = 6) -> np.ndarray:
    """The mean of ``array`` along a line of ``length`` pixels through each pixel at ``angle``: a brush stroke."""
    rows, columns = np.mgrid[0 : angle.shape[0], 0 : angle.shape[1]].astype(np.float32)
    offsets = np.linspace(-length / 2, length / 2, samples)
    return sum(_sample(array, rows + k * np.sin(angle), columns + k * np.cos(angle)) for k in offsets) / samples


def _cel(array: np.ndarray) -> np.ndarray:
    """Bright, saturated flat colours: 6 of them."""
    return _quantize(0.12 + 0.88 * _saturate(array, 1.5), 6)


def _cel_outline(image: Image.Image, scale: float) -> np.ndarray:
    """Where cels meet at an edge, two pixels wide, found at the 64 px design size and enlarged (smoothly) to the image:
    a larger image gets the same lines, not thinner ones."""
    small = image if scale == 1 else image.resize((round(image.width / scale), round(image.height / scale)), Image.Resampling.BOX)
    smooth = to_array(small.filter(ImageFilter.MedianFilter(3)))
    gy, gx = np.gradient(_blur(luminance(smooth), 1.0))
    edges = (np.hypot(gx, gy) > 0.09) & _color_edges(_cel(smooth), 0.12)
    lines = ndimage.binary_dilation(edges, np.ones((2, 2), dtype=bool)).astype(np.float32)
    if scale == 1:
        return lines > 0.5
    zoom = [full / part for full, part in zip((image.height, image.width), lines.shape)]
    return ndimage.zoom(lines, zoom, order=1, grid_mode=True, mode="nearest") > 0.5


def anime(image: Image.Image, scale: float = 1.0) -> Image.Image:
    """Cel shading: bright, saturated flat colours (6 of them) and dark outlines, two pixels wide at 64 px (a line of
    one does not survive the autoencoder), where a cel meets another at an edge."""
    flat = _cel(to_array(_median(image, 3, scale)))
    flat[_cel_outline(image.convert("RGB"), scale)] = 0.08
    return to_image(flat)


def watercolor(image: Image.Image, scale: float = 1.0) -> Image.Image:
    """Transparent washes on white paper: colour that bled (a wavy displacement), flat washes with soft edges,
    uneven pigment, darker rims where pigment pooled at a wash's border, paper left white in the highlights, grain."""
    array = to_array(_median(image, 5, scale))
    shape = array.shape[:2]
    rows, columns = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    bled = _sample(array, rows + scale * _noise(shape, 4, 1, scale), columns + scale * _noise(shape, 4, 2, scale))
    wash = _blur(_quantize(_blur(bled, scale), 12), scale)
    pigment = 0.6 * (1.0 - _saturate(wash, 1.2))
    pooled = np.clip(pigment - _blur(pigment, 2 * scale), 0.0, None)  # the inner side of each wash's border
    pigment = pigment * (1.0 + 0.15 * _noise(shape, 3, 3, scale)[..., None]) + 4.0 * pooled
    pigment *= (luminance(wash) < 0.93)[..., None]
    paper = (1.0 - 0.03 * _noise(shape, 0.7, 4, scale)[..., None]) * np.array([1.0, 0.98, 0.94], dtype=np.float32)
    return to_image((1.0 - pigment) * paper)


def _kuwahara(array: np.ndarray, radius: int) -> np.ndarray:
    """Kuwahara filter: each pixel takes the mean of its least-varied neighbouring quadrant.

    The quadrants' means and variances are box filters of side ``radius + 1`` read at the
    four corners that touch the pixel, so the cost does not grow with the radius.
    """
    h, w, _ = array.shape
    side = radius + 1
    padded = np.pad(array, ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
    gray = luminance(padded).astype(np.float64)
    box_means = ndimage.uniform_filter(padded, (side, side, 1))
    gray_means = ndimage.uniform_filter(gray, side)
    variances = ndimage.uniform_filter(gray * gray, side) - gray_means**2
    corners = [(side // 2 + dy, side // 2 + dx) for dy in (0, radius) for dx in (0, radius)]
    means = np.stack([box_means[y : y + h, x : x + w] for y, x in corners])
    spread = np.stack([variances[y : y + h, x : x + w] for y, x in corners])
    best = np.argmin(spread, axis=0)
    return np.take_along_axis(means, best[None, ..., None], axis=0)[0]


def oil_painting(image: Image.Image, scale: float = 1.0) -> Image.Image:
    """Thick paint in directional strokes: flattened colour (Kuwahara) dragged along the edges, richer and more
    contrasted, with brush ridges (noise smeared the same way) lit from the top left."""
    paint = _kuwahara(to_array(image), radius=round(2 * scale))
    along = _edge_direction(luminance(paint), scale)
    ridges = _smear(_noise(paint.shape[:2], 0.8, 5, scale), along, 7 * scale, samples=max(6, round(3 * scale)))  # smooth when enlarged
    ridges /= ridges.std() + 1e-6
    paint = (_saturate(_smear(paint, along, 5 * scale), 1.6) - 0.5) * 1.2 + 0.5
    gy, gx = np.gradient(ridges)
    return to_image(paint * (1.0 + 0.12 * ridges[..., None]) - 0.2 * scale * (gx + gy)[..., None])  # slope per 64 px pixel


def _hatching(u: np.ndarray, period: float = 5.0) -> np.ndarray:
    """Parallel lines across the coordinate ``u``: 1 on a line (about 2 of every ``period`` pixels), 0 between."""
    phase = (u % period) / period
    return np.clip(2.0 - 8.0 * np.abs(phase - 0.5), 0.0, 1.0)


def pencil_sketch(image: Image.Image, scale: float = 1.0) -> Image.Image:
    """Graphite on paper: contours (a colour dodge of the grey image), hatching in the shadows and cross-hatching in
    the darkest parts (both following the photo's own tonal range), on grainy paper; no colour."""
    gray = luminance(to_array(image))
    tone = _blur(gray, scale)
    low, high = np.quantile(tone, (0.02, 0.98))
    darkness = np.clip((high - tone) / max(high - low, 0.2), 0.0, 1.0)
    rows, columns = (np.mgrid[0 : gray.shape[0], 0 : gray.shape[1]].astype(np.float32) + 0.5) / scale  # pixel centres
    strokes = np.clip(2.0 * darkness - 0.6, 0.0, 1.0) * _hatching(columns + 0.5 * rows)
    strokes += np.clip(2.0 * darkness - 1.3, 0.0, 1.0) * _hatching(columns - rows)
    dodge = np.clip(gray / np.maximum(_blur(gray, 1.5 * scale), 1e-3), 0.0, 1.0) ** 3
    graphite = (1.0 - 0.7 * np.clip(strokes, 0.0, 1.0)) * (0.3 + 0.7 * dodge)
    paper = 0.97 + 0.015 * _noise(gray.shape, 0.6, 6, scale)
    return to_image(np.repeat((graphite * paper)[..., None], 3, axis=-1))


def clay_3d(image: Image.Image, scale: float = 1.0) -> Image.Image:
    """A clay or CG render: smooth saturated colours (6) on a relief raised from the luminance, lit from the top
    left, with shiny highlights and darker creases (ambient occlusion)."""
    smooth = _blur(to_array(_median(image, 5, scale)), 1.5 * scale)
    base = _blur(_quantize(_saturate(smooth, 1.3), 6), scale)
    height = _blur(luminance(smooth), 2.0 * scale) * (14.0 * scale)
    gy, gx = np.gradient(height)
    normals = np.stack([-gx, -gy, np.ones_like(gx)], axis=-1)
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    light = np.array([-0.6, -0.7, 0.8], dtype=np.float32) / np.linalg.norm([-0.6, -0.7, 0.8])
    halfway = (light + [0.0, 0.0, 1.0]) / np.linalg.norm(light + [0.0, 0.0, 1.0])
    diffuse = np.clip(normals @ light, 0.0, 1.0)[..., None]
    highlight = np.clip(normals @ halfway.astype(np.float32), 0.0, 1.0)[..., None] ** 30
    creases = np.clip(_blur(height, 3 * scale) - height, 0.0, None) / (3 * scale)
    occlusion = np.clip(1.0 - creases, 0.4, 1.0)[..., None]
    return to_image(base * (0.3 + 0.9 * diffuse) * occlusion + 0.6 * highlight)


STYLES = {
    "anime": anime,
    "watercolor": watercolor,
    "oil_painting": oil_painting,
    "pencil_sketch": pencil_sketch,
    "3d": clay_3d,
}


def apply_style(name: str, image: Image.Image, scale: float | None = None) -> Image.Image:
    """Apply the demo style ``name`` (one of ``STYLES``) to ``image``: the exact target of that style.

    ``scale`` multiplies the filter's sizes in pixels; by default :func:`filter_scale`
    of the image, so a 512 px image changes as much as a 64 px one.
    """
    if name not in STYLES:
        raise KeyError(f"unknown demo style {name!r}; choose one of {sorted(STYLES)}")
    return STYLES[name](image, filter_scale(image) if scale is None else scale)
