"""Synchformer (Iashin et al. 2024) and the DeSync metric as av-benchmark (hkchengrex/av-benchmark) reports it.

Protocol (av-benchmark, the MMAudio evaluation): the picture is resampled to 25 fps, its shorter side
resized to 224 (bicubic, antialiased) and centre-cropped to 224x224, scaled to [-1, 1], and cut into
segments of 16 frames every 8 frames (0.64 s every 0.32 s); the sound is 16 kHz mono cut into segments of
10,240 samples every 5,120, each turned into a 128-band HTK power mel spectrogram (STFT 1024, Hann window
400, hop 160, centred), log(x + 1e-6), padded with zeros to 66 frames and normalised as (x + 4.2677393) /
(2 * 4.5689974). Synchformer classifies 14 segments (4.8 s) of both at once into 21 offsets, -2.0 to +2.0 s
in 0.2 s steps. Each clip is scored on its first and its last 14 segments (one window when the clip is
exactly 4.8 s, counted twice as av-benchmark does), and DeSync is the mean |offset| over all those windows.

The weights are Synchformer's AudioSet model (24-01-04T16-39-21) as MMAudio republished it,
`synchformer_state_dict.pth`, which loads strictly into `Synchformer` with its own key names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from uniform_cli.eval.motionformer import FRAME_SIZE, SEGMENT_FRAMES, STEPS, ClsPooling, MotionFormer
from uniform_cli.eval.weights import FeatureInputError, load_into

VIDEO_FPS = 25
SAMPLE_RATE = 16000
FRAME_STEP = 8
AUDIO_SEGMENT = 10240
AUDIO_STEP = 5120
SEGMENTS = 14
"""Segments in one Synchformer input: 0.64 s + 13 x 0.32 s = 4.8 s."""
WINDOW_SECONDS = (SEGMENT_FRAMES + (SEGMENTS - 1) * FRAME_STEP) / VIDEO_FPS
MEL_BINS, MEL_FRAMES = 128, 66
N_FFT, WIN_LENGTH, HOP = 1024, 400, 160
LOG_OFFSET = 1e-6
MEL_MEAN, MEL_STD = -4.2677393, 4.5689974
MEL_PATCH, MEL_STRIDE = 16, 10
FREQ_PATCHES = (MEL_BINS - MEL_PATCH) // MEL_STRIDE + 1  # 12
TIME_PATCHES = (MEL_FRAMES - MEL_PATCH) // MEL_STRIDE + 1  # 6
MAX_OFFSET, OFFSET_CLASSES = 2.0, 21


# --- the window protocol and the offset math ---------------------------------------------------------------


def num_segments(length: int, segment: int, step: int) -> int:
    """Segments of `segment` items every `step` that fit in `length` items (0 when none does)."""
    return max(0, (length - segment) // step + 1)


def window_starts(segments: int, per_window: int = SEGMENTS) -> list[int]:
    """First segment of each scored window: the first and the last `per_window` segments."""
    if segments < per_window:
        raise FeatureInputError(f"DeSync needs {per_window} Synchformer segments ({WINDOW_SECONDS:.1f} s), got {segments}")
    return [0, segments - per_window]


def clip_segments(seconds: float) -> int:
    """Segments both streams have in a clip of `seconds` (picture at 25 fps, sound at 16 kHz)."""
    frames = math.floor(seconds * VIDEO_FPS + 1e-6)
    samples = math.floor(seconds * SAMPLE_RATE + 1e-6)
    # The two counts agree at whole multiples of 0.04 s; where they do not, the smaller keeps the last window
    # at the same time in both streams.
    return min(num_segments(frames, SEGMENT_FRAMES, FRAME_STEP), num_segments(samples, AUDIO_SEGMENT, AUDIO_STEP))


def offset_grid() -> torch.Tensor:
    """The 21 offset classes in seconds, -2.0 ... +2.0 (positive: the sound comes early)."""
    half = (OFFSET_CLASSES - 1) // 2
    return torch.arange(-half, half + 1, dtype=torch.float64) * MAX_OFFSET / half  # k * 2 / 10: 0.0 exactly


def predicted_offsets(logits: torch.Tensor) -> list[float]:
    """Offset logits `B 21` -> the most likely offset of each row in seconds."""
    return [float(offset_grid()[i]) for i in logits.argmax(dim=-1).tolist()]


def desync(window_offsets: list[list[float]]) -> float:
    """DeSync: mean |offset| over every scored window of every clip (lower is better)."""
    values = [abs(o) for clip in window_offsets for o in clip]
    if not values:
        raise ValueError("DeSync needs at least one scored window")
    return float(np.mean(values))


def resample_indices(num_frames: int, fps: float, target_fps: float, count: int) -> np.ndarray:
    """Source frame for each of `count` frames at `target_fps`: the latest one whose time, rounded to the
    target grid, is not after it (what FFmpeg's fps filter picks)."""
    rounded = np.floor(np.arange(num_frames) * target_fps / fps + 0.5)
    return np.clip(np.searchsorted(rounded, np.arange(count), side="right") - 1, 0, num_frames - 1)


def resample_wave(wave: np.ndarray, sample_rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """A mono float wave `S` at `sample_rate` -> at `target`, through FFmpeg's resampler (PyAV)."""
    import av

    wave = np.ascontiguousarray(wave, dtype=np.float32)
    if sample_rate == target:
        return wave
    frame = av.AudioFrame.from_ndarray(wave[None], format="flt", layout="mono")
    frame.sample_rate, frame.pts = sample_rate, 0
    resampler = av.AudioResampler(format="flt", layout="mono", rate=target)
    chunks = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame) + resampler.resample(None)]
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)


def sync_frames(frames: np.ndarray) -> torch.Tensor:
    """uint8 frames `F H W 3` -> `F 3 224 224` in [-1, 1]: shorter side to 224 (bicubic, antialiased, rounded
    back to uint8 as torchvision does), centre crop."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    h, w = x.shape[-2:]
    short, long = min(h, w), max(h, w)
    size_long = int(FRAME_SIZE * long / short)
    size = (FRAME_SIZE, size_long) if h <= w else (size_long, FRAME_SIZE)
    x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 255).round()
    top, left = int(round((size[0] - FRAME_SIZE) / 2)), int(round((size[1] - FRAME_SIZE) / 2))
    x = x[:, :, top : top + FRAME_SIZE, left : left + FRAME_SIZE]
    return (x / 255.0 - 0.5) / 0.5


def htk_mel_filters(sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = MEL_BINS) -> torch.Tensor:
    """Triangular HTK-mel filters over 0 .. sample_rate/2 without area normalisation, `n_fft//2+1 n_mels`
    (torchaudio's MelSpectrogram default, which Synchformer was trained with)."""
    freqs = torch.linspace(0, sample_rate // 2, n_fft // 2 + 1, dtype=torch.float64)
    top = 2595.0 * math.log10(1.0 + (sample_rate / 2) / 700.0)
    edges = 700.0 * (10 ** (torch.linspace(0.0, top, n_mels + 2, dtype=torch.float64) / 2595.0) - 1.0)
    gaps = edges[1:] - edges[:-1]
    slopes = edges[None, :] - freqs[:, None]
    rising, falling = -slopes[:, :-2] / gaps[:-1], slopes[:, 2:] / gaps[1:]
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()


def sync_log_mel(segments: torch.Tensor) -> torch.Tensor:
    """Sound segments `N 10240` -> normalised log-mel `N 66 128` (time, frequency)."""
    window = torch.hann_window(WIN_LENGTH, device=segments.device)
    spec = torch.stft(segments.float(), N_FFT, HOP, WIN_LENGTH, window, center=True, pad_mode="reflect",
                      return_complex=True).abs() ** 2  # N 513 65
    mel = torch.einsum("fm,nft->nmt", htk_mel_filters().to(segments.device), spec)
    log_mel = F.pad(torch.log(mel + LOG_OFFSET), (0, MEL_FRAMES - mel.shape[-1]))  # zeros after the log
    return ((log_mel - MEL_MEAN) / (2 * MEL_STD)).transpose(1, 2)


# --- the model ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SynchformerConfig:
    """Widths and depths; the defaults are the published model's (tests build tiny ones)."""

    width: int = 768
    """Feature width of both encoders and of the synchronisation transformer."""
    video_depth: int = 12
    """MotionFormer blocks."""
    video_heads: int = 12
    audio_depth: int = 12
    """AST layers."""
    audio_heads: int = 12
    sync_depth: int = 3
    """Blocks of the transformer that compares the two streams."""
    sync_heads: int = 8

    def __post_init__(self) -> None:
        for heads in (self.video_heads, self.audio_heads, self.sync_heads):
            if self.width % heads:
                raise ValueError(f"width {self.width} is not divisible by {heads} heads")


def _attention(q: nn.Linear, k: nn.Linear, v: nn.Linear, x: torch.Tensor, heads: int) -> torch.Tensor:
    """Plain multi-head self-attention of `B N D` with separate query/key/value projections."""
    split = [f(x).unflatten(-1, (heads, -1)).transpose(1, 2) for f in (q, k, v)]  # B h N d
    return F.scaled_dot_product_attention(*split).transpose(1, 2).flatten(2)


class _ASTLayer(nn.Module):
    """AST (a ViT) layer in transformers' names: pre-norm attention and GELU MLP, LayerNorm eps 1e-12."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        linear = lambda: nn.Linear(width, width)  # noqa: E731
        self.attention = nn.ModuleDict({
            "attention": nn.ModuleDict({"query": linear(), "key": linear(), "value": linear()}),
            "output": nn.ModuleDict({"dense": linear()}),
        })
        self.intermediate = nn.ModuleDict({"dense": nn.Linear(width, 4 * width)})
        self.output = nn.ModuleDict({"dense": nn.Linear(4 * width, width)})
        self.layernorm_before = nn.LayerNorm(width, eps=1e-12)
        self.layernorm_after = nn.LayerNorm(width, eps=1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.attention["attention"]
        attended = _attention(qkv["query"], qkv["key"], qkv["value"], self.layernorm_before(x), self.heads)
        x = x + self.attention["output"]["dense"](attended)
        return x + self.output["dense"](F.gelu(self.intermediate["dense"](self.layernorm_after(x))))


class _ASTModel(nn.Module):
    def __init__(self, width: int, depth: int, heads: int) -> None:
        super().__init__()
        self.embeddings = nn.Module()
        self.embeddings.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.embeddings.distillation_token = nn.Parameter(torch.zeros(1, 1, width))
        self.embeddings.position_embeddings = nn.Parameter(torch.zeros(1, 2 + FREQ_PATCHES * TIME_PATCHES, width))
        self.embeddings.patch_embeddings = nn.ModuleDict({"projection": nn.Conv2d(1, width, MEL_PATCH, MEL_STRIDE)})
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(_ASTLayer(width, heads) for _ in range(depth))
        self.layernorm = nn.LayerNorm(width, eps=1e-12)


class AudioEncoder(nn.Module):
    """Synchformer's AST: log-mel `N 66 128` -> 16x16 patches every 10 bins/frames (12 x 6), twelve layers,
    then each time column's 12 frequency patches pooled by a CLS layer -> features `N 6 D`."""

    def __init__(self, width: int = 768, depth: int = 12, heads: int = 12) -> None:
        super().__init__()
        self.ast = _ASTModel(width, depth, heads)
        self.freq_attn_agg = ClsPooling(width, heads, 4 * width)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        emb = self.ast.embeddings
        x = emb.patch_embeddings["projection"](mel.transpose(1, 2)[:, None]).flatten(2).transpose(1, 2)  # N (f t) D
        n = len(x)
        x = torch.cat([emb.cls_token.expand(n, -1, -1), emb.distillation_token.expand(n, -1, -1), x], dim=1)
        x = x + emb.position_embeddings
        for layer in self.ast.encoder.layer:
            x = layer(x)
        x = self.ast.layernorm(x)[:, 2:].unflatten(1, (FREQ_PATCHES, TIME_PATCHES)).transpose(1, 2)  # N t f D
        return self.freq_attn_agg(x.flatten(0, 1)).unflatten(0, (n, TIME_PATCHES))


class _SyncBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = nn.ModuleDict({name: nn.Linear(width, width) for name in ("key", "query", "value", "proj")})
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attn
        x = x + a["proj"](_attention(a["query"], a["key"], a["value"], self.ln1(x), self.heads))
        return x + self.mlp(self.ln2(x))


class SyncTransformer(nn.Module):
    """`[OFF] video [MOD] audio` tokens with learnt positions through a few blocks; the OFF token's output
    gives the 21 offset logits."""

    def __init__(self, width: int, depth: int, heads: int) -> None:
        super().__init__()
        self.vis_in_lnorm, self.aud_in_lnorm = nn.LayerNorm(width), nn.LayerNorm(width)
        self.OFF_tok = nn.Parameter(torch.zeros(1, 1, width))
        self.MOD_tok = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_emb_cfg = nn.Module()
        self.pos_emb_cfg.pos_emb = nn.Parameter(torch.zeros(1, 2 + SEGMENTS * (STEPS + TIME_PATCHES), width))
        self.blocks = nn.Sequential(*(_SyncBlock(width, heads) for _ in range(depth)))
        self.ln_f = nn.LayerNorm(width)
        self.off_head = nn.Linear(width, OFFSET_CLASSES)

    def forward(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        b = len(video)
        x = torch.cat([self.OFF_tok.expand(b, -1, -1), self.vis_in_lnorm(video),
                       self.MOD_tok.expand(b, -1, -1), self.aud_in_lnorm(audio)], dim=1)
        x = self.ln_f(self.blocks(x + self.pos_emb_cfg.pos_emb))
        return self.off_head(x[:, 0])


class Synchformer(nn.Module):
    """Both encoders (applied per segment) and the offset classifier over 14 segments of each."""

    def __init__(self, config: SynchformerConfig = SynchformerConfig()) -> None:
        super().__init__()
        c = config
        self.vfeat_extractor = MotionFormer(c.width, c.video_depth, c.video_heads)
        self.afeat_extractor = AudioEncoder(c.width, c.audio_depth, c.audio_heads)
        self.vproj, self.aproj = nn.Linear(c.width, c.width), nn.Linear(c.width, c.width)
        self.transformer = SyncTransformer(c.width, c.sync_depth, c.sync_heads)

    def compare(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """Segment features `B 14 8 D` and `B 14 6 D` -> offset logits `B 21`."""
        return self.transformer(self.vproj(video).flatten(1, 2), self.aproj(audio).flatten(1, 2))


def load_synchformer(path: str | Path, config: SynchformerConfig = SynchformerConfig()) -> Synchformer:
    """Synchformer with the weights of `synchformer_state_dict.pth` at `path`, float32, in eval mode."""
    return load_into(lambda: Synchformer(config), path).float()  # type: ignore[return-value]


# --- one clip ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipSync:
    """Synchformer's reading of one clip: the offset of each scored window and where the windows start."""

    offsets: list[float]
    """Predicted offset in seconds per window (positive: the sound comes early)."""
    window_starts: list[float]
    """Start of each window in seconds."""
    seconds: float
    """Length used: the shorter of picture and sound."""

    @property
    def desync(self) -> float:
        return float(np.mean(np.abs(self.offsets)))


@torch.no_grad()
def clip_sync(model: Synchformer, frames: np.ndarray, fps: float, wave: np.ndarray, sample_rate: int,
              batch_segments: int = SEGMENTS) -> ClipSync:
    """Score one clip of uint8 frames `F H W 3` at `fps` and a mono wave `S` (16 kHz: resample before)."""
    if sample_rate != SAMPLE_RATE:
        raise FeatureInputError(f"Synchformer needs {SAMPLE_RATE} Hz sound, got {sample_rate} Hz")
    frames, wave = np.asarray(frames), np.asarray(wave, dtype=np.float32)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or wave.ndim != 1 or fps <= 0:
        raise FeatureInputError(f"need uint8 frames `F H W 3` at fps > 0 and a mono wave, got {frames.shape}, "
                                f"{fps} fps, {wave.shape}")
    seconds = min(len(frames) / fps, len(wave) / SAMPLE_RATE)
    segments = clip_segments(seconds)
    if segments < SEGMENTS:
        raise FeatureInputError(f"DeSync scores {WINDOW_SECONDS:.1f} s windows (av-benchmark); the clip has "
                                f"{seconds:.2f} s of picture and sound")
    starts = window_starts(segments)
    device = next(model.parameters()).device
    used = sorted({s + i for s in starts for i in range(SEGMENTS)})
    count = used[-1] * FRAME_STEP + SEGMENT_FRAMES
    source = resample_indices(len(frames), fps, VIDEO_FPS, count)
    video, audio = {}, {}
    for i in range(0, len(used), batch_segments):
        chunk = used[i : i + batch_segments]
        clips = [sync_frames(frames[source[s * FRAME_STEP : s * FRAME_STEP + SEGMENT_FRAMES]]) for s in chunk]
        v = model.vfeat_extractor(torch.stack(clips).transpose(1, 2).to(device))  # N 8 D
        sound = torch.from_numpy(np.stack([wave[s * AUDIO_STEP : s * AUDIO_STEP + AUDIO_SEGMENT] for s in chunk]))
        a = model.afeat_extractor(sync_log_mel(sound.to(device)))  # N 6 D
        video.update(zip(chunk, v))
        audio.update(zip(chunk, a))
    windows = [range(s, s + SEGMENTS) for s in starts]
    logits = model.compare(torch.stack([torch.stack([video[i] for i in w]) for w in windows]),
                           torch.stack([torch.stack([audio[i] for i in w]) for w in windows]))
    step_seconds = FRAME_STEP / VIDEO_FPS
    return ClipSync(predicted_offsets(logits.float().cpu()), [round(s * step_seconds, 6) for s in starts], seconds)
