"""The trained pyramid: one frozen generator per scale, its noise amplitude, z* and the reals."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from medsingan.model.networks import Generator
from medsingan.pyramid import resize


@dataclass
class TrainedPyramid:
    """A (possibly partly) trained SinGAN pyramid. Scale 0 is the finest, ``coarsest`` the last.

    Attributes:
        reals: the training image at every scale, finest first, each ``(1, C, h, w)`` in [-1, 1].
        z_star: the fixed reconstruction noise of the coarsest scale, ``(1, C, h, w)``; the
            reconstruction path uses zeros at every finer scale.
        generators: frozen generator (eval mode) of each trained scale; training runs coarse to
            fine, so the trained scales are ``coarsest, coarsest - 1, ..., finest_trained``.
        noise_amps: noise amplitude of each trained scale.
        metadata: the run's ``config.json`` content when loaded from a run directory.
    """

    reals: list[torch.Tensor]
    z_star: torch.Tensor
    generators: dict[int, Generator] = field(default_factory=dict)
    noise_amps: dict[int, float] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """``(height, width)`` of every scale, finest first."""
        return [(int(r.shape[-2]), int(r.shape[-1])) for r in self.reals]

    @property
    def num_scales(self) -> int:
        return len(self.reals)

    @property
    def coarsest(self) -> int:
        return len(self.reals) - 1

    @property
    def finest_trained(self) -> int:
        """The finest scale with a generator (``num_scales`` when nothing is trained yet)."""
        return min(self.generators, default=self.num_scales)

    @property
    def is_complete(self) -> bool:
        return self.finest_trained == 0

    @property
    def device(self) -> torch.device:
        return self.z_star.device

    def to(self, device: torch.device | str) -> TrainedPyramid:
        """Move every tensor and generator to ``device`` (in place); returns ``self``."""
        self.reals = [r.to(device) for r in self.reals]
        self.z_star = self.z_star.to(device)
        for generator in self.generators.values():
            generator.to(device)
        return self

    def reconstruction_noise(self, scale: int) -> torch.Tensor:
        """z* at the coarsest scale, zeros at every other scale (``(1, C, h, w)``)."""
        if scale == self.coarsest:
            return self.z_star
        return torch.zeros_like(self.reals[scale])

    def forward_scales(
        self,
        start: int,
        end: int,
        noises: Sequence[torch.Tensor],
        previous: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the generators from scale ``start`` down to the finer scale ``end`` (inclusive).

        ``noises[i]`` is the unit noise of scale ``start - i`` (``(B, C, h, w)``); it is scaled by
        that scale's amplitude, and its size sets the output size of that scale (the networks
        are fully convolutional, so any size works). ``previous`` is the output of scale
        ``start + 1`` (``None`` when ``start`` is the coarsest scale, whose input is then noise
        alone). Deterministic: all randomness is in ``noises``.
        """
        if start < end or len(noises) != start - end + 1:
            raise ValueError(f"scales {start}..{end} need {start - end + 1} noise maps, "
                             f"got {len(noises)}")
        x = previous
        for noise, scale in zip(noises, range(start, end - 1, -1), strict=True):
            up = torch.zeros_like(noise) if x is None else resize(x, tuple(noise.shape[-2:]))
            x = self.generators[scale](self.noise_amps[scale] * noise + up, up)
        return x  # type: ignore[return-value]  # not None: at least one scale ran

    @torch.no_grad()
    def reconstruct(self, end: int | None = None) -> torch.Tensor:
        """The reconstruction of the training image at scale ``end`` (default: finest trained).

        Uses z* at the coarsest scale and zeros above it, ``(1, C, h, w)``.
        """
        end = self.finest_trained if end is None else end
        noises = [self.reconstruction_noise(s) for s in range(self.coarsest, end - 1, -1)]
        return self.forward_scales(self.coarsest, end, noises)
