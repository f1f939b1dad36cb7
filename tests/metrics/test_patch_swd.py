"""The patch SWD ranks image sets by how well they share the reference's patch statistics."""

import numpy as np
import pydicom
import pytest
import torch

from medsingan.metrics.patch_swd import PatchSWDScorer, laplacian_pyramid, patch_swd
from tests.conftest import dicom_file


@pytest.fixture(scope="module")
def mri() -> torch.Tensor:
    pixels = pydicom.dcmread(dicom_file("MR_small.dcm")).pixel_array.astype(np.float32)
    return torch.from_numpy((pixels - pixels.min()) / np.ptp(pixels) * 2 - 1)[None, None]


def test_identical_sets_are_at_distance_zero(mri):
    assert patch_swd(mri, mri.clone())["mean"] == 0.0


def test_distance_grows_with_the_damage(mri):
    crop = mri[..., 2:, 3:]  # the same anatomy, sampled at other pixel positions
    noise = torch.rand_like(mri) * 2 - 1
    blurred = torch.nn.functional.avg_pool2d(mri, 5, stride=1, padding=2)
    contrast = mri * 0.5
    scores = {name: patch_swd(mri, image)["mean"]
              for name, image in [("crop", crop), ("blurred", blurred), ("contrast", contrast),
                                  ("noise", noise)]}
    assert scores["crop"] < scores["blurred"] < scores["noise"]
    assert scores["crop"] < scores["contrast"]


def test_deterministic_for_a_seed_and_accepts_many_candidates(mri):
    candidates = torch.cat([mri, torch.flip(mri, dims=[3])])
    first = patch_swd(mri, candidates, seed=3, patches=512)
    assert first == patch_swd(mri, candidates, seed=3, patches=512)
    assert len(first["levels"]) >= 3


def test_laplacian_pyramid_halves_and_keeps_detail_in_the_first_band(mri):
    bands = laplacian_pyramid(mri, 3)
    assert [b.shape[-1] for b in bands] == [64, 32, 16]
    assert bands[0].abs().mean() < mri.abs().mean()


def test_images_smaller_than_a_patch_are_rejected():
    with pytest.raises(ValueError, match="patch"):
        patch_swd(torch.zeros(1, 1, 5, 5), torch.zeros(1, 1, 5, 5))


def test_cohort_scorer_gives_each_image_its_own_patch_swd(mri):
    # 64 x 64 has more patches than drawn at the finest level: the subsets must match too
    noise = torch.rand_like(mri) * 2 - 1
    batch = torch.cat([mri, torch.flip(mri, dims=[3]), noise])
    scorer = PatchSWDScorer(mri, (64, 64), patches=1024, directions=64, seed=5)
    scores = scorer(batch)
    alone = [patch_swd(mri, batch[i:i + 1], patches=1024, directions=64, seed=5)["mean"]
             for i in range(3)]
    np.testing.assert_allclose(scores, alone, rtol=1e-5)
    assert scores[0] < scores[2] and scores[1] < scores[2]


def test_cohort_scorer_refuses_another_size(mri):
    with pytest.raises(ValueError, match="built for"):
        PatchSWDScorer(mri, (64, 64))(mri[..., :60, :60])
