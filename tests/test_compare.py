"""The kind comparison runs end to end on a small budget and records real measurements."""

import contextlib
import csv
import io
import json

import matplotlib.pyplot as plt
import pytest

from stylekit.compare import ComparisonConfig, compare_kinds, stored_parameters


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A comparison of two kinds, and what it drew on stderr (its progress bars)."""
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(io.StringIO()) as drawn:
        patch.setenv("STYLEKIT_OUTPUTS", str(tmp_path_factory.mktemp("outputs")))
        config = ComparisonConfig(style="anime", kinds=("lora", "lokr"), steps=3, strengths=(0.0, 0.5, 1.0))
        return compare_kinds(config, progress=True), drawn.getvalue()


@pytest.fixture(scope="module")
def comparison(run):
    return run[0]


def test_each_kind_is_measured(comparison):
    rows = {row["kind"]: row for row in comparison.summary}
    assert list(rows) == ["lora", "lokr"]
    for kind, row in rows.items():
        assert row["parameters"] == stored_parameters(comparison.folder / kind / f"{kind}.safetensors") > 0
        assert row["file_kb"] > 0 and row["train_seconds"] > 0 and row["peak_memory_mb"] >= 0
        assert 0 <= row["style_probability"] <= 1 and 0 < row["ssim"] <= 1 and 0 <= row["evenness"] <= 1
    assert rows["lokr"]["parameters"] < rows["lora"]["parameters"]
    assert len(comparison.sweep) == 2 * 2 * 3  # kinds x held-out photos x multipliers


def test_results_are_written_and_shown(comparison):
    with (comparison.folder / "comparison.csv").open() as handle:
        assert [r["kind"] for r in csv.DictReader(handle)] == ["lora", "lokr"]
    assert json.loads((comparison.folder / "config.json").read_text())["kinds"] == ["lora", "lokr"]
    assert len(comparison.table().rows) == 2 and len(comparison.findings()) == 6
    for figure in (comparison.charts(), comparison.grid()):
        assert figure.axes
        plt.close(figure)


def test_unknown_kind_or_style_is_refused():
    with pytest.raises(ValueError, match="unknown adapter kind"):
        compare_kinds(ComparisonConfig(kinds=("lora", "ia4")))
    with pytest.raises(ValueError, match="demo style"):
        compare_kinds(ComparisonConfig(style="my_style"))


def test_training_progress_of_each_kind_is_shown_as_it_runs(run):
    for kind in ("lora", "lokr"):
        assert f"training {kind}: 100%" in run[1]  # a bar that follows the child process's steps to the end
