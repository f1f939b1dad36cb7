"""`medsingan animate` on a tiny real run (CT slice): frame count, first frame, smoothness,
formats and bad input."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

from medsingan.animate import AnimateRequest, animate, render_frames
from medsingan.generate import reconstruct, sample
from medsingan.runs import train_scan
from medsingan.train import load_run
from tests.cli.in_process import assert_one_line_error_in_process, run_in_process
from tests.cli.test_inspect import run_cli
from tests.conftest import dicom_file

# 128 x 128 CT at max side 32 -> 3 scales (32, 29, 25)
TINY = {"max_size": 32, "nfc": 8, "max_nfc": 8, "iters": 8, "log_every": 4, "device": "cpu"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("animate") / "run"
    train_scan(dicom_file("CT_small.dcm"), folder, overrides=TINY, progress=False)
    return folder


def _grey(images: torch.Tensor) -> np.ndarray:
    """``(B, 1, h, w)`` in [-1, 1] -> ``(B, h, w)`` 8-bit grey, as a viewer shows it."""
    return np.rint((images[:, 0].clamp(-1, 1).numpy() + 1) / 2 * 255).astype(np.uint8)


def _gif_frames(path) -> tuple[list[np.ndarray], list[int]]:
    with Image.open(path) as gif:
        frames = [np.asarray(frame.convert("L")) for frame in ImageSequence.Iterator(gif)]
        gif.seek(0)
        return frames, [gif.info["duration"]]


def _mean_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(float) - b.astype(float)).mean())


def test_the_gif_has_the_frames_asked_for_and_starts_at_the_reconstruction(run_dir, tmp_path):
    clip = tmp_path / "clip.gif"
    result = run_cli("animate", run_dir, "--frames", "12", "--start-scale", "N-1", "-o", clip)
    assert result.returncode == 0, result.stderr
    frames, (duration,) = _gif_frames(clip)
    assert len(frames) == 12 and duration == 100  # 10 fps
    pyramid = load_run(run_dir)
    assert all(frame.shape == pyramid.shapes[0] for frame in frames)
    assert np.array_equal(frames[0], _grey(reconstruct(pyramid))[0])
    assert not np.array_equal(frames[-1], frames[0])  # the walk moves


def test_consecutive_frames_differ_less_than_random_samples(run_dir, tmp_path):
    clip = tmp_path / "walk.gif"
    result = animate(AnimateRequest(run_dir, frames=16, out=clip, device="cpu"))
    assert result.start_scale == 2 and result.frames == 16  # default: the coarsest scale
    frames, _ = _gif_frames(clip)
    steps = [_mean_difference(a, b) for a, b in zip(frames, frames[1:], strict=False)]
    samples = _grey(sample(load_run(run_dir), 8, start_scale=2, seed=3))
    apart = [_mean_difference(samples[i], samples[j]) for i in range(8) for j in range(i)]
    assert max(steps) < 0.5 * float(np.mean(apart)), (steps, np.mean(apart))


def test_the_walk_is_the_same_whatever_the_batch_size(run_dir):
    pyramid = load_run(run_dir)
    one = render_frames(pyramid, 2, 7, 0.1, 0.9, seed=5, batch_size=1)
    four = render_frames(pyramid, 2, 7, 0.1, 0.9, seed=5, batch_size=4)
    assert np.array_equal(one[0], four[0])
    assert np.abs(one.astype(int) - four.astype(int)).max() <= 1  # float rounding only
    other_seed = render_frames(pyramid, 2, 7, 0.1, 0.9, seed=6, batch_size=4)
    assert np.array_equal(other_seed[0], one[0]) and not np.array_equal(other_seed, one)


def test_an_mp4_has_the_frames_asked_for(run_dir, tmp_path):
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    clip = tmp_path / "clip.mp4"
    animate(AnimateRequest(run_dir, frames=9, fps=5, out=clip, device="cpu"))
    reader = imageio_ffmpeg.read_frames(str(clip), pix_fmt="gray", bpp=1)
    meta = next(reader)
    frames = [np.frombuffer(f, np.uint8).reshape(meta["size"][::-1]) for f in reader]
    assert len(frames) == 9 and meta["size"] == (32, 32) and meta["fps"] == 5
    reference = _grey(reconstruct(load_run(run_dir)))[0]
    assert _mean_difference(frames[0], reference) < 3  # lossy, but the reconstruction


@pytest.mark.parametrize(("args", "fragment"), [
    (("--frames", "0"), "--frames"),
    (("--frames", "1001"), "--frames"),
    (("--alpha", "1"), "--alpha"),
    (("--beta", "-0.1"), "--beta"),
    (("--fps", "0"), "--fps"),
    (("--seed", "-1"), "--seed"),
    (("--start-scale", "N-3"), "--start-scale"),
    (("--start-scale", "coarse"), "--start-scale"),
])
def test_bad_values_are_one_line_and_nothing_is_written(run_dir, tmp_path, monkeypatch, capsys,
                                                        args, fragment):
    clip = tmp_path / "clip.gif"
    result = run_in_process(monkeypatch, capsys, "animate", run_dir, "-o", clip, *args)
    assert_one_line_error_in_process(result, fragment)
    assert list(tmp_path.iterdir()) == []


def test_bad_outputs_and_runs_are_one_line_and_nothing_is_written(run_dir, tmp_path,
                                                                  monkeypatch, capsys):
    def refused(*args: object, fragment: str) -> None:
        result = run_in_process(monkeypatch, capsys, "animate", *args)
        assert_one_line_error_in_process(result, fragment)

    refused(run_dir, "-o", tmp_path / "clip.png", fragment=".gif or .mp4")
    refused(tmp_path / "no_run", "-o", tmp_path / "clip.gif", fragment="does not exist")
    folder = tmp_path / "folder.gif"
    folder.mkdir()
    refused(run_dir, "-o", folder, fragment="is a folder")
    folder.rmdir()
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # as if not installed
    refused(run_dir, "-o", tmp_path / "clip.mp4", fragment="imageio-ffmpeg")
    assert list(tmp_path.iterdir()) == []
    existing = tmp_path / "clip.gif"
    existing.write_bytes(b"keep")
    refused(run_dir, "-o", existing, fragment="--overwrite")
    assert existing.read_bytes() == b"keep"
