"""Where stylekit finds its inputs and writes its outputs.

In a clone of the repository everything lives beside the package: ``data/``,
``notebooks/`` and ``outputs/``. ``STYLEKIT_OUTPUTS`` moves the outputs
elsewhere (for example to a Google Drive folder in Colab).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DATA_DIR", "NOTEBOOKS_DIR", "PHOTOS_DIR", "REPO_ROOT", "outputs_dir"]

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"
PHOTOS_DIR = DATA_DIR / "photos"
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"


def outputs_dir() -> Path:
    """The folder every run writes to (created if needed)."""
    path = Path(os.environ.get("STYLEKIT_OUTPUTS") or REPO_ROOT / "outputs")  # unset or empty: the repository's outputs/
    path.mkdir(parents=True, exist_ok=True)
    return path
