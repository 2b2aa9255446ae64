"""Hub-ready checkpoint folders: where a pipeline's files come from (a folder, a run, a hub id) and where they go
(an exported folder with a model card, a hub repository).

An exported folder keeps the layout `uniform train` writes, so `uniform generate --checkpoint DIR` and
`UniFormPipeline.from_pretrained(DIR)` load it, and adds what makes it self-contained:

    config.json, model.safetensors   the model (ModelConfig fields; the state dict as `uniform train` saves it)
    recipe.toml                      the resolved recipe; with weights its [codec] names the subfolders below
    video_vae/, audio_vae/,          each pretrained part's config files (their weights too with
    text_encoder/                    `with_weights`), as the part's own repository lays them out
    README.md                        the model card: YAML front matter (pipeline tag, license, paper, datasets,
                                     recipe, training steps) and how to run it

A hub id is read from the local Hugging Face cache; the hub is asked only when the caller says so (`download`),
and then `HF_HUB_OFFLINE=1` still keeps it to the cache (huggingface_hub honours it).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from uniform_cli.config import CodecConfig, ConfigError, Recipe, recipe_from_dict, recipe_to_toml

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

RECIPE_NAME = "recipe.toml"
CARD_NAME = "README.md"
STATE_NAME = "trainer_state.json"
"""Written by `uniform train` beside the exported weights; its "step" is the model card's training steps."""
PAPER = "https://arxiv.org/abs/2502.03897"
PART_FOLDERS = {"video_vae": "video_vae", "audio_vae": "audio_vae", "text_encoder": "text_encoder"}
"""`[codec]` field -> the subfolder of an exported folder that holds that part."""
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt", ".msgpack", ".h5", ".onnx", ".gguf")
"""Files left out of a part's subfolder without `with_weights`: everything else is configuration."""


class PipelineError(ValueError):
    """A checkpoint, codec or input the pipeline cannot use; the message says what to change."""


# -- finding a checkpoint -------------------------------------------------------------------------------------


def resolve_checkpoint(path: str | Path, *, download: bool = False, cache_dir: str | Path | None = None) -> Path:
    """A checkpoint folder (config.json + model.safetensors): a folder; `runs/NAME/checkpoints/latest` (DeepSpeed's
    tag file) or a run folder (`runs/NAME`) for its newest checkpoint; or a hub id (`ORG/NAME`) in the local
    Hugging Face cache (`cache_dir`, default $HF_HUB_CACHE). `download` lets a hub id missing from the cache be
    fetched from the hub (unless HF_HUB_OFFLINE is set)."""
    from uniform_cli.model.checkpoint import CONFIG_NAME, WEIGHTS_NAME, CheckpointError, checkpoint_folder
    from uniform_cli.pretrained import PretrainedError, resolve_pretrained

    try:
        folder = checkpoint_folder(path)
    except CheckpointError as e:
        raise PipelineError(str(e)) from None
    if not folder.is_dir():
        try:  # the whole repository: its recipe and part subfolders belong to the checkpoint
            folder = resolve_pretrained(str(path), [], "UniForm checkpoint", cache_dir, local_files_only=not download,
                                        example="runs/NAME/checkpoints/latest")
        except PretrainedError as e:
            raise PipelineError(f"{e} A local checkpoint is a folder written by `uniform train` "
                                f"(runs/NAME/checkpoints/latest) or by `uniform export`.") from None
    folder = folder.resolve()
    missing = [name for name in (CONFIG_NAME, WEIGHTS_NAME) if not (folder / name).is_file()]
    if missing:
        raise PipelineError(f"checkpoint {folder} lacks {', '.join(missing)}; a UniForm checkpoint holds "
                            f"{CONFIG_NAME}, {WEIGHTS_NAME} and {RECIPE_NAME}")
    return folder


def read_checkpoint_recipe(path: str | Path, *, download: bool = False, cache_dir: str | Path | None = None) -> Recipe:
    """The resolved recipe saved with a checkpoint (codecs, clip settings, diffusion, sampling defaults); `path`,
    `download` and `cache_dir` as `resolve_checkpoint` takes them. A `[codec]` path relative to the checkpoint
    that exists there (an exported part, `./video_vae`) is made absolute, so the folder works from anywhere and
    from the hub cache. A checkpoint without recipe.toml (weights from elsewhere) gets the paper's defaults."""
    folder = resolve_checkpoint(path, download=download, cache_dir=cache_dir)
    recipe_path = folder / RECIPE_NAME
    if not recipe_path.is_file():
        return Recipe()
    try:
        recipe = recipe_from_dict(tomllib.loads(recipe_path.read_text()), source=str(recipe_path))
    except tomllib.TOMLDecodeError as e:
        raise PipelineError(f"{recipe_path}: not valid TOML: {e}") from None
    except ConfigError as e:
        raise PipelineError(str(e)) from None
    inside = {}
    for name in PART_FOLDERS:
        value = getattr(recipe.codec, name)
        if not Path(value).is_absolute() and (folder / value).exists():
            inside[name] = str(folder / value)
    return dataclasses.replace(recipe, codec=dataclasses.replace(recipe.codec, **inside))


def trained_steps(folder: str | Path) -> int | None:
    """Optimizer steps behind a checkpoint, from the trainer state `uniform train` saves beside it (None without)."""
    import json

    state = Path(folder) / STATE_NAME
    try:
        return int(json.loads(state.read_text())["step"]) if state.is_file() else None
    except (ValueError, KeyError, TypeError):
        return None


# -- exporting --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CardInfo:
    """What the model card says that the checkpoint does not record."""

    license: str = "other"
    """Hub license id of the weights (e.g. "apache-2.0", "cc-by-nc-4.0"); "other" until the owner chooses."""
    datasets: tuple[str, ...] = ()
    """Hub ids or names of the training data (e.g. "Loie/VGGSound")."""
    repo_id: str | None = None
    """The hub repository the folder is for (the usage section names it; default: the folder)."""


def used_parts(codec: CodecConfig) -> dict[str, str]:
    """`[codec]` field -> source, for the parts with weights (weight-free codecs and "none"/"hash" text have none)."""
    from uniform_cli.latents.text import HashTextEncoder

    parts = {}
    if codec.video == "opensora":
        parts["video_vae"] = codec.video_vae
    if codec.audio == "audioldm":
        parts["audio_vae"] = codec.audio_vae
    if codec.text_encoder.strip().lower() != "none" and not HashTextEncoder.names(codec.text_encoder):
        parts["text_encoder"] = codec.text_encoder
    return parts


def _copy_part(name: str, source: str, dest: Path, with_weights: bool) -> None:
    """The part's files (without weight files unless `with_weights`) from its folder or cached hub snapshot."""
    from uniform_cli.pretrained import PretrainedError, resolve_pretrained

    try:
        folder = resolve_pretrained(source, [], f"{name} ({source})")
    except PretrainedError as e:
        hint = "" if with_weights else (f" Without --with-weights its config files are enough: "
                                        f"`hf download {source} --include '*.json' '*.model' '*.txt'`.")
        raise PretrainedError(f"export needs every part it describes: {e}{hint}") from None

    def ignore(directory: str, names: list[str]) -> list[str]:
        return [n for n in names if n.startswith(".") or (not with_weights and n.endswith(WEIGHT_SUFFIXES))]

    shutil.copytree(folder, dest, ignore=ignore)  # follows the cache's links to blobs: plain files come out
    if not any(p.suffix == ".json" for p in dest.rglob("*")):
        raise PretrainedError(f"{name}: {folder} holds no config file (*.json); is {source!r} the right part?")


def export_folder(out: str | Path, recipe: Recipe, write_model: Callable[[Path], None], *, with_weights: bool = False,
                  steps: int | None = None, card: CardInfo = CardInfo()) -> Path:
    """Write an exported folder (module docstring) at `out`, which must not exist or be empty: `write_model(dir)`
    puts config.json + model.safetensors in; the parts are copied from where `recipe.codec` names them. It is
    written beside `out` and renamed into place, so a failed export leaves nothing that looks complete."""
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PipelineError(f"{out} exists and is not an empty folder; remove it or export elsewhere")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        write_model(partial)
        parts = used_parts(recipe.codec)
        for name, source in parts.items():
            _copy_part(name, source, partial / PART_FOLDERS[name], with_weights)
        if with_weights:  # the recipe then names the copies, relative to the folder
            recipe = dataclasses.replace(recipe, codec=dataclasses.replace(
                recipe.codec, **{name: f"./{PART_FOLDERS[name]}" for name in parts}))
        (partial / RECIPE_NAME).write_text(recipe_to_toml(recipe))
        (partial / CARD_NAME).write_text(model_card(recipe, parts, with_weights=with_weights, steps=steps,
                                                    card=card, folder=out))
        if out.exists():
            out.rmdir()
        os.replace(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out


def export_checkpoint(checkpoint: str | Path, out: str | Path, *, with_weights: bool = False,
                      card: CardInfo = CardInfo(), download: bool = False) -> Path:
    """`export_folder` of a saved checkpoint (what `uniform export` does): its config.json and model.safetensors are
    copied byte for byte, and no part is loaded (T5-XXL alone is 19 GB). `checkpoint` and `download` as
    `resolve_checkpoint` takes them."""
    from uniform_cli.model.checkpoint import CONFIG_NAME, WEIGHTS_NAME, CheckpointError, config_from_dict

    folder = resolve_checkpoint(checkpoint, download=download)
    recipe = read_checkpoint_recipe(folder)
    try:
        import json

        config_from_dict(json.loads((folder / CONFIG_NAME).read_text()), str(folder / CONFIG_NAME))
    except (CheckpointError, ValueError) as e:
        raise PipelineError(f"{folder / CONFIG_NAME} is not a UniForm config: {e}") from None

    def write_model(dest: Path) -> None:
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            shutil.copyfile(folder / name, dest / name)

    return export_folder(out, recipe, write_model, with_weights=with_weights, steps=trained_steps(folder), card=card)


def model_card(recipe: Recipe, parts: dict[str, str], *, with_weights: bool, steps: int | None, card: CardInfo,
               folder: Path) -> str:
    """README.md of an exported folder: front matter for the hub, then what the model is and how to run it."""
    from huggingface_hub import ModelCardData

    name = card.repo_id or str(folder)
    data = ModelCardData(
        license=card.license, library_name="uniform-cli", pipeline_tag="text-to-video",
        tags=["text-to-audio", "audio-to-video", "video-to-audio", "audio-video-generation", "diffusion", "uniform",
              "arxiv:" + PAPER.rsplit("/", 1)[1]],
        datasets=list(card.datasets) or None, recipe=recipe.train.name, training_steps=steps, paper=PAPER,
    )
    m, d, g = recipe.model, recipe.data, recipe.generate
    guidance = f"{g.cfg_video:g}" if g.cfg_video == g.cfg_audio else f'{{"video": {g.cfg_video:g}, "audio": {g.cfg_audio:g}}}'
    lines = [
        "---", data.to_yaml(), "---", "",
        f"# UniForm: {recipe.train.name}", "",
        f"A UniForm model ([paper]({PAPER}): Zhao, Feng, Ge et al., \"UniForm: A Unified Diffusion Transformer for "
        f"Audio-Video Generation\"): one diffusion transformer for text-to-audible-video (T2AV), audio-to-video "
        f"(A2V) and video-to-audio (V2A). Trained with the uniform-cli recipe `{recipe.train.name}`"
        + (f" for {steps} steps" if steps is not None else "") + f"; depth {m.depth}, width {m.hidden_size}, "
        f"{d.seconds:g} s clips of {d.size}x{d.size} at {d.fps} fps with {d.sample_rate} Hz sound.", "",
        "## Usage", "",
        f"Nothing is downloaded behind your back: fetch the repository first (`hf download {name}`), then"
        if card.repo_id else "Pass this folder as the checkpoint:", "",
        "```",
        f"uniform generate prompts.csv --checkpoint {name} --out outputs/ --steps {g.steps}",
        "```", "",
        "```python",
        "import torch",
        "from uniform_cli.generate import UniFormPipeline", "",
        f'pipe = UniFormPipeline.from_pretrained("{name}")',
        f'out = pipe(prompt="a dog barks in a park", task="t2av", num_inference_steps={g.steps},',
        f"           guidance_scale={guidance}, generator=torch.Generator(pipe.device).manual_seed(0))",
        "out.frames[0], out.wave[0]  # uint8 F H W 3, float32 S",
        "```", "",
        f"Defaults of this checkpoint: sampler {g.sampler}, {g.steps} steps, guidance {g.cfg_video:g} (video) / "
        f"{g.cfg_audio:g} (audio).", "",
        "## Parts", "",
        "| part | source | in this folder |", "|---|---|---|",
    ]
    lines += [f"| {part} | `{source}` | `{PART_FOLDERS[part]}/`: {_part_note(part, source, with_weights)} |"
              for part, source in parts.items()]
    weight_free = [f"{what} `{value}`" for what, value, used in (
        ("video codec", recipe.codec.video, "video_vae" in parts), ("audio codec", recipe.codec.audio,
         "audio_vae" in parts), ("text encoder", recipe.codec.text_encoder, "text_encoder" in parts)) if not used]
    if weight_free:
        lines += ["", f"Weight-free: {', '.join(weight_free)}."]
    return "\n".join(lines) + "\n"


def _part_note(part: str, source: str, with_weights: bool) -> str:
    """What the folder holds of a part, and where the rest is."""
    if with_weights:
        return "config and weights"
    if Path(source).expanduser().exists():  # a folder on the machine that exported this
        flag = "--" + part.replace("_", "-")
        return (f"config only; the weights were a local folder: pass yours with `uniform generate {flag} DIR` "
                f"(or export with --with-weights)")
    return f"config only; get the weights with `hf download {source}`"


# -- pushing ----------------------------------------------------------------------------------------------------


def upload_operations(folder: str | Path) -> list[CommitOperationAdd]:
    """One `CommitOperationAdd` per file of `folder`, at its path relative to the folder: the whole commit."""
    from huggingface_hub import CommitOperationAdd

    folder = Path(folder)
    return [CommitOperationAdd(path_in_repo=p.relative_to(folder).as_posix(), path_or_fileobj=str(p))
            for p in sorted(folder.rglob("*")) if p.is_file()]


def push_folder(folder: str | Path, repo_id: str, *, private: bool | None = None, token: str | None = None,
                commit_message: str = "Upload UniForm checkpoint", api: HfApi | None = None) -> CommitInfo:
    """Create the model repository `repo_id` if needed and commit every file of `folder` to it (`token`: default,
    the one `hf auth login` saved or $HF_TOKEN)."""
    from huggingface_hub import HfApi

    api = api or HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    return api.create_commit(repo_id, operations=upload_operations(folder), commit_message=commit_message,
                             repo_type="model")


def check_repo_id(repo_id: str) -> str:
    """`ORG/NAME` as the hub accepts it, or a PipelineError saying what is wrong with it."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise PipelineError(f"{repo_id!r} is not a hub repository id ({e})") from None
    return repo_id

