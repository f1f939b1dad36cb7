"""Per-scale scores during training (scales.csv, config.json, info), curves.png and the
TensorBoard log, on a real CT slice."""

from __future__ import annotations

import csv
import json
import math
import shutil
import statistics
import sys

import pytest
from PIL import Image

from medsingan.generate import sample
from medsingan.metrics.patch_swd import patch_swd
from medsingan.metrics.sifid import SifidScorer
from medsingan.monitor import MonitorOptions, ScaleScorer
from medsingan.plots import LOSS_PANELS, SCORE_PANELS, training_figure
from medsingan.runs import train_scan
from tests.cli.in_process import assert_one_line_error_in_process, run_in_process
from tests.conftest import dicom_file

# 128 x 128 CT at max side 32 -> 3 scales (32, 29, 25)
TINY = {"max_size": 32, "nfc": 8, "max_nfc": 8, "iters": 6, "log_every": 2, "device": "cpu"}
ITERS, SEED = TINY["iters"], 0


@pytest.fixture(scope="module")
def scored_run(inception_weights, tmp_path_factory):
    """Trained in two calls (the coarsest two scales, then --resume), with SIFID weights and a
    TensorBoard log; curves.png is drawn when each call stops."""
    folder = tmp_path_factory.mktemp("scored")
    run_dir, log_dir = folder / "run", folder / "tb"
    monitor = MonitorOptions(inception_weights=inception_weights, tensorboard=log_dir)
    scan = dicom_file("CT_small.dcm")
    train_scan(scan, run_dir, overrides=TINY, progress=False, last_scale=1, monitor=monitor)
    curves_after_first_call = (run_dir / "curves.png").read_bytes()
    _, pyramid = train_scan(scan, run_dir, overrides=TINY, progress=False, resume=True,
                            monitor=monitor)
    return run_dir, log_dir, pyramid, curves_after_first_call


def _scales_csv(run_dir) -> list[dict[str, str]]:
    with (run_dir / "scales.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def _history(run_dir) -> list[dict[str, str]]:
    with (run_dir / "history.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_every_scale_is_scored_on_its_samples_against_the_real_image_at_that_scale(
        scored_run, inception_weights):
    run_dir, _, pyramid, _ = scored_run
    rows = _scales_csv(run_dir)
    assert [int(r["scale"]) for r in rows] == [2, 1, 0]  # all scales, across the resume
    sifid = SifidScorer(inception_weights)
    for row in rows:
        scale = int(row["scale"])
        real = pyramid.reals[scale]
        assert (int(row["height"]), int(row["width"])) == tuple(real.shape[-2:])
        # the samples of that scale, drawn again, scored one by one by the plain functions
        samples = sample(pyramid, 4, seed=SEED, end_scale=scale, batch_size=1).clamp(-1, 1)
        swd = [patch_swd(real, samples[i:i + 1], patches=2048, directions=256)["mean"]
               for i in range(4)]
        assert int(row["samples"]) == 4
        assert float(row["patch_swd_median"]) == pytest.approx(statistics.median(swd), rel=1e-4)
        assert float(row["patch_swd_mean"]) == pytest.approx(statistics.fmean(swd), rel=1e-4)
        assert float(row["sifid_median"]) == pytest.approx(
            statistics.median(sifid.score(real, samples)), rel=1e-4)
        assert row["sifid_variant"] == "paper"
    config = json.loads((run_dir / "config.json").read_text())
    assert all(len(config["progress"][str(s)]["scores"]["patch_swd"]) == 4 for s in (0, 1, 2))


def test_info_prints_the_scores_of_every_scale(scored_run, monkeypatch, capsys):
    run_dir = scored_run[0]
    code, out, err = run_in_process(monkeypatch, capsys, "info", run_dir)
    assert code == 0, err
    lines = out.splitlines()
    header = lines.index("scale  patch SWD  SIFID (paper)")
    rows = {int(r["scale"]): r for r in _scales_csv(run_dir)}
    for offset, expected_scale in enumerate((0, 1, 2), start=1):  # finest first, as above it
        scale, swd, sifid = lines[header + offset].split()
        row = rows[int(scale)]
        assert int(scale) == expected_scale
        assert float(swd) == pytest.approx(float(row["patch_swd_median"]), rel=1e-3)
        assert float(sifid) == pytest.approx(float(row["sifid_median"]), rel=1e-3)
    code, out, _ = run_in_process(monkeypatch, capsys, "info", run_dir, "--json")
    summary = {s["scale"]: s for s in json.loads(out)["scales"]}
    assert all(summary[s]["patch_swd"] > 0 and summary[s]["sifid_variant"] == "paper"
               for s in (0, 1, 2))


def test_a_run_without_scores_still_has_its_info(scored_run, tmp_path, monkeypatch, capsys):
    """A run trained before scores existed: no score block, nothing breaks."""
    old = tmp_path / "old"
    shutil.copytree(scored_run[0], old)
    config = json.loads((old / "config.json").read_text())
    for entry in config["progress"].values():
        del entry["scores"]
    (old / "config.json").write_text(json.dumps(config))
    code, out, err = run_in_process(monkeypatch, capsys, "info", old)
    assert code == 0 and "noise amp" in out and "patch SWD" not in out, err


def test_without_weights_sifid_is_left_out_and_patch_swd_is_still_scored(scored_run):
    # 32 x 32: every patch is a descriptor, so the image scores 0 against itself (clipped to
    # [-1, 1] as the samples are: resizing the pyramid overshoots it a little)
    real = scored_run[2].reals[0].clamp(-1, 1)
    scores = ScaleScorer(None)(real, real.expand(2, -1, -1, -1))
    assert scores["patch_swd"] == [0.0, 0.0] and scores["sifid"] is None
    assert scores["sifid_variant"] is None and scores["samples"] == 2


def test_curves_png_is_drawn_when_training_stops(scored_run):
    run_dir, _, _, first = scored_run
    final = (run_dir / "curves.png").read_bytes()
    assert first != final  # redrawn by the resumed call, with the finest scale
    with Image.open(run_dir / "curves.png") as image:
        assert image.format == "PNG" and image.size == (1080, 720)
        assert image.info["Software"].startswith("Matplotlib")


def test_curves_have_a_panel_per_loss_labelled_scales_and_a_log_reconstruction_axis(
        scored_run):
    run_dir = scored_run[0]
    history = [{k: float(v) for k, v in row.items()} for row in _history(run_dir)]
    config = json.loads((run_dir / "config.json").read_text())
    shapes = config["geometry"]["shapes"]
    scales = [{"scale": s, "height": shapes[s][0], "width": shapes[s][1],
               "scores": config["progress"][str(s)]["scores"]} for s in (2, 1, 0)]
    figure = training_figure(history, scales)
    losses, scores = figure.axes[:len(LOSS_PANELS)], figure.axes[len(LOSS_PANELS):]
    assert [a.get_ylabel() for a in losses] == [label for _, label, _ in LOSS_PANELS]
    assert [a.get_yscale() for a in losses] == ["linear", "linear", "log", "linear"]
    boundaries = sorted({line.get_xdata()[0] for line in losses[0].get_lines()
                         if line.get_linestyle() == "--"})
    assert boundaries == [ITERS, 2 * ITERS]  # where scales 1 and 0 start
    top = losses[0].child_axes[0]
    assert [t.get_text() for t in top.get_xticklabels()] == [
        "scale 2\n25x25", "scale 1\n29x29", "scale 0\n32x32"]
    assert len(scores) == 2 and "patch SWD" in scores[0].get_title(loc="left")
    assert "SIFID (paper)" in scores[1].get_title(loc="left")
    medians = scores[0].get_lines()[0].get_ydata()
    assert list(medians) == pytest.approx(
        [statistics.median(s["scores"]["patch_swd"]) for s in scales])


def test_an_explicit_loss_run_draws_its_patch_loss_and_no_critic_panels(scored_run):
    """A critic-free run's history (train --loss: d_loss and gp NaN, g_adv the patch loss):
    two loss panels, the patch loss's line the history's values."""
    history = [{k: float(v) for k, v in row.items()} | {"d_loss": math.nan, "gp": math.nan}
               for row in _history(scored_run[0])]
    figure = training_figure(history, [])
    losses = figure.axes[:2]
    assert [a.get_ylabel() for a in losses] == ["patch loss", "reconstruction MSE"]
    assert [a.get_yscale() for a in losses] == ["linear", "log"]
    drawn = [y for line in losses[0].get_lines() if line.get_linestyle() == "-"
             for y in line.get_ydata()]
    assert drawn == pytest.approx([row["g_adv"] for row in history])
    assert len(figure.axes) == 2 + len(SCORE_PANELS)  # no critic loss or penalty panel


def test_tensorboard_log_holds_the_history_and_the_scores(scored_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, log_dir, _, _ = scored_run
    events = EventAccumulator(str(log_dir))
    events.Reload()
    history = _history(run_dir)
    rec = events.Scalars("loss/rec_loss")
    assert [e.step for e in rec] == [(2 - int(r["scale"])) * ITERS + int(r["iter"])
                                     for r in history]
    assert [e.value for e in rec] == pytest.approx([float(r["rec_loss"]) for r in history],
                                                   rel=1e-6)
    swd = events.Scalars("scale/patch_swd")
    assert [e.step for e in swd] == [ITERS, 2 * ITERS, 3 * ITERS]
    assert [e.value for e in swd] == pytest.approx(
        [float(r["patch_swd_median"]) for r in _scales_csv(run_dir)], rel=1e-6)
    assert len(events.Scalars("scale/sifid")) == 3


def test_tensorboard_missing_is_one_line_and_nothing_is_written(tmp_path, monkeypatch,
                                                                capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    run_dir, log_dir = tmp_path / "run", tmp_path / "tb"
    result = run_in_process(monkeypatch, capsys, "train", dicom_file("CT_small.dcm"), "--out",
                            run_dir, "--max-size", "32", "--iters", "2", "--quiet",
                            "--tensorboard", log_dir)
    assert_one_line_error_in_process(result, "--tensorboard", "pip install tensorboard")
    assert not run_dir.exists() and not log_dir.exists()


def test_a_missing_weights_file_named_for_training_stops_it_before_any_write(
        tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    result = run_in_process(monkeypatch, capsys, "train", dicom_file("CT_small.dcm"), "--out",
                            run_dir, "--max-size", "32", "--iters", "2", "--quiet",
                            "--inception-weights", tmp_path / "nope.pth")
    assert_one_line_error_in_process(result, "nope.pth")
    assert not run_dir.exists()
