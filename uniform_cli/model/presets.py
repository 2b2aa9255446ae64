"""Named model presets: the one place a preset name maps to settings."""

from uniform_cli.config import ModelConfig

PRESETS: dict[str, ModelConfig] = {
    # Tiny: a training step on a laptop CPU in well under a second; shapes keep the paper's ratios
    # (Cv=4, Ca=8, 5 audio rows per video frame) so every packing path is exercised.
    "debug": ModelConfig(
        preset="debug",
        hidden_size=64,
        depth=2,
        num_heads=4,
        video_latent=(4, 4, 8, 8),
        audio_latent=(8, 20, 4),
        text_dim=32,
        text_len=16,
    ),
    # The demo (`uniform demo`, recipes/demo.toml): trains in minutes on a 2-core CPU. Latents of the weight-free
    # codecs for 32 x 32, 68-frame clips: "pixel" video [24, 20, 4, 4] and "mel" audio [16, 100, 4]; 32-wide
    # "hash" word embeddings of captions of at most 8 words. 240 tokens per clip.
    "demo": ModelConfig(
        preset="demo",
        hidden_size=128,
        depth=2,
        num_heads=4,
        video_latent=(24, 20, 4, 4),
        audio_latent=(16, 100, 4),
        text_dim=32,
        text_len=8,
    ),
    # The paper: STDiT3-XL/2 over Open-Sora VAE v1.2 and AudioLDM VAE latents of a 4 s clip, T5-XXL text.
    "XL/2": ModelConfig(
        preset="XL/2",
        hidden_size=1152,
        depth=28,
        num_heads=16,
        video_latent=(4, 20, 32, 32),
        audio_latent=(8, 100, 16),
        text_dim=4096,
        text_len=300,
    ),
}
