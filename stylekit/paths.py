"""Where stylekit finds its inputs and writes its outputs.

In a clone of the repository everything lives beside the package: ``data/``,
``notebooks/`` and ``outputs/``. An installed copy (``pip install <git address,
folder or .zip>``, as the notebooks' setup cell does in Colab) finds the shipped
photos where pip put them (``<prefix>/share/stylekit/data``) and writes to
``outputs/`` in the working directory. ``STYLEKIT_OUTPUTS`` moves the outputs
elsewhere (for example to a Google Drive folder in Colab).

What a profile makes (its datasets, adapters, comparisons and reports) lives under
``outputs/<profile>/``, so a tiny run and an sd15 run side by side never mix.
"""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

__all__ = ["DATA_DIR", "NOTEBOOKS_DIR", "PHOTOS_DIR", "REPO_ROOT", "outputs_dir", "profile_dir"]

REPO_ROOT = Path(__file__).resolve().parent.parent
IN_CLONE = (REPO_ROOT / "pyproject.toml").is_file()  # False for a copy that pip installed into site-packages
DATA_DIR = REPO_ROOT / "data" if IN_CLONE else Path(sysconfig.get_path("data")) / "share" / "stylekit" / "data"
PHOTOS_DIR = DATA_DIR / "photos"
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"


def outputs_dir() -> Path:
    """The folder every run writes to (created if needed)."""
    default = REPO_ROOT / "outputs" if IN_CLONE else Path.cwd() / "outputs"
    path = Path(os.environ.get("STYLEKIT_OUTPUTS") or default)  # unset or empty: the default
    path.mkdir(parents=True, exist_ok=True)
    return path


def profile_dir(profile: str) -> Path:
    """The folder of one profile's datasets, adapters, comparisons and reports: ``outputs/<profile>`` (made by what writes there)."""
    return outputs_dir() / profile
