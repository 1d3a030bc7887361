"""A small blind user study: A/B pairs of stylizations, answers kept in a CSV, and their analysis.

    study = make_study("outputs/study", items)        # items: (photo, style, {system: image})
    app = StudyApp(study, participant="p01")           # in a notebook (stylekit.widgets)
    analyse(study.answers())                           # win rates with 95 % intervals, Bradley-Terry ranking

Systems are hidden behind neutral image names and A/B sides drawn at random;
each participant sees the pairs in their own random order. Every answer is
appended to ``answers.csv`` (and flushed) at once, so a crash or a second
session never loses earlier answers.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import math
import os
import random
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image

from .plots import Table

__all__ = ["QUESTIONS", "Pair", "Study", "analyse", "bradley_terry", "make_study", "simulate_answers", "win_rates"]

QUESTIONS = {
    "style": "Which image better matches the style?",
    "content": "Which image better keeps the photo?",
}
ANSWER_FIELDS = ["time", "participant", "pair", "photo", "style", "system_a", "system_b", "question", "choice", "winner", "loser"]


@dataclass(frozen=True)
class Pair:
    """Two stylizations of one photo in one style, by two hidden systems, with their sides fixed."""

    pair: str
    photo: str
    style: str
    system_a: str
    system_b: str
    image_a: str  # file names inside the study's images/ folder: they reveal nothing
    image_b: str


def _hidden_name(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:12] + ".png"


def make_study(folder: str | Path, items: list[tuple[str, str, dict[str, Image.Image]]], seed: int = 0) -> Study:
    """Write a study: every pair of systems for each (photo, style, {system: image}) item, sides drawn at random.

    A study that already has answers is opened as it is, never remade: its images and pairs stay those its participants saw.
    """
    folder = Path(folder)
    if (folder / "answers.csv").exists():
        return Study(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    pairs = []
    for photo, style, images in items:
        if len(images) < 2:
            raise ValueError(f"{photo} / {style}: a pair needs at least two systems, got {list(images)}")
        names = {}
        for system, image in images.items():
            names[system] = _hidden_name(str(seed), photo, style, system)
            image.save(folder / "images" / names[system])
        for first, second in itertools.combinations(sorted(images), 2):
            a, b = (first, second) if rng.random() < 0.5 else (second, first)
            pairs.append(Pair(f"p{len(pairs):04d}", photo, style, a, b, names[a], names[b]))
    (folder / "pairs.json").write_text(json.dumps([asdict(p) for p in pairs], indent=1))
    return Study(folder)


class Study:
    """A study folder: ``pairs.json``, ``images/`` and the growing ``answers.csv``."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        source = self.folder / "pairs.json"
        if not source.exists():
            raise FileNotFoundError(f"{source} not found: make the study with make_study() first")
        self.pairs = [Pair(**p) for p in json.loads(source.read_text())]
        self.answers_path = self.folder / "answers.csv"

    def image(self, name: str) -> Image.Image:
        return Image.open(self.folder / "images" / name).convert("RGB")

    def answers(self) -> list[dict]:
        """Every answer recorded so far, one row per (pair, question)."""
        if not self.answers_path.exists():
            return []
        with self.answers_path.open(newline="") as handle:
            return list(csv.DictReader(handle))

    def remaining(self, participant: str) -> list[Pair]:
        """The pairs ``participant`` has not answered yet, in that participant's own random order."""
        done = {row["pair"] for row in self.answers() if row["participant"] == participant}
        order = random.Random(f"{participant}").sample(self.pairs, len(self.pairs))
        return [pair for pair in order if pair.pair not in done]

    def record(self, participant: str, pair: Pair, choices: dict[str, str]) -> None:
        """Append ``participant``'s choices (``{"style": "A", "content": "B"}``) for ``pair`` to the CSV, flushed to disk."""
        if not participant.strip():
            raise ValueError("enter a participant name or code first")
        unknown = set(choices) - set(QUESTIONS)
        if unknown or any(c not in ("A", "B") for c in choices.values()):
            raise ValueError(f"choices must be 'A' or 'B' for the questions {list(QUESTIONS)}, got {choices}")
        new_file = not self.answers_path.exists()
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with self.answers_path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=ANSWER_FIELDS)
            if new_file:
                writer.writeheader()
            for question, choice in choices.items():
                winner, loser = (pair.system_a, pair.system_b) if choice == "A" else (pair.system_b, pair.system_a)
                writer.writerow(
                    {
                        "time": now,
                        "participant": participant,
                        "pair": pair.pair,
                        "photo": pair.photo,
                        "style": pair.style,
                        "system_a": pair.system_a,
                        "system_b": pair.system_b,
                        "question": question,
                        "choice": choice,
                        "winner": winner,
                        "loser": loser,
                    }
                )
            handle.flush()
            os.fsync(handle.fileno())


# ---------------------------------------------------------------------------
# Analysis
# ---------------------------------------------------------------------------


def wilson_interval(wins: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a win rate (sensible for small studies, unlike the normal approximation)."""
    if total == 0:
        return 0.0, 1.0
    rate = wins / total
    centre = (rate + z * z / (2 * total)) / (1 + z * z / total)
    spread = z * math.sqrt(rate * (1 - rate) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - spread), min(1.0, centre + spread)


def win_rates(answers: list[dict], question: str) -> dict[str, dict]:
    """Per system: wins, comparisons, win rate and its 95 % interval, for one question."""
    rows = [a for a in answers if a["question"] == question]
    systems = sorted({a["winner"] for a in rows} | {a["loser"] for a in rows})
    result = {}
    for system in systems:
        wins = sum(a["winner"] == system for a in rows)
        total = sum(system in (a["winner"], a["loser"]) for a in rows)
        low, high = wilson_interval(wins, total)
        result[system] = {"wins": wins, "comparisons": total, "rate": wins / total if total else float("nan"), "low": low, "high": high}
    return result


def bradley_terry(answers: list[dict], question: str, iterations: int = 500, prior: float = 0.5) -> dict[str, float]:
    """Bradley-Terry strengths (sum to 1) from pairwise wins, fitted with Hunter's MM algorithm.

    ``P(i beats j) = s_i / (s_i + s_j)``. A small ``prior`` (a virtual half-win each way
    between every two systems) keeps strengths finite when a system never loses or never wins.
    """
    rows = [a for a in answers if a["question"] == question]
    systems = sorted({a["winner"] for a in rows} | {a["loser"] for a in rows})
    index = {s: i for i, s in enumerate(systems)}
    n = len(systems)
    wins = np.full((n, n), prior)
    np.fill_diagonal(wins, 0.0)
    for a in rows:
        wins[index[a["winner"]], index[a["loser"]]] += 1
    games = wins + wins.T
    strength = np.ones(n) / n
    for _ in range(iterations):
        denominator = (games / (strength[:, None] + strength[None, :])).sum(axis=1)
        updated = wins.sum(axis=1) / denominator
        updated /= updated.sum()
        if np.abs(updated - strength).max() < 1e-10:
            strength = updated
            break
        strength = updated
    return dict(zip(systems, strength.tolist()))


def analyse(answers: list[dict]) -> Table:
    """One row per system: win rate with 95 % interval and Bradley-Terry strength, for each question; best style first."""
    if not answers:
        raise ValueError("no answers yet: run the study first")
    columns, per_question = ["system"], {}
    for question in QUESTIONS:
        per_question[question] = (win_rates(answers, question), bradley_terry(answers, question))
        columns += [f"{question}: win rate [95% CI]", f"{question}: Bradley-Terry"]
    systems = sorted(per_question["style"][1], key=lambda s: -per_question["style"][1][s])
    rows = []
    for system in systems:
        row = [system]
        for question in QUESTIONS:
            rates, strengths = per_question[question]
            r = rates.get(system)
            row += [
                f"{r['rate']:.2f} [{r['low']:.2f}, {r['high']:.2f}] (n={r['comparisons']})" if r else "-",
                f"{strengths.get(system, 0):.3f}",
            ]
        rows.append(row)
    return Table(columns, rows)


def simulate_answers(study: Study, strengths: dict[str, dict[str, float]], participants: int = 5, seed: int = 0) -> None:
    """Record answers of simulated participants who choose by Bradley-Terry with known ``strengths[question][system]``.

    For trying the analysis (and testing it) before real people take part.
    """
    rng = random.Random(seed)
    for p in range(participants):
        participant = f"simulated-{p + 1}"
        for pair in study.remaining(participant):
            choices = {}
            for question in QUESTIONS:
                a, b = strengths[question][pair.system_a], strengths[question][pair.system_b]
                choices[question] = "A" if rng.random() < a / (a + b) else "B"
            study.record(participant, pair, choices)
