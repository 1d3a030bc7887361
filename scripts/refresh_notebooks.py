"""Execute the course notebooks in place on the tiny profile, as they are committed (readers see the results).

    .venv/bin/python scripts/refresh_notebooks.py                 # all of them, in order
    .venv/bin/python scripts/refresh_notebooks.py 00 04           # some, by number

papermill's own bookkeeping (durations, timestamps) is removed so a refresh changes only what a reader sees, and so is
the saved widget state of a notebook whose outputs show no widget (what earlier runs' widget progress bars left behind).
Each notebook's wall time goes to notebooks/timings.json with the CPU: the headers' "**Time**" lines are tested against it.
Refresh all of them with an empty STYLEKIT_OUTPUTS folder to time what a first run costs (02 skips styles it finds trained).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import nbformat
import papermill

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
TIMINGS = NOTEBOOKS / "timings.json"


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def shows_widgets(notebook) -> bool:
    return any(WIDGET_VIEW in output.get("data", {}) for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs)


def tidy(path: Path) -> None:
    """Drop papermill's bookkeeping, and the widget state when no output shows a widget."""
    notebook = nbformat.read(path, as_version=4)
    notebook.metadata.pop("papermill", None)
    if not shows_widgets(notebook):
        notebook.metadata.pop("widgets", None)
    for cell in notebook.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
    nbformat.write(notebook, path)


def record_time(notebook: Path, seconds: float) -> None:
    """Keep the notebook's wall time and the machine it ran on."""
    from stylekit.models import cpu_name

    timings = json.loads(TIMINGS.read_text()) if TIMINGS.exists() else {}
    timings[notebook.stem] = {"seconds": round(seconds, 1), "cpu": cpu_name()}
    TIMINGS.write_text(json.dumps(timings, indent=2, sort_keys=True) + "\n")


def refresh(notebook: Path) -> None:
    started = time.perf_counter()
    papermill.execute_notebook(str(notebook), str(notebook), cwd=str(NOTEBOOKS), kernel_name="python3", progress_bar=False)
    record_time(notebook, time.perf_counter() - started)
    tidy(notebook)
    print(f"refreshed {notebook.name} in {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    wanted = sys.argv[1:]
    for path in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        if not wanted or path.name[:2] in wanted:
            refresh(path)
