"""PNG, TIFF and JPEG images (8- or 16-bit grayscale; RGB converted to grayscale)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from medsingan.errors import ScanReadError, ScanWriteError
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


def read_raster(path: Path) -> Scan:
    """Read a PNG/TIFF/JPEG file as a grayscale scan in its stored values."""
    try:
        with Image.open(path) as handle:
            mode = handle.mode
            handle.verify()
        pixels = _load_pixels(path)
    except Exception as exc:
        raise ScanReadError(f"{path.name} is not a readable image ({exc})") from exc
    notes: list[str] = []
    if pixels.ndim == 3:
        channels = pixels.shape[2]
        if channels in (3, 4):
            pixels = pixels[..., :3].astype(np.float32) @ _LUMA
            notes.append(f"{mode} image converted to grayscale (ITU-R BT.601 luma)")
        elif channels == 2:  # grayscale + alpha
            pixels = pixels[..., 0]
        else:
            raise ScanReadError(f"{path.name} has {channels} channels; expected 1, 3 or 4")
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
