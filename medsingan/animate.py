"""Animation of a trained scan (paper Sec. 4.5): a smooth random walk in the noise space.

Every scale from ``start`` down to the finest walks on its own, with the official animation
script's two parameters:

    d_t = beta (z_{t-1} - z_{t-2}) + (1 - beta) n_t,        n_t ~ N(0, I)
    z_t = alpha z_rec + (1 - alpha) (z_{t-1} + d_t)

``z_rec`` is that scale's reconstruction noise (z* at the coarsest scale, zeros at the finer
ones). ``alpha`` pulls each step back towards it (the script's "first moment", 0.1); ``beta``
is the momentum, the share of the previous step carried into the next (its "second moment",
0.9): higher is smoother. Scales coarser than ``start`` follow the reconstruction path. The
walk starts at ``z_0 = z_{-1} = z_rec``, so frame 0 is the reconstruction of the training image
(the official script starts from ``0.95 z* + 0.05 n``); the walk then drifts off it.

All noise comes from the stream ``(seed, ANIMATION)``, drawn frame by frame, so an animation is
the same whatever the batch size. Frames are the image channel in [-1, 1] mapped to 8-bit grey
(the preset's display mapping; for a region run, the region), written as a looping GIF with
Pillow or, when ``imageio-ffmpeg`` is installed, as an H.264 MP4.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from medsingan.augment import default_batch_size, parse_scale
from medsingan.devices import resolve_device
from medsingan.errors import ConfigError, RunDirError
from medsingan.io.atomic import atomic_path
from medsingan.model.container import TrainedPyramid
from medsingan.model.noise import Stream, check_seed, draw_noise, seeded_generator
from medsingan.model.previews import to_uint8
from medsingan.train import load_run

DEFAULT_FILE = "animation.gif"
MAX_FRAMES = 1000
MAX_FPS = 50.0  # GIF delays are whole hundredths of a second; viewers slow down faster ones
FORMATS = (".gif", ".mp4")


@dataclass
class AnimateRequest:
    """What to animate and where; ``out`` ``None`` means ``RUN_DIR/animation.gif``."""

    run_dir: Path
    frames: int = 60
    start_scale: str = "N"
    alpha: float = 0.1
    beta: float = 0.9
    fps: float = 10.0
    seed: int = 0
    out: Path | None = None
    device: str = "auto"
    overwrite: bool = False
    batch_size: int | None = None


@dataclass
class AnimateResult:
    out: Path
    frames: int
    start_scale: int
    height: int
    width: int
    fps: float


def noise_walk(pyramid: TrainedPyramid, start: int, frames: int, alpha: float, beta: float,
               seed: int) -> Iterator[list[torch.Tensor]]:
    """The unit noise maps ``(1, C, h, w)`` of scales ``start..0`` (on the CPU) for each frame,
    frame 0 first (see the module docstring)."""
    generator = seeded_generator(seed, Stream.ANIMATION)
    targets = [pyramid.reconstruction_noise(s).cpu() for s in range(start, -1, -1)]
    current = [target.clone() for target in targets]
    steps = [torch.zeros_like(target) for target in targets]  # z_{t-1} - z_{t-2}
    yield current
    for _ in range(frames - 1):
        following = []
        for k, target in enumerate(targets):
            noise = draw_noise(tuple(target.shape), generator)
            drift = beta * steps[k] + (1 - beta) * noise
            following.append(alpha * target + (1 - alpha) * (current[k] + drift))
            steps[k] = following[-1] - current[k]
        current = following
        yield current


@torch.no_grad()
def render_frames(pyramid: TrainedPyramid, start: int, frames: int, alpha: float, beta: float,
                  seed: int, batch_size: int) -> np.ndarray:
    """``(frames, h, w)`` uint8 frames of the walk at the finest scale. Frame 0 runs alone, as
    the reconstruction does, so that it equals it bit for bit."""
    previous = pyramid.reconstruct(start + 1) if start < pyramid.coarsest else None
    device = pyramid.device
    out: list[np.ndarray] = []
    batch: list[list[torch.Tensor]] = []

    def flush() -> None:
        noises = [torch.cat(maps).to(device) for maps in zip(*batch, strict=True)]
        coarse = None if previous is None else previous.expand(len(batch), -1, -1, -1)
        images = pyramid.forward_scales(start, 0, noises, coarse)
        out.extend(to_uint8(image[0]) for image in images)
        batch.clear()

    for index, maps in enumerate(noise_walk(pyramid, start, frames, alpha, beta, seed)):
        batch.append(maps)
        if index == 0 or len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return np.stack(out)


def write_gif(path: Path, frames: np.ndarray, fps: float) -> None:
    """A looping grey GIF (atomically). GIF stores 256 grey levels exactly; a frame identical
    to the one before is merged into it by Pillow (it shows for longer)."""
    pictures = [Image.fromarray(frame) for frame in frames]
    with atomic_path(path) as tmp:
        pictures[0].save(tmp, format="GIF", save_all=True, append_images=pictures[1:],
                         duration=round(1000 / fps), loop=0)


def write_mp4(path: Path, frames: np.ndarray, fps: float) -> None:
    """An H.264 MP4 (yuv420p, which needs even sides: an odd last row or column is repeated),
    written by imageio-ffmpeg's ffmpeg (atomically)."""
    import imageio_ffmpeg

    pad = ((0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2))
    frames = np.pad(frames, pad, mode="edge")
    with atomic_path(path) as tmp:
        writer = imageio_ffmpeg.write_frames(str(tmp), (frames.shape[2], frames.shape[1]),
                                             pix_fmt_in="gray", pix_fmt_out="yuv420p", fps=fps,
                                             codec="libx264", quality=8, macro_block_size=1,
                                             ffmpeg_log_level="error")
        writer.send(None)  # start ffmpeg
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
        writer.close()


def _check_request(request: AnimateRequest) -> tuple[Path, str]:
    """The output path and its format; ConfigError for any unusable value (before any work)."""
    if not 1 <= request.frames <= MAX_FRAMES:
        raise ConfigError(f"--frames must be between 1 and {MAX_FRAMES}, got {request.frames}")
    for name in ("alpha", "beta"):
        value = getattr(request, name)
        if not 0 <= value < 1:
            raise ConfigError(f"--{name} must lie in [0, 1), got {value} (at 1 nothing would "
                              "move: every frame would be the reconstruction)")
    if not 0 < request.fps <= MAX_FPS:
        raise ConfigError(f"--fps must be above 0 and at most {MAX_FPS:g}, got {request.fps}")
    check_seed(request.seed)
    if request.batch_size is not None and request.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {request.batch_size}")
    out = Path(request.out) if request.out is not None else Path(request.run_dir) / DEFAULT_FILE
    suffix = out.suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(f"--out must end in .gif or .mp4, not '{out.name}'")
    if suffix == ".mp4":
        try:
            import imageio_ffmpeg  # noqa: F401
        except ImportError:
            raise ConfigError("an MP4 needs the imageio-ffmpeg package (pip install "
                              "imageio-ffmpeg); or write a .gif") from None
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; name the {suffix} file to write")
    if out.exists() and not request.overwrite:
        raise ConfigError(f"{out} already exists; use --overwrite to replace it")
    return out, suffix


def animate(request: AnimateRequest) -> AnimateResult:
    """Write the animation of ``request.run_dir`` (see the module docstring)."""
    out, suffix = _check_request(request)
    device = resolve_device(request.device)
    pyramid = load_run(request.run_dir)
    if not pyramid.is_complete:
        raise RunDirError(f"{request.run_dir} is not fully trained (finest trained scale "
                          f"{pyramid.finest_trained}); finish it with train --resume")
    start = parse_scale(request.start_scale, pyramid.coarsest)
    pyramid.to(device)
    batch_size = request.batch_size or default_batch_size(pyramid, pyramid.shapes[0])
    frames = render_frames(pyramid, start, request.frames, request.alpha, request.beta,
                           request.seed, batch_size)
    (write_gif if suffix == ".gif" else write_mp4)(out, frames, request.fps)
    return AnimateResult(out=out, frames=len(frames), start_scale=start,
                         height=int(frames.shape[1]), width=int(frames.shape[2]),
                         fps=request.fps)
