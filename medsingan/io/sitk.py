"""MetaImage (.mha/.mhd) and NRRD (.nrrd/.nhdr) slices through SimpleITK, shown and written
back as NIfTI slices are.

Conventions. Voxel axes are SimpleITK's index order (x, y, z): ``GetArrayFromImage`` returns
them reversed, (z, y, x), and is transposed back, so ``slice_axis`` 2 (the default unless one
axis is one voxel thick) takes the image's z index, the slices of an axial stack. For a file
converted from NIfTI these are the NIfTI voxel axes, so ``--slice-axis``/``--slice`` pick the
same slice in both. SimpleITK's geometry (origin, spacing, direction) is in LPS+; it becomes
the NIfTI-style RAS+ affine of the metadata, and the slice is turned to the orientation
viewers show by the NIfTI code (:func:`~medsingan.io.nifti.display_transform`).

A derived slice is written back as a one-slice 3D image (a 2D image for a 2D source) with
the source's pixel type and the slice's origin, spacing and direction.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medsingan.errors import ScanReadError, ScanWriteError, UnsupportedScanError
from medsingan.io.atomic import atomic_path, sha256_of
from medsingan.io.nifti import (
    _to_display,
    _to_voxels,
    display_transform,
    slice_affine,
    take_slice,
)
from medsingan.io.reasons import process_stderr, single_line
from medsingan.io.scan import Scan, ScanMetadata

SITK_FORMATS = {".mha": "mha", ".mhd": "mha", ".nrrd": "nrrd", ".nhdr": "nrrd"}
# A detached header and its data are two files, which one atomic rename cannot publish.
_DETACHED = (".mhd", ".nhdr")
# Our own keys in the file's metadata dictionary: the values' units, and a clip window.
UNITS_KEY = "medsingan_units"
CLIP_KEY = "medsingan_clip_window"
_GENERIC_UNITS = ("voxel value", "stored value", "pixel value")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])  # its own inverse
_COMPLEX = (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64)


def _itk_reason(exc: Exception) -> str:
    """The message of an ITK exception without its source-file preamble, on one line."""
    text = " ".join(str(exc).split())
    return (text.rsplit("ERROR:", 1)[-1].strip() or type(exc).__name__)[:200]


def ras_affine(image: sitk.Image) -> np.ndarray:
    """The RAS+ affine of a 2D or 3D SimpleITK image, voxel axes in index order (x, y, z); a
    2D image lies in the z = 0 plane with one-millimetre thickness.

    >>> image = sitk.Image(4, 3, sitk.sitkUInt8)
    >>> image.SetSpacing((0.5, 2.0)); image.SetOrigin((10.0, 20.0))
    >>> ras_affine(image)[:3].tolist()
    [[-0.5, 0.0, 0.0, -10.0], [0.0, -2.0, 0.0, -20.0], [0.0, 0.0, 1.0, 0.0]]
    """
    dims = image.GetDimension()
    direction, spacing, origin = np.eye(3), np.ones(3), np.zeros(3)
    direction[:dims, :dims] = np.reshape(image.GetDirection(), (dims, dims))
    spacing[:dims] = image.GetSpacing()
    origin[:dims] = image.GetOrigin()
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ direction @ np.diag(spacing)
    affine[:3, 3] = _LPS_TO_RAS @ origin
    return affine


def _metaimage_fields(path: Path) -> tuple[dict[str, str], int]:
    """The ``key = value`` (or ``key : value``) lines of a MetaImage header's first 64 kB, up
    to ElementDataFile, and the header's length in bytes (-1 without ElementDataFile)."""
    with open(path, "rb") as handle:
        head = handle.read(1 << 16)
    fields: dict[str, str] = {}
    offset = 0
    for line in head.split(b"\n"):
        offset += len(line) + 1
        cut = min((i for i in (line.find(b"="), line.find(b":")) if i >= 0), default=-1)
        if cut < 0:
            continue
        name = line[:cut].strip().decode("latin-1")
        fields[name] = line[cut + 1:].strip().decode("latin-1")
        if name == "ElementDataFile":
            return fields, offset
    return fields, -1


def _whole(text: str) -> bool:
    """ASCII digits only (``"²".isdigit()`` is true, and ``int("²")`` fails)."""
    return text.isascii() and text.isdigit()


def _check_metaimage(path: Path) -> None:
    """Refuse the NDims/DimSize values that crash MetaIO (a negative NDims kills the process)
    or that no image can have."""
    fields, _ = _metaimage_fields(path)
    ndims, sizes = fields.get("NDims"), fields.get("DimSize")
    if ndims is not None and not (_whole(ndims) and 1 <= int(ndims) <= 16):
        raise ScanReadError(f"{path.name}: NDims is '{single_line(ndims)[:20]}', not a number of "
                            "dimensions; the header is corrupt")
    if sizes is not None:
        parts = sizes.split()
        if not parts or not all(_whole(p) and int(p) >= 1 for p in parts) or (
                ndims is not None and len(parts) != int(ndims)):
            raise ScanReadError(f"{path.name}: DimSize is '{single_line(sizes)[:40]}', not "
                                f"{ndims or 'NDims'} sizes of at least 1; the header is corrupt")


_COMPONENT_BYTES = {sitk.sitkUInt8: 1, sitk.sitkInt8: 1, sitk.sitkUInt16: 2, sitk.sitkInt16: 2,
                    sitk.sitkUInt32: 4, sitk.sitkInt32: 4, sitk.sitkFloat32: 4,
                    sitk.sitkUInt64: 8, sitk.sitkInt64: 8, sitk.sitkFloat64: 8}
# deflate (gzip, zlib) cannot expand data more than about 1032:1
_DEFLATE_RATIO = 1100


def _nrrd_fields(path: Path) -> tuple[dict[str, str], int]:
    """The ``key: value`` fields of an NRRD header (lower-case keys) and the header's length
    in bytes (to the blank line that ends it)."""
    with open(path, "rb") as handle:
        head = handle.read(1 << 16)
    ends = [(i, len(mark)) for mark in (b"\n\n", b"\r\n\r\n", b"\r\r")
            if (i := head.find(mark)) >= 0]
    if not ends:
        return {}, -1
    end, mark = min(ends)
    fields: dict[str, str] = {}
    for line in head[:end].replace(b"\r", b"\n").split(b"\n")[1:]:
        key, colon, value = line.partition(b":")
        if colon and not line.startswith(b"#"):
            fields[key.strip().decode("latin-1").lower()] = value.strip().decode("latin-1")
    return fields, end + mark


def _stored_data(path: Path, kind: str) -> tuple[int, str] | None:
    """(bytes of the file's pixel data, its encoding: raw, deflate or other), or ``None``
    where it cannot be told (a list of data files, a missing one: the reader says so)."""
    if kind == "nrrd":
        fields, header = _nrrd_fields(path)
        if header < 0:  # no end of the header in its first 64 kB
            return None
        encoding = fields.get("encoding", "raw").lower()
        detached = fields.get("data file") or fields.get("datafile")
    else:
        fields, header = _metaimage_fields(path)
        detached = fields.get("ElementDataFile")
        if detached is None:  # not within the first 64 kB
            return None
        if fields.get("BinaryData", "true").lower() in ("false", "f", "0"):
            encoding = "ascii"
        elif fields.get("CompressedData", "").lower() in ("true", "t", "1"):
            encoding = "gzip"
        else:
            encoding = "raw"
        if detached.upper() == "LOCAL":
            detached = ""
    if detached:
        data = path.parent / detached
        if " " in detached.strip() or not data.is_file():
            return None
        size = data.stat().st_size
    else:
        size = path.stat().st_size - header
    kinds = {"raw": "raw", "gzip": "deflate", "gz": "deflate"}
    return max(size, 0), kinds.get(encoding, "other")


def _check_claimed_size(path: Path, kind: str, reader: sitk.ImageFileReader) -> None:
    """Refuse a header describing more pixels than its file can hold (or than this machine's
    memory), before the reader allocates them (a 1 kB NRRD can ask for gigabytes)."""
    voxels = int(np.prod(reader.GetSize(), dtype=np.float64))
    needed = voxels * _COMPONENT_BYTES.get(reader.GetPixelID(), 1)
    stored = _stored_data(path, kind)
    if stored is not None:
        size, encoding = stored
        limit = {"raw": size, "deflate": size * _DEFLATE_RATIO}.get(encoding)
        if limit is not None and needed > limit:
            raise ScanReadError(
                f"{path.name}: cannot read {kind.upper()} (the header describes "
                f"{'x'.join(map(str, reader.GetSize()))} pixels, {_bytes(needed)}, but the file "
                f"holds {_bytes(size)} of {'compressed' if encoding == 'deflate' else 'raw'} "
                "pixel data); the file may be truncated or its header corrupt")
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if needed > memory:
        raise ScanReadError(f"{path.name}: the image needs {_bytes(needed)}, more than this "
                            f"machine's memory ({_bytes(memory)})")


def _bytes(count: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("kB", 1024)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{int(count)} bytes"


def _cannot_read(path: Path, kind: str, exc: Exception, printed: list[str]) -> ScanReadError:
    reason = _itk_reason(exc) + (f"; {printed[0][:120]}" if printed else "")
    return ScanReadError(f"{path.name}: cannot read {kind.upper()} ({reason}); the file may be "
                         "truncated or corrupt")


def _read_image(path: Path, kind: str) -> sitk.Image:
    """The image; vector, complex and 4D+ images are refused before the pixels are read."""
    if kind == "mha":
        _check_metaimage(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    printed: list[str] = []
    try:
        with process_stderr(printed):
            reader.ReadImageInformation()
    except RuntimeError as exc:
        raise _cannot_read(path, kind, exc, printed) from exc
    if reader.GetPixelID() in _COMPLEX or reader.GetNumberOfComponents() != 1:
        what = ("complex" if reader.GetPixelID() in _COMPLEX
                else f"{reader.GetNumberOfComponents()}-component (vector or colour)")
        raise UnsupportedScanError(f"{path.name} holds {what} pixels; medsingan trains on "
                                   "real-valued grayscale images")
    if reader.GetDimension() not in (2, 3):
        raise UnsupportedScanError(f"{path.name} is {reader.GetDimension()}D; medsingan reads "
                                   f"2D and 3D {kind.upper()} images (extract a 3D volume "
                                   "first)")
    _check_claimed_size(path, kind, reader)
    try:
        with process_stderr(printed):
            return reader.Execute()
    except RuntimeError as exc:
        raise _cannot_read(path, kind, exc, printed) from exc


def read_sitk(path: Path, *, slice_index: int | None = None,
              slice_axis: int | None = None) -> Scan:
    """Read one 2D slice of a 2D or 3D MHA/MHD/NRRD image, in viewer orientation.

    ``slice_axis`` and ``slice_index`` are in SimpleITK's index order (module docstring);
    a 2D image is its own slice. The values are the file's (no rescale), in the units a
    medsingan slice records (e.g. HU), else "voxel value".
    """
    kind = SITK_FORMATS[path.suffix.lower()]
    image = _read_image(path, kind)
    voxels = sitk.GetArrayFromImage(image).T  # index order (x, y[, z])
    dims = voxels.ndim
    if dims == 2:
        voxels = voxels[:, :, None]
    plane, slice_axis, slice_index, notes = take_slice(voxels, path.name, slice_index,
                                                        slice_axis)
    affine = ras_affine(image)
    transform = display_transform(affine, slice_axis)
    display = _to_display(plane, transform)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    in_plane = [float(s) for axis, s in enumerate(spacing) if axis != slice_axis]
    if transform[0]:
        in_plane.reverse()
    dtype = voxels.dtype.newbyteorder("=")
    units = image.GetMetaData(UNITS_KEY) if image.HasMetaDataKey(UNITS_KEY) else "voxel value"
    meta = ScanMetadata(
        format=kind,
        source_path=str(path.resolve()),
        sha256=sha256_of(path),
        rows=int(display.shape[0]),
        columns=int(display.shape[1]),
        pixel_spacing=(in_plane[0], in_plane[1]),
        bits_stored=dtype.itemsize * 8,
        signed=bool(np.issubdtype(dtype, np.signedinteger)),
        storage_dtype=dtype.name,
        units=units,
        slice_axis=slice_axis,
        slice_index=slice_index,
        affine=affine.tolist(),
        display_transform=transform,
        image_dimensions=dims,
        notes=notes,
    )
    return Scan(image=np.ascontiguousarray(display, dtype=np.float32), meta=meta)


def _file_dtype(like: ScanMetadata) -> np.dtype:
    """The source's storage when the values need no rescale; else the smallest integer type
    that holds the rescaled range (a CT's HU), or float32: MHA and NRRD have no rescale."""
    dtype = np.dtype(like.storage_dtype)
    if (like.rescale_slope, like.rescale_intercept) == (1.0, 0.0):
        return dtype
    if (np.issubdtype(dtype, np.integer) and float(like.rescale_slope).is_integer()
            and float(like.rescale_intercept).is_integer()):
        low, high = like.physical_range
        return np.result_type(np.min_scalar_type(int(low)), np.min_scalar_type(int(high)))
    return np.dtype(np.float32)


def write_sitk(image: np.ndarray, like: ScanMetadata, path: Path, *,
               clip_window: tuple[float, float] | None = None) -> Path:
    """Write a 2D slice (physical units, display orientation) as an MHA or NRRD image with
    the geometry of where it came from (:func:`~medsingan.io.nifti.slice_affine`, in LPS),
    compressed, atomically. A source without patient geometry gets the plane a viewer shows
    as stored. Integer values are rounded and clipped to the file's pixel type.
    ``clip_window`` and non-generic units (HU) are recorded in the metadata dictionary."""
    if path.suffix.lower() in _DETACHED:
        raise ScanWriteError(f"cannot write {path.name}: a detached header ({path.suffix}) "
                             "and its data are two files; choose .mha or .nrrd")
    axis = like.slice_axis if like.slice_axis is not None else 2
    voxels = _to_voxels(image, like.display_transform)
    affine = slice_affine(like, voxels.shape)
    if like.display_transform is None:  # (rows, columns) of a DICOM or raster: x = columns
        voxels, affine = voxels.T, affine[:, [1, 0, 2, 3]]
    dtype = _file_dtype(like)
    values = voxels.astype(np.float64)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        values = np.clip(np.rint(values), info.min, info.max)
    lps = _LPS_TO_RAS @ affine[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    origin = _LPS_TO_RAS @ affine[:3, 3]
    # a 2D source, or one without patient geometry (a radiograph), stays a plain 2D image
    dims = 2 if axis == 2 and (like.image_dimensions == 2 or like.affine is None) else 3
    array = values.astype(dtype) if dims == 2 else np.expand_dims(values.astype(dtype), axis)
    out = sitk.GetImageFromArray(array.T)  # SimpleITK takes (z, y, x)
    out.SetDirection((lps / spacing)[:dims, :dims].flatten().tolist())
    out.SetSpacing(spacing[:dims].tolist())
    out.SetOrigin(origin[:dims].tolist())
    if like.units not in _GENERIC_UNITS:
        out.SetMetaData(UNITS_KEY, like.units)
    if clip_window is not None:
        out.SetMetaData(CLIP_KEY, f"{clip_window[0]:g} {clip_window[1]:g} {like.units}")
    try:
        with atomic_path(path) as tmp:
            sitk.WriteImage(out, str(tmp), True)
    except OSError as exc:
        raise ScanWriteError(f"cannot write {path}: {exc.strerror or exc}") from exc
    except RuntimeError as exc:
        raise ScanWriteError(f"cannot write {path}: {_itk_reason(exc)}") from exc
    return path
