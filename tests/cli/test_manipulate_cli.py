"""`medsingan edit | harmonize | paint | super-resolve` as a user runs them (one tiny run of a
real radiograph, shared with tests/test_manipulate.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from medsingan.io import read_scan
from medsingan.manifest import read_manifest
from tests.cli.in_process import run_in_process
from tests.cli.test_inspect import assert_one_line_error, run_cli
from tests.test_manipulate import hand_run, mask_png, scan_crop  # noqa: F401 - fixture

__all__ = ["hand_run"]


def display_png(path, pixels: np.ndarray):
    """An 8-bit grey picture from values in [0, 1] (what an image editor saves)."""
    Image.fromarray(np.round(pixels * 255).astype(np.uint8)).save(path)
    return path


def test_edit_lesion_in_display_grey_writes_dicoms_mask_grid_and_checked_manifest(hand_run,
                                                                                   tmp_path):
    lesion = display_png(tmp_path / "lesion.png", 0.2 + 0.7 * scan_crop("RG1_UNCR.dcm", 10))
    out, manifest = tmp_path / "edits", tmp_path / "cohort.csv"
    result = run_cli("edit", hand_run, "--lesion", lesion, "--at", "16,20", "--n", "2",
                     "--intensity", "display", "--label", "fracture", "--out", out,
                     "--manifest", manifest)
    assert result.returncode == 0, result.stderr
    assert "2 file(s) written" in result.stdout and "edited box: x 16, y 20, w 10, h 10" \
        in result.stdout and "seam score" in result.stdout
    written = sorted(out.glob("*.dcm"))
    assert len(written) == 2 and all(read_scan(p).shape == (48, 48) for p in written)
    assert (out / "edit_grid.png").is_file()
    frame = read_manifest(manifest)
    assert frame["lesion_w"].tolist() == [10, 10] and set(frame["label"]) == {"fracture"}
    assert (tmp_path / frame["mask"].iloc[0]).is_file()
    check = run_cli("manifest", "check", manifest)
    assert check.returncode == 0, check.stdout + check.stderr


def test_harmonize_paint_and_super_resolve_write_what_they_claim(hand_run, tmp_path):
    composite = display_png(tmp_path / "composite.png", np.full((48, 48), 0.5))
    box = np.zeros((48, 48), bool)
    box[10:20, 10:20] = True
    mask = mask_png(tmp_path / "mask.png", box)
    manifest = tmp_path / "cohort.csv"
    commands = {
        "harmonize": ["--composite", composite, "--mask", mask, "--intensity", "display",
                      "--label", "nodule"],
        "paint": ["--paint", composite, "--intensity", "display", "--inject-scale", "N-1"],
        "super-resolve": ["--factor", "2"],
    }
    for command, options in commands.items():
        result = run_cli(command, hand_run, *options, "--out", tmp_path / command,
                         "--manifest", manifest)
        assert result.returncode == 0, result.stderr
        written = sorted((tmp_path / command).glob("*.dcm"))
        assert len(written) == 1, command
        side = 96 if command == "super-resolve" else 48
        assert read_scan(written[0]).shape == (side, side)
    frame = read_manifest(manifest)
    assert sorted(frame["method"]) == ["harmonize", "paint", "super_resolution"]
    assert run_cli("manifest", "check", manifest).returncode == 0


@pytest.mark.parametrize(("options", "fragment"), [
    (["--lesion", "big.png", "--at", "0,0"], "larger than the run's scan"),
    (["--lesion", "small.png", "--at", "3,3", "--lesion-mask", "other.png"], "must match"),
    (["--lesion", "small.png", "--at", "3,3", "--inject-scale", "N-8"], "out of range"),
    (["--lesion", "small.png", "--at=--5,3"], "--at"),
    (["--lesion", "small.png", "--at", "3,3", "--seed", "-1"], "--seed"),
    (["--lesion", "small.png", "--at", "3,3", "--manifest", "out"], "is a directory"),
])
def test_bad_edit_input_is_one_line_exit_2_and_writes_nothing(hand_run, tmp_path, options,
                                                              fragment):
    display_png(tmp_path / "big.png", np.full((60, 60), 0.5))
    display_png(tmp_path / "small.png", np.full((8, 8), 0.9))
    mask_png(tmp_path / "other.png", np.ones((5, 5), bool))
    if "--manifest" in options:  # an existing folder given as the manifest
        (tmp_path / "out").mkdir()
    else:
        options = [*options, "--manifest", "cohort.csv"]
    result = run_cli("edit", hand_run, *options, "--intensity", "display", "--out", "out",
                     "--label", "fracture", cwd=tmp_path)
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "cohort.csv").exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_harmonize_at_every_scale_prints_each_score_and_keeps_the_best(hand_run, tmp_path,
                                                                       monkeypatch, capsys):
    composite = display_png(tmp_path / "composite.png", np.full((48, 48), 0.5))
    box = np.zeros((48, 48), bool)
    box[14:26, 14:26] = True
    mask = mask_png(tmp_path / "mask.png", box)
    out, manifest = tmp_path / "sweep", tmp_path / "cohort.csv"
    code, stdout, err = run_in_process(
        monkeypatch, capsys, "harmonize", hand_run, "--composite", composite, "--mask", mask,
        "--intensity", "display", "--label", "nodule", "--inject-scale", "all", "--pick",
        "best", "--out", out, "--manifest", manifest)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    scores = {entry["scale"]: entry["score"] for entry in summary["per_scale"]}
    assert sorted(scores) == [1, 2] and summary["criterion"]["name"] == "seam_excess_abs_mean"
    for scale, score in scores.items():
        assert f"scale {scale}: 1 file(s), {score:.4g}" in stdout
    eligible = [e["scale"] for e in summary["per_scale"] if e["eligible"]] or list(scores)
    best = min(eligible, key=scores.get)
    assert f"best scale: {best}" in stdout and f"kept scale {best} only" in stdout
    assert [p.name for p in out.iterdir() if p.is_dir()] == [f"scale_{best}"]
    frame = read_manifest(manifest)
    assert frame["start_scale"].tolist() == [best] and frame["seam"].notna().all()
    assert "--pick" in run_in_process(monkeypatch, capsys, "harmonize", "--help")[1]
