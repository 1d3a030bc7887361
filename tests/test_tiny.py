import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import kill_once_written
from safetensors.torch import load_file

from stylekit.checkpoints import load_checkpoint
from stylekit.tiny.pretrain import PretrainConfig, build_tokenizer
from stylekit.tiny.corpus import read_manifest

SMOKE = [
    "--scene-count",
    "24",
    "--crops-per-photo",
    "2",
    "--vae-steps",
    "4",
    "--vae-batch",
    "4",
    "--unet-steps",
    "40",
    "--unet-batch",
    "4",
    "--checkpoint-every",
    "5",
    "--crops-per-corpus-photo",
    "1",
    "--crops-per-artwork",
    "1",
    "--rendering-count",
    "20",
]


@pytest.fixture
def smoke(fake_corpus_root):
    """The smoke run's options, reading the corpus from a generated stand-in of its packages."""
    return [*SMOKE, "--corpus-root", str(fake_corpus_root)]


def _train(out, work, options):
    cmd = [sys.executable, "-m", "stylekit.tiny", "train", "--out", str(out), "--work", str(work), *options]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _unet_weights(folder):
    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


def test_tokenizer_is_built_offline_in_clip_format():
    tokenizer = build_tokenizer(["a red house by a lake"] * 5, vocab_size=600, max_tokens=16)
    ids = tokenizer("a red house", padding="max_length", max_length=16).input_ids
    assert len(ids) == 16 and ids[0] == tokenizer.bos_token_id
    assert tokenizer.convert_ids_to_tokens(ids[1:4]) == ["a</w>", "red</w>", "house</w>"]
    assert tokenizer.unk_token_id not in tokenizer("zebra ünïcode").input_ids[1:-1]  # any text stays encodable


@pytest.mark.slow
def test_pretraining_killed_and_resumed_matches_uninterrupted(tmp_path, smoke):
    straight = _train(tmp_path / "straight", tmp_path / "work_straight", smoke)  # side by side with the victim: one core each
    victim = _train(tmp_path / "resumed", tmp_path / "work_resumed", smoke)
    state_file = tmp_path / "work_resumed" / "unet_state.safetensors"
    kill_once_written(victim, state_file)
    _, state = load_checkpoint(state_file)
    assert 0 < state["step"] < 40, "the kill must land mid-run for this test to mean anything"

    resumed = _train(tmp_path / "resumed", tmp_path / "work_resumed", smoke)
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    assert straight.wait(timeout=600) == 0, straight.stderr.read()
    a, b = _unet_weights(tmp_path / "straight"), _unet_weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key].float().numpy(), b[key].float().numpy(), atol=1e-3, err_msg=key)

    record = json.loads((tmp_path / "resumed" / "training.json").read_text())
    assert record["data_hash"] and record["config"]["seed"] == PretrainConfig().seed
    assert "chelsea.jpg" not in record["photos_used"]  # held-out photos never train anything
    unseen = {entry.path for entry in read_manifest() if entry.split == "unseen"}
    assert unseen and not unseen & set(record["corpus_used"])
    assert all(record["images_per_kind"][kind] > 0 for kind in ("photo", "scene", "art"))


def test_a_run_extends_refuses_other_settings_and_its_snapshot_is_the_ema_weights(tmp_path, smoke):
    from stylekit.tiny.pretrain import main

    out, work = ["--out", str(tmp_path / "out")], ["--work", str(tmp_path / "work")]
    main(["train", *out, *work, *smoke])  # in this process: the fast tier pays torch's import once
    with pytest.raises(RuntimeError, match="other settings or data"):
        main(["train", *out, *work, *smoke, "--seed", "3"])
    main(["snapshot", *work, "--out", str(tmp_path / "look")])
    finished, looked = _unet_weights(tmp_path / "out"), _unet_weights(tmp_path / "look")
    assert finished.keys() == looked.keys() and all(np.array_equal(finished[k].numpy(), looked[k].numpy()) for k in finished)

    longer = [*smoke[: smoke.index("--unet-steps") + 1], "45", *smoke[smoke.index("--unet-steps") + 2 :]]
    main(["train", *out, *work, *longer])  # more steps is the same run, continued
    _, state = load_checkpoint(tmp_path / "work" / "unet_state.safetensors")
    assert state["step"] == 45 and len(state["losses"]) == 45


def test_a_fine_tuning_run_starts_from_the_given_model_and_can_move_it_to_v_prediction_with_zero_terminal_snr(tmp_path, smoke):
    from diffusers import DDPMScheduler

    from stylekit.models import load_pipeline
    from stylekit.tiny.card import _training_text
    from stylekit.tiny.pretrain import main

    base = tmp_path / "base"
    main(["train", "--out", str(base), "--work", str(tmp_path / "work"), *smoke])
    tune = ["--init-from", str(base), "--vae-from", str(base), "--prediction-type", "v_prediction", "--zero-terminal-snr"]
    main(["train", "--out", str(tmp_path / "still"), "--work", str(tmp_path / "work_still"), *smoke, *tune, "--unet-lr", "0"])
    start, still = _unet_weights(base), _unet_weights(tmp_path / "still")  # learning rate 0: nothing moves from the start
    assert start.keys() == still.keys() and all(np.array_equal(start[k].numpy(), still[k].numpy()) for k in start)

    tuned = tmp_path / "tuned"
    main(["train", "--out", str(tuned), "--work", str(tmp_path / "work_tuned"), *smoke, *tune, "--unet-lr-schedule", "cosine"])
    moved = _unet_weights(tuned)
    assert any(not np.array_equal(start[k].numpy(), moved[k].numpy()) for k in start)
    assert (tuned / "tokenizer" / "tokenizer.json").read_text() == (base / "tokenizer" / "tokenizer.json").read_text()
    config = load_pipeline(tuned, device="cpu").scheduler.config
    assert config.prediction_type == "v_prediction" and config.timestep_spacing == "trailing"
    assert DDPMScheduler.from_config(config).alphas_cumprod[-1] == 0  # the last step is pure noise

    record = json.loads((tuned / "training.json").read_text())
    assert record["config"]["init_from"] == "base" and record["started_from"]["config"]["prediction_type"] == "epsilon"
    assert "Then fine-tuned" in _training_text(record) and "zero terminal SNR" in _training_text(record)


def test_zero_terminal_snr_needs_v_prediction_and_the_cosine_schedule_decays_to_zero():
    from stylekit.tiny.pretrain import training_scheduler, unet_learning_rate

    with pytest.raises(ValueError, match="v_prediction"):
        PretrainConfig(zero_terminal_snr=True)  # refused before any data is built
    assert training_scheduler(PretrainConfig(prediction_type="v_prediction", zero_terminal_snr=True)).alphas_cumprod[-1] == 0
    cosine = PretrainConfig(unet_steps=1000, unet_warmup=100, unet_lr=1e-3, unet_lr_schedule="cosine")
    assert unet_learning_rate(cosine, 0) == pytest.approx(1e-5) and unet_learning_rate(cosine, 99) == pytest.approx(1e-3)
    assert unet_learning_rate(cosine, 550) == pytest.approx(5e-4) and unet_learning_rate(cosine, 999) < 1e-8
    assert unet_learning_rate(PretrainConfig(), 10_000) == PretrainConfig().unet_lr
    with pytest.raises(ValueError, match="cosine"):
        PretrainConfig(unet_lr_schedule="linear")


def test_ema_forgets_the_start_then_settles():
    from stylekit.tiny.pretrain import ema_decay

    assert ema_decay(0, 0.999) == 0.0  # the first update copies the weights
    assert 0.9 < ema_decay(100, 0.999) < ema_decay(1000, 0.999) < 0.999 == ema_decay(100_000, 0.999)


def test_pooled_text_conditions_every_block():
    from stylekit.tiny.pretrain import build_unet

    unet = build_unet(PretrainConfig(pooled_text=True))
    assert unet.config.addition_embed_type == "text" and unet.add_embedding is not None
    assert build_unet(PretrainConfig()).config.addition_embed_type is None


def test_caption_following_reads_the_demo_scenes_right_and_measures_text_to_image():
    from stylekit.models import load_pipeline
    from stylekit.tiny import synth
    from stylekit.tiny.card import _nearest, _sky_and_ground, caption_following, scene_colours

    skies, grounds = scene_colours(count=200)
    scenes = synth.make_scenes(100, 64, seed=5)  # not the scenes the references come from
    right_sky = [_nearest(_sky_and_ground(s.image)[0], skies) in s.caption for s in scenes]
    right_ground = [_nearest(_sky_and_ground(s.image)[1], grounds) in s.caption for s in scenes]
    assert np.mean(right_sky) > 0.95 and np.mean(right_ground) > 0.95  # the measure reads real scenes as captioned

    scores, pictures = caption_following(load_pipeline("tiny", device="cpu"), seeds=(0,))
    assert len(pictures) == scores["pictures"] == len(synth.SKIES) * len(synth.GROUNDS)
    assert 0 <= scores["sky_accuracy"] <= 1 and 0 <= scores["ground_accuracy"] <= 1
