"""SIFID: the Fréchet distance, the weights-loading path and per-image scores on real scans."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_fid.fid_score import calculate_frechet_distance

from medsingan.io import read_scan
from medsingan.metrics.diversity import diversity, similarity_to_source
from medsingan.metrics.sifid import (
    FID_WEIGHTS_NAME,
    SifidScorer,
    SifidWeightsError,
    find_inception_weights,
    frechet_distance,
)
from tests.conftest import dicom_file


@pytest.fixture(scope="module")
def ct_unit() -> torch.Tensor:
    image = read_scan(dicom_file("CT_small.dcm")).image
    unit = (image - image.min()) / (image.max() - image.min()) * 2 - 1
    return torch.from_numpy(unit)[None, None]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frechet_distance_matches_pytorch_fid(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(500, 16)), rng.normal(loc=0.3, scale=1.5, size=(400, 16)) @ \
        rng.normal(size=(16, 16))
    args = (a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert frechet_distance(*args) == pytest.approx(calculate_frechet_distance(*args), rel=1e-6)


def test_frechet_distance_of_known_gaussians():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]),
                            np.array([[9.0]])) == pytest.approx(4.0 + 1.0)


def test_missing_weights_fail_fast_with_the_documented_message(tmp_path, monkeypatch):
    monkeypatch.delenv("MEDSINGAN_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(SifidWeightsError, match="--inception-weights FILE.*--no-sifid"):
        find_inception_weights()
    with pytest.raises(SifidWeightsError, match="not found"):
        find_inception_weights(tmp_path / "nope.pth")


def test_weights_are_found_from_the_environment_and_the_hub_cache(tmp_path, monkeypatch,
                                                                  inception_weights):
    monkeypatch.setenv("MEDSINGAN_INCEPTION_WEIGHTS", str(inception_weights))
    assert find_inception_weights() == inception_weights
    monkeypatch.delenv("MEDSINGAN_INCEPTION_WEIGHTS")
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / FID_WEIGHTS_NAME).symlink_to(inception_weights)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    assert find_inception_weights() == cache / FID_WEIGHTS_NAME


def test_a_file_of_the_wrong_shapes_is_refused(tmp_path):
    wrong = tmp_path / "wrong.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(3, 3, 3, 3)}, wrong)
    with pytest.raises(SifidWeightsError, match="not the FID Inception weights"):
        SifidScorer(wrong)


def test_real_scan_scores_zero_against_itself_and_more_when_changed(inception_weights, ct_unit):
    scorer = SifidScorer(inception_weights)
    assert scorer.features(ct_unit).shape == (1, 64, 30, 30)  # 128 px -> conv s2 -> pool s2
    noisy = ct_unit + 0.2 * torch.randn(ct_unit.shape, generator=torch.Generator().manual_seed(0))
    scores = scorer.score(ct_unit, torch.cat([ct_unit, ct_unit.flip(-1), noisy]))
    assert scores[0] == pytest.approx(0.0, abs=1e-6)
    assert scores[2] > scores[1] > 0.0
    assert "block 0" in scorer.variant and "native size" in scorer.variant


def test_batched_scores_equal_one_by_one(inception_weights, ct_unit):
    scorer = SifidScorer(inception_weights)
    batch = torch.cat([ct_unit.roll(k, dims=-1) for k in (0, 5, 17)])
    together = scorer.score(ct_unit, batch)
    alone = [scorer.score(ct_unit, image[None])[0] for image in batch]
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-8)


def test_diversity_and_similarity(ct_unit):
    copies = ct_unit.expand(4, -1, -1, -1)
    assert diversity(copies, ct_unit) == pytest.approx(0.0)
    shuffled = torch.cat([ct_unit.roll(k, dims=-2) for k in (0, 10, 20, 30)])
    assert diversity(shuffled, ct_unit) > 0.1
    similarity = similarity_to_source(torch.cat([ct_unit, ct_unit.flip(-2)]), ct_unit)
    assert similarity[0] == pytest.approx(1.0, abs=1e-4) and similarity[1] < 0.9
