import importlib.metadata
import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import nbformat
import yaml
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from stylekit.data import load_photos

ROOT = Path(__file__).resolve().parent.parent


def _normalise(requirement: str) -> tuple[str, SpecifierSet]:
    parsed = Requirement(requirement)
    return parsed.name.lower(), parsed.specifier


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    # the installed metadata is built from pyproject.toml
    requirements = importlib.metadata.requires("stylekit")
    extras = ('extra == "notebooks"', 'extra == "test"')
    wanted = {
        _normalise(r.split(";")[0])
        for r in requirements
        if ("extra" not in r or any(e in r for e in extras)) and not r.startswith("stylekit")
    }
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {_normalise(r) for r in pip_section if not r.startswith("-e")}
    assert listed == wanted


def test_the_base_install_leaves_colabs_jupyter_alone():
    """Colab pins its own kernel: the base install holds what the notebooks import, the Jupyter server stack is an extra."""
    requirements = importlib.metadata.requires("stylekit")
    base = {Requirement(r).name.lower() for r in requirements if "extra" not in r}
    notebooks = {Requirement(r.split(";")[0]).name.lower() for r in requirements if 'extra == "notebooks"' in r}
    server_stack = {"jupyterlab", "voila", "nbval", "papermill", "ipykernel"}
    assert not base & server_stack and server_stack <= notebooks
    assert "ipywidgets" in base and "stylekit[notebooks]" in (ROOT / "scripts" / "setup.sh").read_text() + str(requirements)


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = "bash scripts/setup.sh && .venv/bin/python -m pytest"
    assert command in readme and command in ci


def test_outputs_folder_is_kept_but_ignored():
    assert (ROOT / "outputs" / ".gitkeep").exists()
    assert "outputs/*" in (ROOT / ".gitignore").read_text()


def _setup_cell(notebook: Path) -> str:
    cells = json.loads(notebook.read_text())["cells"]
    return next("".join(c["source"]) for c in cells if c["cell_type"] == "code")


def test_every_notebook_starts_with_the_same_setup_cell_and_only_training_ones_ask_colab_for_a_gpu():
    notebooks = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
    cells = {_setup_cell(nb) for nb in notebooks}
    assert len(notebooks) == 6 and len(cells) == 1
    cell = cells.pop()
    assert 'STYLEKIT_SOURCE = ""' in cell and "USE_DRIVE" in cell and "STYLEKIT_OUTPUTS" in cell
    asks = {nb.name[:2]: json.loads(nb.read_text())["metadata"].get("accelerator") == "GPU" for nb in notebooks}
    assert asks == {"00": False, "01": False, "02": True, "03": True, "04": True, "05": True}
    assert "github.com/stylekit" not in (ROOT / "README.md").read_text()


def _fresh_environment(tmp_path: Path) -> Path:
    """A new virtual environment that sees stylekit's dependencies (from this one, so nothing is downloaded) but not stylekit."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    deps = tmp_path / "deps"
    deps.mkdir()
    for entry in Path(sysconfig.get_path("purelib")).iterdir():
        if not entry.name.lower().startswith(("stylekit", "__editable__", "_stylekit", "pip")):
            (deps / entry.name).symlink_to(entry)
    (site / "dependencies.pth").write_text(str(deps) + "\n")
    return python


def _copy_of_the_project(tmp_path: Path) -> Path:
    copy = tmp_path / "stylekit-project"
    for name in ("pyproject.toml", "README.md", "LICENSE", "stylekit", "data"):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            copy.mkdir(exist_ok=True)
            shutil.copy(source, copy / name)
    return copy


@pytest.mark.slow  # pip-installs the project into a fresh environment
def test_setup_cell_installs_stylekit_into_the_running_kernel(tmp_path, monkeypatch):
    # what a learner does in Colab: a kernel without stylekit, the setup cell given where the project is, then the course
    python = _fresh_environment(tmp_path)
    assert subprocess.run([str(python), "-c", "import stylekit"], cwd=tmp_path, capture_output=True).returncode != 0
    kernels = tmp_path / "jupyter" / "kernels" / "fresh"
    kernels.mkdir(parents=True)
    spec = {"argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"], "display_name": "fresh", "language": "python"}
    (kernels / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.delenv("STYLEKIT_SOURCE", raising=False)
    work = {"metadata": {"path": str(tmp_path)}}  # the kernel's working folder: no stylekit in it
    setup = _setup_cell(ROOT / "notebooks" / "01_data_prep.ipynb")
    with pytest.raises(CellExecutionError, match="set STYLEKIT_SOURCE"):  # no source given: it stops and says what to set
        NotebookClient(
            nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(setup)]), kernel_name="fresh", timeout=60, resources=work
        ).execute()
    monkeypatch.setenv("STYLEKIT_SOURCE", _copy_of_the_project(tmp_path).as_uri())
    monkeypatch.delenv("STYLEKIT_OUTPUTS", raising=False)
    check = (
        "from stylekit.data import load_photos\nimport stylekit.cli, stylekit.paths\n"
        "print(len(load_photos()), stylekit.paths.IN_CLONE, stylekit.paths.outputs_dir().parent == Path.cwd(), stylekit.cli.PAGE.is_file())"
    )
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell(setup),
        nbformat.v4.new_code_cell("from pathlib import Path\n" + check),
    ]
    NotebookClient(notebook, kernel_name="fresh", timeout=600, resources=work).execute()
    printed = [out.get("text", "") for cell in notebook.cells for out in cell.outputs]
    assert (
        printed[0].startswith("stylekit ") and printed[-1].strip() == f"{len(load_photos())} False True True"
    )  # the page `stylekit serve` shows is installed too


def test_every_saved_picture_in_the_notebooks_is_at_least_180_px_high():
    import base64
    import io

    from PIL import Image

    heights = {}
    for notebook in sorted((ROOT / "notebooks").glob("[0-9]*.ipynb")):
        for index, cell in enumerate(json.loads(notebook.read_text())["cells"]):
            for output in cell.get("outputs", []):
                for mime in ("image/png", "image/jpeg"):
                    if mime in output.get("data", {}):
                        picture = Image.open(io.BytesIO(base64.b64decode(output["data"][mime])))
                        heights[f"{notebook.name} cell {index}"] = picture.height
    assert len(heights) >= 15  # the notebooks are committed executed
    assert not {place: h for place, h in heights.items() if h < 180}
