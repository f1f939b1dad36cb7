"""Reading and writing scans: one entry point each, the format chosen by file type.

>>> from pydicom.data import get_testdata_file
>>> scan = read_scan(get_testdata_file("CT_small.dcm"))
>>> scan.shape, scan.meta.units
((128, 128), 'HU')
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medsingan.errors import InvalidImageError, ScanReadError, ScanWriteError
from medsingan.io.dicom import DerivedSeries, read_dicom, write_dicom
from medsingan.io.nifti import read_nifti, write_nifti
from medsingan.io.raster import RASTER_FORMATS, read_raster, write_png
from medsingan.io.scan import Scan, ScanMetadata
from medsingan.io.series import read_series
from medsingan.io.sitk import SITK_FORMATS, read_sitk, write_sitk

__all__ = ["DerivedSeries", "Scan", "ScanMetadata", "read_scan", "write_scan", "scan_format"]

_DICOM_MAGIC_OFFSET = 128


def scan_format(path: str | os.PathLike[str]) -> str:
    """'dicom', 'nifti', 'mha', 'nrrd', 'png', 'tiff' or 'jpeg', from the suffix (DICOM also
    by its magic)."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if path.suffix.lower() in SITK_FORMATS:
        return SITK_FORMATS[path.suffix.lower()]
    if path.suffix.lower() in RASTER_FORMATS:
        return RASTER_FORMATS[path.suffix.lower()]
    if path.suffix.lower() in (".dcm", ".dicom", ".ima", ""):
        return "dicom"
    if path.is_file():
        with open(path, "rb") as handle:
            handle.seek(_DICOM_MAGIC_OFFSET)
            if handle.read(4) == b"DICM":
                return "dicom"
    raise ScanReadError(f"{path.name}: unknown file type '{path.suffix}'; medsingan reads DICOM "
                        "(.dcm, or a folder of one series), NIfTI (.nii, .nii.gz), MHA/MHD, "
                        "NRRD, PNG, TIFF and JPEG")


def read_scan(path: str | os.PathLike[str], *, frame: int | None = None,
              slice_index: int | None = None, slice_axis: int | None = None,
              volume: int | None = None) -> Scan:
    """Read one 2D slice of a scan in physical units, display polarity, (rows, columns).

    ``path`` is a scan file or a folder of one DICOM series (one file per slice).
    ``frame`` picks a frame of a multi-frame DICOM. ``slice_index`` picks a slice (default:
    the middle one, with a note): of a series in order along the slice normal
    (:mod:`medsingan.io.series`); of a NIfTI, MHA or NRRD volume along ``slice_axis``
    (default: the volume's only one-voxel axis, else 2; voxel axes in the file's order,
    SimpleITK's x, y, z for MHA/NRRD). ``volume`` picks a volume of a 4D NIfTI. Raises
    :class:`ScanReadError` (or a subclass) with a one-line message for anything that cannot
    be read, and :class:`InvalidImageError` for non-finite pixel values.
    """
    path = Path(path)
    if not path.exists():
        raise ScanReadError(f"{path}: no such file")
    if path.is_dir():
        given = [option for option, value in (("--frame", frame), ("--slice-axis", slice_axis),
                                              ("--volume", volume)) if value is not None]
        if given:
            verb = "does" if len(given) == 1 else "do"
            raise ScanReadError(f"{' and '.join(given)} {verb} not apply to a DICOM series "
                                f"folder ({path}); choose its slice with --slice")
        return _finite(read_series(path, slice_index=slice_index))
    if path.stat().st_size == 0:
        raise ScanReadError(f"{path.name} is empty (0 bytes)")
    kind = scan_format(path)
    if kind != "dicom" and frame is not None:
        raise ScanReadError(f"--frame applies to multi-frame DICOM only, not {kind}")
    if kind not in ("nifti", "mha", "nrrd") and (slice_index is not None
                                                 or slice_axis is not None):
        raise ScanReadError(f"--slice/--slice-axis apply to NIfTI, MHA and NRRD volumes and "
                            f"to DICOM series folders, not to a {kind} file")
    if kind != "nifti" and volume is not None:
        raise ScanReadError(f"--volume applies to 4D NIfTI volumes only, not {kind}")
    if kind == "dicom":
        scan = read_dicom(path, frame=frame)
    elif kind == "nifti":
        scan = read_nifti(path, slice_index=slice_index, slice_axis=slice_axis, volume=volume)
    elif kind in ("mha", "nrrd"):
        scan = read_sitk(path, slice_index=slice_index, slice_axis=slice_axis)
    else:
        scan = read_raster(path)
    return _finite(scan)


def _finite(scan: Scan) -> Scan:
    """The scan, or ScanReadError when it has no pixels (a dimension of 0 in a corrupt
    header) and InvalidImageError when a pixel is NaN or infinite."""
    if scan.image.ndim != 2 or scan.image.size == 0:
        raise ScanReadError(f"{Path(scan.meta.source_path).name} holds an empty image (shape "
                            f"{scan.image.shape}); its header is corrupt")
    bad = int(np.count_nonzero(~np.isfinite(scan.image)))
    if bad:
        raise InvalidImageError(f"{Path(scan.meta.source_path).name} has {bad} NaN/inf pixel "
                                "value(s); fix or mask them before training")
    return scan


def write_scan(image: np.ndarray, like: ScanMetadata, path: str | os.PathLike[str], *,
               keep_identifiers: bool = False, patient_id: str | None = None,
               series: DerivedSeries | None = None,
               clip_window: tuple[float, float] | None = None) -> Path:
    """Write a derived image (physical units, display polarity) next to its source's format.

    The format follows ``path``'s suffix: ``.dcm`` (derived, de-identified DICOM: needs a DICOM
    source), ``.nii``/``.nii.gz`` (source affine and dtype), ``.mha``/``.nrrd`` (source
    geometry and pixel type, :func:`~medsingan.io.sitk.write_sitk`), ``.png`` (8/16-bit,
    display polarity, its units recorded). The write is atomic. ``series`` places a DICOM in
    a study and series (e.g. one per cohort); the other formats have no such notion.
    ``clip_window`` is the physical interval the image was clipped to (a CT window): DICOM
    and NIfTI record it as their display window, MHA/NRRD in their metadata, a PNG of a
    signed source spreads it over its 16 bits.
    """
    path = Path(path)
    if image.ndim != 2:
        raise ScanWriteError(f"expected a 2D image, got shape {image.shape}")
    kind = scan_format(path) if path.suffix else "dicom"
    if kind == "dicom":
        return write_dicom(image, like, path, keep_identifiers=keep_identifiers,
                           patient_id=patient_id, series=series, clip_window=clip_window)
    if kind == "nifti":
        return write_nifti(image, like, path, clip_window=clip_window)
    if kind in ("mha", "nrrd"):
        return write_sitk(image, like, path, clip_window=clip_window)
    if kind == "png":
        return write_png(image, like, path, clip_window=clip_window)
    raise ScanWriteError(f"cannot write {kind}: choose .dcm, .nii, .nii.gz, .mha, .nrrd or "
                         ".png")
