import runpy
import sys

import nbformat
import pytest

from stylekit.cli import find_notebooks, main


def _notebook(path, cells):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for source, tags in cells:
        cell = nbformat.v4.new_code_cell(source)
        cell.metadata["tags"] = tags
        nb.cells.append(cell)
    nbformat.write(nb, path)
    return path


@pytest.fixture
def two_cell_notebook(tmp_path):
    return _notebook(
        tmp_path / "01_hello.ipynb",
        [
            ("greeting = 'hello'\nout_file = 'out.txt'", ["parameters"]),
            ("from pathlib import Path\nPath(out_file).write_text(greeting)", []),
        ],
    )


def test_run_passes_parameters_and_writes_executed_copy(two_cell_notebook, tmp_path):
    out_file = tmp_path / "result.txt"
    run_dir = tmp_path / "run"
    code = main(["run", str(two_cell_notebook), "-p", "greeting", "bonjour", "-p", "out_file", str(out_file), "-o", str(run_dir)])
    assert code == 0
    assert out_file.read_text() == "bonjour"
    executed = nbformat.read(run_dir / "01_hello.ipynb", as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)


def test_run_prints_no_kernel_transport_warning(two_cell_notebook, tmp_path, capfd):
    assert main(["run", str(two_cell_notebook), "-p", "out_file", str(tmp_path / "x.txt"), "-o", str(tmp_path / "run")]) == 0
    printed = capfd.readouterr()
    assert "WARNING" not in printed.err + printed.out and (tmp_path / "x.txt").read_text() == "hello"


def test_run_reads_yaml_parameters(two_cell_notebook, tmp_path):
    out_file = tmp_path / "from_yaml.txt"
    params = tmp_path / "params.yaml"
    params.write_text(f"greeting: salut\nout_file: {out_file}\n")
    assert main(["run", str(two_cell_notebook), "-f", str(params), "-o", str(tmp_path / "run")]) == 0
    assert out_file.read_text() == "salut"


def test_failing_notebook_stops_and_names_notebook_and_cell(tmp_path, capsys):
    failing = _notebook(tmp_path / "02_broken.ipynb", [("x = 1", ["parameters"]), ("raise ValueError('the data folder is empty')", [])])
    after = _notebook(tmp_path / "03_after.ipynb", [("open('should_not_run.txt', 'w')", [])])
    code = main(["run", str(failing), str(after), "-o", str(tmp_path / "run")])
    assert code == 1
    err = capsys.readouterr().err
    assert "02_broken.ipynb failed in cell" in err and "ValueError: the data folder is empty" in err
    assert not (tmp_path / "run" / "03_after.ipynb").exists()


def test_unknown_notebook_is_a_clear_error(capsys):
    assert main(["run", "99_nope"]) == 2
    assert "notebook '99_nope' not found" in capsys.readouterr().err


def test_find_notebooks_orders_numbered_notebooks(tmp_path):
    for name in ["02_b.ipynb", "01_a.ipynb", "scratch.ipynb"]:
        _notebook(tmp_path / name, [])
    assert [p.name for p in find_notebooks(folder=tmp_path)] == ["01_a.ipynb", "02_b.ipynb"]


def test_info_as_module(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["python -m stylekit", "info"])
    with pytest.raises(SystemExit) as ended:
        runpy.run_module("stylekit", run_name="__main__")  # what `python -m stylekit info` runs, in this process
    assert ended.value.code in (0, None)
    shown = capsys.readouterr().out
    for word in ("diffusers", "device: ", "tiny", "sd15", "sdxl", "embedded tiny model: present", "trained styles"):
        assert word in shown
