"""Native-resolution regions: train on a region of a scan, write outputs into the full-size scan.

A *region run* (``train --roi X,Y,W,H``) learns the rectangle of source pixels whose top-left
pixel is column ``X``, row ``Y``, ``W`` columns wide and ``H`` rows high. The region is cut
from the scan at its full resolution *before* the pyramid's ``max_size`` applies, so a 200 px
region at the default max size 250 is trained at 200 px: one run pixel per source pixel, the
scan's native spacing. ``--spacing S`` first resamples the region to ``S`` mm per pixel (never
finer than the scan's own). A region longer than ``max_size`` is shrunk like any image; its
outputs are scaled back up into the region (a warning says so).

An output of a region run is the **full-size source** with only the region changed. The
output ``g`` (run pixels, [-1, 1]) and its blend weight ``m`` are scaled to the region's size
when the run is not native, ``g`` is mapped to physical units, and inside the region

    out = (1 - m) * source + m * g,

outside it ``out = source``. Where ``m`` is exactly 0 the source's own physical values are
written back unchanged, so those pixels are stored bit-identical to the source's.

``m`` is the harmonization blend of SinGAN (paper Sec. 4): a mask dilated by a disk of radius
``r`` and blurred by a Gaussian of width ``sigma`` (cut at ``3 sigma``), normalised to a maximum
of 1; ``r`` 20 px for editing, 7 for harmonization, ``sigma`` 5 at ~250 px, scaled down for
smaller images. Every pixel farther than :func:`blend_margin` from the mask has ``m == 0``.
For an edit ``m`` follows the finding's mask; for a sample of ``augment`` (or a painting) it is
the *region taper*: the harmonization blend of the region shrunk by its margin, 1 well inside
and exactly 0 on the region's outermost pixels, so the sample replaces the region and meets
the source seamlessly at its border.

>>> region = Region.parse("120,340,200,180")
>>> region.slices
(slice(340, 520, None), slice(120, 320, None))
>>> blend_margin((250, 250), "edit"), blend_margin((250, 250), "harmonize")
(35, 22)
"""

from __future__ import annotations

import functools
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medsingan.errors import ConfigError, RunDirError, warn_user
from medsingan.io import ScanMetadata, read_scan
from medsingan.io.atomic import sha256_of
from medsingan.preprocess import IntensityMapping, check_trainable
from medsingan.pyramid import resize

# The paper's blend parameters are for images of about this longer side, px.
_PAPER_IMAGE_SIDE = 250
BLEND_RADIUS = {"edit": 20, "harmonize": 7}
BLEND_SIGMA = 5.0
# How the samples of a region run are blended into its border.
TAPER_MODE = "harmonize"
# Storage types whose values float32 (24-bit mantissa) does not always hold exactly.
_WIDER_THAN_FLOAT32 = ("float64", "int32", "uint32", "int64", "uint64")
_REGION = re.compile(r"^\s*(-?[0-9]+)\s*,\s*(-?[0-9]+)\s*,\s*(-?[0-9]+)\s*,\s*(-?[0-9]+)\s*$")


# --- blend weights ---------------------------------------------------------------------------

def blend_parameters(shape: tuple[int, int], mode: str) -> tuple[int, float]:
    """Dilation radius (px) and blur sigma (px) of the blend mask for an image of ``shape``.

    The paper's values (radius 20 for ``edit``, 7 for ``harmonize``, sigma 5) hold for ~250 px
    images; smaller images get them scaled by ``longer side / 250``.
    """
    zoom = min(1.0, max(shape) / _PAPER_IMAGE_SIDE)
    return max(1, round(BLEND_RADIUS[mode] * zoom)), max(0.5, BLEND_SIGMA * zoom)


def blend_margin(shape: tuple[int, int], mode: str) -> int:
    """Pixels farther than this from the mask (chessboard distance) are left exactly as they are."""
    radius, sigma = blend_parameters(shape, mode)
    return radius + math.ceil(3 * sigma)


def _disk(radius: int) -> torch.Tensor:
    steps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    return ((steps[:, None] ** 2 + steps[None, :] ** 2) <= radius**2).float()[None, None]


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation of a ``(1, 1, h, w)`` mask by a disk of ``radius`` px."""
    hits = F.conv2d((mask > 0).float(), _disk(radius).to(mask), padding=radius)
    return (hits > 0.5).float()


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur cut at ``ceil(3 sigma)`` px; the edge pixels are repeated
    outside the image, so a mask touching the border keeps its full weight there."""
    radius = math.ceil(3 * sigma)
    steps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(steps**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(image)
    padded = F.pad(image, (radius, radius, radius, radius), mode="replicate")
    blurred = F.conv2d(padded, kernel.view(1, 1, 1, -1))
    return F.conv2d(blurred, kernel.view(1, 1, -1, 1))


def blend_mask(mask: torch.Tensor, mode: str) -> torch.Tensor:
    """The soft blend weight ``m`` in [0, 1]: mask dilated, blurred, normalised to max 1.

    ``m`` is exactly 0 beyond :func:`blend_margin` of the mask.
    """
    radius, sigma = blend_parameters(tuple(mask.shape[-2:]), mode)
    soft = gaussian_blur(dilate(mask, radius), sigma)
    soft = torch.where(soft > 0, soft, torch.zeros_like(soft))  # no round-off below zero
    return (soft / soft.max()).clamp(0, 1)


def blend(real: torch.Tensor, generated: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``(1 - m) * real + m * generated``: equal to ``real`` wherever ``m`` is 0."""
    return torch.where(weight > 0, (1 - weight) * real + weight * generated, real)


def region_taper(shape: tuple[int, int]) -> torch.Tensor:
    """The blend weight ``(1, 1, h, w)`` of a sample that replaces a whole region of ``shape``:
    the harmonization blend of the region shrunk by its margin + 1 px, so it is 1 well inside
    and exactly 0 on the outermost pixels."""
    inset = blend_margin(shape, TAPER_MODE) + 1
    height, width = shape
    if min(height, width) <= 2 * inset:
        raise ConfigError(f"the region is {width} x {height} px at the run's scale: too small "
                          f"for a blended border of {inset} px on each side")
    inner = torch.zeros(1, 1, height, width)
    inner[..., inset:height - inset, inset:width - inset] = 1.0
    return blend_mask(inner, TAPER_MODE)


# --- regions and training --------------------------------------------------------------------

@dataclass(frozen=True)
class Region:
    """A rectangle of source pixels: top-left column ``x``, row ``y``; ``w`` columns, ``h``
    rows."""

    x: int
    y: int
    w: int
    h: int

    @classmethod
    def parse(cls, text: str | tuple[int, int, int, int]) -> Region:
        """``"X,Y,W,H"`` (or a tuple) -> a region; ConfigError for anything else."""
        if isinstance(text, tuple):
            return cls(*(int(v) for v in text))
        match = _REGION.match(text)
        if not match:
            raise ConfigError(f"--roi must be X,Y,W,H (column and row of the top-left corner, "
                              f"width and height, in px of the scan), not '{text}'")
        return cls(*(int(v) for v in match.groups()))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Region:
        return cls(int(data["x"]), int(data["y"]), int(data["w"]), int(data["h"]))

    def to_dict(self) -> dict[str, int]:
        return {"x": self.x, "y": self.y, "w": self.w, "h": self.h}

    def __str__(self) -> str:
        return f"{self.x},{self.y},{self.w},{self.h}"

    @property
    def shape(self) -> tuple[int, int]:
        return self.h, self.w

    @property
    def slices(self) -> tuple[slice, slice]:
        """``(rows, columns)`` of the region, to index an image with."""
        return slice(self.y, self.y + self.h), slice(self.x, self.x + self.w)

    def check_inside(self, shape: tuple[int, int]) -> None:
        """ConfigError when the region is empty or leaves an image of ``shape`` (rows, cols)."""
        rows, columns = shape
        if self.w < 1 or self.h < 1:
            raise ConfigError(f"--roi {self} is empty: W and H must be at least 1 px")
        if self.x < 0 or self.y < 0 or self.x + self.w > columns or self.y + self.h > rows:
            raise ConfigError(f"--roi {self} leaves the {columns} x {rows} px scan: X + W must "
                              f"lie within 0..{columns} and Y + H within 0..{rows}")


def region_unit(unit: np.ndarray, region: Region, meta: ScanMetadata, *, min_size: int,
                spacing: float | None = None) -> np.ndarray:
    """The region of a scan's [-1, 1] image (rows, columns), cut at full resolution and, with
    ``spacing`` (mm per px), resampled to it; what a region run is trained on.

    Raises:
        ConfigError: the region is empty, leaves the scan, or is shorter than ``min_size``
            (the coarsest pyramid size) on a side; ``spacing`` is finer than the scan's or the
            scan has no pixel spacing.
        InvalidImageError: the region is constant.
    """
    region.check_inside(unit.shape)
    crop = unit[region.slices]
    shape = region.shape
    if spacing is not None:
        if meta.pixel_spacing is None:
            raise ConfigError(f"--spacing needs a scan with a pixel spacing; "
                              f"{Path(meta.source_path).name} records none")
        if not spacing >= max(meta.pixel_spacing):
            raise ConfigError(f"--spacing {spacing:g} mm is finer than the scan's own "
                              f"{meta.pixel_spacing[0]:g} x {meta.pixel_spacing[1]:g} mm on "
                              "an axis: a region can be trained at its native spacing or "
                              "coarser")
        shape = (round(region.h * meta.pixel_spacing[0] / spacing),
                 round(region.w * meta.pixel_spacing[1] / spacing))
    if min(shape) < min_size:
        at = f" at {spacing:g} mm" if spacing is not None else ""
        raise ConfigError(f"--roi {region} is {shape[1]} x {shape[0]} px{at}, smaller than "
                          f"the coarsest pyramid size {min_size} px: give a larger region or "
                          "a lower --min-size")
    check_trainable(crop, min_size=1, name=f"the region {region}")
    if meta.storage_dtype in _WIDER_THAN_FLOAT32:
        warn_user([f"{Path(meta.source_path).name} stores {meta.storage_dtype} pixels: a region "
                   "run's outputs write the rest of the scan back at float32 precision (about "
                   "7 significant digits), not bit-identical to the source"])
    if shape == region.shape:
        return np.ascontiguousarray(crop)
    return resize(torch.from_numpy(np.ascontiguousarray(crop))[None, None],
                  shape)[0, 0].clamp(-1, 1).numpy()


# --- outputs: the full-size source with the region changed -----------------------------------

@functools.lru_cache(maxsize=2)
def _original_pixels(path: str, sha256: str, selection: tuple[int | None, ...],
                     stamp: tuple[int, int, int]) -> np.ndarray:
    """The source slice's pixels (physical units, display polarity), read once per file state
    (``stamp``: inode, size, mtime), after its hash was checked."""
    if sha256_of(path) != sha256:
        raise RunDirError(f"the source {path} changed since the run was trained (its sha256 "
                          f"differs): {_REGION_NEEDS}; put the original back")
    frame, slice_index, slice_axis, volume = selection
    image = read_scan(path, frame=frame, slice_index=slice_index, slice_axis=slice_axis,
                      volume=volume).image
    image.flags.writeable = False
    return image


_REGION_NEEDS = "a region run writes its outputs into the full-size source"


def source_status(meta: ScanMetadata, needs: str) -> os.stat_result:
    """``os.stat`` of a run's source file; RunDirError naming what ``needs`` it when it is
    missing (whether it changed is checked against its sha256 by the caller that reads it)."""
    path = Path(meta.source_path)
    try:
        status = os.stat(path)
    except OSError:
        status = None
    if status is None or not path.is_file():
        raise RunDirError(f"the source {path} is missing: {needs}; put it back where it was "
                          "trained") from None
    return status


def check_unchanged(meta: ScanMetadata, needs: str) -> None:
    """RunDirError when a run's source file is missing or its sha256 changed since training."""
    source_status(meta, needs)
    if sha256_of(meta.source_path) != meta.sha256:
        raise RunDirError(f"the source {meta.source_path} changed since the run was trained "
                          f"(its sha256 differs): {needs}; put the original back")


def original_source(meta: ScanMetadata) -> np.ndarray:
    """The full-resolution pixels of a run's source (read-only); RunDirError when the file is
    missing or changed since training."""
    status = source_status(meta, _REGION_NEEDS)
    image = _original_pixels(str(meta.source_path), meta.sha256,
                             (meta.frame, meta.slice_index, meta.slice_axis, meta.volume),
                             (status.st_ino, status.st_size, status.st_mtime_ns))
    if image.shape != (meta.rows, meta.columns):
        raise RunDirError(f"the source {meta.source_path} reads as {image.shape[1]} x "
                          f"{image.shape[0]} px, not the {meta.columns} x {meta.rows} px it "
                          "was trained on")
    return image


def region_of_run(extra: dict[str, Any]) -> tuple[Region, tuple[int, int]] | None:
    """A region run's region and its source's full size (rows, columns), from its
    ``config.json`` extra; ``None`` for a whole-scan run. Needs no source file."""
    if not extra.get("roi"):
        return None
    source = extra["source"]
    return Region.from_dict(extra["roi"]), (int(source["rows"]), int(source["columns"]))


def region_in_run_pixels(image: np.ndarray, region: Region, full: tuple[int, int],
                         run_shape: tuple[int, int], path: Path) -> np.ndarray:
    """The region of a written full-size output (physical units), scaled to the run's size;
    RunDirError when the file is not the full-size source's size."""
    if image.shape != full:
        raise RunDirError(f"{path} reads back as {image.shape[1]} x {image.shape[0]} px, not "
                          f"the source's {full[1]} x {full[0]}: it was changed since it was "
                          "written; remove it (it is regenerated) or use --overwrite")
    crop = np.ascontiguousarray(image[region.slices], dtype=np.float32)
    if crop.shape == tuple(run_shape):
        return crop
    return resize(torch.from_numpy(crop)[None, None], tuple(run_shape))[0, 0].numpy()


@dataclass(frozen=True, eq=False)
class RegionCanvas:
    """The full-size source of a region run, into which the run's outputs are composited.

    ``run_shape`` is the run's finest size (rows, columns); it equals the region's shape when
    the run is native (one run pixel per source pixel).
    """

    region: Region
    source: np.ndarray
    mapping: IntensityMapping
    run_shape: tuple[int, int]

    @classmethod
    def of_run(cls, extra: dict[str, Any], mapping: IntensityMapping,
               run_shape: tuple[int, int]) -> RegionCanvas | None:
        """The canvas of a run (its ``config.json`` extra), ``None`` for a whole-scan run."""
        if not extra.get("roi"):
            return None
        meta = ScanMetadata.from_dict(extra["source"])
        return cls(Region.from_dict(extra["roi"]), original_source(meta), mapping,
                   tuple(run_shape))

    @property
    def zoom(self) -> tuple[float, float]:
        """Run pixels per source pixel, (rows, columns): (1, 1) for a native run."""
        return self.run_shape[0] / self.region.h, self.run_shape[1] / self.region.w

    @property
    def native(self) -> bool:
        return self.run_shape == self.region.shape

    def resize_note(self) -> str | None:
        """What a user must know when the run is not native, else ``None``."""
        if self.native:
            return None
        return (f"the region {self.region} ({self.region.w} x {self.region.h} px) was trained "
                f"at {self.run_shape[1]} x {self.run_shape[0]} px: outputs are scaled back up "
                "into it, with less detail than the source's own")

    def to_run(self, image: torch.Tensor, mode: str = "bicubic") -> torch.Tensor:
        """A ``(1, 1, h, w)`` image in source pixels scaled by :attr:`zoom` (at least 1 px)."""
        if self.native:
            return image
        height, width = image.shape[-2:]
        shape = (max(1, round(height * self.zoom[0])), max(1, round(width * self.zoom[1])))
        return resize(image, shape, mode=mode)

    def point_to_run(self, x: int, y: int) -> tuple[int, int]:
        """Source pixel ``(x, y)`` -> the run's pixel, relative to the region."""
        return (math.floor((x - self.region.x) * self.zoom[1]),
                math.floor((y - self.region.y) * self.zoom[0]))

    def box_to_source(self, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        """A box ``(x, y, w, h)`` in run pixels -> source pixels."""
        x, y, w, h = box
        left, top = math.floor(x / self.zoom[1]), math.floor(y / self.zoom[0])
        right, bottom = math.ceil((x + w) / self.zoom[1]), math.ceil((y + h) / self.zoom[0])
        return self.region.x + left, self.region.y + top, right - left, bottom - top

    def crop(self, image: torch.Tensor) -> torch.Tensor:
        """The region of a full-size ``(1, 1, rows, columns)`` image."""
        rows, columns = self.region.slices
        return image[..., rows, columns]

    def full_mask(self, mask: torch.Tensor) -> np.ndarray:
        """A ``(1, 1, h, w)`` mask in run pixels as a full-size boolean image of the source."""
        full = np.zeros(self.source.shape, bool)
        inside = resize(mask.float().cpu(), self.region.shape, mode="bilinear")[0, 0] >= 0.5
        full[self.region.slices] = inside.numpy()
        return full

    def check_within(self, weight: torch.Tensor, margin: int) -> None:
        """ConfigError when a blend weight (run pixels) reaches the region's outermost pixels:
        the blend would end in a step at the region's border."""
        ring = torch.ones_like(weight, dtype=torch.bool)
        ring[..., 1:-1, 1:-1] = False
        if bool((weight[ring] > 0).any()):
            source_margin = math.ceil((margin + 1) / min(self.zoom))
            raise ConfigError(f"the finding and its blend margin ({source_margin} px) cross the "
                              f"border of the run's region {self.region} (X,Y,W,H in source "
                              f"px): keep the edit at least {source_margin} px inside it")

    def compose(self, generated: torch.Tensor, weight: torch.Tensor) -> np.ndarray:
        """The full-size source (physical units, float32) with the region blended with
        ``generated`` (``(1, 1, h, w)`` in [-1, 1], run pixels) by ``weight`` (same shape)."""
        if tuple(generated.shape[-2:]) != self.run_shape:
            raise ConfigError(f"a region run's outputs replace its region ("
                              f"{self.run_shape[1]} x {self.run_shape[0]} px at the run's "
                              f"scale): an output of {generated.shape[-1]} x "
                              f"{generated.shape[-2]} px does not fit; --height, --width, "
                              "--scale-h and --scale-w apply to whole-scan runs")
        generated = generated.detach().cpu().float()
        weight = weight.detach().cpu().float()
        if not self.native:
            generated = resize(generated, self.region.shape)
            weight = resize(weight, self.region.shape, mode="bilinear").clamp(0, 1)
        physical = self.mapping.from_unit(generated[0, 0].numpy())
        full = np.array(self.source, dtype=np.float32)
        inside = blend(torch.from_numpy(full[self.region.slices].astype(np.float64)),
                       torch.from_numpy(physical.astype(np.float64)),
                       weight[0, 0].double())
        full[self.region.slices] = inside.numpy().astype(np.float32)
        return full


def output_image(unit: torch.Tensor, mapping: IntensityMapping, canvas: RegionCanvas | None,
                 weight: torch.Tensor | None = None
                 ) -> tuple[np.ndarray, tuple[float, float] | None]:
    """An output ``(1, 1, h, w)`` in [-1, 1] as it is written: physical units, and the clip
    window its file records. A whole-scan run's output is the mapped image, clipped to the
    mapping's window. A region run's is composited into the full-size source with ``weight``
    (default: the region taper) and records no clip window: outside the region nothing was
    clipped, and the source's own display window still applies."""
    if canvas is None:
        return mapping.from_unit(unit[0, 0].detach().cpu().numpy()), mapping.clip_window
    if weight is None:
        weight = region_taper(canvas.run_shape)
    return canvas.compose(unit, weight), None
