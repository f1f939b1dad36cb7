"""Scan -> trained run directory: the composition behind ``medsingan train``.

Reads the scan (io), maps it with its modality preset (preprocess), resolves the training
hyper-parameters (speed preset < modality preset < explicit options) and trains (train).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml

from medsingan import __version__
from medsingan.errors import ConfigError, warn_user
from medsingan.io import read_scan
from medsingan.io.deid import deidentified_header
from medsingan.io.dicom import source_warnings
from medsingan.io.scan import Scan
from medsingan.masks import prepare_mask, stack_pair
from medsingan.model.container import TrainedPyramid
from medsingan.monitor import MonitorOptions
from medsingan.preprocess import IntensityMapping, prepare_scan
from medsingan.presets import resolve_preset
from medsingan.pyramid import pyramid_shapes
from medsingan.roi import Region, region_unit
from medsingan.train import TrainConfig, train

TRAINING_PRESETS = ("fast", "quick", "balanced", "concurrent", "lean", "paper")


def training_preset(name: str) -> dict[str, Any]:
    """The overrides of a speed preset from ``configs/training.yaml``."""
    if name not in TRAINING_PRESETS:
        raise ConfigError(f"unknown training preset '{name}'; choose one of: "
                          f"{', '.join(TRAINING_PRESETS)}")
    text = resources.files("medsingan.configs").joinpath("training.yaml").read_text("utf-8")
    return dict(yaml.safe_load(text)[name] or {})


def resolve_train_config(speed_preset: str, modality_train: dict[str, Any],
                         overrides: dict[str, Any]) -> TrainConfig:
    """Speed preset, then the modality preset's ``train:`` section (not for ``paper``), then
    explicit options (``None`` values are ignored)."""
    values = training_preset(speed_preset)
    if speed_preset != "paper":
        values.update(modality_train)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(values)


def default_run_dir(scan_path: Path) -> Path:
    """``runs/<scan name without its suffixes>``."""
    name = scan_path.name
    for suffix in (".nii.gz", ".nii", ".dcm", ".dicom", ".png", ".tiff", ".tif", ".jpeg", ".jpg",
                   ".mha", ".mhd", ".nrrd", ".nhdr"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return Path("runs") / (name or "scan")


def describe_source(scan: Scan, preset: str, mapping: IntensityMapping, *, label: str = "",
                    split: str = "", subject_id: str | None = None) -> dict[str, Any]:
    """What the samples of a scan need to know of it, as a run's ``config.json`` keeps it
    under ``extra`` (and the patch engine without a run): the source (path, sha256, geometry,
    intensity facts), its DICOM header de-identified, the modality preset, the intensity
    mapping, the cohort facts every sample inherits and the source's warnings."""
    return {
        "source": scan.meta.to_dict(),
        "source_dicom_header": deidentified_header(scan.meta.dicom_header),
        "cohort": {"label": label, "split": split,
                   "subject_id": subject_id or f"src-{scan.meta.sha256[:12]}"},
        "modality_preset": preset,
        "intensity_mapping": mapping.to_dict(),
        "medsingan_version": __version__,
        "warnings": source_warnings(scan.meta),
    }


@dataclass
class PreparedTraining:
    """A scan read, mapped and described, ready for :func:`medsingan.train.train`: the image
    ``(1, C, H, W)`` in [-1, 1], the resolved hyper-parameters, the run directory and the
    ``extra`` facts its ``config.json`` records."""

    image: torch.Tensor
    config: TrainConfig
    run_dir: Path
    extra: dict[str, Any]


def prepare_training(scan_path: Path, run_dir: Path | None = None, *, modality: str = "auto",
                     window: str | None = None, frame: int | None = None,
                     slice_index: int | None = None, slice_axis: int | None = None,
                     volume: int | None = None, speed_preset: str = "fast",
                     overrides: dict[str, Any] | None = None, label: str = "", split: str = "",
                     subject_id: str | None = None,
                     roi: str | tuple[int, int, int, int] | None = None,
                     spacing: float | None = None, mask: Path | None = None,
                     labels: bool = False) -> PreparedTraining:
    """Everything :func:`train_scan` does before training (its arguments, same meaning);
    the source's warnings are in ``extra["warnings"]``, not printed."""
    if spacing is not None and roi is None:
        raise ConfigError("--spacing applies to a region (--roi X,Y,W,H)")
    region = None if roi is None else Region.parse(roi)
    scan = read_scan(scan_path, frame=frame, slice_index=slice_index, slice_axis=slice_axis,
                     volume=volume)
    preset = resolve_preset(modality, scan.meta.modality)
    config = resolve_train_config(speed_preset, preset.train, overrides or {})
    mapping, unit = prepare_scan(scan, preset, window=window, min_size=config.min_size)
    if region is not None:
        unit = region_unit(unit, region, scan.meta, min_size=config.min_size, spacing=spacing)
    run_dir = run_dir or default_run_dir(Path(scan_path))
    extra = {**describe_source(scan, preset.name, mapping, label=label, split=split,
                               subject_id=subject_id), "speed_preset": speed_preset}
    if region is not None:
        extra["roi"] = {**region.to_dict(), "spacing_mm": spacing}
        trained = pyramid_shapes(*unit.shape, config.min_size, config.max_size,
                                 config.scale_factor)[0]
        if trained != region.shape:
            reasons = ([f"resampled to {spacing:g} mm"] if spacing is not None else []) + \
                ([f"--max-size {config.max_size}"] if max(unit.shape) > config.max_size else [])
            extra["warnings"].append(
                f"the region {region} ({region.w} x {region.h} px) is trained at {trained[1]} "
                f"x {trained[0]} px ({', '.join(reasons)}): its outputs are scaled back up "
                "into it")
    image = torch.from_numpy(unit)[None, None]
    if mask is not None:  # an image+mask pair (medsingan.masks): the mask is channel 1
        pair = prepare_mask(mask, scan.meta, labels=labels, region=region, run_dir=run_dir,
                            finest=pyramid_shapes(*unit.shape, config.min_size,
                                                  config.max_size, config.scale_factor)[0])
        image, extra["mask"] = stack_pair(image, pair.unit), pair.record
        extra["warnings"] += pair.warnings
    return PreparedTraining(image, config, run_dir, extra)


def train_scan(scan_path: Path, run_dir: Path | None = None, *, modality: str = "auto",
               window: str | None = None, frame: int | None = None,
               slice_index: int | None = None, slice_axis: int | None = None,
               volume: int | None = None,
               speed_preset: str = "fast", overrides: dict[str, Any] | None = None,
               resume: bool = False, overwrite: bool = False, progress: bool = True,
               last_scale: int = 0, label: str = "", split: str = "",
               subject_id: str | None = None,
               roi: str | tuple[int, int, int, int] | None = None,
               spacing: float | None = None,
               monitor: MonitorOptions | None = None, mask: Path | None = None,
               labels: bool = False) -> tuple[Path, TrainedPyramid]:
    """Train a SinGAN on one scan slice; returns the run directory and the trained pyramid.

    The run's ``config.json`` records, under ``extra``, the source (path, sha256, geometry,
    intensity facts), its DICOM header de-identified (never the identifying original), the
    modality preset and the intensity mapping, so that samples can be written back in the
    source's format and units; and the cohort facts every synthetic sample inherits: ``label``,
    ``split`` and ``subject_id`` (default: a pseudonym from the source file's hash).

    ``roi = (x, y, w, h)`` (or ``"X,Y,W,H"``, source pixels: column and row of the top-left
    corner) trains on that region only, cut at full resolution before the preset's
    ``max_size`` applies, optionally resampled to ``spacing`` mm per pixel; ``extra["roi"]``
    records it, and the run's outputs are the full-size source with only the region changed
    (:mod:`medsingan.roi`). The intensity mapping is the whole scan's.

    ``monitor``: per-scale scoring and TensorBoard log (:mod:`medsingan.monitor`).

    ``mask`` (a binary mask, or with ``labels`` a label map, on the scan's pixels) trains an
    image+mask pair, SinGAN-Seg's way (:mod:`medsingan.masks`); ``extra["mask"]`` records it.
    """
    prepared = prepare_training(scan_path, run_dir, modality=modality, window=window,
                                frame=frame, slice_index=slice_index, slice_axis=slice_axis,
                                volume=volume, speed_preset=speed_preset, overrides=overrides,
                                label=label, split=split, subject_id=subject_id, roi=roi,
                                spacing=spacing, mask=mask, labels=labels)
    warn_user(prepared.extra["warnings"])
    pyramid = train(prepared.image, prepared.config, prepared.run_dir,
                    extra_config=prepared.extra, resume=resume, overwrite=overwrite,
                    progress=progress, last_scale=last_scale, monitor=monitor)
    return prepared.run_dir, pyramid
