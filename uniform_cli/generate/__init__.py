"""Generation: `UniFormPipeline` (a checkpoint as a Python object) and the prompts-CSV batch runner."""

from uniform_cli.generate.pipeline import GenerationResult, UniFormPipeline

__all__ = ["GenerationResult", "UniFormPipeline"]
