"""How well a stylization keeps the photo and matches the style.

Content preservation (photo against its stylization):
    ``ssim``, ``psnr``, ``edge_f1`` (agreement of Canny edges), and DINO
    similarity only when DINO weights are on this machine (see :func:`extra_models`).

Style consistency (stylization against a style's reference images):
    ``gram_distance`` of convolutional features, the gain toward a demo
    style's exact target, the judge's probability (a classifier from
    :mod:`stylekit.judge`), and CLIP similarity only when CLIP weights are on
    this machine. Features come from a pretrained VGG-16 when its
    ``.safetensors`` weights are found locally; otherwise from a fixed, seeded
    multi-scale random-filter network (``"random-filters"``), which captures
    texture statistics but knows nothing of objects. Reports name the network used.

Scores that need weights which are not here are reported as unavailable,
never approximated under their name.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from huggingface_hub import try_to_load_from_cache
from safetensors.torch import load_file
from scipy.ndimage import binary_dilation
from skimage.feature import canny
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

__all__ = [
    "FeatureNet",
    "availability",
    "content_scores",
    "edge_f1",
    "evenness",
    "extra_models",
    "feature_net",
    "gram_distance",
    "is_monotonic",
    "mean_by",
    "mean_gram_matrices",
    "psnr",
    "ssim",
    "style_scores",
    "target_gain",
    "write_csv",
]

FEATURE_SIZE = 64  # images are compared at this size (the tiny profile's resolution)
VGG16_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512)  # torchvision's VGG-16 up to relu4_3
VGG16_TAPS = (1, 4, 9, 16, 23)  # relu1_2, relu2_2, relu3_3, relu4_3 ... indices in ``features`` (Johnson et al. style layers)
VGG16_REPO = "timm/vgg16.tv_in1k"  # torchvision's ImageNet weights in safetensors on the Hugging Face hub


# ---------------------------------------------------------------------------
# Content preservation
# ---------------------------------------------------------------------------


def as_array(image: Image.Image, size: tuple[int, int] | None = None) -> np.ndarray:
    """RGB float array in [0, 1], resized to ``size`` (width, height) when given."""
    image = image.convert("RGB")
    if size is not None and image.size != tuple(size):
        image = image.resize(tuple(size), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.float32) / 255.0


def psnr(reference: Image.Image, image: Image.Image) -> float:
    """Peak signal-to-noise ratio in dB (``inf`` for identical images); ``image`` is resized to ``reference``."""
    a, b = as_array(reference), as_array(image, reference.size)
    if np.array_equal(a, b):
        return float("inf")
    return float(peak_signal_noise_ratio(a, b, data_range=1.0))


def ssim(reference: Image.Image, image: Image.Image) -> float:
    """Structural similarity (1 = identical), over the colour channels."""
    a, b = as_array(reference), as_array(image, reference.size)
    window = min(7, (min(a.shape[:2]) - 1) // 2 * 2 + 1)  # odd, and no larger than the image
    return float(structural_similarity(a, b, channel_axis=2, data_range=1.0, win_size=window))


def edges(image: Image.Image, sigma: float = 1.0) -> np.ndarray:
    """Canny edge map of the grey image."""
    return canny(as_array(image) @ np.array([0.299, 0.587, 0.114], dtype=np.float32), sigma=sigma)


def edge_f1(reference: Image.Image, image: Image.Image, sigma: float = 1.0, tolerance: int = 1) -> float:
    """F1 of the Canny edges of ``image`` against those of ``reference``, an edge counting as found within ``tolerance`` pixels."""
    ref = edges(reference, sigma)
    out = edges(image.resize(reference.size, Image.Resampling.LANCZOS) if image.size != reference.size else image, sigma)
    if not ref.any() and not out.any():
        return 1.0
    grow = np.ones((2 * tolerance + 1, 2 * tolerance + 1), dtype=bool)
    precision = (out & binary_dilation(ref, grow)).sum() / max(out.sum(), 1)
    recall = (ref & binary_dilation(out, grow)).sum() / max(ref.sum(), 1)
    return float(2 * precision * recall / (precision + recall)) if precision + recall else 0.0


def content_scores(photo: Image.Image, stylized: Image.Image) -> dict[str, float]:
    """SSIM, PSNR and edge F1 of ``stylized`` against ``photo`` (plus DINO when its weights are here)."""
    scores = {"ssim": ssim(photo, stylized), "psnr": psnr(photo, stylized), "edge_f1": edge_f1(photo, stylized)}
    dino = extra_models().get("dino")
    if dino is not None:
        scores["dino"] = dino.similarity(photo, stylized)
    return scores


# ---------------------------------------------------------------------------
# Convolutional features: VGG-16 when its weights are here, else random filters
# ---------------------------------------------------------------------------


class FeatureNet(torch.nn.Module):
    """A frozen convolutional network whose intermediate activations describe texture.

    ``name`` says which one it is (``"vgg16"`` or ``"random-filters"``); reports print it.
    """

    def __init__(self, name: str, features: torch.nn.Sequential, taps: Sequence[int], mean, std):
        super().__init__()
        self.name = name
        self.features = features.eval().requires_grad_(False)
        self.taps = tuple(taps)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def tensor(self, images: Sequence[Image.Image]) -> torch.Tensor:
        arrays = [as_array(image, (FEATURE_SIZE, FEATURE_SIZE)) for image in images]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)

    @torch.no_grad()
    def activations(self, images: Sequence[Image.Image]) -> list[torch.Tensor]:
        x = (self.tensor(images) - self.mean) / self.std
        taps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps:
                taps.append(x)
        return taps


def random_filter_net(seed: int = 0) -> FeatureNet:
    """A fixed, seeded multi-scale random-filter network: 3x3 convolutions with ReLU, pooled between scales.

    Random convolutional filters preserve texture statistics well enough for
    Gram-matrix comparisons (Ustyuzhaninov et al., 2017), but not semantics.
    """
    generator = torch.Generator().manual_seed(seed)
    layers, taps, channels = [], [], 3
    for width in (32, 64, 128, 128):
        conv = torch.nn.Conv2d(channels, width, 3, padding=1)
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * (2.0 / (channels * 9)) ** 0.5)
            conv.bias.zero_()
        layers += [conv, torch.nn.ReLU()]
        taps.append(len(layers) - 1)
        layers.append(torch.nn.AvgPool2d(2))
        channels = width
    return FeatureNet("random-filters", torch.nn.Sequential(*layers[:-1]), taps, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def vgg16_net(weights: Path) -> FeatureNet:
    """VGG-16's convolutional part from a ``.safetensors`` file with torchvision / timm key names (``features.N.weight``)."""
    layers, channels = [], 3
    for spec in VGG16_LAYERS:
        if spec == "M":
            layers.append(torch.nn.MaxPool2d(2))
        else:
            layers += [torch.nn.Conv2d(channels, spec, 3, padding=1), torch.nn.ReLU()]
            channels = spec
    features = torch.nn.Sequential(*layers)
    state = {k.removeprefix("features."): v for k, v in load_file(str(weights)).items() if k.startswith("features.")}
    missing = [k for k in features.state_dict() if k not in state]
    if missing:
        raise ValueError(f"{weights} is not a VGG-16 checkpoint: it lacks {', '.join(missing[:4])}")
    features.load_state_dict({k: state[k] for k in features.state_dict()})
    return FeatureNet("vgg16", features, VGG16_TAPS[:4], (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def find_vgg16_weights() -> Path | None:
    """Local VGG-16 safetensors: ``$STYLEKIT_VGG16``, or the Hugging Face cache of ``timm/vgg16.tv_in1k``. Never downloads."""
    if os.environ.get("STYLEKIT_VGG16"):
        path = Path(os.environ["STYLEKIT_VGG16"])
        if not path.is_file() or path.suffix != ".safetensors":
            raise FileNotFoundError(f"STYLEKIT_VGG16={path} is not a .safetensors file")
        return path
    cached = try_to_load_from_cache(VGG16_REPO, "model.safetensors")
    return Path(cached) if isinstance(cached, str) else None


_NETS: dict[str, FeatureNet] = {}


def feature_net(prefer: str = "auto") -> FeatureNet:
    """VGG-16 when local weights are found (``prefer="auto"`` or ``"vgg16"``), else the random-filter network."""
    if prefer not in ("auto", "vgg16", "random-filters"):
        raise ValueError(f"unknown feature network {prefer!r}: use 'auto', 'vgg16' or 'random-filters'")
    weights = find_vgg16_weights() if prefer != "random-filters" else None
    if prefer == "vgg16" and weights is None:
        raise FileNotFoundError(f"no local VGG-16 weights: set STYLEKIT_VGG16 to a .safetensors file or cache {VGG16_REPO}")
    key = str(weights) if weights else "random-filters"
    if key not in _NETS:
        _NETS[key] = vgg16_net(weights) if weights else random_filter_net()
    return _NETS[key]


def gram_matrices(net: FeatureNet, images: Sequence[Image.Image]) -> list[torch.Tensor]:
    """Per tapped layer, the channel-by-channel Gram matrices (normalised by positions), shape ``(n, c, c)``."""
    grams = []
    for act in net.activations(images):
        flat = act.flatten(2)
        grams.append(flat @ flat.transpose(1, 2) / flat.shape[-1])
    return grams


def mean_gram_matrices(net: FeatureNet, images: Sequence[Image.Image]) -> list[torch.Tensor]:
    """Per tapped layer, the mean Gram matrix of ``images``: what :func:`gram_distance` compares with."""
    return [grams.mean(0) for grams in gram_matrices(net, images)]


def gram_distance(
    net: FeatureNet, image: Image.Image, references: Sequence[Image.Image], reference_grams: list[torch.Tensor] | None = None
) -> float:
    """Style distance of ``image`` to a set of references (0 = same texture statistics; lower is closer).

    Per layer, the Frobenius distance between the image's Gram matrix and the
    references' mean Gram matrix, relative to that mean's norm; averaged over layers.
    ``reference_grams``: the references' :func:`mean_gram_matrices`, when already computed.
    """
    targets = reference_grams if reference_grams is not None else mean_gram_matrices(net, references)
    distances = [
        float(torch.linalg.norm(mine[0] - target) / torch.linalg.norm(target).clamp_min(1e-8))
        for mine, target in zip(gram_matrices(net, [image]), targets)
    ]
    return float(np.mean(distances))


def _feature_distance(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Summed per-layer squared distance of two activation lists, each layer relative to ``b``'s energy."""
    return float(sum(((x - y) ** 2).mean() / (y**2).mean().clamp_min(1e-8) for x, y in zip(a, b)))


def target_gain(net: FeatureNet, stylized: Image.Image, target: Image.Image, photo: Image.Image) -> float:
    """How much of the way from the photo to the exact target ``stylized`` went: 0 = no closer than the photo, 1 = the target.

    Distances are between feature maps, position by position (so the picture must match
    the target where it matters, not only in texture statistics), relative to the photo's
    own distance to the target. A blur of the photo scores about 0.1 on the demo
    styles and the autoencoder's copy of the target 0.4-0.96 (see the evaluation's reference rows).
    """
    mine, theirs, original = (net.activations([image]) for image in (stylized, target, photo))
    return 1.0 - _feature_distance(mine, theirs) / max(_feature_distance(original, theirs), 1e-8)


def style_scores(
    stylized: Image.Image,
    style: str,
    references: Sequence[Image.Image],
    classifier=None,
    target: Image.Image | None = None,
    photo: Image.Image | None = None,
    reference_grams: list[torch.Tensor] | None = None,
) -> dict[str, float]:
    """Style consistency of ``stylized`` with ``style``.

    ``gram_distance`` to the reference set (lower is closer; ``reference_grams`` saves
    recomputing the set's mean Gram matrices); ``style_probability`` from
    ``classifier`` (a :class:`stylekit.judge.StyleClassifier`); for the demo styles, ``target_gram`` and ``target_ssim`` against
    ``target`` (the style filter applied to the same photo), and ``target_gain`` when the
    ``photo`` is given too; ``clip`` when CLIP weights are here.
    """
    net = classifier.net if classifier else feature_net()
    scores = {"gram_distance": gram_distance(net, stylized, references, reference_grams)}
    if classifier is not None:
        scores["style_probability"] = classifier.probability(stylized, style)
    if target is not None:
        scores["target_gram"] = gram_distance(net, stylized, [target])
        scores["target_ssim"] = ssim(target, stylized)
        if photo is not None:
            scores["target_gain"] = target_gain(net, stylized, target, photo)
    clip = extra_models().get("clip")
    if clip is not None:
        scores["clip"] = clip.text_similarity(stylized, f"a picture in {style.replace('_', ' ')} style")
    return scores


def evenness(strengths: Sequence[float], scores: Sequence[float]) -> float:
    """How evenly a score grows with strength: R^2 of a straight-line fit (1 = equal steps; near 0 = flat or erratic)."""
    x, y = np.asarray(strengths, dtype=float), np.asarray(scores, dtype=float)
    if len(x) < 3 or np.ptp(y) == 0:
        return 0.0
    slope, intercept = np.polyfit(x, y, 1)
    residual = ((y - (slope * x + intercept)) ** 2).sum()
    return float(max(0.0, 1.0 - residual / ((y - y.mean()) ** 2).sum()))


# ---------------------------------------------------------------------------
# Optional pretrained scorers: CLIP and DINO, only from local weights
# ---------------------------------------------------------------------------

CLIP_REPO = "openai/clip-vit-base-patch32"
DINO_REPO = "facebook/dinov2-small"


class _HubScorer:
    """A transformers vision model loaded from local safetensors only (``local_files_only``)."""

    def __init__(self, kind: str, source: str):
        from transformers import AutoImageProcessor, AutoModel, AutoProcessor  # imported only where local weights exist: slow to import

        self.kind, self.source = kind, source
        self.model = AutoModel.from_pretrained(source, local_files_only=True, use_safetensors=True).eval()
        self.processor = (AutoProcessor if kind == "clip" else AutoImageProcessor).from_pretrained(source, local_files_only=True)

    @torch.no_grad()
    def _embed(self, images: Sequence[Image.Image]) -> torch.Tensor:
        inputs = self.processor(images=[i.convert("RGB") for i in images], return_tensors="pt")
        if self.kind == "clip":
            output = self.model.get_image_features(**inputs)
            embedding = output if isinstance(output, torch.Tensor) else output.pooler_output
        else:
            embedding = self.model(**inputs).last_hidden_state[:, 0]
        return F.normalize(embedding, dim=-1)

    def similarity(self, a: Image.Image, b: Image.Image) -> float:
        pair = self._embed([a, b])
        return float(pair[0] @ pair[1])

    @torch.no_grad()
    def text_similarity(self, image: Image.Image, text: str) -> float:
        inputs = self.processor(text=[text], return_tensors="pt", padding=True)
        output = self.model.get_text_features(**inputs)
        text_embedding = F.normalize(output if isinstance(output, torch.Tensor) else output.pooler_output, dim=-1)
        return float(self._embed([image])[0] @ text_embedding[0])


EXTRA_SOURCES = (("clip", "STYLEKIT_CLIP", CLIP_REPO), ("dino", "STYLEKIT_DINO", DINO_REPO))
_EXTRAS: dict[str, _HubScorer] = {}


def _local_source(env: str, repo: str) -> str | None:
    if os.environ.get(env):
        return os.environ[env]
    config = try_to_load_from_cache(repo, "config.json")
    return repo if isinstance(config, str) else None


def extra_models() -> dict[str, _HubScorer]:
    """The optional scorers whose weights are on this machine: ``"clip"`` and ``"dino"`` (never downloaded).

    Set ``STYLEKIT_CLIP`` / ``STYLEKIT_DINO`` to a local model folder, or have
    ``openai/clip-vit-base-patch32`` / ``facebook/dinov2-small`` in the Hugging Face cache.
    """
    found = {}
    for kind, env, repo in EXTRA_SOURCES:
        source = _local_source(env, repo)
        if source is not None:
            if source not in _EXTRAS:
                _EXTRAS[source] = _HubScorer(kind, source)
            found[kind] = _EXTRAS[source]
    return found


def availability() -> dict[str, str]:
    """Which scores this machine can compute, and why not where it cannot (printed in reports)."""
    extras = extra_models()
    net = feature_net()
    status = {
        "ssim, psnr, edge_f1, gram_distance, style_probability": "available",
        "feature network": net.name
        + ("" if net.name == "vgg16" else " (no local VGG-16 weights: a seeded random-filter network measures texture instead)"),
        "lpips": "unavailable: needs the lpips package and torchvision AlexNet weights, which are pickle files stylekit does not load",
    }
    for kind, repo in (("clip", CLIP_REPO), ("dino", DINO_REPO)):
        status[kind] = f"available ({extras[kind].source})" if kind in extras else f"unavailable: no local weights ({repo} not cached)"
    return status


# ---------------------------------------------------------------------------
# Tables of results
# ---------------------------------------------------------------------------


def write_csv(path: Path, rows: Sequence[dict]) -> Path:
    """Write result rows as CSV, one column per key seen in any row."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with Path(path).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


def mean_by(rows: Sequence[dict], keys: Sequence[str]) -> list[dict]:
    """Average every numeric column of ``rows`` over groups of equal ``keys``, in first-seen order."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    averaged = []
    for group_key, members in groups.items():
        numeric = [k for k, v in members[0].items() if k not in keys and isinstance(v, (int, float)) and not isinstance(v, bool)]
        averaged.append({**dict(zip(keys, group_key)), **{k: float(np.mean([m[k] for m in members])) for k in numeric}})
    return averaged


def is_monotonic(values: Sequence[float], increasing: bool = True, tolerance: float = 0.0, min_change: float = 0.0) -> bool:
    """Whether ``values`` never step against the direction by more than ``tolerance``, and move at least ``min_change`` overall."""
    values = np.asarray(values, dtype=float)
    steps = np.diff(values) if increasing else -np.diff(values)
    overall = (values[-1] - values[0]) if increasing else (values[0] - values[-1])
    return bool(np.all(steps >= -tolerance) and overall >= min_change)
