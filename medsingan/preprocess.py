"""From a scan in physical units to the [-1, 1] image the trainer sees, and back.

Every preset's mapping is linear: a physical interval [low, high] (the stored range of a
radiograph, a CT window, MR percentiles) maps to [-1, 1] and values outside are clipped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from medsingan.errors import ConfigError, InvalidImageError
from medsingan.io.scan import Scan
from medsingan.presets import Preset


@dataclass(frozen=True)
class IntensityMapping:
    """``unit = 2 * (clip(x, low, high) - low) / (high - low) - 1`` and its inverse.

    >>> m = IntensityMapping(low=-160.0, high=240.0, method="window", detail="soft_tissue")
    >>> float(m.to_unit(np.array([40.0]))[0]), float(m.from_unit(np.array([1.0]))[0])
    (0.0, 240.0)
    """

    low: float
    high: float
    method: str
    detail: str = ""

    def __post_init__(self) -> None:
        if not self.high > self.low:
            raise ConfigError(f"intensity mapping needs high > low, got [{self.low}, {self.high}]")

    def to_unit(self, image: np.ndarray) -> np.ndarray:
        """Physical values -> [-1, 1] (float32), clipped to [low, high] first."""
        clipped = np.clip(image.astype(np.float64), self.low, self.high)
        return (2.0 * (clipped - self.low) / (self.high - self.low) - 1.0).astype(np.float32)

    def from_unit(self, unit: np.ndarray) -> np.ndarray:
        """[-1, 1] -> physical values (float32); inputs outside [-1, 1] are clipped."""
        clipped = np.clip(unit.astype(np.float64), -1.0, 1.0)
        return ((clipped + 1.0) / 2.0 * (self.high - self.low) + self.low).astype(np.float32)

    @property
    def clip_window(self) -> tuple[float, float] | None:
        """``(low, high)`` when values outside it are lost (a CT window, MR percentiles);
        ``None`` for a radiograph's whole stored range, which clips nothing."""
        return None if self.method == "range" else (self.low, self.high)

    def interval(self, units: str) -> str:
        """``[low, high]`` in words, e.g. ``-160..240 HU``.

        >>> IntensityMapping(-160.0, 240.0, "window").interval("HU")
        '-160..240 HU'
        """
        return f"{self.low:.6g}..{self.high:.6g} {units}"

    def to_dict(self) -> dict[str, float | str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, float | str]) -> IntensityMapping:
        return cls(low=float(data["low"]), high=float(data["high"]), method=str(data["method"]),
                   detail=str(data.get("detail", "")))


def intensity_mapping(scan: Scan, preset: Preset, window: str | None = None) -> IntensityMapping:
    """Resolve a preset's intensity rule against one scan."""
    rule = preset.intensity
    method = rule["method"]
    if window is not None and method != "window":
        raise ConfigError(f"--window applies to the ct preset only, not '{preset.name}'")
    if method == "window":
        name = window or rule.get("window", "soft_tissue")
        if name not in preset.windows:
            raise ConfigError(f"unknown CT window '{name}'; choose one of: "
                              f"{', '.join(preset.windows)}")
        center, width = float(preset.windows[name]["center"]), float(preset.windows[name]["width"])
        return IntensityMapping(center - width / 2, center + width / 2, "window",
                                f"{name} (C {center:g}, W {width:g})")
    if method == "range" and not scan.meta.storage_dtype.startswith("float"):
        low, high = scan.meta.physical_range
        return IntensityMapping(low, high, "range", f"{scan.meta.bits_stored}-bit stored range")
    if method in ("range", "percentile"):
        lo_pct, hi_pct = rule.get("percentiles", [0.0, 100.0])
        low, high = (float(v) for v in np.percentile(scan.image, [lo_pct, hi_pct]))
        if high <= low:
            low, high = float(scan.image.min()), float(scan.image.max())
        return IntensityMapping(low, high, "percentile", f"percentiles {lo_pct:g}-{hi_pct:g}")
    raise ConfigError(f"preset '{preset.name}': unknown intensity method '{method}'")


def check_trainable(image: np.ndarray, *, min_size: int, name: str = "image") -> None:
    """Raise InvalidImageError when an image cannot be trained on: constant, non-finite, or
    with a side shorter than the coarsest pyramid size."""
    if not np.all(np.isfinite(image)):
        raise InvalidImageError(f"{name} has NaN/inf values")
    if float(image.max()) == float(image.min()):
        raise InvalidImageError(f"{name} is constant (every pixel {float(image.min()):g}): "
                                "there is nothing to learn")
    if min(image.shape) < min_size:
        raise InvalidImageError(
            f"{name} is {image.shape[0]}x{image.shape[1]} px, smaller than the coarsest pyramid "
            f"size {min_size} px; use a larger image or train with a lower --min-size")


def prepare_scan(scan: Scan, preset: Preset, *, window: str | None = None,
                 min_size: int = 25) -> tuple[IntensityMapping, np.ndarray]:
    """The scan as the trainer sees it at full resolution, and the mapping that got it there.

    Returns ``(mapping, unit)`` with ``unit`` in [-1, 1], float32, (rows, cols). Raises
    InvalidImageError for a constant scan, one the mapping makes constant (a CT window that
    misses every pixel), or one too small for the pyramid.
    """
    name = scan.meta.source_path.rsplit("/", 1)[-1]
    check_trainable(scan.image, min_size=min_size, name=name)
    mapping = intensity_mapping(scan, preset, window)
    unit = mapping.to_unit(scan.image)
    check_trainable(unit, min_size=min_size, name=f"{name} after the {preset.name} mapping")
    return mapping, unit
