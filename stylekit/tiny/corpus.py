"""The tiny model's pretraining corpus beyond the shipped photos and procedural scenes.

Two parts, neither of them one of the five demo styles (those stay unseen by the
base; only the adapters learn them):

- **Wallpapers from Debian packages**: photographs and digital artwork listed in
  ``data/pretrain_corpus.jsonl`` with their package, licence, copyright holder
  and a caption. Only the trained weights ship; the images are read from where
  the packages install them::

      apt-get install gnome-backgrounds mate-backgrounds ukui-wallpapers \\
          plasma-workspace-wallpapers lomiri-wallpapers-16.04 lomiri-wallpapers-20.04

  or, without root, ``apt-get download PACKAGE`` and ``dpkg-deb -x PACKAGE.deb DIR``
  for each, then ``python -m stylekit.tiny train --corpus-root DIR``. Photos
  marked ``unseen`` are never trained on: they check the course on photos that
  neither the base nor the adapters saw.
- **Generic artistic renderings**: ten media (ink drawing, screen print, mosaic,
  impressionist strokes, pointillism, halftone, crosshatching, woodcut, pastel,
  pixel art), each a randomised operator, so the base learns flat colour, lines,
  strokes and paper textures in general.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from skimage.segmentation import find_boundaries, slic

from ..data import ImageProblem, open_image
from ..paths import DATA_DIR
from .synth import luminance, to_array, to_image

__all__ = ["CORPUS_MANIFEST", "MEDIA", "CorpusImage", "load_corpus", "read_manifest", "render", "subject_of"]

CORPUS_MANIFEST = DATA_DIR / "pretrain_corpus.jsonl"
LOADED_SHORT_SIDE = 256  # wallpapers are shrunk on loading: pretraining crops them to 64 px anyway


@dataclass(frozen=True)
class CorpusImage:
    """One manifest entry and, once loaded, its image."""

    path: str
    package: str
    kind: str  # "photo" or "artwork"
    split: str  # "train" or "unseen"
    text: str
    license: str
    copyright: str
    image: Image.Image | None = None

    @property
    def name(self) -> str:
        """A short name: the wallpaper's (Plasma keeps it in the folder name), without its author."""
        path = Path(self.path)
        return (path.parents[2].name if path.parent.name == "images" else path.stem).split("_by_")[0]


def read_manifest(manifest: Path = CORPUS_MANIFEST) -> list[CorpusImage]:
    """The manifest's entries (no images)."""
    fields = CorpusImage.__dataclass_fields__
    return [CorpusImage(**{k: v for k, v in json.loads(line).items() if k in fields}) for line in manifest.read_text().splitlines()]


def load_corpus(split: str, root: Path = Path("/"), manifest: Path = CORPUS_MANIFEST) -> list[CorpusImage]:
    """The entries of ``split`` with their images, read under ``root`` (``/`` for installed packages).

    Raises ``FileNotFoundError`` naming the missing files and the packages that hold them.
    """
    entries = [entry for entry in read_manifest(manifest) if entry.split == split]
    missing = [entry for entry in entries if not (root / entry.path.lstrip("/")).is_file()]
    if missing:
        packages = " ".join(sorted({entry.package for entry in missing}))
        raise FileNotFoundError(
            f"{len(missing)} of the {len(entries)} pretraining images listed in {manifest} are not under {root} "
            f"(first: {missing[0].path}); install them with `apt-get install {packages}` "
            "or extract the packages into a folder and pass it as --corpus-root"
        )
    loaded = []
    for entry in entries:
        path = root / entry.path.lstrip("/")
        try:
            image = open_image(path)
        except ImageProblem as problem:
            raise ImageProblem(f"{path}: {problem}") from None
        image.thumbnail((LOADED_SHORT_SIDE * max(image.size) // min(image.size),) * 2, Image.Resampling.LANCZOS)
        loaded.append(CorpusImage(**{**entry.__dict__, "image": image}))
    return loaded


def subject_of(caption: str) -> str:
    """What a caption shows, without saying it is a photo: ``"a photo of a cat"`` -> ``"a cat"``."""
    for prefix in ("a black and white photo of ", "a photo of "):
        if caption.startswith(prefix):
            return caption[len(prefix) :]
    return caption


# ---------------------------------------------------------------------------
# Generic renderings: arrays are H x W x 3 floats in [0, 1]
# ---------------------------------------------------------------------------


def _paper(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    tint = rng.uniform(0.85, 1.0, 3).astype(np.float32)
    return np.broadcast_to(tint, (*shape, 3)).copy()


def ink_drawing(array: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Lines where a difference of Gaussians turns dark, in black, sepia or blue ink on tinted paper."""
    gray = luminance(array)
    sigma = rng.uniform(0.6, 1.2)
    dog = ndimage.gaussian_filter(gray, sigma) - ndimage.gaussian_filter(gray, sigma * 1.6)
    lines = np.clip(-dog / rng.uniform(0.015, 0.04), 0.0, 1.0)[..., None]
    ink = np.array([(0.05, 0.05, 0.05), (0.35, 0.2, 0.1), (0.1, 0.15, 0.4)][rng.integers(3)], dtype=np.float32)
    paper = _paper(rng, gray.shape)
    return paper * (1 - lines) + ink * lines


def screen_print(array: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness cut into 3-5 bands, each printed in one flat ink from a random palette (dark to light)."""
    levels = int(rng.integers(3, 6))
    gray = ndimage.gaussian_filter(luminance(array), 0.7)
    bands = np.clip((gray * levels).astype(int), 0, levels - 1)
    palette = np.sort(rng.uniform(0, 1, (levels, 3)).astype(np.float32), axis=0)  # each channel rises with the band
    return palette[bands]


def mosaic(array: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Superpixel tiles in their mean colour, with grout between them."""
    segments = slic(array, n_segments=int(rng.integers(25, 80)), compactness=10.0, start_label=0, channel_axis=-1)
    means = np.stack([ndimage.mean(array[..., c], segments, np.arange(segments.max() + 1)) for c in range(3)], axis=-1)
    tiles = means[segments].astype(np.float32)
    tiles[find_boundaries(segments, mode="inner")] = rng.uniform(0.1, 0.9)
    return tiles


def _stroke_canvas(array: np.ndarray, rng: np.random.Generator, background: np.ndarray, strokes: int, shape: str) -> np.ndarray:
    """Strokes or dots in the colour of the image under them (jittered), drawn over ``background``."""
    h, w, _ = array.shape
    canvas = Image.fromarray((np.clip(background, 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    gy, gx = np.gradient(ndimage.gaussian_filter(luminance(array), 1.0))
    for y, x in zip(rng.integers(0, h, strokes), rng.integers(0, w, strokes)):
        color = np.clip(array[y, x] + rng.normal(0, 0.04, 3), 0, 1)
        fill = tuple(int(c * 255) for c in color)
        if shape == "dot":
            r = rng.uniform(0.6, 1.6)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
        else:
            angle = np.arctan2(gy[y, x], gx[y, x]) + np.pi / 2 + rng.normal(0, 0.3)  # along the edges
            length = rng.uniform(2.0, 5.0)
            dx, dy = np.cos(angle) * length, np.sin(angle) * length
            draw.line([(x - dx, y - dy), (x + dx, y + dy)], fill=fill, width=int(rng.integers(1, 4)))
    return to_array(canvas)


def impressionist(array: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Short strokes that follow the edges, over a blurred underpainting."""
    under = ndimage.gaussian_filter(array, (2.0, 2.0, 0))
    return _stroke_canvas(array, rng, under, strokes=int(rng.integers(500, 900)), shape="stroke")


def pointillism(array: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Dots of brightened colour on pale paper."""
    vivid = np.clip(luminance(array)[..., None] + (array - luminance(array)[..., None]) * 1.6, 0, 1)
    return _stroke_canvas(vivid, rng, _paper(rng, array.shape[:2]), strokes=int(rng.integers(700, 1200)), shape="dot")


def halftone(array: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A grid of dots, larger where the image is darker, in the cell's colour or one ink."""
    h, w, _ = array.shape
    cell = int(rng.integers(3, 6))
    one_ink = rng.random() < 0.5
    ink = rng.uniform(0, 0.4, 3)
    canvas = Image.new("RGB", (w, h), tuple(int(c * 255) for c in _paper(rng, (1, 1))[0, 0]))
    draw = ImageDraw.Draw(canvas)
    for top in range(0, h, cell):
        for left in range(0, w, cell):
            block = array[top : top + cell, left : left + cell].reshape(-1, 3).mean(axis=0)
            radius = cell * 0.75 * (1.0 - luminance(block))
            color = ink if one_ink else block * 0.8
            cx, cy = left + cell / 2, top + cell / 2
            draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=tuple(int(c * 255) for c in color))
    return to_array(canvas)


def crosshatch(array: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Parallel hatching in one to three directions, more layers where the image is darker."""
    gray = ndimage.gaussian_filter(luminance(array), 0.8)
    h, w = gray.shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    spacing = rng.uniform(2.5, 4.0)
    first = rng.uniform(0, np.pi)
    ink = np.zeros_like(gray)
    for layer, threshold in enumerate((0.75, 0.5, 0.28)):
        angle = first + layer * np.pi / 3
        stripes = np.mod(x * np.cos(angle) + y * np.sin(angle), spacing) < 1.0
        ink = np.maximum(ink, (stripes & (gray < threshold)).astype(np.float32))
    paper = _paper(rng, gray.shape)
    return paper * (1 - 0.9 * ink[..., None])


def woodcut(array: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Two tones: dark ink where the image, scored by gouge marks, is below its median; paper elsewhere."""
    gray = ndimage.gaussian_filter(luminance(array), 1.0)
    h, w = gray.shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    gouges = 0.08 * np.sin((x * np.cos(angle) + y * np.sin(angle)) * rng.uniform(1.0, 2.0))
    carved = (gray + gouges) < np.median(gray)
    ink = rng.uniform(0.0, 0.3, 3).astype(np.float32)
    return np.where(carved[..., None], ink, _paper(rng, gray.shape))


def pastel(array: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Soft, pale colour rubbed onto tinted paper: the paper's grain shows through."""
    soft = ndimage.gaussian_filter(array, (1.2, 1.2, 0)) * 0.7 + 0.3
    grain = ndimage.gaussian_filter(rng.standard_normal(array.shape[:2]).astype(np.float32), (0.5, rng.uniform(1.5, 3.0)))
    cover = np.clip(0.75 + grain * 3.0, 0, 1)[..., None]
    return soft * cover + _paper(rng, array.shape[:2]) * 0.8 * (1 - cover)


def pixel_art(array: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A few flat colours on a coarse grid of square pixels."""
    h, w, _ = array.shape
    cells = int(rng.integers(12, 24))
    image = Image.fromarray((array * 255).astype(np.uint8)).resize((cells, cells), Image.Resampling.BOX)
    image = image.quantize(colors=int(rng.integers(5, 13)), dither=Image.Dither.NONE).convert("RGB")
    return to_array(image.resize((w, h), Image.Resampling.NEAREST))


MEDIA: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "an ink drawing": ink_drawing,
    "a screen print": screen_print,
    "a mosaic": mosaic,
    "an impressionist painting": impressionist,
    "a pointillist painting": pointillism,
    "a halftone print": halftone,
    "a crosshatched etching": crosshatch,
    "a woodcut": woodcut,
    "a pastel drawing": pastel,
    "pixel art": pixel_art,
}


def render(medium: str, image: Image.Image, caption: str, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """``image`` rendered in ``medium`` (a key of ``MEDIA``, with random settings from ``rng``) and its caption."""
    return to_image(MEDIA[medium](to_array(image), rng)), f"{medium} of {subject_of(caption)}"
