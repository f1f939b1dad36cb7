"""Pyramid geometry (SinGAN's scale rule) and anti-aliased resizing in torch.

Scale indices follow the command line: index 0 is the finest scale, index ``N`` the coarsest.

The rule is the one of the official SinGAN code (Rott Shaham et al., ICCV 2019):

* the image is first shrunk so that its longer side is at most ``max_size`` (never enlarged);
* ``num_scales = ceil(log_f(min_size / min_side)) + 1`` with ``f = scale_factor`` and
  ``min_side`` the shorter side of the *original* image, minus the scales skipped by the shrink
  (``ceil(log_f(max_size / max_side))``), gives the number of down-sampling steps ``N``;
* the factor is then recomputed, ``f' = (min_size / min_side')^(1/N)``, so that the coarsest
  shorter side is exactly ``min_size``; scale ``k`` (k steps below the finest) has the size
  ``ceil(finest * f'^k)``.

A 250 x 250 image gives 11 scales with ``f' = 0.794``: 250, 199, 158, 126, 100, 80, 63, 50, 40,
32, 25.

>>> pyramid_shapes(250, 250)[-2:]
[(32, 32), (25, 25)]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from medsingan.errors import ConfigError, InvalidImageError

# Sizes are products of floats; a size that is mathematically an integer must not be rounded up.
_SIZE_TOLERANCE = 1e-6


def _ceil(value: float) -> int:
    return math.ceil(value - _SIZE_TOLERANCE)


def validate_geometry(min_size: int, max_size: int, scale_factor: float) -> None:
    """Raise :class:`ConfigError` when the pyramid settings cannot describe a pyramid."""
    if min_size < 1:
        raise ConfigError(f"min_size must be at least 1 px, got {min_size}")
    if max_size < min_size:
        raise ConfigError(f"max_size ({max_size}) must not be smaller than min_size ({min_size})")
    if not 0.0 < scale_factor < 1.0:
        raise ConfigError(f"scale_factor must lie strictly between 0 and 1, got {scale_factor}")


def pyramid_shapes(
    height: int,
    width: int,
    min_size: int = 25,
    max_size: int = 250,
    scale_factor: float = 0.75,
) -> list[tuple[int, int]]:
    """Return the ``(height, width)`` of every scale, finest first.

    ``height`` and ``width`` are the size of the original image (before any shrinking to
    ``max_size``): the number of scales depends on it exactly as in the official code.

    Raises:
        ConfigError: ``max_size < min_size`` or ``scale_factor`` outside (0, 1).
        InvalidImageError: the image (after shrinking to ``max_size``) is smaller than
            ``min_size`` on its shorter side.

    >>> pyramid_shapes(64, 48)
    [(64, 48), (55, 41), (47, 35), (40, 30), (34, 25)]
    """
    validate_geometry(min_size, max_size, scale_factor)
    if height < 1 or width < 1:
        raise InvalidImageError(f"image has an empty side ({height} x {width})")
    shrink = min(max_size / max(height, width), 1.0)
    finest = (_ceil(height * shrink), _ceil(width * shrink))
    if min(finest) < min_size:
        raise InvalidImageError(
            f"image of {height} x {width} px is {finest[0]} x {finest[1]} px at max_size "
            f"{max_size}, smaller than min_size {min_size} on its short side"
        )
    if min(finest) == min_size:
        return [finest]
    num_scales = _ceil(math.log(min_size / min(height, width), scale_factor)) + 1
    skipped = _ceil(math.log(min(max_size, max(height, width)) / max(height, width), scale_factor))
    steps = max(num_scales - skipped, 1)
    factor = (min_size / min(finest)) ** (1.0 / steps)
    shapes = [(_ceil(finest[0] * factor**k), _ceil(finest[1] * factor**k))
              for k in range(steps + 1)]
    # just above min_size, rounding up can give one shape twice (26 x 28 -> 26 x 28 -> 25 x
    # 27): a scale must be smaller than the one before it
    return [shape for k, shape in enumerate(shapes) if k == 0 or shape != shapes[k - 1]]


def effective_scale_factor(shapes: Sequence[tuple[int, int]]) -> float:
    """The recomputed factor between consecutive scales (1.0 for a single-scale pyramid)."""
    if len(shapes) < 2:
        return 1.0
    return (min(shapes[-1]) / min(shapes[0])) ** (1.0 / (len(shapes) - 1))


def resize(image: torch.Tensor, size: tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """Resize a ``(B, C, H, W)`` float tensor to ``size = (height, width)``.

    Down-sampling is anti-aliased (``interpolate(antialias=True)``, a Matlab-``imresize``-like
    filter), so no aliasing creeps into the coarse scales; the tensor stays float on its device.
    """
    if image.ndim != 4:
        raise ValueError(f"resize expects a (B, C, H, W) tensor, got shape {tuple(image.shape)}")
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image, size=size, mode=mode, align_corners=False, antialias=True)


def resize_nearest(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A ``(B, C, H, W)`` label image resized to ``size`` with nearest neighbours (pixel
    centres: ``nearest-exact``), so that it keeps exactly its values."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image, size=tuple(size), mode="nearest-exact")


def build_image_pyramid(image: torch.Tensor, shapes: Sequence[tuple[int, int]],
                        label_channels: int = 0) -> list[torch.Tensor]:
    """Resize ``image`` (``(B, C, H, W)``) to every shape, finest first.

    Every scale is computed from ``image`` itself (not from the next finer scale), so
    resizing errors do not accumulate down the pyramid. (The official code resizes from the
    image already shrunk to the largest size and quantised to 8 bits; here no quantisation
    is applied, which 16-bit scans need.) The last ``label_channels`` channels (a mask,
    :mod:`medsingan.masks`) are resized with nearest neighbours: they keep their values.
    """
    if not label_channels:
        return [resize(image, shape) for shape in shapes]
    split = image.shape[1] - label_channels
    return [torch.cat([resize(image[:, :split], shape),
                       resize_nearest(image[:, split:], shape)], dim=1) for shape in shapes]
