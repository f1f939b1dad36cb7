"""What training reports beside the weights: per-scale scores and a live TensorBoard log.

At the end of each scale ``n`` the trainer draws a few random samples at that scale (fresh noise
from the coarsest scale down to ``n``, as ``augment --start-scale N`` draws them) and scores each
against the real image at scale ``n``:

* patch SWD (:mod:`medsingan.metrics.patch_swd`), always: it needs no weights;
* SIFID (:mod:`medsingan.metrics.sifid`) when the Inception weights of the chosen variant are
  present, found as ``augment`` finds them (``--inception-weights``, then
  ``$MEDSINGAN_INCEPTION_WEIGHTS``, then torch's hub cache). Training never needs them: without
  a file SIFID is left out; a file named explicitly but missing, or a file that is not the
  variant's weights, stops training at the start, as it stops ``augment``.

Samples are clipped to [-1, 1] before scoring, as ``augment`` writes and scores them. SIFID of a
scale too small for the feature map to hold two positions is left out (``None``).

``train --tensorboard DIR`` writes the history's losses every logged iteration and the
per-scale scores at the end of each scale to ``DIR`` with ``torch.utils.tensorboard`` (the
``tensorboard`` package, an optional extra). The step of a point is the iteration counted over
the whole run, coarsest scale first: ``(N - n) * iters + iter``.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medsingan.errors import ConfigError
from medsingan.metrics.patch_swd import PatchSWDScorer
from medsingan.metrics.sifid import (
    DEFAULT_VARIANT,
    SifidScorer,
    SifidWeightsError,
    check_variant,
    find_inception_weights,
)

SCORE_SAMPLES = 4
LOSS_SERIES = ("d_loss", "g_adv", "rec_loss", "gp", "lr")
# below this side a failing Inception forward means "too small", never a lack of memory
_SMALL_SIDE = 64


@dataclass
class MonitorOptions:
    """How training scores its scales and whether it writes a TensorBoard log.

    Attributes:
        sifid_variant: SIFID variant of the per-scale scores (see :mod:`medsingan.metrics.sifid`).
        inception_weights: the variant's weights file; ``None``: the environment variable or the
            hub cache, and no SIFID when neither has it.
        score_samples: random samples scored per scale.
        tensorboard: folder of the TensorBoard event files; ``None``: no log.
    """

    sifid_variant: str = DEFAULT_VARIANT
    inception_weights: Path | None = None
    score_samples: int = SCORE_SAMPLES
    tensorboard: Path | None = None

    def validate(self) -> MonitorOptions:
        check_variant(self.sifid_variant)
        if self.score_samples < 1:
            raise ConfigError(f"score_samples must be at least 1, got {self.score_samples}")
        if self.tensorboard is not None:
            if Path(self.tensorboard).exists() and not Path(self.tensorboard).is_dir():
                raise ConfigError(f"--tensorboard {self.tensorboard} is a file, not a folder")
            summary_writer_class()
        return self


def summary_writer_class() -> Any:
    """``torch.utils.tensorboard.SummaryWriter``; ConfigError when tensorboard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install tensorboard "
                          "(or medsingan[tensorboard])") from None
    return SummaryWriter


def training_sifid(options: MonitorOptions, device: torch.device) -> SifidScorer | None:
    """The SIFID scorer of the per-scale scores, or ``None`` when no weights file is present.

    Raises:
        SifidWeightsError: ``options.inception_weights`` names a missing file, or the file found
            is not the variant's weights.
    """
    try:
        weights = find_inception_weights(options.inception_weights, options.sifid_variant)
    except SifidWeightsError:
        if options.inception_weights is not None:
            raise
        return None
    return SifidScorer(weights, variant=options.sifid_variant, device=device)


class ScaleScorer:
    """Scores of one scale's random samples against the real image at that scale."""

    def __init__(self, sifid: SifidScorer | None) -> None:
        self.sifid = sifid

    def __call__(self, real: torch.Tensor, samples: torch.Tensor) -> dict[str, Any]:
        """``{"samples", "patch_swd": [...], "sifid": [...] | None, "sifid_variant",
        "seconds"}`` for ``samples`` ``(B, C, h, w)`` against ``real`` ``(1, C, h, w)``:
        their image channel (0; an image+mask run's mask channel is not scored)."""
        started = time.perf_counter()
        real, samples = real[:, :1], samples[:, :1]
        images = samples.detach().float().clamp(-1, 1)
        shape = (int(real.shape[-2]), int(real.shape[-1]))
        swd = PatchSWDScorer(real.detach().float().cpu(), shape)(images)
        sifid = None
        if self.sifid is not None and _enough_features(self.sifid, real):
            sifid = self.sifid.score(real, images)
        return {"samples": int(images.shape[0]), "patch_swd": swd, "sifid": sifid,
                "sifid_variant": self.sifid.variant if sifid is not None else None,
                "seconds": time.perf_counter() - started}


def _enough_features(scorer: SifidScorer, real: torch.Tensor) -> bool:
    """Whether the feature map of ``real`` has the two positions a covariance needs."""
    try:
        features = scorer.features(real)
    except RuntimeError:
        if min(real.shape[-2:]) < _SMALL_SIDE:
            return False  # a convolution or pooling larger than its input
        raise
    return int(features.shape[-2]) * int(features.shape[-1]) >= 2


def median(values: list[float] | None) -> float | None:
    return None if not values else float(statistics.median(values))


def mean(values: list[float] | None) -> float | None:
    return None if not values else float(statistics.fmean(values))


class TensorBoardLog:
    """The history and the per-scale scores as TensorBoard scalars (``loss/<column>`` every
    logged iteration, ``scale/patch_swd`` and ``scale/sifid`` medians and ``scale/noise_amp``
    at the end of each scale)."""

    def __init__(self, log_dir: Path, num_scales: int, iters: int) -> None:
        self.writer = summary_writer_class()(log_dir=str(log_dir))
        self.num_scales, self.iters = num_scales, iters

    def step(self, scale: int, iteration: int) -> int:
        return (self.num_scales - 1 - scale) * self.iters + iteration

    def add_row(self, row: dict[str, float]) -> None:
        step = self.step(int(row["scale"]), int(row["iter"]))
        for column in LOSS_SERIES:
            self.writer.add_scalar(f"loss/{column}", float(row[column]), step)

    def add_scale(self, scale: int, noise_amp: float, scores: dict[str, Any]) -> None:
        step = self.step(scale, self.iters)
        self.writer.add_scalar("scale/noise_amp", noise_amp, step)
        for name in ("patch_swd", "sifid"):
            value = median(scores.get(name))
            if value is not None:
                self.writer.add_scalar(f"scale/{name}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
