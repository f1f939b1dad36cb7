"""DICOM series folders, the usual CT/MR export of one file per slice: check that a folder
holds one series with one geometry, order its slices through the patient, read one of them.

Slice ``k`` of a series is the ``k``-th file in order of position along the slice normal
(Image Position (Patient) projected on the cross product of the Image Orientation (Patient)
cosines), from the lowest: for an axial series in the usual orientation, from the feet up.
Without positions the order is the Instance Number's.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from medsingan.errors import ScanReadError
from medsingan.io.dicom import _pixel_spacing, frame_count, image_size, read_dicom
from medsingan.io.reasons import one_line
from medsingan.io.scan import Scan

# A step between neighbouring slices this many times the series' smallest step is a gap.
GAP_FACTOR = 1.5
# Positions closer than this (mm, or instance numbers) are the same position.
_SAME_POSITION = 1e-3
# Steps differing by more than this (mm, or a fraction of the step) are uneven.
_UNEVEN_ABSOLUTE, _UNEVEN_RELATIVE = 0.01, 0.1
# Spacings and direction cosines within these of the first slice's are the same.
_SPACING_RTOL = 1e-4
_COSINE_ATOL = 1e-4


@dataclass(frozen=True)
class DicomSeries:
    """The image files of one series, in slice order, and what the order was taken from.

    >>> series = DicomSeries(Path("ct"), "1.2.3", (Path("ct/b.dcm"), Path("ct/a.dcm")),
    ...                      (-10.0, -7.5), "position")
    >>> len(series), series.files[0].name
    (2, 'b.dcm')
    """

    folder: Path
    series_uid: str
    files: tuple[Path, ...]
    positions: tuple[float, ...]
    ordered_by: str  # "position" (mm along the slice normal) or "instance number"
    skipped: int = 0  # files that are not DICOM image objects

    def __len__(self) -> int:
        return len(self.files)


def _image_headers(folder: Path) -> tuple[list[tuple[Path, Dataset]], int]:
    """The headers (no pixel data) of the folder's DICOM image objects, and how many other
    files there are (not DICOM, or DICOM without an image: DICOMDIR, reports, ...)."""
    headers, skipped = [], 0
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            skipped += 1
            continue
        except Exception as exc:  # pydicom raises many types on truncated or corrupt files
            raise ScanReadError(f"{folder.name}/{path.name}: cannot parse DICOM "
                                f"({one_line(exc)}); the file may be truncated or "
                                "corrupt") from exc
        if "Rows" in ds and "Columns" in ds:
            headers.append((path, ds))
        else:
            skipped += 1
    return headers, skipped


def _one_series(folder: Path, headers: list[tuple[Path, Dataset]]) -> str:
    uids = Counter(str(ds.get("SeriesInstanceUID", "")) for _, ds in headers)
    if len(uids) > 1:
        (first, n_first), (second, n_second), *rest = uids.most_common()
        more = f" and {len(rest)} more" if rest else ""
        raise ScanReadError(f"{folder} mixes {len(uids)} DICOM series: {first or '(none)'} "
                            f"({n_first} files) and {second or '(none)'} ({n_second} "
                            f"files){more}; give a folder that holds one series")
    return next(iter(uids))


def _floats(ds: Dataset, keyword: str, count: int) -> np.ndarray | None:
    """``count`` finite numbers of a multi-valued element, else ``None``."""
    try:
        values = np.array([float(v) for v in ds[keyword].value], dtype=float)
    except (KeyError, TypeError, ValueError, OverflowError):
        return None
    return values if values.shape == (count,) and np.isfinite(values).all() else None


def _check_geometry(folder: Path, headers: list[tuple[Path, Dataset]]) -> None:
    """One size, pixel spacing and orientation for every slice; single-frame objects."""
    first_path, first = headers[0]
    size = image_size(first, first_path)
    spacing = _pixel_spacing(first)
    cosines = _floats(first, "ImageOrientationPatient", 6)
    for path, ds in headers:
        frames = frame_count(ds, path)
        if frames > 1:
            raise ScanReadError(f"{folder}: {path.name} is a multi-frame object ({frames} "
                                "frames), not a slice of a series; give that file itself "
                                "(choose a frame with --frame)")
        where = f"{folder}: {first_path.name} and {path.name}"
        if image_size(ds, path) != size:
            raise ScanReadError(f"{where} differ in size ({size[0]}x{size[1]} and "
                                f"{ds.Rows}x{ds.Columns} px); the slices of a series share "
                                "one size")
        other = _pixel_spacing(ds)
        if (other is None) != (spacing is None) or (
                spacing is not None and not np.allclose(other, spacing, rtol=_SPACING_RTOL,
                                                        atol=0.0)):
            raise ScanReadError(f"{where} have different pixel spacings ({spacing} and "
                                f"{other} mm); the slices of a series share one spacing")
        other_cosines = _floats(ds, "ImageOrientationPatient", 6)
        if (other_cosines is None) != (cosines is None) or (
                cosines is not None and not np.allclose(other_cosines, cosines, rtol=0.0,
                                                        atol=_COSINE_ATOL)):
            raise ScanReadError(f"{where} have different orientations (Image Orientation "
                                "(Patient)); the slices of a series share one orientation")


def _positions(folder: Path,
               headers: list[tuple[Path, Dataset]]) -> tuple[list[float], str]:
    """Each slice's place along the series: mm along the slice normal, else its Instance
    Number."""
    cosines = _floats(headers[0][1], "ImageOrientationPatient", 6)
    points = [_floats(ds, "ImagePositionPatient", 3) for _, ds in headers]
    if cosines is not None and all(point is not None for point in points):
        normal = np.cross(cosines[:3], cosines[3:])
        return [float(point @ normal) for point in points], "position"
    numbers = []
    for path, ds in headers:
        try:
            numbers.append(float(int(ds.InstanceNumber)))
        except (AttributeError, TypeError, ValueError, OverflowError):
            raise ScanReadError(f"{folder}: {path.name} has neither Image Position (Patient) "
                                "nor Instance Number: the slices cannot be ordered") from None
    return numbers, "instance number"


def _check_spacing(folder: Path, files: list[Path], positions: list[float],
                   ordered_by: str) -> None:
    """No two slices at one position, no slice missing (a step over GAP_FACTOR times the
    smallest step), no uneven steps (more than 10 % or 0.01 mm apart). A slice missing at
    either end of the series cannot be seen."""
    unit = " mm" if ordered_by == "position" else ""
    steps = np.diff(positions)
    for i, step in enumerate(steps):
        if step < _SAME_POSITION:
            raise ScanReadError(f"{folder}: {files[i].name} and {files[i + 1].name} are at the "
                                f"same {ordered_by} ({positions[i]:g}{unit}); remove the "
                                "duplicate slice")
    if len(steps) < 2:
        return
    # the smallest step is the series' own (a median would hide one missing slice of three)
    usual = float(np.min(steps))
    gaps = [i for i, step in enumerate(steps) if step > GAP_FACTOR * usual]
    if gaps:
        i = gaps[0]
        more = f" ({len(gaps)} gaps in all)" if len(gaps) > 1 else ""
        raise ScanReadError(f"{folder}: slice(s) missing between {files[i].name} "
                            f"({ordered_by} {positions[i]:g}{unit}) and {files[i + 1].name} "
                            f"({positions[i + 1]:g}{unit}): a step of {steps[i]:g}{unit} where "
                            f"the series steps by {usual:g}{unit}{more}")
    widest = float(np.max(steps))
    if widest - usual > max(_UNEVEN_ABSOLUTE, _UNEVEN_RELATIVE * usual):
        i = int(np.argmax(steps))
        raise ScanReadError(f"{folder}: uneven slice spacing: steps from {usual:g}{unit} to "
                            f"{widest:g}{unit} (between {files[i].name} and "
                            f"{files[i + 1].name}); a volume needs one slice step")


def list_series(folder: str | Path) -> DicomSeries:
    """The DICOM series in ``folder``, checked and in slice order.

    Files that are not DICOM image objects are skipped (and counted). Raises
    :class:`ScanReadError` with one line when the folder holds no image, several series,
    slices of different size, spacing or orientation, multi-frame objects, two slices at one
    position, or a gap in the positions (a missing slice).
    """
    folder = Path(folder)
    try:
        headers, skipped = _image_headers(folder)
    except OSError as exc:
        raise ScanReadError(f"cannot read the folder {folder}: {exc.strerror or exc}") from exc
    if not headers:
        folders = sorted(p.name for p in folder.iterdir() if p.is_dir())
        if skipped:
            what = f"{skipped} file(s), none a DICOM image"
        elif folders:
            listed = ", ".join(folders[:3]) + (", ..." if len(folders) > 3 else "")
            what = f"no files, only folders ({listed})"
        else:
            what = "no files"
        raise ScanReadError(f"{folder} holds {what}; give a scan file or the folder of one "
                            "DICOM series")
    series_uid = _one_series(folder, headers)
    _check_geometry(folder, headers)
    positions, ordered_by = _positions(folder, headers)
    order = sorted(range(len(headers)), key=lambda i: (positions[i], headers[i][0].name))
    files = [headers[i][0] for i in order]
    sorted_positions = [positions[i] for i in order]
    _check_spacing(folder, files, sorted_positions, ordered_by)
    return DicomSeries(folder=folder, series_uid=series_uid, files=tuple(files),
                       positions=tuple(sorted_positions), ordered_by=ordered_by,
                       skipped=skipped)


def read_series(folder: str | Path, *, slice_index: int | None = None) -> Scan:
    """Read slice ``slice_index`` (default: the middle one, with a note) of a DICOM series
    folder, as :func:`~medsingan.io.dicom.read_dicom` reads that slice's file: a derived
    image keeps the slice's header and its place in the patient. The metadata records the
    folder, the number of slices and the index."""
    series = list_series(folder)
    count = len(series)
    notes = []
    if slice_index is None:
        slice_index = count // 2
        if count > 1:
            notes.append(f"series of {count} slices: using the middle slice {slice_index} "
                         "(choose with --slice)")
    if not 0 <= slice_index < count:
        raise ScanReadError(f"slice {slice_index} is out of range: {series.folder} holds "
                            f"{count} slice(s) (0..{count - 1})")
    if series.ordered_by != "position":
        notes.append("slices ordered by Instance Number: the files give no Image Position "
                     "(Patient)")
    if series.skipped:
        notes.append(f"{series.skipped} file(s) in the folder are not DICOM images (or are "
                     "truncated): skipped")
    scan = read_dicom(series.files[slice_index])
    meta = replace(scan.meta, series_folder=str(series.folder.resolve()),
                   series_slices=count, series_index=slice_index,
                   notes=notes + scan.meta.notes)
    return Scan(image=scan.image, meta=meta)
