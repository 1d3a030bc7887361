"""The latent cache: a dataset's VAE latents and caption conditioning, computed once and kept on disk.

Training runs only the UNet each step: the latents of every image (and of its
mirror image), and each distinct caption's text-encoder states (for SDXL also
the pooled text), are encoded once per dataset and model and stored in one
``.safetensors`` file under a key of the model's weights, the dataset and the
settings. On a CPU whose training leaves cores idle, :class:`BackgroundLatents`
encodes them on a spare thread in the order the first steps read them.

Long captions are encoded in chunks of the text encoder's length, cut at a
comma near a chunk's end as AUTOMATIC1111 cuts a prompt; a batch that mixes
lengths is padded and masked (:func:`stack_conditioning`).
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .checkpoints import load_checkpoint, save_checkpoint
from .data import PreparedDataset
from .models import encode_pixels, is_sdxl, quiet_loading, text_encoders
from .progress import progress_bar

__all__ = [
    "BackgroundLatents",
    "cache_key",
    "caption_chunks",
    "caption_conditioning",
    "encode_captions",
    "encode_images",
    "encode_jobs",
    "latent_key",
    "load_or_build_cache",
    "stack_conditioning",
]

BITS_AS_INTEGERS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}  # a tensor's bits, by element size


def _fingerprint(*modules) -> str:
    """A cheap identity of frozen weights: names, shapes, dtypes and the integer sum of every tensor's raw bits.

    Integer sums are exact in any order, so the identity is the same on any device and thread count (a float sum was
    not: a process on one thread and one on two gave different keys, and one could not resume the other's run)."""
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in module.state_dict().items():
            bits = tensor.detach().contiguous().view(BITS_AS_INTEGERS[tensor.element_size()])
            digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}{int(bits.sum(dtype=torch.int64))}".encode())
    return digest.hexdigest()[:16]


CACHE_FORMAT = "3"  # caption conditioning stored per kind and caption (long captions in chunks)


def cache_key(pipe, dataset: PreparedDataset, captions: list[str], flip: bool) -> str:
    """Changes whenever the model, the image content and sizes (source photos included), the captions or the flip setting change."""
    digest = hashlib.sha256(_fingerprint(pipe.vae, *text_encoders(pipe)).encode() + CACHE_FORMAT.encode())
    for image in dataset.images + [source for source in dataset.sources if source is not None]:
        digest.update(f"{image.size}".encode())
        digest.update(hashlib.sha256(image.tobytes()).digest())
    digest.update(json.dumps(captions).encode())
    digest.update(f"flip={flip}".encode())
    return digest.hexdigest()[:20]


def _pixels(image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]


ENCODE_PIXELS = 2**16  # pixels per image batch while caching: 16 images of 64 px (32 with their mirrors), one of 256 px


def encode_jobs(dataset: PreparedDataset) -> dict[tuple[int, int], list[tuple[str, int, Image.Image]]]:
    """Every image to cache as (kind, index, image), by size: the styled image ("latent") and, in a paired set, its photo."""
    jobs = [("latent", index, image) for index, image in enumerate(dataset.images)]
    jobs += [("source", index, source) for index, source in enumerate(dataset.sources) if source is not None]
    by_size: dict[tuple[int, int], list] = {}
    for job in jobs:
        by_size.setdefault(job[2].size, []).append(job)
    return by_size


def latent_key(kind: str, index: int, mirrored: bool) -> str:
    """The cache's name of one latent: ``kind`` is "latent" (the styled image) or "source" (its photo)."""
    return f"{kind}_flip.{index}" if mirrored else f"{kind}.{index}"


@torch.no_grad()
def _encode_batch(vae, images: list[tuple[Image.Image, bool]]) -> torch.Tensor:
    """Latents of same-sized ``(image, mirrored)`` pairs, in one pass through the autoencoder (channels-last layout)."""
    pixels = torch.cat([_pixels(image).flip(-1) if mirrored else _pixels(image) for image, mirrored in images])
    return encode_pixels(vae, pixels.contiguous(memory_format=torch.channels_last)).cpu()


def _chunk_size(image: Image.Image) -> int:
    return max(1, ENCODE_PIXELS // (image.width * image.height))


def encode_images(pipe, dataset: PreparedDataset, flip: bool) -> dict[str, torch.Tensor]:
    """Scaled posterior means of every image (and its mirror image), and of its source photo in a paired dataset.

    Images of one size go through the autoencoder together, in channels-last layout: on a 2-core CPU that encodes 64 px
    images twice as fast as one image and its mirror at a time.
    """
    latents = {}
    by_size = encode_jobs(dataset)
    pipe.vae.to(memory_format=torch.channels_last)
    with progress_bar(total=sum(map(len, by_size.values())), desc="caching latents", leave=False) as bar:
        for jobs in by_size.values():
            chunk = _chunk_size(jobs[0][2])
            for first in range(0, len(jobs), chunk):
                part = jobs[first : first + chunk]
                orientations = (False, True) if flip else (False,)
                keys = [latent_key(kind, index, mirrored) for mirrored in orientations for kind, index, _ in part]
                encoded = _encode_batch(pipe.vae, [(image, mirrored) for mirrored in orientations for _, _, image in part])
                latents.update((key, latent.contiguous()) for key, latent in zip(keys, encoded))
                bar.update(len(part))
    pipe.vae.to(memory_format=torch.contiguous_format)  # as loaded: later images match those of a fresh pipeline
    return latents


class BackgroundLatents(dict):
    """The latents of :func:`encode_images`, encoded by a background thread in the order training first reads them
    (:func:`first_use_order`): a lookup waits until its latent is there. When training leaves CPU cores idle (the tiny
    profile trains on one thread), caching then costs it almost no time. ``on_done`` gets all latents at the end."""

    def __init__(self, pipe, dataset: PreparedDataset, order: list[tuple[str, int, bool]], threads: int, on_done):
        super().__init__()
        self._expected = {latent_key(*job) for job in order}
        self._ready = threading.Condition()
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._encode, args=(pipe.vae, dataset, order, threads, on_done), name="caching latents", daemon=True
        )
        self._thread.start()

    def _encode(self, vae, dataset: PreparedDataset, order, threads: int, on_done) -> None:
        try:
            torch.set_num_threads(threads)  # this thread's own count: training keeps its own
            image = {("latent", i): im for i, im in enumerate(dataset.images)} | {("source", i): im for i, im in enumerate(dataset.sources)}
            chunks: list[list] = []
            for kind, index, mirrored in order:  # consecutive jobs of one size, at most a chunk at a time
                job = (latent_key(kind, index, mirrored), image[kind, index], mirrored)
                last = chunks[-1] if chunks else None
                if last and last[0][1].size == job[1].size and len(last) < _chunk_size(job[1]):
                    last.append(job)
                else:
                    chunks.append([job])
            for chunk in chunks:
                encoded = _encode_batch(vae, [(im, mirrored) for _, im, mirrored in chunk])
                with self._ready:
                    for (key, _, _), latent in zip(chunk, encoded):
                        dict.__setitem__(self, key, latent.contiguous())
                    self._ready.notify_all()
            on_done(dict(self))
        except BaseException as error:  # handed to the training thread, which waits on this one
            with self._ready:
                self._error = error
                self._ready.notify_all()

    def __contains__(self, key) -> bool:
        return key in self._expected

    def __getitem__(self, key: str) -> torch.Tensor:
        with self._ready:
            self._ready.wait_for(lambda: dict.__contains__(self, key) or self._error is not None)
        if self._error is not None:
            raise RuntimeError(f"caching the latents failed: {self._error}") from self._error
        return dict.__getitem__(self, key)

    def finish(self) -> None:
        """Wait until every latent is encoded and the cache is written."""
        self._thread.join()
        if self._error is not None:
            raise RuntimeError(f"caching the latents failed: {self._error}") from self._error


COMMA_LOOKBACK = 20  # a long caption breaks at a comma within a chunk's last 20 tokens, as AUTOMATIC1111 breaks a prompt


def _token_count(tokenizer, text: str) -> int:
    with quiet_loading():  # transformers warns of every sequence longer than the model reads: that is why we count
        return len(tokenizer(text, truncation=False).input_ids) - 2  # without the begin and end tokens


def caption_chunks(tokenizer, caption: str) -> list[str]:
    """``caption`` cut into pieces the text encoder reads whole (``model_max_length - 2`` tokens: 75 for CLIP), the way
    AUTOMATIC1111 cuts a long prompt: at the last comma when one falls within a piece's last 20 tokens, else between words."""
    limit = tokenizer.model_max_length - 2
    pieces, words = [], caption.split(" ")
    while words:
        taken = len(words)
        while taken > 1 and _token_count(tokenizer, " ".join(words[:taken])) > limit:
            taken -= 1
        if taken < len(words):
            commas = [i + 1 for i, word in enumerate(words[:taken]) if word.endswith(",")]
            if commas and _token_count(tokenizer, " ".join(words[commas[-1] : taken])) <= COMMA_LOOKBACK:
                taken = commas[-1]
        pieces.append(" ".join(words[:taken]))
        words = words[taken:]
    return pieces or [""]


def _encode_prompts(pipe, prompts: list[str]) -> dict[str, torch.Tensor]:
    with quiet_loading():
        encoded = pipe.encode_prompt(
            prompt=prompts, device=pipe.text_encoder.device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
    return {"states": encoded[0], "pooled": encoded[2]} if is_sdxl(pipe) else {"states": encoded[0]}


def caption_conditioning(pipe, captions: list[str]) -> dict[str, torch.Tensor]:
    """What the UNet is conditioned on, per caption: the text encoder's states (SDXL: both encoders' penultimate
    states side by side) and, for SDXL, the pooled embedding of its second encoder. Gradients flow (text-encoder LoRA).

    A caption longer than the text encoder reads is not cut short: it is encoded in chunks (:func:`caption_chunks`)
    whose states follow one another, as AUTOMATIC1111 encodes a long prompt, and SDXL's pooled embedding is the first
    chunk's. In a batch with such a caption the shorter ones are padded and ``"mask"`` says which states are real, so
    that the UNet attends to the same states whatever else is in the batch.
    """
    chunked = [caption_chunks(pipe.tokenizer, caption) for caption in captions]
    encoded = [_encode_prompts(pipe, [pieces[i] if i < len(pieces) else "" for pieces in chunked]) for i in range(max(map(len, chunked)))]
    conditioning = {"states": torch.cat([chunk["states"] for chunk in encoded], dim=1)}
    if is_sdxl(pipe):
        conditioning["pooled"] = encoded[0]["pooled"]
    if len(encoded) > 1:
        length = encoded[0]["states"].shape[1]
        conditioning["mask"] = torch.tensor([[1] * len(p) * length + [0] * (len(encoded) - len(p)) * length for p in chunked])
        conditioning["states"] = conditioning["states"] * conditioning["mask"][..., None].to(conditioning["states"].dtype)
    return conditioning


@torch.no_grad()
def encode_captions(pipe, captions: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    """:func:`caption_conditioning` of each caption as float32 on the CPU, each as long as its own chunks need."""
    by_length: dict[int, list[str]] = {}
    for caption in captions:
        by_length.setdefault(len(caption_chunks(pipe.tokenizer, caption)), []).append(caption)
    encoded = {}
    for group in by_length.values():
        stacked = caption_conditioning(pipe, group)
        encoded.update(
            {
                caption: {kind: stacked[kind][i].float().cpu() for kind in ("states", "pooled") if kind in stacked}
                for i, caption in enumerate(group)
            }
        )
    return encoded


def stack_conditioning(embeddings: dict[str, dict[str, torch.Tensor]], captions: list[str]) -> dict[str, torch.Tensor]:
    """The cached conditioning of ``captions`` as one batch, padded and masked as :func:`caption_conditioning` pads a
    batch where their lengths (in chunks) differ."""
    lengths = [embeddings[c]["states"].shape[0] for c in captions]
    longest = max(lengths)
    stacked = {"states": torch.stack([F.pad(embeddings[c]["states"], (0, 0, 0, longest - n)) for c, n in zip(captions, lengths)])}
    if "pooled" in embeddings[captions[0]]:
        stacked["pooled"] = torch.stack([embeddings[c]["pooled"] for c in captions])
    if min(lengths) < longest:
        stacked["mask"] = torch.tensor([[1] * n + [0] * (longest - n) for n in lengths])
    return stacked


def load_or_build_cache(
    pipe, dataset: PreparedDataset, flip: bool, cache_dir: Path, background: tuple[list, int] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]], bool]:
    """Latents per image and text conditioning per distinct caption, from ``cache_dir`` when the key matches.

    Returns ``(latents, conditioning_by_caption, was_cached)``; each caption's conditioning maps
    ``"states"`` (and for SDXL ``"pooled"``) to a tensor. ``background=(order, threads)``: a missing cache's latents
    are encoded by a thread of ``threads`` torch threads in that order (:class:`BackgroundLatents`) while the caller
    goes on; the file is written when that thread is done.
    """
    captions = sorted({dataset.caption(i) for i in range(len(dataset))} | {dataset.trigger or ""})
    path = cache_dir / f"{cache_key(pipe, dataset, captions, flip)}.safetensors"
    if path.exists():
        tensors, state = load_checkpoint(path)
        text = {caption: {} for caption in state["captions"]}
        for key in [k for k in tensors if k.startswith("text.")]:
            _, kind, index = key.split(".")
            text[state["captions"][int(index)]][kind] = tensors.pop(key)
        return tensors, text, True
    text = encode_captions(pipe, captions)
    stored = {f"text.{kind}.{i}": tensor for i, caption in enumerate(captions) for kind, tensor in text[caption].items()}

    def save(latents: dict[str, torch.Tensor]) -> None:
        save_checkpoint(path, {**latents, **stored}, {"captions": captions})

    if background is None:
        latents = encode_images(pipe, dataset, flip)
        save(latents)
    else:
        latents = BackgroundLatents(pipe, dataset, *background, on_done=save)
    return latents, text, False


# ---------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------
