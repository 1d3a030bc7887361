"""An evaluation's figures and its written report (notebook 05, ``stylekit eval``).

report.sweep_charts(evaluation)     # each score against style strength and against content strength
report.tradeoff_chart(evaluation)   # content kept against style gained
report.grid(evaluation, "anime")    # photos, exact targets and every system's result
report.write_report(evaluation)     # outputs/<profile>/reports/evaluation.md, with CSV and PNG files beside it
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import matplotlib.pyplot as plt

from .evaluate import CONTENT_SCORE, MARGIN, PHOTO_SETS, STYLE_SCORE, Evaluation
from .metrics import mean_by, write_csv
from .paths import profile_dir
from .plots import image_grid, save
from .tiny.synth import STYLES

__all__ = ["grid", "markdown", "overview", "sweep_charts", "tradeoff_chart", "write_report"]


def sweep_charts(evaluation: Evaluation, scores: tuple[str, ...] = (STYLE_SCORE, "gram_distance", CONTENT_SCORE, "edge_f1")):
    """Each score against style strength (top row) and content strength (bottom row), one line per adapter."""
    fig, axes = plt.subplots(2, len(scores), figsize=(3.2 * len(scores) + 1.6, 5.4), dpi=72, squeeze=False)
    colours = _colours(evaluation.sweeps)
    for row, axis in enumerate(("style_strength", "content_strength")):
        rows = [r for r in evaluation.sweeps if r["axis"] == axis]
        for column, name in enumerate(scores):
            ax = axes[row][column]
            for system in dict.fromkeys(r["system"] for r in rows):
                points = mean_by([r for r in rows if r["system"] == system], ["value"])
                ax.plot(
                    [p["value"] for p in points],
                    [p[name] for p in points],
                    marker="o",
                    markersize=3,
                    label=system,
                    color=colours[system],
                )
            ax.set_xlabel(axis.replace("_", " "), fontsize=8)
            ax.set_title(name.replace("_", " "), fontsize=9)
            ax.tick_params(labelsize=7)
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="center right", fontsize=7)
    fig.tight_layout(rect=(0, 0, 1 - 1.6 / fig.get_figwidth(), 1))
    return fig


def tradeoff_chart(evaluation: Evaluation):
    """Content kept (SSIM) against style (probability) along the style-strength sweep: up and right is better."""
    fig, ax = plt.subplots(figsize=(5, 4), dpi=72)
    colours = _colours(evaluation.sweeps)
    rows = [r for r in evaluation.sweeps if r["axis"] == "style_strength"]
    for system in dict.fromkeys(r["system"] for r in rows):
        points = mean_by([r for r in rows if r["system"] == system], ["value"])
        ax.plot(
            [p[STYLE_SCORE] for p in points],
            [p[CONTENT_SCORE] for p in points],
            marker="o",
            markersize=3,
            label=system,
            color=colours[system],
        )
    for row in evaluation.summary():
        if row["kind"] == "base":
            ax.scatter([row[STYLE_SCORE]], [row[CONTENT_SCORE]], marker="x", color="black")
    ax.set_xlabel("style probability (classifier)", fontsize=8)
    ax.set_ylabel("content SSIM to the photo", fontsize=8)
    ax.set_title("content-style trade-off (x: base model)", fontsize=9)
    ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def grid(evaluation: Evaluation, style: str):
    """Per held-out photo: the photo, the exact target (the style filter), then each system at default settings."""
    systems = [r["system"] for r in evaluation.summary() if r["style"] == style and r["kind"] not in ("photo", "blurred", "target")]
    rows = [
        [photo, evaluation.targets[style][name], *[evaluation.images[(s, name)] for s in systems]]
        for name, photo in evaluation.photos.items()
    ]
    return image_grid(rows, row_labels=list(evaluation.photos), col_labels=["photo", "target", *[s.split("/")[1] for s in systems]])


def overview(evaluation: Evaluation):
    """One row per style: for each held-out photo, the photo, the exact target and the style's adapter at the defaults."""
    adapters = {r["style"]: r["system"] for r in evaluation.summary() if r["beats_baseline"] is not None and r["kind"] in ("lora", "dora")}
    styles = [style for style in evaluation.config.styles if style in adapters]
    rows = [
        [
            image
            for name in evaluation.photos
            for image in (evaluation.photos[name], evaluation.targets[style][name], evaluation.images[(adapters[style], name)])
        ]
        for style in styles
    ]
    columns = [label for name in evaluation.photos for label in (name, "exact target", "stylekit")]
    return image_grid(rows, row_labels=styles, col_labels=columns)


def write_report(evaluation: Evaluation, folder: Path | None = None) -> Path:
    """``evaluation.md`` with the tables and verdicts, and the CSV and PNG files it links, in ``outputs/<profile>/reports``."""
    default = "reports" if evaluation.config.photos == "held_out" else f"reports_{evaluation.config.photos}"
    folder = Path(folder) if folder else profile_dir(evaluation.config.profile) / default
    folder.mkdir(parents=True, exist_ok=True)
    write_csv(folder / "evaluation_scores.csv", evaluation.scores)
    write_csv(folder / "evaluation_sweeps.csv", evaluation.sweeps)
    (folder / "evaluation_config.json").write_text(json.dumps(asdict(evaluation.config), indent=2))
    figures = {
        "evaluation_overview.png": overview(evaluation),
        "evaluation_sweeps.png": sweep_charts(evaluation),
        "evaluation_tradeoff.png": tradeoff_chart(evaluation),
    }
    figures.update({f"evaluation_{style}.png": grid(evaluation, style) for style in evaluation.config.styles})
    for name, fig in figures.items():
        save(fig, folder / name)
    path = folder / "evaluation.md"
    path.write_text(markdown(evaluation, sorted(figures)))
    return path


def markdown(evaluation: Evaluation, figures: list[str]) -> str:
    beaten = [r for r in evaluation.summary() if r["beats_baseline"]]
    adapters = [r for r in evaluation.summary() if r["kind"] != "base"]
    lines = [
        "# stylekit evaluation",
        "",
        f"Profile `{evaluation.config.profile}`, {PHOTO_SETS[evaluation.config.photos]} {', '.join(evaluation.photos)}, "
        f"seed {evaluation.config.seed}. "
        f"{len(beaten)} of {len(adapters)} adapters beat the base model on style consistency "
        f"(style probability higher by more than {MARGIN}). " + evaluation.unbeaten_sentence(),
        "",
        "## Does each style meet the bar?",
        "",
        evaluation.bar_sentence(),
        "",
        evaluation.bar_table().markdown(),
        "",
        "## Can the judge tell style from no style?",
        "",
        f"The judge is the style classifier. On {PHOTO_SETS[evaluation.config.photos]} it must give the exact target at least "
        "0.6 and the untouched photo at most 0.2; a style where it does not is marked INVALID, and its style scores mean little.",
        "",
        evaluation.judge_table().markdown(),
        "",
        "## Measures",
        "",
        *[f"- {name}: {status}" for name, status in evaluation.measures.items()],
        f"- style classifier accuracy on held-out demo content: {evaluation.classifier_accuracy:.2f} (chance {1 / (len(STYLES) + 1):.2f})",
        "",
        "## Scores at the default settings",
        "",
        evaluation.table().markdown(),
        "",
        *[f"- {line}" for line in evaluation.verdicts()],
        "",
        "## Does style rise and content fall with style strength?",
        "",
        evaluation.monotonic().markdown(),
        "",
        "## Figures and data",
        "",
        *[f"![{name}]({name})" for name in figures],
        "",
        "Data: [evaluation_scores.csv](evaluation_scores.csv), [evaluation_sweeps.csv](evaluation_sweeps.csv); "
        "settings: [evaluation_config.json](evaluation_config.json).",
        "",
    ]
    return "\n".join(lines)


def _colours(rows: list[dict]) -> dict[str, tuple]:
    """A distinct colour per system (up to 20), the same in every chart."""
    systems = list(dict.fromkeys(r["system"] for r in rows))
    return {system: plt.cm.tab20(i % 20) for i, system in enumerate(systems)}
