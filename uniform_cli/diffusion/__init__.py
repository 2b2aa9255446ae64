"""IDDPM diffusion as pure functions: schedule, task masks, hybrid loss, samplers, guidance."""
