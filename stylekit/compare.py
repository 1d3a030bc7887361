"""The adapter-kind comparison: LoRA and the LyCORIS kinds on the same style, data, steps and seed.

    comparison = compare_kinds(ComparisonConfig(style="anime"))
    comparison.table()          # parameters, file size, training time, peak memory, scores, evenness
    comparison.charts()         # the same as bars, and style score against multiplier
    comparison.grid("coffee")   # one held-out photo through every kind at every multiplier

Each kind is trained fresh, in its own process (so that its peak memory is its
own; on a CPU as many at once as fit, two of the tiny model's one-thread trainings on 2 cores), into ``outputs/<profile>/comparison/<style>/<kind>/``; earlier results there are
replaced, so the timings are this run's. Then every
held-out photo is stylized at each multiplier and scored with
:mod:`stylekit.metrics`. Results are written beside the adapters as
``comparison.csv`` (one row per kind), ``sweep.csv`` (one row per photo and multiplier) and ``config.json``.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors import safe_open

from .adapters import KINDS
from .data import center_square, ensure_demo_sets, load_photos, trigger_word
from .judge import StyleReference, strength_sweep
from .metrics import evenness, mean_by, write_csv
from .paths import profile_dir
from .plots import Table, image_grid
from .profiles import get_profile
from .stylize import Stylizer
from .tiny.synth import STYLES, apply_style
from .launcher import run_trainings, trainings_at_once

__all__ = ["Comparison", "ComparisonConfig", "compare_kinds", "stored_parameters"]


@dataclass
class ComparisonConfig:
    """What to compare: one style, several kinds, the same training settings for all.

    ``None`` means the profile's default (see :class:`~stylekit.train.TrainConfig`).
    ``rank`` is the rank for low-rank kinds and the block size for OFT / BOFT.
    """

    style: str = "anime"
    kinds: tuple[str, ...] = KINDS
    profile: str = "tiny"
    steps: int | None = None
    learning_rate: float | None = None
    rank: int | None = None
    alpha: float | None = None
    conv: bool = True
    seed: int = 0
    strengths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    content_strength: float | None = None


@dataclass
class Comparison:
    """Measured results: one summary row per kind, the sweep rows, and the sweep images."""

    config: ComparisonConfig
    summary: list[dict]
    sweep: list[dict]
    images: dict[tuple[str, str, float], Image.Image] = field(repr=False)  # (kind, photo, multiplier) -> image
    folder: Path
    feature_net: str

    COLUMNS = (
        ("kind", "kind", "{}"),
        ("parameters", "trainable parameters", "{:,}"),
        ("file_kb", "file (KB)", "{:.1f}"),
        ("train_seconds", "training (s)", "{:.1f}"),
        ("peak_memory_mb", "memory added (MB)", "{:.0f}"),
        ("style_probability", "style prob. at 1", "{:.2f}"),
        ("gram_distance", "Gram dist. at 1", "{:.3f}"),
        ("ssim", "content SSIM at 1", "{:.3f}"),
        ("style_gain", "style gain 0 to 1", "{:+.2f}"),
        ("evenness", "evenness (R^2)", "{:.2f}"),
    )

    def table(self) -> Table:
        """The summary as a table (HTML in notebooks)."""
        return Table(
            [label for _, label, _ in self.COLUMNS], [[fmt.format(row[key]) for key, _, fmt in self.COLUMNS] for row in self.summary]
        )

    def findings(self) -> list[str]:
        """Plain sentences about this run: smallest, fastest, most stylish, most even, and how large the style differences are."""
        rows = self.summary

        def best(key, highest=True):
            row = (max if highest else min)(rows, key=lambda r: r[key])
            return row["kind"], row[key]

        small, large = best("file_kb", False), best("file_kb")
        fast, slow = best("train_seconds", False), best("train_seconds")
        stylish, even = best("style_probability"), best("evenness")
        gains = [r["style_gain"] for r in rows]
        return [
            f"smallest file: {small[0]} ({small[1]:.0f} KB); largest: {large[0]} ({large[1]:.0f} KB)",
            f"fastest to train: {fast[0]} ({fast[1]:.1f} s); slowest: {slow[0]} ({slow[1]:.1f} s)",
            f"most style at multiplier {max(self.config.strengths):g}: {stylish[0]} (style probability {stylish[1]:.3f})",
            f"most even growth with the multiplier: {even[0]} (R^2 {even[1]:.2f})",
            f"style gain from multiplier 0 to {max(self.config.strengths):g}: {min(gains):+.3f} to {max(gains):+.3f} across kinds; "
            f"content SSIM at the top multiplier: {min(r['ssim'] for r in rows):.3f} to {max(r['ssim'] for r in rows):.3f}",
            f"style measured with the {self.feature_net} feature network and a classifier on the demo style sets",
        ]

    def curve(self, kind: str, score: str = "style_probability") -> tuple[list[float], list[float]]:
        """A score averaged over the photos, against the multiplier, for one kind."""
        points = mean_by([r for r in self.sweep if r["kind"] == kind], ["style_strength"])
        return [p["style_strength"] for p in points], [p[score] for p in points]

    def charts(self):
        """Bars of cost per kind, and style probability and content SSIM against multiplier."""
        import matplotlib.pyplot as plt

        kinds = [row["kind"] for row in self.summary]
        fig, axes = plt.subplots(2, 3, figsize=(11, 5.6), dpi=72)
        for ax, (key, label) in zip(
            axes[0], (("parameters", "trainable parameters"), ("file_kb", "file size (KB)"), ("train_seconds", "training time (s)"))
        ):
            ax.bar(kinds, [row[key] for row in self.summary], color="tab:blue")
            ax.set_title(label, fontsize=9)
            ax.tick_params(axis="x", labelrotation=45, labelsize=7)
        for ax, (score, label) in zip(axes[1][:2], (("style_probability", "style probability"), ("ssim", "content SSIM to the photo"))):
            for kind in kinds:
                ax.plot(*self.curve(kind, score), marker="o", markersize=3, label=kind)
            ax.set_xlabel("multiplier (style strength)", fontsize=8)
            ax.set_title(f"{label} vs multiplier", fontsize=9)
        axes[1][0].legend(fontsize=7)
        ax = axes[1][2]
        ax.scatter([row["file_kb"] for row in self.summary], [row["style_probability"] for row in self.summary])
        for row in self.summary:
            ax.annotate(row["kind"], (row["file_kb"], row["style_probability"]), fontsize=7)
        ax.set_xlabel("file size (KB)", fontsize=8)
        ax.set_title("style at multiplier 1 for its size", fontsize=9)
        fig.tight_layout()
        return fig

    def grid(self, photo: str | None = None):
        """One held-out photo through every kind (rows) at every multiplier (columns)."""
        photo = photo or self.sweep[0]["photo"]
        strengths = self.config.strengths
        rows = [[self.images[(row["kind"], photo, s)] for s in strengths] for row in self.summary]
        return image_grid(rows, row_labels=[row["kind"] for row in self.summary], col_labels=[f"x{s:g}" for s in strengths])


def stored_parameters(path: Path) -> int:
    """Number of weights an adapter file stores (its scalar ``alpha`` entries left out)."""
    with safe_open(str(path), framework="pt") as handle:
        shapes = [handle.get_slice(key).get_shape() for key in handle.keys()]  # noqa: SIM118 (handles are not iterable)
    return int(sum(np.prod(shape) for shape in shapes if shape))


def _train_command(config: ComparisonConfig, kind: str, dataset: Path, folder: Path) -> list[str]:
    """``stylekit train`` for one kind, with the comparison's shared settings."""
    options = {"steps": config.steps, "learning-rate": config.learning_rate, "rank": config.rank, "alpha": config.alpha}
    command = [sys.executable, "-m", "stylekit", "train", str(dataset), "--name", kind, "--kind", kind, "--profile", config.profile]
    command += ["--seed", str(config.seed), "--trigger", trigger_word(config.style), "--output-dir", str(folder)]
    command += ["--conv" if config.conv else "--no-conv", "--checkpoint-every", str(10**6)]  # final checkpoint only
    return command + [item for name, value in options.items() if value is not None for item in (f"--{name}", str(value))]


def _cost_row(folder: Path, kind: str) -> dict:
    """What training one kind cost, from the files it wrote."""
    record = json.loads((folder / kind / "losses.json").read_text())
    single_file = folder / kind / f"{kind}.safetensors"  # the A1111 / ComfyUI file of every kind
    return {
        "kind": kind,
        "parameters": stored_parameters(single_file),
        "file_kb": single_file.stat().st_size / 1024,
        "train_seconds": record["seconds_this_session"],
        "peak_memory_mb": record["peak_memory_mb"],
        "final_loss": float(np.mean(record["losses"][-20:])),
    }


def _train_kinds(config: ComparisonConfig, dataset: Path, folder: Path, progress: bool = True) -> list[dict]:
    """Train every kind in its own ``stylekit train`` process, side by side where the CPU allows; return their cost figures."""
    commands = {kind: _train_command(config, kind, dataset, folder) for kind in config.kinds}
    run_trainings(commands, config.steps or get_profile(config.profile).train.steps, trainings_at_once(config.profile), progress)
    return [_cost_row(folder, kind) for kind in config.kinds]


def compare_kinds(config: ComparisonConfig | None = None, reference: StyleReference | None = None, progress: bool = True) -> Comparison:
    """Train every kind in ``config`` on the same demo style set and measure it (see the module docstring)."""
    config = config or ComparisonConfig()
    if config.style not in STYLES:
        raise ValueError(f"the comparison runs on a demo style ({', '.join(STYLES)}), not {config.style!r}")
    unknown = [k for k in config.kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown adapter kind(s) {unknown}: choose from {', '.join(KINDS)}")
    resolution = get_profile(config.profile).resolution
    dataset = ensure_demo_sets([config.style], config.profile, config.seed)[config.style]
    reference = reference or StyleReference.demo(list(STYLES), config.profile, config.seed)
    folder = profile_dir(config.profile) / "comparison" / config.style
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)

    summary = _train_kinds(config, dataset, folder, progress)
    stylizer = Stylizer(config.profile, styles_dir=folder)
    photos = {p.file_name.rsplit(".", 1)[0]: center_square(p.image, resolution) for p in load_photos(split="held_out")}
    targets = {name: apply_style(config.style, photo) for name, photo in photos.items()}
    sweep, images = [], {}
    for row in summary:
        kind = row["kind"]
        rows, kind_images = strength_sweep(
            stylizer,
            photos,
            config.style,
            config.strengths,
            reference,
            adapter=kind,
            targets=targets,
            progress=progress,
            content_strength=config.content_strength,
            seed=config.seed,
        )
        sweep += [{"kind": kind, **r} for r in rows]
        images.update({(kind, *key): image for key, image in kind_images.items()})
        points = mean_by(rows, ["style_strength"])
        strengths, probabilities = [p["style_strength"] for p in points], [p["style_probability"] for p in points]
        strongest = points[int(np.argmax(strengths))]
        row.update(
            style_probability=strongest["style_probability"],
            gram_distance=strongest["gram_distance"],
            ssim=strongest["ssim"],
            style_gain=strongest["style_probability"] - points[int(np.argmin(strengths))]["style_probability"],
            evenness=evenness(strengths, probabilities),
        )
    write_csv(folder / "comparison.csv", summary)
    write_csv(folder / "sweep.csv", sweep)
    (folder / "config.json").write_text(json.dumps(asdict(config), indent=2))
    return Comparison(config, summary, sweep, images, folder, reference.classifier.net.name)
