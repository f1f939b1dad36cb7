"""What a run directory and a manifest give away: source paths stored relative to the run or
the manifest, runs of older versions (absolute paths) still loading, and ``info`` reminding
the user when a run holds identifiers."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pydicom
import pytest

from medsingan.manifest import read_manifest, resolve_image
from medsingan.train import load_run
from tests.conftest import dicom_file, nifti_file
from tests.test_fuzz import run_medsingan

TINY = ("--max-size", "32", "--iters", "4", "--quiet")
NO_SCORES = ("--no-sifid", "--quiet")


def strings(value: object) -> list[str]:
    """Every string in a JSON value."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return []


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """A study folder as hospitals name them: the scan under the patient's name, the run
    beside it."""
    root = tmp_path_factory.mktemp("study")
    scan = root / "SMITH_JOHN_1961" / "ct.dcm"
    scan.parent.mkdir()
    shutil.copyfile(dicom_file("CT_small.dcm"), scan)
    code, _, err = run_medsingan("train", scan, "--out", root / "runs" / "ct", *TINY)
    assert code == 0, err
    return root


def test_a_new_run_stores_its_source_relative_to_the_run_directory(study):
    run_dir, scan = study / "runs" / "ct", study / "SMITH_JOHN_1961" / "ct.dcm"
    config = json.loads((run_dir / "config.json").read_text())
    stored = config["extra"]["source"]["source_path"]
    assert stored == "../../SMITH_JOHN_1961/ct.dcm"
    assert os.path.samefile(run_dir / stored, scan)
    assert not [s for s in strings(config) if str(study) in s or os.path.isabs(s)
                and os.path.exists(s)]  # no absolute path to anything on this machine
    # in memory the path is absolute again, for the commands that read the source
    assert load_run(run_dir).metadata["extra"]["source"]["source_path"] == str(scan.resolve())
    code, out, _ = run_medsingan("info", run_dir)
    assert code == 0 and f"source      {scan.resolve()}\n" in out
    assert "privacy" not in out  # a hash pseudonym, a relative path: nothing to remind of


def test_a_run_moved_with_its_source_still_reads_it_and_manifests_stay_relative(study,
                                                                                 tmp_path):
    moved = Path(shutil.copytree(study, tmp_path / "archive" / "study"))
    samples, manifest = moved / "samples", moved / "manifests" / "ct.csv"
    code, _, err = run_medsingan("augment", moved / "runs" / "ct", "--n", "1", "--start-scale",
                                 "N-1", "--keep-identifiers", "--out", samples, "--manifest",
                                 manifest, *NO_SCORES)
    assert code == 0, err  # --keep-identifiers found the original where the run says
    original = pydicom.dcmread(moved / "SMITH_JOHN_1961" / "ct.dcm")
    written = pydicom.dcmread(next(samples.glob("*.dcm")))
    assert written.PatientName == original.PatientName and original.PatientName
    row = read_manifest(manifest).iloc[0]
    assert row["source_image"] == "../SMITH_JOHN_1961/ct.dcm"
    assert os.path.samefile(resolve_image(manifest, row["source_image"]),
                            moved / "SMITH_JOHN_1961" / "ct.dcm")
    assert str(tmp_path) not in manifest.read_text()


def test_a_run_moved_without_its_source_warns_that_its_rows_name_a_missing_scan(study,
                                                                                  tmp_path):
    """The stored path is relative to the run: moved alone, it points nowhere, and the
    manifest's source_image could not be matched against the real manifest's splits."""
    moved = Path(shutil.copytree(study / "runs" / "ct", tmp_path / "elsewhere" / "ct"))
    code, _, err = run_medsingan("augment", moved, "--n", "1", "--out", tmp_path / "samples",
                                 "--manifest", tmp_path / "m.csv", *NO_SCORES)
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(lines) == 1 and "missing" in lines[0] and "moved without its scan" in lines[0]
    row = read_manifest(tmp_path / "m.csv").iloc[0]
    assert not resolve_image(tmp_path / "m.csv", row["source_image"]).exists()


def test_an_older_run_with_absolute_paths_still_loads_and_info_reminds(study, tmp_path):
    run_dir = Path(shutil.copytree(study / "runs" / "ct", tmp_path / "old"))
    scan = (study / "SMITH_JOHN_1961" / "ct.dcm").resolve()
    config = json.loads((run_dir / "config.json").read_text())
    config["extra"]["source"]["source_path"] = str(scan)  # as medsingan 0.1 wrote it
    config["extra"]["cohort"]["subject_id"] = "MRN-0042"
    (run_dir / "config.json").write_text(json.dumps(config))
    assert load_run(run_dir).metadata["extra"]["source"]["source_path"] == str(scan)
    code, _, err = run_medsingan("augment", run_dir, "--n", "1", "--start-scale", "N-1",
                                 "--keep-identifiers", "--out", tmp_path / "s", "--manifest",
                                 tmp_path / "m.csv", *NO_SCORES)
    assert code == 0, err
    code, out, _ = run_medsingan("info", run_dir)
    reminders = [line for line in out.splitlines() if line.startswith("privacy")]
    assert code == 0 and len(reminders) == 1
    assert f"absolute source path {scan}" in reminders[0] and "'MRN-0042'" in reminders[0]
    code, out, _ = run_medsingan("info", run_dir, "--json")
    assert json.loads(out)["identifiers"] == [f"the absolute source path {scan}",
                                              "the subject ID 'MRN-0042'"]


def test_info_of_a_region_run_shows_the_region_and_the_source_size(tmp_path):
    run_dir = tmp_path / "region"
    code, _, err = run_medsingan("train", dicom_file("CT_small.dcm"), "--roi", "40,30,48,40",
                                 "--out", run_dir, *TINY)
    assert code == 0, err
    code, out, _ = run_medsingan("info", run_dir)
    assert code == 0
    assert "region      X,Y,W,H 40,30,48,40 of the 128 x 128 px source (W x H)\n" in out


def test_a_manifest_of_volume_slices_names_the_volume_relative_to_itself(tmp_path):
    folder = tmp_path / "data" / "normal"
    folder.mkdir(parents=True)
    shutil.copyfile(nifti_file("anatomical.nii"), folder / "anatomical.nii")
    manifest = tmp_path / "manifests" / "real.csv"
    code, _, err = run_medsingan("manifest", "from-folder", tmp_path / "data", "-o", manifest,
                                 "--slices", "2")
    assert code == 0, err
    rows = read_manifest(manifest)
    assert set(rows["source_volume"]) == {"../data/normal/anatomical.nii"}
    assert str(tmp_path) not in manifest.read_text()
