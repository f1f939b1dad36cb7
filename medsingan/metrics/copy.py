"""Copy score: how much of a sample is a near-verbatim copy of its source's patches.

A patch engine (and a SinGAN started at a fine scale) can reproduce whole regions of the
training scan, which for patient data is a privacy question that SSIM to the source does not
answer: SSIM is a global average, a copied 40 x 40 px region barely moves it. The copy score
looks at every ``k x k`` patch of the sample on a grid of ``stride`` px (default 16 px patches
on an 8 px grid, at the sample's own pixel scale) and finds its exact nearest neighbour among
*all* the source's ``k x k`` patches (every position, stride 1):

* distance: root-mean-square difference per pixel, in the [-1, 1] units of the training image
  (``d(q, p) = ||q - p|| / sqrt(C k^2)``); a patch is *copied* when ``d <= threshold``
  (default 0.02, 1 % of the intensity range: far below the differences between two real
  patches of anatomy, above the rounding of an 8-bit file);
* flat patches (standard deviation under ``min_std``: air, collimator, padding) carry no
  anatomy and match anything flat, so they are neither copies nor counted;
* ``score`` = copied patches / informative patches (0 when the sample has none), 1 for the
  source itself;
* ``region_px`` = pixels of the largest 4-connected region covered by copied patches (the
  union of their ``k x k`` footprints).

The search is exact and memory-bounded: queries and keys are compared in chunks of at most
``chunk_mb`` MiB of distances (``|q|^2 + |p|^2 - 2 q.p`` in float32 for the search, the
winner's distance recomputed directly in float64). The score only needs to know whether a
patch has a source patch within ``threshold``, and ``||q - p||^2 >= k^2 C (mean(q) -
mean(p))^2``: so each query is compared only with the source patches whose mean is within
``threshold`` of its own (the source's patches sorted by mean), which is exact for that
decision and about ten times faster on scans than comparing with every patch.

>>> source = torch.rand(1, 1, 40, 40) * 2 - 1
>>> scorer = CopyScorer(source)
>>> scorer(source)[0].score, scorer(-source)[0].score
(1.0, 0.0)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

DEFAULT_PATCH = 16
DEFAULT_STRIDE = 8
DEFAULT_THRESHOLD = 0.02
DEFAULT_MIN_STD = 0.02


@dataclass(frozen=True)
class CopyScore:
    """One sample's copy score: the copied fraction of its informative patches and the
    largest copied connected region, in pixels of the sample."""

    score: float
    region_px: int


def _check_images(images: torch.Tensor, name: str, patch_size: int) -> None:
    if images.ndim != 4:
        raise ValueError(f"{name} must be (B, C, H, W), got shape {tuple(images.shape)}")
    if min(images.shape[-2:]) < patch_size:
        raise ValueError(f"{name} of {images.shape[-2]} x {images.shape[-1]} px is smaller "
                         f"than the {patch_size} px patch")


def _grid(length: int, patch_size: int, stride: int) -> list[int]:
    """Patch origins along one side: every ``stride`` px, plus the last one so that the
    border is covered too."""
    origins = list(range(0, length - patch_size + 1, stride))
    if origins[-1] != length - patch_size:
        origins.append(length - patch_size)
    return origins


def query_patches(image: torch.Tensor, patch_size: int,
                  stride: int) -> tuple[torch.Tensor, list[int], list[int]]:
    """The ``(L, C*k*k)`` patches of one ``(1, C, H, W)`` image on its grid, with the row and
    column origins of the grid."""
    rows = _grid(image.shape[-2], patch_size, stride)
    cols = _grid(image.shape[-1], patch_size, stride)
    patches = F.unfold(image, patch_size)  # every position, (1, C*k*k, L_all)
    width = image.shape[-1] - patch_size + 1
    index = torch.tensor([r * width + c for r in rows for c in cols], device=image.device)
    return patches[0, :, index].T.contiguous(), rows, cols


def robust_std(patches: torch.Tensor) -> torch.Tensor:
    """``1.4826 x`` the median absolute deviation of every row of ``(L, D)``: the standard
    deviation for Gaussian texture, 0 for a patch that is mostly one value (air, a clipped
    window) with a few odd pixels."""
    values = patches.double()
    median = values.median(dim=1, keepdim=True).values
    return 1.4826 * (values - median).abs().median(dim=1).values


class _Keys:
    """Every ``k x k`` patch of a source (stride 1) in row bands, built once and kept while
    they fit ``keep_mb`` MiB (else rebuilt for each search, so memory stays bounded)."""

    def __init__(self, source: torch.Tensor, patch_size: int, band_rows: int,
                 keep_mb: float) -> None:
        self.source = source
        self.patch_size = patch_size
        self.band_rows = band_rows
        positions = (source.shape[-2] - patch_size + 1) * (source.shape[-1] - patch_size + 1)
        size_mb = positions * source.shape[1] * patch_size ** 2 * 4 / 2**20
        self._kept = list(self._build()) if size_mb <= keep_mb else None

    @property
    def kept(self) -> bool:
        return self._kept is not None

    def _build(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        k = self.patch_size
        last = self.source.shape[-2] - k + 1
        for top in range(0, last, self.band_rows):
            band = self.source[..., top:min(top + self.band_rows, last) + k - 1, :]
            keys = F.unfold(band, k)[0].T.contiguous()  # (positions, C*k*k)
            yield keys, (keys.double() ** 2).sum(1).float()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self._kept) if self._kept is not None else self._build()


class _KeysByMean:
    """Every patch of a source sorted by its mean, for the pruned search (kept in memory)."""

    def __init__(self, keys: _Keys) -> None:
        patches = torch.cat([band for band, _ in keys])
        means = patches.double().mean(1)
        self.means, order = torch.sort(means)
        self.patches = patches[order]
        self.squares = (self.patches.double() ** 2).sum(1).float()

    def nearest_within(self, queries: torch.Tensor, radius: float,
                       chunk_entries: int) -> torch.Tensor:
        """Exact squared distance from every query row to its nearest patch among those whose
        mean is within ``radius`` of the query's (``inf`` where there is none): the true
        nearest distance wherever that is ``<= radius`` RMS."""
        best = torch.full((queries.shape[0],), float("inf"), dtype=torch.float64,
                          device=queries.device)
        bins = torch.floor(queries.double().mean(1) / radius).long()
        slack = 1e-9  # float64 rounding of the means
        for value in torch.unique(bins).tolist():
            rows = torch.nonzero(bins == value).flatten()
            low = torch.searchsorted(self.means, (value - 1) * radius - slack)
            high = torch.searchsorted(self.means, (value + 2) * radius + slack, right=True)
            if high <= low:
                continue
            block = queries[rows]
            columns = max(1, chunk_entries // len(rows))
            for first in range(int(low), int(high), columns):
                last = min(first + columns, int(high))
                best[rows] = torch.minimum(best[rows], _chunk_nearest(
                    block, self.patches[first:last], self.squares[first:last]))
        return best


def _chunk_nearest(chunk: torch.Tensor, band: torch.Tensor,
                   band_sq: torch.Tensor) -> torch.Tensor:
    """Exact squared distance (float64) from every row of ``chunk`` to its nearest row of
    ``band``: the float32 expansion picks the winner, whose distance is computed directly."""
    chunk_sq = (chunk.double() ** 2).sum(1).float()
    approx = chunk_sq[:, None] + band_sq[None, :] - 2.0 * (chunk @ band.T)
    winner = approx.argmin(dim=1)
    return ((chunk.double() - band[winner].double()) ** 2).sum(1)


def _nearest(queries: torch.Tensor, keys: _Keys, chunk_rows: int) -> torch.Tensor:
    """Exact squared distance (float64) from every query row to its nearest key."""
    best = torch.full((queries.shape[0],), float("inf"), dtype=torch.float64,
                      device=queries.device)
    for first in range(0, queries.shape[0], chunk_rows):
        chunk = queries[first:first + chunk_rows]
        chunk_best = best[first:first + chunk_rows]
        for band, band_sq in keys:
            torch.minimum(chunk_best, _chunk_nearest(chunk, band, band_sq), out=chunk_best)
    return best


def nearest_patch_distances(sample: torch.Tensor, source: torch.Tensor, *,
                            patch_size: int = DEFAULT_PATCH, stride: int = DEFAULT_STRIDE,
                            chunk_mb: float = 64.0) -> torch.Tensor:
    """RMS distance from each ``k x k`` patch of ``sample`` (``(1, C, H, W)``, on its grid)
    to its exact nearest ``k x k`` patch anywhere in ``source`` (``(1, C, h, w)``).

    Returns ``(rows, cols)`` float64: one distance per grid position (origins every
    ``stride`` px plus the last), in the images' units.
    """
    return CopyScorer(source, patch_size=patch_size, stride=stride,
                      chunk_mb=chunk_mb).distances(sample)


class CopyScorer:
    """Copy scores of many samples against one source (see the module docstring).

    Args:
        source: the training image ``(1, C, h, w)`` in [-1, 1], at the samples' pixel scale.
        patch_size: ``k``, the side of the compared patches (px).
        stride: the sample's patches are taken every ``stride`` px (the source's at every
            position).
        threshold: RMS distance at or under which a patch counts as copied.
        min_std: patches of the sample with a lower standard deviation are flat: not counted.
        chunk_mb: at most this many MiB of distances at a time; the source's patches are
            kept in memory while they fit 4 x ``chunk_mb``.
    """

    def __init__(self, source: torch.Tensor, *, patch_size: int = DEFAULT_PATCH,
                 stride: int = DEFAULT_STRIDE, threshold: float = DEFAULT_THRESHOLD,
                 min_std: float = DEFAULT_MIN_STD, chunk_mb: float = 64.0) -> None:
        if patch_size < 1 or stride < 1:
            raise ValueError("patch_size and stride must be at least 1")
        _check_images(source, "source", patch_size)
        self.patch_size, self.stride = patch_size, stride
        self.threshold, self.min_std = threshold, min_std
        source = source.detach().float()
        width = source.shape[-1] - patch_size + 1
        # a band of key rows and a chunk of queries together hold ~chunk_mb MiB of distances
        self._band_rows = max(1, int(np.sqrt(chunk_mb * 2**20 / 4)) // width)
        self._chunk_rows = max(1, int(chunk_mb * 2**20 / 4) // (self._band_rows * width))
        self._keys = _Keys(source, patch_size, self._band_rows, keep_mb=4 * chunk_mb)
        self._dims = source.shape[1] * patch_size ** 2
        self._chunk_entries = int(chunk_mb * 2**20 / 4)
        # the pruned search holds every source patch: only where they fit the kept budget
        self._by_mean = _KeysByMean(self._keys) if self._keys.kept else None

    def distances(self, sample: torch.Tensor) -> torch.Tensor:
        """:func:`nearest_patch_distances` of one ``(1, C, H, W)`` sample."""
        _check_images(sample, "sample", self.patch_size)
        queries, rows, cols = query_patches(sample.detach().float().to(self._keys.source.device),
                                            self.patch_size, self.stride)
        squared = _nearest(queries, self._keys, self._chunk_rows)
        return (squared.clamp_min(0) / self._dims).sqrt().reshape(len(rows), len(cols))

    def __call__(self, images: torch.Tensor) -> list[CopyScore]:
        """One :class:`CopyScore` per image of ``(B, C, H, W)``."""
        _check_images(images, "images", self.patch_size)
        return [self._score(images[i:i + 1]) for i in range(images.shape[0])]

    def copied(self, sample: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """``(informative, copied)``: boolean ``(rows, cols)`` grids of one ``(1, C, H, W)``
        sample's patches (see the module docstring)."""
        _check_images(sample, "sample", self.patch_size)
        device = self._keys.source.device
        queries, rows, cols = query_patches(sample.detach().float().to(device),
                                            self.patch_size, self.stride)
        informative = robust_std(queries) >= self.min_std
        squared = torch.full((queries.shape[0],), float("inf"), dtype=torch.float64,
                             device=device)
        if informative.any():
            chosen = queries[informative]
            squared[informative] = (
                _nearest(chosen, self._keys, self._chunk_rows) if self._by_mean is None
                else self._by_mean.nearest_within(chosen, self.threshold, self._chunk_entries))
        copied = informative & (squared <= self.threshold ** 2 * self._dims)
        shape = (len(rows), len(cols))
        return (informative.cpu().numpy().reshape(shape), copied.cpu().numpy().reshape(shape))

    def _score(self, sample: torch.Tensor) -> CopyScore:
        informative, copied = self.copied(sample)
        if not informative.any():
            return CopyScore(0.0, 0)
        rows = _grid(sample.shape[-2], self.patch_size, self.stride)
        cols = _grid(sample.shape[-1], self.patch_size, self.stride)
        covered = np.zeros(sample.shape[-2:], dtype=bool)
        k = self.patch_size
        for i, j in zip(*np.nonzero(copied), strict=True):
            covered[rows[i]:rows[i] + k, cols[j]:cols[j] + k] = True
        labels, count = ndimage.label(covered)
        region = int(np.bincount(labels.ravel())[1:].max()) if count else 0
        return CopyScore(float(copied.sum() / informative.sum()), region)
