"""The user-study kit: blind pairs, answers appended without loss, and an analysis that finds a known winner."""

import numpy as np
import pytest
from PIL import Image

from stylekit.study import QUESTIONS, Study, analyse, bradley_terry, make_study, simulate_answers, win_rates, wilson_interval
from stylekit.widgets import StudyApp

SYSTEMS = ("base", "lora", "loha")


def _items(photos=2):
    colours = {"base": (200, 30, 30), "lora": (30, 200, 30), "loha": (30, 30, 200)}
    return [(f"photo{i}", "anime", {s: Image.new("RGB", (16, 16), colours[s]) for s in SYSTEMS}) for i in range(photos)]


@pytest.fixture
def study(tmp_path):
    return make_study(tmp_path / "study", _items(), seed=3)


def test_pairs_are_blind_and_sides_random(study):
    assert len(study.pairs) == 2 * 3  # every two of three systems, per photo
    for pair in study.pairs:
        assert not any(s in pair.image_a or s in pair.image_b for s in SYSTEMS)
        assert pair.system_a != pair.system_b
    many = make_study(study.folder.parent / "many", _items(photos=10), seed=1)
    firsts = {tuple(sorted((p.system_a, p.system_b))): set() for p in many.pairs}
    for p in many.pairs:
        firsts[tuple(sorted((p.system_a, p.system_b)))].add(p.system_a)
    assert any(len(sides) == 2 for sides in firsts.values())  # both sides occur
    orders = [[p.pair for p in study.remaining(name)] for name in ("ann", "bob")]
    assert sorted(orders[0]) == sorted(orders[1]) and orders[0] != orders[1]  # each participant has an own order


def test_answers_are_appended_and_survive_a_new_session(study):
    first = study.remaining("ann")[0]
    study.record("ann", first, {"style": "A", "content": "B"})
    rows = study.answers()
    assert len(rows) == 2 and rows[0]["winner"] == first.system_a and rows[1]["winner"] == first.system_b
    again = Study(study.folder)  # a new session, e.g. after a kernel restart
    assert first not in again.remaining("ann") and len(again.remaining("ann")) == len(study.pairs) - 1
    again.record("bob", again.remaining("bob")[0], {"style": "B", "content": "B"})
    pairs_before = (study.folder / "pairs.json").read_text()
    remade = make_study(study.folder, _items(photos=3), seed=9)  # e.g. the notebook run again: the study in progress is kept
    assert (study.folder / "pairs.json").read_text() == pairs_before and len(remade.answers()) == 4
    assert again.answers()[:2] == rows and len(again.answers()) == 4
    with pytest.raises(ValueError, match="'A' or 'B'"):
        again.record("bob", first, {"style": "C"})
    with pytest.raises(ValueError, match="participant"):
        again.record(" ", first, {"style": "A"})


def test_wilson_interval_known_values():
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_analysis_finds_the_known_winner(tmp_path):
    study = make_study(tmp_path / "s", _items(photos=4), seed=0)
    truth = {"style": {"loha": 4.0, "lora": 1.0, "base": 0.25}, "content": {"base": 4.0, "lora": 1.0, "loha": 0.5}}
    simulate_answers(study, truth, participants=15, seed=1)
    answers = study.answers()
    assert len(answers) == 15 * len(study.pairs) * len(QUESTIONS)
    for question, strengths in truth.items():
        fitted = bradley_terry(answers, question)
        assert sorted(fitted, key=fitted.get) == sorted(strengths, key=strengths.get)
        assert sum(fitted.values()) == pytest.approx(1.0)
        ratio = fitted[max(strengths, key=strengths.get)] / fitted[min(strengths, key=strengths.get)]
        assert 5 < ratio < 40  # the true ratio is 16 and 8
        best = win_rates(answers, question)[max(strengths, key=strengths.get)]
        assert best["low"] > 0.5  # the interval excludes a coin flip
    table = analyse(answers)
    assert table.rows[0][0] == "loha" and "[" in table.rows[0][1]


def test_bradley_terry_stays_finite_when_a_system_never_loses():
    answers = [{"question": "style", "winner": "a", "loser": "b"}] * 5
    fitted = bradley_terry(answers, "style")
    assert np.isfinite(list(fitted.values())).all() and fitted["a"] > fitted["b"]


def test_study_app_records_through_its_buttons(study):
    app = StudyApp(study)
    assert "Enter your name" in app.status.value and app.submit.disabled
    app.participant.value = "carol"
    assert "pair 1 of 6" in app.status.value
    app.submit.click()
    assert "both questions" in app.status.value and not study.answers()
    shown = app.pair
    app.choices["style"].value = "A"
    app.choices["content"].value = "B"
    app.submit.click()
    rows = study.answers()
    assert [r["pair"] for r in rows] == [shown.pair, shown.pair] and rows[0]["participant"] == "carol"
    assert app.pair != shown and "pair 2 of 6" in app.status.value and app.choices["style"].value is None
