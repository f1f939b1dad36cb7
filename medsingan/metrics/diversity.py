"""The paper's diversity measure and similarity to the source (a memorisation flag)."""

from __future__ import annotations

import torch


def diversity(samples: torch.Tensor, real: torch.Tensor) -> float:
    """Per-pixel standard deviation over the samples, averaged over pixels, divided by the
    standard deviation of the real image (Rott Shaham et al., Sec. 5).

    ``samples`` is ``(N, C, H, W)`` with N >= 2, ``real`` is ``(1, C, H, W)``; both in the same
    intensity scale.
    """
    if samples.shape[0] < 2:
        raise ValueError("diversity needs at least two samples")
    per_pixel = samples.double().std(dim=0, unbiased=False).mean()
    return float(per_pixel / real.double().std(unbiased=False).clamp_min(1e-12))


def similarity_to_source(samples: torch.Tensor, real: torch.Tensor) -> list[float]:
    """SSIM (MONAI's ``SSIMMetric``, data range 2 for [-1, 1] images) of each sample to the
    real image; values near 1 flag a sample that copies its source."""
    from monai.metrics import SSIMMetric

    metric = SSIMMetric(spatial_dims=2, data_range=2.0, win_size=7)
    if samples.shape[-2:] != real.shape[-2:]:
        real = torch.nn.functional.interpolate(real, size=samples.shape[-2:], mode="bicubic",
                                               antialias=True, align_corners=False)
    target = real.expand(samples.shape[0], -1, -1, -1).float()
    return [float(v) for v in metric(samples.float(), target).flatten()]
