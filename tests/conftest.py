import os
import shutil

import pytest

# Nothing in the test suite may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_pipe():
    """The shipped tiny model as an img2img pipeline on the CPU (loaded once)."""
    from stylekit.models import load_pipeline

    return load_pipeline("tiny", device="cpu")


@pytest.fixture
def tiny_copy(tmp_path):
    """A writable copy of the shipped tiny model folder."""
    from stylekit.models import tiny_model_dir

    target = tmp_path / "tiny_copy"
    shutil.copytree(tiny_model_dir(), target)
    return target
