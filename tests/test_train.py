import json
import re
import shutil
from dataclasses import replace
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from conftest import kill_once_written, round_like_file
from safetensors import safe_open
from safetensors.torch import load_file

from stylekit.adapters import adapter_file, load_adapter
from stylekit.checkpoints import load_checkpoint
from stylekit.cli import main
from stylekit.data import build_demo_sets, prepare_dataset
from stylekit.models import as_task, cpu_threads, load_pipeline
from stylekit.profiles import get_profile
from stylekit.cache import BackgroundLatents, cache_key, latent_key, load_or_build_cache
from stylekit.train import CHECKPOINT, TrainConfig, TrainingDiverged, first_use_order, train_adapter


@pytest.fixture(scope="module")
def anime_set(tmp_path_factory):
    return build_demo_sets(tmp_path_factory.mktemp("datasets"), ["anime"], count=8)["anime"]


@pytest.fixture
def outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("STYLEKIT_OUTPUTS", str(tmp_path / "outputs"))
    return tmp_path / "outputs"


def _image(pipe, seed=0):
    txt2img = as_task(pipe, "txt2img")
    return txt2img("anime style, a house", num_inference_steps=8, generator=torch.Generator().manual_seed(seed), output_type="np").images[0]


def _adapter_tensors(folder, name):
    return load_file(str(folder / f"{name}.safetensors"))


@pytest.mark.parametrize("kind", ["lora", pytest.param("loha", marks=pytest.mark.slow)])
def test_validation_images_leave_training_as_it_was(anime_set, outputs, kind):
    settings = dict(name="anime", dataset=str(anime_set), steps=4, kind=kind)
    plain = train_adapter(TrainConfig(output_dir=str(outputs / "plain"), **settings), progress=False)
    watched = train_adapter(TrainConfig(output_dir=str(outputs / "watched"), validation_every=2, **settings), progress=False)
    written = sorted(p.name for p in (watched.folder / "validation").iterdir())
    assert written == ["step_00002.png", "step_00004.png"]
    with Image.open(watched.folder / "validation" / "step_00004.png") as grid:
        assert grid.width > 2 * grid.height  # the prompts and the held-out photo, side by side
    assert watched.losses == plain.losses  # the preview switched the adapter off for its recording and on again


def test_both_files_load_back_with_identical_output(anime_set, outputs):
    result = train_adapter(
        TrainConfig(name="anime", dataset=str(anime_set), steps=6, learning_rate=5e-3, checkpoint_every=3),
        progress=False,
        keep_pipeline=True,
    )
    in_memory = _image(result.pipeline)
    base = _image(load_pipeline("tiny"))
    assert np.abs(in_memory - base).max() > 1e-3  # the adapter changes the output
    for path in (result.folder, result.files["kohya"]):  # diffusers folder (fp32), kohya single file (fp16): like with like
        pipe = load_pipeline("tiny")
        load_adapter(pipe, path, "anime")
        in_memory = _image(round_like_file(result.pipeline, adapter_file(path)))
        np.testing.assert_allclose(_image(pipe), in_memory, atol=1e-5, err_msg=str(path))

    with safe_open(str(result.files["kohya"]), framework="pt") as handle:
        keys, metadata = list(handle.keys()), handle.metadata()
    assert all(k.startswith("lora_unet_") for k in keys)
    assert {k.rsplit(".", 2)[-2] if k.endswith(".weight") else k.rsplit(".", 1)[-1] for k in keys} == {"lora_down", "lora_up", "alpha"}
    rank = get_profile("tiny").train.rank
    assert metadata["ss_network_dim"] == str(rank) and metadata["ss_network_module"] == "networks.lora"
    for name in ("config.json", "loss_curve.png", "losses.json", CHECKPOINT):
        assert (result.folder / name).exists()


def _train_cli(dataset, outputs_dir, name, extra=()):
    env = dict(os.environ, STYLEKIT_OUTPUTS=str(outputs_dir))
    cmd = [
        sys.executable,
        "-m",
        "stylekit",
        "train",
        str(dataset),
        "--name",
        name,
        "--steps",
        "30",
        "--checkpoint-every",
        "4",
        "--learning-rate",
        "5e-3",
        *extra,
    ]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(anime_set, tmp_path):
    straight = _train_cli(anime_set, tmp_path / "a", "anime")  # side by side with the victim: the tiny model trains on one thread
    victim = _train_cli(anime_set, tmp_path / "b", "anime")
    checkpoint = tmp_path / "b" / "tiny" / "loras" / "anime" / CHECKPOINT
    kill_once_written(victim, checkpoint)
    _, state = load_checkpoint(checkpoint)
    assert 0 < state["step"] < 30, "the kill must land mid-run for this test to mean anything"

    resumed = _train_cli(anime_set, tmp_path / "b", "anime")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    assert straight.wait(timeout=600) == 0, straight.stderr.read()
    a, b = (
        _adapter_tensors(tmp_path / "a" / "tiny" / "loras" / "anime", "anime"),
        _adapter_tensors(tmp_path / "b" / "tiny" / "loras" / "anime", "anime"),
    )
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key].numpy(), b[key].numpy(), atol=1e-6, err_msg=key)


def test_cache_is_reused_and_rebuilt_when_inputs_change(anime_set, outputs):
    pipe = load_pipeline("tiny")
    dataset = prepare_dataset(anime_set, 64, trigger="anime")
    cache = outputs / "cache"
    latents, _, cached = load_or_build_cache(pipe, dataset, flip=True, cache_dir=cache)
    assert not cached and len([k for k in latents if k.startswith("latent_flip.")]) == len(dataset)
    _, _, cached = load_or_build_cache(pipe, dataset, flip=True, cache_dir=cache)
    assert cached
    _, _, cached = load_or_build_cache(pipe, dataset, flip=False, cache_dir=cache)
    assert not cached
    dataset.captions[0] = "a different caption"
    _, _, cached = load_or_build_cache(pipe, dataset, flip=True, cache_dir=cache)
    assert not cached
    dataset.images[1] = dataset.images[1].transpose(0)
    _, _, cached = load_or_build_cache(pipe, dataset, flip=True, cache_dir=cache)
    assert not cached


def test_the_cache_key_is_the_same_on_any_thread_count(anime_set):
    pipe = load_pipeline("tiny")
    dataset = prepare_dataset(anime_set, 64, trigger="anime")
    keys = set()
    for threads in (1, 2):
        with cpu_threads(threads):
            keys.add(cache_key(pipe, dataset, dataset.captions, flip=True))
    assert len(keys) == 1  # a run on one thread resumes a run on two
    pipe.vae.decoder.conv_out.bias.data[0] += 1e-3
    assert cache_key(pipe, dataset, dataset.captions, flip=True) not in keys  # the weights count, to the last bit


def test_latents_cached_in_the_background_equal_those_cached_first(anime_set, outputs):
    pipe = load_pipeline("tiny")
    dataset = prepare_dataset(anime_set, 64, trigger="anime")
    config = TrainConfig(name="anime", dataset=str(anime_set), steps=3, batch_size=2).resolved()
    order = first_use_order(config, dataset, dataset.buckets())
    first, _, _ = load_or_build_cache(pipe, dataset, flip=True, cache_dir=outputs / "first")
    assert len(order) == len(set(order)) and {latent_key(*job) for job in order} == set(first)  # every latent, once

    background, _, cached = load_or_build_cache(pipe, dataset, flip=True, cache_dir=outputs / "background", background=(order, 1))
    assert isinstance(background, BackgroundLatents) and not cached
    assert all(torch.equal(background[key], first[key]) for key in first)  # each lookup waits for its latent
    background.finish()
    stored, _, cached = load_or_build_cache(pipe, dataset, flip=True, cache_dir=outputs / "background")
    assert cached and all(torch.equal(stored[key], first[key]) for key in first)


def test_a_failure_while_caching_in_the_background_reaches_training(anime_set, outputs, monkeypatch):
    pipe = load_pipeline("tiny")
    dataset = prepare_dataset(anime_set, 64, trigger="anime")

    def broken(*args, **kwargs):
        raise ValueError("broken autoencoder")

    monkeypatch.setattr(pipe.vae, "encode", broken)
    order = first_use_order(TrainConfig(name="anime", dataset=str(anime_set), steps=1).resolved(), dataset, dataset.buckets())
    latents, _, _ = load_or_build_cache(pipe, dataset, flip=True, cache_dir=outputs / "cache", background=(order, 1))
    with pytest.raises(RuntimeError, match="caching the latents failed: broken autoencoder"):
        latents[latent_key(*order[0])]
    assert not list((outputs / "cache").glob("*.safetensors"))  # no half-built cache is left to be reused


def test_divergence_stops_with_a_clear_message_and_keeps_the_checkpoint(anime_set, outputs):
    config = TrainConfig(
        name="exploding", dataset=str(anime_set), steps=20, learning_rate=1e30, warmup_steps=0, lr_scheduler="constant", checkpoint_every=1
    )
    with pytest.raises(TrainingDiverged, match="loss became .* at step .*Lower the learning rate"):
        train_adapter(config, progress=False)
    _, state = load_checkpoint(outputs / "tiny" / "loras" / "exploding" / CHECKPOINT)
    assert state["step"] >= 1 and all(np.isfinite(state["losses"]))


def test_a_finished_run_with_other_settings_trains_again_and_an_unfinished_one_is_refused(anime_set, outputs, capsys):
    first = train_adapter(TrainConfig(name="anime", dataset=str(anime_set), steps=2, checkpoint_every=1), progress=False)
    again = train_adapter(TrainConfig(name="anime", dataset=str(anime_set), steps=2, checkpoint_every=1, rank=8, alpha=8), progress=False)
    assert again.resumed_from == 0 and len(again.losses) == 2
    assert re.search(r"anime: its finished run had other (rank, alpha|alpha, rank); training it again", capsys.readouterr().out)
    stamp = first.folder / "run.json"
    unfinished = json.loads(stamp.read_text())
    unfinished["config"]["steps"] = 5  # as if the rank-8 run had stopped after 2 of 5 steps
    stamp.write_text(json.dumps(unfinished))
    with pytest.raises(RuntimeError, match="unfinished checkpoint of a run with other settings or data.*delete"):
        train_adapter(TrainConfig(name="anime", dataset=str(anime_set), steps=2, checkpoint_every=1), progress=False)
    assert load_checkpoint(first.folder / CHECKPOINT)[1]["step"] == 2  # its progress is kept


@pytest.mark.parametrize("options", [{"kind": "dora", "save_precision": "fp32"}, {"text_encoder_lora": True, "conv": True}])
def test_adapter_options_train_and_reload(anime_set, outputs, options):
    config = TrainConfig(name="variant", dataset=str(anime_set), steps=3, learning_rate=5e-3, **options)
    result = train_adapter(config, progress=False, keep_pipeline=True)
    in_memory = _image(result.pipeline)
    pipe = load_pipeline("tiny")
    load_adapter(pipe, result.folder, "variant")
    np.testing.assert_allclose(_image(pipe), in_memory, atol=1e-5)


def test_gradient_accumulation_and_min_snr_run(anime_set, outputs):
    result = train_adapter(
        TrainConfig(
            name="accum", dataset=str(anime_set), steps=2, batch_size=2, gradient_accumulation=3, min_snr_gamma=None, noise_offset=0.05
        ),
        progress=False,
    )
    assert len(result.losses) == 2 and all(np.isfinite(result.losses))


def test_cli_train_writes_both_files(anime_set, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    threads_before = torch.get_num_threads()
    assert main(["train", str(anime_set), "--name", "cli_style", "--steps", "2", "--output-dir", str(tmp_path / "loras")]) == 0
    out = capsys.readouterr().out
    assert "pytorch_lora_weights.safetensors" in out and "cli_style.safetensors" in out
    record = json.loads((tmp_path / "loras" / "cli_style" / "losses.json").read_text())
    assert record["torch_threads"] == get_profile("tiny").train.cpu_threads == 1  # the tiny model trains on one thread
    assert torch.get_num_threads() == threads_before  # and the caller's thread count comes back


@pytest.mark.slow
@pytest.mark.parametrize("options", [[], ["--text-encoder-lora"]], ids=["unet", "unet and text encoder"])
def test_two_processes_match_one_process_with_the_same_global_batch(options, anime_set, tmp_path):
    common = ["--steps", "4", "--learning-rate", "5e-3", "--checkpoint-every", "100", *options]
    env = dict(os.environ, STYLEKIT_OUTPUTS=str(tmp_path / "one"), OMP_NUM_THREADS="1")
    single = [sys.executable, "-m", "stylekit", "train", str(anime_set), "--name", "ddp", "--batch-size", "4", *common]
    subprocess.run(single, env=env, check=True, timeout=600, capture_output=True)
    env["STYLEKIT_OUTPUTS"] = str(tmp_path / "two")
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--multi_gpu",
        "-m",
        "stylekit",
        "train",
        str(anime_set),
        "--name",
        "ddp",
        "--batch-size",
        "2",
        *common,
    ]
    result = subprocess.run(launch, env=env, timeout=600, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = (
        _adapter_tensors(tmp_path / "one" / "tiny" / "loras" / "ddp", "ddp"),
        _adapter_tensors(tmp_path / "two" / "tiny" / "loras" / "ddp", "ddp"),
    )
    # DDP averages the two halves' gradients: the same update as one process on the whole batch, up to float32 summation
    # order, which can flip the last bit of the fp16 the file stores (2**-10 of the value)
    for key in one:
        np.testing.assert_allclose(one[key].numpy(), two[key].numpy(), atol=1e-4, rtol=2**-10, err_msg=key)


def test_pairs_teach_the_change_from_photo_to_style(anime_set, outputs):
    from diffusers import DDPMScheduler

    from stylekit.diffusion import prediction_target

    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    photo, styled, noise = torch.randn(3, 2, 4, 8, 8).unbind(0)
    t = torch.tensor([10, 700])
    noisy = scheduler.add_noise(photo, noise, t)
    torch.testing.assert_close(
        prediction_target(noisy, photo, scheduler.alphas_cumprod[t], "epsilon"), noise, atol=1e-4, rtol=1e-4
    )  # unpaired: plain noise
    target = prediction_target(noisy, styled, scheduler.alphas_cumprod[t], "epsilon")
    alphas = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close((noisy - (1 - alphas).sqrt() * target) / alphas.sqrt(), styled, atol=1e-4, rtol=1e-4)

    dataset = prepare_dataset(anime_set, 64, trigger="anime")
    latents, _, _ = load_or_build_cache(load_pipeline("tiny"), dataset, flip=True, cache_dir=outputs / "cache")
    assert dataset.paired and {f"source.{i}" for i in range(len(dataset))} <= set(latents)
    paired = train_adapter(TrainConfig(name="paired", dataset=str(anime_set), steps=3, learning_rate=5e-3), progress=False)
    plain = train_adapter(TrainConfig(name="plain", dataset=str(anime_set), steps=3, learning_rate=5e-3, paired=False), progress=False)
    assert paired.losses != plain.losses
    # every item unpaired is plain training on the same draws; a share in between mixes the two
    settings = {"dataset": str(anime_set), "steps": 3, "learning_rate": 5e-3}
    all_unpaired = train_adapter(TrainConfig(name="all_unpaired", unpaired_share=1.0, **settings), progress=False)
    mixed = train_adapter(TrainConfig(name="mixed", unpaired_share=0.5, **settings), progress=False)
    # runs in one process differ by float noise (about 1 %), far less than pairs differ from plain training
    to_plain, to_paired = (np.abs(np.subtract(all_unpaired.losses, other.losses)).max() for other in (plain, paired))
    assert to_plain < to_paired / 4, (to_plain, to_paired)
    assert mixed.losses != paired.losses and mixed.losses != plain.losses


def test_trainings_side_by_side_fill_the_cores_without_oversubscribing(monkeypatch):
    from stylekit import launcher

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(launcher, "available_cores", lambda: 4)
    assert launcher.trainings_at_once("tiny") == 4  # one thread each
    assert launcher.trainings_at_once("sd15") == 1  # a training that takes every core (or a GPU) runs alone
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert launcher.trainings_at_once("tiny") == 2


def test_trainings_side_by_side_each_get_their_share_of_the_cores_as_omp_threads(monkeypatch):
    from stylekit import launcher

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(launcher, "available_cores", lambda: 4)
    monkeypatch.setattr(launcher, "pick_device", lambda *args: torch.device("cpu"))

    def expecting(value):  # a process that fails unless it sees OMP_NUM_THREADS == value
        return [sys.executable, "-c", f"import os, sys; sys.exit(os.environ.get('OMP_NUM_THREADS') != {value!r})"]

    launcher.run_trainings({"a": expecting("2"), "b": expecting("2")}, total=1, at_once=2, progress=False)
    launcher.run_trainings({"alone": expecting(None)}, total=1, at_once=1, progress=False)  # one at a time: all the cores
    with pytest.raises(RuntimeError, match="training a failed"):
        launcher.run_trainings({"a": expecting("4")}, total=1, at_once=2, progress=False)  # the check itself can fail
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    launcher.run_trainings({"a": expecting("3")}, total=1, at_once=2, progress=False)  # the user's choice is kept


def test_long_captions_are_encoded_in_chunks_not_cut(tiny_pipe):
    """As AUTOMATIC1111 reads a long prompt: pieces of at most 30 tokens here (75 for CLIP), cut at a comma near the end
    of a piece, each encoded whole; the words past the first piece still change the conditioning."""
    from stylekit.cache import caption_chunks, caption_conditioning, encode_captions, stack_conditioning

    tokenizer = tiny_pipe.tokenizer
    head = "anime style, two red houses and two trees on autumn fields under a sunset sky, with the sun, clouds, mountains"
    captions = [f"{head}, a road", f"{head}, the sea", "anime style"]
    pieces = caption_chunks(tokenizer, captions[0])
    limit = tokenizer.model_max_length - 2
    assert len(pieces) == 2 and " ".join(pieces) == captions[0] and pieces[0].endswith(",")
    assert all(len(tokenizer(piece).input_ids) - 2 <= limit for piece in pieces)
    with torch.no_grad():
        batch = caption_conditioning(tiny_pipe, captions)
        truncated = tiny_pipe.encode_prompt(captions[:2], "cpu", 1, False)[0]
        alone = caption_conditioning(tiny_pipe, captions[2:])
    length = tokenizer.model_max_length
    assert batch["states"].shape[1] == 2 * length and batch["mask"].tolist() == [[1] * 2 * length] * 2 + [[1] * length + [0] * length]
    torch.testing.assert_close(truncated[0], truncated[1])  # cut at the limit, the two captions read the same
    assert (batch["states"][0] - batch["states"][1]).abs().max() > 1e-3  # in chunks, their last words count
    cached = encode_captions(tiny_pipe, captions)
    assert cached[captions[2]]["states"].shape[0] == length and "mask" not in alone  # a short caption keeps one chunk
    stacked = stack_conditioning(cached, captions)
    torch.testing.assert_close(stacked["states"], batch["states"], atol=1e-5, rtol=1e-4)
    assert torch.equal(stacked["mask"], batch["mask"])
    # the short caption's prediction is the same beside long ones as alone: the padding is masked out
    latents, t = torch.randn(1, 8, 16, 16), torch.tensor([500])
    with torch.no_grad():
        beside = tiny_pipe.unet(latents, t, encoder_hidden_states=batch["states"][2:], encoder_attention_mask=batch["mask"][2:]).sample
        single = tiny_pipe.unet(latents, t, encoder_hidden_states=alone["states"]).sample
    torch.testing.assert_close(beside, single, atol=1e-5, rtol=1e-4)


def test_checkpoint_every_zero_checkpoints_at_the_end_only(anime_set, outputs):
    from stylekit.checkpoints import load_checkpoint
    from stylekit.train import CHECKPOINT

    result = train_adapter(TrainConfig(name="end_only", dataset=str(anime_set), steps=3, checkpoint_every=0), progress=False)
    assert load_checkpoint(result.folder / CHECKPOINT)[1]["step"] == 3 and len(result.losses) == 3


def test_an_adapter_older_than_its_demo_set_or_the_tiny_base_is_trained_again(tmp_path):
    import os
    import time

    from stylekit.launcher import _outdated
    from stylekit.models import tiny_model_dir

    weights, stamp = tmp_path / "pytorch_lora_weights.safetensors", tmp_path / ".demo.json"
    assert _outdated(weights, stamp, "tiny")  # never trained
    weights.write_bytes(b"")
    stamp.write_text("{}")
    base = (tiny_model_dir() / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime
    now = max(base, time.time())
    os.utime(stamp, (now - 10, now - 10))
    os.utime(weights, (now, now))
    assert not _outdated(weights, stamp, "tiny")
    os.utime(stamp, (now + 10, now + 10))  # the demo set was rebuilt after the adapter was trained
    assert _outdated(weights, stamp, "tiny")
    os.utime(stamp, (base - 20, base - 20))
    os.utime(weights, (base - 10, base - 10))  # the base model changed after it
    assert _outdated(weights, stamp, "tiny") and not _outdated(weights, stamp, "sd15")


def test_an_outdated_adapter_is_trained_again_from_the_start(anime_set, tmp_path):
    from stylekit.adapters import DIFFUSERS_WEIGHTS
    from stylekit.launcher import start_over

    cfg = TrainConfig(name="anime", dataset=str(anime_set), steps=2, output_dir=str(tmp_path))
    first = train_adapter(cfg, progress=False)
    rebuilt = tmp_path / "rebuilt"
    shutil.copytree(anime_set, rebuilt)
    (rebuilt / "metadata.jsonl").write_text((rebuilt / "metadata.jsonl").read_text().replace("anime", "anime, redrawn"))
    again = train_adapter(replace(cfg, dataset=str(rebuilt)), progress=False)  # a finished run of other data: trained again
    assert again.resumed_from == 0 and len(again.losses) == 2 and again.folder == first.folder
    newer_base = replace(cfg, name="same_data")  # same data and settings, but (say) a newer tiny base
    train_adapter(newer_base, progress=False)
    assert train_adapter(newer_base, progress=False).resumed_from == 2  # the finished checkpoint would be taken as done ...
    start_over(again.folder.parent / "same_data")
    assert not (again.folder.parent / "same_data" / CHECKPOINT).exists()
    assert not (again.folder.parent / "same_data" / DIFFUSERS_WEIGHTS).exists()
    assert train_adapter(newer_base, progress=False).resumed_from == 0  # ... and is trained again after start_over
