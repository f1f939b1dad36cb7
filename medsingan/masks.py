"""Image + mask pairs (SinGAN-Seg, Thambawita et al., PLOS ONE 2022).

SinGAN-Seg trains one SinGAN on an image and its segmentation mask stacked as channels, and
writes every synthetic image with the synthetic mask drawn with it. medsingan does the same
with one image channel and one mask channel, ``(1, 2, H, W)``:

* channel 0 is the scan exactly as an image-only run sees it (modality preset, CT window,
  every option of ``train``);
* channel 1 is the mask, read by the same readers (DICOM, NIfTI, MHA/NRRD, PNG/TIFF) with the
  same slice selection, on the same pixel grid; its ``K + 1`` distinct values
  ``v_0 < ... < v_K`` (``v_0`` the background) are mapped to evenly spaced levels
  ``l_i = -1 + 2 i / K`` in [-1, 1]: a binary mask's 0 -> -1 and 1 -> 1;
* every scale of the mask channel is resized with nearest neighbours (never an in-between
  value: a label map stays a label map; :func:`medsingan.pyramid.build_image_pyramid`);
* a synthetic mask channel is rounded to the nearest level, ``i = round((m + 1) K / 2)``
  (a binary mask: thresholded at 0, SinGAN-Seg's 0.5 in [0, 1]) and written with the
  mask's own values.

>>> levels = MaskLevels.of_values(np.array([0, 0, 255, 255]), labels=False, name="m.png")
>>> levels.to_unit(np.array([0.0, 255.0])).tolist(), levels.indices(np.array([-0.3, 0.2]))
([-1.0, 1.0], array([0, 1]))

The written mask has the sample's format where that format holds labels on the sample's
grid: NIfTI (the source affine), MHA and NRRD (the source geometry); a PNG, TIFF or JPEG
sample gets a PNG mask; a DICOM sample gets a PNG mask too (rows x columns of the DICOM's
pixel data, unsigned 8/16-bit): a DICOM mask proper is a Segmentation object (another IOD),
and a derived CT image holding 0/1 would be read as Hounsfield units.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from medsingan.errors import ConfigError, InvalidImageError, ScanWriteError
from medsingan.io import read_scan, scan_format, write_scan
from medsingan.io.atomic import atomic_path
from medsingan.io.scan import ScanMetadata
from medsingan.pyramid import resize_nearest

MASK_KINDS = ("binary", "labels")
# a label map has at most this many values (background included): more levels than this
# sit closer in [-1, 1] than a generator's residual noise, and such a file is likely a scan
MAX_LABELS = 16
MASK_CHANNEL = 1
OUTLINE_RGB = (255, 64, 32)
_VOLUME_FORMATS = ("nifti", "mha", "nrrd")


@dataclass(frozen=True)
class MaskLevels:
    """A mask's values and their levels in [-1, 1] (see module docstring).

    ``values`` are the mask's distinct values, ascending; ``values[0]`` is the background.
    """

    kind: str
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.kind not in MASK_KINDS or len(self.values) < 2:
            raise ConfigError(f"a mask is binary or labels with 2 or more values, not "
                              f"{self.kind} {list(self.values)}")

    @classmethod
    def of_values(cls, mask: np.ndarray, *, labels: bool, name: str) -> MaskLevels:
        """The levels of a mask image; InvalidImageError for an empty or full mask, a
        non-binary one without ``labels`` and a label map of over :data:`MAX_LABELS` values."""
        if not np.all(np.isfinite(mask)):
            raise InvalidImageError(f"the mask {name} has NaN/inf values")
        values = np.unique(mask)
        if len(values) > (MAX_LABELS if labels else 2):
            shown = ", ".join(f"{v:g}" for v in values[:4]) + (", ..." if len(values) > 4 else "")
            if labels:
                raise InvalidImageError(f"the mask {name} has {len(values)} distinct values "
                                        f"({shown}): a label map has at most {MAX_LABELS}")
            lossy = " (a JPEG is lossy: save masks as PNG)" if scan_format(name) == "jpeg" else ""
            raise InvalidImageError(f"the mask {name} is not binary: {len(values)} distinct "
                                    f"values ({shown}){lossy}; give --labels for a label map")
        if len(values) < 2:
            what = "empty (every pixel 0)" if values[0] == 0 else \
                f"the whole image (every pixel {values[0]:g})"
            raise InvalidImageError(f"the mask {name} is {what}: a mask marks part of the scan")
        return cls("labels" if labels else "binary", tuple(float(v) for v in values))

    @property
    def top(self) -> int:
        """``K``: the highest level index."""
        return len(self.values) - 1

    @property
    def levels(self) -> list[float]:
        return [-1.0 + 2.0 * i / self.top for i in range(len(self.values))]

    def to_unit(self, mask: np.ndarray) -> np.ndarray:
        """Mask values -> their levels (float32); every value must be one of ``values``."""
        index = np.searchsorted(np.asarray(self.values), mask)
        index = np.clip(index, 0, self.top)
        if not np.array_equal(np.asarray(self.values)[index], mask):
            raise InvalidImageError(f"mask values other than {list(self.values)}")
        return (-1.0 + 2.0 * index / self.top).astype(np.float32)

    def indices(self, unit: np.ndarray | torch.Tensor) -> np.ndarray:
        """A mask channel in [-1, 1] -> the index of its nearest level (halves round up:
        a binary mask's foreground is where the channel is >= 0)."""
        unit = unit.detach().float().cpu().numpy() if isinstance(unit, torch.Tensor) else unit
        scaled = (np.asarray(unit, dtype=np.float64) + 1.0) * self.top / 2.0
        return np.clip(np.floor(scaled + 0.5), 0, self.top).astype(np.int64)

    def unit_of_indices(self, indices: np.ndarray) -> np.ndarray:
        return (-1.0 + 2.0 * np.asarray(indices) / self.top).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "values": list(self.values), "levels": self.levels}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MaskLevels:
        return cls(str(data["kind"]), tuple(float(v) for v in data["values"]))


def read_mask(path: str | os.PathLike[str], scan: ScanMetadata, *,
              labels: bool = False) -> tuple[np.ndarray, MaskLevels, ScanMetadata]:
    """Read a mask for ``scan`` (its metadata as read): ``(values, levels, mask metadata)``,
    ``values`` (rows, columns) in the scan's display orientation. A 2D raster mask is taken
    as drawn over the scan as medsingan shows it (``inspect --preview``).

    Raises:
        ScanReadError: the file cannot be read (the reader's one-line reason).
        InvalidImageError: another size than the scan, another grid (affine) than a volume
            scan's, or values that are not a mask (:meth:`MaskLevels.of_values`).
    """
    path = Path(path)
    mask = read_scan(path, **_selection(path, scan))
    values, meta = mask.image, mask.meta
    if scan.slice_index is None and scan.series_index is None and (
            meta.slice_index or meta.series_index):
        # a volume's middle slice would be taken, with nothing to say it lies on the scan's
        raise InvalidImageError(f"the mask {path.name} is a volume and the scan one image: "
                                "give the mask's slice as a 2D file")
    if values.shape != (scan.rows, scan.columns):
        raise InvalidImageError(f"the mask {path.name} is {values.shape[1]} x {values.shape[0]}"
                                f" px, the scan {scan.columns} x {scan.rows} px (W x H): a mask "
                                "is drawn on the scan's own pixels")
    if scan.affine is not None and meta.affine is not None and not np.allclose(
            scan.affine, meta.affine, rtol=1e-4, atol=1e-3):
        raise InvalidImageError(f"the mask {path.name} lies on another grid than the scan "
                                "(their affines differ): resample it onto the scan first")
    return values, MaskLevels.of_values(values, labels=labels, name=path.name), meta


def _selection(path: Path, scan: ScanMetadata) -> dict[str, int | None]:
    """The reader's options that pick the slice the scan's were: a volume's slice index and
    axis (and a 4D NIfTI's volume), a multi-frame DICOM's frame, a series folder's slice; a
    2D file needs none."""
    if path.is_dir():
        return {"slice_index": scan.series_index}
    kind = scan_format(path)
    if kind in _VOLUME_FORMATS:
        # a 4D scan's volume (DWI, fMRI, echoes) applies to a 4D mask; a 3D mask is the
        # anatomy's, the same for every volume
        volume = scan.volume if kind == "nifti" and _nifti_dims(path) == 4 else None
        return {"slice_index": scan.slice_index, "slice_axis": scan.slice_axis,
                "volume": volume}
    return {"frame": scan.frame} if kind == "dicom" and scan.frame is not None else {}


def _nifti_dims(path: Path) -> int | None:
    """The number of dimensions of a NIfTI file's header (``None`` if unreadable: the
    reader then says why)."""
    import nibabel

    try:
        return len(nibabel.load(path).shape)
    except Exception:
        return None


@dataclass
class PreparedMask:
    """A mask ready to be stacked as the training image's channel 1: ``unit`` (rows,
    columns) in [-1, 1] and ``record``, what the run's ``config.json`` keeps under
    ``extra["mask"]``."""

    unit: np.ndarray
    levels: MaskLevels
    record: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def prepare_mask(path: str | os.PathLike[str], scan: ScanMetadata, *, labels: bool,
                 finest: tuple[int, int], run_dir: Path, region: object = None) -> PreparedMask:
    """Read, check and map a training mask (see :func:`read_mask`); ``finest`` is the run's
    finest size, where the mask must still mark part of the scan. ``record`` holds the
    mask's path (relative to ``run_dir``, as the source's), sha256, kind, values, levels,
    and its area fraction at the finest scale.

    Raises ConfigError with a region (``--roi``): a region run's samples are tapered into
    the source at the region's border, so no single mask describes those pixels.
    """
    from medsingan.source_paths import relative_path

    if region is not None:
        raise ConfigError("--mask trains on the whole scan: a region run's (--roi) samples "
                          "are blended into the source at the region's border, where no mask "
                          "describes them; crop the scan and its mask instead")
    path = Path(path)
    values, levels, meta = read_mask(path, scan, labels=labels)
    unit = levels.to_unit(values)
    at_finest = levels.indices(resize_nearest(torch.from_numpy(unit)[None, None], finest))
    present = np.unique(at_finest)
    if len(present) < 2:
        raise InvalidImageError(f"the mask {path.name} marks too little of the scan to survive "
                                f"the resize to {finest[1]} x {finest[0]} px (--max-size): "
                                "raise --max-size or draw a larger mask")
    warnings = []
    if len(present) < len(levels.values):
        lost = [f"{levels.values[i]:g}" for i in range(len(levels.values)) if i not in present]
        warnings.append(f"label(s) {', '.join(lost)} of the mask {path.name} have no pixel at "
                        f"the trained size {finest[1]} x {finest[0]} px: samples never draw "
                        "them")
    record = {"path": relative_path(str(path.resolve()), run_dir),
              "sha256": meta.sha256,
              "format": meta.format, **levels.to_dict(),
              "area_fraction": float(np.mean(at_finest > 0))}
    return PreparedMask(unit, levels, record, warnings)


def stack_pair(image: torch.Tensor, mask_unit: np.ndarray) -> torch.Tensor:
    """The ``(1, 1, H, W)`` image and the mask's levels as a ``(1, 2, H, W)`` pair."""
    mask = torch.from_numpy(np.ascontiguousarray(mask_unit, dtype=np.float32))[None, None]
    return torch.cat([image, mask.to(image)], dim=1)


def mask_channels(extra: dict[str, Any] | None) -> int:
    """How many of a run's last channels are label channels (its ``config.json`` extra)."""
    return 1 if (extra or {}).get("mask") else 0


def run_levels(extra: dict[str, Any] | None) -> MaskLevels | None:
    """The mask levels of an image+mask run, ``None`` for an image-only run."""
    record = (extra or {}).get("mask")
    return MaskLevels.from_dict(record) if record else None


def check_image_only(extra: dict[str, Any], run_dir: Path) -> None:
    """ConfigError for an image+mask run where only an image-only run will do (edits)."""
    if mask_channels(extra):
        raise ConfigError(f"{run_dir} is an image+mask run (train --mask): augment draws its "
                          "image+mask pairs; edit, harmonize, paint and super-resolve need an "
                          "image-only run")


def split_pair(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(B, C, h, w)`` -> the image channel ``(B, 1, h, w)`` and the mask channel (or
    ``None`` for one channel)."""
    if images.shape[1] == 1:
        return images, None
    return images[:, :MASK_CHANNEL], images[:, MASK_CHANNEL:MASK_CHANNEL + 1]


# --- writing ------------------------------------------------------------------------------------

MASK_SUFFIX = {".dcm": ".png", ".png": ".png", ".nii.gz": ".nii.gz", ".nii": ".nii",
               ".mha": ".mha", ".nrrd": ".nrrd"}


def mask_path(sample: Path) -> Path:
    """Where a sample's mask goes: beside it, ``<name>_mask<suffix>`` (see module docstring
    for the format)."""
    name = sample.name
    for suffix in sorted(MASK_SUFFIX, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return sample.with_name(name[: -len(suffix)] + "_mask" + MASK_SUFFIX[suffix])
    raise ScanWriteError(f"no mask format for a sample named {name}")


def _written_values(levels: MaskLevels, suffix: str) -> tuple[np.ndarray, np.dtype]:
    """The value written for each level index and its dtype: the mask's own values where the
    format holds them exactly, else the indices 0..K (a PNG of negative or fractional
    labels)."""
    values = np.asarray(levels.values)
    integral = bool(np.all(values == np.round(values)))
    for dtype in (np.uint8, np.uint16):
        if integral and values.min() >= 0 and values.max() <= np.iinfo(dtype).max:
            return values.astype(dtype), np.dtype(dtype)
    if suffix == ".png":
        return np.arange(len(values), dtype=np.uint8), np.dtype(np.uint8)
    if integral and np.abs(values).max() < 2**31:
        return values.astype(np.int32), np.dtype(np.int32)
    return values.astype(np.float32), np.dtype(np.float32)


def written_values(levels: MaskLevels, path: Path) -> np.ndarray:
    """The values a mask file at ``path`` holds for level indices 0..K."""
    return _written_values(levels, _suffix(path))[0]


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return next(s for s in sorted(MASK_SUFFIX, key=len, reverse=True) if name.endswith(s))


def write_mask(indices: np.ndarray, levels: MaskLevels, like: ScanMetadata, path: Path) -> Path:
    """Write level indices (rows, columns) as a mask file at ``path``, atomically: a PNG
    (8/16-bit, no units) or, for ``.nii``/``.nii.gz``/``.mha``/``.nrrd``, the source's
    geometry with a label pixel type."""
    values, dtype = _written_values(levels, _suffix(path))
    pixels = values[np.asarray(indices)]
    if path.suffix.lower() == ".png":
        try:
            with atomic_path(path) as tmp:
                Image.fromarray(pixels).save(tmp, format="PNG")
        except OSError as exc:
            raise ScanWriteError(f"cannot write {path}: {exc.strerror or exc}") from exc
        return path
    label_meta = dataclasses.replace(
        like, storage_dtype=dtype.name, rescale_slope=1.0, rescale_intercept=0.0,
        units="label", bits_stored=8 * dtype.itemsize, signed=dtype.kind == "i",
        dicom_header=None)
    return write_scan(pixels.astype(np.float64), label_meta, path)


def read_mask_indices(path: Path, levels: MaskLevels, shape: tuple[int, int]) -> np.ndarray:
    """A written mask read back as level indices; InvalidImageError when it has another
    size or values than it was written with."""
    pixels = read_scan(path).image
    values = written_values(levels, path).astype(np.float64)
    index = np.searchsorted(values, pixels) if np.all(np.diff(values) > 0) else None
    if pixels.shape != tuple(shape) or index is None or not np.array_equal(
            values[np.clip(index, 0, len(values) - 1)], pixels):
        raise InvalidImageError(f"{path} is not the mask written with its sample (size or "
                                "values changed): remove the pair (it is regenerated) or use "
                                "--overwrite")
    return index


# --- statistics ---------------------------------------------------------------------------------

def pair_statistics(image: np.ndarray | torch.Tensor, inside: np.ndarray) -> dict[str, float]:
    """Intensity statistics of an image (its [-1, 1] channel) inside and outside a boolean
    mask: ``area`` (fraction of pixels inside), ``inside_mean``, ``inside_std``,
    ``outside_mean``, ``outside_std`` (``None`` where a side has no pixel)."""
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu().numpy()
    image = np.asarray(image, dtype=np.float64).reshape(inside.shape)
    stats: dict[str, Any] = {"area": float(np.mean(inside))}
    for name, where in (("inside", inside), ("outside", ~inside)):
        pixels = image[where]
        stats[f"{name}_mean"] = float(pixels.mean()) if pixels.size else None
        stats[f"{name}_std"] = float(pixels.std()) if pixels.size else None
    return stats


STAT_KEYS = ("area", "inside_mean", "inside_std", "outside_mean", "outside_std")


class PairCohort:
    """Collects the synthetic pairs of a cohort (image channel, mask indices) and sums them
    up against the real pair in :meth:`summary`."""

    def __init__(self, real: torch.Tensor, levels: MaskLevels) -> None:
        image, mask = split_pair(real.detach().cpu())
        self.levels = levels
        # clamped as the samples are when written: both sides of the comparison in [-1, 1]
        self.real = pair_statistics(image[0, 0].clamp(-1, 1), levels.indices(mask[0, 0]) > 0)
        self.samples: dict[int, dict[str, float]] = {}

    def add(self, index: int, image: torch.Tensor, indices: np.ndarray) -> dict[str, float]:
        stats = pair_statistics(image, np.asarray(indices) > 0)
        self.samples[index] = stats
        return stats

    def summary(self) -> dict[str, Any]:
        """``kind``, ``values``, the real pair's statistics, and over the synthetic pairs:
        ``area_mean/min/max``, ``empty`` and ``full`` (masks with no foreground or nothing
        else), and the mean of each statistic (``None`` where no sample has it)."""
        rows = list(self.samples.values())
        areas = [row["area"] for row in rows]

        def mean_of(key: str) -> float | None:
            values = [row[key] for row in rows if row[key] is not None]
            return float(np.mean(values)) if values else None

        return {"kind": self.levels.kind, "values": list(self.levels.values),
                "real": self.real, "pairs": len(rows),
                "area_mean": float(np.mean(areas)), "area_min": float(np.min(areas)),
                "area_max": float(np.max(areas)),
                "empty": sum(a == 0 for a in areas), "full": sum(a == 1 for a in areas),
                "synthetic": {key: mean_of(key) for key in STAT_KEYS}}


def summary_line(summary: dict[str, Any]) -> str:
    """The cohort's masks in one line, as ``augment`` prints it."""
    real, synthetic = summary["real"], summary["synthetic"]

    def means(stats: dict[str, Any]) -> str:
        return "/".join("-" if stats[k] is None else f"{stats[k]:.3f}"
                        for k in ("inside_mean", "outside_mean"))

    return (f"masks: area fraction mean {summary['area_mean']:.3f} (min "
            f"{summary['area_min']:.3f}, max {summary['area_max']:.3f}; real "
            f"{real['area']:.3f}), {summary['empty']} empty; mean intensity inside/outside "
            f"{means(synthetic)} (real {means(real)}, in [-1, 1])")


class PairOutputs:
    """The masks of an image+mask run's samples, for ``augment``: each rounded to its labels
    (:meth:`add`), written beside its sample (:meth:`write`), read back for a sample of an
    earlier, interrupted call (:meth:`read_back`), and summed up (:meth:`add_summary`)."""

    def __init__(self, real: torch.Tensor, levels: MaskLevels, like: ScanMetadata) -> None:
        self.levels, self.like = levels, like
        self.cohort = PairCohort(real, levels)
        self.real_pair = self.sheet_pair(split_pair(real.cpu())[0],
                                         levels.indices(split_pair(real.cpu())[1][0, 0]))
        self._indices: dict[int, np.ndarray] = {}

    @classmethod
    def of_run(cls, extra: dict[str, Any], real: torch.Tensor,
               like: ScanMetadata) -> PairOutputs | None:
        """The outputs of a run whose ``config.json`` extra records a mask, else ``None``."""
        levels = run_levels(extra)
        return None if levels is None else cls(real, levels, like)

    def sheet_pair(self, image: torch.Tensor, indices: np.ndarray) -> torch.Tensor:
        """``(1, 2, h, w)``: the image channel and the mask's foreground (every label but the
        background) as -1/1, what a contact sheet outlines."""
        foreground = torch.from_numpy(np.where(np.asarray(indices) > 0, 1.0, -1.0))
        return torch.cat([image.cpu().float(), foreground[None, None].float()], dim=1)

    def add(self, index: int, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Round sample ``index``'s mask channel ``(1, 1, h, w)`` to its labels and record
        its statistics against its image channel; returns the pair for a contact sheet."""
        indices = self.levels.indices(mask[0, 0])
        self._indices[index] = indices
        self.cohort.add(index, image[0, 0], indices)
        return self.sheet_pair(image, indices)

    def write(self, index: int, sample: Path) -> dict[str, Any]:
        """Write sample ``index``'s mask beside ``sample``; its manifest columns: ``mask``
        (the file) and ``mask_area`` (fraction of the sample's pixels in the mask)."""
        path = write_mask(self._indices.pop(index), self.levels, self.like, mask_path(sample))
        return {"mask": str(path.resolve()), "mask_area": self.cohort.samples[index]["area"]}

    def has_mask(self, sample: Path) -> bool:
        return mask_path(sample).is_file()

    def read_back(self, index: int, image: torch.Tensor, sample: Path) -> torch.Tensor:
        """The mask written beside ``sample`` by an earlier call, with its image channel
        ``(1, 1, h, w)``, recorded as :meth:`add` records it; returns the sheet pair."""
        indices = read_mask_indices(mask_path(sample), self.levels, tuple(image.shape[-2:]))
        self.cohort.add(index, image[0, 0], indices)
        return self.sheet_pair(image, indices)

    def add_summary(self, path: Path, summary: dict[str, Any]) -> dict[str, Any]:
        """``summary`` with ``masks`` (:meth:`PairCohort.summary`), rewritten to ``path``."""
        summary = {**summary, "masks": self.cohort.summary()}
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(summary, indent=2))
        return summary


def info_line(record: dict[str, Any]) -> str:
    """``info``'s line for an image+mask run (its ``extra["mask"]``)."""
    values = ", ".join(f"{v:g}" for v in record["values"])
    return (f"mask        {record['kind']} ({values}), {100 * record['area_fraction']:.1f}% of "
            f"the trained image: {record['path']} (from the run directory)")


# --- previews -----------------------------------------------------------------------------------

def outline(inside: np.ndarray) -> np.ndarray:
    """The pixels of a boolean mask that touch a pixel outside it (4-neighbours; the image
    border counts as outside)."""
    padded = np.pad(inside, 1, constant_values=False)
    interior = (padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
    return inside & ~interior


def outlined_tile(gray: np.ndarray, mask_channel: torch.Tensor, zoom: int) -> Image.Image:
    """An 8-bit image zoomed ``zoom`` times (nearest), with the outline of the mask channel's
    upper half (a binary mask: the mask) drawn in :data:`OUTLINE_RGB`."""
    inside = (mask_channel.detach().float().cpu().numpy() >= 0)
    big = np.kron(inside, np.ones((zoom, zoom), dtype=bool))
    rgb = np.repeat(np.kron(gray, np.ones((zoom, zoom), dtype=np.uint8))[..., None], 3, axis=2)
    rgb[outline(big)] = OUTLINE_RGB
    return Image.fromarray(rgb)


__all__: Sequence[str] = (
    "MaskLevels", "PairCohort", "PairOutputs", "PreparedMask", "check_image_only", "mask_channels",
    "mask_path", "outlined_tile", "pair_statistics", "prepare_mask", "read_mask",
    "read_mask_indices", "run_levels", "split_pair", "stack_pair",
    "summary_line", "write_mask",
)
