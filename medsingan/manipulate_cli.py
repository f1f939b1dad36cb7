"""The paper's manipulations on the command line: edit, harmonize, paint, super-resolve."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from medsingan.cli_options import (
    KeepIdsOpt,
    LabelOpt,
    ManifestOpt,
    RunArg,
    SifidVariant,
    VariantOpt,
)

if TYPE_CHECKING:
    from medsingan.manipulate import ManipulationResult
    from medsingan.sweep import SweepResult


class Intensity(str, Enum):
    scan = "scan"
    display = "display"


NOpt = Annotated[int, typer.Option("--n", help="Number of variants (different noise).")]
SeedOpt = Annotated[int, typer.Option(
    "--seed", help="Seed: variant k of seed s is the same whatever --n.")]
OutOpt = Annotated[Path | None, typer.Option(
    "--out", "-o", help="Output folder [default: RUN_DIR/edit, harmonize, paint or "
    "super_resolution; with --inject-scale all: RUN_DIR/edit_sweep, harmonize_sweep or "
    "paint_sweep].", show_default=False)]
IntensityOpt = Annotated[Intensity, typer.Option(
    "--intensity", help="Values of the input files: scan (the scan's own units, mapped with "
    "the run's intensity mapping) or display (8-bit grey 0..255, as inspect --preview "
    "writes it).")]
OverwriteOpt = Annotated[bool, typer.Option(
    "--overwrite", help="Replace output files already there.")]
LesionOpt = Annotated[Path | None, typer.Option(
    "--lesion", exists=True, dir_okay=False, help="Patch to insert (any readable scan or crop), "
    "pasted as is in px of the run's finest scale (of the source, for a region run); needs "
    "--at.", show_default=False)]
AtOpt = Annotated[str | None, typer.Option(
    "--at", help="X,Y: column and row of the patch's top-left corner, in px of the run's "
    "finest scale (of the source, for a region run: inside its --roi).", show_default=False)]
LesionMaskOpt = Annotated[Path | None, typer.Option(
    "--lesion-mask", exists=True, dir_okay=False, help="Mask of the patch's size, non-zero "
    "on the finding [default: the whole patch].", show_default=False)]
CompositeOpt = Annotated[Path | None, typer.Option(
    "--composite", exists=True, dir_okay=False, help="Your own edited scan (the scan's aspect "
    "ratio, any size; for a region run the full-size scan or its region); needs --mask.",
    show_default=False)]
MaskOpt = Annotated[Path | None, typer.Option(
    "--mask", exists=True, dir_okay=False, help="Mask of the composite's size, non-zero where "
    "it was edited.", show_default=False)]
InjectOpt = Annotated[str | None, typer.Option(
    "--inject-scale", help="Scale the composite is injected at: N-k (k >= 1), an index "
    "(0 = finest), or all (one sweep: every scale 1..N-1 into OUT/scale_S, scored, with "
    "OUT/sweep.png and OUT/summary.json) [default: the coarsest scale where the edited box "
    "still spans 5 px, within 1..N-1].", show_default=False)]
EditPickOpt = Annotated[str | None, typer.Option(
    "--pick", help="With --inject-scale all: best keeps only the outputs (files and manifest "
    "rows) of the scale with the lowest mean |seam excess| (0: the seam is as sharp as the "
    "scan's own detail there) among those whose outputs keep at least half of the pasted "
    "finding (mean finding_kept >= 0.5).", show_default=False)]
PaintPickOpt = Annotated[str | None, typer.Option(
    "--pick", help="With --inject-scale all: best keeps only the outputs (files and manifest "
    "rows) of the scale with the lowest mean SIFID to the run's scan (the lowest mean patch "
    "SWD without Inception weights).", show_default=False)]
ScoreWeightsOpt = Annotated[Path | None, typer.Option(
    "--inception-weights", help="Inception weights of the SIFID variant: each output's SIFID "
    "to the run's scan is scored when they are found [default: $MEDSINGAN_INCEPTION_WEIGHTS, "
    "else torch's hub cache; none there: patch SWD only].", show_default=False)]


def report_sweep(result: SweepResult) -> None:
    """Print a sweep: each scale's score, the best scale and what was kept."""
    criterion = result.criterion.description
    scales = ",".join(str(o.scale) for o in result.outcomes)
    typer.echo(f"{result.command} {result.option} {scales}: {len(result.outcomes)} scale(s), "
               f"{criterion} (lower is better)")
    for outcome in result.outcomes:
        score = "-" if outcome.score is None else f"{outcome.score:.4g}"
        note = "" if outcome.eligible else f"  (not picked: {result.criterion.excluded_label})"
        typer.echo(f"  scale {outcome.scale}: {len(outcome.listed)} file(s), {score}{note}")
    typer.echo(f"best scale: {result.best} ({criterion} {result.summary['best_score']:.4g})")
    if result.picked is not None:
        kept = next(o.folder for o in result.outcomes if o.scale == result.picked)
        typer.echo(f"--pick best: kept scale {result.picked} only ({kept}); the other scales' "
                   "files and manifest rows were removed")
    typer.echo(f"sheet: {result.sheet}")
    typer.echo(f"summary: {result.out / 'summary.json'}")
    typer.echo(f"manifest: {result.manifest}")


def _report(result: ManipulationResult | SweepResult) -> None:
    from medsingan.sweep import SweepResult

    if isinstance(result, SweepResult):
        report_sweep(result)
        return
    typer.echo(f"{len(result.written)} file(s) written to {result.out}")
    if result.region is not None:
        typer.echo(f"region {result.region} (X,Y,W,H, source px): the outputs are the "
                   "full-size scan with only this region changed")
    if result.box is not None:
        x, y, w, h = result.box
        typer.echo(f"edited box: x {x}, y {y}, w {w}, h {h} px; mask {result.mask}; "
                   f"injected at scale {result.inject_scale}")
    if result.seam is not None:
        seam = result.seam
        excess = sum(seam["result_excess"]) / len(seam["result_excess"])
        typer.echo(f"seam score: source {seam['source']:.3f}, naive paste {seam['naive']:.3f}, "
                   f"result {seam['source'] + excess:.3f} (mean); excess {seam['naive_excess']:.3f}"
                   f" -> {excess:.3f}")
    typer.echo(f"grid: {result.grid}")
    typer.echo(f"manifest: {result.manifest}")


def register(app: typer.Typer) -> None:
    """Add the manipulation commands to the ``medsingan`` app."""

    def insertion_command(mode: str) -> Callable[..., None]:
        def command(
            run_dir: RunArg,
            lesion: LesionOpt = None,
            at: AtOpt = None,
            lesion_mask: LesionMaskOpt = None,
            composite: CompositeOpt = None,
            mask: MaskOpt = None,
            inject_scale: InjectOpt = None,
            n: NOpt = 1,
            seed: SeedOpt = 0,
            out: OutOpt = None,
            manifest: ManifestOpt = None,
            label: LabelOpt = None,
            intensity: IntensityOpt = Intensity.scan,
            overwrite: OverwriteOpt = False,
            keep_identifiers: KeepIdsOpt = False,
            pick: EditPickOpt = None,
            sifid_variant: VariantOpt = SifidVariant.paper,
            inception_weights: ScoreWeightsOpt = None,
        ) -> None:
            from medsingan import manipulate

            run = manipulate.edit if mode == "edit" else manipulate.harmonize
            _report(run(manipulate.EditRequest(
                run_dir=run_dir, lesion=lesion, at=at, lesion_mask=lesion_mask,
                composite=composite, mask=mask, inject_scale=inject_scale, n=n, seed=seed,
                out=out, manifest=manifest, label=label, intensity=intensity.value,
                overwrite=overwrite, keep_identifiers=keep_identifiers, pick=pick,
                sifid_variant=sifid_variant.value, inception_weights=inception_weights)))

        return command

    app.command("edit", help="Insert a finding so that it looks native: a --lesion patch "
                "--at X,Y, or your --composite and --mask; injected at a coarse scale, "
                "re-synthesised, blended (radius 20 px at 250 px).")(insertion_command("edit"))
    app.command("harmonize", help="Adapt a pasted object's appearance to the scan: like edit, "
                "with a narrow blend (radius 7 px at 250 px).")(insertion_command("harmonize"))

    @app.command("paint")
    def paint(
        run_dir: RunArg,
        painting: Annotated[Path, typer.Option(
            "--paint", exists=True, dir_okay=False, help="A coarse drawing of the scan (its "
            "aspect ratio, any size).", show_default=False)],
        inject_scale: Annotated[str, typer.Option(
            "--inject-scale", help="Scale the drawing is injected at: N-k (k >= 1), an "
            "index (0 = finest), or all (every scale 1..N-1 into OUT/scale_S, scored, with "
            "OUT/sweep.png and OUT/summary.json); coarser keeps less of the drawing.")] = "N-1",
        n: NOpt = 1,
        seed: SeedOpt = 0,
        out: OutOpt = None,
        manifest: ManifestOpt = None,
        label: LabelOpt = None,
        intensity: IntensityOpt = Intensity.scan,
        overwrite: OverwriteOpt = False,
        keep_identifiers: KeepIdsOpt = False,
        pick: PaintPickOpt = None,
        sifid_variant: VariantOpt = SifidVariant.paper,
        inception_weights: ScoreWeightsOpt = None,
    ) -> None:
        """Turn a coarse drawing of anatomy into realistic texture (paint-to-image)."""
        from medsingan.manipulate import PaintRequest
        from medsingan.manipulate import paint as run_paint

        _report(run_paint(PaintRequest(
            run_dir=run_dir, paint=painting, inject_scale=inject_scale, n=n, seed=seed, out=out,
            manifest=manifest, label=label, intensity=intensity.value, overwrite=overwrite,
            keep_identifiers=keep_identifiers, pick=pick, sifid_variant=sifid_variant.value,
            inception_weights=inception_weights)))

    @app.command("super-resolve")
    def super_resolve(
        run_dir: RunArg,
        factor: Annotated[float, typer.Option(
            "--factor", help="Up-sampling factor, in (1, 16]; about 3 passes of the finest "
            "generator per doubling.")] = 4.0,
        n: NOpt = 1,
        seed: SeedOpt = 0,
        out: OutOpt = None,
        manifest: ManifestOpt = None,
        label: LabelOpt = None,
        overwrite: OverwriteOpt = False,
        keep_identifiers: KeepIdsOpt = False,
    ) -> None:
        """Up-sample the training scan through its finest generator (the paper's SR)."""
        from medsingan.manipulate import SuperResolveRequest
        from medsingan.manipulate import super_resolve as run_super_resolve

        _report(run_super_resolve(SuperResolveRequest(
            run_dir=run_dir, factor=factor, n=n, seed=seed, out=out, manifest=manifest,
            label=label, overwrite=overwrite, keep_identifiers=keep_identifiers)))
