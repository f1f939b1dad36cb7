"""Single-Image FID (SIFID, Rott Shaham et al. 2019).

SIFID is the Fréchet distance between two Gaussians fitted to the per-location feature vectors
of a real and a generated image (every spatial position of an early InceptionV3 feature map is
one sample):

    d^2 = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r^(1/2) S_g S_r^(1/2))^(1/2))

Two variants; their numbers are not comparable, so every score is recorded with its variant:

``paper`` (the default)
    The paper's definition, "the output of the convolutional layer just before the second
    pooling layer": torchvision's ImageNet InceptionV3 weights (``inception_v3_google-0cc3c7bd
    .pth``), layers Conv2d_1a_3x3 -> Conv2d_2a_3x3 -> Conv2d_2b_3x3 -> max-pool (3, stride 2)
    -> Conv2d_3b_1x1 -> Conv2d_4a_3x3, whose 192-channel output is taken before the second
    max-pool; the image in [0, 1] is scaled to [-1, 1] as ``2x - 1`` (not torchvision's
    ``transform_input``) and not resized. A 128 x 128 image gives 28 x 28 = 784 samples.
``fid64``
    pytorch-fid's ``InceptionV3`` block 0 with the FID weights
    (``pt_inception-2015-12-05-6726825d.pth``): 64 channels after the first max-pool, pytorch-fid's
    own ``normalize_input``, native size.

A grayscale image is repeated to three channels. Unlike the official script, inputs are never
divided by 255 twice: its PNG path (matplotlib's ``imread`` already returns [0, 1] for PNG, and
the script divides by 255 again) is a quirk this module does not reproduce. Weights files are
read as tensors only (``torch.load(..., weights_only=True)``): loading them cannot run code.

>>> SIFID_VARIANTS
('paper', 'fid64')
"""

from __future__ import annotations

import os
import tempfile
from collections import OrderedDict
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medsingan.errors import ConfigError, MedsinganError

SIFID_VARIANTS = ("paper", "fid64")
DEFAULT_VARIANT = "paper"
PAPER_WEIGHTS_NAME = "inception_v3_google-0cc3c7bd.pth"
PAPER_WEIGHTS_URL = "https://download.pytorch.org/models/" + PAPER_WEIGHTS_NAME
FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   + FID_WEIGHTS_NAME)
WEIGHTS_NAMES = {"paper": PAPER_WEIGHTS_NAME, "fid64": FID_WEIGHTS_NAME}
WEIGHTS_URLS = {"paper": PAPER_WEIGHTS_URL, "fid64": FID_WEIGHTS_URL}
WEIGHTS_ENV = "MEDSINGAN_INCEPTION_WEIGHTS"
# torchvision's Inception3 attributes, in forward order, up to the paper's feature map
PAPER_LAYERS = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
                "Conv2d_4a_3x3")
_WEIGHTS_KIND = {"paper": "torchvision's ImageNet InceptionV3 weights",
                 "fid64": "pytorch-fid's FID Inception weights"}
_OTHER_VARIANT = {"paper": "fid64", "fid64": "paper"}


class SifidWeightsError(MedsinganError):
    """The Inception weights SIFID needs are missing or are not the right file."""


def check_variant(variant: str) -> str:
    """``variant`` if it is one of :data:`SIFID_VARIANTS`, else a ConfigError."""
    if variant not in SIFID_VARIANTS:
        raise ConfigError(f"unknown SIFID variant '{variant}': choose one of "
                          f"{', '.join(SIFID_VARIANTS)}")
    return variant


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


def find_inception_weights(explicit: str | os.PathLike[str] | None = None,
                           variant: str = DEFAULT_VARIANT) -> Path:
    """The weights file of a SIFID ``variant``: ``explicit``, else $MEDSINGAN_INCEPTION_WEIGHTS,
    else torch's hub cache (``<hub>/checkpoints/<WEIGHTS_NAMES[variant]>``, where torchvision
    and pytorch-fid keep their downloads). Raises SifidWeightsError (before any work starts)
    when the file is not there."""
    name = WEIGHTS_NAMES[check_variant(variant)]
    if explicit is not None:
        source, path = "--inception-weights", Path(explicit)
    elif os.environ.get(WEIGHTS_ENV):
        source, path = WEIGHTS_ENV, Path(os.environ[WEIGHTS_ENV])
    else:
        source, path = "torch hub cache", Path(torch.hub.get_dir()) / "checkpoints" / name
    if path.is_file():
        return path
    raise SifidWeightsError(
        f"SIFID ({variant}) needs {_WEIGHTS_KIND[variant]} {name} (not found at {path}, from "
        f"{source}): download it once from {WEIGHTS_URLS[variant]} and pass --inception-weights "
        f"FILE or set {WEIGHTS_ENV}, or use --sifid-variant {_OTHER_VARIANT[variant]}, or skip "
        f"scoring with --no-sifid")


class SifidScorer:
    """Per-location Inception features and SIFID of generated images against a real one.

    Images are ``(B, 1, H, W)`` (or ``(B, 3, H, W)``) float tensors in [-1, 1]; ``variant`` is
    one of :data:`SIFID_VARIANTS` and is what a manifest's ``sifid_variant`` column records;
    ``description`` says it in words.
    """

    def __init__(self, weights: str | os.PathLike[str], *, variant: str = DEFAULT_VARIANT,
                 resize_input: bool = False, device: str | torch.device = "cpu") -> None:
        self.variant = check_variant(variant)
        self.device = torch.device(device)
        self.resize_input = resize_input
        weights = Path(weights)
        model = (_PaperFeatures(weights, resize_input) if variant == "paper"
                 else _FidBlock0(weights, resize_input))
        self.model = model.to(self.device).eval()
        size = "resized to 299" if resize_input else "native size"
        self.description = (
            f"paper: torchvision ImageNet InceptionV3, Conv2d_4a_3x3 (192 ch, before the 2nd "
            f"max-pool), {size}" if variant == "paper" else
            f"fid64: pytorch-fid {version('pytorch-fid')} FID InceptionV3 block 0 (64 ch, after "
            f"the 1st max-pool), {size}")

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` feature maps (C = 192 for ``paper``, 64 for ``fid64``); input in
        [-1, 1], gray or RGB."""
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        unit = ((images.to(self.device, torch.float32) + 1.0) / 2.0).clamp(0.0, 1.0)
        return self.model(unit)

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


class _PaperFeatures(nn.Module):
    """[0, 1] image -> ``2x - 1`` -> torchvision InceptionV3 up to Conv2d_4a_3x3 (192 ch)."""

    def __init__(self, weights: Path, resize_input: bool) -> None:
        import torchvision

        super().__init__()
        network = torchvision.models.inception_v3(weights=None, aux_logits=True,
                                                  init_weights=False)
        state = _read_tensors(weights, "paper")
        try:
            network.load_state_dict(state, strict=True)
        except (RuntimeError, TypeError, AttributeError) as exc:
            raise SifidWeightsError(
                f"{weights} is not torchvision's ImageNet InceptionV3 weights file "
                f"{PAPER_WEIGHTS_NAME} ({_mismatch(network.state_dict(), state)}); for "
                f"pytorch-fid's {FID_WEIGHTS_NAME} use --sifid-variant fid64") from exc
        self.layers = nn.Sequential(OrderedDict((name, getattr(network, name))
                                                for name in PAPER_LAYERS))
        self.layers.requires_grad_(False)
        self.resize_input = resize_input

    def forward(self, unit: torch.Tensor) -> torch.Tensor:
        if self.resize_input:
            unit = F.interpolate(unit, size=(299, 299), mode="bilinear", align_corners=False)
        return self.layers(2.0 * unit - 1.0)


class _FidBlock0(nn.Module):
    """[0, 1] image -> pytorch-fid's ``InceptionV3([0])`` (64 ch after the first max-pool),
    built through pytorch-fid's own loading code with torch's hub cache pointed at the file
    for the duration (so nothing is downloaded)."""

    def __init__(self, weights: Path, resize_input: bool) -> None:
        from pytorch_fid.inception import InceptionV3

        super().__init__()
        # pytorch-fid's loader unpickles without weights_only: vet the file as tensors first
        _read_tensors(weights, "fid64")
        # torch.hub.set_dir(get_dir()) would pin the hub to today's TORCH_HOME for the rest of
        # the process: restore the unset state itself where torch keeps one
        pinned = getattr(torch.hub, "_hub_dir", None)
        previous = torch.hub.get_dir()
        with tempfile.TemporaryDirectory() as hub:
            checkpoints = Path(hub) / "checkpoints"
            checkpoints.mkdir()
            (checkpoints / FID_WEIGHTS_NAME).symlink_to(weights.resolve())
            torch.hub.set_dir(hub)
            try:
                self.inception = InceptionV3([0], resize_input=resize_input,
                                             normalize_input=True, use_fid_inception=True)
            except Exception as exc:
                raise SifidWeightsError(
                    f"{weights} is not the FID Inception weights file {FID_WEIGHTS_NAME} "
                    f"({_first_line(exc)}); for torchvision's {PAPER_WEIGHTS_NAME} use "
                    f"--sifid-variant paper") from exc
            finally:
                if hasattr(torch.hub, "_hub_dir"):
                    torch.hub._hub_dir = pinned
                else:
                    torch.hub.set_dir(previous)

    def forward(self, unit: torch.Tensor) -> torch.Tensor:
        return self.inception(unit)[0]


def _read_tensors(weights: Path, variant: str) -> Any:
    """The file's content, read as tensors only: a pickle that would run code is refused."""
    try:
        return torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SifidWeightsError(
            f"{weights} cannot be read as a plain weights file (tensors only) for SIFID "
            f"({variant}): {_first_line(exc)}") from exc


def _mismatch(expected: dict[str, torch.Tensor], state: Any) -> str:
    """What keeps ``state`` from being ``expected``'s state dict, in a few words."""
    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}, not a state dict"
    # BatchNorm fills in num_batches_tracked itself when a file predates it
    missing = [key for key in expected if key not in state
               and not key.endswith("num_batches_tracked")]
    unexpected = [key for key in state if key not in expected]
    wrong = [f"{key} {tuple(getattr(state[key], 'shape', ()))} not {tuple(value.shape)}"
             for key, value in expected.items()
             if key in state and getattr(state[key], "shape", None) != value.shape]
    parts = [f"{label}: {_few(keys)}" for label, keys in
             (("missing", _layers(missing)), ("unexpected", _layers(unexpected)),
              ("wrong shape", wrong)) if keys]
    return "; ".join(parts) or "it cannot be loaded"


def _layers(keys: list[str]) -> list[str]:
    """Parameter names grouped by their top-level layer (``Conv2d_4a_3x3.conv.weight`` ->
    ``Conv2d_4a_3x3``), in order."""
    return list(dict.fromkeys(key.split(".")[0] for key in keys))


def _few(items: list[str], shown: int = 3) -> str:
    rest = len(items) - shown
    return ", ".join(items[:shown]) + (f" and {rest} more" if rest > 0 else "")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]
