"""UniForm toolkit: data stages, model, diffusion, training and generation for joint audio-video.

Axis vocabulary used in every shape comment:
    video pixels  `B F H W 3` uint8 (prepared clips) or `B 3 F H W` in [-1, 1] (VAE input)
    video latent  `B C F H W`   (C=4, F=20, H=W=32 for a 4 s clip)
    audio wave    `B S`         (S=64,000 samples at 16 kHz)
    mel           `B T M`       (T=400 frames, M=64 mel bins)
    audio latent  `B C T M`     (C=8, T=100, M=16)
    audible frame `B C F H W'`  (W' = video width + audio strip + task block)
    tokens        `B N D`
    text          `B L D_text`  with a mask `B L`
"""

__version__ = "0.1.0"
