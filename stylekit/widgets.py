"""ipywidgets front ends: the stylizer app and the user-study app.

The app holds no logic of its own: each button or slider calls one
:class:`~stylekit.stylize.Stylizer` function, so pytest drives it by setting
widget values and pressing buttons, without a browser.
"""

from __future__ import annotations

import html
import io
from datetime import datetime
from pathlib import Path

import ipywidgets as widgets
from PIL import Image

from .data import decode_image, load_photos
from .paths import outputs_dir
from .study import QUESTIONS, Study
from .stylize import Stylizer, blend, save_with_recipe

__all__ = ["StudyApp", "StylizerApp"]

NO_STYLE = "(none)"


def _first_upload(value) -> tuple[bytes, str]:
    """The first uploaded file's bytes and name: ipywidgets 8 gives a tuple of dicts, 7 (Colab's) a dict by name."""
    if isinstance(value, dict):
        name, item = next(iter(value.items()))
        return bytes(item["content"]), name
    return bytes(value[0]["content"]), value[0]["name"]


def _png(image: Image.Image, size: int = 256) -> bytes:
    """PNG bytes of ``image`` scaled so its long side is ``size`` (crisp nearest-neighbour for tiny images)."""
    scale = size / max(image.size)
    shown = image.resize(
        (round(image.width * scale), round(image.height * scale)), Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
    )
    buffer = io.BytesIO()
    shown.save(buffer, format="PNG")
    return buffer.getvalue()


class StylizerApp:
    """Upload a photo (or pick a sample), choose a style or a blend of two, set the strengths, press Generate."""

    def __init__(self, stylizer: Stylizer | None = None, model: str = "tiny"):
        self.stylizer = stylizer or Stylizer(model)
        defaults = self.stylizer.profile.inference
        styles = list(self.stylizer.styles) or [NO_STYLE]
        self.samples = {p.file_name: p.image for p in load_photos()}
        self.result: tuple | None = None
        labelled = {"style": {"description_width": "140px"}, "layout": widgets.Layout(width="420px")}  # whole labels, one column
        slider = {"continuous_update": False, **labelled}

        self.upload = widgets.FileUpload(accept="image/*", multiple=False, description="Upload photo")
        self.sample = widgets.Dropdown(
            options=list(self.samples), description="or a sample", value="chelsea.jpg" if "chelsea.jpg" in self.samples else None
        )
        self.style = widgets.Dropdown(options=styles, description="style", **labelled)
        self.second_style = widgets.Dropdown(options=[NO_STYLE, *self.stylizer.styles], description="second style", **labelled)
        self.blend = widgets.FloatSlider(value=0.0, min=0.0, max=1.0, step=0.05, description="second style share", **slider)
        self.style_strength = widgets.FloatSlider(
            value=defaults.style_strength, min=0.0, max=1.5, step=0.05, description="style strength", **slider
        )
        self.content_strength = widgets.FloatSlider(
            value=defaults.content_strength, min=0.0, max=1.0, step=0.05, description="content preservation", **slider
        )
        self.style_file = widgets.Text(placeholder="path/to/community_lora.safetensors", description="style file", **labelled)
        self.add_file = widgets.Button(description="Add style", icon="plus")
        self.seed = widgets.IntText(value=0, description="seed", **labelled)
        self.steps = widgets.IntSlider(value=defaults.steps, min=2, max=60, description="steps", **slider)
        self.live = widgets.Checkbox(
            value=False, description="update when a slider is released", indent=False, layout=widgets.Layout(width="420px")
        )
        self.generate = widgets.Button(description="Generate", button_style="primary", icon="magic")
        self.save = widgets.Button(description="Save", icon="save", disabled=True)
        self.before = widgets.Image(format="png", layout=widgets.Layout(width="256px"))
        self.after = widgets.Image(format="png", layout=widgets.Layout(width="256px"))
        self.status = widgets.HTML()
        for control, name in (
            (self.after, "after"),
            (self.before, "before"),
            (self.content_strength, "content"),
            (self.generate, "generate"),
        ):
            control.add_class(f"stylekit-{name}")  # stable handles for the browser test

        self.generate.on_click(lambda _: self.run())
        self.save.on_click(lambda _: self.save_result())
        self.add_file.on_click(lambda _: self.add_style_file())
        self.upload.observe(lambda _: self.show_photo(), names="value")
        self.sample.observe(lambda _: self.show_photo(), names="value")
        for control in (self.style, self.second_style, self.blend, self.style_strength, self.content_strength, self.seed, self.steps):
            control.observe(self._on_change, names="value")
        self.show_photo()

    def photo(self) -> Image.Image:
        """The uploaded photo, or the chosen sample."""
        if self.upload.value:
            return decode_image(*_first_upload(self.upload.value))
        return self.samples[self.sample.value]

    def show_photo(self) -> None:
        self.before.value = _png(self.photo())

    def run(self) -> None:
        """Stylize the photo with the current settings."""
        if self.style.value == NO_STYLE:
            self.status.value = "No trained style found: train one in notebook 02 first."
            return
        second = None if self.second_style.value == NO_STYLE else self.second_style.value
        styles = blend(self.style.value, second, self.blend.value)
        image, recipe = self.stylizer.stylize(
            self.photo(),
            styles,
            style_strength=self.style_strength.value,
            content_strength=self.content_strength.value,
            seed=self.seed.value,
            steps=self.steps.value,
        )
        self.result = (image, recipe)
        self.after.value = _png(image)
        self.save.disabled = False
        self.status.value = f"<code>{recipe.parameters().splitlines()[0]}</code>"

    def add_style_file(self) -> None:
        """Add the adapter file or folder named in the style-file box (a community LoRA, say) to both style lists."""
        path = Path(self.style_file.value.strip()).expanduser()
        name = path.stem if path.suffix == ".safetensors" else path.name
        try:
            self.stylizer.add_style(name, path)
        except (OSError, ValueError) as error:
            self.status.value = f"<b>Could not add {html.escape(str(path))}</b>: {html.escape(str(error))}"
            return
        styles = list(self.stylizer.styles)
        self.style.options = styles
        self.second_style.options = [NO_STYLE, *styles]
        self.style.value = name
        self.status.value = f"added style {html.escape(name)} from {html.escape(str(path))}"

    def save_result(self) -> None:
        """Save the last result, with its recipe, to ``outputs/stylized/``."""
        image, recipe = self.result
        path = save_with_recipe(image, recipe, outputs_dir() / "stylized" / f"{datetime.now():%Y%m%d-%H%M%S-%f}.png")
        self.status.value = f"saved {path.name} in outputs/stylized"

    def _on_change(self, _) -> None:
        if self.live.value:
            self.run()

    @property
    def widget(self) -> widgets.Widget:
        controls = widgets.VBox(
            [
                widgets.HBox([self.upload, self.sample]),
                self.style,
                self.second_style,
                self.blend,
                widgets.HBox([self.style_file, self.add_file]),
                self.style_strength,
                self.content_strength,
                self.steps,
                self.seed,
                self.live,
                widgets.HBox([self.generate, self.save]),
            ]
        )
        pictures = widgets.HBox(
            [widgets.VBox([widgets.HTML("<b>before</b>"), self.before]), widgets.VBox([widgets.HTML("<b>after</b>"), self.after])]
        )
        return widgets.VBox([controls, pictures, self.status])

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


class StudyApp:
    """Blind A/B pairs for one participant: two images, one choice per question, Submit records and shows the next pair."""

    def __init__(self, study: Study, participant: str = ""):
        self.study = study
        self.participant = widgets.Text(value=participant, description="participant", placeholder="a name or code")
        self.image_a = widgets.Image(format="png", layout=widgets.Layout(width="256px"))
        self.image_b = widgets.Image(format="png", layout=widgets.Layout(width="256px"))
        self.choices = {
            question: widgets.ToggleButtons(options=["A", "B"], value=None, description="", style={"button_width": "60px"})
            for question in QUESTIONS
        }
        self.submit = widgets.Button(description="Submit", button_style="primary")
        self.status = widgets.HTML()
        self.pair = None
        self.submit.on_click(lambda _: self.answer())
        self.participant.observe(lambda _: self.show_next(), names="value")
        self.show_next()

    def show_next(self) -> None:
        """Show the participant's next unanswered pair (or say that all are done)."""
        remaining = self.study.remaining(self.participant.value) if self.participant.value.strip() else []
        self.pair = remaining[0] if remaining else None
        for toggle in self.choices.values():
            toggle.value = None
        if not self.participant.value.strip():
            self.status.value = "Enter your name or a code to start."
        elif self.pair is None:
            self.status.value = "All pairs answered: thank you!"
        else:
            self.image_a.value = _png(self.study.image(self.pair.image_a))
            self.image_b.value = _png(self.study.image(self.pair.image_b))
            done = len(self.study.pairs) - len(remaining)
            self.status.value = f"pair {done + 1} of {len(self.study.pairs)} &middot; style: <b>{self.pair.style.replace('_', ' ')}</b>"
        self.submit.disabled = self.pair is None

    def answer(self) -> None:
        """Record the choices for the pair on screen and move on."""
        choices = {question: toggle.value for question, toggle in self.choices.items()}
        if self.pair is None or None in choices.values():
            self.status.value = "Answer both questions first."
            return
        self.study.record(self.participant.value, self.pair, choices)
        self.show_next()

    @property
    def widget(self) -> widgets.Widget:
        images = widgets.HBox(
            [widgets.VBox([widgets.HTML("<b>A</b>"), self.image_a]), widgets.VBox([widgets.HTML("<b>B</b>"), self.image_b])]
        )
        questions = [widgets.HBox([widgets.Label(QUESTIONS[q], layout=widgets.Layout(width="280px")), t]) for q, t in self.choices.items()]
        return widgets.VBox([self.participant, images, *questions, self.submit, self.status])

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
