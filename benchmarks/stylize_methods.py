"""Which stylize method and content strength to use by default: measured on the held-out photos.

    python benchmarks/stylize_methods.py

For each demo style (trained with the tiny profile's defaults if missing) and
each method (img2img, inversion) at content strengths 0.6-0.9: the judge's
probability of the style, content SSIM to the photo, the target gain and the
seconds per image, averaged over the held-out photos. The profile's default is
the setting under which the judge recognises the most styles (>= 0.6), then
the highest content SSIM. Prints the table and appends it to ``RESULTS.md``.
"""

from __future__ import annotations

import time
from datetime import date

import numpy as np
from common import machine, publish

CONTENT_STRENGTHS = (0.6, 0.75, 0.85, 0.9)


def measure() -> dict[tuple[str, float], list[tuple[float, float, float, float]]]:
    """(method, content) -> one (judge, ssim, target gain, seconds) row per style."""
    from stylekit.data import center_square, load_photos
    from stylekit.metrics import StyleReference, ssim, target_gain
    from stylekit.stylize import METHODS, Stylizer
    from stylekit.synth import STYLES, apply_style
    from stylekit.train import ensure_trained

    ensure_trained(list(STYLES), "tiny")
    reference = StyleReference.demo(list(STYLES))
    stylizer = Stylizer("tiny")
    photos = [center_square(p.image, 64) for p in load_photos(split="held_out")]
    rows: dict[tuple[str, float], list] = {(m, c): [] for m in METHODS for c in CONTENT_STRENGTHS}
    for style in STYLES:
        for method, content in rows:
            scores = []
            for photo in photos:
                start = time.perf_counter()
                image, _ = stylizer.stylize(photo, style, content_strength=content, method=method)
                seconds = time.perf_counter() - start
                target = apply_style(style, photo)
                scores.append(
                    (
                        reference.classifier.probability(image, style),
                        ssim(photo, image),
                        target_gain(reference.classifier.net, image, target, photo),
                        seconds,
                    )
                )
            rows[(method, content)].append(tuple(np.mean(scores, axis=0)))
    return rows


def main() -> None:
    from stylekit.synth import STYLES

    rows = measure()
    ranked = sorted(rows, key=lambda key: (-sum(r[0] >= 0.6 for r in rows[key]), -np.mean([r[1] for r in rows[key]])))
    lines = [
        f"### Stylize methods on the held-out photos, tiny profile ({date.today()}, {machine()})",
        "",
        "Per style: judge probability / content SSIM / target gain, averaged over the two held-out photos.",
        "",
        "| method | content | " + " | ".join(STYLES) + " | styles the judge sees (>= 0.6) | mean SSIM | s / image |",
        "| --- | --- | " + " | ".join("---" for _ in STYLES) + " | --- | --- | --- |",
    ]
    for method, content in rows:
        found = rows[(method, content)]
        cells = [f"{judge:.2f} / {kept:.2f} / {gain:+.2f}" for judge, kept, gain, _ in found]
        seen = sum(r[0] >= 0.6 for r in found)
        lines.append(
            f"| {method} | {content:g} | " + " | ".join(cells) + f" | {seen} | {np.mean([r[1] for r in found]):.3f} | "
            f"{np.mean([r[3] for r in found]):.3f} |"
        )
    best = ranked[0]
    lines += ["", f"Best by the rule (most styles seen, then content): **{best[0]} at content {best[1]:g}**.", ""]
    publish(lines)


if __name__ == "__main__":
    main()
