"""Class labels as captions (the paper's captions for Landscape), optionally in a template."""

from __future__ import annotations

import string

from uniform_cli.prep.captioners.contract import CaptionError, CaptionInput


def check_template(template: str) -> None:
    """A template must use `{label}` and nothing else in braces (e.g. "the sound of {label}")."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as err:
        raise CaptionError(f"--template {template!r} is not a valid template: {err}") from None
    if fields != ["label"]:
        raise CaptionError(f"--template must contain {{label}} exactly once and no other field, got {template!r}")


class LabelCaptioner:
    """The item's label as its caption: `template.format(label=...)`, or the bare label."""

    name = "labels"
    num_frames = 0
    prompt = ""

    def __init__(self, template: str | None = None):
        if template is not None:
            check_template(template)
        self.template = template
        self.model = template or "{label}"

    def caption(self, inputs: list[CaptionInput]) -> list[str]:
        return [self.format(i.label) for i in inputs]

    def format(self, label: str) -> str:
        label = " ".join(label.split())
        return self.template.format(label=label) if self.template and label else label
