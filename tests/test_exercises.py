"""Every coding exercise's check fails on its starter code and on a tempting wrong answer, and passes on the notebook's solution."""

import ast
import math
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image

from stylekit import exercises
from stylekit.models import tiny_model_dir

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
SCHEDULER = DDPMScheduler.from_pretrained(tiny_model_dir(), subfolder="scheduler")


def _wrong_wilson(wins, total, z=1.96):
    rate = wins / total
    spread = z * math.sqrt(rate * (1 - rate) / total)  # the textbook interval the notebook warns about
    return rate - spread, rate + spread


# name: (how the check is called, a tempting wrong answer)
CHECKS = {
    "noised": (lambda f: exercises.noised_correct(f, SCHEDULER), lambda x0, noise, t: x0 + noise),
    "sepia": (exercises.sepia_correct, lambda image: image.convert("RGB")),  # the photo's own colours
    "lora_forward": (exercises.lora_forward_correct, lambda x, weight, bias, A, B, alpha, rank: x @ weight.T + bias + x @ A.T @ B.T),
    "lora_size": (exercises.lora_size_correct, lambda layer, rank: rank * sum(layer.weight.shape[:2])),  # forgets the kernel
    "steps_run": (exercises.steps_run_correct, lambda steps, content: int(steps * (1 - content))),
    "wilson": (exercises.wilson_correct, _wrong_wilson),
}


def _exercises():
    """(notebook, function name, starter source, solution source) for every tagged exercise."""
    found = []
    for path in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        cells = nbformat.read(path, as_version=4).cells
        starters = [c for c in cells if "exercise" in c.metadata.get("tags", [])]
        solutions = [c for c in cells if "solution" in c.metadata.get("tags", [])]
        assert len(starters) == len(solutions), path.name
        for starter, solution in zip(starters, solutions):
            name = next(node.name for node in ast.parse(starter.source).body if isinstance(node, ast.FunctionDef))
            found.append(pytest.param(name, starter.source, solution.source, id=f"{path.stem[:2]}-{name}"))
    return found


def _define(source: str, name: str):
    """The function ``name`` as a cell defines it (only the cell's definitions run), with the names the notebooks import."""
    tree = ast.parse(source)
    tree.body = [node for node in tree.body if isinstance(node, ast.FunctionDef)]
    namespace = {"np": np, "torch": torch, "math": math, "Image": Image, "alpha_bar": SCHEDULER.alphas_cumprod}
    exec(compile(tree, "<cell>", "exec"), namespace)
    return namespace[name]


def test_every_coding_exercise_is_tagged_with_a_check():
    assert {p.values[0] for p in _exercises()} == set(CHECKS)


@pytest.mark.parametrize(("name", "starter", "solution"), _exercises())
def test_a_check_fails_on_the_starter_and_a_wrong_answer_and_passes_on_the_solution(name, starter, solution):
    check, wrong = CHECKS[name]
    with pytest.raises(NotImplementedError):
        check(_define(starter, name))
    assert not check(wrong)
    assert check(_define(solution, name))
