"""Text encoder loaded from a tiny T5 encoder + offline tokenizer saved with save_pretrained."""

from __future__ import annotations

import pytest
import torch

from tests.fixtures.codecs import make_text_encoder_folder
from uniform_cli.latents.text import TextEncoder, TextEncoderError


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_text_encoder_folder(tmp_path_factory.mktemp("t5"), d_model=16)


@pytest.fixture(scope="module")
def encoder(folder):
    return TextEncoder.from_pretrained(folder, max_length=300)


def test_embeddings_and_mask_are_padded_to_the_longest_caption(encoder):
    emb, mask = encoder(["a dog", "the cat meows at night"])
    # "a dog" = 2 words + </s>; the longer caption = 5 words + </s>
    assert emb.shape == (2, 6, 16)
    assert emb.dtype == torch.float32 and mask.dtype == torch.bool
    assert mask.tolist() == [[True] * 3 + [False] * 3, [True] * 6]
    assert encoder.dim == 16
    assert torch.equal(emb[0, 3:], torch.zeros(3, 16))
    assert emb[0, :3].abs().sum(-1).min() > 0


def test_padding_does_not_change_valid_embeddings(encoder):
    alone, alone_mask = encoder(["a dog barks"])
    batched, batched_mask = encoder(["a dog barks", "rain falls on the roof and birds chirp in the forest"])
    n = int(alone_mask.sum())
    assert int(batched_mask[0].sum()) == n < batched.shape[1]
    torch.testing.assert_close(batched[0, :n], alone[0, :n], atol=1e-5, rtol=1e-5)


def test_unknown_words_are_spelt_out_not_dropped(encoder):
    _, known = encoder(["dog"])
    _, spelt = encoder(["zebra"])
    assert int(spelt.sum()) > int(known.sum())


def test_truncates_only_at_max_length(folder):
    short = TextEncoder.from_pretrained(folder, max_length=4)
    emb, mask = short(["a man plays guitar and sings in the forest", "a dog"])
    assert emb.shape == (2, 4, 16)
    assert mask.tolist() == [[True] * 4, [True] * 3 + [False]]


def test_chunked_calls_give_the_same_result(folder, encoder):
    captions = ["a dog barks", "the car engine starts", "rain"]
    one_at_a_time = TextEncoder.from_pretrained(folder, clips_per_call=1)
    emb, mask = encoder(captions)
    emb1, mask1 = one_at_a_time(captions)
    assert torch.equal(mask, mask1)
    torch.testing.assert_close(emb1, emb, atol=1e-6, rtol=1e-5)


def test_missing_model_says_what_to_download(tmp_path):
    with pytest.raises(TextEncoderError, match="hf download"):
        TextEncoder.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TextEncoderError, match="config.json"):
        TextEncoder.from_pretrained(tmp_path / "empty")
    with pytest.raises(TextEncoderError, match="hf download uniform-tests/no-such-t5"):
        TextEncoder.from_pretrained("uniform-tests/no-such-t5")


def test_bad_input_is_a_clear_error(encoder):
    with pytest.raises(TypeError, match="list of caption strings"):
        encoder("a dog")
    with pytest.raises(ValueError, match="no captions"):
        encoder([])


def test_missing_tokenizer_files_are_refused(tmp_path):
    folder = make_text_encoder_folder(tmp_path / "t5")
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer_config.json").unlink()
    with pytest.raises(TextEncoderError, match="tokenizer files"):
        TextEncoder.from_pretrained(folder)
