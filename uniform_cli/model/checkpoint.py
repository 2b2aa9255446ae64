"""UniForm checkpoints (`config.json` + `model.safetensors`) and import of PixArt and Open-Sora weights.

PixArt-alpha/Sigma XL/2 (their original `blocks.N.*` layout, or diffusers' `PixArtTransformer2DModel`) fill
the spatial blocks and the embedders; temporal blocks keep their zero-output initialisation, so the model
starts as an image model applied frame by frame. Open-Sora STDiT-v3 uses our parameter names already.
Weights are read with safetensors or `torch.load(weights_only=True)` only.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from uniform_cli.atomic import atomic_path, write_text_atomic
from uniform_cli.config import ConfigError, ModelConfig, model_config_from_dict
from uniform_cli.model.layers import timestep_embedding
from uniform_cli.model.uniform import UniForm
from uniform_cli.pretrained import read_state_dict

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
LATEST = "latest"
"""DeepSpeed's tag file in a checkpoints folder: it holds the name of the newest complete checkpoint."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the model; the message lists what is missing or unexpected."""


@dataclass
class ImportReport:
    """What an import filled, what it filled in part, what it skipped and what it left at initialisation."""

    source: str
    layout: str
    loaded: list[str] = field(default_factory=list)
    """Model keys copied whole."""
    partial: dict[str, str] = field(default_factory=dict)
    """Model key -> what part of it was copied."""
    skipped: dict[str, str] = field(default_factory=dict)
    """Checkpoint key (or group) -> why it was not used."""
    initial: list[str] = field(default_factory=list)
    """Model keys the checkpoint does not provide; they keep their initial values."""
    warnings: list[str] = field(default_factory=list)
    """Where the imported part of the model does not compute what the checkpoint's model computed."""

    def summary(self) -> str:
        lines = [f"{self.layout} weights from {self.source}: {len(self.loaded)} tensors loaded"]
        lines += [f"  WARNING: {w}" for w in self.warnings]
        lines += [f"  partly loaded {k}: {v}" for k, v in self.partial.items()]
        lines += [f"  skipped {k}: {v}" for k, v in self.skipped.items()]
        groups = sorted({_group(k) for k in self.initial})
        if groups:
            lines.append(f"  left at initialisation ({len(self.initial)} tensors): {', '.join(groups)}")
        return "\n".join(lines)


def _group(key: str) -> str:
    """`temporal_blocks.3.attn.qkv.weight` -> `temporal_blocks.*.attn.qkv.weight`."""
    return ".".join("*" if part.isdigit() else part for part in key.split("."))


# -- UniForm's own checkpoints -------------------------------------------------------------------------------


def config_to_dict(cfg: ModelConfig) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def config_from_dict(data: dict, source: str = CONFIG_NAME) -> ModelConfig:
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise CheckpointError(f"{source}: unknown model settings {unknown}; this is not a UniForm config.json")
    try:
        return model_config_from_dict(data, source)
    except ConfigError as err:
        raise CheckpointError(str(err)) from None


def save_pretrained(model: UniForm, folder: str | Path) -> Path:
    """Write `config.json` (the ModelConfig fields) and `model.safetensors` into `folder`, each atomically."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(config_to_dict(model.cfg), indent=2) + "\n"
    write_text_atomic(folder / CONFIG_NAME, text)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(folder / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    return folder


def checkpoint_folder(path: str | Path) -> Path:
    """The checkpoint folder `path` names: a folder itself; a `latest` tag file (DeepSpeed's, which `uniform
    train` writes) means the folder it names beside it; a run folder (`runs/NAME`) means its newest checkpoint."""
    path = Path(path).expanduser()
    if path.is_dir() and not (path / CONFIG_NAME).is_file() and (path / "checkpoints" / LATEST).exists():
        path = path / "checkpoints" / LATEST
    if path.name == LATEST and path.is_file() and not path.is_symlink():
        tag = path.read_text(encoding="utf-8", errors="replace").strip()
        if not tag or "/" in tag or "\\" in tag or tag.startswith("."):
            raise CheckpointError(f"{path} does not name a checkpoint folder beside it (it holds {tag[:40]!r})")
        return path.parent / tag
    return path


def load_pretrained(folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> UniForm:
    """The UniForm saved by `save_pretrained` in `folder` (or the one `checkpoint_folder` finds), with its weights exactly as stored. The config is
    checked against the weights' names and shapes (from the file's header) before any model is built; a
    truncated file, a config of the wrong kind and non-finite weights are CheckpointErrors naming the file."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    folder = checkpoint_folder(folder)
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise CheckpointError(f"{path} does not exist; a UniForm checkpoint folder holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        cfg = config_from_dict(json.loads(config_path.read_text()), str(config_path))
    except (ValueError, TypeError) as err:  # not JSON, or settings of the wrong kind
        raise CheckpointError(f"{config_path}: not a usable UniForm config ({err})") from None
    expected = expected_shapes(cfg)
    try:
        with safe_open(str(weights_path), framework="pt") as f:  # the header only: no weights read yet
            present = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        _check_keys(set(expected), set(present), str(weights_path))
        wrong = [f"{k} {list(present[k])} (config: {list(v)})" for k, v in expected.items() if present[k] != v]
        if wrong:
            raise CheckpointError(f"{weights_path} does not hold the weights {config_path} describes: " + "; ".join(wrong[:5]))
        state = load_file(str(weights_path), device=str(device))
    except SafetensorError as err:
        raise CheckpointError(f"{weights_path}: not a complete safetensors file ({err})") from None
    bad = [k for k, v in state.items() if not v.is_floating_point() or not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{weights_path}: weights that are not finite floats: {', '.join(bad[:5])}")
    with torch.device("meta"):
        model = UniForm(cfg)
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device=device, dtype=dtype) if dtype is not None else model


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every weight's name and shape for `cfg`, from a one-block model on the meta device (blocks repeat), so that
    a checkpoint's config is checked against its weights before a model of its size is built."""
    with torch.device("meta"):
        one = UniForm(dataclasses.replace(cfg, depth=1))
    stacks = {name for name, child in one.named_children() if isinstance(child, torch.nn.ModuleList)}
    shapes: dict[str, tuple[int, ...]] = {}
    for key, value in one.state_dict().items():
        head, _, rest = key.partition(".")
        if head in stacks:
            tail = rest.partition(".")[2]
            shapes.update({f"{head}.{i}.{tail}": tuple(value.shape) for i in range(cfg.depth)})
        else:
            shapes[key] = tuple(value.shape)
    return shapes



def _check_keys(expected: set[str], present: set[str], source: str, ignorable: set[str] = frozenset()) -> None:
    missing = sorted(expected - present)
    unexpected = sorted(present - expected - ignorable)
    if missing or unexpected:
        def listing(keys: list[str]) -> str:
            shown = ", ".join(keys[:12]) + (f", ... ({len(keys)} in all)" if len(keys) > 12 else "")
            return shown or "none"

        raise CheckpointError(
            f"{source} does not match the expected layout.\n  missing keys: {listing(missing)}\n"
            f"  unexpected keys: {listing(unexpected)}"
        )


# -- reading foreign checkpoints -----------------------------------------------------------------------------


# -- key mappings (model key -> checkpoint keys it is made from) ---------------------------------------------

Mapping = dict[str, tuple[list[str], Callable[..., torch.Tensor]]]


def _same(x: torch.Tensor) -> torch.Tensor:
    return x


def _cat(*xs: torch.Tensor) -> torch.Tensor:
    return torch.cat(xs, dim=0)


def _conv2d_to_3d(w: torch.Tensor) -> torch.Tensor:
    return w.unsqueeze(2) if w.dim() == 4 else w


def _pixart_mapping(model: UniForm, state: dict[str, torch.Tensor]) -> Mapping:
    m: Mapping = {
        "x_embedder.proj.weight": (["x_embedder.proj.weight"], _conv2d_to_3d),
        "x_embedder.proj.bias": (["x_embedder.proj.bias"], _same),
        "y_embedder.y_embedding": (["y_embedder.y_embedding"], _same),
        "final_layer.scale_shift_table": (["final_layer.scale_shift_table"], _same),
    }
    for name in ("t_embedder.mlp.0", "t_embedder.mlp.2", "t_block.1", "y_embedder.y_proj.fc1",
                 "y_embedder.y_proj.fc2", "final_layer.linear"):
        for p in ("weight", "bias"):
            m[f"{name}.{p}"] = ([f"{name}.{p}"], _same)
    for i in range(model.cfg.depth):
        m[f"spatial_blocks.{i}.scale_shift_table"] = ([f"blocks.{i}.scale_shift_table"], _same)
        for name in ("attn.qkv", "attn.proj", "cross_attn.q_linear", "cross_attn.kv_linear", "cross_attn.proj",
                     "mlp.fc1", "mlp.fc2"):
            for p in ("weight", "bias"):
                m[f"spatial_blocks.{i}.{name}.{p}"] = ([f"blocks.{i}.{name}.{p}"], _same)
        for name in ("attn.q_norm", "attn.k_norm"):  # PixArt trained with qk_norm: LayerNorm(hidden), with a bias
            for p in ("weight", "bias"):
                if f"blocks.{i}.{name}.{p}" in state:
                    m[f"spatial_blocks.{i}.{name}.{p}"] = ([f"blocks.{i}.{name}.{p}"], _same)
    return m


def _check_pixart_qk_norm(model: UniForm, state: dict[str, torch.Tensor], report: ImportReport) -> None:
    """PixArt's attention variants against the model's `qk_norm`: a mismatch that would change the function is an
    error or a plain warning, and PixArt-Sigma's KV compression, which UniForm has not, is an error."""
    kind = model.cfg.qk_norm
    if any(".attn.sr." in k for k in state):
        raise CheckpointError(f"{report.source}: this PixArt compresses keys and values (attn.sr, PixArt-Sigma "
                              "kv_compress); UniForm's attention has no such layer, so it cannot be imported")
    trained_with = "layernorm" if any(k.endswith("attn.q_norm.bias") for k in state) else (
        "rms" if any(k.endswith(("attn.q_norm.weight", "attn1.norm_q.weight")) for k in state) else "none")
    if trained_with == "layernorm" and kind != "layernorm":
        raise CheckpointError(f'{report.source}: this PixArt was trained with qk_norm (LayerNorm with a bias over the '
                              f'width); set [model] qk_norm = "layernorm" to import it (the model has "{kind}")')
    if trained_with == "none" and kind != "none":
        report.warnings.append(
            f"this PixArt was trained without qk_norm and the model normalises queries and keys ({kind!r}): its spatial "
            'blocks are not the PixArt function until trained; [model] qk_norm = "none" imports it exactly')


def _diffusers_mapping(model: UniForm, state: dict[str, torch.Tensor]) -> Mapping:
    m: Mapping = {
        "x_embedder.proj.weight": (["pos_embed.proj.weight"], _conv2d_to_3d),
        "x_embedder.proj.bias": (["pos_embed.proj.bias"], _same),
        "final_layer.scale_shift_table": (["scale_shift_table"], _same),
    }
    pairs = {
        "t_embedder.mlp.0": "adaln_single.emb.timestep_embedder.linear_1",
        "t_embedder.mlp.2": "adaln_single.emb.timestep_embedder.linear_2",
        "t_block.1": "adaln_single.linear",
        "y_embedder.y_proj.fc1": "caption_projection.linear_1",
        "y_embedder.y_proj.fc2": "caption_projection.linear_2",
        "final_layer.linear": "proj_out",
    }
    for i in range(model.cfg.depth):
        src, dst = f"transformer_blocks.{i}", f"spatial_blocks.{i}"
        m[f"{dst}.scale_shift_table"] = ([f"{src}.scale_shift_table"], _same)
        for p in ("weight", "bias"):
            m[f"{dst}.attn.qkv.{p}"] = ([f"{src}.attn1.to_{n}.{p}" for n in "qkv"], _cat)
            m[f"{dst}.cross_attn.kv_linear.{p}"] = ([f"{src}.attn2.to_{n}.{p}" for n in "kv"], _cat)
        pairs.update({
            f"{dst}.attn.proj": f"{src}.attn1.to_out.0",
            f"{dst}.cross_attn.q_linear": f"{src}.attn2.to_q",
            f"{dst}.cross_attn.proj": f"{src}.attn2.to_out.0",
            f"{dst}.mlp.fc1": f"{src}.ff.net.0.proj",
            f"{dst}.mlp.fc2": f"{src}.ff.net.2",
        })
        for ours, theirs in (("attn.q_norm.weight", "attn1.norm_q.weight"), ("attn.k_norm.weight", "attn1.norm_k.weight")):
            if f"{src}.{theirs}" in state:
                m[f"{dst}.{ours}"] = ([f"{src}.{theirs}"], _same)
    for ours, theirs in pairs.items():
        for p in ("weight", "bias"):
            m[f"{ours}.{p}"] = ([f"{theirs}.{p}"], _same)
    return m


def _opensora_mapping(model: UniForm, state: dict[str, torch.Tensor]) -> Mapping:
    return {k: ([k], _same) for k in model.state_dict() if k in state or not k.startswith("task_embedder.")}


# -- filling the model ---------------------------------------------------------------------------------------


def _fit(key: str, ours: torch.Tensor, theirs: torch.Tensor, model: UniForm, source_in: int | None,
         report: ImportReport) -> torch.Tensor | None:
    """`theirs` shaped as `ours`: whole when shapes agree; for the channel-dependent tensors (patch embedding,
    final linear, null text length) the part that fits, noted in the report. Other mismatches raise."""
    if ours.shape == theirs.shape:
        report.loaded.append(key)
        return theirs
    cin = model.in_channels
    if key == "y_embedder.y_embedding" and ours.shape[1:] == theirs.shape[1:]:
        # Open-Sora's rule: repeat the last null token to lengthen, drop the tail to shorten.
        n = ours.shape[0]
        fitted = theirs[:n] if theirs.shape[0] >= n else torch.cat([theirs, theirs[-1:].expand(n - theirs.shape[0], -1)])
        report.partial[key] = f"null text resized from {theirs.shape[0]} to {n} tokens"
        return fitted
    if key == "x_embedder.proj.weight" and ours.shape[0] == theirs.shape[0] and ours.shape[2:] == theirs.shape[2:]:
        k = min(ours.shape[1], theirs.shape[1])
        fitted = ours.detach().clone()
        fitted[:, :k] = theirs[:, :k]
        report.partial[key] = f"input channels 0..{k - 1} of {ours.shape[1]} copied (checkpoint has {theirs.shape[1]})"
        return fitted
    if key.startswith("final_layer.linear.") and ours.shape[1:] == theirs.shape[1:] and source_in:
        patch = ours.shape[0] // model.out_channels
        k_ours = model.out_channels // cin
        if theirs.shape[0] % (patch * source_in) == 0:
            k_theirs = theirs.shape[0] // (patch * source_in)
            # rows are ordered (patch position, [noise | variance], channel)
            view_ours = ours.detach().clone().view(patch, k_ours, cin, *ours.shape[1:])
            view_theirs = theirs.view(patch, k_theirs, source_in, *theirs.shape[1:])
            k, c = min(k_ours, k_theirs), min(cin, source_in)
            view_ours[:, :k, :c] = view_theirs[:, :k, :c]
            parts = "noise and variance" if k == 2 else "noise"
            report.partial[key] = f"{parts} outputs of channels 0..{c - 1} copied ({k_theirs}x{source_in} -> {k_ours}x{cin})"
            return view_ours.view_as(ours)
    if key.startswith(("x_embedder.", "final_layer.linear.")):
        report.skipped[key] = f"shape {tuple(theirs.shape)} cannot be fitted to {tuple(ours.shape)} (different patch size)"
        return None
    raise CheckpointError(
        f"{key}: checkpoint shape {tuple(theirs.shape)} does not match the model's {tuple(ours.shape)}; "
        f"the model has hidden_size={model.cfg.hidden_size}, num_heads={model.cfg.num_heads}, "
        f"text_dim={model.cfg.text_dim} - use the preset the checkpoint was trained with (XL/2)"
    )


def _import(model: UniForm, state: dict[str, torch.Tensor], mapping: Mapping, report: ImportReport,
            ignorable: dict[str, str]) -> ImportReport:
    """Check keys, then copy mapped tensors into `model` (under no_grad, cast to the model's dtype)."""
    needed = {k for sources, _ in mapping.values() for k in sources}
    ignored = {k for k in state if any(k == p or k.startswith(p + ".") for p in ignorable)}
    _check_keys(needed, set(state), report.source, ignorable=ignored)
    for prefix, reason in ignorable.items():
        if any(k == prefix or k.startswith(prefix + ".") for k in state):
            report.skipped[prefix] = reason
    source_in = state[mapping["x_embedder.proj.weight"][0][0]].shape[1] if "x_embedder.proj.weight" in mapping else None
    params = model.state_dict()
    with torch.no_grad():
        for key, (sources, combine) in mapping.items():
            fitted = _fit(key, params[key], combine(*(state[s].float() for s in sources)), model, source_in, report)
            if fitted is not None:
                params[key].copy_(fitted.to(params[key].dtype))
    report.initial = [k for k in params if k not in report.loaded and k not in report.partial]
    return report


def load_pixart_weights(model: UniForm, path: str | Path) -> ImportReport:
    """Fill `model`'s spatial stack and embedders from PixArt-alpha/Sigma weights, in their original layout
    (`.pth` or `.safetensors` with `blocks.N.*`) or diffusers' `PixArtTransformer2DModel` layout (a folder or
    its `diffusion_pytorch_model.safetensors`). Temporal blocks and the task token keep their initialisation."""
    state = read_state_dict(path, error=CheckpointError)
    if any(k.startswith("transformer_blocks.") for k in state):
        report = ImportReport(str(path), "PixArt (diffusers PixArtTransformer2DModel)")
        _check_pixart_qk_norm(model, state, report)
        mapping = _diffusers_mapping(model, state)
        ignorable = {
            "adaln_single.emb.resolution_embedder": "PixArt-alpha 1024 micro-condition (image size); UniForm has none",
            "adaln_single.emb.aspect_ratio_embedder": "PixArt-alpha 1024 micro-condition (aspect ratio); UniForm has none",
        }
        report.skipped["null text"] = "diffusers PixArt has no learned null caption; y_embedder.y_embedding stays at init"
    else:
        report = ImportReport(str(path), "PixArt (original)")
        _check_pixart_qk_norm(model, state, report)
        mapping = _pixart_mapping(model, state)
        ignorable = {
            "pos_embed": "fixed sin-cos table of a square image; positions are recomputed for audible frames",
            "csize_embedder": "PixArt-alpha 1024 micro-condition (image size); UniForm has none",
            "ar_embedder": "PixArt-alpha 1024 micro-condition (aspect ratio); UniForm has none",
        }
    return _import(model, state, mapping, report, ignorable)


def load_opensora_weights(model: UniForm, path: str | Path, fps: float = 17.0) -> ImportReport:
    """Fill `model` from Open-Sora STDiT-v3 weights (hpcai-tech/OpenSora-STDiT-v3 `model.safetensors`, or its
    folder). UniForm clips have one frame rate, so Open-Sora's fps embedding at `fps` (a constant vector
    added to the timestep embedding) is folded into the bias of the timestep MLP's last layer."""
    state = read_state_dict(path, error=CheckpointError)
    report = ImportReport(str(path), "Open-Sora STDiT-v3")
    mapping = _opensora_mapping(model, state)
    ignorable = {"rope.freqs": "RoPE frequencies are recomputed (same theta 10000 and head width)"}
    fps_keys = [f"fps_embedder.mlp.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")]
    has_fps = all(k in state for k in fps_keys)
    if has_fps:
        ignorable["fps_embedder"] = f"folded into t_embedder.mlp.2.bias at fps={fps:g}"
    _import(model, state, mapping, report, ignorable)
    if has_fps:
        w0, b0, w2, b2 = (state[k].float() for k in fps_keys)
        freq = timestep_embedding(torch.tensor([float(fps)]), w0.shape[1])
        fps_vector = torch.nn.functional.silu(freq @ w0.T + b0) @ w2.T + b2
        with torch.no_grad():
            bias = model.t_embedder.mlp[2].bias
            bias.add_(fps_vector[0].to(bias.device, bias.dtype))
        report.partial["t_embedder.mlp.2.bias"] = f"plus the fps embedding at fps={fps:g}"
        report.loaded.remove("t_embedder.mlp.2.bias")
    return report
