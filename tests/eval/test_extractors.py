"""Each extractor: random weights saved in the published layout load back through the real loader."""

import numpy as np
import pytest
import torch

from uniform_cli.eval.i3d import InceptionI3d, i3d_input, i3d_logits, load_i3d
from uniform_cli.eval.panns import Cnn14, load_cnn14, panns_features
from uniform_cli.eval.vggish import VGGish, load_vggish, vggish_embeddings, vggish_examples, vggish_mel_matrix
from uniform_cli.eval.weights import WEIGHT_FILES, WeightsError, weight_path
from uniform_cli.pretrained import read_state_dict


def _published(tmp_path, name, state):
    path = tmp_path / WEIGHT_FILES[name].filename
    torch.save(state, path)
    return weight_path(tmp_path, name)


def _wave(seconds: float, rate: int = 16000) -> np.ndarray:
    return (0.1 * np.random.default_rng(0).standard_normal(int(seconds * rate))).astype(np.float32)


def test_vggish_examples_are_96_by_64_log_mels():
    examples = vggish_examples(_wave(4.0), 16000)
    assert examples.shape == (4, 1, 96, 64)  # 398 frames of 10 ms -> 4 whole 0.96 s examples
    assert vggish_examples(_wave(4.0, 22050), 22050).shape == (4, 1, 96, 64)
    mel = vggish_mel_matrix()
    assert mel.shape == (257, 64) and (mel[0] == 0).all() and (mel.sum(axis=0) > 0).all()
    with pytest.raises(ValueError, match="0.975 s"):
        vggish_examples(_wave(0.5), 16000)


def test_vggish_round_trip_in_torchvggish_layout(tmp_path):
    torch.manual_seed(0)
    model = VGGish().eval()
    state = model.state_dict()
    assert {"features.0.weight", "features.13.bias", "embeddings.0.weight", "embeddings.4.weight"} <= state.keys()
    loaded = load_vggish(_published(tmp_path, "vggish", state))
    wave = _wave(2.5)
    embeddings = vggish_embeddings(loaded, wave, 16000)
    assert embeddings.shape == (2, 128)
    np.testing.assert_allclose(embeddings, vggish_embeddings(model, wave, 16000), rtol=1e-5, atol=1e-6)


def test_panns_round_trip_in_published_checkpoint_layout(tmp_path):
    torch.manual_seed(0)
    model = Cnn14().eval()
    state = model.state_dict()
    assert {"spectrogram_extractor.stft.conv_real.weight", "logmel_extractor.melW", "bn0.running_mean",
            "conv_block6.bn2.weight", "fc1.weight", "fc_audioset.bias"} <= state.keys()
    # The published file wraps the weights: {"model": state_dict, "iteration": N}.
    loaded = load_cnn14(_published(tmp_path, "panns", {"model": state, "iteration": 560000}))
    embedding, logits = panns_features(loaded, _wave(1.0), 16000)
    assert embedding.shape == (2048,) and logits.shape == (527,)
    expected = panns_features(model, _wave(1.0), 16000)
    np.testing.assert_allclose(logits, expected[1], rtol=1e-4, atol=1e-5)


def test_i3d_round_trip_in_pytorch_i3d_layout(tmp_path):
    torch.manual_seed(0)
    model = InceptionI3d().eval()
    # rgb_imagenet.pt predates BatchNorm's num_batches_tracked: the loader must accept its absence.
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert {"Conv3d_1a_7x7.conv3d.weight", "Mixed_5c.b3b.bn.running_var", "logits.conv3d.bias"} <= state.keys()
    loaded = load_i3d(_published(tmp_path, "i3d", state))
    for key, value in state.items():
        assert torch.equal(loaded.state_dict()[key], value), key
    frames = np.random.default_rng(0).integers(0, 256, (9, 48, 64, 3), dtype=np.uint8)
    x = i3d_input(frames)
    assert x.shape == (1, 3, 9, 224, 224) and x.min() >= -1 and x.max() <= 1
    # One forward pass at the real 224 px; test_run's FVD test runs more.
    assert i3d_logits(loaded, frames).shape == (400,)


def test_missing_weights_name_the_file_and_where_to_put_it(tmp_path):
    with pytest.raises(WeightsError, match=r"Cnn14_16k_mAP=0\.438\.pth.*zenodo"):
        weight_path(tmp_path, "panns")
    with pytest.raises(WeightsError, match="--weights-dir"):
        weight_path(None, "vggish")


def test_a_file_with_the_wrong_layout_is_rejected(tmp_path):
    state = {k.replace("embeddings", "classifier"): v for k, v in VGGish().state_dict().items()}
    with pytest.raises(WeightsError, match="does not match VGGish"):
        load_vggish(_published(tmp_path, "vggish", state))
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read"):
        read_state_dict(tmp_path / "broken.pth", WeightsError)
