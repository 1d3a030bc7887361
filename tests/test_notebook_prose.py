"""The notebooks' prose says only what their runs show: no hand-typed result number that the outputs or records contradict.

A decimal number in a markdown cell must be printed by the notebook, set in its code, or come from the project's
measurement records (``benchmarks/RESULTS.md``, ``docs/gpu.md``); prose whose numbers change with a run is written
by a cell (``plots.say``). Each header's "**Time**" line must agree with the notebook's last timed refresh
(``notebooks/timings.json``, written by ``scripts/refresh_notebooks.py``).
"""

import json
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
RECORDS = "\n".join((ROOT / name).read_text() for name in ("benchmarks/RESULTS.md", "docs/gpu.md"))
DECIMAL = re.compile(r"(?<![\w.])\d+\.\d+(?![\w.]*\d)")
TIME_LINE = re.compile(r"\*\*Time\*\*: (about|under) (a|an|\d+(?:\.\d+)?) (seconds?|minutes?)")


def _prose(source: str) -> str:
    """A markdown cell without what is not a claim about results: maths, code, link targets, model and version names."""
    for pattern in (
        r"\$\$.*?\$\$",
        r"\$[^$]*\$",
        r"`[^`]*`",
        r"\]\([^)]*\)",
        r"\b(?:SD|SDXL) ?\d+(?:\.\d+)?",
        r"compute capability \d+\.\d+",
    ):
        source = re.sub(pattern, " ", source, flags=re.S)
    return source


def _shown(notebook) -> str:
    """Everything a reader of the executed notebook sees besides its markdown: code and outputs."""
    parts = []
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        parts.append(cell.source)
        for output in cell.get("outputs", []):
            parts.append(str(output.get("text", "")))
            parts += [str(v) for k, v in output.get("data", {}).items() if k.startswith("text/")]
    return "\n".join(parts)


def _appears(number: str, text: str) -> bool:
    return re.search(rf"(?<![\d.]){re.escape(number)}(?!\d)", text) is not None


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_decimal_in_the_prose_is_shown_by_the_run_or_recorded(path):
    notebook = nbformat.read(path, as_version=4)
    shown = _shown(notebook)
    typed = [
        (index, number)
        for index, cell in enumerate(notebook.cells)
        if cell.cell_type == "markdown"
        for number in DECIMAL.findall(_prose(cell.source))
        if not (_appears(number, shown) or _appears(number, RECORDS))
    ]
    assert not typed, f"{path.name}: numbers in markdown cells that nothing in the run or the records shows: {typed}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_header_time_agrees_with_the_last_timed_refresh(path):
    header = nbformat.read(path, as_version=4).cells[0].source
    said = TIME_LINE.search(header)
    assert said, f"{path.name}: the header has no '**Time**: about/under N minutes|seconds' line"
    bound, amount, unit = said.groups()
    seconds = (1.0 if amount in ("a", "an") else float(amount)) * (60 if unit.startswith("minute") else 1)
    measured = json.loads((ROOT / "notebooks" / "timings.json").read_text())[path.stem]["seconds"]
    if bound == "under":
        assert measured <= seconds, f"{path.name}: says under {seconds:.0f} s, took {measured} s"
    else:
        assert seconds / 2 <= measured <= seconds * 2, f"{path.name}: says about {seconds:.0f} s, took {measured} s"
