"""NIfTI-1/2 slices: read one 2D slice (pixels through MONAI's NibabelReader) and write a
derived slice with the geometry of where it came from."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np

from medsingan.errors import ScanReadError, ScanWriteError, UnsupportedScanError
from medsingan.io.atomic import atomic_path, sha256_of
from medsingan.io.monai_loader import load_pixels
from medsingan.io.reasons import one_line
from medsingan.io.scan import Scan, ScanMetadata


class _Collect(logging.Handler):
    def __init__(self, notes: list[str]) -> None:
        super().__init__()
        self.notes = notes

    def emit(self, record: logging.LogRecord) -> None:
        note = f"nibabel: {one_line(Exception(record.getMessage()))}"
        if note not in self.notes:
            self.notes.append(note)


@contextlib.contextmanager
def _header_fixes(notes: list[str]) -> Iterator[None]:
    """nibabel's reports of the header fields it fixes on load (which it prints on stderr)
    collected as notes instead."""
    logger = logging.getLogger("nibabel.global")
    handlers, propagate = logger.handlers[:], logger.propagate
    logger.handlers, logger.propagate = [_Collect(notes)], False
    try:
        yield
    finally:
        logger.handlers, logger.propagate = handlers, propagate


def _load_volume(path: Path, notes: list[str]) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Voxels (float32) and the header; complex and RGB voxels are refused before decoding,
    a header without a finite affine too."""
    from monai.data import NibabelReader

    try:
        with _header_fixes(notes):
            header_image = nib.load(str(path))
            voxel_type = np.dtype(header_image.header.get_data_dtype())
            affine = np.asarray(header_image.affine, dtype=float)
    except Exception as exc:
        raise ScanReadError(f"{path.name}: cannot read NIfTI ({one_line(exc)}); the file may be "
                            "truncated or corrupt") from exc
    if not np.isfinite(affine).all():
        raise ScanReadError(f"{path.name}: its affine (sform/qform) holds NaN or infinite "
                            "values; the header is corrupt")
    _check_data_size(path, header_image.header, voxel_type)
    if voxel_type.kind == "c" or voxel_type.fields is not None:
        kind = "complex" if voxel_type.kind == "c" else "colour (RGB)"
        raise UnsupportedScanError(f"{path.name} holds {kind} voxels; medsingan trains on "
                                   "real-valued grayscale slices")
    try:
        with _header_fixes(notes):
            data = load_pixels(path, NibabelReader())
    except Exception as exc:
        raise ScanReadError(f"{path.name}: cannot read NIfTI ({one_line(exc)}); the file may be "
                            "truncated or corrupt") from exc
    return np.asarray(data, dtype=np.float32), header_image


def _check_data_size(path: Path, header: nib.Nifti1Header, voxel_type: np.dtype) -> None:
    """An uncompressed file must hold the voxels its header describes: a corrupt dimension
    (32767 x 32767 x 3 in a 50 kB file) is refused before anything maps or allocates them."""
    if path.name.lower().endswith(".gz"):  # the decompressed size is known only by reading
        return
    shape = tuple(int(n) for n in header.get_data_shape())
    needed = int(np.prod(shape, dtype=object)) * voxel_type.itemsize
    held = path.stat().st_size - int(header.get_data_offset())
    if needed > held:
        raise ScanReadError(f"{path.name}: its header describes {'x'.join(map(str, shape))} "
                            f"voxels ({needed} bytes) but the file holds {max(held, 0)} bytes "
                            "of data; it is truncated or its header is corrupt")


def read_nifti(path: Path, *, slice_index: int | None = None, slice_axis: int | None = None,
               volume: int | None = None) -> Scan:
    """Read one 2D slice of a 2D/3D/4D NIfTI file.

    The slice is taken along ``slice_axis`` (0, 1 or 2; default: the volume's only axis of
    one voxel, as in a derived slice, else 2) at ``slice_index`` (default: the middle slice,
    with a note). A 4D file needs ``volume`` unless it holds a single volume.
    The image is turned to the orientation viewers show (:func:`display_transform`); the
    metadata records how, and :func:`write_nifti` turns a derived image back.
    """
    fixes: list[str] = []
    data, header_image = _load_volume(path, fixes)
    if data.ndim == 4 or (data.ndim > 4 and all(s == 1 for s in data.shape[4:])):
        data = data.reshape(data.shape[:4])
        count = data.shape[3]
        if volume is None and count > 1:
            raise ScanReadError(f"{path.name} is 4D with {count} volumes: choose one with "
                                f"--volume 0..{count - 1}")
        volume = 0 if volume is None else volume
        if not 0 <= volume < count:
            raise ScanReadError(f"{path.name} has {count} volume(s): --volume must be "
                                f"0..{count - 1}")
        data = data[..., volume]
    elif volume not in (None, 0):
        raise ScanReadError(f"{path.name} is not 4D: --volume does not apply")
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim != 3:
        raise ScanReadError(f"{path.name} has {data.ndim} dimensions; expected 2, 3 or 4")
    image, slice_axis, slice_index, notes = take_slice(data, path.name, slice_index,
                                                       slice_axis)
    notes.extend(fixes)
    affine = np.asarray(header_image.affine, dtype=float)
    transform = display_transform(affine, slice_axis)
    image = _to_display(image, transform)
    header = header_image.header
    zooms = [float(z) for z in header.get_zooms()[:3]]
    while len(zooms) < 3:
        zooms.append(1.0)
    in_plane = [z for axis, z in enumerate(zooms) if axis != slice_axis]
    if transform[0]:
        in_plane.reverse()
    spacing = (in_plane[0], in_plane[1]) if all(math.isfinite(z) and z > 0
                                                for z in in_plane) else None
    dtype = np.dtype(header.get_data_dtype()).newbyteorder("=")
    # nibabel moves the header's scl_slope/scl_inter into the array proxy on load
    slope = float(getattr(header_image.dataobj, "slope", 1.0))
    intercept = float(getattr(header_image.dataobj, "inter", 0.0))
    is_int = np.issubdtype(dtype, np.integer)
    meta = ScanMetadata(
        format="nifti",
        source_path=str(path.resolve()),
        sha256=sha256_of(path),
        rows=int(image.shape[0]),
        columns=int(image.shape[1]),
        modality=None,
        pixel_spacing=spacing,
        bits_stored=dtype.itemsize * 8,
        signed=bool(is_int and np.issubdtype(dtype, np.signedinteger)),
        storage_dtype=dtype.name,
        rescale_slope=slope if np.isfinite(slope) and slope != 0 else 1.0,
        rescale_intercept=intercept if np.isfinite(intercept) else 0.0,
        units=_units(header),
        slice_axis=slice_axis,
        slice_index=slice_index,
        volume=volume,
        affine=affine.tolist(),
        display_transform=transform,
        nifti_space=(_spatial_unit(header), int(header["qform_code"]),
                     int(header["sform_code"])),
        notes=notes,
    )
    return Scan(image=np.ascontiguousarray(image, dtype=np.float32), meta=meta)


def _spatial_unit(header: nib.Nifti1Header) -> str:
    """The header's spatial unit (mm, micron, meter), "unknown" for a code NIfTI lacks."""
    try:
        return str(header.get_xyzt_units()[0])
    except KeyError:  # a corrupt xyzt_units byte
        return "unknown"


# Units that say nothing beyond "the file's numbers".
_GENERIC_UNITS = ("voxel value", "stored value", "pixel value")
# medsingan's slices name it in their description: their intent name then holds the units.
_SIGNATURE = "medsingan"


def _units(header: nib.Nifti1Header) -> str:
    """The values' units: the intent name a medsingan slice records (e.g. HU), else plain
    voxel values (another program's intent name means something else)."""
    def text(key: str) -> str:
        return bytes(header[key]).split(b"\0")[0].decode("ascii", "replace").strip()

    name = text("intent_name")
    ours = _SIGNATURE in text("descrip") and int(header["intent_code"]) == 0
    return name if name and ours else "voxel value"


def take_slice(volume: np.ndarray, name: str, slice_index: int | None,
                slice_axis: int | None) -> tuple[np.ndarray, int, int, list[str]]:
    """Slice ``slice_index`` (default: the middle one, with a note) of a 3D voxel array
    along ``slice_axis`` (default: its only one-voxel axis, else 2), with the axis, the
    index and the notes."""
    notes: list[str] = []
    if slice_axis is None:
        single = [axis for axis in range(3) if volume.shape[axis] == 1]
        slice_axis = single[0] if len(single) == 1 else 2
    if slice_axis not in (0, 1, 2):
        raise ScanReadError(f"--slice-axis must be 0, 1 or 2, not {slice_axis}")
    depth = volume.shape[slice_axis]
    if slice_index is None:
        slice_index = depth // 2
        if depth > 1:
            notes.append(f"{depth} slices along axis {slice_axis}: using the middle slice "
                         f"{slice_index} (choose with --slice)")
    if not 0 <= slice_index < depth:
        raise ScanReadError(f"slice {slice_index} is out of range: {name} has {depth} "
                            f"slice(s) along axis {slice_axis} (0..{depth - 1})")
    return np.take(volume, slice_index, axis=slice_axis), slice_axis, slice_index, notes


def display_transform(affine: np.ndarray, slice_axis: int) -> tuple[bool, bool, bool]:
    """How to turn a voxel slice (rows = the first in-plane voxel axis) into the orientation
    viewers show: ``(transpose, flip rows, flip columns)``.

    From the affine (RAS+ world): an axial slice shows anterior at the top and the patient's
    right on the left (radiological convention), a coronal one superior at the top and the
    right on the left, a sagittal one superior at the top and anterior on the left.

    >>> display_transform(np.eye(4), 2)  # voxel x, y = right, anterior: rows must be y
    (True, True, True)
    """
    in_plane = [axis for axis in range(3) if axis != slice_axis]
    directions = np.asarray(affine, dtype=float)[:3, :3]
    world = [int(np.argmax(np.abs(directions[:, axis]))) for axis in (*in_plane, slice_axis)]
    if len(set(world)) < 3:  # degenerate (e.g. a zero column): keep the voxel order
        return (False, False, False)
    normal = world[2]
    vertical = 1 if normal == 2 else 2       # axial: anterior-posterior; else superior-inferior
    horizontal = 1 if normal == 0 else 0     # sagittal: anterior-posterior; else left-right
    transpose = world[0] != vertical
    row_axis, column_axis = (in_plane[1], in_plane[0]) if transpose else in_plane
    # world coordinates must decrease down the rows and along the columns
    flip_rows = directions[vertical, row_axis] > 0
    flip_columns = directions[horizontal, column_axis] > 0
    return (bool(transpose), bool(flip_rows), bool(flip_columns))


def _to_display(image: np.ndarray, transform: tuple[bool, bool, bool]) -> np.ndarray:
    transpose, flip_rows, flip_columns = transform
    image = image.T if transpose else image
    image = image[::-1] if flip_rows else image
    return image[:, ::-1] if flip_columns else image


def _to_voxels(image: np.ndarray, transform: tuple[bool, bool, bool] | None) -> np.ndarray:
    if transform is None:
        return image
    transpose, flip_rows, flip_columns = transform
    image = image[:, ::-1] if flip_columns else image
    image = image[::-1] if flip_rows else image
    return image.T if transpose else image


def plane_affine(spacing: tuple[float, float]) -> np.ndarray:
    """The affine of an image with no patient geometry (a radiograph, a raster), as DICOM's
    default plane (Image Orientation 1\\0\\0\\0\\1\\0 at the origin): rows run to the
    patient's posterior, columns to the left (RAS+ world), so that :func:`display_transform`
    shows it exactly as stored, neither transposed nor mirrored.

    >>> display_transform(plane_affine((0.5, 0.25)), 2)
    (False, False, False)
    """
    row_spacing, column_spacing = spacing
    affine = np.eye(4)
    affine[:3, 0] = (0.0, -row_spacing, 0.0)
    affine[:3, 1] = (-column_spacing, 0.0, 0.0)
    return affine


def slice_affine(meta: ScanMetadata, shape: tuple[int, int]) -> np.ndarray:
    """The affine of a one-slice volume at the source slice position, for a voxel-order
    image of ``shape``: when the in-plane size differs from the source's, the voxels are
    scaled and the origin moved so that the new grid covers the source slice exactly."""
    if meta.affine is not None:
        affine = np.asarray(meta.affine, dtype=float)
    else:
        affine = plane_affine(meta.pixel_spacing or (1.0, 1.0))
    axis = meta.slice_axis if meta.slice_axis is not None else 2
    offset = np.zeros(4)
    offset[3] = 1.0
    offset[axis] = float(meta.slice_index or 0)
    result = affine.copy()
    in_plane = [a for a in range(3) if a != axis]
    source_shape = (meta.rows, meta.columns)
    if meta.display_transform is not None and meta.display_transform[0]:
        source_shape = (meta.columns, meta.rows)
    for source_size, size, column in zip(source_shape, shape, in_plane, strict=True):
        factor = source_size / size
        result[:3, column] = affine[:3, column] * factor
        offset[column] = (factor - 1.0) / 2.0  # centre of new voxel 0, in source voxels
    result[:, 3] = affine @ offset
    return result


def write_nifti(image: np.ndarray, like: ScanMetadata, path: Path, *,
                clip_window: tuple[float, float] | None = None,
                description: str = "synthetic") -> Path:
    """Write a 2D slice as a one-slice NIfTI volume with the source's affine, dtype and
    scaling (integers clipped to the source dtype's range). A source without patient
    geometry gets :func:`plane_affine`, so the slice reads back as it was shown.
    ``clip_window`` (the interval the values were clipped to) becomes the header's display
    range (cal_min, cal_max) and is named in the header's description (``description``,
    which names medsingan)."""
    axis = like.slice_axis if like.slice_axis is not None else 2
    image = _to_voxels(image, like.display_transform)
    volume = np.expand_dims(image.astype(np.float64), axis)
    dtype = np.dtype(like.storage_dtype)
    stored = (volume - like.rescale_intercept) / like.rescale_slope
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        stored = np.clip(np.rint(stored), info.min, info.max)
    out = nib.Nifti1Image(stored.astype(dtype), slice_affine(like, image.shape))
    out.header.set_slope_inter(like.rescale_slope, like.rescale_intercept)
    unit, qform_code, sform_code = like.nifti_space or ("mm", 1, 1)
    # the source's spatial unit and what its affine refers to (scanner, aligned, MNI, ...)
    out.header.set_xyzt_units(unit if unit != "unknown" else "mm")
    out.set_qform(out.affine, code=qform_code or 1)
    out.set_sform(out.affine, code=sform_code or 1)
    if like.units not in _GENERIC_UNITS:  # e.g. HU: the meaning of the values (16 bytes)
        out.header["intent_name"] = like.units.encode()[:15]
    if _SIGNATURE not in description:
        description = f"{_SIGNATURE}: {description}"
    if clip_window is not None:
        low, high = clip_window
        out.header["cal_min"], out.header["cal_max"] = low, high
        description += f"; clipped to {low:g}..{high:g} {like.units}"
    out.header["descrip"] = description[:79].encode()
    try:
        with atomic_path(path) as tmp:
            nib.save(out, str(tmp))
    except OSError as exc:
        raise ScanWriteError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path
