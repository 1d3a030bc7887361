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


def stored_dtypes(path) -> set:
    """The dtypes of the tensors a .safetensors file stores."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return {handle.get_tensor(key).dtype for key in handle.keys()}  # noqa: SIM118 (handles are not iterable)


def round_like_file(pipe, path):
    """``pipe`` with its trained adapter's weights rounded as the file at ``path`` stores them: a reload is then compared like with like."""
    import torch

    from stylekit.adapters import trainable_parameters

    if stored_dtypes(path) == {torch.float16}:
        with torch.no_grad():
            for weight in trainable_parameters(pipe.unet):
                weight.copy_(weight.half().float())
    return pipe


def kill_once_written(process, path, timeout=300):
    """SIGKILL ``process`` as soon as ``path`` exists (a checkpoint), as a crash would."""
    import signal
    import time

    deadline = time.time() + timeout
    while not path.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


DEMO_STYLES = ["anime", "watercolor", "oil_painting", "pencil_sketch", "3d"]


@pytest.fixture(scope="session")
def fake_corpus_root(tmp_path_factory):
    """A folder laid out like the corpus's installed Debian packages, with a generated scene at every listed path."""
    from stylekit.tiny import synth
    from stylekit.tiny.corpus import read_manifest

    root = tmp_path_factory.mktemp("corpus_root")
    for seed, entry in enumerate(read_manifest()):
        path = root / entry.path.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        synth.make_scene(seed, 96).image.resize((160, 96)).save(path)
    return root


@pytest.fixture(scope="session")
def trained_outputs(tmp_path_factory):
    """An outputs folder with every demo style trained on the tiny profile (once per test session)."""
    from stylekit.launcher import ensure_trained

    folder = tmp_path_factory.mktemp("trained_outputs")
    previous = os.environ.get("STYLEKIT_OUTPUTS")
    os.environ["STYLEKIT_OUTPUTS"] = str(folder)
    ensure_trained(DEMO_STYLES, "tiny")
    yield folder
    if previous is None:
        os.environ.pop("STYLEKIT_OUTPUTS", None)
    else:
        os.environ["STYLEKIT_OUTPUTS"] = previous
