import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stylekit.tiny import synth
from stylekit.data import ImageProblem
from stylekit.tiny.corpus import LOADED_SHORT_SIDE, MEDIA, load_corpus, read_manifest, render, subject_of

DEMO_STYLE_WORDS = ("anime", "watercolor", "oil", "pencil", "sketch", "3d", "clay", "cel shading")
PACKAGED_ROOT = Path("/")


def test_every_corpus_entry_names_its_package_licence_holder_and_caption():
    entries = read_manifest()
    assert len({entry.path for entry in entries}) == len(entries)
    for entry in entries:
        assert entry.package and entry.license and entry.copyright and entry.text, entry
        assert entry.kind in {"photo", "artwork"} and entry.split in {"train", "unseen"}, entry
        assert not any(word in entry.text for word in DEMO_STYLE_WORDS), entry.text
    unseen = [entry for entry in entries if entry.split == "unseen"]
    assert len(unseen) >= 5 and all(entry.kind == "photo" for entry in unseen)


def test_missing_packages_are_named_with_the_command_that_installs_them(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        load_corpus("train", tmp_path)
    message = str(error.value)
    assert "apt-get install" in message and "mate-backgrounds" in message and "--corpus-root" in message


def test_corpus_images_load_shrunk_and_a_broken_one_is_named(fake_corpus_root, tmp_path):
    unseen = load_corpus("unseen", fake_corpus_root)
    assert unseen and all(min(entry.image.size) == min(LOADED_SHORT_SIDE, 96) for entry in unseen)

    root = tmp_path / "root"
    shutil.copytree(fake_corpus_root, root)
    broken = root / unseen[0].path.lstrip("/")
    broken.write_bytes(b"not an image at all")
    with pytest.raises(ImageProblem, match=str(broken)):
        load_corpus("unseen", root)


@pytest.mark.skipif(not (PACKAGED_ROOT / read_manifest()[0].path.lstrip("/")).exists(), reason="corpus packages not installed")
@pytest.mark.slow
def test_the_installed_packages_hold_every_listed_image():
    photos = load_corpus("train", PACKAGED_ROOT) + load_corpus("unseen", PACKAGED_ROOT)
    assert all(min(entry.image.size) == LOADED_SHORT_SIDE for entry in photos)


@pytest.mark.parametrize("medium", MEDIA)
def test_each_medium_is_a_repeatable_picture_unlike_the_photo_and_every_demo_style(medium):
    photo = synth.make_scene(7, 64).image
    first, caption = render(medium, photo, "a photo of a red house", np.random.default_rng(3))
    again, _ = render(medium, photo, "a photo of a red house", np.random.default_rng(3))
    assert caption == f"{medium} of a red house"
    assert first.size == photo.size and first.mode == "RGB"
    assert np.array_equal(np.asarray(first), np.asarray(again))

    pixels = np.asarray(first, dtype=np.float32)
    for other in [photo, *(synth.apply_style(name, photo) for name in synth.STYLES)]:
        assert np.abs(pixels - np.asarray(other, dtype=np.float32)).mean() > 8, medium


def test_captions_keep_the_subject_and_drop_the_word_photo():
    assert subject_of("a photo of a cat") == "a cat"
    assert subject_of("a black and white photo of a pier") == "a pier"
    assert subject_of("two trees on sand dunes") == "two trees on sand dunes"


def test_renderings_of_one_photo_differ_between_media():
    photo = Image.fromarray(np.asarray(synth.make_scene(2, 64).image))
    outputs = [np.asarray(render(medium, photo, "x", np.random.default_rng(0))[0], dtype=np.float32) for medium in MEDIA]
    for i in range(len(outputs)):
        for j in range(i + 1, len(outputs)):
            assert np.abs(outputs[i] - outputs[j]).mean() > 5, (list(MEDIA)[i], list(MEDIA)[j])
