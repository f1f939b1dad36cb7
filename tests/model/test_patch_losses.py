"""The explicit patch losses against plain computations of their formulas (numpy and scipy,
loops where that is the definition), on patches cut from real CT and MR slices."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import scipy.linalg
import torch

from medsingan.model.patch_losses import (
    PatchLoss,
    aligned_patch_loss,
    extract_patches,
    frechet_patch_loss,
    nn_patch_loss,
    patch_moments,
)
from tests.conftest import dicom_file


def _unit(name: str) -> np.ndarray:
    pixels = pydicom.dcmread(dicom_file(name)).pixel_array.astype(np.float64)
    return (pixels - pixels.min()) / (pixels.max() - pixels.min()) * 2 - 1


@pytest.fixture(scope="module")
def ct() -> np.ndarray:
    return _unit("CT_small.dcm")  # 128 x 128


@pytest.fixture(scope="module")
def mr() -> np.ndarray:
    return _unit("MR_small.dcm")  # 64 x 64


def _patches_by_hand(image: np.ndarray, size: int, stride: int) -> np.ndarray:
    """Row-major over the grid, each patch flattened row by row."""
    rows = []
    for top in range(0, image.shape[0] - size + 1, stride):
        for left in range(0, image.shape[1] - size + 1, stride):
            rows.append(image[top:top + size, left:left + size].ravel())
    return np.array(rows)


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array).float()


def test_patches_are_the_image_windows_on_the_grid(ct):
    crop = ct[40:60, 30:53]
    got = extract_patches(_tensor(crop)[None, None], 5, 3).numpy()
    np.testing.assert_allclose(got, _patches_by_hand(crop, 5, 3), atol=1e-6)


@pytest.mark.parametrize("block", [1 << 22, 7])  # one block; a few rows per block
def test_nearest_patch_loss_equals_brute_force(ct, mr, block):
    generated = _patches_by_hand(mr[20:34, 20:34], 5, 2)  # 25 patches of dimension 25
    real = _patches_by_hand(ct[50:70, 45:65], 5, 3)  # 36 patches
    expected = np.mean([min(((g - r) ** 2).sum() for r in real) for g in generated]) / 25
    given = _tensor(generated).requires_grad_(True)
    loss = nn_patch_loss(given, _tensor(real), block_elements=block)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    # the gradient of each term is the gradient at its nearest real patch
    nearest = np.array([real[np.argmin([((g - r) ** 2).sum() for r in real])]
                        for g in generated])
    np.testing.assert_allclose(given.grad.numpy(), 2 * (generated - nearest) / generated.size,
                               atol=1e-7)


def test_frechet_loss_equals_the_formula_with_scipy_sqrtm(ct, mr):
    real = _patches_by_hand(ct[30:90, 30:90], 4, 2)  # 841 patches of dimension 16
    generated = _patches_by_hand(mr[10:50, 10:50], 4, 2)  # 361
    mu_r, mu_g = real.mean(0), generated.mean(0)
    cov_r, cov_g = np.cov(real, rowvar=False), np.cov(generated, rowvar=False)
    root = scipy.linalg.sqrtm(cov_r @ cov_g).real
    expected = (((mu_r - mu_g) ** 2).sum() + np.trace(cov_r + cov_g - 2 * root)) / 16
    got = frechet_patch_loss(torch.from_numpy(generated), *patch_moments(torch.from_numpy(real)))
    assert float(got) == pytest.approx(expected, rel=1e-6)
    same = frechet_patch_loss(torch.from_numpy(real), *patch_moments(torch.from_numpy(real)))
    assert abs(float(same)) < 1e-9 * expected


def test_frechet_gradient_is_finite_for_a_flat_generated_image(ct):
    real = _tensor(_patches_by_hand(ct[30:90, 30:90], 7, 1))
    flat = torch.zeros(64, 49, requires_grad=True)  # a zero covariance: singular
    frechet_patch_loss(flat, *patch_moments(real)).backward()
    assert torch.isfinite(flat.grad).all()


def test_aligned_loss_equals_the_plain_formula(ct, mr):
    generated = _patches_by_hand(mr[:20, :20], 6, 2)
    real = _patches_by_hand(ct[60:80, 60:80], 6, 2)
    expected = np.mean([((g - r) ** 2).sum() for g, r in zip(generated, real, strict=True)]) / 36
    assert float(aligned_patch_loss(_tensor(generated), _tensor(real))) == pytest.approx(
        expected, rel=1e-5)


def test_each_loss_of_the_scan_against_itself_is_zero_and_positive_for_another(ct, mr):
    scan, other = _tensor(ct[:64, :64])[None, None], _tensor(mr)[None, None]
    for name in ("frechet", "nn-patch", "aligned-nn"):
        # more patches drawn than the grid holds: every one of them, so the scan matches itself
        loss = PatchLoss(name, scan, size=7, stride=3, patches=10_000,
                         rng=torch.Generator().manual_seed(1))
        assert abs(float(loss(scan))) < 1e-5, name
        assert float(loss(other)) > 0.01, name


def test_drawn_patches_follow_the_generator(ct):
    scan = _tensor(ct)[None, None]
    fake = scan.flip(-1)

    def losses(seed: int) -> list[float]:
        loss = PatchLoss("nn-patch", scan, size=7, stride=1, patches=256,
                         rng=torch.Generator().manual_seed(seed))
        return [float(loss(fake)) for _ in range(3)]

    assert losses(4) == losses(4)
    assert losses(4) != losses(5)
