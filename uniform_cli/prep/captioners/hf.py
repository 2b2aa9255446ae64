"""Any transformers image-text-to-text model that takes video and has a chat template, as a captioner.

LLaVA-NeXT-Video, LLaVA-OneVision, Qwen2-VL / Qwen2.5-VL, SmolVLM2, ... load through `AutoProcessor` +
`AutoModelForImageTextToText`; the clip's sampled frames go in as one video (`{"type": "video"}` in the chat
template, `videos=` to the processor). `video_input="frames"` sends them as that many images instead, for
image-only models. Decoding is greedy; the prompt is the same as PLLaVA's (system text + question).
"""

from __future__ import annotations

import torch

from uniform_cli.prep.captioners.contract import (
    OPEN_SORA_QUESTION,
    OPEN_SORA_SYSTEM,
    CaptionError,
    CaptionInput,
    CaptionWeightsError,
    clean_caption,
    default_device,
)
from uniform_cli.pretrained import resolve_pretrained

EXAMPLE_MODEL = "llava-hf/LLaVA-NeXT-Video-7B-hf"
VIDEO_INPUTS = ("auto", "video", "frames")


def chat_messages(text: str, num_frames: int, video_input: str) -> list[dict]:
    """One user turn: the clip (one video, or `num_frames` images) followed by the instruction."""
    media = [{"type": "video"}] if video_input == "video" else [{"type": "image"}] * num_frames
    return [{"role": "user", "content": [*media, {"type": "text", "text": text}]}]


class HFCaptioner:
    """Greedy captions from a transformers image-text-to-text model with a chat template."""

    name = "hf"

    def __init__(
        self,
        model: str = EXAMPLE_MODEL,
        *,
        num_frames: int = 4,
        max_new_tokens: int = 256,
        question: str = OPEN_SORA_QUESTION,
        system: str = OPEN_SORA_SYSTEM,
        video_input: str = "auto",
        device: str | None = None,
    ):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if video_input not in VIDEO_INPUTS:
            raise CaptionError(f"video input must be one of {VIDEO_INPUTS}, got {video_input!r}")
        if num_frames < 1 or max_new_tokens < 1:
            raise CaptionError("num_frames and max_new_tokens must be >= 1")
        folder = resolve_pretrained(model, [], "hf captioner model (a transformers model with its processor files)",
                                    example=EXAMPLE_MODEL, error=CaptionWeightsError)
        device = device or default_device()
        dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
        try:
            self.processor = AutoProcessor.from_pretrained(str(folder))
            self.net = AutoModelForImageTextToText.from_pretrained(str(folder), dtype=dtype).to(device).eval()
        except (OSError, ValueError, KeyError, ImportError) as err:
            raise CaptionError(f"{model}: cannot load it as an image-text-to-text model: {err}") from None
        if not getattr(self.processor, "chat_template", None):
            raise CaptionError(f"{model}: the processor has no chat template; pick a chat (instruct) model")
        has_video = getattr(self.processor, "video_processor", None) is not None
        if video_input == "auto":
            video_input = "video" if has_video else "frames"
        if video_input == "video" and not has_video:
            raise CaptionError(f"{model}: the processor takes no video; use --hf-input frames for image models")
        self.video_input = video_input
        self.model = model
        self.num_frames = num_frames
        self.max_new_tokens = max_new_tokens
        self.prompt = f"{system} {question}" if system else question
        self.device = device
        self.processor.tokenizer.padding_side = "left"
        self.text = self.processor.apply_chat_template(
            chat_messages(self.prompt, num_frames, video_input), add_generation_prompt=True, tokenize=False
        )

    def caption(self, inputs: list[CaptionInput]) -> list[str]:
        media = [list(i.frames) for i in inputs]
        kind = "videos" if self.video_input == "video" else "images"
        batch = self.processor(
            text=[self.text] * len(inputs), **{kind: media}, return_tensors="pt", padding=True
        ).to(self.device)
        dtype = next(self.net.parameters()).dtype
        batch = {k: v.to(dtype) if torch.is_floating_point(v) else v for k, v in batch.items()}
        tokenizer = self.processor.tokenizer
        with torch.no_grad():
            out = self.net.generate(
                **batch,
                do_sample=False,
                max_new_tokens=self.max_new_tokens,
                pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            )
        new = out[:, batch["input_ids"].shape[1] :]
        return [clean_caption(t) for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
