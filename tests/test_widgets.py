import io
from datetime import datetime, timezone

import numpy as np
import pytest
from PIL import Image

from stylekit.stylize import Stylizer, read_recipe
from stylekit.widgets import StylizerApp


@pytest.fixture(scope="module")
def app(trained_outputs):
    return StylizerApp(Stylizer("tiny"))


def _decoded(png_bytes):
    return np.asarray(Image.open(io.BytesIO(png_bytes)).convert("RGB"))


def test_lists_every_trained_style_and_shows_the_sample(app):
    assert set(app.style.options) == {"anime", "watercolor", "oil_painting", "pencil_sketch", "3d"}
    assert app.before.value and app.after.value == b"" and app.save.disabled


def test_generate_then_save_with_recipe(app, trained_outputs):
    app.style.value = "oil_painting"
    app.content_strength.value = 0.4
    app.style_strength.value = 0.8
    app.generate.click()
    assert app.after.value and not app.save.disabled
    recipe = app.result[1]
    assert recipe.styles == {"oil_painting": 1.0} and recipe.content_strength == 0.4 and recipe.style_strength == 0.8
    app.save.click()
    saved = sorted((trained_outputs / "stylized").glob("*.png"))
    assert saved and read_recipe(saved[-1]).styles == {"oil_painting": 1.0}


def test_second_style_blend(app):
    app.style.value, app.second_style.value, app.blend.value = "anime", "3d", 0.25
    app.generate.click()
    assert app.result[1].styles == {"anime": 0.75, "3d": 0.25}
    app.second_style.value = "(none)"


def test_upload_replaces_the_sample(app):
    buffer = io.BytesIO()
    Image.new("RGB", (90, 50), (200, 30, 30)).save(buffer, format="PNG")
    content = buffer.getvalue()
    app.upload.value = (
        {
            "name": "red.png",
            "type": "image/png",
            "size": len(content),
            "content": memoryview(content),
            "last_modified": datetime.now(timezone.utc),
        },
    )
    assert app.photo().size == (90, 50)
    assert _decoded(app.before.value)[..., 0].mean() > 150
    app.generate.click()
    assert app.result[0].size == (90, 50)
    app.upload.value = ()


def test_live_update_on_slider_release(app):
    app.live.value = False
    app.generate.click()
    first = app.after.value
    app.style_strength.value = 0.0  # no live update: nothing changes
    assert app.after.value == first
    app.live.value = True
    app.style_strength.value = 1.0  # released: the image is made again
    assert app.after.value != first
    app.live.value = False


def test_an_upload_reads_as_ipywidgets_7_gives_it():
    """Colab ships ipywidgets 7, whose FileUpload value is a dict by file name."""
    from stylekit.widgets import _first_upload

    content = b"\x89PNG..."
    seven = {"red.png": {"metadata": {"name": "red.png", "type": "image/png"}, "content": memoryview(content)}}
    eight = ({"name": "red.png", "type": "image/png", "content": memoryview(content)},)
    assert _first_upload(seven) == _first_upload(eight) == (content, "red.png")
