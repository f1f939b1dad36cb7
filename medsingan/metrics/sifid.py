"""Single-Image FID (SIFID, Rott Shaham et al. 2019).

SIFID is the Fréchet distance between two Gaussians fitted to the per-location feature vectors
of a real and a generated image, taken from an early InceptionV3 block:

    d^2 = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r^(1/2) S_g S_r^(1/2))^(1/2))

Features come from pytorch-fid's ``InceptionV3`` block 0 (the FID weights
``pt_inception-2015-12-05-6726825d.pth``, 64 channels after the first max-pool); a grayscale
image is repeated to three channels. The variant is recorded with every score because numbers
from other variants (the official script's torchvision weights before the max-pool, resized
inputs) are not comparable.
"""

from __future__ import annotations

import os
import tempfile
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from medsingan.errors import MedsinganError

FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   + FID_WEIGHTS_NAME)
WEIGHTS_ENV = "MEDSINGAN_INCEPTION_WEIGHTS"


class SifidWeightsError(MedsinganError):
    """The Inception weights SIFID needs are missing or are not the right file."""


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    The trace of the matrix square root is computed from the eigenvalues of the symmetric
    matrix ``S1^(1/2) S2 S1^(1/2)`` (same spectrum as ``S1 S2``), which stays real and stable
    for the rank-deficient covariances small images give.

    >>> eye = np.eye(2)
    >>> round(frechet_distance(np.zeros(2), eye, np.ones(2), 4 * eye), 6)
    4.0
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    values, vectors = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    root1 = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    middle = root1 @ sigma2 @ root1
    trace_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    distance = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_covmean
    return float(max(distance, 0.0))


def find_inception_weights(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The FID Inception weights file: ``explicit``, else $MEDSINGAN_INCEPTION_WEIGHTS, else
    torch's hub cache. Raises SifidWeightsError (before any work starts) when none exists."""
    candidates = []
    if explicit is not None:
        candidates.append(("--inception-weights", Path(explicit)))
    elif os.environ.get(WEIGHTS_ENV):
        candidates.append((WEIGHTS_ENV, Path(os.environ[WEIGHTS_ENV])))
    else:
        candidates.append(("torch hub cache", Path(torch.hub.get_dir()) / "checkpoints"
                           / FID_WEIGHTS_NAME))
    source, path = candidates[0]
    if path.is_file():
        return path
    raise SifidWeightsError(
        f"SIFID needs the Inception weights {FID_WEIGHTS_NAME} (not found at {path}, from "
        f"{source}): download it once from {FID_WEIGHTS_URL} and pass --inception-weights FILE "
        f"or set {WEIGHTS_ENV}, or skip scoring with --no-sifid")


class SifidScorer:
    """Per-location Inception features and SIFID of generated images against a real one.

    Images are ``(B, 1, H, W)`` (or ``(B, 3, H, W)``) float tensors in [-1, 1].
    """

    def __init__(self, weights: str | os.PathLike[str], *, resize_input: bool = False,
                 device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.resize_input = resize_input
        self.model = _load_block0(Path(weights), resize_input).to(self.device).eval()
        size = "resized to 299" if resize_input else "native size"
        self.variant = (f"pytorch-fid {version('pytorch-fid')} FID-Inception block 0 "
                        f"(after first max-pool, 64 ch), {size}")

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 64, h, w)`` block-0 features; input [-1, 1] gray or RGB."""
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        unit = ((images.to(self.device, torch.float32) + 1.0) / 2.0).clamp(0.0, 1.0)
        return self.model(unit)[0]

    def statistics(self, images: torch.Tensor) -> list[tuple[np.ndarray, np.ndarray]]:
        """Mean and covariance of the per-location feature vectors of each image."""
        stats = []
        for feature_map in self.features(images).double().cpu().numpy():
            samples = feature_map.reshape(feature_map.shape[0], -1)
            stats.append((samples.mean(axis=1), np.cov(samples)))
        return stats

    def score(self, real: torch.Tensor, fakes: torch.Tensor) -> list[float]:
        """SIFID of every image in ``fakes`` against ``real`` (``(1, C, H, W)``)."""
        (mu_real, sigma_real), = self.statistics(real)
        return [frechet_distance(mu_real, sigma_real, mu, sigma)
                for mu, sigma in self.statistics(fakes)]


def _load_block0(weights: Path, resize_input: bool) -> torch.nn.Module:
    """Build pytorch-fid's ``InceptionV3([0])`` through its own loading code, pointing torch's
    hub cache at ``weights`` for the duration (so nothing is downloaded). torch loads the file
    with ``weights_only=True``: tensors only, no code."""
    from pytorch_fid.inception import InceptionV3

    previous = torch.hub.get_dir()
    with tempfile.TemporaryDirectory() as hub:
        checkpoints = Path(hub) / "checkpoints"
        checkpoints.mkdir()
        (checkpoints / FID_WEIGHTS_NAME).symlink_to(weights.resolve())
        torch.hub.set_dir(hub)
        try:
            return InceptionV3([0], resize_input=resize_input, normalize_input=True,
                               use_fid_inception=True)
        except Exception as exc:
            raise SifidWeightsError(f"{weights} is not the FID Inception weights file "
                                    f"{FID_WEIGHTS_NAME} ({str(exc).splitlines()[0][:200]})"
                                    ) from exc
        finally:
            torch.hub.set_dir(previous)
