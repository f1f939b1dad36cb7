"""The one place pixels are decoded through MONAI's ``LoadImage``."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

# MONAI registers an optional GPU decoder plugin and logs a warning when it is absent.
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)


def load_pixels(path: Path, reader: object) -> np.ndarray:
    """Decode ``path`` with a MONAI image reader and return a plain float32/int array.

    MONAI warns about its optional GPU decoder and about patient-space affines it cannot derive
    for projection images; neither affects the pixel array we take, so those are silenced.
    """
    from monai.transforms import LoadImage

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return np.asarray(LoadImage(reader=reader, image_only=True)(str(path)))
