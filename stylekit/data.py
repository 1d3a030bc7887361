"""Images with captions on disk: the shipped photos and style datasets."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .paths import PHOTOS_DIR

__all__ = ["Photo", "load_photos"]


@dataclass(frozen=True)
class Photo:
    """One shipped content photograph (see ``data/LICENSES.md``)."""

    file_name: str
    caption: str
    split: str  # "train", or "held_out": never used to train anything, only to evaluate
    image: Image.Image


def load_photos(split: str | None = None, folder: Path = PHOTOS_DIR) -> list[Photo]:
    """The photos listed in ``folder/metadata.jsonl``, optionally only one ``split``."""
    metadata = folder / "metadata.jsonl"
    if not metadata.exists():
        raise FileNotFoundError(f"{metadata} is missing: the shipped photos come with the stylekit repository (clone it)")
    photos = []
    for line in metadata.read_text().splitlines():
        entry = json.loads(line)
        if split is None or entry["split"] == split:
            image = Image.open(folder / entry["file_name"]).convert("RGB")
            photos.append(Photo(entry["file_name"], entry["text"], entry["split"], image))
    return photos
