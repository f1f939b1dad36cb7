"""The copy score finds near-verbatim copies of a source's patches, and only those."""

import numpy as np
import pydicom
import pytest
import torch
import torch.nn.functional as F

from medsingan.metrics.copy import CopyScorer, nearest_patch_distances
from tests.conftest import dicom_file


def _radiograph(name: str, size: int) -> torch.Tensor:
    """A CR film read with pydicom, in display polarity, its stored range mapped to [-1, 1],
    shrunk to ``size`` px on its longer side, ``(1, 1, h, w)``."""
    dataset = pydicom.dcmread(dicom_file(name))
    pixels = dataset.pixel_array.astype(np.float32)
    if dataset.PhotometricInterpretation == "MONOCHROME1":
        pixels = pixels.max() - pixels
    unit = torch.from_numpy((pixels - pixels.min()) / np.ptp(pixels) * 2 - 1)[None, None]
    height, width = unit.shape[-2:]
    shape = (round(height * size / max(height, width)), round(width * size / max(height, width)))
    return F.interpolate(unit, size=shape, mode="area").clamp(-1, 1)


@pytest.fixture(scope="module")
def chest() -> torch.Tensor:
    return _radiograph("RG1_UNCR.dcm", 96)  # a chest film


@pytest.fixture(scope="module")
def hand() -> torch.Tensor:
    return _radiograph("RG3_UNCR.dcm", 96)  # another patient's extremity film, also CR


def test_the_scan_itself_is_a_complete_copy(chest):
    result = CopyScorer(chest)(chest)[0]
    assert result.score == 1.0
    # every textured 16 px patch is copied: the region is the film minus its flat borders
    assert result.region_px > 0.8 * chest.shape[-2] * chest.shape[-1]


def test_an_unrelated_scan_of_the_same_modality_copies_nothing(chest, hand):
    assert CopyScorer(chest)(hand)[0].score < 0.02
    assert CopyScorer(hand)(chest)[0].score < 0.02


def test_a_region_pasted_from_the_source_is_found_with_its_size(chest, hand):
    other = hand.clone()
    # 40 x 40 px of the chest's right lung, pasted into the hand film at another place
    other[..., 30:70, 20:60] = chest[..., 20:60, 15:55]
    result = CopyScorer(chest)(other)[0]
    # the 16 px patches on the 8 px grid that lie inside the block start at rows 32, 40, 48
    # and columns 24, 32, 40: together they cover 32 x 32 px of it, and nothing outside
    assert result.region_px == 32 * 32
    assert 0 < result.score < 0.2
    assert CopyScorer(chest)(hand)[0].region_px == 0


def test_flat_patches_are_not_copies():
    source = torch.full((1, 1, 40, 40), -1.0)
    source[..., 20:, :] = torch.rand(1, 1, 20, 40) * 2 - 1
    flat = torch.full((1, 1, 32, 32), -1.0)  # air matches the source's air exactly
    assert CopyScorer(source)(flat)[0].score == 0.0


def _brute_force(sample: np.ndarray, source: np.ndarray, size: int, stride: int) -> np.ndarray:
    """RMS distance of every grid patch of ``sample`` to every patch of ``source``, by loops."""
    def origins(length: int) -> list[int]:
        starts = list(range(0, length - size + 1, stride))
        return starts if starts[-1] == length - size else [*starts, length - size]

    sources = [source[r:r + size, c:c + size] for r in range(source.shape[0] - size + 1)
               for c in range(source.shape[1] - size + 1)]
    result = np.zeros((len(origins(sample.shape[0])), len(origins(sample.shape[1]))))
    for i, r in enumerate(origins(sample.shape[0])):
        for j, c in enumerate(origins(sample.shape[1])):
            query = sample[r:r + size, c:c + size]
            result[i, j] = min(np.sqrt(np.mean((query - patch) ** 2)) for patch in sources)
    return result


@pytest.mark.parametrize("chunk_mb", [64.0, 0.002])  # one chunk; many bands and chunks
def test_nearest_distances_equal_a_brute_force_search(chest, chunk_mb):
    source = chest[..., 30:52, 20:45]
    noise = torch.randn(1, 1, 27, 31, generator=torch.Generator().manual_seed(0))
    sample = chest[..., 10:37, 40:71] + 0.05 * noise  # 27 x 31: the last origins are extra
    found = nearest_patch_distances(sample, source, patch_size=6, stride=4, chunk_mb=chunk_mb)
    expected = _brute_force(sample[0, 0].double().numpy(), source[0, 0].double().numpy(), 6, 4)
    assert found.shape == expected.shape == (7, 8)
    np.testing.assert_allclose(found.numpy(), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("chunk_mb", [64.0, 0.01])  # the search by mean; every source patch
def test_the_copy_decision_equals_the_full_search(chest, chunk_mb):
    # noise of about the threshold's size puts many patches on either side of it
    noise = torch.randn(chest.shape, generator=torch.Generator().manual_seed(1))
    sample = chest + 0.02 * noise
    scorer = CopyScorer(chest, chunk_mb=chunk_mb)
    informative, copied = scorer.copied(sample)
    full = scorer.distances(sample).numpy() <= scorer.threshold
    assert 0.1 < copied.sum() / informative.sum() < 0.9
    np.testing.assert_array_equal(copied, informative & full)
