"""The embedded tiny Stable Diffusion: architecture, offline tokenizer and pretraining.

The tiny model has the Stable Diffusion layout (``AutoencoderKL``,
``UNet2DConditionModel``, a CLIP text encoder and tokenizer, a scheduler) at a
size that trains and runs on a laptop CPU. It is trained from scratch on the
shipped photos, the procedural scenes of :mod:`stylekit.tiny.synth`, and the corpus of
:mod:`stylekit.tiny.corpus` (wallpaper photos and artwork from Debian packages,
and generic artistic renderings; never the five demo styles):

    python -m stylekit.tiny train            # autoencoder, then UNet + text encoder
    python -m stylekit.tiny train --init-from DIR --vae-from DIR ...   # or fine-tune a trained one (docs/how_it_works.md)
    python -m stylekit.tiny.card             # then measure it and write its model card

This module knows nothing of the card: ``card`` imports it, not the other way round.

Training writes periodic checkpoints and resumes from the latest one.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
from collections import Counter
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel
from PIL import Image
from tokenizers import pre_tokenizers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from . import corpus, synth
from ..checkpoints import load_checkpoint, optimizer_state, restore_optimizer, restore_rng, rng_state, save_checkpoint
from ..data import load_photos
from ..diffusion import min_snr_weights, prediction_target
from ..models import pick_device, tiny_model_dir, tokenize
from ..progress import progress_bar

__all__ = ["PretrainConfig", "build_text_encoder", "build_tokenizer", "build_unet", "build_vae", "pretrain", "snapshot"]

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# Words the later notebooks use in prompts, so that they are whole tokens.
EXTRA_WORDS = "style anime watercolor oil painting pencil sketch 3d clay render cel shading drawing art photo portrait landscape picture"


@dataclass
class PretrainConfig:
    """Settings of a pretraining run (all recorded next to the result)."""

    resolution: int = 64
    scene_count: int = 4000
    crops_per_photo: int = 300
    crops_per_corpus_photo: int = 100
    crops_per_artwork: int = 40
    rendering_count: int = 3000  # generic artistic renderings of photo crops and scenes
    vae_steps: int = 6000
    vae_batch: int = 16
    vae_crop: int = 32  # the autoencoder is fully convolutional: it trains on crops, runs on full images
    vae_lr: float = 1e-3
    unet_steps: int = 16200  # the shipped base's; may be raised when a run resumes: the learning rate is constant after warmup
    unet_batch: int = 32
    unet_lr: float = 5e-4
    unet_warmup: int = 500
    unet_lr_schedule: str = "constant"  # after warmup: "constant", or "cosine" (decays to 0 at unet_steps)
    ema_max_decay: float = 0.999  # EMA of the UNet and text encoder, warmed up as diffusers' EMAModel (power 3/4)
    snr_gamma: float = 5.0  # min-SNR-gamma loss weighting (Hang et al. 2023); 0 turns it off
    prediction_type: str = "epsilon"  # what the UNet predicts: "epsilon" (the noise) or "v_prediction" (the velocity)
    # rescale the schedule so that its last step is pure noise (Lin et al. 2024); needs v-prediction. Stable Diffusion's
    # schedule leaves some of the image there, and a model then takes the noise's coarse colours as the picture's
    zero_terminal_snr: bool = False
    caption_dropout: float = 0.1
    checkpoint_every: int = 250
    seed: int = 0
    vocab_size: int = 1024
    vae_channels: tuple[int, ...] = (32, 64, 64)
    latent_channels: int = 8  # 4 (Stable Diffusion's) kept too little of a 64 px photo: 23.5 dB, SSIM 0.75
    unet_channels: tuple[int, ...] = (32, 64, 64)
    text_width: int = 64
    text_layers: int = 2
    max_tokens: int = 32
    extra_words: str = field(default=EXTRA_WORDS)
    pooled_text: bool = False  # also condition every ResNet block on the pooled caption (diffusers' addition_embed_type="text")
    vae_from: str = ""  # a model folder whose autoencoder is reused (stage 1 skipped); empty: train one
    # a model folder whose UNet, text encoder and tokenizer the UNet stage starts from (fine-tuning; pass the same folder as
    # vae_from); empty: from scratch
    init_from: str = ""

    def __post_init__(self) -> None:
        if self.zero_terminal_snr and self.prediction_type != "v_prediction":
            raise ValueError("zero_terminal_snr needs prediction_type='v_prediction': at pure noise the noise says nothing of the image")
        if self.unet_lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"unet_lr_schedule {self.unet_lr_schedule!r}: use 'constant' or 'cosine'")


# ---------------------------------------------------------------------------
# Architecture
# ---------------------------------------------------------------------------


def _bpe_merges(words: Counter, budget: int) -> list[tuple[str, str]]:
    """Byte-pair merges learned from word counts; ties break on the pair itself, so the result is deterministic."""
    splits = {word: list(word[:-1]) + [word[-1] + "</w>"] for word in words}
    merges: list[tuple[str, str]] = []
    while len(merges) < budget:
        pairs: Counter = Counter()
        for word, count in words.items():
            symbols = splits[word]
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs, key=lambda pair: (pairs[pair], pair))
        merges.append(best)
        for word, symbols in splits.items():
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            splits[word] = merged
    return merges


def build_tokenizer(captions: list[str], vocab_size: int, max_tokens: int) -> CLIPTokenizer:
    """A byte-level BPE vocabulary in CLIP's format, learned from ``captions`` offline and deterministically."""
    splitter = CLIPTokenizer(vocab={BOS: 0, EOS: 1}, merges=[]).backend_tokenizer
    words: Counter = Counter()
    for caption in captions:
        normalized = splitter.normalizer.normalize_str(caption)
        words.update(piece for piece, _ in splitter.pre_tokenizer.pre_tokenize_str(normalized))
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {BOS: 0, EOS: 1}
    for token in alphabet + [char + "</w>" for char in alphabet]:  # any text stays encodable
        vocab[token] = len(vocab)
    merges = _bpe_merges(words, vocab_size - len(vocab))
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_tokens)


def build_vae(config: PretrainConfig) -> AutoencoderKL:
    levels = len(config.vae_channels)
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=config.vae_channels,
        layers_per_block=1,
        latent_channels=config.latent_channels,
        norm_num_groups=16,
        sample_size=config.resolution,
        mid_block_add_attention=False,
    )


def build_unet(config: PretrainConfig) -> UNet2DConditionModel:
    factor = 2 ** (len(config.vae_channels) - 1)
    return UNet2DConditionModel(
        sample_size=config.resolution // factor,
        in_channels=config.latent_channels,
        out_channels=config.latent_channels,
        block_out_channels=config.unet_channels,
        # attention at the two coarser levels only, which keeps a CPU training step cheap
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=config.text_width,
        attention_head_dim=4,
        norm_num_groups=32,
        # the caption, pooled by attention, added to the time embedding: every ResNet block sees it
        addition_embed_type="text" if config.pooled_text else None,
        addition_embed_type_num_heads=4,
    )


def build_text_encoder(config: PretrainConfig, vocab_size: int) -> CLIPTextModel:
    text_config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=config.text_width,
        intermediate_size=config.text_width * 4,
        num_hidden_layers=config.text_layers,
        num_attention_heads=4,
        max_position_embeddings=config.max_tokens,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return CLIPTextModel(text_config)


def training_scheduler(config: PretrainConfig) -> DDPMScheduler:
    """Stable Diffusion's noise schedule (scaled-linear betas, 1000 steps), with the run's prediction type and, where
    asked, rescaled to zero terminal SNR."""
    return DDPMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        prediction_type=config.prediction_type,
        rescale_betas_zero_snr=config.zero_terminal_snr,
    )


def sampling_scheduler(config: PretrainConfig) -> DPMSolverMultistepScheduler:
    """The shipped pipeline's sampler on the training schedule; with zero terminal SNR its first step is the last
    timestep (``trailing`` spacing), where the sample is pure noise."""
    spacing = {"timestep_spacing": "trailing"} if config.zero_terminal_snr else {}
    return DPMSolverMultistepScheduler.from_config(training_scheduler(config).config, **spacing)


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def _random_crops(image: Image.Image, count: int, size: int, rng: np.random.Generator) -> list[Image.Image]:
    """Square crops of 30-100 % of the short side, resized to ``size``, some mirrored."""
    w, h = image.size
    crops = []
    for _ in range(count):
        side = int(min(w, h) * rng.uniform(0.3, 1.0))
        x, y = rng.integers(0, w - side + 1), rng.integers(0, h - side + 1)
        crop = image.crop((x, y, x + side, y + side)).resize((size, size), Image.Resampling.LANCZOS)
        crops.append(crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop)
    return crops


PHOTO, SCENE, ART = 0, 1, 2  # the kinds of pretraining image
BATCH_SHARES = {PHOTO: 0.5, SCENE: 0.25, ART: 0.25}  # of an autoencoder batch: photos are what users bring


def training_pool(config: PretrainConfig, corpus_root: Path = Path("/")) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """All training images (uint8, N x 3 x H x W), their captions, and their kinds (``PHOTO``, ``SCENE``, ``ART``).

    Only photos marked ``train`` are used: the shipped held-out photos and the corpus's unseen ones never are.
    """
    rng = np.random.default_rng(config.seed)
    samples: list[tuple[Image.Image, str, int]] = []
    entries = corpus.load_corpus("train", corpus_root)
    photos = [(p.image, p.caption, config.crops_per_photo) for p in load_photos(split="train")]
    photos += [(c.image, c.text, config.crops_per_corpus_photo) for c in entries if c.kind == "photo"]
    for image, caption, count in photos:
        samples += [(crop, caption, PHOTO) for crop in _random_crops(image, count, config.resolution, rng)]
    for artwork in (c for c in entries if c.kind == "artwork"):
        samples += [(crop, artwork.text, ART) for crop in _random_crops(artwork.image, config.crops_per_artwork, config.resolution, rng)]
    scenes = [(s.image, s.caption, SCENE) for s in synth.make_scenes(config.scene_count, config.resolution, seed=config.seed)]
    samples += scenes + _renderings([s for s in samples if s[2] == PHOTO] + scenes, config.rendering_count, rng)
    pixels = torch.from_numpy(np.stack([np.asarray(image, dtype=np.uint8) for image, _, _ in samples])).permute(0, 3, 1, 2)
    return pixels.contiguous(), [caption for _, caption, _ in samples], torch.tensor([kind for _, _, kind in samples])


def _renderings(sources: list[tuple[Image.Image, str, int]], count: int, rng: np.random.Generator) -> list[tuple[Image.Image, str, int]]:
    """``count`` renderings of randomly chosen ``sources``, the media taking turns."""
    media = list(corpus.MEDIA)
    picks = rng.integers(len(sources), size=count)
    rendered = []
    for i, pick in enumerate(progress_bar(picks, desc="artistic renderings")):
        image, caption, _ = sources[pick]
        rendered.append((*corpus.render(media[i % len(media)], image, caption, rng), ART))
    return rendered


def data_hash(pixels: torch.Tensor, captions: list[str]) -> str:
    digest = hashlib.sha256(pixels.numpy().tobytes())
    digest.update("\n".join(captions).encode())
    return digest.hexdigest()[:16]


def to_model_range(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.float() / 127.5 - 1.0


# ---------------------------------------------------------------------------
# Training stages
# ---------------------------------------------------------------------------


def _step_generator(seed: int, stage: int, step: int) -> torch.Generator:
    """A generator that depends only on (seed, stage, step): batches and noise replay exactly after a resume."""
    return torch.Generator().manual_seed(seed * 1_000_003 + stage * 100_003 + step)


def _save_stage(path: Path, modules: dict[str, torch.nn.Module], optimizer, step: int, losses: list[float]) -> None:
    tensors = {f"{name}.{k}": v for name, module in modules.items() for k, v in module.state_dict().items()}
    optim_tensors, optim_meta = optimizer_state(optimizer)
    rng_tensors, rng_meta = rng_state()
    save_checkpoint(
        path, {**tensors, **optim_tensors, **rng_tensors}, {"step": step, "optimizer": optim_meta, "rng": rng_meta, "losses": losses}
    )


def _resume_stage(path: Path, modules: dict[str, torch.nn.Module], optimizer) -> tuple[int, list[float]]:
    if not path.exists():
        return 0, []
    tensors, state = load_checkpoint(path)
    for name, module in modules.items():
        _load_prefixed(module, tensors, name + ".")
    restore_optimizer(optimizer, tensors, state["optimizer"])
    restore_rng(tensors, state["rng"])
    return state["step"], state["losses"]


def _load_prefixed(module: torch.nn.Module, tensors: dict[str, torch.Tensor], prefix: str) -> None:
    """Load the tensors of a checkpoint whose names start with ``prefix`` (one module among several) into ``module``."""
    module.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})


def _mixed_batch(kinds: torch.Tensor, batch: int, generator: torch.Generator) -> torch.Tensor:
    """Indices with each kind's share of the batch (``BATCH_SHARES``), the first kind taking what rounding leaves."""
    counts = {kind: round(batch * share) for kind, share in BATCH_SHARES.items()}
    counts[PHOTO] += batch - sum(counts.values())
    picks = []
    for kind, count in counts.items():
        members = torch.nonzero(kinds == kind).flatten()
        picks.append(members[torch.randint(len(members), (count,), generator=generator)])
    return torch.cat(picks)


def train_vae(vae: AutoencoderKL, pixels, kinds, config: PretrainConfig, work: Path) -> list[float]:
    """Stage 1: the autoencoder, with an L2 + L1 reconstruction loss and a tiny KL term."""
    device = next(vae.parameters()).device
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    ckpt = work / "vae_state.safetensors"
    start, losses = _resume_stage(ckpt, {"vae": vae}, optimizer)
    vae.train()
    bar = progress_bar(range(start, config.vae_steps), initial=start, total=config.vae_steps, desc="autoencoder")
    for step in bar:
        generator = _step_generator(config.seed, 1, step)
        _set_lr(optimizer, config.vae_lr, step, config.vae_steps)
        top, left = torch.randint(0, config.resolution - config.vae_crop + 1, (2,), generator=generator).tolist()
        batch = pixels[_mixed_batch(kinds, config.vae_batch, generator)]
        x = to_model_range(batch[:, :, top : top + config.vae_crop, left : left + config.vae_crop]).to(device)
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator).to(device)
        recon = vae.decode(z).sample
        loss = F.mse_loss(recon, x) + 0.1 * F.l1_loss(recon, x) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.vae_steps:
            _save_stage(ckpt, {"vae": vae}, optimizer, step + 1, losses)
    vae.eval()
    return losses


def _set_lr(optimizer, base_lr: float, step: int, total: int, warmup: int = 100) -> None:
    """Linear warmup, then cosine decay to 10 % of ``base_lr``."""
    if step < warmup:
        lr = base_lr * (step + 1) / warmup
    else:
        progress = (step - warmup) / max(1, total - warmup)
        lr = base_lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
    for group in optimizer.param_groups:
        group["lr"] = lr


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, pixels: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Posterior means of ``pixels`` (unscaled), on the CPU."""
    device = next(vae.parameters()).device
    return torch.cat(
        [vae.encode(to_model_range(pixels[i : i + batch]).to(device)).latent_dist.mean.cpu() for i in range(0, len(pixels), batch)]
    )


def ema_decay(step: int, max_decay: float, power: float = 0.75) -> float:
    """diffusers' EMA warmup (inv_gamma 1): short memory early, so the random initialisation is forgotten."""
    return min(max_decay, 1 - (1 + step) ** -power)


def train_unet(unet, text_encoder, latents, token_ids, empty_ids, config: PretrainConfig, work: Path) -> list[float]:
    """Stage 2: UNet and text encoder together (the config's prediction type and schedule, min-SNR weighting), caption
    dropout for guidance, and an EMA of the weights that replaces them at the end."""
    scheduler = training_scheduler(config)
    device = next(unet.parameters()).device
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.unet_lr, weight_decay=1e-2)
    ema_unet, ema_text = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text_encoder).requires_grad_(False)
    ema_params = list(ema_unet.parameters()) + list(ema_text.parameters())
    ckpt = work / "unet_state.safetensors"
    modules = {"unet": unet, "text_encoder": text_encoder, "ema_unet": ema_unet, "ema_text_encoder": ema_text}
    start, losses = _resume_stage(ckpt, modules, optimizer)
    unet.train()
    text_encoder.train()
    bar = progress_bar(range(start, config.unet_steps), initial=start, total=config.unet_steps, desc="unet")
    for step in bar:
        generator = _step_generator(config.seed, 2, step)
        for group in optimizer.param_groups:
            group["lr"] = unet_learning_rate(config, step)
        index = torch.randint(len(latents), (config.unet_batch,), generator=generator)
        ids = token_ids[index].clone()
        dropped = torch.rand(config.unet_batch, generator=generator) < config.caption_dropout
        ids[dropped] = empty_ids
        x0 = latents[index]
        flip = torch.rand(config.unet_batch, generator=generator) < 0.5
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (config.unet_batch,), generator=generator)
        noisy = scheduler.add_noise(x0, noise, t)
        states = text_encoder(ids.to(device)).last_hidden_state
        pred = unet(noisy.to(device), t.to(device), encoder_hidden_states=states).sample
        target = prediction_target(noisy, x0, scheduler.alphas_cumprod[t], config.prediction_type)
        per_sample = F.mse_loss(pred, target.to(device), reduction="none").mean(dim=(1, 2, 3))
        loss = (per_sample * min_snr_weights(scheduler.alphas_cumprod, t, config.snr_gamma, config.prediction_type).to(device)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1 - ema_decay(step, config.ema_max_decay))
        losses.append(per_sample.mean().item())
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.unet_steps:
            _save_stage(ckpt, modules, optimizer, step + 1, losses)
    unet.load_state_dict(ema_unet.state_dict())
    text_encoder.load_state_dict(ema_text.state_dict())
    unet.eval()
    text_encoder.eval()
    return losses


def unet_learning_rate(config: PretrainConfig, step: int) -> float:
    """The UNet stage's learning rate at ``step``: linear warmup, then constant or a cosine decay to 0."""
    warm = min(1.0, (step + 1) / config.unet_warmup)
    if config.unet_lr_schedule == "cosine":
        done = max(0, step - config.unet_warmup) / max(1, config.unet_steps - config.unet_warmup)
        return config.unet_lr * warm * 0.5 * (1 + math.cos(math.pi * done))
    return config.unet_lr * warm


def assemble_pipeline(vae, unet, text_encoder, tokenizer, config: PretrainConfig) -> StableDiffusionPipeline:
    return StableDiffusionPipeline(
        vae=vae,
        unet=unet,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=sampling_scheduler(config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def pretrain(out: Path, work: Path, config: PretrainConfig, device: str = "auto", corpus_root: Path = Path("/")) -> StableDiffusionPipeline:
    """Train the tiny model from scratch (resuming from ``work`` if a run was interrupted) and save it to ``out``.

    ``device``: ``"auto"`` (a CUDA GPU when there is one), ``"cpu"``, ``"cuda"``... Batches and noise are drawn
    on the CPU, so a run replays the same data on any device. ``corpus_root``: where the corpus's Debian
    packages are installed or extracted (see :mod:`stylekit.tiny.corpus`).
    """
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    started = time.time()
    _check_same_run(work, config)
    pixels, captions, kinds = training_pool(config, corpus_root)
    digest = data_hash(pixels, captions)
    _check_same_run(work, config, digest)
    tokenizer = _run_tokenizer(work, captions + [config.extra_words] * 5, config)
    target = pick_device(device)
    vae, unet, text_encoder = (m.to(target) for m in (build_vae(config), build_unet(config), build_text_encoder(config, len(tokenizer))))

    if config.vae_from:
        vae = _reused_vae(vae, config.vae_from).to(target).eval()
        vae_losses = []
    else:
        vae_losses = train_vae(vae, pixels, kinds, config, work)
    latents = _run_latents(work, vae, pixels)
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    (work / "vae_config.json").write_text(vae.to_json_string())
    latents = latents * vae.config.scaling_factor
    token_ids = tokenize(tokenizer, captions)
    empty_ids = tokenize(tokenizer, [""])[0]
    if config.init_from:
        _start_from(unet, text_encoder, config.init_from)
    unet_losses = train_unet(unet, text_encoder, latents, token_ids, empty_ids, config, work)

    pipe = assemble_pipeline(vae.cpu(), unet.cpu(), text_encoder.cpu(), tokenizer, config)
    _save_fp16(pipe, out)
    record = {
        "config": {
            **asdict(config),
            **{key: Path(getattr(config, key)).name or None for key in ("vae_from", "init_from")},
        },  # no local path
        "data_hash": digest,
        "images": len(pixels),
        "images_per_kind": {name: int((kinds == kind).sum()) for name, kind in (("photo", PHOTO), ("scene", SCENE), ("art", ART))},
        "photos_used": [p.file_name for p in load_photos(split="train")],
        "corpus_used": [entry.path for entry in corpus.read_manifest() if entry.split == "train"],
        "final_vae_loss": float(np.mean(vae_losses[-100:])) if vae_losses else None,
        "final_unet_loss": float(np.mean(unet_losses[-100:])),
        "scaling_factor": vae.config.scaling_factor,
        "parameters": {
            name: sum(p.numel() for p in m.parameters()) for name, m in {"vae": vae, "unet": unet, "text_encoder": text_encoder}.items()
        },
        "train_seconds_this_session": round(time.time() - started, 1),
    }
    if config.init_from:  # the starting model's own record: the card tells the whole history
        record["started_from"] = json.loads((Path(config.init_from) / "training.json").read_text())
    (out / "training.json").write_text(json.dumps(record, indent=2))
    np.save(work / "losses_vae.npy", np.array(vae_losses))
    np.save(work / "losses_unet.npy", np.array(unet_losses))
    return pipe


def _reused_vae(vae: AutoencoderKL, pipeline_folder: str) -> AutoencoderKL:
    """``vae`` with the weights of the autoencoder in ``pipeline_folder`` (its config stays ``vae``'s: no local path)."""
    vae.load_state_dict(AutoencoderKL.from_pretrained(Path(pipeline_folder) / "vae", torch_dtype=torch.float32).state_dict())
    return vae


def _start_from(unet: UNet2DConditionModel, text_encoder: CLIPTextModel, pipeline_folder: str) -> None:
    """Load the UNet and text encoder of the model in ``pipeline_folder`` (same architecture) to fine-tune them."""
    folder = Path(pipeline_folder)
    unet.load_state_dict(UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=torch.float32).state_dict())
    text_encoder.load_state_dict(CLIPTextModel.from_pretrained(folder / "text_encoder", torch_dtype=torch.float32).state_dict())


def snapshot(work: Path, out: Path) -> StableDiffusionPipeline:
    """Save the EMA weights of ``work``'s latest UNet checkpoint as a pipeline in ``out``, while the run goes on or after
    it stopped: a look at a long pretraining without interrupting it. The model card needs a finished run
    (``train`` with ``--unet-steps`` at the step reached writes the full record)."""
    run = json.loads((work / "run.json").read_text())
    config = PretrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in run["config"].items() if k != "unet_steps"})
    tokenizer = CLIPTokenizer.from_pretrained(work / "tokenizer")
    vae_config = json.loads((work / "vae_config.json").read_text())
    vae = AutoencoderKL.from_config(vae_config)
    if config.vae_from:
        _reused_vae(vae, config.vae_from)
    else:
        _load_prefixed(vae, load_checkpoint(work / "vae_state.safetensors")[0], "vae.")
    unet, text_encoder = build_unet(config), build_text_encoder(config, len(tokenizer))
    tensors, state = load_checkpoint(work / "unet_state.safetensors")
    _load_prefixed(unet, tensors, "ema_unet.")
    _load_prefixed(text_encoder, tensors, "ema_text_encoder.")
    pipe = assemble_pipeline(vae.eval(), unet.eval(), text_encoder.eval(), tokenizer, config)
    _save_fp16(pipe, out)
    record = {"config": {**run["config"], "unet_steps": state["step"]}, "data_hash": run["data_hash"], "snapshot_of": str(work)}
    record["final_unet_loss"] = float(np.mean(state["losses"][-100:]))
    (out / "training.json").write_text(json.dumps(record, indent=2))
    return pipe


def _run_latents(work: Path, vae: AutoencoderKL, pixels: torch.Tensor) -> torch.Tensor:
    """The pool's latents: encoded once after the autoencoder is done, then read back when the run resumes."""
    path = work / "latents.safetensors"
    if path.exists():
        return load_checkpoint(path)[0]["latents"]
    latents = encode_latents(vae, pixels)
    save_checkpoint(path, {"latents": latents}, {})
    return latents


def _run_tokenizer(work: Path, captions: list[str], config: PretrainConfig) -> CLIPTokenizer:
    """The run's tokenizer: built once (or the starting model's, when fine-tuning), then reused when the run resumes."""
    folder = work / "tokenizer"
    if folder.exists():
        return CLIPTokenizer.from_pretrained(folder)
    if config.init_from:
        tokenizer = CLIPTokenizer.from_pretrained(Path(config.init_from) / "tokenizer")
    else:
        tokenizer = build_tokenizer(captions, config.vocab_size, config.max_tokens)
    tokenizer.save_pretrained(folder)
    return tokenizer


def _check_same_run(work: Path, config: PretrainConfig, digest: str | None = None) -> None:
    """Refuse to resume checkpoints made with other settings (checked before the data is built) or other data
    (``digest``, checked once it is; the first run writes the stamp then)."""
    stamp = work / "run.json"
    current = json.loads(json.dumps({"config": {**asdict(config), "unet_steps": None}, "data_hash": digest}))  # a run may be extended
    if stamp.exists():
        previous = json.loads(stamp.read_text())
        defaults = json.loads(json.dumps(asdict(PretrainConfig())))
        previous["config"] = {**defaults, **previous["config"]}  # settings added since the run began keep their defaults
        if current["config"] != previous["config"] or digest not in (None, previous["data_hash"]):
            raise RuntimeError(f"{work} holds checkpoints of a run with other settings or data; pass a fresh --work folder or delete it")
    elif digest is not None:
        stamp.write_text(json.dumps(current, indent=2))


def _save_fp16(pipe: StableDiffusionPipeline, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    pipe.to(torch.float16).save_pretrained(out, safe_serialization=True)
    pipe.to(torch.float32)


def _int_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m stylekit.tiny", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="pretrain the tiny model (resumes from --work)")
    train.add_argument(
        "--out", type=Path, default=tiny_model_dir(), help="where the finished pipeline is saved (default: the package's tiny model)"
    )
    train.add_argument("--work", type=Path, default=Path("outputs/tiny_pretrain"), help="checkpoints and logs")
    for name, value in asdict(PretrainConfig()).items():
        if isinstance(value, tuple):
            train.add_argument(f"--{name.replace('_', '-')}", type=_int_tuple, default=value, help="comma-separated, e.g. 32,64,64")
        elif isinstance(value, bool):
            train.add_argument(f"--{name.replace('_', '-')}", action=argparse.BooleanOptionalAction, default=value)
        else:
            train.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    train.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda...")
    train.add_argument(
        "--corpus-root", type=Path, default=Path("/"), help="where the corpus's Debian packages are installed or extracted (default: /)"
    )
    look = sub.add_parser("snapshot", help="save the EMA weights of a run's latest checkpoint as a pipeline")
    look.add_argument("--work", type=Path, default=Path("outputs/tiny_pretrain"), help="the run's checkpoints")
    look.add_argument("--out", type=Path, required=True, help="where the pipeline is saved")
    args = parser.parse_args(argv)
    if args.command == "snapshot":
        snapshot(args.work, args.out)
        return
    overrides = {k: v for k, v in vars(args).items() if k in PretrainConfig.__dataclass_fields__}
    pretrain(args.out, args.work, PretrainConfig(**overrides), device=args.device, corpus_root=args.corpus_root)
    print("next: python -m stylekit.tiny.card --model", args.out)
