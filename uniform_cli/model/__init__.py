"""The UniForm backbone: `packing` (audible frames), `layers` and `blocks` (STDiT3), `uniform` (the model,
`build_model`, token and FLOP counts), `checkpoint` (save/load, PixArt and Open-Sora import).

Nothing is imported here, so reading a recipe does not pull in torch."""
