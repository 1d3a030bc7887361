"""The style judge: a classifier that tells the demo styles from each other and from an unstyled photo.

It is a logistic regression on texture features (:func:`texture_features`:
convolutional statistics from :mod:`stylekit.metrics`' feature network plus
hand-made cues of colour, tone and edges), fitted on the style sets and on
photos. :class:`StyleReference` bundles it with each style's reference images;
:func:`judge_check` measures whether it can tell each style from none;
:func:`score` and :func:`strength_sweep` score stylizations against it.

    reference = StyleReference.demo(["anime", "watercolor"])
    scores = score(photo, stylized, "anime", reference, target=apply_style("anime", photo))
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter
from scipy import ndimage

from .checkpoints import load_checkpoint, save_checkpoint
from .data import IMAGE_SUFFIXES, demo_content, demo_fingerprint, ensure_demo_sets, open_image
from .metrics import FEATURE_SIZE, FeatureNet, as_array, content_scores, feature_net, mean_gram_matrices, style_scores
from .paths import profile_dir
from .profiles import get_profile
from .progress import progress_bar
from .tiny.synth import apply_style

__all__ = [
    "JUDGE_ON_PHOTO",
    "JUDGE_ON_TARGET",
    "StyleClassifier",
    "StyleReference",
    "image_statistics",
    "judge_check",
    "score",
    "strength_sweep",
    "texture_features",
]


def image_statistics(images: Sequence[Image.Image]) -> torch.Tensor:
    """Hand-made style cues per image: saturation, tone, edge strength, flatness and palette size.

    Quantiles of saturation, luminance, gradient magnitude and local variance, and the
    share of distinct colours: what tells flat cel shading, washes, graphite or paint
    from a photo, which random filters alone confuse.
    """
    rgb = np.stack([as_array(image, (FEATURE_SIZE, FEATURE_SIZE)) for image in images])  # all images at once: N x H x W x 3
    gray = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    saturation = rgb.max(-1) - rgb.min(-1)
    gy, gx = np.gradient(gray, axis=(1, 2))
    gradient = np.hypot(gx, gy)
    local_mean = ndimage.uniform_filter(gray, (1, 3, 3))
    local_var = ndimage.uniform_filter(gray**2, (1, 3, 3)) - local_mean**2
    levels = (rgb * 31).astype(np.uint8).astype(np.int32)  # 32 levels per channel: one 15-bit code per colour
    codes = np.sort((levels[..., 0] << 10 | levels[..., 1] << 5 | levels[..., 2]).reshape(len(rgb), -1), axis=1)
    palette = (1 + (np.diff(codes, axis=1) != 0).sum(1)) / gray[0].size
    spread = [
        np.quantile(v.reshape(len(rgb), -1), (0.1, 0.5, 0.9), axis=1).T
        for v in (saturation, gray, gradient, np.sqrt(np.clip(local_var, 0, None)))
    ]
    return torch.from_numpy(np.concatenate(spread + [palette[:, None]], axis=1)).float()


def texture_features(net: FeatureNet, images: Sequence[Image.Image]) -> torch.Tensor:
    """Mean and standard deviation of each channel at each tapped layer, colour statistics and :func:`image_statistics`: one vector per image."""
    parts = []
    for act in net.activations(images):
        parts += [act.mean((2, 3)), act.std((2, 3))]
    pixels = net.tensor(images)
    parts += [pixels.mean((2, 3)), pixels.std((2, 3)), image_statistics(images)]
    return torch.cat(parts, dim=1)


@dataclass
class StyleClassifier:
    """Multinomial logistic regression on texture features, fitted on labelled images.

    ``classes`` usually holds the trained styles plus ``"photo"`` (unstyled images),
    so a stylization that did not take reads as a photo.
    """

    net: FeatureNet
    classes: list[str]
    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    scale: torch.Tensor
    held_out_accuracy: float

    @classmethod
    def fit(cls, images_by_class: dict[str, Sequence[Image.Image]], net: FeatureNet | None = None, seed: int = 0) -> StyleClassifier:
        """Fit on ``{class: images}``; a quarter of each class is held out to measure accuracy, then all are used."""
        net = net or feature_net()
        classes = list(images_by_class)
        if len(classes) < 2:
            raise ValueError("a style classifier needs at least two classes")
        features = {name: texture_features(net, images) for name, images in images_by_class.items()}
        generator = torch.Generator().manual_seed(seed)
        train, test = [], []
        for label, name in enumerate(classes):
            order = torch.randperm(len(features[name]), generator=generator)
            cut = max(1, len(order) // 4)
            test += [(features[name][i], label) for i in order[:cut]]
            train += [(features[name][i], label) for i in order[cut:]]
        probe = cls._train(net, classes, train)
        accuracy = float(np.mean([int(probe.predict_features(x[None]).argmax()) == y for x, y in test]))
        full = cls._train(net, classes, train + test)
        full.held_out_accuracy = accuracy
        return full

    @classmethod
    def _train(cls, net, classes, pairs) -> StyleClassifier:
        x = torch.stack([p[0] for p in pairs])
        y = torch.tensor([p[1] for p in pairs])
        mean, scale = x.mean(0), x.std(0).clamp_min(1e-6)
        z = (x - mean) / scale
        weight = torch.zeros(z.shape[1], len(classes), requires_grad=True)
        bias = torch.zeros(len(classes), requires_grad=True)
        optimizer = torch.optim.LBFGS([weight, bias], max_iter=200, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            loss = F.cross_entropy(z @ weight + bias, y) + 1e-2 * weight.pow(2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        return cls(net, classes, weight.detach(), bias.detach(), mean, scale, float("nan"))

    def save(self, path: Path, probe: torch.Tensor) -> None:
        """Write the fitted weights and ``probe`` (the features of a few images, checked on :meth:`load`) to ``path``."""
        tensors = {"weight": self.weight, "bias": self.bias, "mean": self.mean, "scale": self.scale, "probe": probe}
        state = {"classes": self.classes, "held_out_accuracy": self.held_out_accuracy, "net": self.net.name}
        save_checkpoint(path, tensors, state)

    @classmethod
    def load(cls, path: Path, net: FeatureNet, probe: torch.Tensor) -> StyleClassifier | None:
        """The classifier :meth:`save` wrote to ``path``, or None when there is none or ``net`` no longer gives its probe
        features (another network or feature code: it must be fitted again)."""
        if not path.is_file():
            return None
        tensors, state = load_checkpoint(path)
        if (
            state["net"] != net.name
            or tensors["probe"].shape != probe.shape
            or not torch.allclose(tensors["probe"], probe, rtol=1e-4, atol=1e-5)
        ):
            return None
        return cls(net, state["classes"], tensors["weight"], tensors["bias"], tensors["mean"], tensors["scale"], state["held_out_accuracy"])

    def predict_features(self, features: torch.Tensor) -> torch.Tensor:
        return torch.softmax(((features - self.mean) / self.scale) @ self.weight + self.bias, dim=1)

    def probabilities(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Class probabilities, one row per image, columns in ``classes`` order."""
        return self.predict_features(texture_features(self.net, images)).numpy()

    def probability(self, image: Image.Image, style: str) -> float:
        """Probability that ``image`` is in ``style``."""
        return float(self.probabilities([image])[0, self.classes.index(style)])

    def accuracy(self, images: Sequence[Image.Image], labels: Sequence[str]) -> float:
        predicted = self.probabilities(images).argmax(1)
        return float(np.mean([self.classes[p] == label for p, label in zip(predicted, labels)]))


@dataclass
class StyleReference:
    """What style scores compare against: each style's reference images, unstyled photos, and a classifier over them."""

    images: dict[str, list[Image.Image]]
    classifier: StyleClassifier
    _mean_grams: dict[str, list[torch.Tensor]] = field(default_factory=dict, repr=False)

    def mean_grams(self, style: str) -> list[torch.Tensor]:
        """The mean Gram matrices of ``style``'s reference images (computed once: hundreds of images)."""
        if style not in self._mean_grams:
            self._mean_grams[style] = mean_gram_matrices(self.classifier.net, self.images[style])
        return self._mean_grams[style]

    @classmethod
    def from_folders(cls, folders: dict[str, Path], photos: Sequence[Image.Image], net: FeatureNet | None = None) -> StyleReference:
        """Reference sets from dataset folders (``{style: folder}``); the classifier learns them and ``photos`` as ``"photo"``."""
        images = _read_folders(folders)
        return cls(images, StyleClassifier.fit({**images, "photo": list(photos)}, net))

    @classmethod
    def demo(cls, styles: Sequence[str], profile: str = "tiny", seed: int = 0, classifier_images: int = 300) -> StyleReference:
        """The demo style sets (built if missing) as references; the classifier learns from more of the same.

        The classifier sees ``classifier_images`` demo content images per class (mostly crops
        of the training photos), through each style filter and unstyled (``"photo"``): more
        than the images of each training set, which it would otherwise overfit. Softened
        copies of the content count as ``"photo"`` too: a blur is not a style. Held-out
        photos are never used; :meth:`check` measures the judge on them.
        """
        images = _read_folders(ensure_demo_sets(list(styles), profile, seed))
        resolution = get_profile(profile).resolution
        folder = profile_dir(profile) / JUDGE_FOLDER
        return cls(images, _demo_classifier(tuple(styles), resolution, seed, classifier_images, folder))


JUDGE_FOLDER = "judge"  # in outputs/<profile>: the fitted demo judges, one file per key
PROBE_IMAGES = 4  # content images whose features a kept judge must reproduce
_FITTED: dict[str, StyleClassifier] = {}  # this process's demo judges, by key


def _demo_classifier(styles: tuple[str, ...], resolution: int, seed: int, classifier_images: int, folder: Path) -> StyleClassifier:
    """The demo judge (see :meth:`StyleReference.demo`), fitted once and kept in ``folder``: fitting takes half a minute
    (each notebook that scores styles would pay it), reading it back a moment.

    It depends only on the shipped photos, the style filters, the feature network and these arguments; the file's name
    is a key of all of them and of the fitting code, and its probe features must match the network's now (else it is
    fitted and written again). A process keeps the judges it has by key, whichever outputs folder is in use.
    """
    net = feature_net()
    content = [image for image, _ in demo_content(classifier_images, resolution, seed + 1)]
    probe = texture_features(net, content[:PROBE_IMAGES])
    key = _demo_key(styles, resolution, seed, classifier_images, net.name)
    path = folder / f"{key}.safetensors"
    kept = StyleClassifier.load(path, net, probe)
    classifier = kept or _FITTED.get(key) or _fit_demo(styles, content, net)
    if kept is None:  # none in this folder yet, or one that no longer holds: write this one
        classifier.save(path, probe)
    _FITTED[key] = classifier
    return classifier


def _fit_demo(styles: tuple[str, ...], content: list[Image.Image], net: FeatureNet) -> StyleClassifier:
    training = {style: [apply_style(style, image) for image in content] for style in styles}
    softened = [image.filter(ImageFilter.GaussianBlur(BLUR_RADII[i % len(BLUR_RADII)])) for i, image in enumerate(content)]
    return StyleClassifier.fit({**training, "photo": content + softened}, net)


def _demo_key(styles: tuple[str, ...], resolution: int, seed: int, classifier_images: int, net_name: str) -> str:
    """What the demo judge depends on: its arguments, each filter's output on a few content images, and its fitting code."""
    digest = hashlib.sha256(f"{styles}{resolution}{seed}{classifier_images}{net_name}{BLUR_RADII}".encode())
    for style in styles:
        digest.update(demo_fingerprint(style, resolution, seed + 1, classifier_images).encode())
    for code in (StyleClassifier.fit, StyleClassifier._train, _fit_demo, texture_features, image_statistics):
        digest.update(inspect.getsource(code).encode())
    return digest.hexdigest()[:16]


BLUR_RADII = (0.5, 0.8, 1.1)  # the softened copies of photos the demo judge learns as "photo"
JUDGE_ON_TARGET = 0.6  # a valid judge gives the exact target at least this probability of its style...
JUDGE_ON_PHOTO = 0.2  # ...and the untouched photo at most this, on average over the photos


def judge_check(classifier: StyleClassifier, photos: Sequence[Image.Image], styles: Sequence[str]) -> list[dict]:
    """Can the style judge tell each style from no style? Its probability on the exact targets and on the untouched photos.

    A style whose targets score below :data:`JUDGE_ON_TARGET`, or whose photos score above
    :data:`JUDGE_ON_PHOTO`, gets ``valid=False``: its style scores mean little.
    """
    rows = []
    for style in styles:
        on_target = float(np.mean([classifier.probability(apply_style(style, photo), style) for photo in photos]))
        on_photo = float(np.mean([classifier.probability(photo, style) for photo in photos]))
        rows.append(
            {
                "style": style,
                "on_target": on_target,
                "on_photo": on_photo,
                "valid": on_target >= JUDGE_ON_TARGET and on_photo <= JUDGE_ON_PHOTO,
            }
        )
    return rows


def _read_folders(folders: dict[str, Path]) -> dict[str, list[Image.Image]]:
    images = {
        style: [open_image(p) for p in sorted(Path(folder).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
        for style, folder in folders.items()
    }
    empty = [style for style, found in images.items() if not found]
    if empty:
        raise ValueError(f"no reference images for {', '.join(empty)} in {', '.join(str(folders[s]) for s in empty)}")
    return images


def score(
    photo: Image.Image, stylized: Image.Image, style: str, reference: StyleReference, target: Image.Image | None = None
) -> dict[str, float]:
    """Content scores against ``photo`` and style scores against ``reference`` (and ``target`` when given), in one dict."""
    scores = content_scores(photo, stylized)
    images, classifier = reference.images[style], reference.classifier
    scores.update(style_scores(stylized, style, images, classifier, target, photo, reference.mean_grams(style)))
    return scores


def strength_sweep(
    stylizer,
    photos: dict[str, Image.Image],
    style: str,
    values: Sequence[float],
    reference: StyleReference,
    axis: str = "style_strength",
    targets: dict[str, Image.Image] | None = None,
    adapter: str | None = None,
    progress: bool = True,
    **settings,
) -> tuple[list[dict], dict[tuple[str, float], Image.Image]]:
    """Stylize each photo at each value of ``axis`` (``"style_strength"`` or ``"content_strength"``) and score it against ``style``.

    ``adapter`` is the stylizer's name for the adapter when it is not ``style`` (e.g. a kind in a comparison).
    Returns one row per (photo, value) with every score, and the images by (photo name, value).
    ``settings`` go to :meth:`Stylizer.stylize` (the other strength, seed...).
    """
    if axis not in ("style_strength", "content_strength"):
        raise ValueError(f"axis must be 'style_strength' or 'content_strength', not {axis!r}")
    rows, images = [], {}
    jobs = [(name, value) for name in photos for value in values]
    for name, value in progress_bar(jobs, desc=f"sweeping {style} over {axis.replace('_', ' ')}", disable=not progress, leave=False):
        stylized, _ = stylizer.stylize(photos[name], adapter or style, **{**settings, axis: value})
        images[(name, value)] = stylized
        target = targets.get(name) if targets else None
        rows.append({"style": style, "photo": name, axis: value, **score(photos[name], stylized, style, reference, target)})
    return rows, images
