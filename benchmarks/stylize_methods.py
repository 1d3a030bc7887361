"""Which stylize method and content strength to use by default: measured against the evaluation's bar.

    python benchmarks/stylize_methods.py

For each demo style (trained with the tiny profile's defaults if missing), each method (img2img, inversion) and
content strengths 0.5-0.85, on the held-out photos and on the corpus's unseen photos: the judge's probability of the
style, content SSIM to the photo, the target gain and the seconds per image, averaged per photo set. A style meets the
photo side of the bar (``stylekit.evaluate.BAR``; text-to-image does not depend on these settings) when its judge
is at least 0.6, its SSIM at least 0.8 x the exact target's, and its target gain at least 0.3 and above the blurred
photo's. The profile's default is the setting under which the most styles meet it on both photo sets, then the
widest margin by which the narrowest of their criteria clears it (a default has to hold on photos it was not chosen
on). Prints the table and appends it to ``RESULTS.md``.
"""

from __future__ import annotations

import time
from datetime import date

import numpy as np
from common import machine, publish

CONTENT_STRENGTHS = (0.5, 0.6, 0.7, 0.75, 0.85)
PHOTO_SETS = ("held_out", "unseen")


def references(photos, targets, classifier_net) -> tuple[float, float]:
    """The exact targets' mean SSIM to their photos and the blurred photos' mean target gain: the bar's yardsticks."""
    from PIL import ImageFilter

    from stylekit.evaluate import BLUR_SIGMA
    from stylekit.metrics import ssim, target_gain

    kept = [ssim(photo, target) for photo, target in zip(photos, targets)]
    blur = [target_gain(classifier_net, p.filter(ImageFilter.GaussianBlur(BLUR_SIGMA)), t, p) for p, t in zip(photos, targets)]
    return float(np.mean(kept)), float(np.mean(blur))


def measure() -> tuple[dict, dict]:
    """(photo set, method, content) -> one (judge, ssim, target gain, seconds) row per style; and (photo set, style) ->
    the references."""
    from stylekit.evaluate import evaluation_photos
    from stylekit.judge import StyleReference
    from stylekit.metrics import ssim, target_gain
    from stylekit.stylize import METHODS, Stylizer
    from stylekit.tiny.synth import STYLES, apply_style
    from stylekit.launcher import ensure_trained

    ensure_trained(list(STYLES), "tiny")
    reference = StyleReference.demo(list(STYLES))
    stylizer = Stylizer("tiny")
    rows = {(s, m, c): [] for s in PHOTO_SETS for m in METHODS for c in CONTENT_STRENGTHS}
    yardsticks = {}
    for photo_set in PHOTO_SETS:
        photos = list(evaluation_photos(photo_set, stylizer.profile.resolution).values())
        for style in STYLES:
            targets = [apply_style(style, photo) for photo in photos]
            yardsticks[(photo_set, style)] = references(photos, targets, reference.classifier.net)
            for method in METHODS:
                for content in CONTENT_STRENGTHS:
                    scores = []
                    for photo, target in zip(photos, targets):
                        start = time.perf_counter()
                        image, _ = stylizer.stylize(photo, style, content_strength=content, method=method)
                        seconds = time.perf_counter() - start
                        judge = reference.classifier.probability(image, style)
                        gain = target_gain(reference.classifier.net, image, target, photo)
                        scores.append((judge, ssim(photo, image), gain, seconds))
                    rows[(photo_set, method, content)].append(tuple(np.mean(scores, axis=0)))
    return rows, yardsticks


def slack(row: tuple, yardstick: tuple[float, float]) -> float:
    """How far the row clears the photo side of the bar (:func:`stylekit.evaluate.photo_margin`; negative: missed)."""
    from stylekit.evaluate import photo_margin

    judge, kept, gain, _ = row
    target_ssim, blurred_gain = yardstick
    return photo_margin(judge, kept, target_ssim, gain, blurred_gain)


def main() -> None:
    from stylekit.stylize import METHODS
    from stylekit.tiny.synth import STYLES

    rows, yardsticks = measure()
    slacks = {key: [slack(row, yardsticks[(key[0], style)]) for row, style in zip(rows[key], STYLES)] for key in rows}
    met = {key: [margin > 0 for margin in margins] for key, margins in slacks.items()}
    settings = [(m, c) for m in METHODS for c in CONTENT_STRENGTHS]

    def rank(setting) -> tuple[int, float]:
        """Styles that meet the bar on both photo sets, and the narrowest margin among them (a default must hold on new photos)."""
        both = [i for i in range(len(STYLES)) if all(met[(s, *setting)][i] for s in PHOTO_SETS)]
        return len(both), min((slacks[(s, *setting)][i] for s in PHOTO_SETS for i in both), default=0.0)

    lines = [
        f"### Stylize methods against the bar, tiny profile ({date.today()}, {machine()})",
        "",
        "Per style: judge probability / content SSIM / target gain, averaged over the photo set; a tick where the style",
        "meets the photo side of the bar (judge >= 0.6, SSIM >= 0.8 x the target's, gain >= 0.3 and above the blur's).",
        "",
        "| photos | method | content | " + " | ".join(STYLES) + " | styles that meet the bar | mean SSIM | s / image |",
        "| --- | --- | --- | " + " | ".join("---" for _ in STYLES) + " | --- | --- | --- |",
    ]
    for key, found in rows.items():
        cells = [f"{judge:.2f} / {kept:.2f} / {gain:+.2f}{' ✓' if ok else ''}" for (judge, kept, gain, _), ok in zip(found, met[key])]
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]:g} | " + " | ".join(cells) + f" | {sum(met[key])} | "
            f"{np.mean([r[1] for r in found]):.3f} | {np.mean([r[3] for r in found]):.3f} |"
        )
    best = max(settings, key=rank)
    styles_met, margin = rank(best)
    lines += [
        "",
        f"Best by the rule (most styles that meet the bar on both photo sets, then the widest narrowest margin): **{best[0]} at "
        f"content {best[1]:g}** ({styles_met} of {len(STYLES)} styles, narrowest margin {margin:.3f}).",
        "",
    ]
    publish(lines)


if __name__ == "__main__":
    main()
