"""Execute the course notebooks in place on the tiny profile, as they are committed (readers see the results).

    .venv/bin/python scripts/refresh_notebooks.py                 # all of them, in order
    .venv/bin/python scripts/refresh_notebooks.py 00 04           # some, by number

papermill's own bookkeeping (durations, timestamps) is removed so a refresh changes only what a reader sees, and so is
the saved widget state of a notebook whose outputs show no widget (what earlier runs' widget progress bars left behind).
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import papermill

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


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


def refresh(notebook: Path) -> None:
    papermill.execute_notebook(str(notebook), str(notebook), cwd=str(NOTEBOOKS), kernel_name="python3", progress_bar=False)
    tidy(notebook)
    print(f"refreshed {notebook.name}", flush=True)


if __name__ == "__main__":
    wanted = sys.argv[1:]
    for path in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        if not wanted or path.name[:2] in wanted:
            refresh(path)
