"""The evaluation run: every trained style and adapter kind on the held-out photos, against the base model.

    evaluation = evaluate(EvalConfig())
    evaluation.table()             # one row per system: style and content scores, and the verdict
    evaluation.bar_table()         # does each style meet the bar?
    report.write_report(evaluation)  # figures and evaluation.md: see stylekit.report

A *system* is one way of stylizing for a style: ``<style>/base`` is the base
model with the same prompt (trigger words included) and no adapter, the
baseline; ``<style>/lora`` is the style's adapter from notebook 02; and
``<style>/<kind>`` each adapter kind trained by the comparison (notebook 03)
when its results are there. Every table also carries reference rows that set
the scale: the untouched photo, the photo blurred, the autoencoder's copy of the
photo, the exact target (the style filter applied to the photo), and the
autoencoder's copy of the exact target: every stylization leaves through the
model's decoder, so it shows whether the judge still reads the style there (no
ceiling: an adapter may score above it, as it is not that copy).

The bar a style must clear, relative to what the exact target itself keeps: on
the held-out photos at the default settings, the judge gives the stylization at
least 0.6 and the untouched photo at most 0.2; content SSIM is at least 0.8 times
the exact target's; the target gain is at least 0.3 and above the blurred
photo's; and in text-to-image the adapter at strength 1 beats strength 0 by at
least 0.5 on the judge.

``EvalConfig(photos="unseen")`` scores the same on photos that nothing in the project
was trained on: the corpus photos that pretraining leaves out (their Debian packages
must be installed, see :mod:`stylekit.tiny.corpus`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageFilter

from .data import center_square, load_photos
from .diffusion import read_run_config, style_prompt
from .tiny.corpus import load_corpus
from .judge import StyleReference, judge_check, score, strength_sweep
from .metrics import availability, is_monotonic, mean_by
from .models import as_task
from .paths import profile_dir
from .plots import Table
from .profiles import get_profile
from .stylize import Stylizer, find_styles
from .tiny.synth import STYLES, apply_style
from .launcher import ensure_trained
from .progress import progress_bar

__all__ = ["EvalConfig", "Evaluation", "System", "evaluate"]

STYLE_SCORE = "style_probability"  # the headline style-consistency score (higher is better)
CONTENT_SCORE = "ssim"  # the headline content score (higher keeps more of the photo)
MARGIN = 0.01  # an adapter "beats" the baseline when its style probability is higher by more than this
GRAM_TIE = 0.01  # Gram distances within this share of the baseline's are a tie
SHOWN = ("style_probability", "target_gain", "gram_distance", "target_ssim", "ssim", "psnr", "edge_f1", "clip", "dino")
# reference rows: what no method, a blur, the autoencoder and the truth score, and the truth through the autoencoder
REFERENCES = ("photo", "blurred", "autoencoder", "target", "autoencoded_target")
BLUR_SIGMA = 0.7  # the blurred reference: a Gaussian blur that raises SSIM to most demo targets
BAR = {"judge": 0.6, "judge_on_photo": 0.2, "ssim_of_target": 0.8, "target_gain": 0.3, "txt2img_gain": 0.5}
TXT2IMG_PROMPTS = ("a photo of a cat", "a red house and two trees on green hills under a blue sky")
PHOTO_SETS = {"held_out": "the held-out photos", "unseen": "the corpus's unseen photos"}


def photo_margin(judge: float, ssim: float, target_ssim: float, gain: float, blurred_gain: float) -> float:
    """How far a stylized photo clears the photo side of :data:`BAR`, as the narrowest of its margins (below 0: missed):
    the judge, the SSIM kept as a share of the exact target's, and the target gain against the bar's and the blurred photo's."""
    return min(judge - BAR["judge"], ssim / target_ssim - BAR["ssim_of_target"], gain - max(BAR["target_gain"], blurred_gain))


@dataclass
class EvalConfig:
    """What to evaluate. ``None`` strengths mean the profile's defaults."""

    profile: str = "tiny"
    styles: tuple[str, ...] = tuple(STYLES)
    kinds: bool = True  # also the adapter kinds of the comparison, where it has run (at the defaults: notebook 03 sweeps them)
    style_strengths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25)
    content_strengths: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)
    content_strength: float | None = None
    seed: int = 0
    photos: str = "held_out"  # a key of PHOTO_SETS


@dataclass(frozen=True)
class System:
    """One way of stylizing for a style: which adapter folder and name, or none (the baseline)."""

    style: str
    kind: str  # "base", "lora", or an adapter kind of the comparison
    styles_dir: Path
    adapter: str
    swept: bool = True  # the strength sweeps; a comparison kind is not (notebook 03 sweeps its multiplier already)

    @property
    def name(self) -> str:
        return f"{self.style}/{self.kind}"


@dataclass
class Evaluation:
    """Scores per system and photo, sweeps, example images, and what the measures could use."""

    config: EvalConfig
    scores: list[dict]
    sweeps: list[dict]
    images: dict[tuple[str, str], Image.Image] = field(repr=False)  # (system name, photo) -> image at default settings
    photos: dict[str, Image.Image] = field(repr=False)
    targets: dict[str, dict[str, Image.Image]] = field(repr=False)  # style -> photo -> the style filter applied to it
    classifier_accuracy: float
    measures: dict[str, str]
    judge: list[dict] = field(default_factory=list)  # judge_check rows: can the judge tell each style from no style?
    txt2img: dict[str, tuple[float, float]] = field(default_factory=dict)  # style -> judge at adapter strength 0 and 1

    def summary(self) -> list[dict]:
        """Mean scores per system, with the baseline's style score and whether the system beats it."""
        rows = mean_by(self.scores, ["system", "style", "kind"])
        baseline = {r["style"]: r[STYLE_SCORE] for r in rows if r["kind"] == "base"}
        for row in rows:
            fixed = row["kind"] == "base" or row["kind"] in REFERENCES
            row["beats_baseline"] = None if fixed else row[STYLE_SCORE] > baseline[row["style"]] + MARGIN
        return rows

    def table(self) -> Table:
        """The summary as a table: higher is better for every column but the Gram distance."""
        rows = self.summary()
        shown = [k for k in SHOWN if k in rows[0]]
        verdict = {None: "baseline", True: "yes", False: "no"}
        body = [
            [r["system"], *[f"{r[k]:.3f}" for k in shown], "reference" if r["kind"] in REFERENCES else verdict[r["beats_baseline"]]]
            for r in rows
        ]
        return Table(["system", *shown, "beats baseline on style"], body)

    def monotonic(self, tolerance: float = 0.01) -> Table:
        """Per adapter: does the style score rise, and the content score fall, as style strength rises?

        "Rises" means no step down by more than ``tolerance`` and more than ``tolerance`` up overall (flat is not rising).
        """
        body = []
        for system in dict.fromkeys(r["system"] for r in self.sweeps if r["axis"] == "style_strength"):
            points = mean_by([r for r in self.sweeps if r["system"] == system and r["axis"] == "style_strength"], ["value"])
            style = [p[STYLE_SCORE] for p in points]
            content = [p[CONTENT_SCORE] for p in points]
            body.append(
                [
                    system,
                    " ".join(f"{v:.2f}" for v in style),
                    is_monotonic(style, True, tolerance, min_change=tolerance),
                    " ".join(f"{v:.2f}" for v in content),
                    is_monotonic(content, False, tolerance, min_change=tolerance),
                ]
            )
        values = " ".join(f"{v:g}" for v in self.config.style_strengths)
        return Table(
            ["system", f"style prob. at {values}", "rises", f"content SSIM at {values}", "falls"],
            body,
        )

    def study_items(self, kinds: tuple[str, ...] = ("base", "lora")) -> list[tuple[str, str, dict[str, Image.Image]]]:
        """(photo, style, {kind: image}) for a user study (see :func:`stylekit.study.make_study`), from the images made here."""
        items = []
        for style in self.config.styles:
            for photo in self.photos:
                images = {kind: self.images[(f"{style}/{kind}", photo)] for kind in kinds if (f"{style}/{kind}", photo) in self.images}
                if len(images) >= 2:
                    items.append((photo, style, images))
        return items

    def verdicts(self) -> list[str]:
        """One plain sentence per adapter: does it beat the base model on style consistency, and at what content cost?"""
        rows = self.summary()
        base = {r["style"]: r for r in rows if r["kind"] == "base"}
        lines = []
        for r in rows:
            if r["beats_baseline"] is None:
                continue
            b = base[r["style"]]
            word = "beats" if r["beats_baseline"] else "does NOT beat"
            line = (
                f"{r['system']} {word} the base model on style consistency: style probability {r[STYLE_SCORE]:.3f} vs {b[STYLE_SCORE]:.3f} "
                f"(Gram distance {r['gram_distance']:.3f} vs {b['gram_distance']:.3f}); content SSIM {r[CONTENT_SCORE]:.3f} vs {b[CONTENT_SCORE]:.3f}."
            )
            if max(r[STYLE_SCORE], b[STYLE_SCORE]) < MARGIN:
                line += " The classifier sees this style in neither."
            line += _disagreements(r, b)
            lines.append(line)
        return lines

    def unbeaten_sentence(self) -> str:
        """Which styles no adapter improves on the baseline, in one sentence."""
        rows = self.summary()
        unbeaten = [style for style in self.config.styles if not any(r["beats_baseline"] for r in rows if r["style"] == style)]
        return (
            f"No adapter beats the base model for: {', '.join(unbeaten)}."
            if unbeaten
            else "Every style has an adapter that beats the base model."
        )

    def bar(self) -> list[dict]:
        """Per style: the style's adapter at the default settings against the bar (see the module docstring)."""
        rows = {r["system"]: r for r in self.summary()}
        judge = {r["style"]: r for r in self.judge}
        found = []
        for style in self.config.styles:
            adapter = next((r for r in rows.values() if r["style"] == style and r["beats_baseline"] is not None), None)
            if adapter is None:
                continue
            photo, blurred, target = rows[f"{style}/photo"], rows[f"{style}/blurred"], rows[f"{style}/target"]
            autoencoded_target = rows[f"{style}/autoencoded_target"]
            off, on = self.txt2img.get(style, (float("nan"), float("nan")))
            row = {
                "style": style,
                "judge": adapter[STYLE_SCORE],
                "judge_on_photo": photo[STYLE_SCORE],
                "judge_on_autoencoded_target": autoencoded_target[STYLE_SCORE],
                "ssim": adapter[CONTENT_SCORE],
                "target_ssim": target[CONTENT_SCORE],
                "target_gain": adapter["target_gain"],
                "blurred_gain": blurred["target_gain"],
                "txt2img_gain": on - off,
                "judge_valid": judge[style]["valid"] if style in judge else None,
            }
            row["meets"] = (
                photo_margin(row["judge"], row["ssim"], row["target_ssim"], row["target_gain"], row["blurred_gain"]) >= 0
                and row["target_gain"] > row["blurred_gain"]
                and row["judge_on_photo"] <= BAR["judge_on_photo"]
                and row["txt2img_gain"] >= BAR["txt2img_gain"]
            )
            found.append(row)
        return found

    def bar_table(self) -> Table:
        body = [
            [
                r["style"],
                f"{r['judge']:.2f} (autoencoded target {r['judge_on_autoencoded_target']:.2f})",
                f"{r['judge_on_photo']:.2f}",
                f"{r['ssim']:.2f} (target {r['target_ssim']:.2f})",
                f"{r['target_gain']:.2f} (blur {r['blurred_gain']:.2f})",
                f"{r['txt2img_gain']:+.2f}",
                {True: "valid", False: "INVALID", None: "-"}[r["judge_valid"]],
                "yes" if r["meets"] else "no",
            ]
            for r in self.bar()
        ]
        return Table(
            [
                "style",
                f"judge (>= {BAR['judge']}; on the autoencoded target)",
                f"judge on photo (<= {BAR['judge_on_photo']})",
                f"content SSIM (>= {BAR['ssim_of_target']} x the exact target's)",
                f"target gain (>= {BAR['target_gain']}, > blur)",
                f"text-to-image gain (>= {BAR['txt2img_gain']})",
                "judge",
                "meets the bar",
            ],
            body,
        )

    def bar_sentence(self) -> str:
        rows = self.bar()
        missed = [r["style"] for r in rows if not r["meets"]]
        beyond = [
            f"{r['style']} ({r['judge_on_autoencoded_target']:.2f})"
            for r in rows
            if not r["meets"] and r["judge_on_autoencoded_target"] < BAR["judge"]
        ]
        met = len(rows) - len(missed)
        return (
            f"{met} of {len(rows)} styles meet the bar (the goal: at least 4 of 5)."
            + (f" Not met: {', '.join(missed)}." if missed else "")
            + (
                f" The judge scores even the autoencoder's copy of the exact target below {BAR['judge']} for {', '.join(beyond)}: "
                "it hardly reads these styles once they pass the decoder, so its verdict on their adapters is weak evidence either way."
                if beyond
                else ""
            )
        )

    def judge_table(self) -> Table:
        body = [[r["style"], f"{r['on_target']:.2f}", f"{r['on_photo']:.2f}", "valid" if r["valid"] else "INVALID"] for r in self.judge]
        return Table(["style", "judge on the exact target", "judge on the untouched photo", "judge"], body)


def _disagreements(adapter: dict, base: dict) -> str:
    """What the other style measures say where they disagree with the judge's verdict (empty when they agree)."""
    said = []
    if adapter["beats_baseline"] and adapter[STYLE_SCORE] < 0.5:
        said.append("The judge still finds the style unlikely in both (below 0.5).")
    gap = (base["gram_distance"] - adapter["gram_distance"]) / base["gram_distance"]  # > 0: the adapter is closer
    if abs(gap) < GRAM_TIE:
        said.append(f"The Gram distance cannot tell the two apart (within {GRAM_TIE:.0%}).")
    elif adapter["beats_baseline"] != (gap > 0):
        closer = "closer to" if gap > 0 else "no closer to"
        said.append(f"The Gram distance disagrees: it finds the adapter {closer} the style set than the base model.")
    if adapter["beats_baseline"] and adapter.get("target_gain", 0.0) < 0:
        said.append(f"It moved the photo away from the exact target (target gain {adapter['target_gain']:+.2f}).")
    return "".join(" " + sentence for sentence in said)


def find_systems(config: EvalConfig, loras: dict[str, Path]) -> list[System]:
    """The baseline and the style adapter for each style, plus the comparison's kinds where they were trained."""
    systems = []
    for style in config.styles:
        folder = loras[style].parent
        kind = read_run_config(loras[style]).get("kind", "lora")
        systems += [System(style, "base", folder, style), System(style, kind, folder, style)]
        if config.kinds:
            comparison = profile_dir(config.profile) / "comparison" / style
            systems += [System(style, k, comparison, k, swept=False) for k in find_styles(comparison) if k != kind]
    return systems


def evaluate(config: EvalConfig | None = None, progress: bool = True) -> Evaluation:
    """Score every system on the held-out photos, sweep both strengths for each style's adapter, and keep example images."""
    config = config or EvalConfig()
    resolution = get_profile(config.profile).resolution
    reference = StyleReference.demo(list(STYLES), config.profile, config.seed)
    loras = ensure_trained(list(config.styles), config.profile, config.seed)
    photos = evaluation_photos(config.photos, resolution)
    targets = {style: {name: apply_style(style, photo) for name, photo in photos.items()} for style in config.styles}
    systems = find_systems(config, loras)
    stylizers = {folder: Stylizer(config.profile, styles_dir=folder) for folder in dict.fromkeys(s.styles_dir for s in systems)}
    scores, sweeps, images = [], [], {}
    for system in progress_bar(systems, desc="evaluating", disable=not progress):
        stylizer = stylizers[system.styles_dir]
        strength = 0.0 if system.kind == "base" else 1.0
        for name, photo in photos.items():
            image, _ = stylizer.stylize(
                photo, system.adapter, style_strength=strength, content_strength=config.content_strength, seed=config.seed
            )
            images[(system.name, name)] = image
            scored = score(photo, image, system.style, reference, targets[system.style][name])
            scores.append({"system": system.name, "style": system.style, "kind": system.kind, "photo": name, **scored})
        if system.kind != "base" and system.swept:
            sweeps += _sweeps(config, stylizer, system, photos, targets[system.style], reference)
    any_stylizer = next(iter(stylizers.values()))
    for style in config.styles:
        for name, photo in photos.items():
            for kind, image in reference_images(any_stylizer, photo, targets[style][name]).items():
                images[(f"{style}/{kind}", name)] = image
                scored = score(photo, image, style, reference, targets[style][name])
                scores.append({"system": f"{style}/{kind}", "style": style, "kind": kind, "photo": name, **scored})
    judge = judge_check(reference.classifier, list(photos.values()), config.styles)
    text = {style: txt2img_judge(stylizers[loras[style].parent], style, reference, config.seed) for style in config.styles}
    return Evaluation(config, scores, sweeps, images, photos, targets, reference.classifier.held_out_accuracy, availability(), judge, text)


def evaluation_photos(which: str, resolution: int) -> dict[str, Image.Image]:
    """The photos an evaluation scores, by short name: ``"held_out"`` (shipped) or ``"unseen"`` (the corpus's)."""
    if which == "held_out":
        return {p.file_name.rsplit(".", 1)[0]: center_square(p.image, resolution) for p in load_photos(split="held_out")}
    if which == "unseen":
        return {entry.name: center_square(entry.image, resolution) for entry in load_corpus("unseen")}
    raise ValueError(f"unknown photo set {which!r}: use one of {sorted(PHOTO_SETS)}")


def reference_images(stylizer: Stylizer, photo: Image.Image, target: Image.Image) -> dict[str, Image.Image]:
    """The reference rows' images (:data:`REFERENCES`): the untouched photo, the photo blurred, the autoencoder's copy,
    the exact target and the autoencoder's copy of the target."""
    return {
        "photo": photo,
        "blurred": photo.filter(ImageFilter.GaussianBlur(BLUR_SIGMA)),
        "autoencoder": stylizer.autoencode(photo),
        "target": target,
        "autoencoded_target": stylizer.autoencode(target),
    }


def txt2img_judge(stylizer: Stylizer, style: str, reference: StyleReference, seed: int = 0) -> tuple[float, float]:
    """The judge's mean probability of ``style`` in text-to-image with its trigger, adapter at strength 0 and at 1."""
    import torch

    defaults = stylizer.profile.inference
    pipe = as_task(stylizer.pipe, "txt2img")
    means = []
    for strength in (0.0, 1.0):
        stylizer.activate({style: 1.0}, strength)
        images = [
            pipe(
                style_prompt(stylizer.trigger(style), prompt),
                num_inference_steps=defaults.steps,
                guidance_scale=defaults.guidance,
                generator=torch.Generator().manual_seed(seed + i),
            ).images[0]
            for prompt in TXT2IMG_PROMPTS
            for i in range(2)
        ]
        means.append(float(reference.classifier.probabilities(images)[:, reference.classifier.classes.index(style)].mean()))
    return means[0], means[1]


def _sweeps(config: EvalConfig, stylizer: Stylizer, system: System, photos, targets, reference) -> list[dict]:
    rows = []
    for axis, values, fixed in (
        ("style_strength", config.style_strengths, {"content_strength": config.content_strength}),
        ("content_strength", config.content_strengths, {"style_strength": 1.0}),
    ):
        found, _ = strength_sweep(
            stylizer,
            photos,
            system.style,
            values,
            reference,
            axis,
            targets,
            adapter=system.adapter,
            progress=False,
            seed=config.seed,
            **fixed,
        )
        rows += [{"system": system.name, "kind": system.kind, "axis": axis, "value": r.pop(axis), **r} for r in found]
    return rows
