"""Real scans for the benchmarks, read with pydicom directly (no medsingan I/O involved)."""

from __future__ import annotations

import numpy as np
import pydicom
import torch
from pydicom.data import get_testdata_file

from medsingan.pyramid import resize


def chest_radiograph() -> torch.Tensor:
    """pydicom-data's CR chest (RG1_UNCR.dcm, 1955 x 1841) in display polarity (MONOCHROME1
    inverted), mapped to [-1, 1], ``(1, 1, H, W)``."""
    dataset = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))
    pixels = dataset.pixel_array.astype(np.float32)
    if dataset.PhotometricInterpretation == "MONOCHROME1":
        pixels = pixels.max() - pixels
    unit = (pixels - pixels.min()) / (pixels.max() - pixels.min()) * 2 - 1
    return torch.from_numpy(unit)[None, None]


def chest_square(size: int) -> torch.Tensor:
    """The chest's centre square resized to ``size`` x ``size`` px (a "250-px scan")."""
    image = chest_radiograph()
    side = min(image.shape[-2:])
    top, left = (image.shape[-2] - side) // 2, (image.shape[-1] - side) // 2
    square = image[..., top:top + side, left:left + side]
    return resize(square, (size, size)).clamp(-1, 1)
