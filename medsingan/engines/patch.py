"""Training-free patch engine: new images drawn coarse to fine from one scan's own patches.

In the family of GPNN (Granot et al., CVPR 2022, "Drop the GAN") and of classic multi-scale
patch synthesis: no network is trained. The scan's image pyramid (the one training sees) is
the model; a sample is made from the coarsest scale up:

1. coarsest scale ``N``: the scan at that scale plus Gaussian noise (``noise`` x N(0, 1), the
   only random draw, from the stream ``(seed, SAMPLE, i)`` of sample ``i``); then, once
   (``coarsest_iters``, GPNN's choice: more passes pull the new layout back to the scan's),
   every ``p x p`` patch is replaced by its nearest patch of the scan at that scale and
   overlapping patches are averaged. The search is exhaustive, with GPNN's completeness
   normalisation ``d(q, k) / (alpha + min_q' d(q', k))``, which favours scan patches that no
   query is close to yet, so a sample uses the whole scan instead of a few patches;
2. each finer scale ``n``: the result is up-sampled. Its first pass matches the blurry
   up-sampled sample against the scan's scale ``n + 1`` up-sampled to scale ``n`` (blur
   against blur) and pastes the sharp scale-``n`` patches; the next passes match sharp
   against sharp. Scales with at most ``global_pixels`` output pixels search every scan
   patch; above, the search is exact within ``window`` px of where each patch came from at
   the coarser scale (the coarse-to-fine correspondence, as in multi-scale PatchMatch), which
   keeps the finest scales linear in the image size.

``d`` is the mean squared difference per pixel in the [-1, 1] units of the training image.
Sample ``i`` depends only on ``(seed, i)``: every search runs per sample with shapes that do
not depend on the batch, so a sample is the same whatever the batch size.

>>> reals = [torch.rand(1, 1, 40, 40) * 2 - 1]
>>> reals.append(torch.nn.functional.interpolate(reals[0], size=(30, 30), mode="area"))
>>> PatchSampler(reals).sample([0, 1], seed=0).shape
torch.Size([2, 1, 40, 40])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from medsingan.errors import ConfigError
from medsingan.model.noise import Stream, check_seed, draw_noise, seeded_generator
from medsingan.pyramid import build_image_pyramid, pyramid_shapes, resize

ENGINE_NAME = "patch"
# Distances held at once by an exhaustive search (float32 entries): ~64 MiB.
_CHUNK_ENTRIES = 1 << 24


@dataclass(frozen=True)
class PatchEngineConfig:
    """The patch engine's settings; the defaults are measured (benchmarks/engine_quality.py).

    Attributes:
        patch_size: side of the matched patches, px (GPNN's 7).
        noise: standard deviation of the noise added to the coarsest scale, in [-1, 1] units;
            more noise, more varied layouts.
        alpha: completeness weight (smaller = stronger push to use every scan patch);
            ``math.inf`` turns it off (plain nearest neighbours).
        iters: match-and-paste passes at each exhaustively searched scale but the start.
        coarsest_iters: passes at the start scale: GPNN's one pass keeps the noise's new
            layout, more passes pull it back towards the scan's.
        fine_iters: passes at each scale searched locally.
        global_pixels: scales with at most this many output pixels are searched exhaustively.
        window: radius of the local search, px.
        min_size, max_size, scale_factor: the scan's pyramid (see :mod:`medsingan.pyramid`);
            the modality preset's sizes apply when the engine is run on a scan.
    """

    patch_size: int = 7
    noise: float = 0.75
    alpha: float = 0.005
    iters: int = 6
    coarsest_iters: int = 1
    fine_iters: int = 2
    global_pixels: int = 2500
    window: int = 1
    min_size: int = 25
    max_size: int = 250
    scale_factor: float = 0.75

    def validate(self) -> PatchEngineConfig:
        """``self``, or ConfigError naming the first unusable value."""
        for name in ("patch_size", "iters", "coarsest_iters", "fine_iters", "global_pixels",
                     "min_size", "max_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"patch engine: {name} must be at least 1, "
                                  f"got {getattr(self, name)}")
        if self.window < 0:
            raise ConfigError(f"patch engine: window must not be negative, got {self.window}")
        if not self.noise >= 0 or not self.alpha > 0:
            raise ConfigError("patch engine: noise must be >= 0 and alpha > 0")
        if self.min_size < self.patch_size:
            raise ConfigError(f"patch engine: min_size {self.min_size} px is smaller than the "
                              f"{self.patch_size} px patch")
        if not 0 < self.scale_factor < 1:
            raise ConfigError(f"patch engine: scale_factor must lie in (0, 1), got "
                              f"{self.scale_factor}")
        return self

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def scan_pyramid(image: torch.Tensor, config: PatchEngineConfig) -> list[torch.Tensor]:
    """The ``(1, C, h, w)`` image's pyramid, finest first, exactly as training builds it
    (the longer side shrunk to ``max_size``, the coarsest shorter side ``min_size``)."""
    shapes = pyramid_shapes(*image.shape[-2:], config.min_size, config.max_size,
                            config.scale_factor)
    return build_image_pyramid(image.detach().float(), shapes)


def _patches(image: torch.Tensor, size: int) -> torch.Tensor:
    """Every ``size``-square patch of ``(1, C, H, W)`` as rows ``(L, C*size*size)``."""
    return F.unfold(image, size)[0].T.contiguous()


def _fold(rows: torch.Tensor, shape: tuple[int, int], size: int) -> torch.Tensor:
    """Patch rows ``(B, L, D)`` pasted at every position of ``shape`` and averaged where
    they overlap -> ``(B, C, H, W)``."""
    pasted = F.fold(rows.transpose(1, 2), shape, size)
    ones = torch.ones(1, 1, *shape, device=rows.device, dtype=rows.dtype)
    counts = F.fold(F.unfold(ones, size), shape, size)
    return pasted / counts


class _Level:
    """One scale of the scan: sharp patches (the values pasted) and the keys a blurry
    up-sampled sample is first matched against."""

    def __init__(self, real: torch.Tensor, coarser: torch.Tensor | None, size: int) -> None:
        self.shape = tuple(real.shape[-2:])
        self.key_width = self.shape[1] - size + 1
        self.values = _patches(real, size)
        blurry = real if coarser is None else resize(coarser, self.shape).clamp(-1, 1)
        self.blurry = _patches(blurry, size)


def _exhaustive(queries: torch.Tensor, keys: torch.Tensor, alpha: float) -> torch.Tensor:
    """Index of the best key for every query ``(L, D)`` of one sample: the nearest under
    ``d / (alpha + min over queries of d)`` (``alpha = inf``: plain nearest).

    The distances are computed in chunks of queries; when they all fit in the chunk budget
    they are computed once, else twice (the completeness term needs every query first)."""
    dims = queries.shape[1]
    keys_sq = (keys ** 2).sum(1)
    rows = max(1, _CHUNK_ENTRIES // keys.shape[0])
    starts = range(0, queries.shape[0], rows)

    def distances(first: int) -> torch.Tensor:
        chunk = queries[first:first + rows]
        squared = torch.addmm(keys_sq[None, :], chunk, keys.T, alpha=-2.0)
        return squared.add_((chunk ** 2).sum(1)[:, None])

    if math.isinf(alpha):
        return torch.cat([distances(first).argmin(1) for first in starts])
    kept = [distances(first) for first in starts] if len(starts) == 1 else None
    chunks = kept or [distances(first) for first in starts]
    nearest_query = torch.stack([chunk.min(0).values for chunk in chunks]).min(0).values
    del chunks
    weight = 1.0 / (alpha * dims + nearest_query.clamp_min(0))
    return torch.cat([((kept[0] if kept else distances(first)) * weight).argmin(1)
                      for first in starts])


def _local(queries: torch.Tensor, keys: torch.Tensor, start: torch.Tensor,
           key_shape: tuple[int, int], window: int) -> torch.Tensor:
    """Best key for every query ``(B, L, D)`` among the keys within ``window`` px of the
    ``start`` key positions ``(B, L, 2)`` (rows, columns); exact within the window."""
    best = torch.full(queries.shape[:2], float("inf"), device=queries.device)
    best_index = torch.zeros(queries.shape[:2], dtype=torch.long, device=queries.device)
    for dy in range(-window, window + 1):
        for dx in range(-window, window + 1):
            row = (start[..., 0] + dy).clamp(0, key_shape[0] - 1)
            col = (start[..., 1] + dx).clamp(0, key_shape[1] - 1)
            index = row * key_shape[1] + col
            distance = ((queries - keys[index]) ** 2).sum(-1)
            closer = distance < best
            best = torch.where(closer, distance, best)
            best_index = torch.where(closer, index, best_index)
    return best_index


def _positions(index: torch.Tensor, key_width: int) -> torch.Tensor:
    """Key indices ``(B, L)`` -> their (row, column) ``(B, L, 2)``."""
    return torch.stack([index // key_width, index % key_width], dim=-1)


class PatchSampler:
    """Draws samples of one scan with the patch engine (see the module docstring).

    Args:
        reals: the scan's pyramid, finest first, each ``(1, C, h, w)`` in [-1, 1]
            (:func:`scan_pyramid`).
        config: the engine's settings.
        shapes: the output size of every scale, finest first (default: the scan's); another
            size or aspect ratio gives a retargeted sample.
    """

    def __init__(self, reals: Sequence[torch.Tensor], config: PatchEngineConfig | None = None,
                 shapes: Sequence[tuple[int, int]] | None = None) -> None:
        self.config = (config or PatchEngineConfig()).validate()
        self.reals = [real.detach().float() for real in reals]
        self.shapes = [tuple(s) for s in (shapes or [r.shape[-2:] for r in self.reals])]
        if len(self.shapes) != len(self.reals):
            raise ConfigError(f"{len(self.shapes)} output shapes for {len(self.reals)} scales")
        size = self.config.patch_size
        for name, shape in (("scan", self.reals[-1].shape[-2:]), ("output", self.shapes[-1])):
            if min(shape) < size:
                raise ConfigError(f"the coarsest {name} scale is {shape[0]}x{shape[1]} px, "
                                  f"under the {size} px patch")
        self.levels = [_Level(real, self.reals[n + 1] if n + 1 < len(self.reals) else None,
                              size) for n, real in enumerate(self.reals)]

    @property
    def device(self) -> torch.device:
        return self.reals[0].device

    def to(self, device: torch.device | str) -> PatchSampler:
        """Move the scan's patches to ``device``; returns ``self``."""
        self.reals = [real.to(device) for real in self.reals]
        for level in self.levels:
            level.values, level.blurry = level.values.to(device), level.blurry.to(device)
        return self

    @property
    def coarsest(self) -> int:
        """Index of the coarsest scale (0 = finest), ``N`` on the command line."""
        return len(self.reals) - 1

    @torch.no_grad()
    def sample(self, indices: Sequence[int], seed: int,
               start_scale: int | None = None) -> torch.Tensor:
        """Samples number ``indices`` of stream ``seed``, ``(len(indices), C, H, W)``.

        The noise is added at ``start_scale``: the coarsest ``N`` (default), or ``N - 1``,
        which keeps more of the scan's layout, as SinGAN's ``--start-scale`` does, with less
        noise (:meth:`_amplitude`). Finer starts are refused: measured on a CR chest at 128
        and 250 px, their samples were verbatim copies of the scan (copy score 1) or, where
        the noise still moved patches, blotchy textures.
        """
        check_seed(seed)
        start = self.coarsest if start_scale is None else start_scale
        if not self.coarsest - 1 <= start <= self.coarsest:
            raise ConfigError(f"the patch engine starts at N or N-1 (scales {self.coarsest} or "
                              f"{max(self.coarsest - 1, 0)}), not {start}: from finer scales "
                              "its samples are copies of the scan or lose its texture")
        channels, shape = self.reals[0].shape[1], self.shapes[start]
        noise = torch.cat([draw_noise((1, channels, *shape),
                                      seeded_generator(seed, Stream.SAMPLE, index), self.device)
                           for index in indices])
        image = resize(self.reals[start], shape).expand(len(indices), -1, -1, -1)
        image = image + self._amplitude(start) * noise
        index = None if self._exhaustive(start) else self._identity(start, len(indices))
        for scale in range(start, -1, -1):
            if scale < start:
                image = resize(image, self.shapes[scale])
            image, index = self._scale(image, scale, index, noisy=scale == start)
        return image.clamp(-1, 1)

    def _amplitude(self, start: int) -> float:
        """The noise at a start scale: ``noise`` at the coarsest, shrunk by the area ratio of
        the coarsest scale to the start one below it (each scale holds ~1/f^2 more patches, so
        the same noise would move more of them)."""
        coarsest, shape = self.reals[-1].shape[-2:], self.reals[start].shape[-2:]
        return self.config.noise * (min(coarsest) / min(shape)) ** 2

    def _exhaustive(self, scale: int) -> bool:
        height, width = self.shapes[scale]
        return height * width <= self.config.global_pixels

    def _grid(self, scale: int) -> tuple[int, int]:
        """The output's patch positions at ``scale`` (rows, columns)."""
        size = self.config.patch_size
        return self.shapes[scale][0] - size + 1, self.shapes[scale][1] - size + 1

    def _key_grid(self, scale: int) -> tuple[int, int]:
        """The scan's patch positions at ``scale`` (rows, columns)."""
        level = self.levels[scale]
        return level.shape[0] - self.config.patch_size + 1, level.key_width

    def _identity(self, scale: int, batch: int) -> torch.Tensor:
        """Every output patch at the scan's patch in the same place (scaled): ``(B, L)``."""
        (rows, cols), (key_rows, key_cols) = self._grid(scale), self._key_grid(scale)
        row = (torch.arange(rows, device=self.device) * key_rows / rows).long()
        col = (torch.arange(cols, device=self.device) * key_cols / cols).long()
        return (row[:, None] * key_cols + col[None, :]).reshape(1, -1).expand(batch, -1)

    def _scale(self, image: torch.Tensor, scale: int, index: torch.Tensor | None,
               noisy: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The match-and-paste passes of one scale. ``index`` is the key index of every
        output patch ``(B, L)`` of the coarser scale (or of this one when ``noisy``, the start
        scale), ``None`` where this scale is searched exhaustively from the start. Returns the
        image and the key indices of its patches."""
        config, level, shape = self.config, self.levels[scale], self.shapes[scale]
        exhaustive = self._exhaustive(scale) or index is None
        passes = (config.coarsest_iters if noisy else config.iters) if exhaustive \
            else config.fine_iters
        # the noisy start is sharp: matched sharp to sharp; an up-sampled image blur to blur
        key_sets = [level.values] * passes if noisy else \
            [level.blurry] + [level.values] * (passes - 1)
        if index is not None and not exhaustive and not noisy:
            start = self._upsampled(index, scale)
        elif index is not None:
            start = _positions(index, level.key_width)
        for keys in key_sets:
            queries = F.unfold(image, config.patch_size).transpose(1, 2)  # (B, L, D)
            if exhaustive:
                index = torch.stack([_exhaustive(queries[b], keys, config.alpha)
                                     for b in range(queries.shape[0])])
            else:
                index = _local(queries, keys, start, self._key_grid(scale), config.window)
                start = _positions(index, level.key_width)
            image = _fold(level.values[index], shape, config.patch_size)
        return image, index

    def _upsampled(self, index: torch.Tensor, scale: int) -> torch.Tensor:
        """Where each patch of ``scale`` starts looking: the coarser scale's key positions
        ``index`` up-sampled to this scale's patch grid and scaled by the scan's zoom between
        the two scales (multi-scale PatchMatch's initialisation); ``(B, L, 2)``."""
        coarse_keys, keys = self._key_grid(scale + 1), self._key_grid(scale)
        field = _positions(index, coarse_keys[1]).float().permute(0, 2, 1)
        field = field.reshape(index.shape[0], 2, *self._grid(scale + 1))
        field = F.interpolate(field, size=self._grid(scale), mode="bilinear",
                              align_corners=True)
        zoom = torch.tensor([(keys[0] - 1) / max(coarse_keys[0] - 1, 1),
                             (keys[1] - 1) / max(coarse_keys[1] - 1, 1)], device=self.device)
        field = field * zoom.view(1, 2, 1, 1)
        rows = field[:, 0].round().long().clamp(0, keys[0] - 1)
        cols = field[:, 1].round().long().clamp(0, keys[1] - 1)
        return torch.stack([rows, cols], dim=-1).reshape(index.shape[0], -1, 2)
