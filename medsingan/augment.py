"""Trained run (or scan) -> an augmented cohort: samples in the source's format, scores,
manifest rows.

The composition behind ``medsingan augment``. Two engines draw the samples: ``singan``, a run
written by ``medsingan train``, and ``patch``, the training-free patch engine
(:mod:`medsingan.engines.patch`) run on the scan file itself, with the same preprocessing
(modality preset, intensity mapping, pyramid) as training. Sample ``i`` of seed ``s`` depends
only on ``(s, i)``, so an interrupted cohort is completed by generating exactly the missing
indices, and a cohort is the same whatever the batch size. Every sample gets a copy score
(:mod:`medsingan.metrics.copy`); the summary lists those over ``max_copy``.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress

from medsingan.devices import resolve_device
from medsingan.engines.patch import PatchEngineConfig, PatchSampler, scan_pyramid
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
from medsingan.masks import PairOutputs, check_image_only, split_pair
from medsingan.metrics.copy import DEFAULT_PATCH as COPY_PATCH
from medsingan.metrics.copy import CopyScorer
from medsingan.metrics.diversity import CohortDiversity, similarity_to_source
from medsingan.metrics.patch_swd import PatchSWDScorer
from medsingan.metrics.sifid import DEFAULT_VARIANT, SifidScorer, find_inception_weights
from medsingan.model.container import TrainedPyramid
from medsingan.model.noise import check_seed
from medsingan.model.previews import save_sample_sheet
from medsingan.preprocess import IntensityMapping, prepare_scan
from medsingan.presets import resolve_preset
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
from medsingan.runs import default_run_dir, describe_source
from medsingan.train import load_run

FORMAT_SUFFIX = {"dicom": ".dcm", "nifti": ".nii.gz", "png": ".png", "tiff": ".png",
                 "jpeg": ".png", "dcm": ".dcm", "nii": ".nii.gz", "mha": ".mha",
                 "nrrd": ".nrrd"}
SETTINGS_FILE = "augment.json"
GRID_FILE = "grid.png"
SUMMARY_FILE = "summary.json"
ENGINES = ("singan", "patch")
# A sample of which more than this fraction of the informative patches are near-verbatim
# copies of the scan's is listed in the summary.
DEFAULT_MAX_COPY = 0.5
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
    """What to generate and where; ``None`` means "from the run" (patch engine: "from the
    scan and its modality preset").

    ``engine`` ``singan`` samples the trained run ``run_dir``; ``patch`` runs the patch engine
    on ``scan`` (read with ``frame``, ``slice_index``, ``slice_axis``, ``volume`` and mapped
    with the ``modality`` preset and CT ``window``, exactly as ``train`` would; ``max_size``
    overrides the preset's longer side).
    """

    run_dir: Path | None
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
    engine: str = "singan"
    scan: Path | None = None
    modality: str = "auto"
    window: str | None = None
    frame: int | None = None
    slice_index: int | None = None
    slice_axis: int | None = None
    volume: int | None = None
    max_size: int | None = None
    max_copy: float = DEFAULT_MAX_COPY
    # check every setting and the output folder and manifest, then return without writing
    dry_run: bool = False


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


def load_complete_run(run_dir: Path, pairs: bool = False
                      ) -> tuple[TrainedPyramid, dict[str, Any]]:
    """A fully trained run written by ``medsingan train`` and its source description (the
    ``extra`` of ``config.json``); RunDirError otherwise, ConfigError for an image+mask run
    unless ``pairs`` (only augment draws those)."""
    pyramid = load_run(run_dir)
    if not pyramid.is_complete:
        raise RunDirError(f"{run_dir} is not fully trained (finest trained scale "
                          f"{pyramid.finest_trained}); finish it with train --resume")
    extra = pyramid.metadata.get("extra") or {}
    if "source" not in extra or "intensity_mapping" not in extra:
        raise RunDirError(f"{run_dir}/config.json lacks the source description; "
                          "was it written by medsingan train?")
    if not pairs:
        check_image_only(extra, run_dir)
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


def run_engine(pyramid: TrainedPyramid) -> str:
    """The ``engine`` column of a run's samples: ``singan``, or ``singan-<loss>`` for a run
    whose training config names another loss than WGAN-GP."""
    loss = str((pyramid.metadata.get("train") or {}).get("loss") or "wgan-gp")
    return "singan" if loss == "wgan-gp" else f"singan-{loss}"


class SampleSource(ABC):
    """What augment draws samples from: its name, engine, source description (``extra``,
    as a run's ``config.json`` keeps it), training image and pyramid geometry, and the
    settings that identify it in a cohort folder's ``augment.json``."""

    name: str
    engine: str
    extra: dict[str, Any]
    identity: dict[str, Any]
    default_out: Path
    model: Path | None  # the manifest's model column (a run directory), None without a run

    @property
    @abstractmethod
    def real(self) -> torch.Tensor:
        """The training image ``(1, C, h, w)`` in [-1, 1] (the finest scale)."""

    @property
    @abstractmethod
    def shapes(self) -> list[tuple[int, int]]:
        """The pyramid's sizes, finest first."""

    @abstractmethod
    def output_shapes(self, scale_h: float, scale_w: float) -> list[tuple[int, int]]:
        """Every scale's size for an output stretched by ``scale_h`` x ``scale_w``."""

    @abstractmethod
    def meta(self, keep_identifiers: bool) -> ScanMetadata:
        """The source's metadata, ready for ``write_scan``."""

    @abstractmethod
    def batch_size(self, output: tuple[int, int]) -> int:
        """Samples drawn at once for outputs of ``output`` (rows, columns)."""

    @abstractmethod
    def to(self, device: torch.device) -> None:
        """Move what the samples are drawn from to ``device``."""

    @abstractmethod
    def draw(self, indices: list[int], start: int, seed: int,
             shapes: list[tuple[int, int]]) -> torch.Tensor:
        """Samples number ``indices`` of ``seed``, noise from scale ``start``, at ``shapes``."""

    @property
    def coarsest(self) -> int:
        return len(self.shapes) - 1


class RunSource(SampleSource):
    """A complete run written by ``medsingan train`` (engine ``singan``)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.pyramid, self.extra = load_complete_run(self.run_dir, pairs=True)
        self.name = self.run_dir.resolve().name
        self.engine = run_engine(self.pyramid)
        self.identity = {"run_sha": sha256_of(self.run_dir / "weights.safetensors")}
        self.default_out = self.run_dir / "samples"
        self.model = self.run_dir.resolve()

    @property
    def real(self) -> torch.Tensor:
        return self.pyramid.reals[0]

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return [tuple(shape) for shape in self.pyramid.shapes]

    def output_shapes(self, scale_h: float, scale_w: float) -> list[tuple[int, int]]:
        return scaled_shapes(self.pyramid, scale_h, scale_w)

    def meta(self, keep_identifiers: bool) -> ScanMetadata:
        return source_meta(self.extra, keep_identifiers)

    def batch_size(self, output: tuple[int, int]) -> int:
        return default_batch_size(self.pyramid, output)

    def to(self, device: torch.device) -> None:
        self.pyramid.to(device)

    def draw(self, indices: list[int], start: int, seed: int,
             shapes: list[tuple[int, int]]) -> torch.Tensor:
        return _sample_indices(self.pyramid, indices, start, seed, shapes)


class ScanSource(SampleSource):
    """A scan file for the patch engine: read, mapped with its modality preset and built into
    the pyramid training would build (the preset's ``min_size`` and ``max_size``, or
    ``max_size``); ``label``,
    ``split`` and ``subject_id`` are the cohort facts its samples inherit (default subject: a
    pseudonym from the file's hash)."""

    def __init__(self, scan_path: Path, *, modality: str = "auto", window: str | None = None,
                 frame: int | None = None, slice_index: int | None = None,
                 slice_axis: int | None = None, volume: int | None = None,
                 max_size: int | None = None, label: str = "", split: str = "",
                 subject_id: str | None = None) -> None:
        scan = read_scan(scan_path, frame=frame, slice_index=slice_index,
                         slice_axis=slice_axis, volume=volume)
        preset = resolve_preset(modality, scan.meta.modality)
        geometry = {key: preset.train[key] for key in ("min_size", "max_size")
                    if key in preset.train}
        if max_size is not None:
            geometry["max_size"] = max_size
        self.config = PatchEngineConfig(**geometry).validate()
        mapping, unit = prepare_scan(scan, preset, window=window,
                                     min_size=self.config.min_size)
        self.reals = scan_pyramid(torch.from_numpy(unit)[None, None], self.config)
        self.scan = scan
        self.extra = describe_source(scan, preset.name, mapping, label=label, split=split,
                                     subject_id=subject_id)
        self.name = f"{default_run_dir(Path(scan_path)).name}_patch"
        self.engine = "patch"
        self.identity = {"scan_sha": scan.meta.sha256, "engine": self.engine,
                         "engine_settings": self.config.to_dict(),
                         "modality_preset": preset.name,
                         "intensity_mapping": mapping.to_dict(),
                         "selection": [scan.meta.frame, scan.meta.slice_index,
                                       scan.meta.slice_axis, scan.meta.volume]}
        self.default_out = Path("samples") / self.name
        self.model = None
        self._samplers: dict[tuple[tuple[int, int], ...], PatchSampler] = {}

    @property
    def real(self) -> torch.Tensor:
        return self.reals[0]

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return [tuple(real.shape[-2:]) for real in self.reals]

    def output_shapes(self, scale_h: float, scale_w: float) -> list[tuple[int, int]]:
        return [(max(1, round(h * scale_h)), max(1, round(w * scale_w)))
                for h, w in self.shapes]

    def meta(self, keep_identifiers: bool) -> ScanMetadata:
        meta = ScanMetadata.from_dict(self.extra["source"])
        meta.dicom_header = (self.scan.meta.dicom_header if keep_identifiers
                             else self.extra["source_dicom_header"])
        return meta

    def batch_size(self, output: tuple[int, int]) -> int:
        # ~6 live copies of every output patch (queries, gathered keys, distances) in float32
        per_sample = output[0] * output[1] * self.config.patch_size ** 2 * 4 * 6
        return int(np.clip((1 << 30) // max(per_sample, 1), 1, 64))

    def to(self, device: torch.device) -> None:
        self.reals = [real.to(device) for real in self.reals]
        for sampler in self._samplers.values():
            sampler.to(device)

    def draw(self, indices: list[int], start: int, seed: int,
             shapes: list[tuple[int, int]]) -> torch.Tensor:
        key = tuple(tuple(shape) for shape in shapes)
        if key not in self._samplers:
            self._samplers[key] = PatchSampler(self.reals, self.config, shapes)
        return self._samplers[key].sample(indices, seed, start)


def open_source(request: AugmentRequest) -> SampleSource:
    """The run or scan ``request`` samples from, checked (RunDirError, ConfigError, or the
    reader's error for a scan that cannot be read)."""
    if request.engine not in ENGINES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, not "
                          f"'{request.engine}'")
    if request.engine == "singan":
        scan_options = {"--modality": None if request.modality == "auto" else request.modality,
                        "--window": request.window, "--frame": request.frame,
                        "--slice": request.slice_index, "--slice-axis": request.slice_axis,
                        "--volume": request.volume, "--max-size": request.max_size}
        given = [option for option, value in scan_options.items() if value is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} "
                              "to --engine patch (a run keeps its scan's reading)")
        if request.run_dir is None:
            raise ConfigError("--engine singan needs a run directory")
        return RunSource(request.run_dir)
    if request.scan is None:
        raise ConfigError("--engine patch needs the scan file itself")
    if Path(request.scan).is_dir() and (Path(request.scan) / "config.json").is_file():
        raise ConfigError(f"{request.scan} is a run directory: --engine patch samples the "
                          "scan file itself (or use --engine singan)")
    return ScanSource(request.scan, modality=request.modality, window=request.window,
                      frame=request.frame, slice_index=request.slice_index,
                      slice_axis=request.slice_axis, volume=request.volume,
                      max_size=request.max_size, label=request.label or "",
                      split=request.split or "", subject_id=request.subject_id)


def missing_source_warning(meta: ScanMetadata) -> list[str]:
    """A warning when the run's source is not where its ``config.json`` says (a run moved or
    copied without its scan): the rows' ``source_image`` then names a missing file, which
    ``manifest merge`` cannot match against the real manifest's splits."""
    if not meta.source_path or Path(meta.source_path).is_file():
        return []
    return [f"the run's source {meta.source_path} is missing (was the run moved without its "
            "scan?): the rows' source_image names a missing file, so the split check of "
            "manifest merge can only go by subject; move runs together with their scans"]


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
    """Generate ``request.n`` scored samples of a trained run, or of a scan with the patch
    engine (see module docstring)."""
    if request.n < 1:
        raise ConfigError(f"--n must be at least 1, got {request.n}")
    check_seed(request.seed)
    if request.batch_size is not None and request.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {request.batch_size}")
    if not 0.0 <= request.max_copy <= 1.0:
        raise ConfigError(f"--max-copy must be a fraction in [0, 1], got {request.max_copy}")
    device = resolve_device(request.device)
    # fail fast, before any work: the run or scan (a missing run is named before missing
    # SIFID weights), weights for SIFID, the output format
    source = open_source(request)
    weights = (find_inception_weights(request.inception_weights, request.sifid_variant)
               if request.sifid else None)
    scorer = (SifidScorer(weights, variant=request.sifid_variant, device=device)
              if weights is not None else None)
    extra = source.extra
    start = parse_scale(request.start_scale, source.coarsest)
    shapes = source.output_shapes(*_output_scale(request, source.shapes[0]))
    meta = source.meta(request.keep_identifiers)
    mapping = IntensityMapping.from_dict(extra["intensity_mapping"])
    # a region run's samples replace its region of the full-size source (read once here, so
    # a missing or changed source is refused before anything is written)
    canvas = RegionCanvas.of_run(extra, mapping, source.shapes[0])
    if canvas is not None and tuple(shapes[0]) != tuple(source.shapes[0]):
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

    out = Path(request.out or source.default_out)
    manifest = Path(request.manifest or Path("data_manifests") / f"{source.name}.csv")
    settings = {**source.identity,
                "start_scale": start, "seed": request.seed, "format": suffix,
                "size": list(shapes[0]), "label": label, "split": split,
                "subject_id": subject, "keep_identifiers": request.keep_identifiers,
                "sifid_variant": scorer.variant if scorer else None}
    _check_settings(out, settings, request.overwrite)
    check_appendable(manifest)
    if request.dry_run:
        return AugmentResult(out=out, manifest=manifest)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / SETTINGS_FILE) as tmp:
            tmp.write_text(json.dumps(settings, indent=2))
    except OSError as exc:
        raise ScanWriteError(f"cannot write to {out}: {exc.strerror or exc}") from exc

    names = {i: out / f"{source.name}_seed{request.seed}_{i:05d}{suffix}"
             for i in range(request.n)}
    pairs = PairOutputs.of_run(extra, source.real, meta)  # an image+mask run: its masks
    done = set() if request.overwrite else _done_indices(manifest, names)
    done = {i for i in done if pairs is None or pairs.has_mask(names[i])}
    todo = [i for i in range(request.n) if i not in done]
    source.to(device)
    real = split_pair(source.real)[0]  # a pair's image channel
    swd_scorer = PatchSWDScorer(real, shapes[0])
    # images under the copy score's patch side get none (an empty column)
    copy_scorer = CopyScorer(real) if min(*real.shape[-2:], *shapes[0]) >= COPY_PATCH else None
    model = "" if source.model is None else relative_to_manifest(source.model, manifest)
    # one DICOM study and series per cohort, the same when an interrupted cohort is completed
    series = DerivedSeries.for_key(json.dumps({"run": source.name, **settings},
                                              sort_keys=True))
    batch_size = request.batch_size or source.batch_size(shapes[0])
    result = AugmentResult(out=out, manifest=manifest, skipped=len(done),
                           warnings=source_warnings(meta) + missing_source_warning(meta))
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
            generated = source.draw(indices, start, request.seed, shapes).clamp(-1, 1)
            generated, masks = split_pair(generated)
            # a region run's sample is scored as it is written: blended into the region's
            # border by the taper
            images = generated if taper is None else blend(real, generated, taper)
            sifids = scorer.score(real, images) if scorer else [None] * len(indices)
            similarity = similarity_to_source(images, real)
            swds = swd_scorer(images)
            copies = copy_scorer(images) if copy_scorer else [None] * len(indices)
            cohort.add(images)
            rows = []
            for k, index in enumerate(indices):
                unit = images[k:k + 1].cpu()
                if pairs is not None:
                    unit = pairs.add(index, unit, masks[k:k + 1])
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
                    model=model, start_scale=start,
                    seed=request.seed, sifid=sifids[k],
                    sifid_variant=scorer.variant if scorer else "", diversity=None,
                    similarity_to_source=similarity[k], height=physical.shape[0],
                    width=physical.shape[1], extra={
                        "sample_index": index, "patch_swd": swds[k],
                        "intensity_window": window, "engine": source.engine,
                        "copy_score": copies[k] and copies[k].score,
                        "copy_region_px": copies[k] and copies[k].region_px,
                        # a region run's sample replaced this X,Y,W,H (source px) only
                        **({"region": str(canvas.region)} if canvas is not None else {}),
                        **(pairs.write(index, names[index]) if pairs is not None else {})}))
                result.written.append(names[index])
            append_rows(manifest, rows, on_existing="replace")
            bar.advance(task, len(indices))

    for index in sorted(done):  # samples of an earlier, interrupted run: read back
        unit = read_unit(names[index], mapping, shapes[0], region_of_run(extra))
        cohort.add(unit)
        if pairs is not None:
            unit = pairs.read_back(index, unit, names[index])
        if index < request.grid_size:
            grid_units[index] = unit
    cohort_diversity = cohort.value(real) if request.n >= 2 else None
    listed = [relative_to_manifest(p, manifest) for p in names.values()]
    set_column(manifest, listed, "diversity", cohort_diversity)
    # the training image first, then the first samples, four or more to a row
    sheet = [(real if pairs is None else pairs.real_pair).cpu(),
             *(grid_units[i] for i in sorted(grid_units))]
    save_sample_sheet(out / GRID_FILE, sheet, columns=max(4, int(np.ceil(len(sheet) ** 0.5))))
    result.summary = _write_summary(out, manifest, listed, request, source, start,
                                    cohort_diversity, scorer.variant if scorer else None,
                                    result.warnings)
    if pairs is not None:
        result.summary = pairs.add_summary(out / SUMMARY_FILE, result.summary)
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
                   source: SampleSource, start: int, cohort_diversity: float | None,
                   variant: str | None, warnings: list[str]) -> dict[str, Any]:
    """``summary.json``: the cohort's settings and mean scores, and the samples that copy
    more than ``request.max_copy`` of their patches from the source."""
    frame = read_manifest(manifest)
    ours = frame[frame["image"].astype(str).isin(listed)]
    copies = ours[["image", "copy_score", "copy_region_px"]].dropna() \
        if "copy_score" in ours else ours.iloc[:0]
    flagged = copies[copies["copy_score"] > request.max_copy]
    summary = {
        "engine": source.engine,
        **({"run_dir": str(request.run_dir)} if source.model is not None
           else {"scan": str(request.scan)}),
        "n": request.n, "start_scale": start,
        "seed": request.seed, "diversity": cohort_diversity, "sifid_variant": variant,
        "sifid_mean": None if ours["sifid"].isna().all() else float(ours["sifid"].mean()),
        "similarity_mean": float(ours["similarity_to_source"].mean()),
        "patch_swd_mean": float(ours["patch_swd"].mean()) if "patch_swd" in ours else None,
        "copy_score_mean": float(copies["copy_score"].mean()) if len(copies) else None,
        "copy_region_px_max": int(copies["copy_region_px"].max()) if len(copies) else None,
        "max_copy": request.max_copy,
        "over_max_copy": [{"image": str(row.image), "copy_score": float(row.copy_score),
                           "copy_region_px": int(row.copy_region_px)}
                          for row in flagged.itertuples()],
        "manifest": str(manifest),
        "warnings": warnings,
    }
    with atomic_path(out / SUMMARY_FILE) as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    return summary
