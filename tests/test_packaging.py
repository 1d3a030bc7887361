import importlib.metadata
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parent.parent


def _normalise(requirement: str) -> tuple[str, SpecifierSet]:
    parsed = Requirement(requirement)
    return parsed.name.lower(), parsed.specifier


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    # the installed metadata is built from pyproject.toml
    requirements = importlib.metadata.requires("stylekit")
    wanted = {_normalise(r.split(";")[0]) for r in requirements if "extra" not in r or 'extra == "test"' in r}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {_normalise(r) for r in pip_section if not r.startswith("-e")}
    assert listed == wanted


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = "bash scripts/setup.sh && .venv/bin/python -m pytest"
    assert command in readme and command in ci


def test_outputs_folder_is_kept_but_ignored():
    assert (ROOT / "outputs" / ".gitkeep").exists()
    assert "outputs/*" in (ROOT / ".gitignore").read_text()
