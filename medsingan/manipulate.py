"""The paper's manipulations (SinGAN Sec. 4): editing, harmonization, paint-to-image and
super-resolution, plus a seam score that measures an insertion without a human.

All images are ``(B, 1, h, w)`` tensors in [-1, 1] at the run's finest scale unless said
otherwise; scale 0 is the finest, ``N`` the coarsest.

* **edit / harmonize**: a naive composite (a lesion patch pasted into the training scan, or the
  user's own composite) is down-sampled and injected at a coarse scale ``S``: it stands in for the
  output of scale ``S + 1``, and the generators ``S .. 0`` re-synthesise it with fresh noise
  (variant ``k`` of seed ``s`` uses the sampling noise ``(s, k)``). The result is blended into the
  scan, ``out = (1 - m) * real + m * generated``, with ``m`` the mask dilated by a disk of radius
  ``r`` and blurred by a Gaussian of width ``sigma`` (paper: ``r`` 20 px for editing, 7 for
  harmonization, ``sigma`` 5, for ~250 px images; scaled down for smaller runs). The blur is cut at
  ``3 sigma``, so every pixel farther than ``r + ceil(3 sigma)`` from the mask equals the scan
  exactly (the blend weights are :mod:`medsingan.roi`'s).
* **paint**: a coarse drawing is injected at a coarse scale (default ``N-1``), no blending.
* **super-resolve**: the finest generator is applied repeatedly, each step up-sampling by
  ``factor ** (1 / steps)`` (about ``2 ** (1/3)``: 6 steps for x4) and adding noise of the finest
  noise amplitude.
* **region runs** (``train --roi``, :mod:`medsingan.roi`): ``--at``, the box columns of the
  manifest and a full-size composite and mask are in source pixels; every output is the
  full-size source with only the region changed (an edit blended by its mask, a painting
  replacing the region with the region taper); super-resolution is refused (its output is
  larger than the region it would replace).

The seam score of an image along a mask is the mean gradient magnitude on the mask's border
(the pixels on either side of it) divided by the mean gradient magnitude of the source scan;
the *seam excess* subtracts the source's own score on the same border, so an invisible seam has
an excess of 0. A result that re-synthesised the finding away has no seam either: its
*finding kept* (mean absolute change from the scan inside the mask, as a fraction of the naive
paste's) tells the two apart.

>>> from medsingan.manipulate import EditRequest, edit  # doctest: +SKIP
>>> result = edit(EditRequest(run_dir=Path("runs/hand"), lesion=Path("lesion.png"),
...                           at="20,14", n=4, label="fracture"))  # doctest: +SKIP
>>> result.seam  # doctest: +SKIP
{'naive': 2.9, 'source': 1.1, 'results': [1.3, 1.2, 1.4, 1.2], ...}
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from medsingan.augment import (
    FORMAT_SUFFIX,
    load_complete_run,
    missing_source_warning,
    parse_scale,
    run_engine,
    source_meta,
)
from medsingan.errors import ConfigError, ScanWriteError, UnsupportedScanError, warn_user
from medsingan.generate import sample_noise
from medsingan.io import DerivedSeries, Scan, read_scan, scan_format, write_scan
from medsingan.io.atomic import atomic_path
from medsingan.io.dicom import source_warnings
from medsingan.manifest import ManifestRow, append_rows, check_appendable, relative_to_manifest
from medsingan.metrics.diversity import similarity_to_source
from medsingan.metrics.sifid import DEFAULT_VARIANT
from medsingan.model.container import TrainedPyramid
from medsingan.model.noise import Stream, check_seed, draw_noise, seeded_generator
from medsingan.model.previews import save_sample_sheet
from medsingan.monitor import MonitorOptions, ScaleScorer, training_sifid
from medsingan.preprocess import IntensityMapping
from medsingan.pyramid import resize
from medsingan.roi import RegionCanvas, blend, blend_margin, blend_mask, output_image
from medsingan.sweep import (
    Criterion,
    ScaleOutcome,
    SweepResult,
    Tile,
    check_pick,
    check_sweep_folder,
    finish,
    is_sweep,
    mean,
)

# A composite or painting may differ this much (relative) in aspect ratio from the run's scan.
_ASPECT_TOLERANCE = 0.05
MAX_SUPER_RESOLUTION_FACTOR = 16.0
# The default injection scale keeps the finding at least this many px on its shorter side: the
# official examples inject an object of ~40 px at N-2 of a 250 px run, i.e. at ~5 px.
_MIN_FINDING_SIDE_AT_INJECTION = 5
# --pick best of an edit sweep: a scale whose outputs keep less of the pasted finding than this
# (finding_kept) re-synthesised it away and is not picked
MIN_FINDING_KEPT = 0.5
INTENSITIES = ("scan", "display")


# --- tensor level: composites, masks, injection, blending, seams ---------------------------

@dataclass
class Insertion:
    """A naive composite at the finest scale and the binary mask of what was changed.

    ``box`` is the mask's bounding box ``(x, y, w, h)`` in finest-scale pixels (column, row).
    """

    composite: torch.Tensor
    mask: torch.Tensor
    box: tuple[int, int, int, int]


def mask_box(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """Bounding box ``(x, y, w, h)`` of the non-zero pixels of a ``(1, 1, h, w)`` mask."""
    rows = torch.nonzero(mask[0, 0].any(dim=1)).flatten()
    cols = torch.nonzero(mask[0, 0].any(dim=0)).flatten()
    if len(rows) == 0:
        raise ConfigError("the mask is empty: mark the edited region with non-zero pixels")
    x, y = int(cols[0]), int(rows[0])
    return x, y, int(cols[-1]) - x + 1, int(rows[-1]) - y + 1


def paste_lesion(real: torch.Tensor, patch: torch.Tensor, at: tuple[int, int],
                 patch_mask: torch.Tensor | None = None) -> Insertion:
    """Paste ``patch`` (``(1, 1, ph, pw)``) with its top-left corner at column ``at[0]``, row
    ``at[1]`` of ``real``; where ``patch_mask`` is given only its non-zero pixels are pasted.

    Raises:
        ConfigError: the patch is larger than the scan or leaves it at ``at``; the mask has
            another size than the patch or is empty.
    """
    height, width = real.shape[-2:]
    patch_h, patch_w = patch.shape[-2:]
    x, y = at
    if patch_h > height or patch_w > width:
        raise ConfigError(f"the lesion patch ({patch_w} x {patch_h} px) is larger than the "
                          f"run's scan ({width} x {height} px at its finest scale)")
    if not (0 <= x <= width - patch_w and 0 <= y <= height - patch_h):
        raise ConfigError(f"--at {x},{y} puts the {patch_w} x {patch_h} px patch outside the "
                          f"{width} x {height} px scan: X must lie in 0..{width - patch_w}, "
                          f"Y in 0..{height - patch_h}")
    if patch_mask is None:
        patch_mask = torch.ones_like(patch)
    elif patch_mask.shape[-2:] != patch.shape[-2:]:
        raise ConfigError(f"--lesion-mask is {patch_mask.shape[-1]} x {patch_mask.shape[-2]} "
                          f"px but the patch is {patch_w} x {patch_h} px; they must match")
    mask = torch.zeros_like(real)
    mask[..., y:y + patch_h, x:x + patch_w] = patch_mask
    composite = real.clone()
    region = composite[..., y:y + patch_h, x:x + patch_w]
    composite[..., y:y + patch_h, x:x + patch_w] = torch.where(patch_mask > 0, patch, region)
    return Insertion(composite, mask, mask_box(mask))


def _check_aspect(shape: tuple[int, int], target: tuple[int, int], what: str) -> None:
    ratio, expected = shape[1] / shape[0], target[1] / target[0]
    if abs(ratio / expected - 1) > _ASPECT_TOLERANCE:
        raise ConfigError(f"{what} is {shape[1]} x {shape[0]} px, not the shape of the run's "
                          f"scan ({target[1]} x {target[0]} px): give it the scan's aspect ratio")


def composite_insertion(real: torch.Tensor, composite: torch.Tensor,
                        mask: torch.Tensor) -> Insertion:
    """The user's composite and mask (same size, the scan's aspect ratio) at the finest scale.

    The mask is resized with anti-aliasing and thresholded at one half.
    """
    if mask.shape[-2:] != composite.shape[-2:]:
        raise ConfigError(f"--mask is {mask.shape[-1]} x {mask.shape[-2]} px but the composite "
                          f"is {composite.shape[-1]} x {composite.shape[-2]} px; they must match")
    if not bool(mask.any()):
        raise ConfigError("the mask is empty: mark the edited region with non-zero pixels")
    shape = tuple(real.shape[-2:])
    _check_aspect(tuple(composite.shape[-2:]), shape, "the composite")
    small = (resize(mask.float(), shape, mode="bilinear") >= 0.5).float()
    if not bool(small.any()):
        raise ConfigError(f"the mask vanishes at the run's finest scale ({shape[1]} x {shape[0]}"
                          " px): mark a larger region")
    return Insertion(resize(composite, shape).clamp(-1, 1), small, mask_box(small))


@torch.no_grad()
def inject(pyramid: TrainedPyramid, image: torch.Tensor, scale: int, seed: int,
           indices: list[int]) -> torch.Tensor:
    """Run the generators ``scale .. 0`` on ``image`` (``(1, 1, h, w)``, any size of the scan's
    shape), which stands in for the output of scale ``scale + 1``; one variant per index, with
    the sampling noise of ``(seed, index)``. Returns ``(len(indices), 1, h0, w0)``."""
    coarser = pyramid.shapes[min(scale + 1, pyramid.coarsest)]
    previous = resize(image.to(pyramid.device), coarser).clamp(-1, 1)
    per_sample = [sample_noise(pyramid, scale, 0, seed, index) for index in indices]
    noises = [torch.cat(maps) for maps in zip(*per_sample, strict=True)]
    return pyramid.forward_scales(scale, 0, noises, previous.expand(len(indices), -1, -1, -1))


def super_resolution_steps(factor: float) -> int:
    """Passes through the finest generator: ``round(log(factor) / log(2 ** (1/3)))``, >= 1."""
    return max(1, round(3 * math.log2(factor)))


@torch.no_grad()
def super_resolution(pyramid: TrainedPyramid, factor: float, seed: int,
                     indices: list[int]) -> torch.Tensor:
    """The training scan up-sampled ``factor`` times through the finest generator, one variant
    per index (noise ``(seed, index)``); ``(len(indices), 1, round(h0 * f), round(w0 * f))``."""
    generator, amp = pyramid.generators[0], pyramid.noise_amps[0]
    height, width = pyramid.shapes[0]
    steps = super_resolution_steps(factor)
    randomness = [seeded_generator(seed, Stream.SUPER_RESOLUTION, i) for i in indices]
    x = pyramid.reals[0].expand(len(indices), -1, -1, -1)
    for step in range(1, steps + 1):
        zoom = factor ** (step / steps)
        shape = (round(height * zoom), round(width * zoom))
        up = resize(x, shape)
        noise = torch.cat([draw_noise((1, x.shape[1], *shape), g, pyramid.device)
                           for g in randomness])
        x = generator(amp * noise + up, up)
    return x


def _gradient_magnitude(image: torch.Tensor) -> torch.Tensor:
    """Central-difference gradient magnitude of ``(1, 1, h, w)`` (edges replicated)."""
    padded = F.pad(image, [1, 1, 1, 1], mode="replicate")
    dx = (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]) / 2
    dy = (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]) / 2
    return torch.sqrt(dx**2 + dy**2)


def mask_border(mask: torch.Tensor) -> torch.Tensor:
    """The pixels on either side of the mask's edge (8-neighbourhood), ``(1, 1, h, w)`` bool."""
    inside = (mask > 0).float()
    grown = F.max_pool2d(inside, 3, stride=1, padding=1)
    shrunk = -F.max_pool2d(-inside, 3, stride=1, padding=1)
    return (grown - shrunk) > 0


def seam_score(image: torch.Tensor, mask: torch.Tensor, source: torch.Tensor) -> float:
    """Mean gradient magnitude of ``image`` on ``mask``'s border, divided by the mean gradient
    magnitude of the whole ``source`` scan (all ``(1, 1, h, w)``). A paste whose edge is no
    sharper than the scan's typical detail scores about the source's own score there."""
    border = mask_border(mask)
    if not bool(border.any()):
        raise ConfigError("the mask has no border inside the image (it covers all of it)")
    typical = float(_gradient_magnitude(source).mean())
    return float(_gradient_magnitude(image)[border].mean()) / max(typical, 1e-8)


def seam_report(real: torch.Tensor, naive: torch.Tensor, results: torch.Tensor,
                mask: torch.Tensor) -> dict[str, Any]:
    """Seam scores of the source, the naive composite and each result, and their excesses over
    the source's own score on the same border (``result_excess <= naive_excess / 2`` is the
    acceptance bar of an insertion)."""
    base = seam_score(real, mask, real)
    naive_score = seam_score(naive, mask, real)
    scores = [seam_score(r[None], mask, real) for r in results]
    return {"source": base, "naive": naive_score, "results": scores,
            "naive_excess": naive_score - base,
            "result_excess": [score - base for score in scores]}


def finding_kept(real: torch.Tensor, naive: torch.Tensor, results: torch.Tensor,
                 mask: torch.Tensor) -> list[float]:
    """How much of the pasted finding each result keeps: its mean absolute difference from
    the scan inside the mask, as a fraction of the naive paste's (1: as pasted, or changed as
    much; 0: the scan again, the finding re-synthesised away)."""
    inside = mask[0, 0] > 0
    pasted = float((naive - real)[0, 0][inside].abs().mean())
    return [float((r[0] - real[0, 0])[inside].abs().mean()) / max(pasted, 1e-8)
            for r in results]


def default_inject_scale(pyramid: TrainedPyramid, box: tuple[int, int, int, int]) -> int:
    """The coarsest scale at which the edited box's shorter side still spans 5 px, kept within
    ``1 .. N-1``: coarse enough that the finer scales re-synthesise the seam, fine enough that
    the finding is reshaped rather than erased."""
    side = min(box[2], box[3])
    finest = min(pyramid.shapes[0])
    fitting = [s for s in range(pyramid.num_scales)
               if side * min(pyramid.shapes[s]) / finest >= _MIN_FINDING_SIDE_AT_INJECTION]
    scale = max(fitting, default=0)
    return int(np.clip(scale, min(1, pyramid.coarsest), max(pyramid.coarsest - 1, 0)))


# --- file level: requests, run loading, outputs, manifest rows -----------------------------

@dataclass
class ManipulationRequest:
    """Where the results go and what they inherit; ``None`` means "from the run"."""

    run_dir: Path
    n: int = 1
    seed: int = 0
    out: Path | None = None
    manifest: Path | None = None
    label: str | None = None
    intensity: str = "scan"
    overwrite: bool = False
    keep_identifiers: bool = False
    # SIFID to the run's scan is scored when the variant's weights are found (patch SWD always)
    inception_weights: Path | None = None
    sifid_variant: str = DEFAULT_VARIANT
    # "best" with inject_scale "all": keep only the best-scoring scale's outputs
    pick: str | None = None


@dataclass
class EditRequest(ManipulationRequest):
    """``lesion`` + ``at`` (+ ``lesion_mask``), or ``composite`` + ``mask``."""

    lesion: Path | None = None
    at: str | tuple[int, int] | None = None
    lesion_mask: Path | None = None
    composite: Path | None = None
    mask: Path | None = None
    inject_scale: str | int | None = None


@dataclass
class PaintRequest(ManipulationRequest):
    paint: Path | None = None
    inject_scale: str | int = "N-1"


@dataclass
class SuperResolveRequest(ManipulationRequest):
    factor: float = 4.0


@dataclass
class ManipulationResult:
    out: Path
    manifest: Path
    written: list[Path] = field(default_factory=list)
    mask: Path | None = None
    grid: Path | None = None
    box: tuple[int, int, int, int] | None = None
    inject_scale: int | None = None
    seam: dict[str, Any] | None = None
    images: torch.Tensor | None = None
    region: str | None = None
    # patch SWD and SIFID of each output to the run's scan (ScaleScorer's dict), when scored
    scores: dict[str, Any] | None = None


@dataclass
class _Run:
    """A loaded run and what its outputs inherit; ``canvas`` is a region run's full-size
    source (``None`` for a whole-scan run)."""

    run_dir: Path
    pyramid: TrainedPyramid
    extra: dict[str, Any]
    mapping: IntensityMapping
    label: str
    split: str
    subject: str
    suffix: str
    scorer: ScaleScorer
    canvas: RegionCanvas | None = None

    @property
    def real(self) -> torch.Tensor:
        return self.pyramid.reals[0]


def _open_run(request: ManipulationRequest) -> _Run:
    if request.n < 1:
        raise ConfigError(f"--n must be at least 1, got {request.n}")
    check_seed(request.seed)
    if request.intensity not in INTENSITIES:
        raise ConfigError(f"--intensity must be scan or display, not '{request.intensity}'")
    pyramid, extra = load_complete_run(request.run_dir)
    options = MonitorOptions(sifid_variant=request.sifid_variant,
                             inception_weights=request.inception_weights).validate()
    scorer = ScaleScorer(training_sifid(options, pyramid.device))
    meta = source_meta(extra, request.keep_identifiers)
    cohort = dict(extra.get("cohort") or {})
    label = request.label if request.label is not None else cohort.get("label", "")
    mapping = IntensityMapping.from_dict(extra["intensity_mapping"])
    canvas = RegionCanvas.of_run(extra, mapping, pyramid.shapes[0])
    note = canvas.resize_note() if canvas is not None else None
    warn_user([note] if note else [])
    return _Run(run_dir=Path(request.run_dir), pyramid=pyramid, extra=extra, mapping=mapping,
                label=label, split=cohort.get("split", ""),
                subject=cohort.get("subject_id") or f"src-{meta.sha256[:12]}",
                suffix=FORMAT_SUFFIX[meta.format], scorer=scorer, canvas=canvas)


def _read_unit(path: Path, run: _Run, intensity: str, what: str) -> torch.Tensor:
    """A file as ``(1, 1, h, w)`` in [-1, 1]: in the scan's units through the run's mapping, or
    as 8-bit display grey (0 = -1, 255 = 1)."""
    scan: Scan = read_scan(path)
    if intensity == "display":
        unit = np.clip(scan.image / 127.5 - 1.0, -1.0, 1.0).astype(np.float32)
    else:
        low, high = float(scan.image.min()), float(scan.image.max())
        if high < run.mapping.low or low > run.mapping.high:
            raise ConfigError(f"{what} {path.name} has values {low:g}..{high:g}, outside the "
                              f"run's range {run.mapping.low:g}..{run.mapping.high:g}: give it "
                              "in the scan's units, or use --intensity display for 8-bit grey")
        unit = run.mapping.to_unit(scan.image)
    return torch.from_numpy(unit)[None, None]


def _read_mask(path: Path) -> torch.Tensor:
    """Non-zero (above half the maximum) pixels of a mask file, ``(1, 1, h, w)`` of 0/1."""
    try:
        image = read_scan(path).image
    except UnsupportedScanError:
        if scan_format(path) not in ("png", "tiff"):
            raise
        with Image.open(path) as handle:  # 1-bit: fine for a mask, not for a scan
            if handle.mode != "1":
                raise
            image = np.asarray(handle.convert("L"), dtype=np.float32)
    top = float(image.max())
    if top <= 0:
        raise ConfigError(f"the mask {path.name} is empty: mark the edited region with "
                          "non-zero pixels")
    return torch.from_numpy((image > top / 2).astype(np.float32))[None, None]


def _parse_point(at: str | tuple[int, int]) -> tuple[int, int]:
    if isinstance(at, tuple):
        return at
    parts = at.replace(" ", "").split(",")
    if len(parts) != 2 or not all(re.fullmatch("-?[0-9]+", p) for p in parts):
        raise ConfigError(f"--at must be X,Y (column,row in px of the run's scan), not '{at}'")
    return int(parts[0]), int(parts[1])


def _lesion_in_region(canvas: RegionCanvas, patch: torch.Tensor,
                      patch_mask: torch.Tensor | None, at: tuple[int, int]
                      ) -> tuple[torch.Tensor, torch.Tensor | None, tuple[int, int]]:
    """A patch (source pixels) with its top-left corner at source pixel ``at`` of a region
    run, as patch, mask and corner in the run's pixels."""
    region = canvas.region
    height, width = patch.shape[-2:]
    if width > region.w or height > region.h:
        raise ConfigError(f"the lesion patch ({width} x {height} px) is larger than the run's "
                          f"region ({region.w} x {region.h} px)")
    x, y = at
    last_x, last_y = region.x + region.w - width, region.y + region.h - height
    if not (region.x <= x <= last_x and region.y <= y <= last_y):
        raise ConfigError(f"--at {x},{y} puts the {width} x {height} px patch outside the "
                          f"run's region {region} (X,Y,W,H in source px): X must lie in "
                          f"{region.x}..{last_x}, Y in {region.y}..{last_y}")
    if patch_mask is not None and patch_mask.shape == patch.shape:
        patch_mask = (canvas.to_run(patch_mask, "bilinear") >= 0.5).float()
    return canvas.to_run(patch).clamp(-1, 1), patch_mask, canvas.point_to_run(x, y)


def _composite_in_region(canvas: RegionCanvas, composite: torch.Tensor,
                         mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A region run's composite and mask: of the full source's size (the region is cut out
    of them; the mask must lie inside it), or of the region's size (kept)."""
    region, shape = canvas.region, tuple(composite.shape[-2:])
    if shape == canvas.source.shape and tuple(mask.shape[-2:]) == shape:
        outside = mask.clone()
        outside[(..., *region.slices)] = 0
        if bool(outside.any()):
            raise ConfigError(f"--mask marks pixels outside the run's region {region} (X,Y,W,H "
                              "in source px): a region run changes its region only")
        return canvas.crop(composite), canvas.crop(mask)
    if shape not in (canvas.source.shape, region.shape):
        rows, columns = canvas.source.shape
        raise ConfigError(f"a region run's --composite is the full scan ({columns} x {rows} "
                          f"px) or its region ({region.w} x {region.h} px), not {shape[1]} x "
                          f"{shape[0]} px")
    return composite, mask


def _insertion(request: EditRequest, run: _Run) -> Insertion:
    """The naive composite of an edit request (either interface), validated."""
    by_lesion = request.lesion is not None
    if by_lesion == (request.composite is not None):
        raise ConfigError("give either --lesion PATCH --at X,Y or --composite FILE --mask MASK")
    if by_lesion:
        if request.at is None:
            raise ConfigError("--lesion needs --at X,Y (where its top-left corner goes)")
        if request.mask is not None:
            raise ConfigError("--mask goes with --composite; a lesion's mask is --lesion-mask")
        patch = _read_unit(request.lesion, run, request.intensity, "the lesion patch")
        patch_mask = None if request.lesion_mask is None else _read_mask(request.lesion_mask)
        at = _parse_point(request.at)
        if run.canvas is not None:
            patch, patch_mask, at = _lesion_in_region(run.canvas, patch, patch_mask, at)
        return paste_lesion(run.real, patch, at, patch_mask)
    if request.mask is None:
        raise ConfigError("--composite needs --mask MASK (non-zero where the scan was edited)")
    if request.at is not None or request.lesion_mask is not None:
        raise ConfigError("--at and --lesion-mask go with --lesion, not --composite")
    composite = _read_unit(request.composite, run, request.intensity, "the composite")
    mask = _read_mask(request.mask)
    if run.canvas is not None:
        composite, mask = _composite_in_region(run.canvas, composite, mask)
    return composite_insertion(run.real, composite, mask)


def _targets(request: ManipulationRequest, run: _Run, method: str,
             with_mask: bool) -> tuple[Path, Path, list[Path], Path | None]:
    """Output folder, manifest, file names; refuses to replace files without ``overwrite``."""
    run_name = run.run_dir.resolve().name
    out = Path(request.out or run.run_dir / method)
    manifest = Path(request.manifest or Path("data_manifests") / f"{run_name}.csv")
    stem = f"{run_name}_{method}_seed{request.seed}"
    names = [out / f"{stem}_{k:05d}{run.suffix}" for k in range(request.n)]
    mask = out / f"{stem}_mask.png" if with_mask else None
    existing = [p for p in [*names, mask] if p is not None and p.exists()]
    if existing and not request.overwrite:
        raise ConfigError(f"{existing[0]} already exists; use another --out, another --seed "
                          "or --overwrite")
    check_appendable(manifest)
    return out, manifest, names, mask


def _write(request: ManipulationRequest, run: _Run, method: str, images: torch.Tensor,
           start_scale: int | None, sheet: list[torch.Tensor], mask: torch.Tensor | None = None,
           extra: dict[str, Any] | None = None,
           region_blend: tuple[torch.Tensor, torch.Tensor] | None = None) -> ManipulationResult:
    """Write the images in the source's format, the mask PNG, the contact sheet, and manifest
    rows (everything is checked before the first file is written).

    A region run writes the full-size source with its region composited: from
    ``region_blend = (generated, weight)`` (an edit's re-synthesised images and their blend
    weight), else from the images with the region taper; its mask PNG is full-size too.
    """
    out, manifest, names, mask_path = _targets(request, run, method, mask is not None)
    meta = source_meta(run.extra, request.keep_identifiers)
    warn_user(source_warnings(meta) + missing_source_warning(meta))
    images = images.detach().cpu().clamp(-1, 1)  # as written, so scored as written
    outputs, weight = (images, None) if run.canvas is None or region_blend is None \
        else region_blend
    same_size = tuple(images.shape[-2:]) == run.pyramid.shapes[0]
    similarity = (similarity_to_source(images, run.real.cpu()) if same_size
                  else [None] * len(images))
    scores = run.scorer(run.real.cpu(), images) if same_size else None
    sifids = scores["sifid"] if scores and scores["sifid"] else [None] * len(images)
    variant = scores["sifid_variant"] if scores and scores["sifid"] else ""
    extra = dict(extra or {})
    if scores is not None:
        extra["patch_swd"] = scores["patch_swd"]
    written: list[Path] = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        if mask_path is not None and mask is not None:
            inside = (mask[0, 0].cpu().numpy() > 0 if run.canvas is None
                      else run.canvas.full_mask(mask))
            pixels = inside.astype(np.uint8) * 255
            with atomic_path(mask_path) as tmp:
                Image.fromarray(pixels).save(tmp, format="PNG")
            written.append(mask_path)
            extra["mask"] = relative_to_manifest(mask_path.resolve(), manifest)
        rows = []
        series = DerivedSeries.for_key()  # the variants of one command: one series
        for k, path in enumerate(names):
            physical, clip_window = output_image(outputs[k:k + 1], run.mapping, run.canvas,
                                                 weight)
            write_scan(physical, meta, path, keep_identifiers=request.keep_identifiers,
                       patient_id=run.subject, series=series.instance(k + 1),
                       clip_window=clip_window)
            written.append(path)
            rows.append(ManifestRow(
                image=str(path.resolve()), label=run.label, split=run.split, synthetic=True,
                source_image=meta.source_path, subject_id=run.subject,
                modality=str(run.extra.get("modality_preset", "")), method=method,
                model=relative_to_manifest(run.run_dir.resolve(), manifest),
                start_scale=start_scale, seed=request.seed, sifid=sifids[k],
                sifid_variant=variant, similarity_to_source=similarity[k],
                height=physical.shape[0], width=physical.shape[1],
                extra={"sample_index": k, **{key: (v[k] if isinstance(v, list) else v)
                                             for key, v in extra.items()},
                       "intensity_window": run.mapping.interval(meta.units),
                       "engine": run_engine(run.pyramid)}))
        append_rows(manifest, rows, on_existing="replace")
    except BaseException as exc:
        for path in written:  # no output without its manifest row
            path.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise ScanWriteError(f"cannot write to {out}: {exc.strerror or exc}") from exc
        raise
    grid = out / f"{method}_grid.png"
    save_sample_sheet(grid, [s.detach().cpu() for s in sheet], columns=len(sheet))
    return ManipulationResult(out=out, manifest=manifest, written=names, mask=mask_path,
                              grid=grid, inject_scale=start_scale, images=images,
                              region=None if run.canvas is None else str(run.canvas.region),
                              scores=scores)


def _inject_scale(text: str | int, pyramid: TrainedPyramid) -> int:
    """``--inject-scale`` in 0..N-1: the coarsest generator makes images from noise alone (it
    never saw an input image), so nothing can be injected there (as in the official code)."""
    scale = parse_scale(text, pyramid.coarsest, "--inject-scale")
    if scale == pyramid.coarsest and pyramid.coarsest > 0:
        raise ConfigError(f"--inject-scale {text} is the coarsest scale, which generates from "
                          "noise alone; inject at N-1 or finer")
    return scale


def _edit_at(request: EditRequest, run: _Run, insertion: Insertion, mode: str,
             scale: int) -> ManipulationResult:
    """One edit or harmonization at injection scale ``scale`` (the single-scale path)."""
    pyramid = run.pyramid
    weight = blend_mask(insertion.mask.to(pyramid.device), mode)
    if run.canvas is not None:
        run.canvas.check_within(weight, blend_margin(pyramid.shapes[0], mode))
    _targets(request, run, mode, with_mask=True)  # fail before any work
    indices = list(range(request.n))
    generated = inject(pyramid, insertion.composite, scale, request.seed, indices)
    # clamped as written, so the seam scores describe the files
    results = blend(run.real, generated, weight).clamp(-1, 1)
    seam = seam_report(run.real, insertion.composite, results, insertion.mask)
    seam["finding_kept"] = finding_kept(run.real, insertion.composite, results, insertion.mask)
    box = insertion.box if run.canvas is None else run.canvas.box_to_source(insertion.box)
    x, y, w, h = box
    result = _write(request, run, mode, results, scale,
                    [run.real, insertion.composite, *results.split(1)], insertion.mask,
                    {"lesion_x": x, "lesion_y": y, "lesion_w": w, "lesion_h": h,
                     "seam_naive": seam["naive"], "seam": seam["results"],
                     "finding_kept": seam["finding_kept"]},
                    region_blend=(generated, weight))
    result.box, result.seam = box, seam
    return result


def _edit(request: EditRequest, mode: str) -> ManipulationResult | SweepResult:
    run = _open_run(request)
    insertion = _insertion(request, run)
    if request.label is None or not request.label.strip():
        raise ConfigError(f"{mode} inserts a finding: name it with --label (e.g. fracture); "
                          f"the source's label would no longer describe the image")
    if is_sweep(request.inject_scale):
        naive_excess = (seam_score(insertion.composite, insertion.mask, run.real)
                        - seam_score(run.real, insertion.mask, run.real))
        reference = [Tile(run.real.cpu(), ["source"]),
                     Tile(insertion.composite.cpu(),
                          ["naive paste", f"seam excess {naive_excess:+.3f}"])]
        return _sweep(request, run, mode, True, Criterion(
            "seam_excess_abs_mean", "mean |seam excess|",
            excluded=f"keeps less than {MIN_FINDING_KEPT:g} of the pasted finding (mean "
            "finding_kept)", excluded_label="finding lost"), reference,
            lambda scale_request, scale: _edit_at(scale_request, run, insertion, mode, scale))
    check_pick(request.pick, False, "--inject-scale")
    scale = (default_inject_scale(run.pyramid, insertion.box) if request.inject_scale is None
             else _inject_scale(request.inject_scale, run.pyramid))
    return _edit_at(request, run, insertion, mode, scale)


def edit(request: EditRequest) -> ManipulationResult | SweepResult:
    """Insert a finding (``lesion`` at ``at``, or a ``composite`` and its ``mask``) so that it
    looks native; writes ``request.n`` variants, the mask, ``edit_grid.png`` (original | naive
    paste | results) and manifest rows with the box and mask columns. With ``inject_scale``
    ``"all"``, the same at every scale ``1 .. N-1`` (:func:`_sweep`)."""
    return _edit(request, "edit")


def harmonize(request: EditRequest) -> ManipulationResult | SweepResult:
    """Like :func:`edit` with the harmonization blend (narrower margin): the pasted object
    keeps its shape and takes on the scan's appearance."""
    return _edit(request, "harmonize")


def _paint_at(request: PaintRequest, run: _Run, painting: torch.Tensor,
              scale: int) -> ManipulationResult:
    """One painting injected at ``scale`` (the single-scale path)."""
    pyramid = run.pyramid
    _targets(request, run, "paint", with_mask=False)
    results = inject(pyramid, painting, scale, request.seed, list(range(request.n)))
    shown = resize(painting, pyramid.shapes[0]).clamp(-1, 1)
    return _write(request, run, "paint", results, scale, [run.real, shown, *results.split(1)])


def paint(request: PaintRequest) -> ManipulationResult | SweepResult:
    """Turn a coarse drawing of anatomy (the scan's aspect ratio, any size) into texture: it is
    down-sampled and injected at ``inject_scale`` (default ``N-1``; ``"all"``: every scale
    ``1 .. N-1``, :func:`_sweep`); no blending, except that a region run's painting replaces
    its region with the region taper at the border."""
    run = _open_run(request)
    if request.paint is None:
        raise ConfigError("paint needs --paint FILE (a coarse drawing of the scan)")
    pyramid = run.pyramid
    sweeping = is_sweep(request.inject_scale)
    check_pick(request.pick, sweeping, "--inject-scale")
    scale = None if sweeping else _inject_scale(request.inject_scale, pyramid)
    painting = _read_unit(request.paint, run, request.intensity, "the painting")
    _check_aspect(tuple(painting.shape[-2:]), pyramid.shapes[0], "the painting")
    if scale is not None:
        return _paint_at(request, run, painting, scale)
    shown = resize(painting, pyramid.shapes[0]).clamp(-1, 1).cpu()
    return _sweep(request, run, "paint", False, None,
                  [Tile(run.real.cpu(), ["source"]), Tile(shown, ["drawing"])],
                  lambda scale_request, scale: _paint_at(scale_request, run, painting, scale))


def _sweep(request: ManipulationRequest, run: _Run, method: str, with_mask: bool,
           criterion: Criterion | None, reference: list[Tile],
           single: Callable[[Any, int], ManipulationResult]) -> SweepResult:
    """``single`` (a command's single-scale path) at every injection scale ``1 .. N-1``, into
    ``<out>/scale_<S>`` [out default: ``RUN/<method>_sweep``]; every scale's targets are
    checked before the first is made. ``criterion`` ``None``: the mean SIFID to the run's scan
    where every scale has it, else the mean patch SWD (see :mod:`medsingan.sweep`)."""
    coarsest = run.pyramid.coarsest
    if coarsest - 1 < 1:
        raise ConfigError(f"--inject-scale all sweeps the scales 1..N-1, but this run has "
                          f"scales 0..{coarsest} (N = {coarsest}): none to sweep; give one "
                          "--inject-scale")
    check_pick(request.pick, True, "--inject-scale")
    out = Path(request.out or run.run_dir / f"{method}_sweep")
    check_sweep_folder(out, method, request.overwrite)
    scales = list(range(1, coarsest))
    requests = {s: replace(request, inject_scale=s, out=out / f"scale_{s}") for s in scales}
    for scale_request in requests.values():
        _targets(scale_request, run, method, with_mask)
    results = {s: single(requests[s], s) for s in scales}
    manifest = results[scales[0]].manifest
    if criterion is None:
        by_sifid = all(r.scores and r.scores["sifid"] for r in results.values())
        criterion = (Criterion("sifid_mean", f"mean SIFID "
                               f"({results[scales[0]].scores['sifid_variant']})")
                     if by_sifid else Criterion("patch_swd_mean", "mean patch SWD"))
    outcomes = [_outcome(s, results[s], manifest, criterion) for s in scales]
    return finish(out, manifest, method, "--inject-scale", criterion, outcomes, request.pick,
                  reference, settings={"n": request.n, "seed": request.seed})


def _outcome(scale: int, result: ManipulationResult, manifest: Path,
             criterion: Criterion) -> ScaleOutcome:
    """One scale's outputs as a sweep outcome: each image captioned with its scores."""
    scores = result.scores or {}
    swd = scores.get("patch_swd") or [None] * len(result.written)
    sifid = scores.get("sifid") or [None] * len(result.written)
    excess = result.seam["result_excess"] if result.seam else [None] * len(result.written)
    kept = result.seam["finding_kept"] if result.seam else [None] * len(result.written)
    values = {"seam_excess_abs_mean": [None if e is None else abs(e) for e in excess],
              "finding_kept_mean": kept, "sifid_mean": sifid, "patch_swd_mean": swd}
    tiles = []
    for k, image in enumerate(result.images.split(1)):
        caption = [] if excess[k] is None else [f"seam excess {excess[k]:+.3f}",
                                                 f"finding kept {kept[k]:.2f}"]
        caption.append(f"SWD {swd[k]:.4g}" if swd[k] is not None else "SWD -")
        if sifid[k] is not None:
            caption.append(f"SIFID {sifid[k]:.4g}")
        tiles.append(Tile(image, caption))
    files = [*result.written, *(p for p in (result.mask, result.grid) if p is not None)]
    return ScaleOutcome(
        scale=scale, score=mean(values[criterion.name]), tiles=tiles, files=files,
        listed=[relative_to_manifest(p.resolve(), manifest) for p in result.written],
        folder=result.out, details={name: mean(v) for name, v in values.items()},
        eligible=result.seam is None or mean(kept) >= MIN_FINDING_KEPT)


def super_resolve(request: SuperResolveRequest) -> ManipulationResult:
    """Up-sample the training scan ``factor`` times through the finest generator (paper Sec. 4);
    the outputs are ``round(h * factor) x round(w * factor)`` px."""
    if not 1.0 < request.factor <= MAX_SUPER_RESOLUTION_FACTOR:
        raise ConfigError(f"--factor must lie in (1, {MAX_SUPER_RESOLUTION_FACTOR:g}], "
                          f"got {request.factor:g}")
    run = _open_run(request)
    if run.canvas is not None:
        raise ConfigError(f"super-resolve makes images larger than the region ({run.canvas.region}"
                          ") that a region run writes back into its source: super-resolve a "
                          "whole-scan run")
    _targets(request, run, "super_resolution", with_mask=False)
    results = super_resolution(run.pyramid, request.factor, request.seed, list(range(request.n)))
    bicubic = resize(run.real, tuple(results.shape[-2:])).clamp(-1, 1)
    return _write(request, run, "super_resolution", results, 0,
                  [bicubic, *results.split(1)], extra={"factor": request.factor})
