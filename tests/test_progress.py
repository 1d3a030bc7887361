"""Progress bars leave their final line in a saved notebook, and nbval reads a first and a last line alike."""

import re
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from stylekit.progress import progress_bar

CODE = """from stylekit.progress import progress_bar
for _ in progress_bar(range(30), desc="training anime"):
    pass
for _ in progress_bar(range(5), desc="caching latents", leave=False):
    pass"""


def _sanitize(text: str) -> str:
    """The rules of tests/nbval_sanitize.cfg, in their order."""
    rules = re.findall(r"^regex: (.*)\nreplace: (.*)$", (Path(__file__).with_name("nbval_sanitize.cfg")).read_text(), flags=re.MULTILINE)
    for pattern, replacement in rules:
        text = re.sub(pattern, replacement, text)
    return text


def test_a_saved_notebook_keeps_each_bars_last_line():
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(CODE)])
    NotebookClient(notebook, kernel_name="python3", timeout=120).execute()
    lines = [output["data"]["text/plain"] for output in notebook.cells[0].outputs]
    assert len(lines) == 2 and "30/30" in lines[0] and "5/5" in lines[1]
    assert not any("widget" in key for output in notebook.cells[0].outputs for key in output["data"])
    first = "training anime:   0%|          | 0/30 [00:00<?, ?it/s]"
    assert _sanitize(first) == _sanitize(lines[0]) == "training anime: [progress bar]"


def test_a_terminal_gets_tqdms_own_bar(capsys):
    for _ in progress_bar(range(3), desc="stylizing"):
        pass
    assert "stylizing: 100%" in capsys.readouterr().err


def test_a_notebook_bar_redraws_a_bounded_number_of_times(monkeypatch):
    """However slow the machine, a bar sends few messages: nbval drops the newest past about a thousand per cell."""
    import IPython.display

    from stylekit import progress

    class Handle:
        redraws = 0

        def update(self, *args, **kwargs):
            Handle.redraws += 1

    monkeypatch.setattr(progress, "_in_kernel", lambda: True)
    monkeypatch.setattr(IPython.display, "display", lambda *args, **kwargs: Handle())
    for _ in progress.progress_bar(range(10_000), desc="training", mininterval=0):  # as if every step took over a second
        pass
    assert 10 <= Handle.redraws <= progress.NOTEBOOK_REDRAWS + 2
