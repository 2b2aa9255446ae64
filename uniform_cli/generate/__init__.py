"""Generation: `UniFormPipeline` (a checkpoint as a Python object), `Job` (any task, any length) and the
prompts-CSV batch runner."""

from uniform_cli.generate.jobs import Job
from uniform_cli.generate.pipeline import GenerationResult, UniFormPipeline

__all__ = ["GenerationResult", "Job", "UniFormPipeline"]
