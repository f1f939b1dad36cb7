"""The patch engine draws reproducible samples from a scan's own patches, with no training."""

import numpy as np
import pydicom
import pytest
import torch
import torch.nn.functional as F

from medsingan.engines.patch import PatchEngineConfig, PatchSampler, scan_pyramid
from medsingan.errors import ConfigError
from tests.conftest import dicom_file

# small scales searched everywhere, the finer ones (over 600 px) through the local search
SMALL = PatchEngineConfig(min_size=16, max_size=48, global_pixels=600)


@pytest.fixture(scope="module")
def chest() -> torch.Tensor:
    """pydicom-data's CR chest in display polarity, [-1, 1], 48 px on its longer side."""
    dataset = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
    pixels = dataset.pixel_array.astype(np.float32)
    pixels = pixels.max() - pixels  # MONOCHROME1
    unit = torch.from_numpy((pixels - pixels.min()) / np.ptp(pixels) * 2 - 1)[None, None]
    return F.interpolate(unit, size=(48, 45), mode="area")


@pytest.fixture(scope="module")
def sampler(chest) -> PatchSampler:
    return PatchSampler(scan_pyramid(chest, SMALL), SMALL)


def test_the_pyramid_is_the_training_pyramid(sampler):
    assert [tuple(r.shape[-2:]) for r in sampler.reals][0] == (48, 45)
    assert min(sampler.reals[-1].shape[-2:]) == 16
    assert sampler._exhaustive(sampler.coarsest) and not sampler._exhaustive(0)


def test_sample_i_of_a_seed_is_the_same_whatever_the_batch(sampler):
    together = sampler.sample([0, 1, 2, 3], seed=7)
    alone = torch.cat([sampler.sample([i], seed=7) for i in range(4)])
    shifted = sampler.sample([2, 3], seed=7)
    assert torch.equal(together, alone)
    assert torch.equal(together[2:], shifted)


def test_samples_differ_from_each_other_and_from_the_scan(sampler, chest):
    images = sampler.sample([0, 1, 2], seed=0)
    real = sampler.reals[0]
    assert images.shape == (3, 1, 48, 45)
    assert images.min() >= -1 and images.max() <= 1
    assert all((images[i] - real[0]).abs().mean() > 0.01 for i in range(3))
    assert (images[0] - images[1]).abs().mean() > 0.01
    assert not torch.equal(images, sampler.sample([0, 1, 2], seed=1))


def test_without_noise_every_scale_reproduces_the_scan(chest):
    # the noise-free start is the scan's coarsest scale: each search finds the patch in its own
    # place (blur against blur, then sharp against sharp), locally as well as exhaustively
    config = PatchEngineConfig(min_size=16, max_size=48, global_pixels=600, noise=0.0)
    reals = scan_pyramid(chest, config)
    image = PatchSampler(reals, config).sample([0], seed=0)
    torch.testing.assert_close(image, reals[0], atol=1e-5, rtol=0)
    sampler = PatchSampler(reals, config)
    start = sampler.sample([0], seed=0, start_scale=sampler.coarsest - 1)
    torch.testing.assert_close(start, reals[0], atol=1e-5, rtol=0)


def test_starts_finer_than_n_minus_1_are_refused(sampler):
    assert sampler.sample([0], seed=3, start_scale=sampler.coarsest - 1).shape == (1, 1, 48, 45)
    with pytest.raises(ConfigError, match="starts at N or N-1"):
        sampler.sample([0], seed=3, start_scale=sampler.coarsest - 2)


def test_another_output_size(chest):
    reals = scan_pyramid(chest, SMALL)
    shapes = [(h, round(w * 1.5)) for h, w in (r.shape[-2:] for r in reals)]
    assert PatchSampler(reals, SMALL, shapes).sample([0], 0).shape == (1, 1, 48, 68)


@pytest.mark.parametrize("change", [{"patch_size": 0}, {"noise": -1.0}, {"min_size": 5},
                                    {"scale_factor": 1.0}, {"window": -1}])
def test_unusable_settings_are_refused(change):
    with pytest.raises(ConfigError, match="patch engine"):
        PatchEngineConfig(**change).validate()
