"""PLLaVA: the published layout loads through the converter, LoRA merges correctly, and clips get captions."""

import csv
import json

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from tests.fixtures.pllava import LORA_RANK, TINY_POOLING, make_pllava_folder
from uniform_cli.cli.main import app
from uniform_cli.media.io import write_mp4
from uniform_cli.prep.captioners.contract import CaptionError
from uniform_cli.prep.captioners.pllava import (
    PllavaCaptioner,
    build_pllava,
    convert_pllava_state_dict,
    load_pllava,
    read_safetensors,
)
from uniform_cli.stage import StatusTable


@pytest.fixture(scope="module")
def pllava_dir(tmp_path_factory):
    return make_pllava_folder(tmp_path_factory.mktemp("pllava-tiny"))


def test_published_layout_is_sharded_with_peft_names(pllava_dir):
    index = json.loads((pllava_dir / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 3
    keys = set(index["weight_map"])
    q = "language_model.base_model.model.model.layers.0.self_attn.q_proj"
    assert {f"{q}.base_layer.weight", f"{q}.lora_A.default.weight", f"{q}.lora_B.default.weight"} <= keys
    assert "language_model.base_model.model.lm_head.weight" in keys
    assert "vision_tower.vision_model.embeddings.patch_embedding.weight" in keys
    assert "multi_modal_projector.linear_2.weight" in keys


def test_converter_merges_with_alpha_over_r():
    w, a, b = torch.randn(6, 5), torch.randn(2, 5), torch.randn(6, 2)
    peft = {
        "language_model.base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight": w,
        "language_model.base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight": a,
        "language_model.base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight": b,
        "vision_tower.vision_model.post_layernorm.weight": torch.ones(3),
    }
    out = convert_pllava_state_dict(peft, lora_alpha=4)
    q = "language_model.model.layers.0.self_attn.q_proj.weight"
    assert set(out) == {q, "vision_tower.vision_model.post_layernorm.weight"}
    torch.testing.assert_close(out["language_model.model.layers.0.self_attn.q_proj.weight"], w + 2.0 * b @ a)
    out = convert_pllava_state_dict(peft, lora_alpha=4, lora_r=8)  # an explicit rank overrides the stored one
    torch.testing.assert_close(out["language_model.model.layers.0.self_attn.q_proj.weight"], w + 0.5 * b @ a)
    del peft["language_model.base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight"]
    with pytest.raises(CaptionError, match="incomplete"):
        convert_pllava_state_dict(peft)


class UnmergedLora(nn.Module):
    """PEFT's LoRA forward: base(x) + scale * B(A(x)), kept separate from the base weight."""

    def __init__(self, base: nn.Linear, a: torch.Tensor, b: torch.Tensor, scale: float):
        super().__init__()
        self.base, self.a, self.b, self.scale = base, a, b, scale

    def forward(self, x):
        return self.base(x) + self.scale * (x @ self.a.T @ self.b.T)


def reference_unmerged(folder, lora_alpha):
    """The published weights loaded without the converter, LoRA applied at run time."""
    raw = read_safetensors(folder)
    config = json.loads((folder / "config.json").read_text())
    model = build_pllava(config, TINY_POOLING, "cpu", torch.float32)
    expected = set(model.state_dict())

    def rename(k):
        k = k.replace("language_model.base_model.model.", "language_model.").replace(".base_layer.", ".")
        flat = k.replace("vision_tower.vision_model.", "vision_tower.")
        return k if k in expected else flat

    model.load_state_dict({rename(k): v for k, v in raw.items() if ".lora_" not in k}, strict=True)
    plain = build_pllava(config, TINY_POOLING, "cpu", torch.float32)
    plain.load_state_dict(model.state_dict())
    for name, module in list(model.language_model.named_modules()):
        for proj in ("q_proj", "v_proj"):
            if hasattr(module, proj):
                key = f"language_model.base_model.model.{name}.{proj}"
                a, b = raw[f"{key}.lora_A.default.weight"], raw[f"{key}.lora_B.default.weight"]
                setattr(module, proj, UnmergedLora(getattr(module, proj), a, b, lora_alpha / LORA_RANK))
    return model, plain


def inputs(tokenizer, batch=2):
    prompts = ["USER:<image> Describe the video in details. ASSISTANT:", "USER:<image> the sound of rain ASSISTANT:"]
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts[:batch], return_tensors="pt", padding=True)
    pixels = torch.randn(batch, 4, 3, 56, 56, generator=torch.Generator().manual_seed(3))
    return enc.input_ids, enc.attention_mask, pixels


def test_merged_lora_matches_unmerged_forward(pllava_dir):
    merged, tokenizer, _, _ = load_pllava(str(pllava_dir), pooling_shape=TINY_POOLING, device="cpu")
    reference, without_lora = reference_unmerged(pllava_dir, lora_alpha=4.0)
    ids, mask, pixels = inputs(tokenizer)
    with torch.no_grad():
        got = merged(ids, mask, pixels)
        want = reference(ids, mask, pixels)
        base = without_lora(ids, mask, pixels)
    assert got.shape == (2, ids.shape[1] - 1 + int(np.prod(TINY_POOLING)), len(tokenizer))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert (got - base).abs().max() > 1e-3  # the LoRA is not a no-op, so the check above has teeth


def test_video_tokens_change_the_logits(pllava_dir):
    model, tokenizer, _, _ = load_pllava(str(pllava_dir), pooling_shape=TINY_POOLING, device="cpu")
    ids, mask, pixels = inputs(tokenizer, batch=1)
    with torch.no_grad():
        a = model(ids, mask, pixels)[:, -1]
        b = model(ids, mask, torch.zeros_like(pixels))[:, -1]
    assert (a - b).abs().max() > 1e-5


def test_batched_left_padded_generation_equals_one_by_one(pllava_dir):
    model, tokenizer, _, _ = load_pllava(str(pllava_dir), pooling_shape=TINY_POOLING, device="cpu")
    ids, mask, pixels = inputs(tokenizer)
    assert (mask == 0).any()  # the two prompts differ in length: the batch is left padded
    eos = tokenizer.eos_token_id
    batched = model.generate(ids, mask, pixels, 12, eos)
    for i in range(2):
        real = mask[i].bool()
        alone = model.generate(ids[i : i + 1, real], mask[i : i + 1, real], pixels[i : i + 1], 12, eos)
        assert batched[i, : alone.shape[1]].tolist() == alone[0].tolist()


def greedy_without_cache(model, ids, pixels, steps, eos):
    """Reference greedy decode of one unpadded prompt `1 L`: the whole forward is rerun on the prompt plus the
    tokens so far at every step (no KV cache, no padding) and the last position's argmax is appended."""
    out = []
    with torch.no_grad():
        for _ in range(steps):
            token = model(ids, torch.ones_like(ids), pixels)[0, -1].argmax().item()
            out.append(token)
            if token == eos:
                break
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return out


def test_generate_equals_greedy_decode_without_cache(pllava_dir):
    model, tokenizer, _, _ = load_pllava(str(pllava_dir), pooling_shape=TINY_POOLING, device="cpu")
    # A short and a long prompt: the short one is left padded by many tokens, enough to change its continuation
    # if the padding were attended to.
    prompts = [
        "USER:<image> ASSISTANT:",
        "USER:<image> Describe the video in details. Pay attention to all objects in the video. ASSISTANT:",
    ]
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    ids, mask = enc.input_ids, enc.attention_mask
    pixels = torch.randn(2, 4, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    rows = [ids[i : i + 1, mask[i].bool()] for i in range(2)]
    steps = 12
    free = [greedy_without_cache(model, rows[i], pixels[i : i + 1], steps, eos=-1) for i in range(2)]
    # Stop the long row on a token the padded row never produces: the padded row's whole continuation is
    # compared, and the row that ended must be filled with pad ids.
    eos = next(t for t in free[1] if t not in free[0])
    want = [greedy_without_cache(model, rows[i], pixels[i : i + 1], steps, eos) for i in range(2)]
    assert len(want[0]) == steps and len(want[1]) < steps
    pad = model.settings.pad_token_id
    got = model.generate(ids, mask, pixels, steps, eos)
    assert got.tolist() == [row + [pad] * (steps - len(row)) for row in want]


def test_missing_model_says_what_to_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CaptionError) as err:
        PllavaCaptioner("ermu2001/pllava-7b", device="cpu")
    assert "hf download ermu2001/pllava-7b" in str(err.value)
    assert "nothing is downloaded automatically" in str(err.value)
    with pytest.raises(CaptionError, match="does not exist"):
        PllavaCaptioner(str(tmp_path / "nowhere" / "pllava-7b"), device="cpu")


def test_missing_shard_is_reported(pllava_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(pllava_dir, broken)
    (broken / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(CaptionError, match="missing"):
        load_pllava(str(broken), pooling_shape=TINY_POOLING, device="cpu")


def make_clips(root, keys):
    """Clips as the clip stage leaves them: ROOT/clips/{key}.mp4 (68 frames, 17 fps) and ROOT/clips.csv."""
    rng = np.random.default_rng(0)
    table = StatusTable(root / "clips.csv", ["video", "audio", "label", "split"])
    for i, key in enumerate(keys):
        frames = np.zeros((68, 64, 64, 3), np.uint8)
        frames[..., i % 3] = np.linspace(0, 255, 68, dtype=np.uint8)[:, None, None]
        frames += rng.integers(0, 20, frames.shape, dtype=np.uint8)
        write_mp4(root / "clips" / f"{key}.mp4", frames, 17)
        from uniform_cli.stage import ItemResult

        table.record(ItemResult(key, "ok", "", {"video": f"clips/{key}.mp4", "label": "dog barking", "split": "train"}))
    table.close()


def write_manifest(path, keys):
    rows = ["id,url,start,end,label,split"] + [f"{k},/data/{k}.mp4,0,4,dog barking,train" for k in keys]
    path.write_text("\n".join(rows) + "\n")
    return path


def read_captions(root):
    with open(root / "captions.csv", newline="") as f:
        return {row["key"]: row for row in csv.DictReader(f)}


def test_caption_command_end_to_end(pllava_dir, tmp_path):
    root = tmp_path / "data"
    keys = ["clip_a", "clip_b", "clip_c"]
    make_clips(root, keys[:2])  # clip_c was never clipped
    manifest = write_manifest(tmp_path / "m.csv", keys)
    args = ["caption", str(manifest), "--root", str(root), "--model", str(pllava_dir), "--pooling", "2,2,2"]
    args += ["--max-new-tokens", "12", "--batch-size", "2", "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = read_captions(root)
    assert set(rows) == set(keys)
    assert rows["clip_c"]["status"] == "no_clip"
    for key in keys[:2]:
        row = rows[key]
        # A random tiny model writes gibberish: any of ok / empty / repeated / echoed is a correct record.
        assert row["status"] in {"ok", "empty", "repeated", "echoed"}, row
        assert row["captioner"] == "pllava" and row["model"] == str(pllava_dir)
        assert row["status"] == "empty" or row["text"].strip()
        assert "\n" not in row["text"] and "</s>" not in row["text"]
    # A rerun has nothing left to caption (clip_c is still unclipped) and leaves the captions as they were.
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert {k: r["text"] for k, r in read_captions(root).items()} == {k: r["text"] for k, r in rows.items()}
