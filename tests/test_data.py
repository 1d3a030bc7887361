import hashlib
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from stylekit.tiny import synth
from stylekit.cli import main
from stylekit.data import build_demo_sets, check_dataset, open_image, prepare_dataset


def _png_header_only(path, width, height):
    """A valid PNG that claims width x height pixels but holds almost nothing (a decompression bomb's header)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def _photo(size=(96, 80), seed=0):
    rng = np.random.default_rng(seed)
    base = synth.make_scene(seed, 96).image.resize(size)
    noise = rng.integers(0, 20, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(np.clip(np.asarray(base, dtype=np.int16) + noise, 0, 255).astype(np.uint8))


@pytest.fixture
def messy_folder(tmp_path):
    """A dataset folder holding one of every kind of good, odd and bad file."""
    folder = tmp_path / "messy style"
    folder.mkdir()
    _photo(seed=1).save(folder / "good.png")
    (folder / "good.txt").write_text("a house by a lake")
    # odd but valid: must be normalised
    rotated = _photo((80, 96), seed=2)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees on display
    rotated.save(folder / "exif_rotated.jpg", exif=exif.tobytes())
    _photo(seed=3).convert("L").save(folder / "gray.png")
    rgba = _photo(seed=4).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(folder / "rgba.png")
    _photo(seed=5).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(np.asarray(_photo(seed=6).convert("L"), dtype=np.uint16) * 257).save(folder / "sixteen_bit.png")
    _photo(seed=7).convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.png")
    _photo(seed=8).save(folder / "café photo ü.png")
    (folder / "café photo ü.txt").write_text("a unicode name")
    # bad ones
    full = folder / "truncated.jpg"
    _photo(seed=9).save(full, quality=95)
    full.write_bytes(full.read_bytes()[: len(full.read_bytes()) // 2])
    (folder / "not_an_image.png").write_text("this is text, not a PNG")
    (folder / "empty.jpg").write_bytes(b"")
    _png_header_only(folder / "bomb.png", 60_000, 60_000)
    _photo(seed=1).save(folder / "good_copy.png")  # same pixels as good.png
    _photo((40, 30), seed=10).save(folder / "tiny.png")
    (folder / "notes.docx").write_bytes(b"PK\x03\x04")
    (folder / "orphan.txt").write_text("a caption whose image is gone")
    lines = [
        json.dumps({"file_name": "gray.png", "text": "a grey scene"}),
        "{this is not json",
        json.dumps({"file_name": "../outside.png", "text": "escape"}),
        json.dumps({"file_name": "missing.png", "text": "gone"}),
        json.dumps({"file_name": "rgba.png"}),
    ]
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    _photo(seed=11).save(tmp_path / "outside.png")
    return folder


def _snapshot(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def test_check_reports_every_bad_file_and_keeps_the_good_ones(messy_folder):
    before = _snapshot(messy_folder)
    report = check_dataset(messy_folder)
    reasons = {p.file: p.reason for p in report.problems}
    usable = {s.path.name for s in report.samples}
    assert usable == {
        "good.png",
        "exif_rotated.jpg",
        "gray.png",
        "rgba.png",
        "cmyk.jpg",
        "sixteen_bit.png",
        "palette.png",
        "café photo ü.png",
    }
    assert "truncated" in reasons["truncated.jpg"]
    assert "not an image" in reasons["not_an_image.png"]
    assert "empty file" in reasons["empty.jpg"]
    assert "decompression bomb" in reasons["bomb.png"]
    assert "duplicate of good.png" in reasons["good_copy.png"]
    assert "too small" in reasons["tiny.png"]
    assert "not an image file type" in reasons["notes.docx"]
    assert "without a matching image" in reasons["orphan.txt"]
    assert "not valid JSON" in reasons["metadata.jsonl line 2"]
    assert "outside the dataset folder" in reasons["metadata.jsonl line 3"]
    assert "does not exist" in reasons["metadata.jsonl line 4"]
    assert "file_name" in reasons["metadata.jsonl line 5"]
    assert set(report.missing_captions) == {"exif_rotated.jpg", "rgba.png", "cmyk.jpg", "sixteen_bit.png", "palette.png"}
    captions = {s.path.name: s.caption for s in report.samples}
    assert captions["gray.png"] == "a grey scene" and captions["café photo ü.png"] == "a unicode name"
    assert _snapshot(messy_folder) == before  # byte-identical: nothing was modified


def test_odd_images_are_normalised(messy_folder):
    rotated = open_image(messy_folder / "exif_rotated.jpg")
    assert rotated.size == (96, 80)  # EXIF orientation applied: stored 80x96
    for name in ["gray.png", "rgba.png", "cmyk.jpg", "sixteen_bit.png", "palette.png"]:
        image = open_image(messy_folder / name)
        assert image.mode == "RGB"
        assert 40 < np.asarray(image).mean() < 250, name
    sixteen = np.asarray(open_image(messy_folder / "sixteen_bit.png"))
    assert sixteen.max() > 128  # scaled down from 16 bits, not clipped to white or black


def test_cli_check_prints_report_and_exit_status(messy_folder, tmp_path, capsys):
    before = _snapshot(messy_folder)
    assert main(["data", "check", str(messy_folder)]) == 0
    out = capsys.readouterr().out
    for name in ["truncated.jpg", "not_an_image.png", "empty.jpg", "bomb.png", "good_copy.png", "tiny.png", "metadata.jsonl line 2"]:
        assert name in out
    assert _snapshot(messy_folder) == before
    hopeless = tmp_path / "hopeless"
    hopeless.mkdir()
    (hopeless / "a.jpg").write_bytes(b"")
    assert main(["data", "check", str(hopeless)]) == 1
    assert "no usable image" in capsys.readouterr().out


def test_prepare_center_crop_trigger_and_caption_options(messy_folder):
    dataset = prepare_dataset(messy_folder, resolution=64, trigger="anime")
    assert len(dataset) == 8
    item = dataset[0]
    assert item["pixels"].shape == (3, 64, 64) and item["pixels"].min() >= -1.0 and item["pixels"].max() <= 1.0
    assert all(dataset.caption(i).startswith("anime") for i in range(len(dataset)))
    dropped = prepare_dataset(messy_folder, resolution=64, trigger="anime", caption_dropout=1.0)
    assert {dropped.caption(i) for i in range(len(dropped))} == {"anime"}


def test_tag_shuffling_keeps_tags_and_trigger_first(tmp_path):
    folder = tmp_path / "tags"
    folder.mkdir()
    _photo().save(folder / "a.png")
    (folder / "a.txt").write_text("red, blue, green, yellow, purple")
    dataset = prepare_dataset(folder, resolution=64, trigger="sks", shuffle_tags=True)
    orders = set()
    for epoch in range(8):
        dataset.epoch = epoch
        caption = dataset.caption(0)
        assert caption.startswith("sks, ")
        orders.add(caption)
        assert sorted(caption.split(", ")[1:]) == ["blue", "green", "purple", "red", "yellow"]
    assert len(orders) > 1


def test_random_crop_is_seeded_and_buckets_keep_aspect(tmp_path):
    folder = tmp_path / "shapes"
    folder.mkdir()
    _photo((192, 96), seed=1).save(folder / "wide.png")
    _photo((96, 192), seed=2).save(folder / "tall.png")
    _photo((128, 128), seed=3).save(folder / "square.png")
    a = prepare_dataset(folder, resolution=64, crop="random", seed=5)
    b = prepare_dataset(folder, resolution=64, crop="random", seed=5)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a.images, b.images))
    bucketed = prepare_dataset(folder, resolution=64, buckets=True)
    sizes = dict(zip(bucketed.names, (im.size for im in bucketed.images)))
    assert sizes["wide.png"][0] > sizes["wide.png"][1] and sizes["tall.png"][1] > sizes["tall.png"][0]
    assert sizes["square.png"] == (64, 64)
    for width, height in sizes.values():
        assert width % 8 == 0 and height % 8 == 0 and abs(width * height - 64 * 64) / (64 * 64) < 0.15
    assert sum(len(v) for v in bucketed.buckets().values()) == 3


def test_prepare_refuses_an_unusable_folder(tmp_path):
    (tmp_path / "x.png").write_text("nope")
    with pytest.raises(ValueError, match="no usable image"):
        prepare_dataset(tmp_path, resolution=64)


def test_demo_sets_are_reproducible_and_valid(tmp_path):
    first = build_demo_sets(tmp_path / "a", styles=["anime", "pencil_sketch"], count=12)
    second = build_demo_sets(tmp_path / "b", styles=["anime", "pencil_sketch"], count=12)
    for style in first:
        assert _snapshot(first[style]) == _snapshot(second[style])
        report = check_dataset(first[style])
        assert len(report.samples) == 12 and not report.problems
        assert all(s.caption.startswith(f"{style.replace('_', ' ')} style, ") for s in report.samples)
    captions = [s.caption for s in check_dataset(first["anime"]).samples]
    assert not any("cat" in c or "coffee" in c for c in captions)  # held-out photos never used
    assert sum("photo" in c for c in captions) == 9  # three quarters photo crops: users bring photos


def test_demo_sets_built_by_other_filters_are_rebuilt(tmp_path, monkeypatch, capsys):
    from PIL import ImageOps

    from stylekit import data
    from stylekit.paths import profile_dir

    monkeypatch.setenv("STYLEKIT_OUTPUTS", str(tmp_path))
    folder = data.build_demo_sets(profile_dir("tiny") / "datasets", ["pencil_sketch"])["pencil_sketch"]  # as notebook 01 does
    first = (folder / "000.png").read_bytes()
    assert not check_dataset(folder).problems  # the stamp is not taken for a sample
    data.ensure_demo_sets(["pencil_sketch"])
    assert "rebuilding" not in capsys.readouterr().out and (folder / "000.png").read_bytes() == first  # unchanged: kept
    monkeypatch.setitem(synth.STYLES, "pencil_sketch", lambda image, scale=1.0: ImageOps.invert(image))  # the filter changes
    data.ensure_demo_sets(["pencil_sketch"])
    assert "rebuilding the demo sets pencil_sketch" in capsys.readouterr().out
    assert (folder / "000.png").read_bytes() != first and not check_dataset(folder).problems


def test_demo_sets_at_sd15_size_use_only_photos_large_enough(monkeypatch, capsys):
    """At 512 px a photo is enlarged at most twice: smaller photos are left out, and the run says so."""
    from stylekit import data

    enlarged = []
    real_crop = data.photo_crop

    def recording_crop(image, resolution, rng):
        crop = real_crop(image, resolution, rng)
        enlarged.append(resolution / min(image.size))
        return crop

    monkeypatch.setattr(data, "photo_crop", recording_crop)
    content = data.demo_content(16, 512)
    assert all(image.size == (512, 512) for image, _ in content)
    assert enlarged and max(enlarged) <= data.MAX_UPSCALE
    assert {caption for _, caption in content[:12]} <= {p.caption for p in data.demo_photos(512)}
    assert len(data.demo_photos(512)) < len(data.demo_photos(64))
    assert "left out" in data.demo_photo_note(512) and data.demo_photo_note(64) is None
    assert "procedural scene" in data.demo_photo_note(1024) and not data.demo_photos(1024)


def test_demo_sets_pair_each_image_with_its_source_photo(tmp_path):
    from stylekit.tiny.synth import apply_style

    # 3d: a filter without position-bound texture (paper, hatching), so a crop of the pair is the pair of the crop

    folder = build_demo_sets(tmp_path, styles=["3d"], count=6)["3d"]
    report = check_dataset(folder)
    assert len(report.samples) == 6 and all(s.source == (folder / "sources" / s.path.name).resolve() for s in report.samples)
    dataset = prepare_dataset(report, resolution=48, crop="random", seed=3)  # resized and cropped: the pairs must stay aligned
    assert dataset.paired
    for image, source in zip(dataset.images, dataset.sources):
        assert image.size == source.size == (48, 48)
        expected = np.asarray(apply_style("3d", source), dtype=np.float32)
        assert np.abs(np.asarray(image, dtype=np.float32) - expected).mean() < 40  # same window of the same picture


def test_a_missing_source_photo_is_reported_and_training_goes_on_unpaired(tmp_path):
    folder = build_demo_sets(tmp_path, styles=["anime"], count=3)["anime"]
    (folder / "sources" / "001.png").unlink()
    report = check_dataset(folder)
    assert any("source 'sources/001.png' is not a file" in p.reason and not p.skipped for p in report.problems)
    assert len(report.samples) == 3 and not prepare_dataset(report, resolution=64).paired


def test_a_source_photo_no_image_names_is_never_trained_on(tmp_path):
    folder = build_demo_sets(tmp_path, styles=["anime"], count=3)["anime"]
    lines = (folder / "metadata.jsonl").read_text().splitlines()
    (folder / "metadata.jsonl").write_text("\n".join(lines[:-1]) + "\n")  # the last styled image loses its entry
    report = check_dataset(folder)
    assert [s.path.name for s in report.samples] == ["000.png", "001.png", "002.png"]  # the photo in sources/ is not one of them
    assert any(p.file == "sources/002.png" and "no image names" in p.reason for p in report.problems)


def test_a_dataset_without_pairs_trains_on_a_folder_called_sources(tmp_path):
    (tmp_path / "sources").mkdir()
    for name in ("a", "sources/b"):
        Image.new("RGB", (64, 64), (40, 90, 200) if name == "a" else (200, 90, 40)).save(tmp_path / f"{name}.png")
        (tmp_path / f"{name}.txt").write_text("watercolor style, a field")
    report = check_dataset(tmp_path)
    assert sorted(s.path.name for s in report.samples) == ["a.png", "b.png"] and not report.problems
