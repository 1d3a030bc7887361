"""Which adapter training recipe to use by default on the tiny profile: measured against the evaluation's bar.

    python benchmarks/adapter_recipe.py [RECIPE ...]

For each recipe (changes to the tiny profile's training defaults, :data:`RECIPES`), the five demo styles are trained
into their own folder (``<outputs>/tiny/recipes/<recipe>``, side by side as ``ensure_trained`` does; a recipe trained
before is reused), then stylized at the profile's stylize defaults on the held-out and the unseen photos. Per style:
the photo side of the bar (``stylekit.evaluate.photo_margin``: judge, SSIM against the exact target's, target gain
against the blur's) on each photo set, and the text-to-image gain (the judge from strength 0 to 1 with the trigger).
A style meets the bar under a recipe when it meets the photo side on both sets and the text-to-image gain. Prints
the table and appends it to ``RESULTS.md``.
"""

from __future__ import annotations

import sys
from datetime import date

import numpy as np
from common import machine, publish
from stylize_methods import PHOTO_SETS, references, slack

RECIPES = {
    "defaults": {},
    "steps 450": {"steps": 450},
    "lr 6e-3": {"learning_rate": 6e-3},
    "lr 3e-3": {"learning_rate": 3e-3},
    "rank 32": {"rank": 32, "alpha": 32.0},
    "unpaired 0.25": {"unpaired_share": 0.25},
}


def train_recipe(name: str, changes: dict):
    """The folder of the recipe's adapters of every demo style (trained if missing). Training speed is
    ``benchmarks/train_speed.py``'s to measure: this script's trainings may share the CPU with other work."""
    from stylekit.data import ensure_demo_sets
    from stylekit.launcher import run_trainings, trainings_at_once
    from stylekit.paths import profile_dir
    from stylekit.profiles import get_profile
    from stylekit.tiny.synth import STYLES

    folder = profile_dir("tiny") / "recipes" / name.replace(" ", "_").replace(",", "")
    datasets = ensure_demo_sets(list(STYLES), "tiny")
    options = [f"--{key.replace('_', '-')}={value}" for key, value in changes.items()]
    commands = {
        style: [sys.executable, "-m", "stylekit", "train", str(datasets[style]), "--name", style, "--output-dir", str(folder), *options]
        for style in STYLES
        if not (folder / style / "pytorch_lora_weights.safetensors").exists()
    }
    run_trainings(commands, changes.get("steps", get_profile("tiny").train.steps), trainings_at_once("tiny"))
    return folder


def measure(folder, reference) -> dict:
    """style -> {photo set: photo-side margin} plus the text-to-image gain, for the adapters in ``folder``."""
    from stylekit.evaluate import evaluation_photos, txt2img_judge
    from stylekit.metrics import ssim, target_gain
    from stylekit.stylize import Stylizer
    from stylekit.tiny.synth import STYLES, apply_style

    stylizer = Stylizer("tiny", styles_dir=folder)
    found = {style: {} for style in STYLES}
    for photo_set in PHOTO_SETS:
        photos = list(evaluation_photos(photo_set, stylizer.profile.resolution).values())
        for style in STYLES:
            targets = [apply_style(style, photo) for photo in photos]
            images = [stylizer.stylize(photo, style)[0] for photo in photos]
            judge = np.mean([reference.classifier.probability(image, style) for image in images])
            kept = np.mean([ssim(photo, image) for photo, image in zip(photos, images)])
            gain = np.mean([target_gain(reference.classifier.net, i, t, p) for i, t, p in zip(images, targets, photos)])
            row = (judge, kept, gain, 0.0)  # slack() reads a stylize_methods row: judge, SSIM, gain, seconds
            found[style][photo_set] = (row, slack(row, references(photos, targets, reference.classifier.net)))
    for style in STYLES:
        before, after = txt2img_judge(stylizer, style, reference)
        found[style]["txt2img"] = after - before
    return found


def main(names: list[str]) -> None:
    from stylekit.evaluate import BAR
    from stylekit.judge import StyleReference
    from stylekit.tiny.synth import STYLES

    reference = StyleReference.demo(list(STYLES))
    lines = [
        f"### Adapter training recipes against the bar, tiny profile ({date.today()}, {machine()})",
        "",
        "Per style: judge / SSIM / target gain on the held-out photos, then on the unseen photos, then the text-to-image",
        f"gain; a tick where the style meets the whole bar (photo side on both sets, text-to-image gain >= {BAR['txt2img_gain']}).",
        "",
        "| recipe | " + " | ".join(STYLES) + " | styles that meet the bar |",
        "| --- | " + " | ".join("---" for _ in STYLES) + " | --- |",
    ]
    for name in names:
        folder = train_recipe(name, RECIPES[name])
        found = measure(folder, reference)
        cells, met = [], 0
        for style in STYLES:
            meets = all(found[style][s][1] > 0 for s in PHOTO_SETS) and found[style]["txt2img"] >= BAR["txt2img_gain"]
            met += meets
            sets = " · ".join("{:.2f}/{:.2f}/{:+.2f}".format(*found[style][s][0][:3]) for s in PHOTO_SETS)
            cells.append(f"{sets} · {found[style]['txt2img']:+.2f}{' ✓' if meets else ''}")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {met} |")
        print(lines[-1], flush=True)
    lines.append("")
    publish(lines)


if __name__ == "__main__":
    main(sys.argv[1:] or list(RECIPES))
