"""The ``stylekit`` command line and the papermill runner.

stylekit info                                   versions, device, profiles, trained styles
stylekit run                                    every notebook, in order, on the tiny profile
stylekit run 02_lora_training -p profile sd15   one notebook with a parameter
stylekit run -f params.yaml                     parameters from a YAML file
stylekit data check FOLDER                      validate a style dataset (exit 1 if unusable)
stylekit data demo                              build the demo style sets in outputs/<profile>/datasets
stylekit train DATASET --name NAME [options]    train one style adapter (also under `accelerate launch`)
stylekit train DATASET --name NAME --kind loha  the same with a LyCORIS kind (locon, loha, lokr, oft, boft)
stylekit stylize PHOTO OUT.png --style NAME     stylize a photo (or a folder) with trained styles
stylekit reproduce IMAGE.png AGAIN.png          make a saved image again from its recipe
stylekit eval                                   score every trained style and kind; outputs/<profile>/reports/evaluation.md
stylekit serve                                  the stylizer as a web page on localhost
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import types
import typing
from datetime import datetime
from pathlib import Path

import yaml

from .data import DEMO_COUNT
from .paths import NOTEBOOKS_DIR, outputs_dir, profile_dir
from .profiles import PROFILES

__all__ = ["NotebookFailed", "find_notebooks", "main", "run_notebooks"]

PAGE = Path(__file__).parent / "page.ipynb"  # what `stylekit serve` shows: the stylizer app alone
PACKAGES = ["torch", "diffusers", "transformers", "peft", "accelerate", "lycoris-lora", "safetensors", "papermill"]


class NotebookFailed(RuntimeError):
    """A notebook raised; the message names the notebook and the cell."""


def find_notebooks(names: list[str] | None = None, folder: Path = NOTEBOOKS_DIR) -> list[Path]:
    """The notebooks to run: all numbered ones in ``folder``, or those named (path, file name or stem)."""
    if not names:
        return sorted(p for p in folder.glob("[0-9]*.ipynb"))
    found = []
    for name in names:
        candidates = [Path(name), folder / name, folder / f"{name}.ipynb"]
        match = next((c for c in candidates if c.is_file()), None)
        if match is None:
            known = ", ".join(p.stem for p in sorted(folder.glob("*.ipynb"))) or "none"
            raise FileNotFoundError(f"notebook {name!r} not found (known in {folder.name}/: {known})")
        found.append(match)
    return found


def _local_kernel_manager():
    """A kernel manager that talks to its kernel over local IPC sockets, not TCP (the kernel then has nothing to warn about)."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import CaselessStrEnum

    class LocalKernelManager(AsyncKernelManager):
        transport = CaselessStrEnum(["tcp", "ipc"], default_value="ipc")

    return LocalKernelManager


def run_notebooks(notebooks: list[Path], parameters: dict, run_dir: Path, kernel: str = "python3") -> list[Path]:
    """Execute ``notebooks`` in order with papermill; executed copies go to ``run_dir``.

    Stops at the first failure with :class:`NotebookFailed` naming the notebook and cell.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    run_dir.mkdir(parents=True, exist_ok=True)
    executed = []
    for number, notebook in enumerate(notebooks, 1):
        target = run_dir / notebook.name
        print(f"[{number}/{len(notebooks)}] {notebook.name} -> {target}", flush=True)
        try:
            papermill.execute_notebook(
                str(notebook),
                str(target),
                parameters=parameters,
                kernel_name=kernel,
                cwd=str(notebook.parent),
                progress_bar=True,
                kernel_manager_class=_local_kernel_manager(),
            )
        except PapermillExecutionError as error:
            raise NotebookFailed(
                f"{notebook.name} failed in cell {error.cell_index} (execution count {error.exec_count}): "
                f"{error.ename}: {error.evalue}\nThe executed copy with the traceback is {target}"
            ) from error
        executed.append(target)
    return executed


def _parse_parameters(pairs: list[list[str]], files: list[Path]) -> dict:
    parameters: dict = {}
    for file in files:
        loaded = yaml.safe_load(Path(file).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{file}: a parameters file holds a mapping of NAME: VALUE")
        parameters.update(loaded)
    for name, value in pairs:
        parameters[name] = yaml.safe_load(value)  # "3" -> 3, "true" -> True, "[a, b]" -> list
    return parameters


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def command_info(args) -> int:
    from .models import pick_device, pick_dtype, tiny_model_dir

    device = pick_device()
    print("stylekit", _version("stylekit"))
    for package in PACKAGES:
        print(f"  {package:14s} {_version(package)}")
    print(f"device: {device} (dtype {str(pick_dtype(device)).replace('torch.', '')})")
    print("profiles:")
    for profile in PROFILES.values():
        print(f"  {profile.name:6s} {profile.resolution:5d} px  {profile.base_model}: {profile.description}")
    shipped = (tiny_model_dir() / "model_index.json").exists()
    print(f"embedded tiny model: {'present' if shipped else 'MISSING (reinstall stylekit)'}")
    from .stylize import find_styles

    for profile in PROFILES:
        styles = find_styles(profile=profile)
        print(f"trained styles ({profile}): {', '.join(styles) if styles else 'none yet (run notebook 02)'}")
    return 0


def _missing_notebook_stack(module: str, command: str) -> bool:
    """True (after saying how to install it) when the Jupyter extra that ``command`` needs is not installed."""
    if importlib.util.find_spec(module) is not None:
        return False
    print(f"stylekit {command} needs {module}, which the base install leaves out: pip install 'stylekit[notebooks]'", file=sys.stderr)
    return True


def command_run(args) -> int:
    if _missing_notebook_stack("papermill", "run"):
        return 1
    notebooks = find_notebooks(args.notebooks)
    if not notebooks:
        print("no notebooks to run", file=sys.stderr)
        return 1
    parameters = _parse_parameters(args.parameter or [], args.file or [])
    run_dir = args.output or outputs_dir() / "runs" / datetime.now().strftime("%Y%m%d-%H%M%S")
    try:
        executed = run_notebooks(notebooks, parameters, run_dir, kernel=args.kernel)
    except NotebookFailed as error:
        print(f"stylekit run: {error}", file=sys.stderr)
        return 1
    print(f"done: {len(executed)} notebook(s) executed; results in {run_dir}")
    return 0


def command_data_check(args) -> int:
    from .data import check_dataset

    report = check_dataset(args.folder, min_size=args.min_size)
    print(report)
    return 0 if report.usable else 1


def command_data_demo(args) -> int:
    from .data import build_demo_sets

    out = args.out or profile_dir(args.profile) / "datasets"
    resolution = args.resolution or PROFILES[args.profile].resolution
    folders = build_demo_sets(out, styles=args.styles, count=args.count, resolution=resolution, seed=args.seed)
    for style, folder in folders.items():
        print(f"{style:14s} {folder}")
    return 0


def command_train(args) -> int:
    from .train import TrainConfig, train_adapter

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields and v is not None})
    result = train_adapter(config)
    for kind, path in result.files.items():
        print(f"{kind:10s} {path}")
    return 0


def _parse_styles(values: list[str]) -> dict[str, float]:
    """``NAME[=WEIGHT]`` or ``PATH[=WEIGHT]`` (an adapter file or folder) per value -> weight by name or path."""
    styles = {}
    for value in values:
        name, separator, weight = value.rpartition("=")
        if not separator or not _is_number(weight):
            name, weight = value, ""
        styles[name] = float(weight) if weight else 1.0
    return styles


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _add_style_files(stylizer, styles: dict[str, float]) -> dict[str, float]:
    """Styles given as a path (a ``.safetensors`` file or an adapter folder) are added to ``stylizer`` under the file's
    or folder's name; trained styles stay as they are."""
    named = {}
    for style, weight in styles.items():
        path = Path(style)
        if style not in stylizer.styles and (path.suffix == ".safetensors" or path.exists()):
            name = path.stem if path.suffix == ".safetensors" else path.name
            stylizer.add_style(name, path)
            style = name
        named[style] = weight
    return named


def command_stylize(args) -> int:
    """Under ``accelerate launch`` the processes split a folder's photos, each on its own device."""
    from accelerate import PartialState

    from .data import open_image
    from .models import pick_device
    from .stylize import Stylizer, save_with_recipe

    state = PartialState(cpu=pick_device().type == "cpu")
    device = str(state.device) if state.num_processes > 1 else "auto"
    stylizer = Stylizer(args.model, device=device, profile=args.profile, safety_checker=args.safety_checker, resolution=args.resolution)
    settings = dict(
        style_strength=args.style_strength,
        content_strength=args.content_strength,
        seed=args.seed,
        steps=args.steps,
        guidance=args.guidance,
        prompt=args.prompt,
        method=args.method,
    )
    styles = _add_style_files(stylizer, _parse_styles(args.style))
    if args.input.is_dir():
        written = stylizer.stylize_folder(args.input, args.output, styles, share=(state.process_index, state.num_processes), **settings)
        print(
            f"{len(written)} image(s) written to {args.output}" + (f" by process {state.process_index}" if state.num_processes > 1 else "")
        )
    else:
        image, recipe = stylizer.stylize(open_image(args.input), styles, **settings)
        print(save_with_recipe(image, recipe, args.output))
    return 0


def command_reproduce(args) -> int:
    from .stylize import reproduce

    print(reproduce(args.image, args.output))
    return 0


def serve_command(port: int) -> list[str]:
    """The Voila command that serves the stylizer page (notebook 04's app alone, :data:`PAGE`) on localhost only
    (``STYLEKIT_PROFILE`` in its environment picks the profile)."""
    return [
        sys.executable,
        "-m",
        "voila",
        str(PAGE),
        "--no-browser",
        f"--port={port}",
        "--Voila.ip=127.0.0.1",
        "--show_tracebacks=True",
    ]


def command_eval(args) -> int:
    from .evaluate import EvalConfig, evaluate
    from .report import write_report

    styles = {"styles": tuple(args.styles)} if args.styles else {}
    config = EvalConfig(profile=args.profile, kinds=args.kinds, photos=args.photos, **styles)
    evaluation = evaluate(config)
    print(evaluation.table())
    print("\n".join([*evaluation.verdicts(), evaluation.unbeaten_sentence()]))
    print(evaluation.bar_table())
    print(evaluation.bar_sentence())
    print(f"report: {write_report(evaluation, args.report_dir)}")
    return 0


def command_serve(args) -> int:
    if _missing_notebook_stack("voila", "serve"):
        return 1
    print(f"stylizer ({args.profile}) on http://127.0.0.1:{args.port}/ (Ctrl+C stops it)", flush=True)
    return subprocess.call(serve_command(args.port), env={**os.environ, "STYLEKIT_PROFILE": args.profile})


def _add_dataclass_options(parser: argparse.ArgumentParser, cls, skip: set[str], choices: dict[str, tuple] | None = None) -> None:
    """One ``--option`` per dataclass field (``choices`` limits some); unset options keep the dataclass default (``None`` = profile default)."""
    hints = typing.get_type_hints(cls)
    for item in dataclasses.fields(cls):
        if item.name in skip:
            continue
        kind = hints[item.name]
        if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        flag = "--" + item.name.replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        elif kind in (int, float, str):
            parser.add_argument(flag, type=kind, default=None, choices=(choices or {}).get(item.name), help=f"default: {item.default}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stylekit", description="Turn photographs into artistic styles with Stable Diffusion and style adapters."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="versions, device, profiles and trained styles")
    info.set_defaults(handler=command_info)
    run = sub.add_parser("run", help="execute the notebooks headless with papermill")
    run.add_argument("notebooks", nargs="*", help="notebooks to run (default: all, in order)")
    run.add_argument(
        "-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"), help="a notebook parameter (value parsed as YAML)"
    )
    run.add_argument("-f", "--file", action="append", type=Path, help="a YAML file of parameters")
    run.add_argument("-o", "--output", type=Path, help="folder for the executed copies (default: outputs/runs/<timestamp>)")
    run.add_argument("--kernel", default="python3", help="Jupyter kernel name (default: python3)")
    run.set_defaults(handler=command_run)

    data = sub.add_parser("data", help="style datasets: check a folder, build the demo sets").add_subparsers(
        dest="data_command", required=True
    )
    check = data.add_parser("check", help="report usable images, missing captions, duplicates and bad files")
    check.add_argument("folder", type=Path)
    check.add_argument("--min-size", type=int, default=64, help="smallest accepted side in pixels (default 64)")
    check.set_defaults(handler=command_data_check)
    demo = data.add_parser("demo", help="build one dataset per demo style from the shipped photos and scenes")
    demo.add_argument("--out", type=Path, help="default: outputs/<profile>/datasets")
    demo.add_argument("--styles", nargs="+", help="default: all demo styles")
    demo.add_argument("--count", type=int, default=DEMO_COUNT, help="images per style")
    demo.add_argument("--profile", choices=list(PROFILES), default="tiny", help="whose datasets: outputs/PROFILE/datasets (default tiny)")
    demo.add_argument("--resolution", type=int, default=None, help="default: the profile's (tiny 64, sd15 512, sdxl 1024)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(handler=command_data_demo)

    from .adapters import KINDS, SAVE_PRECISIONS
    from .train import TrainConfig

    train = sub.add_parser("train", help="train one style adapter on a dataset folder (see stylekit.train.TrainConfig)")
    train.add_argument("dataset", help="dataset folder")
    train.add_argument("--name", required=True, help="style name; results go to outputs/<profile>/loras/NAME")
    _add_dataclass_options(train, TrainConfig, skip={"name", "dataset"}, choices={"kind": KINDS, "save_precision": SAVE_PRECISIONS})
    train.set_defaults(handler=command_train)

    stylize = sub.add_parser("stylize", help="stylize a photo or a folder of photos with trained styles")
    stylize.add_argument("input", type=Path, help="a photo or a folder of photos")
    stylize.add_argument("output", type=Path, help="a PNG file, or a folder when INPUT is a folder")
    stylize.add_argument(
        "--style",
        action="append",
        required=True,
        metavar="NAME[=WEIGHT]",
        help="a trained style, or an adapter file or folder (a community LoRA, LoCon, LoHa, LoKr or DoRA .safetensors); repeat to blend",
    )
    stylize.add_argument("--style-strength", type=float, default=1.0, help="adapter multiplier (default 1)")
    stylize.add_argument(
        "--content-strength",
        type=float,
        default=None,
        help="1 keeps the photo; lower runs more steps with the style, and img2img at 0 ignores the photo (default: the profile's)",
    )
    stylize.add_argument("--seed", type=int, default=0)
    stylize.add_argument("--steps", type=int, default=None)
    stylize.add_argument("--guidance", type=float, default=None)
    stylize.add_argument("--prompt", default="", help="what the photo shows (optional)")
    stylize.add_argument(
        "--method", choices=["img2img", "inversion"], default=None, help="how the photo is carried into the result (default: the profile's)"
    )
    stylize.add_argument("--model", default="tiny", help="profile, hub id or local model (default tiny)")
    stylize.add_argument(
        "--profile",
        choices=list(PROFILES),
        default=None,
        help="settings and styles for a hub id or folder (default: sdxl or sd15 by its layout)",
    )
    stylize.add_argument(
        "--resolution", type=int, default=None, help="the model works on about RESOLUTION^2 pixels (default: the profile's)"
    )
    stylize.add_argument("--safety-checker", action="store_true", help="run the model's NSFW checker on every result (both methods)")
    stylize.set_defaults(handler=command_stylize)

    again = sub.add_parser("reproduce", help="make an image saved by stylekit again from its recipe")
    again.add_argument("image", type=Path)
    again.add_argument("output", type=Path)
    again.set_defaults(handler=command_reproduce)

    evaluation = sub.add_parser(
        "eval", help="score every trained style and kind on the held-out photos; write outputs/<profile>/reports/evaluation.md"
    )
    evaluation.add_argument("--profile", default="tiny")
    evaluation.add_argument("--styles", nargs="+", help="default: all demo styles (trained first if missing)")
    evaluation.add_argument("--kinds", action=argparse.BooleanOptionalAction, default=True, help="include the comparison's adapter kinds")
    evaluation.add_argument(
        "--photos",
        choices=["held_out", "unseen"],
        default="held_out",
        help="the shipped held-out photos, or the corpus photos nothing was trained on (needs its Debian packages)",
    )
    evaluation.add_argument("--report-dir", type=Path, help="default: outputs/<profile>/reports (reports_unseen for --photos unseen)")
    evaluation.set_defaults(handler=command_eval)

    serve = sub.add_parser("serve", help="serve the stylizer (notebook 04) as a web page on localhost")
    serve.add_argument("--port", type=int, default=8866)
    serve.add_argument("--profile", choices=list(PROFILES), default="tiny", help="the model and styles to serve (default tiny)")
    serve.set_defaults(handler=command_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (FileNotFoundError, ValueError, KeyError) as error:
        print(f"stylekit {args.command}: {error}", file=sys.stderr)
        return 2
