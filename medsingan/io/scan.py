"""The scan model: a 2D float image in physical units plus where it came from."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class ScanMetadata:
    """Everything needed to describe a 2D slice and to write a derived file back.

    Intensities of ``Scan.image`` are in physical units (the DICOM modality LUT applied, e.g. HU
    for CT) and in display polarity: a MONOCHROME1 source is inverted on read (``inverted``) so
    that dense tissue is bright, and inverted back when written as DICOM (:meth:`to_stored`).
    """

    format: str
    source_path: str
    sha256: str
    rows: int
    columns: int
    modality: str | None = None
    body_part: str | None = None
    pixel_spacing: tuple[float, float] | None = None
    bits_stored: int = 8
    signed: bool = False
    storage_dtype: str = "uint8"
    photometric: str = "MONOCHROME2"
    inverted: bool = False
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    window_center: float | None = None
    window_width: float | None = None
    units: str = "stored value"
    frame: int | None = None
    slice_axis: int | None = None
    slice_index: int | None = None
    volume: int | None = None
    affine: list[list[float]] | None = None
    # NIfTI: how the voxel slice was turned into display orientation (transposed, rows
    # flipped, columns flipped), undone on write
    display_transform: tuple[bool, bool, bool] | None = None
    # NIfTI: spatial unit and the qform/sform codes (what the affine refers to), kept on write
    nifti_space: tuple[str, int, int] | None = None
    # DICOM series folder: the folder, its number of slices and the slice read (0 = the first
    # along the slice normal); ``source_path`` is that slice's file
    series_folder: str | None = None
    series_slices: int | None = None
    series_index: int | None = None
    # MHA/NRRD: the source image's dimensions (a 2D image is written back 2D)
    image_dimensions: int | None = None
    dicom_header: dict[str, Any] | None = field(default=None, repr=False)
    notes: list[str] = field(default_factory=list)

    @property
    def stored_range(self) -> tuple[int, int]:
        """The integer range the source's pixels can hold (its storage before any rescale)."""
        if self.storage_dtype.startswith("float"):
            raise ValueError("floating-point storage has no integer range")
        if self.signed:
            return -(2 ** (self.bits_stored - 1)), 2 ** (self.bits_stored - 1) - 1
        return 0, 2**self.bits_stored - 1

    @property
    def physical_range(self) -> tuple[float, float]:
        """The stored range mapped through the rescale slope and intercept."""
        low, high = self.stored_range
        ends = sorted(
            (low * self.rescale_slope + self.rescale_intercept,
             high * self.rescale_slope + self.rescale_intercept)
        )
        return ends[0], ends[1]

    def to_stored(self, image: np.ndarray) -> np.ndarray:
        """Map a display-polarity physical image back to the source's stored integers
        (MONOCHROME1 inverted back, rescale undone, rounded and clipped to the stored range)."""
        values = image.astype(np.float64)
        if self.inverted:
            low, high = self.physical_range
            values = (low + high) - values
        stored = np.rint((values - self.rescale_intercept) / self.rescale_slope)
        low, high = self.stored_range
        return np.clip(stored, low, high).astype(self.storage_dtype)

    def to_dict(self, *, with_header: bool = False) -> dict[str, Any]:
        """A JSON-serialisable dict (the DICOM header only when asked: it may identify)."""
        data = asdict(self)
        if not with_header:
            data.pop("dicom_header")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScanMetadata:
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        for key in ("pixel_spacing", "display_transform", "nifti_space"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)


@dataclass
class Scan:
    """A 2D slice: ``image`` is float32 with shape (rows, columns), physical units."""

    image: np.ndarray
    meta: ScanMetadata

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.image.shape[0]), int(self.image.shape[1])
