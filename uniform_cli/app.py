"""`uniform app`: a Gradio web app over one checkpoint, one tab per task (t2av, a2v, v2a, extend, retake, i2av).

A request runs exactly what `uniform generate` runs for one CSV row: the app copies the given media into
`OUT/inputs/`, writes the row to `OUT/requests/{name}.csv`, checks it with `generate.prompts.read_prompts` (the
same messages), and generates it with `generate.runner.generate_items` (the same media preparation, the user's
own video kept under V2A sound, `{name}.mp4` + `{name}.wav` + a results.jsonl line). So `OUT` is an ordinary
generate folder: `uniform gallery OUT` shows everything made in the app, and `uniform generate
OUT/requests/NAME.csv` makes a request again.

Gradio's queue runs one request at a time (there is one model) and shows the others their place in line. The
server binds 127.0.0.1 unless told otherwise: the app writes files and runs the model for anyone who reaches it.
gradio is an optional extra (`pip install 'uniform[app]'`), imported only here.
"""

from __future__ import annotations

import csv
import itertools
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from uniform_cli.generate.jobs import MODALITIES, TASKS

INSTALL_HINT = "pip install 'uniform[app]'"
MAX_QUEUE = 16
"""Requests waiting at once; more are turned away with "queue full" rather than waiting for hours."""
TAB_TITLES = {"t2av": "T2AV: text to audible video", "a2v": "A2V: sound to video", "v2a": "V2A: video to sound",
              "extend": "Extend an audible video", "retake": "Retake a span", "i2av": "I2AV: image to audible video"}
TAB_INPUTS = {"t2av": ("text", "seconds"), "a2v": ("audio", "text"), "v2a": ("video", "text"),
              "extend": ("video", "text", "seconds"), "retake": ("video", "text", "span_start", "span_end", "modality"),
              "i2av": ("image", "text", "seconds")}
"""What each tab asks for besides the sampling settings (see `generate.jobs` for what each task takes)."""


class AppError(RuntimeError):
    """gradio is missing, or a request cannot be run; the message says what to do."""


@dataclass
class Request:
    """One request from a tab: the fields of a prompts CSV row (media as local file paths) and the settings."""

    task: str
    text: str = ""
    video: str | None = None
    audio: str | None = None
    image: str | None = None
    seconds: float | None = None
    span_start: float | None = None
    span_end: float | None = None
    modality: str = "both"
    seed: int | None = None
    steps: int | None = None
    cfg_video: float | None = None
    cfg_audio: float | None = None


@dataclass
class Outputs:
    """What a request made: the mp4 (picture with sound) and the wav, in the app's output folder."""

    mp4: Path
    wav: Path
    csv: Path
    """The request as a prompts CSV row."""


_counter = itertools.count()


def request_name(task: str) -> str:
    """A fresh output name, safe as a file name and sorted by time: `v2a-20260101-120000-0`."""
    return f"{task}-{time.strftime('%Y%m%d-%H%M%S')}-{next(_counter)}"


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def write_request_csv(request: Request, name: str, out_dir: Path) -> Path:
    """Copy the request's media into `out_dir/inputs/` (uploads live in gradio's temporary folder) and write it
    as a one-row prompts CSV `out_dir/requests/{name}.csv` whose paths are relative to it."""
    inputs, requests = out_dir / "inputs", out_dir / "requests"
    inputs.mkdir(parents=True, exist_ok=True)
    requests.mkdir(parents=True, exist_ok=True)
    cells = {"video": "", "audio": "", "image": ""}
    for kind in cells:
        given = getattr(request, kind)
        if given:
            copy = inputs / f"{name}.{kind}{Path(given).suffix.lower()}"
            shutil.copyfile(given, copy)
            cells[kind] = f"../inputs/{copy.name}"
    span = ""
    if request.task == "retake" and (request.span_start is not None or request.span_end is not None):
        span = f"{_number(request.span_start)}-{_number(request.span_end)}"
    path = requests / f"{name}.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text", "task", "video", "audio", "image", "seconds", "span", "modality", "seed"])
        writer.writerow([name, request.text.strip(), request.task, cells["video"], cells["audio"], cells["image"],
                         _number(request.seconds), span, request.modality if request.task == "retake" else "",
                         "" if request.seed is None else int(request.seed)])
    return path


def run_request(pipe, out_dir: str | Path, request: Request,
                on_step: Callable[[int, int], None] | None = None) -> Outputs:
    """Generate one request with `uniform generate`'s code (see the module docstring). Raises AppError with
    the prompts check's or the run's message when it cannot be made."""
    from uniform_cli.generate.prompts import PromptsError, plan, read_prompts
    from uniform_cli.generate.runner import RunOptions, generate_items

    if request.task not in TASKS:
        raise AppError(f"unknown task {request.task!r}; choose one of {', '.join(TASKS)}")
    out_dir = Path(out_dir).absolute()
    name = request_name(request.task)
    path = write_request_csv(request, name, out_dir)
    try:
        rows = read_prompts(path, request.task, pipe.spec)
    except PromptsError as e:
        raise AppError("; ".join(p.split(": ", 1)[-1] for p in e.problems)) from None
    items = plan(rows, 1, pipe.defaults.seed, source=path)
    options = RunOptions(steps=request.steps, cfg_video=request.cfg_video, cfg_audio=request.cfg_audio, batch_size=1)
    report = generate_items(pipe, items, out_dir, options, on_step=on_step)
    if name in report.failed:
        raise AppError(report.failed[name])
    return Outputs(out_dir / f"{name}.mp4", out_dir / f"{name}.wav", path)


# ------------------------------------------------------------------------------------------------- gradio


def require_gradio():
    """The gradio module, or AppError naming the install command."""
    try:
        import gradio
    except ImportError:
        raise AppError(f"the web app needs gradio, which is not installed: {INSTALL_HINT}") from None
    return gradio


def _input(gr, kind: str, task: str, pipe):
    """The component of one tab input; elem_ids (`{task}-{kind}`) name them for tests and styling."""
    elem = f"{task}-{kind.replace('_', '-')}"
    if kind == "video":
        label = "audible video (picture and sound)" if task in ("extend", "retake") else "video"
        return gr.Video(label=label, sources=["upload"], include_audio=True, elem_id=elem)
    if kind == "audio":
        return gr.Audio(label="sound", sources=["upload"], type="filepath", elem_id=elem)
    if kind == "image":
        return gr.Image(label="first frame", sources=["upload"], type="filepath", elem_id=elem)
    if kind == "text":
        return gr.Textbox(label="caption" + ("" if task == "t2av" else " (optional)"), lines=2, elem_id=elem)
    if kind == "seconds":
        default = None if task == "extend" else pipe.spec.seconds
        return gr.Number(label="output seconds" + (" (longer than the video)" if task == "extend" else ""),
                         value=default, minimum=0.2, elem_id=elem)
    if kind in ("span_start", "span_end"):
        return gr.Number(label=f"span {kind.removeprefix('span_')} (seconds)", value=1.0 if kind == "span_start" else 2.0,
                         minimum=0, elem_id=elem)
    if kind == "modality":
        return gr.Radio(list(MODALITIES), value="both", label="what to make again", elem_id=elem)
    raise ValueError(kind)


def build_app(pipe, out_dir: str | Path):
    """The gr.Blocks app over a loaded `UniFormPipeline`; outputs go to `out_dir` (a generate folder)."""
    gr = require_gradio()
    out_dir = Path(out_dir).absolute()
    defaults = pipe.defaults

    def handler(task: str, names: list[str], fields: dict):
        def run(values: dict, progress=gr.Progress()):
            given = {name: values[component] for name, component in fields.items()}
            request = Request(task=task, **{k: given[k] for k in names},
                              seed=None if given["seed"] is None else int(given["seed"]),
                              steps=None if given["steps"] is None else int(given["steps"]),
                              cfg_video=given["cfg_video"], cfg_audio=given["cfg_audio"])
            request.text = request.text or ""
            try:
                out = run_request(pipe, out_dir, request, on_step=lambda done, total: progress((done, total),
                                                                                               desc="denoising"))
            except AppError as e:
                raise gr.Error(str(e)) from None
            return str(out.mp4), str(out.wav)
        return run

    with gr.Blocks(title="UniForm") as app:
        gr.Markdown(f"# UniForm\ncheckpoint `{pipe.checkpoint}` · clips of {pipe.spec.seconds:g} s at "
                    f"{pipe.spec.size}x{pipe.spec.size}, {pipe.spec.fps:g} fps, {pipe.spec.sample_rate} Hz · "
                    f"outputs in `{out_dir}` (`uniform gallery` shows them)")
        with gr.Tabs():
            for task in TASKS:
                with gr.Tab(TAB_TITLES[task], id=task, elem_id=f"tab-{task}"):
                    with gr.Row():
                        with gr.Column():
                            fields = {kind: _input(gr, kind, task, pipe) for kind in TAB_INPUTS[task]}
                            with gr.Accordion("sampling", open=False):
                                fields["seed"] = gr.Number(label="seed", value=defaults.seed, precision=0,
                                                           elem_id=f"{task}-seed")
                                fields["steps"] = gr.Slider(2, 250, value=defaults.steps, step=1, label="steps",
                                                            elem_id=f"{task}-steps")
                                fields["cfg_video"] = gr.Number(label="guidance (video)", value=defaults.cfg_video,
                                                                elem_id=f"{task}-cfg-video")
                                fields["cfg_audio"] = gr.Number(label="guidance (audio)", value=defaults.cfg_audio,
                                                                elem_id=f"{task}-cfg-audio")
                            button = gr.Button("Generate", variant="primary", elem_id=f"{task}-run")
                        with gr.Column():
                            video = gr.Video(label="output (with sound)", interactive=False, elem_id=f"{task}-out-video")
                            sound = gr.Audio(label="output sound", interactive=False, elem_id=f"{task}-out-audio")
                    button.click(handler(task, list(TAB_INPUTS[task]), fields), inputs=set(fields.values()),
                                 outputs=[video, sound])
    app.queue(default_concurrency_limit=1, max_size=MAX_QUEUE)
    return app


def launch(pipe, out_dir: str | Path, host: str = "127.0.0.1", port: int | None = None, block: bool = True):
    """Build the app and serve it on `host:port` (port None: gradio's 7860, or the next free one). Returns the
    app; with `block=False` it serves from a thread until `app.close()`."""
    out_dir = Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    app = build_app(pipe, out_dir)
    app.launch(server_name=host, server_port=port, allowed_paths=[str(out_dir)], prevent_thread_lock=not block,
               inbrowser=False, share=False, show_error=True, quiet=not block)
    return app
