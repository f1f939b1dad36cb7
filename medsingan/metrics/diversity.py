"""The paper's diversity measure and similarity to the source (a memorisation flag)."""

from __future__ import annotations

import torch


class CohortDiversity:
    """The paper's diversity of a cohort fed batch by batch (constant memory in the cohort size).

    Keeps the per-pixel sum and sum of squares (float64) of the samples ``(B, C, H, W)`` given
    to :meth:`add`, shifted by the first sample against cancellation; :meth:`value` is then
    :func:`diversity` of all of them.

    >>> cohort = CohortDiversity()
    >>> cohort.add(torch.zeros(1, 1, 4, 4)); cohort.add(torch.ones(1, 1, 4, 4))
    >>> cohort.value(torch.tensor([[[[0.0, 1.0]]]]))
    1.0
    """

    def __init__(self) -> None:
        self.count = 0
        self._shift: torch.Tensor | None = None
        self._sum: torch.Tensor | None = None
        self._squares: torch.Tensor | None = None

    def add(self, samples: torch.Tensor) -> None:
        values = samples.detach().double().cpu()
        if self._shift is None:
            self._shift = values[0].clone()
        elif values.shape[1:] != self._shift.shape:
            raise ValueError(f"samples of shape {tuple(values.shape[1:])} in a cohort of "
                             f"{tuple(self._shift.shape)}")
        values = values - self._shift
        if self._sum is None or self._squares is None:
            self._sum, self._squares = values.sum(dim=0), (values * values).sum(dim=0)
        else:
            self._sum += values.sum(dim=0)
            self._squares += (values * values).sum(dim=0)
        self.count += values.shape[0]

    def value(self, real: torch.Tensor) -> float:
        """Mean per-pixel standard deviation over the samples / the real image's deviation."""
        if self.count < 2 or self._sum is None or self._squares is None:
            raise ValueError("diversity needs at least two samples")
        mean = self._sum / self.count
        variance = (self._squares / self.count - mean * mean).clamp_min(0.0)
        return float(variance.sqrt().mean()
                     / real.detach().double().cpu().std(unbiased=False).clamp_min(1e-12))


def diversity(samples: torch.Tensor, real: torch.Tensor) -> float:
    """Per-pixel standard deviation over the samples, averaged over pixels, divided by the
    standard deviation of the real image (Rott Shaham et al., Sec. 5).

    ``samples`` is ``(N, C, H, W)`` with N >= 2, ``real`` is ``(1, C, H, W)``; both in the same
    intensity scale.
    """
    cohort = CohortDiversity()
    cohort.add(samples)
    return cohort.value(real)


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
