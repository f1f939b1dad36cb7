"""``medsingan animate``: a trained scan as a short looping clip (GIF, or MP4)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medsingan.cli_options import RunArg


def register(app: typer.Typer) -> None:
    """Add the ``animate`` command to the ``medsingan`` app."""

    @app.command("animate")
    def animate(
        run_dir: RunArg,
        frames: Annotated[int, typer.Option(
            "--frames", help="Number of frames, 1..1000.")] = 60,
        start_scale: Annotated[str, typer.Option(
            "--start-scale", help="Scale where the walk starts: N (coarsest: the anatomy "
            "itself moves), N-k, or an index (0 = finest: only texture moves); coarser "
            "scales keep the reconstruction.")] = "N",
        alpha: Annotated[float, typer.Option(
            "--alpha", help="Pull of every step back towards the reconstruction noise z*, "
            "in [0, 1) (the official animation script's alpha).")] = 0.1,
        beta: Annotated[float, typer.Option(
            "--beta", help="Momentum: share of the previous step carried into the next, in "
            "[0, 1) (the official script's beta); higher is smoother.")] = 0.9,
        fps: Annotated[float, typer.Option(
            "--fps", help="Frames per second, up to 50.")] = 10.0,
        seed: Annotated[int, typer.Option("--seed", help="Seed of the noise walk.")] = 0,
        out: Annotated[Path | None, typer.Option(
            "--out", "-o", help="Output .gif, or .mp4 when imageio-ffmpeg is installed "
            "[default: RUN_DIR/animation.gif].", show_default=False)] = None,
        device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N].")] = "auto",
        overwrite: Annotated[bool, typer.Option(
            "--overwrite", help="Replace the output file if it exists.")] = False,
    ) -> None:
        """Animate a trained scan: a smooth walk in the noise space from the reconstruction
        (frame 0) on, as in the paper's single-image animation."""
        from medsingan.animate import AnimateRequest
        from medsingan.animate import animate as run_animate

        result = run_animate(AnimateRequest(
            run_dir=run_dir, frames=frames, start_scale=start_scale, alpha=alpha, beta=beta,
            fps=fps, seed=seed, out=out, device=device, overwrite=overwrite))
        typer.echo(f"{result.frames} frame(s), {result.height} x {result.width} px at "
                   f"{result.fps:g} fps, walk from scale {result.start_scale}: {result.out}")
