"""Image grids and charts (matplotlib), small enough to commit inside notebooks."""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib.pyplot as plt
from PIL import Image

__all__ = ["image_grid", "show"]


def image_grid(
    rows: Sequence[Sequence[Image.Image]],
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    tile_inches: float = 1.0,
    title: str | None = None,
    dpi: int = 72,
):
    """A labelled grid of images: ``rows[r][c]`` is drawn in row ``r``, column ``c``.

    Returns the matplotlib figure (shown inline in a notebook; ``fig.savefig`` to keep it).
    """
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(tile_inches * n_cols + 0.8, tile_inches * n_rows + 0.4), dpi=dpi, squeeze=False)
    for r, row in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c < len(row):
                ax.imshow(row[c])
            if col_labels and r == 0 and c < len(col_labels):
                ax.set_title(col_labels[c], fontsize=7)
            if row_labels and c == 0 and r < len(row_labels):
                ax.set_ylabel(row_labels[r], fontsize=7, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def show(fig, quality: int = 85) -> None:
    """Display ``fig`` inline as a JPEG and close it: image grids stay small in saved notebooks."""
    from IPython.display import Image as InlineImage
    from IPython.display import display

    buffer = io.BytesIO()
    fig.savefig(buffer, format="jpeg", dpi=fig.dpi, pil_kwargs={"quality": quality})
    plt.close(fig)
    display(InlineImage(buffer.getvalue()))
