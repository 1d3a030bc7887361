"""Image grids and charts (matplotlib), small enough to commit inside notebooks."""

from __future__ import annotations

import html
import io
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

__all__ = ["Table", "channel_images", "image_grid", "line_chart", "loss_curve", "pixels_to_image", "say", "show"]


MIN_TILE_PIXELS = 180  # every image in a grid is drawn at least this many pixels high


def _enlarged(image: Image.Image, pixels: int) -> Image.Image:
    """``image`` scaled up so its short side is at least ``pixels``: nearest neighbour, so a 64 px tile stays crisp."""
    factor = -(-pixels // min(image.size))  # whole multiples keep every pixel the same size
    if factor <= 1:
        return image
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def image_grid(
    rows: Sequence[Sequence[Image.Image]],
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    tile_inches: float | None = None,
    title: str | None = None,
    dpi: int = 72,
):
    """A labelled grid of images: ``rows[r][c]`` is drawn in row ``r``, column ``c``.

    Each tile is at least ``MIN_TILE_PIXELS`` high (``tile_inches`` may ask for more), small
    images enlarged pixel for pixel. Returns the matplotlib figure (``plots.show`` or ``fig.savefig``).
    """
    tile_inches = max(tile_inches or 0.0, MIN_TILE_PIXELS / dpi)
    aspect = max(image.width / image.height for row in rows for image in row)  # tiles as wide as the widest image needs
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    figsize = (tile_inches * aspect * n_cols + 1.2, tile_inches * n_rows + 0.6)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=figsize, dpi=dpi, squeeze=False)
    for r, row in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c < len(row):
                ax.imshow(_enlarged(row[c], MIN_TILE_PIXELS), interpolation="nearest")
            if col_labels and r == 0 and c < len(col_labels):
                ax.set_title(col_labels[c], fontsize=10)
            if row_labels and c == 0 and r < len(row_labels):
                ax.set_ylabel(row_labels[r], fontsize=10, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return fig


def pixels_to_image(pixels) -> Image.Image:
    """A picture from pixels in [-1, 1] shaped (3, H, W) or (1, 3, H, W), as the autoencoder gives them (torch or numpy)."""
    array = np.asarray(pixels, dtype=np.float32).reshape(-1, *np.shape(pixels)[-2:])[-3:]
    return Image.fromarray(np.round((np.clip(array, -1, 1) + 1) * 127.5).astype(np.uint8).transpose(1, 2, 0))


def channel_images(latents) -> list[Image.Image]:
    """One grey picture per latent channel of a (C, h, w) or (1, C, h, w) tensor, each stretched to its own range."""
    channels = np.asarray(latents, dtype=np.float32).reshape(-1, *np.shape(latents)[-2:])
    low, high = channels.min(axis=(1, 2), keepdims=True), channels.max(axis=(1, 2), keepdims=True)
    scaled = (channels - low) / np.maximum(high - low, 1e-6) * 255
    return [Image.fromarray(np.round(c).astype(np.uint8)).convert("RGB") for c in scaled]


def line_chart(series: dict[str, Sequence[float]], x=None, xlabel: str = "", ylabel: str = "", title: str = "", log_y: bool = False):
    """One line per named series against ``x`` (default 0, 1, 2...)."""
    fig, ax = plt.subplots(figsize=(5, 3), dpi=72)
    for name, values in series.items():
        ax.plot(np.arange(len(values)) if x is None else x, np.asarray(values, dtype=float), label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    if log_y:
        ax.set_yscale("log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def loss_curve(losses: dict[str, Sequence[float]], smooth: int = 20, title: str = "training loss"):
    """Loss per optimizer step for one or more runs: faint raw values and a moving average."""
    fig, ax = plt.subplots(figsize=(5, 3), dpi=72)
    for name, values in losses.items():
        values = np.asarray(values, dtype=float)
        line = ax.plot(values, alpha=0.25)[0]
        if len(values) >= smooth:
            average = np.convolve(values, np.ones(smooth) / smooth, mode="valid")
            ax.plot(np.arange(smooth - 1, len(values)), average, color=line.get_color(), label=name)
        else:
            line.set_label(name)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def save(fig, path, dpi: int = 72) -> None:
    """Write ``fig`` to ``path`` and close it (figures left open pile up in a long run)."""
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def show(fig, format: str = "jpeg", quality: int = 70) -> None:
    """Display ``fig`` inline and close it: JPEG keeps image grids small in saved notebooks; use PNG for charts."""
    from IPython.display import Image as InlineImage
    from IPython.display import display

    buffer = io.BytesIO()
    options = {"pil_kwargs": {"quality": quality}} if format == "jpeg" else {}
    fig.savefig(buffer, format=format, dpi=fig.dpi, bbox_inches="tight", **options)
    plt.close(fig)
    display(InlineImage(buffer.getvalue()))


def say(text: str) -> None:
    """Display ``text`` as Markdown: prose whose numbers a cell computes, so that a re-run cannot leave them stale."""
    from IPython.display import Markdown, display

    display(Markdown(text))


class Table:
    """Rows under named columns; an HTML table in notebooks, aligned text elsewhere."""

    def __init__(self, columns: Sequence[str], rows: Sequence[Sequence]):
        self.columns = list(columns)
        self.rows = [list(row) for row in rows]

    def __str__(self) -> str:
        cells = [self.columns] + [[str(v) for v in row] for row in self.rows]
        widths = [max(len(str(row[i])) for row in cells) for i in range(len(self.columns))]
        return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells)

    __repr__ = __str__

    def markdown(self) -> str:
        """The table in Markdown (for reports)."""
        lines = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        return "\n".join(lines + ["| " + " | ".join(str(v) for v in row) + " |" for row in self.rows])

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in self.rows)
        return f"<table><tr>{head}</tr>{body}</table>"
