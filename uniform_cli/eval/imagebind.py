"""ImageBind (Girdhar et al. 2023) vision and audio towers, for the ImageBind score (IB-Score).

IB-Score as av-benchmark (MMAudio) reports it: the cosine similarity of a clip's ImageBind vision embedding
and its sound's audio embedding, averaged over clips. Only the two towers it needs are built; the published
`imagebind_huge.pth` also holds text, depth, thermal and IMU towers, whose keys are skipped on load. The
modules keep the published key names (`modality_preprocessors.vision.rgbt_stem.proj.1.weight`,
`modality_trunks.audio.blocks.0.attn.bias_k`, ...) so the file's vision and audio tensors load strictly.

Inputs are made as av-benchmark makes them (its VideoDataset and ImageBindAudioDataset): the video at 0.5 fps,
consecutive frame pairs in three crops; the sound as 3 clips of 2 s, Kaldi log-mel fbanks (written here in
torch, without torchaudio). A clip's embedding is the mean of its inputs' unit embeddings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from uniform_cli.eval.weights import FeatureInputError, WeightsError
from uniform_cli.pretrained import read_state_dict

SAMPLE_RATE = 16000
MEL_BINS = 128
AUDIO_FRAMES = 204
"""Fbank frames per clip: a 2 s clip gives 198 frames of 10 ms, zero-padded to 204 as in ImageBind."""
AUDIO_CLIP_SECONDS, AUDIO_CLIPS = 2, 3
MEL_MEAN, MEL_STD = -4.268, 9.138
"""ImageBind's normalisation of the log-mel fbank (AudioSet statistics)."""
FRAME_MS, SHIFT_MS, LOW_HZ, PREEMPHASIS = 25.0, 10.0, 20.0, 0.97
"""torchaudio.compliance.kaldi.fbank's defaults that ImageBind keeps."""
VIDEO_FPS = 0.5
"""av-benchmark decodes the video at 0.5 fps (one frame every 2 s) and pairs consecutive frames."""
IMAGE_SIZE = 224
PIXEL_MEAN = (0.48145466, 0.4578275, 0.40821073)
PIXEL_STD = (0.26862954, 0.26130258, 0.27577711)
"""CLIP's pixel statistics, which ImageBind's vision tower (OpenCLIP ViT-H) was trained with."""


def kaldi_mel_banks(num_bins: int, fft_size: int, sample_rate: int, low_hz: float = LOW_HZ) -> torch.Tensor:
    """Kaldi's mel filterbank `fft_size/2+1 num_bins`: triangles linear in HTK mel (1127 ln(1 + f/700)),
    evenly spaced from `low_hz` to Nyquist, over FFT bin centres; the Nyquist bin gets no weight."""

    def mel(hz):
        return 1127.0 * torch.log1p(torch.as_tensor(hz, dtype=torch.float64) / 700.0)

    low, high = mel(low_hz), mel(sample_rate / 2)
    delta = (high - low) / (num_bins + 1)
    edges = low + delta * torch.arange(num_bins + 2, dtype=torch.float64)
    left, center, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    bins = mel(sample_rate / fft_size * torch.arange(fft_size // 2, dtype=torch.float64))[None]
    weights = torch.clamp(torch.minimum((bins - left) / (center - left), (right - bins) / (right - center)), min=0)
    return F.pad(weights, (0, 1)).T.float()


def kaldi_fbank(wave: torch.Tensor, sample_rate: int = SAMPLE_RATE, num_bins: int = MEL_BINS) -> torch.Tensor:
    """Log mel filterbank `T M` as `torchaudio.compliance.kaldi.fbank` computes it with ImageBind's options
    (symmetric Hann window, no dither, no energy, htk_compat) and the rest at Kaldi's defaults: 25 ms frames
    every 10 ms that fit whole, each frame's mean removed, pre-emphasis 0.97, 512-point power spectrum,
    log floored at float32's epsilon."""
    window, shift = int(sample_rate * FRAME_MS / 1000), int(sample_rate * SHIFT_MS / 1000)
    if wave.ndim != 1 or len(wave) < window:
        raise FeatureInputError(f"the fbank needs a mono wave of at least {window} samples, got {tuple(wave.shape)}")
    fft_size = 1 << (window - 1).bit_length()
    frames = wave.float().unfold(0, window, shift)  # T window
    frames = frames - frames.mean(dim=1, keepdim=True)
    frames = frames - PREEMPHASIS * torch.cat([frames[:, :1], frames[:, :-1]], dim=1)  # x[-1] := x[0]
    frames = frames * torch.hann_window(window, periodic=False, dtype=frames.dtype, device=frames.device)
    power = torch.fft.rfft(frames, n=fft_size).abs().pow(2)
    mel = power @ kaldi_mel_banks(num_bins, fft_size, sample_rate).to(power.device)
    return mel.clamp(min=torch.finfo(torch.float32).eps).log()


def audio_clip_bounds(num_samples: int, sample_rate: int = SAMPLE_RATE) -> list[tuple[int, int]]:
    """Sample ranges of ImageBind's 3 audio clips of 2 s: pytorchvideo's ConstantClipsPerVideoSampler starts
    them evenly from 0 to (duration - 2 s) (all at 0 when the sound is shorter), in exact fractions."""
    duration = Fraction(num_samples / sample_rate)
    latest = max(duration - AUDIO_CLIP_SECONDS, Fraction(0))
    step = latest / max(AUDIO_CLIPS - 1, 1)
    starts = [step * i for i in range(AUDIO_CLIPS)]
    return [(int(s * sample_rate), int((s + AUDIO_CLIP_SECONDS) * sample_rate)) for s in starts]


def resample_to_16k(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """A mono float wave resampled to 16 kHz with PyAV's FFmpeg resampler, as `read_audio` resamples files."""
    import av

    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave, dtype=np.float32)[None], format="flt", layout="mono")
    frame.sample_rate = sample_rate
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    chunks = [f.to_ndarray().reshape(-1) for f in [*resampler.resample(frame), *resampler.resample(None)]]
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)


def imagebind_audio_input(wave: np.ndarray, sample_rate: int) -> torch.Tensor:
    """ImageBind's audio input `3 1 128 204`: normalised log-mel fbanks of 3 clips of 2 s of a mono wave
    (resampled to 16 kHz first when it is not)."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise FeatureInputError(f"ImageBind needs a mono wave `S`, got shape {wave.shape}")
    work = torch.from_numpy(resample_to_16k(wave, sample_rate) if sample_rate != SAMPLE_RATE else wave.copy())
    clips = []
    for start, end in audio_clip_bounds(len(work)):
        clip = work[start:end]
        # ImageBind centres each clip in place on the shared waveform, so a later clip that overlaps an earlier
        # one starts from samples already shifted by that clip's mean; the view keeps that behaviour.
        clip -= clip.mean()
        fbank = kaldi_fbank(clip).T  # M T
        fbank = F.pad(fbank, (0, max(AUDIO_FRAMES - fbank.shape[1], 0)))[:, :AUDIO_FRAMES]
        clips.append((fbank[None] - MEL_MEAN) / MEL_STD)
    return torch.stack(clips)


def ib_frame_indices(num_frames: int, fps: float) -> list[int]:
    """Frames av-benchmark gives ImageBind: FFmpeg's fps=0.5 filter (output n holds the last frame before
    (2n + 1) s, rounding to the nearest tick), truncated to int(0.5 x duration) frames."""
    rate = Fraction(fps).limit_denominator(100000)
    count = int(Fraction(num_frames) / rate * Fraction(VIDEO_FPS))
    if count < 2:
        raise FeatureInputError(
            f"the ImageBind score needs at least 4 s of video (two frames 2 s apart), got {num_frames / fps:.2f} s"
        )
    return [min(math.ceil((2 * n + 1) * rate) - 1, num_frames - 1) for n in range(count)]


def imagebind_video_input(frames: np.ndarray, fps: float) -> torch.Tensor:
    """ImageBind's vision input `N 3 2 224 224`: the 0.5 fps frames, short side resized to 224 (bicubic,
    antialiased, to uint8 levels), CLIP-normalised, three 224 crops along the long side (left, centre, right),
    and every pair of consecutive frames of each crop as one 2-frame clip (N = 3 x (frames - 1))."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise FeatureInputError(f"ImageBind needs uint8 frames `F H W 3`, got {frames.dtype} {frames.shape}")
    x = torch.from_numpy(frames[ib_frame_indices(len(frames), fps)]).permute(0, 3, 1, 2).float()  # T 3 H W
    h, w = x.shape[-2:]
    size = (IMAGE_SIZE, int(IMAGE_SIZE * w / h)) if h <= w else (int(IMAGE_SIZE * h / w), IMAGE_SIZE)
    x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 255).round() / 255
    x = (x - torch.tensor(PIXEL_MEAN)[:, None, None]) / torch.tensor(PIXEL_STD)[:, None, None]
    h, w = size
    y, x0 = math.ceil((h - IMAGE_SIZE) / 2), math.ceil((w - IMAGE_SIZE) / 2)
    corners = [(0, x0), (y, x0), (h - IMAGE_SIZE, x0)] if h > w else [(y, 0), (y, x0), (y, w - IMAGE_SIZE)]
    crops = [x[:, :, top : top + IMAGE_SIZE, left : left + IMAGE_SIZE] for top, left in corners]
    clips = [crop[i : i + 2].transpose(0, 1) for crop in crops for i in range(len(crop) - 1)]  # 3 2 224 224
    return torch.stack(clips)

PATCH = (2, 14, 14)
"""Vision patches: 2 frames x 14 x 14 pixels, so a 2-frame 224 px clip is 1 x 16 x 16 patches."""
AUDIO_KERNEL, AUDIO_STRIDE = 16, 10
"""Audio patches: 16 x 16 mel-frame squares every 10, so a 128 x 204 fbank is 12 x 19 patches."""
AUDIO_LOGIT_SCALE = 20.0
"""ImageBind scales the unit audio embedding by this fixed factor (a buffer in the file); cosines ignore it."""
TOWERS = ("vision", "audio")
SKIPPED_TOWERS = ("text", "depth", "thermal", "imu")
"""Towers of imagebind_huge.pth that the score does not use; their keys are dropped on load."""


@dataclass(frozen=True)
class ImageBindConfig:
    """Sizes of the two towers; the defaults are imagebind_huge's (the only published checkpoint)."""

    vision_width: int = 1280
    """Vision transformer width (ViT-H)."""
    vision_depth: int = 32
    """Vision transformer blocks."""
    vision_heads: int = 16
    """Vision attention heads."""
    audio_width: int = 768
    """Audio transformer width (ViT-B)."""
    audio_depth: int = 12
    """Audio transformer blocks."""
    audio_heads: int = 12
    """Audio attention heads."""
    embed_dim: int = 1024
    """Shared embedding size of all modalities."""

    def __post_init__(self) -> None:
        for width, heads in ((self.vision_width, self.vision_heads), (self.audio_width, self.audio_heads)):
            if width % heads:
                raise ValueError(f"ImageBindConfig: width {width} is not divisible by {heads} heads")


class _Mlp(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, 4 * width)
        self.fc2 = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    """Pre-norm transformer block; ImageBind's audio tower adds a learned key/value token (add_bias_kv)."""

    def __init__(self, width: int, heads: int, bias_kv: bool) -> None:
        super().__init__()
        self.norm_1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = nn.MultiheadAttention(width, heads, bias=True, add_bias_kv=bias_kv, batch_first=True)
        self.norm_2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = _Mlp(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm_2(x))


class _Trunk(nn.Module):
    def __init__(self, width: int, depth: int, heads: int, pre_norm: bool, bias_kv: bool) -> None:
        super().__init__()
        # The published Sequential(LayerNorm, Rearrange) keeps its norm at `pre_transformer_layer.0`.
        self.pre_transformer_layer = nn.Sequential(nn.LayerNorm(width, eps=1e-6)) if pre_norm else nn.Identity()
        self.blocks = nn.Sequential(*(_Block(width, heads, bias_kv) for _ in range(depth)))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.pre_transformer_layer(tokens))


class _Stem(nn.Module):
    """Patchify (`proj`), flatten to tokens `B N D`, optional LayerNorm (`norm_layer`, the audio tower's)."""

    def __init__(self, proj: nn.Module, norm_layer: nn.Module | None) -> None:
        super().__init__()
        self.proj = proj
        self.norm_layer = norm_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2)
        return self.norm_layer(x) if self.norm_layer is not None else x


class _PositionEmbedding(nn.Module):
    def __init__(self, tokens: int, width: int) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, tokens, width))


class _Preprocessor(nn.Module):
    """Patch tokens behind a class token, plus learned positions (ImageBind's RGBDT/AudioPreprocessor)."""

    def __init__(self, stem: _Stem, patches: int, width: int) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, width))
        self.rgbt_stem = stem
        self.pos_embedding_helper = _PositionEmbedding(1 + patches, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.rgbt_stem(x)
        tokens = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1)
        return tokens + self.pos_embedding_helper.pos_embed


class _ClassToken(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]


class _Normalize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1)


class _LogitScale(nn.Module):
    """A fixed scale kept as `log_logit_scale` (a buffer in the file), clipped at 100 as ImageBind does."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.register_buffer("log_logit_scale", torch.tensor(math.log(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_logit_scale.exp().clamp(max=100.0) * x


class ImageBindAV(nn.Module):
    """ImageBind's vision and audio towers in the published layout (`modality_{preprocessors,trunks,heads,
    postprocessors}.{vision,audio}`); inference only (the audio tower's drop-path is the identity here)."""

    def __init__(self, config: ImageBindConfig = ImageBindConfig()) -> None:
        super().__init__()
        c = config
        patch_grid = (IMAGE_SIZE // PATCH[1]) ** 2
        audio_grid = ((MEL_BINS - AUDIO_KERNEL) // AUDIO_STRIDE + 1) * ((AUDIO_FRAMES - AUDIO_KERNEL) // AUDIO_STRIDE + 1)
        # Slot 0 of the vision stem is ImageBind's PadIm2Video (repeats a still image to 2 frames); it has no
        # weights and the inputs here are always 2-frame clips, so an Identity keeps the conv at `proj.1`.
        vision_stem = _Stem(
            nn.Sequential(nn.Identity(), nn.Conv3d(3, c.vision_width, PATCH, stride=PATCH, bias=False)), None
        )
        audio_stem = _Stem(
            nn.Conv2d(1, c.audio_width, AUDIO_KERNEL, stride=AUDIO_STRIDE, bias=False), nn.LayerNorm(c.audio_width)
        )
        self.modality_preprocessors = nn.ModuleDict({
            "vision": _Preprocessor(vision_stem, patch_grid, c.vision_width),
            "audio": _Preprocessor(audio_stem, audio_grid, c.audio_width),
        })
        self.modality_trunks = nn.ModuleDict({
            "vision": _Trunk(c.vision_width, c.vision_depth, c.vision_heads, pre_norm=True, bias_kv=False),
            "audio": _Trunk(c.audio_width, c.audio_depth, c.audio_heads, pre_norm=False, bias_kv=True),
        })
        self.modality_heads = nn.ModuleDict({
            name: nn.Sequential(nn.LayerNorm(width, eps=1e-6), _ClassToken(), nn.Linear(width, c.embed_dim, bias=False))
            for name, width in (("vision", c.vision_width), ("audio", c.audio_width))
        })
        self.modality_postprocessors = nn.ModuleDict({
            "vision": _Normalize(),
            "audio": nn.Sequential(_Normalize(), _LogitScale(AUDIO_LOGIT_SCALE)),
        })

    def embed(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        """Embeddings `N E` of `N` inputs: 2-frame clips `N 3 2 224 224` or fbanks `N 1 128 204`."""
        tokens = self.modality_preprocessors[modality](x)
        tokens = self.modality_trunks[modality](tokens)
        return self.modality_postprocessors[modality](self.modality_heads[modality](tokens))


def _tower(key: str) -> str:
    """The modality of a published key: `modality_trunks.text.blocks.0...` -> `text`."""
    return key.split(".")[1] if "." in key else ""


def load_imagebind(path: str | Path, config: ImageBindConfig = ImageBindConfig()) -> ImageBindAV:
    """The vision and audio towers with the weights of `path` (imagebind_huge.pth's layout), in eval mode.

    Keys of the text, depth, thermal and IMU towers are skipped; every vision and audio tensor must match
    the model (names and shapes) and none may be missing. Built on the meta device, the model takes the
    file's tensors as they are.
    """
    state = read_state_dict(path, WeightsError)
    kept = {k: v for k, v in state.items() if _tower(k) not in SKIPPED_TOWERS}
    with torch.device("meta"):
        model = ImageBindAV(config)
    try:
        model.load_state_dict(kept, strict=True, assign=True)
    except RuntimeError as e:
        text = str(e)
        raise WeightsError(
            f"{path} does not match ImageBind's vision/audio towers ({config}): {text[:800]}"
            f"{'...' if len(text) > 800 else ''}; is it imagebind_huge.pth?"
        ) from None
    return model.eval()


@torch.no_grad()
def _embed_mean(model: ImageBindAV, modality: str, x: torch.Tensor, batch_size: int) -> np.ndarray:
    """The mean of the inputs' embeddings, as ImageBind averages its clips (and av-benchmark its crops)."""
    device = next(model.parameters()).device
    out = [model.embed(modality, x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out).mean(dim=0).numpy()


def imagebind_embeddings(
    model: ImageBindAV, frames: np.ndarray, fps: float, wave: np.ndarray, sample_rate: int, batch_size: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """(vision `E`, audio `E`) embeddings of one clip: uint8 frames `F H W 3` at `fps`, a mono 16 kHz wave."""
    if frames is None or wave is None:
        raise FeatureInputError("the ImageBind score needs both the frames and the sound of a clip")
    vision = _embed_mean(model, "vision", imagebind_video_input(frames, fps), batch_size)
    audio = _embed_mean(model, "audio", imagebind_audio_input(wave, sample_rate), batch_size)
    return vision, audio


def ib_scores(vision: np.ndarray, audio: np.ndarray) -> np.ndarray:
    """Per-clip cosine similarity `N` of vision and audio embeddings `N E` (IB-Score is their mean)."""
    vision, audio = np.asarray(vision, np.float64), np.asarray(audio, np.float64)
    if vision.ndim != 2 or vision.shape != audio.shape:
        raise FeatureInputError(f"IB-Score needs two `N E` arrays of one shape, got {vision.shape} and {audio.shape}")
    norms = np.linalg.norm(vision, axis=1) * np.linalg.norm(audio, axis=1)
    return (vision * audio).sum(axis=1) / np.maximum(norms, 1e-8)
