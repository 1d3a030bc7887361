"""Progress bars that read the same live, in a terminal, and in a saved notebook.

In a Jupyter kernel a bar is one line of text, shown once and updated in place
(a display id). A saved notebook keeps the bar's final line ("800/800 ..."), where a
widget bar would leave a viewer without widgets its first frame ("0/800"). In a
terminal it is tqdm's usual bar on stderr.
"""

from __future__ import annotations

from tqdm import tqdm

__all__ = ["progress_bar"]

NOTEBOOK_WIDTH = 90  # characters of a bar in a notebook, which has no terminal width to measure
# redraws of one bar in a notebook, at most, however slow the machine: every redraw is a message to the notebook, and a
# client that reads them only when the cell ends (nbval) keeps about a thousand before it drops the newest
NOTEBOOK_REDRAWS = 50


class _DisplayLine:
    """A file for tqdm that shows the last line written as one notebook output, updated in place."""

    encoding = "utf-8"  # tqdm draws block characters, not '#', for a file that says so

    def __init__(self) -> None:
        self.handle = None

    def write(self, text: str) -> None:
        from IPython.display import display

        line = text.replace("\r", "").strip()
        if not line:
            return
        if self.handle is None:
            self.handle = display({"text/plain": line}, raw=True, display_id=True)
        else:
            self.handle.update({"text/plain": line}, raw=True)

    def flush(self) -> None:
        """Nothing to flush: each write is sent at once."""


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return hasattr(get_ipython(), "kernel")


def progress_bar(iterable=None, **options) -> tqdm:
    """``tqdm(iterable, **options)``, drawn as an updated line of text in a notebook (see the module docstring).

    In a notebook every bar stays when it closes (``leave=True``), so the saved notebook
    says what ran, and redraws at most once a second and :data:`NOTEBOOK_REDRAWS` times in all;
    a terminal honours ``leave``.
    """
    if _in_kernel() and "file" not in options:
        total = options.get("total") or (len(iterable) if hasattr(iterable, "__len__") else None)
        steps = {"miniters": max(1, total // NOTEBOOK_REDRAWS)} if total else {}
        options = {"ncols": NOTEBOOK_WIDTH, "mininterval": 1.0, **steps, **options, "file": _DisplayLine(), "leave": True}
    return tqdm(iterable, **options)
