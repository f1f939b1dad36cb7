"""PNG, TIFF and JPEG images (8- or 16-bit grayscale; RGB converted to grayscale)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps
from PIL.PngImagePlugin import PngInfo

from medsingan.errors import ScanReadError, ScanWriteError, UnsupportedScanError
from medsingan.io.atomic import atomic_path, sha256_of
from medsingan.io.monai_loader import load_pixels
from medsingan.io.reasons import one_line
from medsingan.io.scan import Scan, ScanMetadata

RASTER_FORMATS = {".png": "png", ".tif": "tiff", ".tiff": "tiff", ".jpg": "jpeg", ".jpeg": "jpeg"}

# ITU-R BT.601 luma weights, as Pillow's "L" conversion uses.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _load_pixels(path: Path) -> np.ndarray:
    """Decode through MONAI's PILReader, keeping (rows, columns[, channels]) order."""
    from monai.data import PILReader

    return load_pixels(path, PILReader(reverse_indexing=False))


_REFUSED_MODES = {
    "1": "a 1-bit (black and white) image has no grey levels to learn from",
    "F": "32-bit floating-point rasters are not read; save the scan as NIfTI or as 16-bit "
         "PNG/TIFF",
    "CMYK": "CMYK (print) colour is not a scan's colour space; convert it to grayscale",
    "LAB": "Lab colour is not supported; convert it to grayscale",
    "HSV": "HSV colour is not supported; convert it to grayscale",
}
_EXIF_ORIENTATION = 0x0112


def _png_colour_depth(path: Path) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG's IHDR chunk, which Pillow does not report."""
    with open(path, "rb") as handle:
        head = handle.read(26)
    if len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return head[24], head[25]
    return None


def _decode(path: Path, notes: list[str]) -> tuple[np.ndarray, str, str | None]:
    """Pixels (rows, columns[, channels]), the Pillow mode and medsingan's ``UNITS_CHUNK``
    text (``None`` when absent); refuses what would read as something other than the image
    (palette indices, wrapped or truncated values)."""
    depth = _png_colour_depth(path)
    if depth is not None and depth[0] == 16 and depth[1] in (2, 4, 6):
        raise UnsupportedScanError(f"{path.name} is 16-bit colour, which the PNG reader cuts "
                                   "to 8 bits; save it as 16-bit grayscale")
    with Image.open(path) as handle:
        handle.verify()
    with Image.open(path) as handle:
        mode = handle.mode
        orientation = handle.getexif().get(_EXIF_ORIENTATION, 1)
        key = handle.info.get("transparency")  # a colour key (tRNS): transparent pixels
        units = handle.info.get(UNITS_CHUNK)
    if mode in _REFUSED_MODES:
        raise UnsupportedScanError(f"{path.name}: {_REFUSED_MODES[mode]}")
    if mode in ("P", "PA") or orientation not in (1, None):
        with Image.open(path) as handle:  # palette colours, or the orientation viewers show
            image = ImageOps.exif_transpose(handle)
            image = image.convert("RGBA" if "A" in mode or key is not None else "RGB")
        if orientation not in (1, None):
            notes.append(f"EXIF orientation {orientation} applied, as viewers show it")
        return np.asarray(image), mode, units
    pixels = _load_pixels(path)
    if key is not None and np.any(np.all(pixels == np.asarray(key), axis=-1) if pixels.ndim == 3
                                  else pixels == key):
        raise UnsupportedScanError(f"{path.name} has transparent pixels (a colour key); a scan "
                                   "has none: flatten it onto a background first")
    return pixels, mode, units


def read_raster(path: Path) -> Scan:
    """Read a PNG/TIFF/JPEG file as a grayscale scan in its stored values.

    Colour images are converted to grayscale (BT.601 luma) with a note, palette images through
    their palette, opaque alpha is dropped; transparency, 1-bit, floating-point, CMYK and
    16-bit colour images are refused with :class:`UnsupportedScanError`. A PNG that medsingan
    wrote carries its units (``UNITS_CHUNK``): it is read back in them (a CT in HU).
    """
    notes: list[str] = []
    try:
        pixels, mode, units = _decode(path, notes)
    except UnsupportedScanError:
        raise
    except Exception as exc:
        raise ScanReadError(f"{path.name} is not a readable image ({one_line(exc)})") from exc
    if pixels.ndim == 3 and pixels.shape[2] in (2, 4):
        alpha = pixels[..., -1]
        if alpha.min() != alpha.max() or alpha.max() == 0:
            raise UnsupportedScanError(f"{path.name} has transparent pixels; a scan has none: "
                                       "flatten it onto a background first")
        pixels = pixels[..., :-1] if pixels.shape[2] == 4 else pixels[..., 0]
        notes.append(f"{mode} image: the (opaque) alpha channel was dropped")
    if mode == "I" and (pixels.min(initial=0) < 0 or pixels.max(initial=0) > 65535):
        raise UnsupportedScanError(f"{path.name} is a 32-bit integer image with values outside "
                                   "0..65535; save it as NIfTI or 16-bit")
    if pixels.ndim == 3:
        channels = pixels.shape[2]
        if channels != 3:
            raise ScanReadError(f"{path.name} has {channels} channels; expected 1 or 3")
        pixels = pixels.astype(np.float32) @ _LUMA
        notes.append(f"{mode} image converted to grayscale (ITU-R BT.601 luma)")
    if pixels.ndim != 2:
        raise ScanReadError(f"{path.name} has shape {pixels.shape}; expected a 2D image")
    sixteen = mode.startswith("I;16") or mode in ("I", "I;16B") or pixels.max(initial=0) > 255
    storage = "uint16" if sixteen else "uint8"
    mapping: dict[str, Any] = {"slope": 1.0, "intercept": 0.0, "units": "pixel value",
                               "modality": None, "bits_stored": None}
    if units is not None and pixels.ndim == 2:
        mapping = _chunk_mapping(path, units)
        if (mapping["slope"], mapping["intercept"]) != (1.0, 0.0):
            notes.append(f"pixel values mapped to {mapping['units']} as recorded by medsingan "
                         f"(value = {mapping['slope']:.6g} * pixel + {mapping['intercept']:.6g})")
    meta = ScanMetadata(
        format=RASTER_FORMATS[path.suffix.lower()],
        source_path=str(path.resolve()),
        sha256=sha256_of(path),
        rows=int(pixels.shape[0]),
        columns=int(pixels.shape[1]),
        modality=mapping["modality"],
        bits_stored=min(mapping["bits_stored"] or 16, 16 if sixteen else 8),
        storage_dtype=storage,
        rescale_slope=mapping["slope"],
        rescale_intercept=mapping["intercept"],
        units=mapping["units"],
        notes=notes,
    )
    image = pixels.astype(np.float64) * mapping["slope"] + mapping["intercept"]
    return Scan(image=np.ascontiguousarray(image, dtype=np.float32), meta=meta)


# A tEXt chunk of medsingan's PNGs: how pixel values map to the scan's units (JSON).
UNITS_CHUNK = "medsingan:intensity"


def _chunk_mapping(path: Path, text: str) -> dict[str, Any]:
    """The validated ``UNITS_CHUNK`` of a PNG: slope, intercept, units (and modality)."""
    try:
        data = json.loads(text)
        slope, intercept = float(data["slope"]), float(data["intercept"])
        units = str(data["units"])
    except (ValueError, TypeError, KeyError) as exc:
        raise UnsupportedScanError(f"{path.name}: its '{UNITS_CHUNK}' text chunk is corrupt "
                                   f"({exc}); re-export the file") from None
    if not (math.isfinite(slope) and slope != 0 and math.isfinite(intercept)):
        raise UnsupportedScanError(f"{path.name}: its '{UNITS_CHUNK}' text chunk gives slope "
                                   f"{slope:g} and intercept {intercept:g}; re-export the file")
    bits = data.get("bits_stored")
    return {"slope": slope, "intercept": intercept, "units": units,
            "modality": data.get("modality") or None,
            "bits_stored": int(bits) if isinstance(bits, int) and 1 <= bits <= 16 else None}


def png_mapping(like: ScanMetadata, image: np.ndarray, bits: int,
                clip_window: tuple[float, float] | None = None) -> tuple[float, float, int]:
    """``(slope, intercept, bits stored)`` of a PNG of ``image`` (``value = slope * pixel +
    intercept``), in display polarity (MONOCHROME1 is not inverted back).

    A raster source keeps its pixel values. A scan clipped to an interval (``clip_window``:
    a CT window, MR percentiles) has that interval spread over the whole PNG range, so the
    PNG looks like the windowed scan, whatever the source's storage. Otherwise a source whose
    stored integers fit the PNG keeps them (its own rescale; a 15-bit film stays 15-bit), and
    anything else (signed, floating-point, 32-bit) spreads its stored range mapped to physical
    units (signed 16-bit: stored + 32768), else the image's own range.

    >>> meta = ScanMetadata("dicom", "ct.dcm", "", 2, 2, bits_stored=16, storage_dtype="uint16",
    ...                     rescale_intercept=-1024.0, units="HU")
    >>> png_mapping(meta, np.zeros((2, 2)), 16, clip_window=(-160.0, 240.0))[1:]
    (-160.0, 16)
    """
    top = 2**bits - 1
    integer = not like.storage_dtype.startswith("float")
    fits = integer and not like.signed and like.stored_range[1] <= top
    if fits and (clip_window is None or like.format in RASTER_FORMATS.values()):
        return like.rescale_slope, like.rescale_intercept, like.bits_stored
    if clip_window is not None:
        low, high = clip_window
    elif integer and like.bits_stored <= bits:
        low, high = like.physical_range
    else:
        low, high = float(image.min()), float(image.max())
    return max(high - low, 1e-12) / top, float(low), bits


def write_png(image: np.ndarray, like: ScanMetadata, path: Path, *, bits: int | None = None,
              clip_window: tuple[float, float] | None = None) -> Path:
    """Write an 8- or 16-bit grayscale PNG in display polarity (dense tissue bright).

    ``bits`` defaults to 8 for sources of 8 bits or fewer, else 16. Pixels follow
    :func:`png_mapping`; the mapping and the units are written in the ``UNITS_CHUNK`` text
    chunk, which :func:`read_raster` applies, so a PNG of a CT reads back in HU.
    """
    bits = bits or (8 if like.bits_stored <= 8 else 16)
    dtype = np.uint8 if bits == 8 else np.uint16
    slope, intercept, bits_stored = png_mapping(like, image, bits, clip_window)
    pixels = np.rint((image.astype(np.float64) - intercept) / slope)
    values = np.clip(pixels, 0, np.iinfo(dtype).max).astype(dtype)
    info = PngInfo()
    info.add_text(UNITS_CHUNK, json.dumps({
        "slope": slope, "intercept": intercept, "units": like.units,
        "modality": like.modality, "bits_stored": bits_stored, "polarity": "display"}))
    try:
        with atomic_path(path) as tmp:
            Image.fromarray(values).save(tmp, format="PNG", pnginfo=info)
    except OSError as exc:
        raise ScanWriteError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path
