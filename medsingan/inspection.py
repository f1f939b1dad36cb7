"""What the reader and the modality preset make of a scan (``medsingan inspect``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from medsingan.io import Scan, read_scan
from medsingan.io.atomic import atomic_path
from medsingan.model.previews import to_uint8
from medsingan.preprocess import IntensityMapping, prepare_scan
from medsingan.presets import Preset, resolve_preset
from medsingan.pyramid import pyramid_shapes, resize
from medsingan.runs import resolve_train_config


@dataclass
class Inspection:
    """A scan, the preset chosen for it and the [-1, 1] image the trainer would see."""

    scan: Scan
    preset: Preset
    mapping: IntensityMapping
    unit_image: np.ndarray
    pyramid: list[tuple[int, int]]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable report (no identifying DICOM header)."""
        image = self.scan.image
        return {
            "scan": self.scan.meta.to_dict(),
            "intensity": {"min": float(image.min()), "max": float(image.max()),
                          "mean": float(image.mean()), "units": self.scan.meta.units},
            "preset": {"name": self.preset.name, "description": self.preset.description},
            "mapping": self.mapping.to_dict(),
            "pyramid": [list(shape) for shape in self.pyramid],
        }


def inspect_scan(path: Path, *, modality: str = "auto", window: str | None = None,
                 frame: int | None = None, slice_index: int | None = None,
                 slice_axis: int | None = None, volume: int | None = None) -> Inspection:
    """Read a scan, resolve its preset and map it as training would (all checks included)."""
    scan = read_scan(path, frame=frame, slice_index=slice_index, slice_axis=slice_axis,
                     volume=volume)
    preset = resolve_preset(modality, scan.meta.modality)
    config = resolve_train_config("fast", preset.train, {})
    mapping, unit = prepare_scan(scan, preset, window=window, min_size=config.min_size)
    shapes = pyramid_shapes(*unit.shape, min_size=config.min_size, max_size=config.max_size,
                            scale_factor=config.scale_factor)
    return Inspection(scan=scan, preset=preset, mapping=mapping, unit_image=unit, pyramid=shapes)


def write_preview(unit: np.ndarray, path: Path, *, max_size: int | None = None) -> Path:
    """Write a [-1, 1] image as an 8-bit PNG, rows x columns unless ``max_size`` shrinks it."""
    image = torch.from_numpy(unit)[None, None]
    if max_size is not None and max(unit.shape) > max_size:
        scale = max_size / max(unit.shape)
        size = (max(1, round(unit.shape[0] * scale)), max(1, round(unit.shape[1] * scale)))
        image = resize(image, size)
    with atomic_path(path) as tmp:
        Image.fromarray(to_uint8(image[0, 0])).save(tmp, format="PNG")
    return path


def describe(inspection: Inspection) -> list[str]:
    """Human-readable lines for the terminal."""
    meta = inspection.scan.meta
    image = inspection.scan.image
    lines = [f"file        {Path(meta.source_path).name}  (sha256 {meta.sha256[:16]}...)"]
    where = ", ".join(v for v in (meta.modality, meta.body_part) if v)
    lines.append(f"format      {meta.format.upper()}" + (f", {where}" if where else ""))
    spacing = (f", spacing {meta.pixel_spacing[0]:.4g} x {meta.pixel_spacing[1]:.4g} mm"
               if meta.pixel_spacing else ", spacing unknown")
    lines.append(f"size        {meta.rows} x {meta.columns} px (rows x columns){spacing}")
    sign = ("floating-point" if meta.storage_dtype.startswith("float")
            else "signed" if meta.signed else "unsigned")
    polarity = meta.photometric + (" (inverted on read: dense tissue bright)" if meta.inverted
                                   else "")
    lines.append(f"storage     {meta.bits_stored}-bit {sign} ({meta.storage_dtype}), {polarity}")
    if meta.rescale_slope != 1.0 or meta.rescale_intercept != 0.0:
        lines.append(f"rescale     slope {meta.rescale_slope:g}, intercept "
                     f"{meta.rescale_intercept:g}")
    lines.append(f"intensity   {image.min():g} .. {image.max():g} {meta.units} "
                 f"(mean {image.mean():.4g})")
    if meta.window_center is not None and meta.window_width is not None:
        lines.append(f"window      C {meta.window_center:g}, W {meta.window_width:g} (from file)")
    for label, value in (("frame", meta.frame), ("slice", meta.slice_index),
                         ("volume", meta.volume)):
        if value is not None:
            lines.append(f"{label:<12}{value}")
    if meta.series_folder is not None:
        lines.append(f"series      slice {meta.series_index} of {meta.series_slices} "
                     f"(0..{meta.series_slices - 1}) in {meta.series_folder}")
    mapping = inspection.mapping
    lines.append(f"preset      {inspection.preset.name}: {mapping.detail}, "
                 f"[{mapping.low:g}, {mapping.high:g}] {meta.units} -> [-1, 1]")
    shapes = inspection.pyramid
    lines.append(f"pyramid     {len(shapes)} scales, {shapes[-1][0]}x{shapes[-1][1]} .. "
                 f"{shapes[0][0]}x{shapes[0][1]} px")
    lines.extend(f"note        {note}" for note in meta.notes)
    return lines
