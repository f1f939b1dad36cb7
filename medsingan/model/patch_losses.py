"""Explicit patch losses that can replace SinGAN's WGAN-GP critic (issue 14).

A scale's generated image ``G`` and real image ``R`` (``(1, C, H, W)``) are cut into square
patches of ``k x k`` pixels on a grid of stride ``s``, each patch a raw vector of dimension
``d = C k^2`` (raw pixels, not network features: cheap, and nothing to train or download).
Three distances between the two patch sets, each divided by ``d`` so that it is a per-pixel
squared error, in the units of the reconstruction MSE it is added to:

* ``frechet``: the Fréchet distance between Gaussians fitted to the patch vectors,
  ``(||mu_r - mu_g||^2 + tr(S_r + S_g - 2 (S_r S_g)^(1/2))) / d``;
* ``nn-patch``: the mean squared distance of each generated patch to its nearest real patch,
  ``E_{p_g} min_{p_r} ||p_g - p_r||^2 / d``, exact over the real patches given;
* ``aligned-nn``: the patches at identical locations, ``E_i ||P_G(i) - P_R(i)||^2 / d``.

The functions are pure: patch matrices in, a scalar tensor out, differentiable in the
generated patches. Which patches enter each step is drawn by :class:`PatchLoss`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("frechet", "nn-patch", "aligned-nn")
# the distance block of one chunk of the nearest-neighbour search holds at most this many
# entries (16 MiB of float32), whatever the number of patches
NN_BLOCK_ELEMENTS = 1 << 22


def extract_patches(image: torch.Tensor, size: int, stride: int = 1) -> torch.Tensor:
    """The ``size x size`` patches of ``image`` ``(1, C, H, W)`` on a grid of ``stride`` px,
    row-major over the grid: a ``(L, C * size^2)`` matrix (one patch per row)."""
    return F.unfold(image, kernel_size=size, stride=stride)[0].T


def patch_moments(patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``mu`` and the symmetric square root ``S^(1/2)`` of the (unbiased) covariance of
    the rows of ``patches`` ``(n, d)``: what :func:`frechet_patch_loss` needs of the real
    patches (eigenvalues below 0, rounding, are taken as 0)."""
    mu = patches.mean(0)
    centred = patches - mu
    covariance = centred.T @ centred / (len(patches) - 1)
    values, vectors = torch.linalg.eigh(covariance)
    return mu, (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def frechet_patch_loss(generated: torch.Tensor, real_mu: torch.Tensor,
                       real_sqrt_cov: torch.Tensor) -> torch.Tensor:
    """Fréchet distance between the generated patches ``(n, d)`` and the real patches'
    Gaussian (mean ``real_mu``, covariance square root ``A = real_sqrt_cov``), over ``d``.

    With ``X`` the centred generated patches and ``S_g = X^T X / (n - 1)``,
    ``tr (S_r S_g)^(1/2) = tr (A S_g A)^(1/2)`` (similar matrices share eigenvalues), and the
    eigenvalues of ``A S_g A = (X A)^T (X A) / (n - 1)`` are the squared singular values of
    ``X A / sqrt(n - 1)``. So the trace term is the nuclear norm ``||X A||_* / sqrt(n - 1)``:
    no matrix square root of ``S_g``, and a gradient (``U V^T``) that stays bounded where
    ``S_g`` is singular. Needs ``n >= 2``.
    """
    n, d = generated.shape
    mu = generated.mean(0)
    centred = generated - mu
    trace_g = centred.pow(2).sum() / (n - 1)
    trace_r = real_sqrt_cov.pow(2).sum()  # tr(A A) = tr S_r, A symmetric
    cross = torch.linalg.svdvals(centred @ real_sqrt_cov).sum() / (n - 1) ** 0.5
    return ((mu - real_mu).pow(2).sum() + trace_r + trace_g - 2 * cross) / d


def nearest_patches(generated: torch.Tensor, real: torch.Tensor,
                    block_elements: int = NN_BLOCK_ELEMENTS) -> torch.Tensor:
    """Index (into the rows of ``real``) of each generated patch's nearest real patch in
    squared L2 distance: exact, without gradients, ``generated`` taken in chunks so that a
    distance block never exceeds ``block_elements`` entries."""
    chunk = max(1, block_elements // max(1, len(real)))
    with torch.no_grad():
        real_sq = real.pow(2).sum(1)
        nearest = [torch.argmin(real_sq - 2 * part @ real.T, dim=1)  # ||p_g||^2 is constant
                   for part in generated.detach().split(chunk)]
    return torch.cat(nearest)


def nn_patch_loss(generated: torch.Tensor, real: torch.Tensor,
                  block_elements: int = NN_BLOCK_ELEMENTS) -> torch.Tensor:
    """``mean_g min_r ||p_g - p_r||^2 / d`` over the generated patches ``(n, d)`` and the real
    patches ``(m, d)``. The minimum's gradient is the gradient at its arg-min, so the
    neighbours are searched without gradients (:func:`nearest_patches`, memory-bounded) and
    the distances to them recomputed with gradients: ``O(n d)`` memory for the graph."""
    nearest = real[nearest_patches(generated, real, block_elements)]
    return (generated - nearest).pow(2).mean()


def aligned_patch_loss(generated: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """``mean_i ||P_G(i) - P_R(i)||^2 / d``: row ``i`` of ``generated`` and of ``real`` are the
    patches at the same location."""
    return (generated - real).pow(2).mean()


class PatchLoss:
    """One scale's explicit loss: the real image's patches prepared once, a random selection of
    patches drawn from ``rng`` at every call.

    Per call, ``patches`` grid locations (all of them when the grid has fewer) are drawn for
    the generated image; ``nn-patch`` compares them with ``patches`` real patches drawn
    independently (a new random subset every call), ``aligned-nn`` with the real patches at the
    same locations, ``frechet`` with the moments of every real patch of the grid.

    >>> real = torch.linspace(-1, 1, 625).reshape(1, 1, 25, 25)
    >>> rng = torch.Generator().manual_seed(0)
    >>> aligned = PatchLoss("aligned-nn", real, size=7, stride=1, patches=64, rng=rng)
    >>> float(aligned(real)), round(float(aligned(real + 0.1)), 6)
    (0.0, 0.01)
    """

    def __init__(self, name: str, real: torch.Tensor, *, size: int, stride: int, patches: int,
                 rng: torch.Generator) -> None:
        if name not in LOSSES:
            raise ValueError(f"unknown patch loss {name!r}")
        self.name, self.size, self.stride, self.patches, self.rng = (name, size, stride,
                                                                     patches, rng)
        self.real = extract_patches(real.detach().float(), size, stride)
        if name == "frechet":
            self.real_mu, self.real_sqrt_cov = patch_moments(self.real.double())
            self.real_mu, self.real_sqrt_cov = self.real_mu.float(), self.real_sqrt_cov.float()

    def _draw(self, total: int) -> torch.Tensor:
        order = torch.randperm(total, generator=self.rng, device=self.rng.device)
        return order[:self.patches].to(self.real.device)

    def __call__(self, fake: torch.Tensor) -> torch.Tensor:
        """The loss of the generated image ``fake`` ``(1, C, H, W)``, differentiable in it."""
        generated = extract_patches(fake.float(), self.size, self.stride)
        where = self._draw(len(generated))
        if self.name == "aligned-nn":
            return aligned_patch_loss(generated[where], self.real[where])
        if self.name == "frechet":
            return frechet_patch_loss(generated[where], self.real_mu, self.real_sqrt_cov)
        return nn_patch_loss(generated[where], self.real[self._draw(len(self.real))])
