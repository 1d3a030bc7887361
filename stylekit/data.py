"""Style datasets on disk: scanning, captions, validation, preparation, demo sets.

A style dataset is a folder of images with captions, either a ``.txt`` file
beside each image or a ``metadata.jsonl`` with ``file_name`` and ``text``
(the Hugging Face imagefolder layout), and optionally a trigger word.

    report = check_dataset("my_style/")       # what is usable, what is wrong, and why
    dataset = prepare_dataset(report, resolution=64, trigger="anime")

Source files are only ever read.
"""

from __future__ import annotations

import hashlib
import html
import json
import random
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .tiny import synth
from .diffusion import style_prompt
from .paths import PHOTOS_DIR, profile_dir
from .plots import Table
from .profiles import get_profile

__all__ = [
    "CropWindow",
    "DatasetReport",
    "ImageProblem",
    "Photo",
    "PreparedDataset",
    "Problem",
    "Sample",
    "build_demo_sets",
    "center_square",
    "check_dataset",
    "decode_image",
    "ensure_demo_sets",
    "load_photos",
    "open_image",
    "prepare_dataset",
    "report_table",
]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
MAX_PIXELS = 64 * 1024 * 1024  # larger images are refused as possible decompression bombs
METADATA = "metadata.jsonl"
SOURCES_FOLDER = "sources"  # in a paired dataset: the unstyled photos, never training images themselves


# ---------------------------------------------------------------------------
# Shipped photos
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Photo:
    """One shipped content photograph (see ``data/LICENSES.md``)."""

    file_name: str
    caption: str
    split: str  # "train", or "held_out": never used to train anything, only to evaluate
    image: Image.Image


def load_photos(split: str | None = None, folder: Path = PHOTOS_DIR) -> list[Photo]:
    """The photos listed in ``folder/metadata.jsonl``, optionally only one ``split``."""
    metadata = folder / METADATA
    if not metadata.exists():
        raise FileNotFoundError(f"{metadata} is missing: the shipped photos come with the stylekit repository (clone it)")
    photos = []
    for line in metadata.read_text().splitlines():
        entry = json.loads(line)
        if split is None or entry["split"] == split:
            photos.append(Photo(entry["file_name"], entry["text"], entry["split"], open_image(folder / entry["file_name"])))
    return photos


def center_square(image: Image.Image, size: int) -> Image.Image:
    """The largest centred square of ``image``, resized to ``size`` (how held-out photos are evaluated)."""
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.LANCZOS)


# ---------------------------------------------------------------------------
# Reading one image safely
# ---------------------------------------------------------------------------


class ImageProblem(ValueError):
    """An image file that cannot be used; the message says why."""


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB; transparency is composited on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        return Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB")


def open_image(path: Path) -> Image.Image:
    """Read ``path`` as an upright 8-bit RGB image, or raise :class:`ImageProblem` saying why not.

    Handles EXIF orientation, grayscale, RGBA, CMYK, 16-bit and palette images.
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise ImageProblem("empty file (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise ImageProblem(
                        f"{image.width}x{image.height} pixels is over the {MAX_PIXELS:,}-pixel limit (possible decompression bomb)"
                    )
                image.load()
                upright = ImageOps.exif_transpose(image)
                return _to_rgb(upright)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise ImageProblem(f"refused as a possible decompression bomb ({error})") from None
        except UnidentifiedImageError:
            raise ImageProblem("not an image: the content is not a recognised image format") from None
        except (OSError, SyntaxError, ValueError) as error:
            if isinstance(error, ImageProblem):
                raise
            raise ImageProblem(f"unreadable or truncated image ({error})") from None


def decode_image(content: bytes, name: str) -> Image.Image:
    """:func:`open_image` for bytes (an upload), with the same checks and normalisation."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"upload{Path(name).suffix.lower()}"
        path.write_bytes(content)
        try:
            return open_image(path)
        except ImageProblem as error:
            raise ImageProblem(f"{name}: {error}") from None


# ---------------------------------------------------------------------------
# Validation report
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """Something wrong with one file: ``skipped`` ones are left out of the dataset."""

    file: str
    reason: str
    skipped: bool = True


@dataclass(frozen=True)
class Sample:
    """A usable image and its caption (``None`` when it has none)."""

    path: Path
    caption: str | None
    width: int
    height: int
    content_hash: str
    source: Path | None = None  # the unstyled photo this image was made from, when the dataset has pairs


@dataclass
class DatasetReport:
    """What :func:`check_dataset` found in a folder."""

    folder: Path
    images_found: int = 0
    samples: list[Sample] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        """True when at least one image can be trained on."""
        return bool(self.samples)

    @property
    def missing_captions(self) -> list[str]:
        return [p.file for p in self.problems if p.reason.startswith("no caption")]

    @property
    def duplicates(self) -> list[str]:
        return [p.file for p in self.problems if p.reason.startswith("duplicate of")]

    def summary(self) -> str:
        skipped = sum(p.skipped for p in self.problems)
        return (
            f"{self.folder.name}: {self.images_found} image file(s), {len(self.samples)} usable, {skipped} skipped, "
            f"{len(self.missing_captions)} without caption, {len(self.duplicates)} duplicate(s)"
        )

    def __repr__(self) -> str:
        return f"<DatasetReport {self.summary()}>"

    def __str__(self) -> str:
        lines = [self.summary()]
        lines += [f"  {'SKIPPED' if p.skipped else 'warning'}  {p.file}: {p.reason}" for p in self.problems]
        if not self.usable:
            lines.append("  no usable image: the dataset cannot be used")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(p.file)}</td><td>{'skipped' if p.skipped else 'warning'}</td><td>{html.escape(p.reason)}</td></tr>"
            for p in self.problems
        )
        table = f"<table><tr><th>file</th><th>status</th><th>reason</th></tr>{rows}</table>" if rows else "<p>no problems found</p>"
        return f"<p><b>{html.escape(self.summary())}</b></p>{table}"


def report_table(reports: dict[str, DatasetReport]) -> Table:
    """Several reports side by side, one row per dataset."""
    columns = ("dataset", "image files", "usable", "skipped", "without caption", "duplicates")
    rows = [
        (name, r.images_found, len(r.samples), sum(p.skipped for p in r.problems), len(r.missing_captions), len(r.duplicates))
        for name, r in reports.items()
    ]
    return Table(columns, rows)


def _read_metadata(folder: Path, report: DatasetReport) -> tuple[dict[str, str], dict[str, Path]]:
    """Captions and source photos (an optional ``"source"`` key) from ``metadata.jsonl``, reporting malformed lines and bad references."""
    captions: dict[str, str] = {}
    sources: dict[str, Path] = {}
    metadata = folder / METADATA
    if not metadata.exists():
        return captions, sources
    root = folder.resolve()
    for number, line in enumerate(metadata.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{METADATA} line {number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            report.problems.append(Problem(where, f"not valid JSON ({error.msg})"))
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("file_name"), str) or not isinstance(entry.get("text"), str):
            report.problems.append(Problem(where, 'needs a string "file_name" and a string "text"'))
            continue
        target = (folder / entry["file_name"]).resolve()
        if not target.is_relative_to(root):
            report.problems.append(Problem(where, f"file_name {entry['file_name']!r} points outside the dataset folder"))
        elif not target.is_file():
            report.problems.append(Problem(where, f"file_name {entry['file_name']!r} does not exist"))
        else:
            name = target.relative_to(root).as_posix()
            captions[name] = entry["text"]
            source = _source_of(folder, entry, where, report)
            if source is not None:
                sources[name] = source
    return captions, sources


def _source_of(folder: Path, entry: dict, where: str, report: DatasetReport) -> Path | None:
    """The entry's ``"source"`` photo (the unstyled original of a pair), checked; ``None`` when it has none or it is unusable."""
    if "source" not in entry:
        return None
    source = (folder / str(entry["source"])).resolve()
    if not source.is_relative_to(folder.resolve()) or not source.is_file():
        report.problems.append(
            Problem(where, f"source {entry['source']!r} is not a file inside the dataset folder; trained without it", skipped=False)
        )
        return None
    return source


def _content_hash(image: Image.Image) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest()[:16]


def check_dataset(folder: str | Path, min_size: int = 64) -> DatasetReport:
    """Scan ``folder`` (recursively) and report every image, caption and problem.

    Unusable files are reported with their reason and skipped; nothing is modified.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"dataset folder {folder} does not exist")
    report = DatasetReport(folder=folder)
    captions, sources = _read_metadata(folder, report)
    seen: dict[str, str] = {}
    originals = set(sources.values())  # source photos of pairs are inputs, not training images
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".") and p.resolve() not in originals)
    for path in files:
        name = path.relative_to(folder).as_posix()
        if sources and name.startswith(f"{SOURCES_FOLDER}/"):  # only a paired dataset reserves the folder
            report.problems.append(Problem(name, "a source photo that no image names as its source; not trained on", skipped=False))
            continue
        suffix = path.suffix.lower()
        if suffix not in IMAGE_SUFFIXES:
            if suffix == ".txt" and not any(path.with_suffix(s).exists() or path.with_suffix(s.upper()).exists() for s in IMAGE_SUFFIXES):
                report.problems.append(Problem(name, "caption file without a matching image", skipped=False))
            elif suffix not in (".txt", ".jsonl"):
                report.problems.append(Problem(name, f"not an image file type ({suffix or 'no extension'}); ignored"))
            continue
        report.images_found += 1
        try:
            image = open_image(path)
        except ImageProblem as error:
            report.problems.append(Problem(name, str(error)))
            continue
        if min(image.size) < min_size:
            report.problems.append(Problem(name, f"too small: {image.width}x{image.height}, under {min_size} px on a side"))
            continue
        digest = _content_hash(image)
        if digest in seen:
            report.problems.append(Problem(name, f"duplicate of {seen[digest]} (same pixels)"))
            continue
        seen[digest] = name
        caption = _caption_for(path, name, captions, report)
        report.samples.append(Sample(path, caption, image.width, image.height, digest, sources.get(name)))
    return report


def _caption_for(path: Path, name: str, captions: dict[str, str], report: DatasetReport) -> str | None:
    if name in captions:
        return captions[name]
    text_file = path.with_suffix(".txt")
    if text_file.exists():
        return text_file.read_text(encoding="utf-8", errors="replace").strip()
    report.problems.append(
        Problem(name, f"no caption (no {text_file.name} and no {METADATA} entry); trained with the trigger word only", skipped=False)
    )
    return None


# ---------------------------------------------------------------------------
# Preparation for training
# ---------------------------------------------------------------------------


def bucket_sizes(resolution: int, step: int = 8, max_ratio: float = 2.0) -> list[tuple[int, int]]:
    """(width, height) pairs of about ``resolution**2`` pixels, multiples of ``step``, aspect up to ``max_ratio``."""
    sizes = set()
    for width in range(step, int(resolution * max_ratio) + 1, step):
        height = int(round(resolution * resolution / width / step)) * step
        if height >= step and max(width / height, height / width) <= max_ratio:
            sizes.add((width, height))
    return sorted(sizes)


@dataclass(frozen=True)
class CropWindow:
    """Where a training image came from: its original size, and the window cut from it after resizing (SDXL is conditioned on both)."""

    original: tuple[int, int]  # (height, width) of the file
    top: int
    left: int
    mirrored_left: int  # the window's left edge in the mirror image of the resized file

    def time_ids(self, size: tuple[int, int], mirrored: bool = False) -> list[int]:
        """SDXL's six size numbers: original (h, w), crop top-left, target (h, w) of an image of ``size`` (w, h)."""
        return [*self.original, self.top, self.mirrored_left if mirrored else self.left, size[1], size[0]]


def _fit(image: Image.Image, width: int, height: int, crop: str, rng: random.Random) -> tuple[Image.Image, CropWindow]:
    """Resize to cover (width, height), then crop the centre or a random window; also says which window."""
    scale = max(width / image.width, height / image.height)
    resized = image.resize((max(width, round(image.width * scale)), max(height, round(image.height * scale))), Image.Resampling.LANCZOS)
    if crop == "random":
        left, top = rng.randint(0, resized.width - width), rng.randint(0, resized.height - height)
    else:
        left, top = (resized.width - width) // 2, (resized.height - height) // 2
    window = CropWindow((image.height, image.width), top, left, resized.width - width - left)
    return resized.crop((left, top, left + width, top + height)), window


@dataclass
class PreparedDataset(torch.utils.data.Dataset):
    """Images at training size with caption handling; what the trainer consumes.

    ``dataset[i]`` gives ``{"pixels": 3xHxW tensor in [-1, 1], "caption": str}``. Caption
    dropout and tag shuffling draw from a generator seeded by ``seed`` and ``epoch``
    (set ``dataset.epoch``), so a run is reproducible.
    """

    images: list[Image.Image]
    captions: list[str]
    trigger: str | None = None
    caption_dropout: float = 0.0
    shuffle_tags: bool = False
    seed: int = 0
    epoch: int = 0
    names: list[str] = field(default_factory=list)
    sources: list[Image.Image | None] = field(default_factory=list)  # per image, its unstyled photo (paired datasets)
    windows: list[CropWindow] = field(default_factory=list)  # per image, where it was cut from its file

    @property
    def paired(self) -> bool:
        """Whether every image comes with the photo it was made from."""
        return bool(self.sources) and all(source is not None for source in self.sources)

    def __len__(self) -> int:
        return len(self.images)

    def caption(self, index: int) -> str:
        """The caption of item ``index`` for the current epoch (trigger first, then tags)."""
        rng = random.Random(hash((self.seed, self.epoch, index)))
        caption = self.captions[index]
        if self.shuffle_tags:
            tags = [t.strip() for t in caption.split(",") if t.strip()]
            rng.shuffle(tags)
            caption = ", ".join(tags)
        if self.caption_dropout and rng.random() < self.caption_dropout:
            caption = ""
        if self.trigger and not caption.startswith(self.trigger):
            caption = f"{self.trigger}, {caption}" if caption else self.trigger
        return caption

    def __getitem__(self, index: int) -> dict:
        array = np.asarray(self.images[index], dtype=np.float32) / 127.5 - 1.0
        return {"pixels": torch.from_numpy(array).permute(2, 0, 1).contiguous(), "caption": self.caption(index)}

    def buckets(self) -> dict[tuple[int, int], list[int]]:
        """Item indices grouped by image size (one bucket per aspect ratio); batch within a bucket."""
        groups: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(self.images):
            groups.setdefault(image.size, []).append(index)
        return groups


def prepare_dataset(
    source: DatasetReport | str | Path,
    resolution: int,
    crop: str = "center",
    buckets: bool = False,
    bucket_multiple: int = 8,
    trigger: str | None = None,
    caption_dropout: float = 0.0,
    shuffle_tags: bool = False,
    seed: int = 0,
) -> PreparedDataset:
    """Resize and crop every usable image of a dataset for training.

    Args:
        source: a folder, or the report of :func:`check_dataset` on one.
        resolution: side of the square training size (the profile's resolution).
        crop: ``"center"`` or ``"random"`` (a seeded random window per image).
        buckets: keep aspect ratios: each image goes to the closest bucket of about
            ``resolution**2`` pixels instead of a square.
        bucket_multiple: each bucket side is a multiple of this (the model's: its autoencoder's factor times its UNet's
            downsampling, 64 for Stable Diffusion, so that every level of the UNet gets whole latents).
        trigger: a word put first in every caption, e.g. ``"anime"``.
        caption_dropout: probability of training an image with the trigger alone.
        shuffle_tags: shuffle comma-separated tags in captions each epoch.
    """
    if crop not in ("center", "random"):
        raise ValueError(f"crop must be 'center' or 'random', not {crop!r}")
    report = source if isinstance(source, DatasetReport) else check_dataset(source, min_size=resolution // 2)
    if not report.usable:
        raise ValueError(f"{report.folder}: no usable image\n{report}")
    sizes = bucket_sizes(resolution, step=bucket_multiple) if buckets else [(resolution, resolution)]
    rng = random.Random(seed)
    images, captions, names, sources, windows = [], [], [], [], []
    for sample in report.samples:
        image = open_image(sample.path)
        aspect = image.width / image.height
        width, height = min(sizes, key=lambda s: abs(np.log(s[0] / s[1]) - np.log(aspect)))
        state = rng.getstate()  # the source photo gets the same window as its styled image
        fitted, window = _fit(image, width, height, crop, rng)
        images.append(fitted)
        windows.append(window)
        sources.append(_fit_source(sample, image.size, width, height, crop, state))
        captions.append(sample.caption or "")
        names.append(sample.path.relative_to(report.folder).as_posix())
    return PreparedDataset(images, captions, trigger, caption_dropout, shuffle_tags, seed, names=names, sources=sources, windows=windows)


def _fit_source(sample: Sample, size: tuple[int, int], width: int, height: int, crop: str, window) -> Image.Image | None:
    """A sample's source photo cropped exactly as the sample was; it must have the sample's size."""
    if sample.source is None:
        return None
    source = open_image(sample.source)
    if source.size != size:
        raise ValueError(
            f"{sample.source}: the source photo of {sample.path.name} is {source.size}, not {size} like the image it pairs with"
        )
    rng = random.Random()
    rng.setstate(window)
    return _fit(source, width, height, crop, rng)[0]


# ---------------------------------------------------------------------------
# Demo style sets
# ---------------------------------------------------------------------------


def trigger_word(style: str) -> str:
    """The word that calls a demo style in prompts: ``"oil_painting"`` -> ``"oil painting"``."""
    return style.replace("_", " ")


MAX_UPSCALE = 2.0  # a demo set enlarges a photo crop at most this much; smaller photos are left out


def photo_crop(image: Image.Image, resolution: int, rng: random.Random) -> Image.Image:
    """A random square window of 35-100 % of the photo's short side, at ``resolution`` (mirrored half the time).

    The window is never smaller than ``resolution / MAX_UPSCALE``, so a crop is enlarged at most that much.
    """
    smallest = min(1.0, max(0.35, resolution / (MAX_UPSCALE * min(image.size))))
    side = int(min(image.size) * rng.uniform(smallest, 1.0))
    left, top = rng.randint(0, image.width - side), rng.randint(0, image.height - side)
    crop = image.crop((left, top, left + side, top + side)).resize((resolution, resolution), Image.Resampling.LANCZOS)
    return crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop


def demo_photos(resolution: int) -> list[Photo]:
    """The training photos large enough for demo sets at ``resolution`` (short side at least ``resolution / MAX_UPSCALE``)."""
    return [p for p in load_photos(split="train") if min(p.image.size) * MAX_UPSCALE >= resolution]


def demo_photo_note(resolution: int) -> str | None:
    """A sentence on photos enlarged or left out of demo sets at ``resolution``; None when every photo is large enough."""
    photos, usable = load_photos(split="train"), demo_photos(resolution)
    enlarged = [p for p in usable if min(p.image.size) < resolution]
    if not enlarged and len(usable) == len(photos):
        return None
    if not usable:
        return f"demo sets at {resolution} px: the shipped photos (at most 256 px) are too small, so every image is a procedural scene"
    return (
        f"demo sets at {resolution} px: {len(usable)} of {len(photos)} training photos are used, "
        f"{len(enlarged)} of them enlarged up to {MAX_UPSCALE:g}x (the shipped photos are at most 256 px); "
        f"{len(photos) - len(usable)} smaller ones are left out; scenes are drawn at {resolution} px"
    )


DEMO_COUNT = 400  # images per demo set: with 48, adapters learned the few training photos' colours, not the style
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=np.float32)


def recolor(image: Image.Image, rng: random.Random) -> Image.Image:
    """The same picture in other colours: its chroma turned and scaled, plus a light tint; luminance unchanged.

    A few shipped photos (several of them grey) would otherwise teach an adapter only
    their own colours; recoloured copies teach it what to do with any colour.
    """
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    yiq = rgb @ _RGB_TO_YIQ.T
    angle, gain = rng.uniform(0, 2 * np.pi), rng.uniform(0.7, 1.8)
    turn = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]], dtype=np.float32) * gain
    yiq[..., 1:] = yiq[..., 1:] @ turn.T + np.array([rng.gauss(0, 0.05), rng.gauss(0, 0.05)], dtype=np.float32)
    rgb = np.clip(yiq @ np.linalg.inv(_RGB_TO_YIQ).T, 0.0, 1.0)
    return Image.fromarray((rgb * 255.0 + 0.5).astype(np.uint8))


def demo_content(
    count: int, resolution: int, seed: int = 0, photo_share: float = 0.75, recolor_share: float = 0.5
) -> list[tuple[Image.Image, str]]:
    """Content images with captions: mostly crops of the training photos (users bring photos), the rest procedural scenes.

    ``photo_share`` of the images are photo crops, taken from the training photos in turn
    at random scales and places; held-out photos are never used, nor photos that would be
    enlarged more than ``MAX_UPSCALE`` times (at 1024 px none is large enough: all scenes).
    """
    rng = random.Random(seed)
    photos = demo_photos(resolution)
    crops = round(count * photo_share) if photos else 0
    content = [(photo_crop(photos[i % len(photos)].image, resolution, rng), photos[i % len(photos)].caption) for i in range(crops)]
    content = [(recolor(image, rng) if rng.random() < recolor_share else image, caption) for image, caption in content]
    scene_seed = 500_000 + seed  # away from the seeds the base model was pretrained on
    content += [(s.image, s.caption) for s in synth.make_scenes(count - crops, resolution, seed=scene_seed)]
    return content


DEMO_STAMP = ".demo.json"  # in each demo set (hidden from check_dataset): the fingerprint of what built it


def demo_fingerprint(style: str, resolution: int, seed: int, count: int = DEMO_COUNT) -> str:
    """What a demo set's files depend on, cheaply: its arguments and the style filter's output on a few content images."""
    digest = hashlib.sha256(f"{style}{resolution}{seed}{count}".encode())
    for image, caption in demo_content(4, resolution, seed):
        digest.update(synth.apply_style(style, image).tobytes() + caption.encode())
    return digest.hexdigest()[:16]


def build_demo_sets(
    out_dir: str | Path, styles: list[str] | None = None, count: int = DEMO_COUNT, resolution: int = 64, seed: int = 0
) -> dict[str, Path]:
    """One style dataset per demo style: the style filter applied to the same content images.

    Each styled image is paired with the image it was made from (``sources/``, named by
    the ``"source"`` key of ``metadata.jsonl``), so an adapter can learn the change from
    photo to style. Held-out photos are never used. Captions read ``"<trigger> style, <content caption>"``.
    The same arguments give byte-identical files. Returns the folder of each style.
    """
    out_dir = Path(out_dir)
    styles = styles or list(synth.STYLES)
    content = demo_content(count, resolution, seed)
    folders = {}
    for style in styles:
        folder = out_dir / style
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        (folder / SOURCES_FOLDER).mkdir(exist_ok=True)
        for index, (image, caption) in enumerate(content):
            name = f"{index:03d}.png"
            synth.apply_style(style, image).save(folder / name)
            image.save(folder / SOURCES_FOLDER / name)
            entry = {"file_name": name, "text": style_prompt(trigger_word(style), caption), "source": f"{SOURCES_FOLDER}/{name}"}
            lines.append(json.dumps(entry))
        (folder / METADATA).write_text("\n".join(lines) + "\n")
        (folder / DEMO_STAMP).write_text(json.dumps({"fingerprint": demo_fingerprint(style, resolution, seed, count)}) + "\n")
        folders[style] = folder
    return folders


def ensure_demo_sets(styles: list[str], profile: str = "tiny", seed: int = 0) -> dict[str, Path]:
    """The demo sets of ``profile`` in ``outputs/<profile>/datasets`` at its resolution, building those that are missing
    or were built by other filters (so any notebook runs on its own, and a changed filter is not trained on stale images)."""
    datasets = profile_dir(profile) / "datasets"
    resolution = get_profile(profile).resolution
    fingerprints = {style: demo_fingerprint(style, resolution, seed) for style in styles}
    stale = [s for s in styles if (datasets / s / METADATA).exists() and _stamp(datasets / s) != fingerprints[s]]
    if stale:
        print(f"rebuilding the demo sets {', '.join(stale)}: the style filters or content changed since they were built")
    for style in stale:
        shutil.rmtree(datasets / style)  # built by stylekit from shipped data: nothing of the user's is lost
    missing = [s for s in styles if not (datasets / s / METADATA).exists()]
    if missing:
        note = demo_photo_note(resolution)
        if note:
            print(note)
        build_demo_sets(datasets, missing, resolution=resolution, seed=seed)
    return {style: datasets / style for style in styles}


def _stamp(folder: Path) -> str | None:
    try:
        return json.loads((folder / DEMO_STAMP).read_text())["fingerprint"]
    except (OSError, ValueError, KeyError):
        return None
