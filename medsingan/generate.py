"""Sampling from a trained pyramid: noise is drawn per sample, the forward is deterministic.

Sample ``i`` uses only noise from the stream ``(seed, i)``, so it is identical whatever the batch
size or the number of samples requested. Scales coarser than ``start_scale`` follow the
reconstruction path (z* at the coarsest scale, zeros above), as in the paper.

>>> images = sample(pyramid, 8, start_scale=pyramid.coarsest, seed=0)  # doctest: +SKIP
>>> images.shape  # doctest: +SKIP
torch.Size([8, 1, 250, 250])
"""

from __future__ import annotations

import torch

from medsingan.errors import ConfigError
from medsingan.model.container import TrainedPyramid
from medsingan.model.noise import Stream, draw_noise, seeded_generator


def _check_scales(pyramid: TrainedPyramid, start_scale: int, end_scale: int) -> None:
    low, high = pyramid.finest_trained, pyramid.coarsest
    if not high >= start_scale >= end_scale >= low:
        raise ConfigError(
            f"scales must satisfy {high} >= start ({start_scale}) >= end ({end_scale}) >= {low}"
            " (0 = finest trained scale ... N = coarsest)"
        )


def scaled_shapes(pyramid: TrainedPyramid, scale_h: float = 1.0,
                  scale_w: float = 1.0) -> list[tuple[int, int]]:
    """Every scale's ``(height, width)`` stretched by ``scale_h`` x ``scale_w`` (finest first).

    Like the official code's ``scale_v``/``scale_h`` (there ``scale_h`` is the horizontal
    factor; here ``scale_h`` is the height's and ``scale_w`` the width's): the networks are
    fully convolutional, so a
    sample may have another size and aspect ratio than the training image.
    """
    if not (scale_h > 0 and scale_w > 0):
        raise ConfigError(f"output scale must be positive, got {scale_h} x {scale_w}")
    shapes = [(max(1, round(h * scale_h)), max(1, round(w * scale_w)))
              for h, w in pyramid.shapes]
    receptive = min(g.spec.receptive_field for g in pyramid.generators.values())
    if min(shapes[-1]) < receptive:
        raise ConfigError(f"output size too small: the coarsest scale would be "
                          f"{shapes[-1][0]}x{shapes[-1][1]} px, under the {receptive} px "
                          "receptive field")
    return shapes


def sample_noise(pyramid: TrainedPyramid, start_scale: int, end_scale: int, seed: int,
                 index: int, shapes: list[tuple[int, int]] | None = None) -> list[torch.Tensor]:
    """Unit noise maps ``(1, C, h, w)`` of sample ``index``, scales ``start_scale..end_scale``
    (sizes from ``shapes``, default the pyramid's)."""
    generator = seeded_generator(seed, Stream.SAMPLE, index)
    channels = pyramid.z_star.shape[1]
    shapes = shapes or pyramid.shapes
    return [
        draw_noise((1, channels, *shapes[scale]), generator, pyramid.device)
        for scale in range(start_scale, end_scale - 1, -1)
    ]


@torch.no_grad()
def sample(
    pyramid: TrainedPyramid,
    n: int,
    start_scale: int | None = None,
    seed: int = 0,
    *,
    end_scale: int | None = None,
    first_index: int = 0,
    batch_size: int = 16,
    shapes: list[tuple[int, int]] | None = None,
) -> torch.Tensor:
    """Draw ``n`` random images ``(n, C, h, w)`` at ``end_scale`` (default: finest trained).

    Sample ``k`` of the result is sample number ``first_index + k`` of stream ``seed``;
    ``start_scale`` defaults to the coarsest scale (the most varied samples). ``shapes``
    (from :func:`scaled_shapes`) gives every scale another size; the reconstruction above
    ``start_scale`` is then resized to it.
    """
    start = pyramid.coarsest if start_scale is None else start_scale
    end = pyramid.finest_trained if end_scale is None else end_scale
    _check_scales(pyramid, start, end)
    previous = pyramid.reconstruct(start + 1) if start < pyramid.coarsest else None
    outputs = []
    for first in range(first_index, first_index + n, batch_size):
        indices = range(first, min(first + batch_size, first_index + n))
        per_sample = [sample_noise(pyramid, start, end, seed, i, shapes) for i in indices]
        noises = [torch.cat(maps) for maps in zip(*per_sample, strict=True)]
        batch_previous = None if previous is None else previous.expand(len(indices), -1, -1, -1)
        outputs.append(pyramid.forward_scales(start, end, noises, batch_previous))
    return torch.cat(outputs)


def reconstruct(pyramid: TrainedPyramid, end_scale: int | None = None) -> torch.Tensor:
    """The reconstruction of the training image from z* at ``end_scale``, ``(1, C, h, w)``."""
    end = pyramid.finest_trained if end_scale is None else end_scale
    _check_scales(pyramid, pyramid.coarsest, end)
    return pyramid.reconstruct(end)
