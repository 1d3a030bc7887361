"""The course's exercises: a checking function per coding exercise, and a plain verdict, never an exception.

A notebook runs headless (papermill, nbval) with every exercise still unanswered, so a
check prints "not yet" and the run goes on; the solution cell below it checks again. Each
checking function takes the learner's function and builds its own cases, so that a test can
run it on the starter, on an answer that does nothing, and on the notebook's solution.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
import torch
from peft import LoraConfig, inject_adapter_in_model
from PIL import Image

from .data import load_photos
from .study import wilson_interval
from .stylize import denoising_steps
from .tiny.synth import make_scene

__all__ = ["check", "noised_correct", "sepia_correct", "lora_forward_correct", "lora_size_correct", "steps_run_correct", "wilson_correct"]


def check(exercise: str, test: Callable[[], bool], hint: str) -> None:
    """Run ``test`` and print whether the exercise works; on failure print ``hint`` (and the error, if one was raised)."""
    try:
        passed = bool(test())
    except NotImplementedError:
        passed, hint = False, f"not written yet. {hint}"
    except Exception as error:  # a learner's code may fail in any way; the verdict says how
        passed, hint = False, f"{type(error).__name__}: {error}. {hint}"
    print(f"{exercise}: {'works ✓' if passed else 'not yet ✗ ' + hint}")


def noised_correct(noised: Callable, scheduler) -> bool:
    """Notebook 00: ``noised(x0, noise, t)`` equals ``scheduler.add_noise`` for a batch with one timestep per item."""
    generator = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 8, 8, generator=generator), torch.randn(3, 4, 8, 8, generator=generator)
    t = torch.tensor([10, 400, 900])
    return torch.allclose(noised(x0, noise, t), scheduler.add_noise(x0, noise, t), atol=1e-6)


def _colourful_photos() -> list[Image.Image]:
    """Test pictures for a colour filter: the held-out photos and a demo scene with a blue sky."""
    return [p.image.resize((96, 64)) for p in load_photos(split="held_out")] + [make_scene(3, 64).image]


def sepia_correct(sepia: Callable[[Image.Image], Image.Image]) -> bool:
    """Notebook 01: what any style filter must do (same size, RGB, the same output twice, the input untouched), and
    what sepia means: one brown tint everywhere (red above green above blue in every pixel that is not near black)
    whose brightness follows the photo's grey value."""
    for photo in _colourful_photos():
        before = np.asarray(photo).copy()
        first, second = sepia(photo), sepia(photo)
        out = np.asarray(first, dtype=np.float64)
        if first.size != photo.size or first.mode != "RGB" or not np.array_equal(np.asarray(second), out):
            return False
        if not np.array_equal(np.asarray(photo), before):
            return False
        lit = out.sum(axis=-1) > 30  # clipping and black pixels aside
        r, g, b = out[..., 0][lit], out[..., 1][lit], out[..., 2][lit]
        grey = np.asarray(photo.convert("L"), dtype=np.float64)[lit]
        if not (np.mean(r > g) > 0.99 and np.mean(g > b) > 0.99 and np.corrcoef(grey, g)[0, 1] > 0.98):
            return False
    return True


def lora_forward_correct(lora_forward: Callable) -> bool:
    """Notebook 02: ``lora_forward(x, weight, bias, A, B, alpha, rank)`` equals a peft LoRA layer (rank 4, alpha 8)."""
    torch.manual_seed(0)
    layer = inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, target_modules=["0"]), torch.nn.Sequential(torch.nn.Linear(32, 48)))[0]
    torch.nn.init.normal_(layer.lora_B["default"].weight)  # peft starts B at zero (no change at step 0); give it values to test with
    x = torch.randn(5, 32)
    mine = lora_forward(
        x, layer.base_layer.weight, layer.base_layer.bias, layer.lora_A["default"].weight, layer.lora_B["default"].weight, 8, 4
    )
    with torch.no_grad():
        return torch.allclose(mine, layer(x), atol=1e-5)


def _peft_lora_count(layer: torch.nn.Module, rank: int) -> int:
    wrapped = inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=["0"]), torch.nn.Sequential(layer))
    return sum(p.numel() for name, p in wrapped.named_parameters() if "lora_" in name)


def lora_size_correct(lora_size: Callable) -> bool:
    """Notebook 03: ``lora_size(layer, rank)`` counts what peft's LoRA adds to a linear layer and to a 3x3 convolution."""
    for rank in (1, 8):
        for make in (lambda: torch.nn.Linear(320, 640), lambda: torch.nn.Conv2d(64, 128, 3)):
            if lora_size(make(), rank) != _peft_lora_count(make(), rank):
                return False
    return True


def steps_run_correct(steps_run: Callable[[int, float], int]) -> bool:
    """Notebook 04: ``steps_run(steps, content)`` counts the steps a stylization runs as the stylizer does."""
    cases = [(20, c / 100) for c in range(0, 101, 5)] + [(50, 0.85), (8, 0.3)]
    return all(steps_run(s, c) == denoising_steps(SimpleNamespace(steps=s, content_strength=c)) for s, c in cases)


def wilson_correct(wilson: Callable) -> bool:
    """Notebook 05: ``wilson(wins, total)`` gives the kit's 95 % Wilson score interval."""
    cases = [(9, 12), (0, 5), (5, 5), (30, 50)]
    return all(all(math.isclose(a, b, abs_tol=1e-9) for a, b in zip(wilson(w, n), wilson_interval(w, n))) for w, n in cases)
