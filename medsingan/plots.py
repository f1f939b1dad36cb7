"""``curves.png``: a run's training curves and per-scale scores, drawn with matplotlib (Agg).

Left, one panel per loss against the iteration counted over the whole run (coarsest scale
first), a dashed line where a scale starts and the scale's number and size along the top; the
reconstruction MSE on a log axis. Right, the per-scale scores of the random samples against the
real image at each scale: the median with the range (min..max) of the samples, coarsest scale
first.

matplotlib is imported when a figure is drawn (it takes a second or two to import); its
object-oriented API with the Agg canvas is used, so no global pyplot state or display backend
is involved.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medsingan.io.atomic import atomic_path

LOSS_PANELS = (("d_loss", "critic loss", "linear"),
               ("g_adv", "generator adv. loss", "linear"),
               ("rec_loss", "reconstruction MSE", "log"),
               ("gp", "gradient penalty", "linear"))
SCORE_PANELS = (("patch_swd", "patch SWD (x1000)"), ("sifid", "SIFID"))
# a run trained with an explicit patch loss (train --loss) has no critic: its history's
# d_loss and gp are NaN and g_adv is the patch loss
EXPLICIT_LOSS_PANELS = (("g_adv", "patch loss", "linear"),
                        ("rec_loss", "reconstruction MSE", "log"))


def loss_panels(rows: Sequence[dict[str, float]]) -> tuple[tuple[str, str, str], ...]:
    """The loss panels of a run's history: :data:`LOSS_PANELS`, or
    :data:`EXPLICIT_LOSS_PANELS` when no row has a critic loss."""
    if rows and all(math.isnan(float(r["d_loss"])) for r in rows):
        return EXPLICIT_LOSS_PANELS
    return LOSS_PANELS


def _segments(rows: Sequence[dict[str, float]]) -> list[tuple[int, int, int]]:
    """``(scale, first row, end row)`` of each scale's run of rows, in order."""
    segments: list[tuple[int, int, int]] = []
    for index, row in enumerate(rows):
        scale = int(row["scale"])
        if segments and segments[-1][0] == scale:
            segments[-1] = (scale, segments[-1][1], index + 1)
        else:
            segments.append((scale, index, index + 1))
    return segments


def _run_steps(rows: Sequence[dict[str, float]]) -> list[float]:
    """Each row's iteration counted over the whole run: a scale continues where the previous
    one ended (its last logged iteration)."""
    steps, offset, previous = [], 0.0, None
    for row in rows:
        if previous is not None and int(row["scale"]) != int(previous["scale"]):
            offset += float(previous["iter"])
        steps.append(offset + float(row["iter"]))
        previous = row
    return steps


def save_training_curves(path: Path, rows: Sequence[dict[str, float]],
                         scales: Sequence[dict[str, Any]]) -> None:
    """Write :func:`training_figure` to the PNG ``path`` (atomically)."""
    figure = training_figure(rows, scales)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")


def training_figure(rows: Sequence[dict[str, float]], scales: Sequence[dict[str, Any]]) -> Any:
    """The curves as a matplotlib ``Figure`` on an Agg canvas: the loss panels (in the order of
    :func:`loss_panels`), then the score panels (:data:`SCORE_PANELS`).

    Args:
        rows: history rows (``scale``, ``iter`` and the loss columns of :data:`LOSS_PANELS`),
            coarsest scale first.
        scales: one dict per finished scale: ``scale``, ``height``, ``width`` and
            ``scores`` (``{"patch_swd": [...], "sifid": [...] | None, "sifid_variant"}``,
            or ``None`` for a run trained before scores existed).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # a fixed layout: matplotlib's automatic ones cost more than the drawing itself
    figure = Figure(figsize=(12, 8), dpi=90)
    FigureCanvasAgg(figure)
    panels = loss_panels(rows)
    left = figure.add_gridspec(len(panels), 1, left=0.07, right=0.66, top=0.9,
                               bottom=0.07, hspace=0.12)
    right = figure.add_gridspec(len(SCORE_PANELS), 1, left=0.73, right=0.98, top=0.9,
                                bottom=0.07, hspace=0.4)
    steps = _run_steps(rows)
    segments = _segments(rows)
    sizes = {int(s["scale"]): f"{s['height']}x{s['width']}" for s in scales}
    first = None
    for panel, (column, label, yscale) in enumerate(panels):
        axes = figure.add_subplot(left[panel, 0], sharex=first)
        first = first or axes
        values = [float(r[column]) for r in rows]
        for _, start, end in segments:
            axes.plot(steps[start:end], values[start:end], color="C0", linewidth=0.9)
            if start > 0:
                axes.axvline(steps[start - 1], color="0.6", linestyle="--", linewidth=0.8)
        if yscale == "log" and any(v > 0 for v in values):
            axes.set_yscale("log", nonpositive="mask")
        axes.set_ylabel(label, fontsize=9)
        axes.grid(True, alpha=0.3)
        if panel == 0 and segments:
            _label_scales(axes, steps, segments, sizes)
        if panel < len(panels) - 1:
            axes.tick_params(labelbottom=False)
    if first is not None:
        first.set_title("losses at every logged iteration", fontsize=10, loc="left", pad=28)
        axes.set_xlabel("iteration (whole run, coarsest scale first)")
    for panel, (name, title) in enumerate(SCORE_PANELS):
        _score_panel(figure.add_subplot(right[panel, 0]), name, title, scales)
    return figure


def _label_scales(axes: Any, steps: list[float], segments: list[tuple[int, int, int]],
                  sizes: dict[int, str]) -> None:
    """Scale numbers (and sizes) centred over each scale's stretch, along the top axis."""
    top = axes.secondary_xaxis("top")
    centres, labels = [], []
    for scale, start, end in segments:
        left = steps[start - 1] if start > 0 else 0.0
        centres.append((left + steps[end - 1]) / 2)
        size = sizes.get(scale)
        labels.append(f"scale {scale}" + (f"\n{size}" if size else ""))
    top.set_xticks(centres, labels, fontsize=7)
    top.tick_params(length=0)


def _score_panel(axes: Any, name: str, title: str, scales: Sequence[dict[str, Any]]) -> None:
    """Median and min..max of one score per scale, coarsest scale on the left."""
    points = [(int(s["scale"]), s["scores"][name]) for s in scales
              if s.get("scores") and s["scores"].get(name)]
    variant = next((s["scores"].get("sifid_variant") for s in scales
                    if s.get("scores") and s["scores"].get("sifid_variant")), None)
    count = next((s["scores"]["samples"] for s in scales if s.get("scores")), None)
    label = title + (f" ({variant})" if name == "sifid" and variant else "")
    axes.set_title(f"{label}\nmedian and min..max of {count} random samples" if count
                   else label, fontsize=9, loc="left")
    axes.set_xlabel("scale (0 = finest)")
    axes.grid(True, alpha=0.3)
    if not points:
        reason = ("no Inception weights: not scored" if name == "sifid"
                  else "no scores in this run")
        axes.text(0.5, 0.5, reason, ha="center", va="center", transform=axes.transAxes,
                  fontsize=8, color="0.4")
        axes.set_xticks([])
        axes.set_yticks([])
        return
    points.sort(key=lambda p: -p[0])
    xs = [p[0] for p in points]
    medians = [statistics.median(v) for _, v in points]
    lows = [m - min(v) for m, (_, v) in zip(medians, points, strict=True)]
    highs = [max(v) - m for m, (_, v) in zip(medians, points, strict=True)]
    axes.errorbar(xs, medians, yerr=[lows, highs], fmt="o-", color="C3", capsize=3,
                  markersize=4, linewidth=1)
    axes.set_xticks(xs)
    axes.set_xlim(max(xs) + 0.5, min(xs) - 0.5)
