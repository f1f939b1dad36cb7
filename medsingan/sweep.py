"""Scale sweeps: a single-scale command run at every scale, each scale's outputs scored, one
contact sheet with the score under every image, a ``summary.json``, and ``--pick best``.

``medsingan edit | harmonize | paint ... --inject-scale all`` runs the command at every
injection scale ``1 .. N-1`` and ``medsingan augment ... --start-scale all`` at every start
scale ``0 .. N`` (the patch engine: ``N-1 .. N``, the starts it accepts). A sweep is a loop over
the commands' own single-scale code paths: every scale writes what that command writes, into
``<sweep folder>/scale_<S>`` (manipulations) or ``<sweep folder>/start_scale_<S>`` (augment),
with its manifest rows (whose ``start_scale`` is the scale). The sweep folder then gets
``sweep.png`` (one row per scale, the score under each image) and ``summary.json`` (every
scale's scores, the deciding score, the best scale).

``--pick best`` keeps only the best scale's outputs: the other scales' files and manifest rows
are removed once every scale is scored (the sheet and the summary keep all of them). The
deciding score, lower is better every time:

* edit, harmonize: the mean absolute seam excess of the scale's outputs (0: the seam is as
  sharp as the scan's own detail there; see :mod:`medsingan.manipulate`), among the scales
  whose outputs keep at least half of the pasted finding (``finding_kept`` >= 0.5: a coarse
  scale can re-synthesise the finding away, which leaves no seam at all);
* paint: the mean SIFID to the run's scan, or the mean patch SWD without Inception weights;
* augment: the mean SIFID, or the mean patch SWD when SIFID is not scored, among the scales
  whose samples are not the scan again: mean copy score at most ``--max-copy`` and mean SSIM
  to the scan at most :data:`MAX_SIMILARITY` (finer starts reconstruct the scan, so their
  scores are low because they reproduce it; a reconstruction of an imperfect model is not a
  verbatim copy, so the copy score alone misses it: on a 64 px radiograph run the starts
  0..N-1 gave copy score 0 but SSIM 0.95 and diversity 0.002-0.004).

When no scale qualifies, every scale competes and a warning says so.

Ties go to the finer scale.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageDraw, ImageFont

from medsingan import augment as augmenting
from medsingan.augment import SETTINGS_FILE, AugmentRequest, augment, open_source
from medsingan.errors import ConfigError, ScanWriteError, warn_user
from medsingan.io import read_scan
from medsingan.io.atomic import atomic_path
from medsingan.manifest import read_manifest, remove_rows, resolve_image
from medsingan.model.previews import to_uint8
from medsingan.preprocess import IntensityMapping

ALL = "all"
PICKS = ("best",)
SHEET_FILE = "sweep.png"
SUMMARY_FILE = "summary.json"
# An augment sweep's --pick best passes over start scales whose mean SSIM to the scan is above
# this: the patch engine's samples that "mostly reproduce the scan" measured 0.92-0.99, its
# varied chest samples 0.54-0.83 (README, the patch engine's table).
MAX_SIMILARITY = 0.9
# samples per scale shown on an augment sweep's sheet
SHEET_SAMPLES = 6
_TILE_HEIGHT = 128
_LABEL_WIDTH = 120
_GAP = 6
_FONT_SIZE = 13


def is_sweep(text: str | int | None) -> bool:
    """Whether a ``--inject-scale`` / ``--start-scale`` value asks for every scale."""
    return text is not None and str(text).strip().lower() == ALL


def is_scale_list(text: str | int | None) -> bool:
    """Whether a ``--start-scale`` value names several scales (``N-1,N``)."""
    return text is not None and "," in str(text)


def sweep_scales(text: str, coarsest: int, first: int, option: str) -> list[int]:
    """The start scales of ``text``: ``all`` = ``first .. coarsest``, or a comma list of
    ``N``, ``N-k`` and indices (two or more, finest first)."""
    if is_sweep(text):
        return list(range(first, coarsest + 1))
    scales = sorted({augmenting.parse_scale(part.strip(), coarsest, option)
                     for part in str(text).split(",") if part.strip()})
    if len(scales) < 2:
        raise ConfigError(f"{option} {text} names one scale: give two or more (N-1,N) or all")
    if scales[0] < first:
        raise ConfigError(f"{option} {text}: this engine starts at scale {first} or coarser "
                          f"(N = {coarsest})")
    return scales


def check_pick(pick: str | None, sweeping: bool, option: str) -> None:
    """``--pick`` is ``best`` and goes with ``option all``; ConfigError otherwise."""
    if pick is None:
        return
    if pick not in PICKS:
        raise ConfigError(f"--pick must be best, not '{pick}'")
    if not sweeping:
        raise ConfigError(f"--pick best chooses among the scales of a sweep: give {option} all"
                          + (" or a list (N-1,N)" if option == "--start-scale" else ""))


@dataclass
class Tile:
    """One image of the contact sheet, ``(1, C, h, w)`` in [-1, 1], with its caption lines."""

    image: torch.Tensor
    caption: list[str]


@dataclass
class Criterion:
    """The score that decides ``--pick best`` (lower is better); ``excluded`` says why a
    scale that may not be picked is not (``ScaleOutcome.eligible``), ``excluded_label``
    the same in a word or two for the sheet."""

    name: str
    description: str
    excluded: str = ""
    excluded_label: str = ""


@dataclass
class ScaleOutcome:
    """What one scale of a sweep wrote and scored.

    ``score`` is the deciding score (see :class:`Criterion`), ``files`` every file the scale
    wrote, ``listed`` its manifest rows' images (relative to the manifest), ``eligible`` whether
    it may be picked, ``details`` its other scores for ``summary.json``.
    """

    scale: int
    score: float | None
    tiles: list[Tile]
    files: list[Path]
    listed: list[str]
    folder: Path
    eligible: bool = True
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class SweepResult:
    out: Path
    manifest: Path
    command: str
    option: str
    criterion: Criterion
    outcomes: list[ScaleOutcome]
    best: int
    picked: int | None
    sheet: Path
    summary: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def mean(values: Sequence[float | None]) -> float | None:
    """The mean of the values that are there (``None`` and NaN left out), ``None`` if none."""
    present = [float(v) for v in values if v is not None and not np.isnan(v)]
    return float(statistics.fmean(present)) if present else None


def check_sweep_folder(out: Path, command: str, overwrite: bool,
                       folders: Sequence[str] = (), prefix: str = "") -> list[Path]:
    """A sweep folder holds one sweep of one command: not a cohort of ``augment`` (its
    ``augment.json``), not another command's sweep (unless ``overwrite``), and no scale
    folder ``<prefix><S>`` other than this sweep's ``folders`` (an earlier sweep of other
    scales, which ``--pick best`` would keep beside the picked one) unless ``overwrite``:
    those are returned, for :func:`remove_stale` once the sweep has run."""
    stale = sorted(p for p in out.glob(f"{prefix}*") if p.is_dir() and p.name not in folders) \
        if prefix and out.is_dir() else []
    if stale and not overwrite:
        raise ConfigError(f"{out} holds {', '.join(p.name for p in stale)} from an earlier "
                          "sweep of other scales; use another --out, or --overwrite to remove "
                          f"{'it' if len(stale) == 1 else 'them'} and their manifest rows")
    if (out / SETTINGS_FILE).is_file():
        raise ConfigError(f"{out} holds a cohort of augment ({SETTINGS_FILE}): a sweep writes "
                          "its scales into subfolders of a folder of its own; use another --out")
    summary = out / SUMMARY_FILE
    if summary.is_file() and not overwrite:
        try:
            previous = json.loads(summary.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            previous = None
        if not isinstance(previous, dict) or previous.get("command") != command:
            raise ConfigError(f"{summary} is not the summary of a {command} sweep; use another "
                              "--out or --overwrite")
    return stale


def remove_stale(folders: Sequence[Path], manifest: Path) -> None:
    """Remove earlier sweeps' scale folders: their rows in ``manifest`` first, then the files
    (a crash in between leaves files without rows, never rows without files)."""
    if not folders:
        return
    inside = [Path(f).resolve() for f in folders]
    images = [image for image in read_manifest(manifest)["image"]
              if any(resolve_image(manifest, image).resolve().is_relative_to(f) for f in inside)]
    if images:
        remove_rows(manifest, images)
    try:
        for folder in folders:
            shutil.rmtree(folder)
    except OSError as exc:
        raise ScanWriteError(f"cannot remove {exc.filename}: {exc.strerror or exc}") from exc


def pick_best(outcomes: Sequence[ScaleOutcome],
              excluded: str = "is excluded") -> tuple[ScaleOutcome, list[str]]:
    """The eligible scale with the lowest score (ties: the finer), and warnings; every
    scored scale competes when none is eligible."""
    scored = [o for o in outcomes if o.score is not None]
    if not scored:
        raise ConfigError("no scale of the sweep could be scored")
    candidates = [o for o in scored if o.eligible]
    warnings = []
    if not candidates:
        candidates = scored
        warnings.append(f"every scale of the sweep {excluded}; the best is picked among all "
                        "of them")
    return min(candidates, key=lambda o: (o.score, o.scale)), warnings


def discard(outcome: ScaleOutcome, manifest: Path) -> None:
    """Remove a scale's manifest rows, then its files (a crash in between leaves files
    without rows, which a re-run regenerates, never rows without files)."""
    if outcome.listed:
        remove_rows(manifest, outcome.listed)
    try:
        for path in outcome.files:
            path.unlink(missing_ok=True)
        if outcome.folder.is_dir() and not any(outcome.folder.iterdir()):
            outcome.folder.rmdir()
    except OSError as exc:
        raise ScanWriteError(f"cannot remove {outcome.folder}: {exc.strerror or exc}") from exc


def finish(out: Path, manifest: Path, command: str, option: str, criterion: Criterion,
           outcomes: list[ScaleOutcome], pick: str | None,
           reference: Sequence[Tile] = (), settings: dict[str, Any] | None = None,
           value: str = ALL) -> SweepResult:
    """Pick the best scale, keep only it under ``pick == "best"``, then write the sheet (all
    scales, ``reference`` tiles first) and ``summary.json``."""
    best, warnings = pick_best(outcomes, criterion.excluded or "is excluded")
    picked = best.scale if pick == "best" else None
    if picked is not None:
        for outcome in outcomes:
            if outcome.scale != picked:
                discard(outcome, manifest)
    sheet = out / SHEET_FILE
    title = (f"{command} {option} {value}: {criterion.description} under each image, lower is "
             f"better; best scale {best.scale}" + (" (kept)" if picked is not None else ""))
    passed = [str(o.scale) for o in outcomes if not o.eligible]
    if passed and len(passed) < len(outcomes) and criterion.excluded:
        title += (f"\nnot picked whatever the score: {'scales' if len(passed) > 1 else 'scale'}"
                  f" {', '.join(passed)}, where the sweep {criterion.excluded}")
    save_contact_sheet(sheet, title, outcomes, best.scale, reference,
                       criterion.excluded_label or "excluded")
    summary = {
        "command": command, "option": option, "scales": [o.scale for o in outcomes],
        "criterion": {"name": criterion.name, "description": criterion.description,
                      "lower_is_better": True},
        "per_scale": [{"scale": o.scale, "score": o.score, "eligible": o.eligible,
                       "folder": str(o.folder), "files": len(o.listed), **o.details}
                      for o in outcomes],
        "best_scale": best.scale, "best_score": best.score,
        "pick": pick, "picked_scale": picked,
        "manifest": str(manifest), "sheet": str(sheet),
        **(settings or {}), "warnings": warnings,
    }
    with atomic_path(out / SUMMARY_FILE) as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    warn_user(warnings)
    return SweepResult(out=out, manifest=manifest, command=command, option=option,
                       criterion=criterion, outcomes=outcomes, best=best.scale, picked=picked,
                       sheet=sheet, summary=summary, warnings=warnings)


# --- the contact sheet ---------------------------------------------------------------------

def _font(size: int = _FONT_SIZE) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _tile_picture(image: torch.Tensor) -> Image.Image:
    """The first channel at :data:`_TILE_HEIGHT` px high (nearest when enlarged)."""
    picture = Image.fromarray(to_uint8(image[0, 0]))
    width = max(1, round(picture.width * _TILE_HEIGHT / picture.height))
    resample = (Image.Resampling.NEAREST if picture.height < _TILE_HEIGHT
                else Image.Resampling.LANCZOS)
    return picture.resize((width, _TILE_HEIGHT), resample)


def save_contact_sheet(path: Path, title: str, outcomes: Sequence[ScaleOutcome], best: int,
                       reference: Sequence[Tile] = (), excluded_label: str = "excluded"
                       ) -> None:
    """One row per scale (``reference`` tiles in a first row), its label on the left (the
    best scale's marked, one that may not be picked marked ``excluded_label``), each image
    :data:`_TILE_HEIGHT` px high with its caption under it; written atomically as a PNG."""
    font = _font()
    line = _FONT_SIZE + 4
    rows: list[tuple[list[str], list[Tile]]] = []
    if reference:
        rows.append((["reference"], list(reference)))
    for outcome in outcomes:
        label = [f"scale {outcome.scale}"]
        if outcome.scale == best:
            label.append("best")
        if not outcome.eligible:
            label.append(f"({excluded_label})")
        rows.append((label, outcome.tiles))
    pictures = [[_tile_picture(t.image) for t in tiles] for _, tiles in rows]
    caption_lines = max((len(t.caption) for _, tiles in rows for t in tiles), default=0)
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))
    captions = [text for _, tiles in rows for t in tiles for text in t.caption]
    cell_w = max((p.width for row in pictures for p in row), default=_TILE_HEIGHT)
    cell_w = max(cell_w, 110, *(math.ceil(measure.textlength(text, font=font)) + _GAP
                                for text in captions))  # room for every caption
    cell_h = _TILE_HEIGHT + caption_lines * line + _GAP
    columns = max((len(row) for row in pictures), default=1)
    width = _LABEL_WIDTH + columns * (cell_w + _GAP) + _GAP
    title_lines = title.split("\n")
    title_w = max(math.ceil(measure.textlength(text, font=font)) for text in title_lines)
    top = (len(title_lines) + 1) * line
    sheet = Image.new("L", (max(width, title_w + 2 * _GAP), top + len(rows) * cell_h), color=255)
    draw = ImageDraw.Draw(sheet)
    for k, text in enumerate(title_lines):
        draw.text((_GAP, _GAP + k * line), text, fill=0, font=font)
    for r, ((label, tiles), row) in enumerate(zip(rows, pictures, strict=True)):
        y = top + r * cell_h
        for k, text in enumerate(label):
            draw.text((_GAP, y + _TILE_HEIGHT // 2 - line + k * line), text, fill=0, font=font)
        for c, (tile, picture) in enumerate(zip(tiles, row, strict=True)):
            x = _LABEL_WIDTH + c * (cell_w + _GAP)
            sheet.paste(picture, (x, y))
            for k, text in enumerate(tile.caption):
                draw.text((x, y + _TILE_HEIGHT + 2 + k * line), text, fill=0, font=font)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")


# --- augment --start-scale all ---------------------------------------------------------------

def augment_sweep(request: AugmentRequest, pick: str | None = None) -> SweepResult:
    """:func:`medsingan.augment.augment` at every start scale ``0 .. N`` (the patch engine:
    ``N-1 .. N``), or at those of a list (``N-1,N``), each into ``<out>/start_scale_<S>``
    (resumable as augment is), then the sheet, ``summary.json`` and ``--pick best`` (see the
    module docstring).

    ``request.out`` is the sweep folder [default: augment's folder + ``_sweep``]; every scale
    is checked (settings, folder, manifest) before the first sample is drawn.
    """
    sweeping = is_sweep(request.start_scale) or is_scale_list(request.start_scale)
    check_pick(pick, sweeping, "--start-scale")
    if not sweeping:
        raise ConfigError("augment_sweep needs --start-scale all or a list of scales")
    source = open_source(request)
    first = max(source.coarsest - 1, 0) if source.engine == "patch" else 0
    scales = sweep_scales(request.start_scale, source.coarsest, first, "--start-scale")
    out = Path(request.out or f"{source.default_out}_sweep")
    requests = {s: replace(request, start_scale=str(s), out=out / f"start_scale_{s}")
                for s in scales}
    stale = check_sweep_folder(out, "augment", request.overwrite,
                               [r.out.name for r in requests.values()], "start_scale_")
    for scale_request in requests.values():  # every scale refused before any is written
        augment(replace(scale_request, dry_run=True))
    mapping = IntensityMapping.from_dict(source.extra["intensity_mapping"])
    results = {s: augment(r) for s, r in requests.items()}
    manifest = results[scales[0]].manifest
    remove_stale(stale, manifest)
    frame = read_manifest(manifest)
    by_sifid = all(r.summary.get("sifid_mean") is not None for r in results.values())
    variant = results[scales[0]].summary["sifid_variant"]
    criterion = (Criterion("sifid_mean", f"mean SIFID ({variant})") if by_sifid
                 else Criterion("patch_swd_mean", "mean patch SWD"))
    criterion.excluded = (f"reproduces the scan (mean copy_score over --max-copy or mean SSIM "
                          f"to the scan over {MAX_SIMILARITY:g})")
    criterion.excluded_label = "like the scan"
    outcomes = [_augment_outcome(s, results[s].out, results[s].summary, frame, manifest,
                                 mapping, criterion, request.max_copy, request.n)
                for s in scales]
    settings = {"n": request.n, "seed": request.seed, "max_copy": request.max_copy,
                "engine": source.engine}
    return finish(out, manifest, "augment", "--start-scale", criterion, outcomes, pick,
                  reference=[Tile(source.real.cpu(), ["training image"])], settings=settings,
                  value=ALL if is_sweep(request.start_scale) else
                  ",".join(str(s) for s in scales))


def _augment_outcome(scale: int, folder: Path, summary: dict[str, Any], frame: Any,
                     manifest: Path, mapping: IntensityMapping, criterion: Criterion,
                     max_copy: float, n: int) -> ScaleOutcome:
    """One start scale's cohort as a sweep outcome: its rows in the manifest (files, scores
    for the captions), its summary's means (the score). Samples ``n`` and over, left in the
    folder by an earlier, larger sweep, are not this sweep's."""
    root = folder.resolve()
    mine = frame[[resolve_image(manifest, str(image)).resolve().parent == root
                  for image in frame["image"]]]
    if "sample_index" in mine:
        indices = pd.to_numeric(mine["sample_index"], errors="coerce")
        mine = mine[indices < n].sort_values("sample_index", key=lambda c: pd.to_numeric(c))
    key = "sifid" if criterion.name == "sifid_mean" else "patch_swd"
    label = "SIFID" if key == "sifid" else "SWD"
    tiles = []
    for row in mine.head(SHEET_SAMPLES).itertuples():
        image = read_scan(resolve_image(manifest, str(row.image))).image
        caption = [f"{label} {getattr(row, key):.4g}"]
        copy = getattr(row, "copy_score", None)
        caption.append(f"SSIM {row.similarity_to_source:.2f}"
                       + ("" if copy is None or np.isnan(copy) else f", copy {copy:.2f}"))
        tiles.append(Tile(torch.from_numpy(mapping.to_unit(image))[None, None], caption))
    images = [resolve_image(manifest, str(image)) for image in mine["image"]]
    # an image+mask run's masks (medsingan.masks) go with their samples
    images += [resolve_image(manifest, str(mask)) for mask in mine.get("mask", [])
               if isinstance(mask, str) and mask]
    copy_mean, similarity = summary.get("copy_score_mean"), summary.get("similarity_mean")
    return ScaleOutcome(
        scale=scale, score=summary.get(criterion.name), tiles=tiles,
        files=[*images, *(folder / name for name in
                          (SETTINGS_FILE, augmenting.GRID_FILE, augmenting.SUMMARY_FILE))],
        listed=[str(image) for image in mine["image"]], folder=folder,
        eligible=((copy_mean is None or copy_mean <= max_copy)
                  and (similarity is None or similarity <= MAX_SIMILARITY)),
        details={key: summary.get(key) for key in
                 ("sifid_mean", "patch_swd_mean", "similarity_mean", "diversity",
                  "copy_score_mean")})

