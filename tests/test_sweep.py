"""Scale sweeps (``--start-scale all``, ``--inject-scale all``, ``--pick best``) on tiny runs:
a real CT slice (pydicom's CT_small.dcm) in 4 scales, a real radiograph in 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medsingan.augment import AugmentRequest
from medsingan.errors import ConfigError
from medsingan.io import read_scan
from medsingan.manifest import check_manifest, read_manifest, resolve_image
from medsingan.runs import train_scan
from medsingan.sweep import MAX_SIMILARITY, ScaleOutcome, augment_sweep, pick_best
from medsingan.train import load_run
from tests.cli.in_process import assert_one_line_error_in_process, run_in_process
from tests.conftest import dicom_file

TINY = {"max_size": 32, "min_size": 25, "iters": 4, "nfc": 8, "max_nfc": 8, "seed": 0}


@pytest.fixture(scope="module")
def ct_run(tmp_path_factory) -> Path:
    """Four scales (32, 30, 28, 25 px): N = 3."""
    run_dir = tmp_path_factory.mktemp("sweep") / "ct"
    train_scan(dicom_file("CT_small.dcm"), run_dir, overrides={**TINY, "scale_factor": 0.85},
               progress=False, label="normal", split="train", subject_id="P1")
    assert load_run(run_dir).coarsest == 3
    return run_dir


@pytest.fixture(scope="module")
def two_scale_run(tmp_path_factory) -> Path:
    """Two scales of a real radiograph (pydicom-data's RG3_UNCR.dcm, 32 and 25 px): N = 1, so
    N-1 = 0 leaves no injection scale to sweep."""
    run_dir = tmp_path_factory.mktemp("sweep2") / "hand2"
    train_scan(dicom_file("RG3_UNCR.dcm"), run_dir, overrides={**TINY, "iters": 2},
               progress=False)
    assert load_run(run_dir).coarsest == 1
    return run_dir


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_augment_start_scale_all_scores_every_scale_and_pick_best_keeps_the_lowest(ct_run,
                                                                                  tmp_path):
    out, manifest = tmp_path / "sweep", tmp_path / "cohort.csv"
    request = AugmentRequest(run_dir=ct_run, n=2, start_scale="all", sifid=False, out=out,
                             manifest=manifest, progress=False)
    result = augment_sweep(request)
    frame = read_manifest(manifest)
    assert sorted(frame["start_scale"].unique()) == [0, 1, 2, 3]
    for scale, rows in frame.groupby("start_scale"):
        assert len(rows) == 2
        for image in rows["image"]:  # each scale in its own folder, a real CT slice read back
            path = resolve_image(manifest, image)
            assert path.parent.name == f"start_scale_{scale}"
            assert read_scan(path).meta.modality == "CT"
    assert check_manifest(manifest) == []
    # the summary's per-scale scores are the means of the patch_swd the rows recorded
    recorded = frame.groupby("start_scale")["patch_swd"].mean()
    copies = frame.groupby("start_scale")["copy_score"].mean()
    ssim = frame.groupby("start_scale")["similarity_to_source"].mean()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["criterion"]["name"] == "patch_swd_mean" and summary["picked_scale"] is None
    for entry in summary["per_scale"]:
        assert entry["score"] == pytest.approx(recorded[entry["scale"]], rel=1e-9)
    # the scales that do not reproduce the scan compete (all of them, if none)
    eligible = [s for s in recorded.index
                if copies[s] <= request.max_copy and ssim[s] <= MAX_SIMILARITY]
    assert [e["scale"] for e in summary["per_scale"] if e["eligible"]] == eligible
    lowest = min(eligible or recorded.index, key=lambda s: (recorded[s], s))
    assert summary["best_scale"] == result.best == lowest
    with Image.open(out / "sweep.png") as sheet:  # training image row + one row per scale
        assert sheet.height >= 5 * 128 and sheet.width >= 2 * 128
    before = {p: p.read_bytes() for p in (out / f"start_scale_{lowest}").glob("*.dcm")}

    # the same sweep with --pick best completes nothing (all there) and keeps the best only
    picked = augment_sweep(request, pick="best")
    assert picked.picked == lowest
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pick"] == "best" and summary["picked_scale"] == lowest
    assert sorted(p.name for p in out.iterdir()) == \
        sorted(["summary.json", "sweep.png", f"start_scale_{lowest}"])
    assert {p: p.read_bytes() for p in (out / f"start_scale_{lowest}").glob("*.dcm")} == before
    assert len(before) == 2
    frame = read_manifest(manifest)
    assert frame["start_scale"].tolist() == [lowest, lowest]
    assert check_manifest(manifest) == []


def outcome(scale: int, score: float | None, eligible: bool = True) -> ScaleOutcome:
    return ScaleOutcome(scale=scale, score=score, tiles=[], files=[], listed=[],
                        folder=Path("."), eligible=eligible)


def test_pick_best_is_the_lowest_eligible_score_ties_to_the_finer_scale():
    scores = [(0, 0.1, False), (1, 0.5, True), (2, 0.3, True), (3, 0.3, True), (4, None, True)]
    best, warnings = pick_best([outcome(*s) for s in scores])
    assert best.scale == 2 and warnings == []
    best, warnings = pick_best([outcome(0, 0.4, False), outcome(1, 0.2, False)], "copies")
    assert best.scale == 1 and "every scale of the sweep copies" in warnings[0]


def test_bad_sweep_input_is_one_line_exit_2_and_writes_nothing(ct_run, two_scale_run, tmp_path,
                                                               monkeypatch, capsys):
    lesion = tmp_path / "lesion.png"
    Image.fromarray(np.full((6, 6), 200, np.uint8)).save(lesion)
    out, manifest = tmp_path / "out", tmp_path / "m.csv"
    where = ["--out", out, "--manifest", manifest]
    edit = ["edit", two_scale_run, "--lesion", lesion, "--at", "4,4", "--intensity",
            "display", "--label", "lesion", *where]
    cases = [
        (edit + ["--inject-scale", "all"], "none to sweep"),
        (["paint", two_scale_run, "--paint", lesion, "--intensity", "display",
          "--inject-scale", "all", *where], "none to sweep"),
        (["edit", ct_run, "--lesion", lesion, "--at", "4,4", "--intensity", "display",
          "--label", "lesion", "--pick", "best", *where], "--inject-scale all"),
        (["augment", ct_run, "--n", "1", "--no-sifid", "--pick", "best", *where],
         "--start-scale all"),
        (["augment", ct_run, "--n", "1", "--no-sifid", "--start-scale", "all", "--pick",
          "worst", *where], "--pick must be best"),
    ]
    for args, fragment in cases:
        assert_one_line_error_in_process(run_in_process(monkeypatch, capsys, *args), fragment)
        assert not out.exists() and not manifest.exists(), args


def test_a_sweep_is_refused_before_any_scale_is_written(ct_run, tmp_path, monkeypatch, capsys):
    """A cohort folder of plain augment is no sweep folder; a scale folder holding another
    cohort stops the sweep before its first scale is drawn."""
    manifest = tmp_path / "m.csv"
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "augment.json").write_text("{}")
    assert_one_line_error_in_process(run_in_process(
        monkeypatch, capsys, "augment", ct_run, "--n", "1", "--no-sifid", "--start-scale",
        "all", "--out", plain, "--manifest", manifest), "holds a cohort of augment")
    out = tmp_path / "sweep"
    (out / "start_scale_2").mkdir(parents=True)
    (out / "start_scale_2" / "augment.json").write_text(json.dumps({"start_scale": 0}))
    assert_one_line_error_in_process(run_in_process(
        monkeypatch, capsys, "augment", ct_run, "--n", "1", "--no-sifid", "--start-scale",
        "all", "--out", out, "--manifest", manifest), "other settings")
    assert not manifest.exists()
    assert [p.name for p in files_under(out)] == ["augment.json"]
    with pytest.raises(ConfigError, match="--start-scale all"):
        augment_sweep(AugmentRequest(run_dir=ct_run, n=1, start_scale="N", sifid=False))


def test_augment_cli_sweep_prints_every_scale_and_the_kept_one(ct_run, tmp_path, monkeypatch,
                                                               capsys):
    out, manifest = tmp_path / "sweep", tmp_path / "m.csv"
    code, stdout, err = run_in_process(
        monkeypatch, capsys, "augment", ct_run, "--n", "1", "--no-sifid", "--start-scale",
        "all", "--pick", "best", "--out", out, "--manifest", manifest, "--quiet")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    for scale in range(4):
        assert f"scale {scale}: 1 file(s)" in stdout
    assert f"best scale: {summary['best_scale']}" in stdout and "--pick best: kept scale" in stdout
    frame = read_manifest(manifest)
    assert frame["start_scale"].tolist() == [summary["picked_scale"]]
    scores = {e["scale"]: e["score"] for e in summary["per_scale"] if e["eligible"]}
    assert summary["picked_scale"] == min(scores, key=lambda s: (scores[s], s))
    # the kept sample's row holds the score the summary recorded for its scale
    assert frame["patch_swd"].iloc[0] == pytest.approx(scores[summary["picked_scale"]])


def test_a_start_scale_list_sweeps_those_scales_only(ct_run, tmp_path, monkeypatch, capsys):
    """``--start-scale N-1,N``: the two scales' cohorts, each the same files as a plain augment
    at that start scale, on one sheet; a one-scale or out-of-range list is refused."""
    out, manifest = tmp_path / "sweep", tmp_path / "m.csv"
    code, stdout, err = run_in_process(
        monkeypatch, capsys, "augment", ct_run, "--n", "2", "--no-sifid", "--start-scale",
        "N-1,N", "--out", out, "--manifest", manifest, "--quiet")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scales"] == [2, 3]
    assert sorted(p.name for p in out.iterdir()) == \
        ["start_scale_2", "start_scale_3", "summary.json", "sweep.png"]
    assert sorted(read_manifest(manifest)["start_scale"].unique()) == [2, 3]
    plain = tmp_path / "plain"
    code, _, err = run_in_process(
        monkeypatch, capsys, "augment", ct_run, "--n", "2", "--no-sifid", "--start-scale", "N",
        "--out", plain, "--manifest", tmp_path / "plain.csv", "--quiet")
    assert code == 0, err
    swept = sorted((out / "start_scale_3").glob("*.dcm"))
    assert len(swept) == 2
    for path in swept:
        assert read_scan(path).image.tobytes() == read_scan(plain / path.name).image.tobytes()
    for value, fragment in (("N,N", "names one scale"), ("N,7", "out of range")):
        bad = tmp_path / f"bad{len(fragment)}"
        assert_one_line_error_in_process(run_in_process(
            monkeypatch, capsys, "augment", ct_run, "--n", "1", "--no-sifid", "--start-scale",
            value, "--out", bad, "--manifest", tmp_path / "bad.csv"), fragment)
        assert not bad.exists() and not (tmp_path / "bad.csv").exists()
    # another list into the same folder would leave scale 2 beside the one --pick best keeps
    before = manifest.read_bytes()
    assert_one_line_error_in_process(run_in_process(
        monkeypatch, capsys, "augment", ct_run, "--n", "2", "--no-sifid", "--start-scale",
        "1,N", "--pick", "best", "--out", out, "--manifest", manifest), "start_scale_2")
    assert manifest.read_bytes() == before and not (out / "start_scale_1").exists()
    # --overwrite removes that scale's folder and rows
    code, _, err = run_in_process(
        monkeypatch, capsys, "augment", ct_run, "--n", "2", "--no-sifid", "--start-scale",
        "1,N", "--out", out, "--manifest", manifest, "--overwrite", "--quiet")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == \
        ["start_scale_1", "start_scale_3", "summary.json", "sweep.png"]
    frame = read_manifest(manifest)
    assert sorted(frame["start_scale"]) == [1, 1, 3, 3] and check_manifest(manifest) == []
