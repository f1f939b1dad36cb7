"""PNG previews of a run: sample sheets and loss curves, drawn with Pillow only."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from medsingan.model.serialization import atomic_write

_GAP = 4
_CURVE_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """Map an ``(h, w)`` image from [-1, 1] to 0..255 ``uint8`` (clipped)."""
    pixels = image.detach().float().cpu()
    return ((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


def _save_png(path: Path, picture: Image.Image) -> None:
    atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))


def save_sample_sheet(path: Path, images: Sequence[torch.Tensor], min_height: int = 128,
                      columns: int | None = None) -> None:
    """Write ``(1, C, h, w)`` images (first channel) as a contact sheet, zoomed to
    ``min_height``: side by side, or in rows of ``columns`` tiles."""
    zoom = max(1, -(-min_height // int(images[0].shape[-2])))
    tiles = [Image.fromarray(to_uint8(img[0, 0])) for img in images]
    tiles = [t.resize((t.width * zoom, t.height * zoom), Image.Resampling.NEAREST) for t in tiles]
    columns = columns or len(tiles)
    rows = -(-len(tiles) // columns)
    cell_w, cell_h = max(t.width for t in tiles), max(t.height for t in tiles)
    sheet = Image.new("L", (columns * cell_w + _GAP * (columns - 1),
                            rows * cell_h + _GAP * (rows - 1)), color=255)
    for k, tile in enumerate(tiles):
        sheet.paste(tile, ((k % columns) * (cell_w + _GAP), (k // columns) * (cell_h + _GAP)))
    _save_png(path, sheet)


def save_loss_curves(path: Path, rows: Sequence[dict[str, float]], columns: Sequence[str],
                     panel_size: tuple[int, int] = (720, 160)) -> None:
    """One panel per column, values against logged step; dotted lines where the scale changes.

    Each panel is scaled to its own min..max, printed at its left edge.
    """
    width, height = panel_size
    picture = Image.new("RGB", (width, height * len(columns)), "white")
    draw = ImageDraw.Draw(picture)
    margin = 6
    for panel, (column, colour) in enumerate(zip(columns, _CURVE_COLOURS, strict=False)):
        top = panel * height
        values = [float(r[column]) for r in rows]
        low, high = (min(values), max(values)) if values else (0.0, 1.0)
        span = (high - low) or 1.0
        step = (width - 2 * margin) / max(len(values) - 1, 1)

        def point(i: int, value: float, top: int = top, low: float = low, span: float = span,
                  step: float = step) -> tuple[float, float]:
            return margin + i * step, top + height - margin - (value - low) / span * (height - 30)

        for i in range(1, len(rows)):
            if rows[i]["scale"] != rows[i - 1]["scale"]:
                x = margin + i * step
                for y in range(top, top + height, 6):
                    draw.line([(x, y), (x, y + 2)], fill="#bbbbbb")
        if len(values) > 1:
            draw.line([point(i, v) for i, v in enumerate(values)], fill=colour, width=1)
        draw.text((margin, top + 2), f"{column}  [{low:.4g}, {high:.4g}]", fill="black")
        draw.line([(0, top + height - 1), (width, top + height - 1)], fill="#888888")
    _save_png(path, picture)
