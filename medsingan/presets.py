"""Modality presets: how a modality's intensities map to [-1, 1] and its default SinGAN
hyper-parameters. Presets are YAML files in ``configs/`` (installed as ``medsingan.configs``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from medsingan.errors import ConfigError

PRESET_NAMES = ("xray", "ct", "mri", "dental", "generic")

# DICOM Modality (0008,0060) -> preset, for --modality auto.
_MODALITY_TO_PRESET = {
    "CR": "xray", "DX": "xray", "MG": "xray", "RG": "xray", "XA": "xray", "RF": "xray",
    "IO": "dental", "PX": "dental",
    "CT": "ct",
    "MR": "mri",
}


@dataclass(frozen=True)
class Preset:
    """One modality preset as read from ``configs/<name>.yaml``."""

    name: str
    description: str
    intensity: dict[str, Any]
    train: dict[str, Any] = field(default_factory=dict)

    @property
    def windows(self) -> dict[str, dict[str, float]]:
        return dict(self.intensity.get("windows", {}))


def load_preset(name: str) -> Preset:
    """Load a preset by name; raises ConfigError naming the available ones."""
    if name not in PRESET_NAMES:
        raise ConfigError(f"unknown modality preset '{name}'; choose one of: "
                          f"{', '.join(PRESET_NAMES)} or auto")
    text = resources.files("medsingan.configs").joinpath(f"{name}.yaml").read_text("utf-8")
    data = yaml.safe_load(text)
    return Preset(name=data["name"], description=data.get("description", ""),
                  intensity=dict(data["intensity"]), train=dict(data.get("train") or {}))


def preset_for_modality(modality: str | None) -> str:
    """The preset --modality auto picks for a DICOM Modality value (generic when unknown)."""
    return _MODALITY_TO_PRESET.get((modality or "").upper(), "generic")


def resolve_preset(requested: str, modality: str | None) -> Preset:
    """``requested`` is a preset name or 'auto' (chosen from the scan's DICOM modality)."""
    name = preset_for_modality(modality) if requested == "auto" else requested
    return load_preset(name)
