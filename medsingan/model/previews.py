"""PNG previews of a run: sample sheets, drawn with Pillow (the curves: :mod:`medsingan.plots`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from medsingan.masks import outlined_tile
from medsingan.model.serialization import atomic_write

_GAP = 4


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """Map an ``(h, w)`` image from [-1, 1] to 0..255 ``uint8`` (clipped)."""
    pixels = image.detach().float().cpu()
    return ((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


def _save_png(path: Path, picture: Image.Image) -> None:
    atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))


def save_sample_sheet(path: Path, images: Sequence[torch.Tensor], min_height: int = 128,
                      columns: int | None = None) -> None:
    """Write ``(1, C, h, w)`` images (first channel) as a contact sheet, zoomed to
    ``min_height``: side by side, or in rows of ``columns`` tiles. An image+mask pair
    (``C == 2``) has its mask's outline drawn over it (:func:`medsingan.masks.outlined_tile`)."""
    zoom = max(1, -(-min_height // int(images[0].shape[-2])))
    tiles = [outlined_tile(to_uint8(img[0, 0]), img[0, 1], zoom) if img.shape[1] > 1 else
             Image.fromarray(to_uint8(img[0, 0])).resize(
                 (img.shape[-1] * zoom, img.shape[-2] * zoom), Image.Resampling.NEAREST)
             for img in images]
    columns = columns or len(tiles)
    rows = -(-len(tiles) // columns)
    cell_w, cell_h = max(t.width for t in tiles), max(t.height for t in tiles)
    mode = "RGB" if any(t.mode == "RGB" for t in tiles) else "L"
    sheet = Image.new(mode, (columns * cell_w + _GAP * (columns - 1),
                            rows * cell_h + _GAP * (rows - 1)),
                      color=(255, 255, 255) if mode == "RGB" else 255)
    for k, tile in enumerate(tiles):
        sheet.paste(tile, ((k % columns) * (cell_w + _GAP), (k // columns) * (cell_h + _GAP)))
    _save_png(path, sheet)
