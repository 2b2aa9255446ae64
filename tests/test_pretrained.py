"""Pretrained parts: a folder or a hub id in the local cache, never a download, and one error base for all."""

from __future__ import annotations

from pathlib import Path

import pytest

from uniform_cli.pretrained import CodecError, PretrainedError, download_command, resolve_pretrained

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cached_snapshot(cache: Path, repo_id: str, files: dict[str, str]) -> Path:
    """A hub snapshot laid out as the Hugging Face cache stores it (refs/main -> snapshots/COMMIT)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    for name, text in files.items():
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).write_text(text)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


def test_a_folder_resolves_to_itself_when_it_holds_the_files(tmp_path):
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_text("")
    assert resolve_pretrained(tmp_path, ["model.safetensors", "vae/*"], "part") == tmp_path
    with pytest.raises(PretrainedError, match=r"part: .* lacks vocoder/\*, tokenizer.json; a complete checkpoint"):
        resolve_pretrained(tmp_path, ["vae/*", "vocoder/*", "tokenizer.json"], "part")


def test_a_hub_id_resolves_only_through_the_local_cache(tmp_path):
    snapshot = cached_snapshot(tmp_path, "owner/model", {"config.json": "{}", "model.safetensors": ""})
    found = resolve_pretrained("owner/model", ["config.json", "model.safetensors"], "part", cache_dir=tmp_path)
    assert found == snapshot
    with pytest.raises(PretrainedError) as err:
        resolve_pretrained("owner/absent", ["config.json"], "part", cache_dir=tmp_path)
    message = str(err.value)
    assert f"`hf download owner/absent config.json --cache-dir {tmp_path}`" in message
    assert "nothing is downloaded automatically" in message


def test_a_missing_folder_names_the_example_to_download(tmp_path):
    with pytest.raises(CodecError, match=r"folder .* does not exist.*`hf download owner/model --include 'vae/\*'`"):
        resolve_pretrained(tmp_path / "nowhere", ["vae/*"], "part", example="owner/model", error=CodecError)


def test_download_command_names_files_or_patterns():
    assert download_command("o/m") == "hf download o/m"
    assert download_command("o/m", ["config.json", "model.safetensors"]) == "hf download o/m config.json model.safetensors"
    assert download_command("o/m", ["vae/*", "vocoder/*"], "c") == "hf download o/m --include 'vae/*' 'vocoder/*' --cache-dir c"


def test_every_part_reports_missing_weights_as_a_pretrained_error(tmp_path):
    from uniform_cli.eval.weights import WeightsError, weight_path
    from uniform_cli.latents.audio_vae import AudioLDMCodec
    from uniform_cli.latents.text import TextEncoder, TextEncoderError
    from uniform_cli.latents.video_vae import OpenSoraVAE
    from uniform_cli.prep.captioners.contract import CaptionError, CaptionWeightsError
    from uniform_cli.prep.captioners.hf import HFCaptioner
    from uniform_cli.prep.captioners.pllava import PllavaCaptioner

    nowhere = str(tmp_path / "no" / "such" / "folder")
    attempts = [
        (CodecError, lambda: OpenSoraVAE.from_pretrained(nowhere)),
        (CodecError, lambda: AudioLDMCodec.from_pretrained(nowhere)),
        (TextEncoderError, lambda: TextEncoder.from_pretrained(nowhere)),
        (CaptionWeightsError, lambda: PllavaCaptioner(nowhere, device="cpu")),
        (CaptionWeightsError, lambda: HFCaptioner(nowhere, device="cpu")),
        (WeightsError, lambda: weight_path(tmp_path, "vggish")),
    ]
    for kind, attempt in attempts:
        with pytest.raises(kind) as err:
            attempt()
        assert isinstance(err.value, PretrainedError)
    assert issubclass(CaptionWeightsError, CaptionError)  # `uniform caption` reports it like other setup errors
