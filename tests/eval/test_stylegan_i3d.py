"""StyleGAN-V's I3D detector: a tiny TorchScript module with its call signature, saved with torch.jit.save
under the published name, loaded and called the way StyleGAN-V calls it."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from uniform_cli.eval.stylegan_i3d import load_styleganv_i3d, styleganv_features, styleganv_input
from uniform_cli.eval.weights import WEIGHT_FILES, FeatureInputError, WeightsError, weight_path


class TinyDetector(nn.Module):
    """The published detector's signature and output: uint8 `B 3 F H W` in, 400 features (or probabilities)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, 400, (3, 4, 4), stride=(2, 4, 4))

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        x = x.float()
        if rescale:
            x = x / 127.5 - 1.0
        if resize:
            x = F.interpolate(x, size=(x.shape[2], 16, 16), mode="trilinear", align_corners=False)
        features = self.conv(x).mean(dim=(2, 3, 4))
        return features if return_features else features.softmax(dim=-1)


class NotADetector(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _save(tmp_path, module: nn.Module):
    torch.jit.save(torch.jit.script(module), str(tmp_path / WEIGHT_FILES["i3d_styleganv"].filename))
    return weight_path(tmp_path, "i3d_styleganv")


def _frames(n: int = 12) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 24, 32, 3), dtype=np.uint8)


def test_features_are_the_detector_output_under_styleganv_call(tmp_path):
    torch.manual_seed(0)
    detector = TinyDetector().eval()
    loaded = load_styleganv_i3d(_save(tmp_path, detector))
    frames = _frames()
    x = styleganv_input(frames)
    assert x.dtype == torch.uint8 and x.shape == (1, 3, 12, 24, 32) and x.is_contiguous()
    assert torch.equal(x[0, :, 5, 7, 9], torch.from_numpy(frames[5, 7, 9]))
    features = styleganv_features(loaded, frames)
    assert features.shape == (400,)
    with torch.no_grad():
        expected = detector(x, rescale=True, resize=True, return_features=True)[0].numpy()
        probabilities = detector(x, rescale=True, resize=True, return_features=False)[0].numpy()
        unscaled = detector(x, rescale=False, resize=True, return_features=True)[0].numpy()
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)
    # the flags matter: pre-softmax features, on the detector's own [-1, 1] scaling
    assert not np.allclose(features, probabilities) and not np.allclose(features, unscaled)


def test_wrong_files_and_short_clips_are_refused(tmp_path):
    with pytest.raises(WeightsError, match=r"i3d_torchscript\.pt.*dropbox"):
        weight_path(tmp_path, "i3d_styleganv")
    with pytest.raises(WeightsError, match="not StyleGAN-V's I3D detector"):
        load_styleganv_i3d(_save(tmp_path, NotADetector()))
    torch.save({"weight": torch.zeros(3)}, tmp_path / "i3d_torchscript.pt")  # a state dict, not an archive
    with pytest.raises(WeightsError, match="cannot read .* as a TorchScript archive"):
        load_styleganv_i3d(tmp_path / "i3d_torchscript.pt")
    (tmp_path / "i3d_torchscript.pt").write_bytes(b"<html>dropbox login page</html>")
    with pytest.raises(WeightsError, match="TorchScript archive"):
        load_styleganv_i3d(tmp_path / "i3d_torchscript.pt")
    with pytest.raises(FeatureInputError, match="at least 9 frames"):
        styleganv_input(_frames(8))
    with pytest.raises(FeatureInputError, match="uint8"):
        styleganv_input(_frames().astype(np.float32))


def test_eval_reports_fvd_and_kvd_from_the_styleganv_detector_and_names_it(tmp_path):
    from uniform_cli.eval.metrics import frechet_distance
    from uniform_cli.eval.run import evaluate
    from uniform_cli.media.io import read_video, write_mp4

    torch.manual_seed(0)
    detector = TinyDetector().eval()
    weights = tmp_path / "weights"
    weights.mkdir()
    _save(weights, detector)
    rng = np.random.default_rng(0)
    for folder, brightness in (("gen", 60), ("ref", 180)):
        (tmp_path / folder).mkdir()
        for i in range(3):
            frames = np.clip(rng.normal(brightness, 40, (12, 32, 32, 3)), 0, 255).astype(np.uint8)
            write_mp4(tmp_path / folder / f"c{i}.mp4", frames, 17.0, crf=0)
    result = evaluate(tmp_path / "gen", tmp_path / "ref", ["fvd-styleganv", "kvd-styleganv"], weights, "cpu")
    assert set(result.values) == {"FVD-StyleGAN-V", "KVD-StyleGAN-V", "KVD-StyleGAN-V-std"}
    assert result.details["fvd_detector"]["FVD-StyleGAN-V"].startswith("styleganv")

    def features(folder):
        with torch.no_grad():
            return np.stack([detector(styleganv_input(read_video(p)[0]), rescale=True, resize=True,
                                      return_features=True)[0].numpy() for p in sorted((tmp_path / folder).glob("*.mp4"))])

    expected = frechet_distance(features("ref"), features("gen"))
    assert result.values["FVD-StyleGAN-V"] == pytest.approx(expected, rel=1e-4)
