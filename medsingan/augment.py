"""Trained run -> an augmented cohort: samples in the source's format, scores, manifest rows.

The composition behind ``medsingan augment``. Sample ``i`` of seed ``s`` depends only on
``(s, i)``, so an interrupted cohort is completed by generating exactly the missing indices,
and a cohort is the same whatever the batch size.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress

from medsingan.devices import resolve_device
from medsingan.errors import ConfigError, MedsinganError, RunDirError, ScanWriteError, warn_user
from medsingan.generate import sample, scaled_shapes
from medsingan.io import DerivedSeries, ScanMetadata, read_scan, write_scan
from medsingan.io.atomic import atomic_path, sha256_of
from medsingan.io.dicom import source_warnings
from medsingan.manifest import (
    ManifestRow,
    append_rows,
    check_appendable,
    read_manifest,
    relative_to_manifest,
    set_column,
)
from medsingan.metrics.diversity import CohortDiversity, similarity_to_source
from medsingan.metrics.patch_swd import PatchSWDScorer
from medsingan.metrics.sifid import DEFAULT_VARIANT, SifidScorer, find_inception_weights
from medsingan.model.container import TrainedPyramid
from medsingan.model.noise import check_seed
from medsingan.model.previews import save_sample_sheet
from medsingan.preprocess import IntensityMapping
from medsingan.roi import (
    Region,
    RegionCanvas,
    blend,
    check_unchanged,
    output_image,
    region_in_run_pixels,
    region_of_run,
    region_taper,
)
from medsingan.train import load_run

FORMAT_SUFFIX = {"dicom": ".dcm", "nifti": ".nii.gz", "png": ".png", "tiff": ".png",
                 "jpeg": ".png", "dcm": ".dcm", "nii": ".nii.gz", "mha": ".mha",
                 "nrrd": ".nrrd"}
SETTINGS_FILE = "augment.json"
GRID_FILE = "grid.png"
SUMMARY_FILE = "summary.json"
# Largest output side: DICOM's Rows/Columns are 16-bit, and 16k px is already ~4 GiB of
# activations per sample at the finest scale.
MAX_OUTPUT_SIDE = 16384
_SCALE = re.compile(r"^\s*N\s*(?:-\s*([0-9]+))?\s*$", re.IGNORECASE)
_INDEX = re.compile(r"^\s*-?[0-9]+\s*$")


def parse_scale(text: str | int, coarsest: int, option: str = "--start-scale") -> int:
    """``N`` (coarsest), ``N-k`` or a plain index (0 = finest) -> an index in 0..coarsest."""
    value = str(text)
    match = _SCALE.match(value)
    if match:
        index = coarsest - int(match.group(1) or 0)
    elif _INDEX.match(value):
        index = int(value)
    else:
        raise ConfigError(f"{option} must be N, N-k or an index, not '{value}'")
    if not 0 <= index <= coarsest:
        raise ConfigError(f"{option} {value} is out of range: this run has scales 0..{coarsest} "
                          f"(N = {coarsest})")
    return index


@dataclass
class AugmentRequest:
    """What to generate and where; ``None`` means "from the run"."""

    run_dir: Path
    n: int
    start_scale: str = "N"
    seed: int = 0
    batch_size: int | None = None
    height: int | None = None
    width: int | None = None
    scale_h: float | None = None
    scale_w: float | None = None
    out: Path | None = None
    output_format: str = "same"
    manifest: Path | None = None
    label: str | None = None
    split: str | None = None
    subject_id: str | None = None
    sifid: bool = True
    sifid_variant: str = DEFAULT_VARIANT
    inception_weights: Path | None = None
    device: str = "auto"
    overwrite: bool = False
    keep_identifiers: bool = False
    progress: bool = True
    grid_size: int = 16


@dataclass
class AugmentResult:
    out: Path
    manifest: Path
    written: list[Path] = field(default_factory=list)
    skipped: int = 0
    summary: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def default_batch_size(pyramid: TrainedPyramid, output: tuple[int, int]) -> int:
    """Samples per forward pass: about 1 GiB of activations at the finest scale of the
    ``output`` size (rows, columns) asked for, which may differ from the run's."""
    height, width = output
    channels = max(g.spec.width for g in pyramid.generators.values())
    per_sample = height * width * channels * 4 * 8  # ~8 live activation maps of float32
    return int(np.clip((1 << 30) // max(per_sample, 1), 1, 64))


def load_complete_run(run_dir: Path) -> tuple[TrainedPyramid, dict[str, Any]]:
    """A fully trained run written by ``medsingan train`` and its source description (the
    ``extra`` of ``config.json``); RunDirError otherwise."""
    pyramid = load_run(run_dir)
    if not pyramid.is_complete:
        raise RunDirError(f"{run_dir} is not fully trained (finest trained scale "
                          f"{pyramid.finest_trained}); finish it with train --resume")
    extra = pyramid.metadata.get("extra") or {}
    if "source" not in extra or "intensity_mapping" not in extra:
        raise RunDirError(f"{run_dir}/config.json lacks the source description; "
                          "was it written by medsingan train?")
    return pyramid, extra


def latest_complete_run(folder: Path) -> Path:
    """The complete run under ``folder`` whose weights were written last; RunDirError when
    there is none."""
    candidates = sorted(folder.glob("*/weights.safetensors"), key=lambda p: p.stat().st_mtime,
                        reverse=True) if folder.is_dir() else []
    for weights in candidates:
        with contextlib.suppress(MedsinganError):
            if load_run(weights.parent).is_complete:
                return weights.parent
    raise RunDirError(f"no RUN_DIR given and no complete run under {folder}/: give the run "
                      "directory that medsingan train wrote")


def source_meta(extra: dict[str, Any], keep_identifiers: bool) -> ScanMetadata:
    """The run's source description (``config.json`` extra), ready for ``write_scan``."""
    meta = ScanMetadata.from_dict(extra["source"])
    meta.dicom_header = extra.get("source_dicom_header")
    if keep_identifiers:
        check_unchanged(meta, "--keep-identifiers reads the identifiers from it")
        original = read_scan(meta.source_path, frame=meta.frame, slice_index=meta.slice_index,
                             slice_axis=meta.slice_axis, volume=meta.volume)
        meta.dicom_header = original.meta.dicom_header
    return meta


def _check_settings(out: Path, settings: dict[str, Any], overwrite: bool) -> None:
    """A folder holds one cohort: re-running with other settings needs --overwrite."""
    path = out / SETTINGS_FILE
    if path.is_file() and not overwrite:
        try:
            previous = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            raise ConfigError(f"{path} is unreadable or corrupt; use --overwrite to start the "
                              "cohort over, or another --out") from None
        if not isinstance(previous, dict):
            previous = {}
        changed = sorted(k for k in settings if previous.get(k) != settings[k])
        if changed:
            raise ConfigError(f"{out} holds a cohort made with other settings "
                              f"({', '.join(changed)}); use another --out or --overwrite")


def _done_indices(manifest: Path, names: dict[int, Path]) -> set[int]:
    """Indices whose file exists and whose manifest row was written."""
    if not manifest.is_file():
        return set()
    listed = set(read_manifest(manifest)["image"].astype(str))
    return {i for i, path in names.items()
            if path.is_file() and relative_to_manifest(path, manifest) in listed}


def augment(request: AugmentRequest) -> AugmentResult:
    """Generate ``request.n`` scored samples of a trained run (see module docstring)."""
    if request.n < 1:
        raise ConfigError(f"--n must be at least 1, got {request.n}")
    check_seed(request.seed)
    if request.batch_size is not None and request.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {request.batch_size}")
    device = resolve_device(request.device)
    # fail fast, before any work: weights for SIFID, the run, the output format
    weights = (find_inception_weights(request.inception_weights, request.sifid_variant)
               if request.sifid else None)
    scorer = (SifidScorer(weights, variant=request.sifid_variant, device=device)
              if weights is not None else None)
    pyramid, extra = load_complete_run(request.run_dir)
    start = parse_scale(request.start_scale, pyramid.coarsest)
    shapes = scaled_shapes(pyramid, *_output_scale(request, pyramid.shapes[0]))
    meta = source_meta(extra, request.keep_identifiers)
    mapping = IntensityMapping.from_dict(extra["intensity_mapping"])
    # a region run's samples replace its region of the full-size source (read once here, so
    # a missing or changed source is refused before anything is written)
    canvas = RegionCanvas.of_run(extra, mapping, pyramid.shapes[0])
    if canvas is not None and tuple(shapes[0]) != tuple(pyramid.shapes[0]):
        raise ConfigError(f"a region run's samples replace its region {canvas.region} "
                          f"(X,Y,W,H in source px): --height, --width, --scale-h and "
                          "--scale-w apply to whole-scan runs")
    taper = region_taper(canvas.run_shape).to(device) if canvas is not None else None
    window = mapping.interval(meta.units)  # every file and row says what was clipped
    cohort = dict(extra.get("cohort") or {})
    label, split, subject = inherited_columns(request, cohort, meta)
    kind = meta.format if request.output_format == "same" else request.output_format
    if kind not in FORMAT_SUFFIX:
        raise ConfigError(f"--format must be same, dcm, nii, png, mha or nrrd, not '{kind}'")
    suffix = FORMAT_SUFFIX[kind]
    if suffix == ".dcm" and meta.dicom_header is None:
        raise ConfigError("--format dcm needs a DICOM source; choose nii or png")

    run_name = Path(request.run_dir).resolve().name
    out = Path(request.out or Path(request.run_dir) / "samples")
    manifest = Path(request.manifest or Path("data_manifests") / f"{run_name}.csv")
    settings = {"run_sha": sha256_of(Path(request.run_dir) / "weights.safetensors"),
                "start_scale": start, "seed": request.seed, "format": suffix,
                "size": list(shapes[0]), "label": label, "split": split,
                "subject_id": subject, "keep_identifiers": request.keep_identifiers,
                "sifid_variant": scorer.variant if scorer else None}
    _check_settings(out, settings, request.overwrite)
    check_appendable(manifest)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / SETTINGS_FILE) as tmp:
            tmp.write_text(json.dumps(settings, indent=2))
    except OSError as exc:
        raise ScanWriteError(f"cannot write to {out}: {exc.strerror or exc}") from exc

    names = {i: out / f"{run_name}_seed{request.seed}_{i:05d}{suffix}" for i in range(request.n)}
    done = set() if request.overwrite else _done_indices(manifest, names)
    todo = [i for i in range(request.n) if i not in done]
    pyramid.to(device)
    real = pyramid.reals[0]
    swd_scorer = PatchSWDScorer(real, shapes[0])
    # one DICOM study and series per cohort, the same when an interrupted cohort is completed
    series = DerivedSeries.for_key(json.dumps({"run": run_name, **settings}, sort_keys=True))
    batch_size = request.batch_size or default_batch_size(pyramid, shapes[0])
    result = AugmentResult(out=out, manifest=manifest, skipped=len(done),
                           warnings=source_warnings(meta))
    warn_user(result.warnings)
    cohort = CohortDiversity()
    grid_units: dict[int, torch.Tensor] = {}  # the first samples, for grid.png

    with Progress(console=Console(stderr=True), disable=not request.progress,
                  transient=True) as bar:
        task = bar.add_task(f"sampling from scale {start}", total=len(todo))
        for first in range(0, len(todo), batch_size):
            indices = todo[first:first + batch_size]
            # scored as written: the files hold [-1, 1] (a generator's residual output can
            # overshoot it), so an interrupted cohort read back scores the same
            generated = _sample_indices(pyramid, indices, start, request.seed,
                                        shapes).clamp(-1, 1)
            # a region run's sample is scored as it is written: blended into the region's
            # border by the taper
            images = generated if taper is None else blend(real, generated, taper)
            sifids = scorer.score(real, images) if scorer else [None] * len(indices)
            similarity = similarity_to_source(images, real)
            swds = swd_scorer(images)
            cohort.add(images)
            rows = []
            for k, index in enumerate(indices):
                unit = images[k:k + 1].cpu()
                if index < request.grid_size:
                    grid_units[index] = unit
                physical, clip_window = output_image(
                    generated[k:k + 1].cpu(), mapping, canvas,
                    None if taper is None else taper.cpu())
                write_scan(physical, meta, names[index], keep_identifiers=request.keep_identifiers,
                           patient_id=subject, series=series.instance(index + 1),
                           clip_window=clip_window)
                rows.append(ManifestRow(
                    image=str(names[index].resolve()), label=label, split=split,
                    synthetic=True, source_image=meta.source_path, subject_id=subject,
                    modality=str(extra.get("modality_preset", "")), method="random",
                    model=relative_to_manifest(Path(request.run_dir).resolve(), manifest),
                    start_scale=start,
                    seed=request.seed, sifid=sifids[k],
                    sifid_variant=scorer.variant if scorer else "", diversity=None,
                    similarity_to_source=similarity[k], height=physical.shape[0],
                    width=physical.shape[1], extra={"sample_index": index, "patch_swd": swds[k],
                                                 "intensity_window": window}))
                result.written.append(names[index])
            append_rows(manifest, rows, on_existing="replace")
            bar.advance(task, len(indices))

    for index in sorted(done):  # samples of an earlier, interrupted run: read back
        unit = read_unit(names[index], mapping, shapes[0], region_of_run(extra))
        cohort.add(unit)
        if index < request.grid_size:
            grid_units[index] = unit
    cohort_diversity = cohort.value(real) if request.n >= 2 else None
    listed = [relative_to_manifest(p, manifest) for p in names.values()]
    set_column(manifest, listed, "diversity", cohort_diversity)
    # the training image first, then the first samples, four or more to a row
    sheet = [real.cpu(), *(grid_units[i] for i in sorted(grid_units))]
    save_sample_sheet(out / GRID_FILE, sheet, columns=max(4, int(np.ceil(len(sheet) ** 0.5))))
    result.summary = _write_summary(out, manifest, listed, request, start, cohort_diversity,
                                    scorer.variant if scorer else None, result.warnings)
    return result


def inherited_columns(request: AugmentRequest, cohort: dict[str, Any],
                      meta: ScanMetadata) -> tuple[str, str, str]:
    """``(label, split, subject)`` of the samples: the run's, where it has them. A sample is
    its source patient's, in its source's split and class: an option that names another
    value than the run's is refused (that would leak or mislabel it); one that fills a value
    the run left empty is taken."""
    run_values = {"label": cohort.get("label") or "", "split": cohort.get("split") or "",
                  "subject_id": cohort.get("subject_id") or ""}
    asked = {"label": request.label, "split": request.split, "subject_id": request.subject_id}
    for name, value in asked.items():
        if value is not None and run_values[name] and value != run_values[name]:
            option = f"--{name.replace('_', '-')}"
            harm = "leak it" if name == "split" else "mislabel them"
            raise ConfigError(f"the run's scan has {name} '{run_values[name]}': its samples "
                              f"inherit it, so {option} '{value}' is refused (that would "
                              f"{harm})")
    label = request.label if request.label is not None else run_values["label"]
    split = request.split if request.split is not None else run_values["split"]
    subject = (request.subject_id or run_values["subject_id"]
               or f"src-{meta.sha256[:12]}")
    return label, split, subject


def _output_scale(request: AugmentRequest, finest: tuple[int, int]) -> tuple[float, float]:
    """(scale_h, scale_w) from --height/--width or --scale-h/--scale-w (default 1, 1)."""
    if request.height is not None and request.scale_h is not None or \
            request.width is not None and request.scale_w is not None:
        raise ConfigError("give either --height/--width or --scale-h/--scale-w, not both")
    for name in ("height", "width", "scale_h", "scale_w"):
        value = getattr(request, name)
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {value}")
    scale_h = request.height / finest[0] if request.height else request.scale_h or 1.0
    scale_w = request.width / finest[1] if request.width else request.scale_w or 1.0
    height, width = round(finest[0] * scale_h), round(finest[1] * scale_w)
    if max(height, width) > MAX_OUTPUT_SIDE:
        raise ConfigError(f"output size {height}x{width} px is over the {MAX_OUTPUT_SIDE} px "
                          "a side this command writes")
    return scale_h, scale_w


def _sample_indices(pyramid: TrainedPyramid, indices: list[int], start: int, seed: int,
                    shapes: list[tuple[int, int]]) -> torch.Tensor:
    """Samples with the given (not necessarily contiguous) indices, in one batch."""
    runs: list[torch.Tensor] = []
    first = 0
    while first < len(indices):
        last = first
        while last + 1 < len(indices) and indices[last + 1] == indices[last] + 1:
            last += 1
        runs.append(sample(pyramid, last - first + 1, start, seed, first_index=indices[first],
                           batch_size=last - first + 1, shapes=shapes))
        first = last + 1
    return torch.cat(runs)


def read_unit(path: Path, mapping: IntensityMapping, shape: tuple[int, int],
              region: tuple[Region, tuple[int, int]] | None = None) -> torch.Tensor:
    """A written sample read back and mapped to [-1, 1] (for the cohort's diversity and
    sheets). ``shape`` is the sample's size in run pixels; for a region run, ``region`` is
    :func:`medsingan.roi.region_of_run`: the file holds the full-size source, whose region is
    cut out and scaled to ``shape``."""
    image = read_scan(path).image
    if region is not None:
        image = region_in_run_pixels(image, *region, tuple(shape), path)
    if image.shape != tuple(shape):
        raise RunDirError(f"{path} reads back as {image.shape[0]}x{image.shape[1]} px, not the "
                          f"cohort's {shape[0]}x{shape[1]}: it was changed since it was written; "
                          "remove it (it is regenerated) or use --overwrite")
    return torch.from_numpy(mapping.to_unit(image))[None, None]


def _write_summary(out: Path, manifest: Path, listed: list[str], request: AugmentRequest,
                   start: int, cohort_diversity: float | None,
                   variant: str | None, warnings: list[str]) -> dict[str, Any]:
    """``summary.json``: the cohort's settings and mean scores."""
    frame = read_manifest(manifest)
    ours = frame[frame["image"].astype(str).isin(listed)]
    summary = {
        "run_dir": str(request.run_dir), "n": request.n, "start_scale": start,
        "seed": request.seed, "diversity": cohort_diversity, "sifid_variant": variant,
        "sifid_mean": None if ours["sifid"].isna().all() else float(ours["sifid"].mean()),
        "similarity_mean": float(ours["similarity_to_source"].mean()),
        "patch_swd_mean": float(ours["patch_swd"].mean()) if "patch_swd" in ours else None,
        "manifest": str(manifest),
        "warnings": warnings,
    }
    with atomic_path(out / SUMMARY_FILE) as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    return summary
