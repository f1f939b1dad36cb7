"""PNG, TIFF and JPEG images (8- or 16-bit grayscale; RGB converted to grayscale)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from medsingan.errors import ScanReadError, ScanWriteError, UnsupportedScanError
from medsingan.io.atomic import atomic_path, sha256_of
from medsingan.io.monai_loader import load_pixels
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


def _decode(path: Path, notes: list[str]) -> tuple[np.ndarray, str]:
    """Pixels (rows, columns[, channels]) and the Pillow mode; refuses what would read as
    something other than the image (palette indices, wrapped or truncated values)."""
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
    if mode in _REFUSED_MODES:
        raise UnsupportedScanError(f"{path.name}: {_REFUSED_MODES[mode]}")
    if mode in ("P", "PA") or orientation not in (1, None):
        with Image.open(path) as handle:  # palette colours, or the orientation viewers show
            image = ImageOps.exif_transpose(handle)
            image = image.convert("RGBA" if "A" in mode or key is not None else "RGB")
        if orientation not in (1, None):
            notes.append(f"EXIF orientation {orientation} applied, as viewers show it")
        return np.asarray(image), mode
    pixels = _load_pixels(path)
    if key is not None and np.any(np.all(pixels == np.asarray(key), axis=-1) if pixels.ndim == 3
                                  else pixels == key):
        raise UnsupportedScanError(f"{path.name} has transparent pixels (a colour key); a scan "
                                   "has none: flatten it onto a background first")
    return pixels, mode


def read_raster(path: Path) -> Scan:
    """Read a PNG/TIFF/JPEG file as a grayscale scan in its stored values.

    Colour images are converted to grayscale (BT.601 luma) with a note, palette images through
    their palette, opaque alpha is dropped; transparency, 1-bit, floating-point, CMYK and
    16-bit colour images are refused with :class:`UnsupportedScanError`.
    """
    notes: list[str] = []
    try:
        pixels, mode = _decode(path, notes)
    except UnsupportedScanError:
        raise
    except Exception as exc:
        raise ScanReadError(f"{path.name} is not a readable image ({exc})") from exc
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
    meta = ScanMetadata(
        format=RASTER_FORMATS[path.suffix.lower()],
        source_path=str(path.resolve()),
        sha256=sha256_of(path),
        rows=int(pixels.shape[0]),
        columns=int(pixels.shape[1]),
        bits_stored=16 if sixteen else 8,
        storage_dtype=storage,
        units="pixel value",
        notes=notes,
    )
    return Scan(image=np.ascontiguousarray(pixels, dtype=np.float32), meta=meta)


def write_png(image: np.ndarray, like: ScanMetadata, path: Path, *,
              bits: int | None = None) -> Path:
    """Write an 8- or 16-bit grayscale PNG.

    Stored values of the source are written as they are when they fit the PNG's unsigned
    range (``bits`` defaults to 8 for 8-bit sources, else 16); a source whose stored range
    does not fit (signed CT, floating-point NIfTI) is mapped linearly from its physical
    range onto the full PNG range.
    """
    bits = bits or (8 if like.bits_stored <= 8 else 16)
    dtype = np.uint8 if bits == 8 else np.uint16
    top = np.iinfo(dtype).max
    fits = (not like.storage_dtype.startswith("float") and not like.signed
            and like.stored_range[1] <= top)
    if fits:
        values = like.to_stored(image).astype(dtype)
    else:
        low, high = float(image.min()), float(image.max())
        if not like.storage_dtype.startswith("float"):
            low, high = like.physical_range
        scaled = (image.astype(np.float64) - low) / max(high - low, 1e-12) * top
        values = np.clip(np.rint(scaled), 0, top).astype(dtype)
    try:
        with atomic_path(path) as tmp:
            Image.fromarray(values).save(tmp, format="PNG")
    except OSError as exc:
        raise ScanWriteError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path
