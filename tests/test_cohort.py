"""Cohorts on real scans: a labelled folder -> a real manifest split by subject -> one model per
training scan -> one merged manifest, on a local process pool and on a Dask LocalCluster,
surviving a killed worker."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from medsingan.manifest import check_manifest, read_manifest, resolve_image
from tests.cli.test_inspect import assert_one_line_error, run_cli, run_console
from tests.conftest import dicom_file

TINY = ("--max-size", "32", "--iters", "4", "--quiet")


def labelled_folder(root: Path) -> Path:
    """ImageFolder layout of real scans: normal/ (CT_small, RG1_UNCR), abnormal/ (MR_small,
    and the 10-frame emri_small: one patient, several slices)."""
    folder = root / "data"
    for label, names in (("normal", ("CT_small.dcm", "RG1_UNCR.dcm")),
                         ("abnormal", ("MR_small.dcm", "emri_small.dcm"))):
        (folder / label).mkdir(parents=True)
        for name in names:
            shutil.copyfile(dicom_file(name), folder / label / name)
    return folder


def test_from_folder_and_split_keep_every_subject_on_one_side(tmp_path):
    folder = labelled_folder(tmp_path)
    # an export's habits: a series subfolder with a file named by UID, a note beside it
    (folder / "normal" / "study" / "series").mkdir(parents=True)
    shutil.copyfile(dicom_file("CT_small.dcm"), folder / "normal" / "study" / "series" /
                    "1.2.840.113619.2.55.3")
    (folder / "normal" / "study" / "README").write_text("exported by a PACS")
    real = tmp_path / "real.csv"
    made = run_cli("manifest", "from-folder", folder, "-o", real, "--slices", "all")
    assert made.returncode == 0, made.stderr
    assert "warning: study/README skipped" not in made.stderr  # not a scan: not even tried
    frame = read_manifest(real)
    assert len(frame) == 4 + 10 and not frame["synthetic"].any()
    uid_row = frame[frame["image"].str.endswith("1.2.840.113619.2.55.3")]
    assert uid_row["label"].tolist() == ["normal"]  # the class folder, not "series"
    ct_subjects = frame.loc[frame["image"].str.contains("CT_small|113619"), "subject_id"]
    assert ct_subjects.nunique() == 1  # two files of one patient: one subject
    assert set(frame["method"]) == {"real"} and set(frame["split"]) == {""}
    label = dict(zip(frame["image"], frame["label"], strict=True))
    assert label["data/normal/CT_small.dcm"] == "normal"
    assert {label[p] for p in frame["image"] if "emri_small" in p} == {"abnormal"}
    # the subject is a pseudonym of the Patient ID: grouped, never the ID itself
    ids = {str(pydicom.dcmread(dicom_file(n), stop_before_pixels=True).get("PatientID", ""))
           for n in ("CT_small.dcm", "RG1_UNCR.dcm", "MR_small.dcm")}
    assert not ids & set(frame["subject_id"])
    frames = frame[frame["image"].str.contains("emri_small")]
    assert frames["subject_id"].nunique() == 1 and len(frames) == 10
    # each slice is a 2D file that pydicom's frame k equals (read independently)
    stack = pydicom.dcmread(dicom_file("emri_small.dcm")).pixel_array
    import nibabel as nib

    for _, row in frames.iterrows():
        voxels = nib.load(resolve_image(real, row["image"])).get_fdata()[:, :, 0]
        np.testing.assert_array_equal(voxels, stack[int(row["frame"])])
    for seed in range(5):
        split = run_cli("manifest", "split", real, "--test", "0.3", "--seed", seed,
                        "-o", tmp_path / f"split{seed}.csv")
        assert split.returncode == 0, split.stderr
        table = read_manifest(tmp_path / f"split{seed}.csv")
        assert table.groupby("subject_id")["split"].nunique().max() == 1
        assert {"train", "test"} <= set(table["split"])
        # stratified: each label keeps a training subject
        assert set(table.loc[table["split"] == "train", "label"]) == {"normal", "abnormal"}
        assert check_manifest(tmp_path / f"split{seed}.csv") == []


@pytest.fixture(scope="module")
def split_manifest(tmp_path_factory):
    """Three real scans of three subjects: two for training, one for test."""
    root = tmp_path_factory.mktemp("cohort")
    folder = root / "data"
    for label, name in (("normal", "CT_small.dcm"), ("abnormal", "MR_small.dcm"),
                        ("normal", "RG1_UNCR.dcm")):
        (folder / label).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(dicom_file(name), folder / label / name)
    real = root / "real.csv"
    assert run_cli("manifest", "from-folder", folder, "-o", real).returncode == 0
    table = pd.read_csv(real, keep_default_na=False)
    table["split"] = ["train", "train", "test"]  # MR_small, CT_small | RG1_UNCR
    assert table["image"].iloc[2].endswith("RG1_UNCR.dcm")
    table.to_csv(real, index=False)
    return real


def assert_cohort_manifest(merged: Path, real: Path, per_scan: int) -> pd.DataFrame:
    from monai.data import CSVDataset
    from monai.transforms import Compose, Lambdad, LoadImaged

    assert check_manifest(merged) == []
    frame = read_manifest(merged)
    real_rows = frame[~frame["synthetic"]]
    synthetic = frame[frame["synthetic"]]
    assert len(real_rows) == len(read_manifest(real)) == 3
    train_subjects = set(real_rows.loc[real_rows["split"] == "train", "subject_id"])
    assert len(synthetic) == per_scan * len(train_subjects)
    assert synthetic.groupby("subject_id").size().to_dict() == dict.fromkeys(
        train_subjects, per_scan)
    assert set(synthetic["split"]) == {"train"} and synthetic["image"].is_unique
    assert not synthetic["source_image"].str.contains("RG1_UNCR").any()  # the test scan
    folder = str(merged.parent)
    dataset = CSVDataset(src=str(merged), transform=Compose([
        Lambdad("image", lambda p: f"{folder}/{p}"), LoadImaged(keys="image")]))
    assert len(dataset) == len(frame) and dataset[len(frame) - 1]["image"].ndim == 2
    return frame


def _descendants(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                children.append(int(entry.name))
    return children + [grand for child in children for grand in _descendants(child)]


def _workers(pid: int) -> list[int]:
    """Worker processes under ``pid`` (multiprocessing spawn children, not its helpers)."""
    found = []
    for child in _descendants(pid):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"spawn_main" in command and b"resource_tracker" not in command:
            found.append(child)
    return found


@pytest.mark.parametrize("where", [["--workers", "2"], ["--scheduler", "local",
                                                        "--workers", "2"]],
                         ids=["process-pool", "dask-local-cluster"])
def test_a_cohort_survives_a_killed_worker_gives_one_valid_manifest_and_reruns_skip(
        split_manifest, tmp_path, where):
    runs = tmp_path / "runs"
    command = [sys.executable, "-c", "from medsingan.cli import main; main()", "cohort",
               "train", str(split_manifest), "--runs", str(runs), "--max-size", "32",
               "--iters", "40", "--quiet", *where]
    coordinator = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 240
    while not list(runs.glob("*/config.json")) and time.monotonic() < deadline:
        assert coordinator.poll() is None, coordinator.communicate()
        time.sleep(0.1)
    victims = _workers(coordinator.pid)  # while the models train
    assert victims, "no worker process found"
    for victim in victims:
        os.kill(victim, signal.SIGKILL)
    out, err = coordinator.communicate(timeout=600)
    assert coordinator.returncode == 0, err
    assert "2 trained" in out, out
    assert len(list(runs.iterdir())) == 2  # the test scan got no model
    reruns = 2 if where[0] == "--workers" else 1  # re-running is the same code on Dask
    if reruns == 2:
        again = run_console("cohort", "train", split_manifest, "--runs", runs, *TINY, *where)
        assert again.returncode == 0 and "2 skipped" in again.stdout, again.stderr
    merged = tmp_path / "cohort.csv"
    for _ in range(reruns):  # the second time completes nothing and duplicates nothing
        augmented = run_console("cohort", "augment", split_manifest, "--runs", runs,
                                "--per-scan", "3", "-o", merged, "--no-sifid", "--quiet",
                                *where)
        assert augmented.returncode == 0, augmented.stderr
        assert_cohort_manifest(merged, split_manifest, 3)
    assert (tmp_path / "cohort_summary.png").is_file()


def test_bad_cohort_input_is_one_line_and_writes_nothing(split_manifest, tmp_path):
    out = tmp_path / "out"
    no_columns = tmp_path / "bad.csv"
    no_columns.write_text("image,label\nx.dcm,normal\n")
    assert_one_line_error(run_cli("cohort", "train", no_columns, "--runs", out, *TINY),
                          "missing required column")
    missing = tmp_path / "missing.csv"
    table = pd.read_csv(split_manifest, keep_default_na=False)
    table["image"] = [str(resolve_image(split_manifest, p)) for p in table["image"]]
    table.loc[0, "image"] = str(tmp_path / "gone.dcm")
    table.to_csv(missing, index=False)
    assert_one_line_error(run_cli("cohort", "train", missing, "--runs", out, *TINY),
                          "missing", "gone.dcm")
    assert_one_line_error(run_cli("cohort", "augment", split_manifest, "--runs", out,
                                  "--per-scan", "0", "-o", out / "m.csv", "--no-sifid"),
                          "--per-scan")
    assert_one_line_error(run_cli("cohort", "train", split_manifest, "--runs", out,
                                  "--scheduler", "tcp://127.0.0.1:9", *TINY),
                          "cannot reach the Dask scheduler")
    assert_one_line_error(run_cli("cohort", "train", split_manifest, "--runs", out,
                                  "--scheduler", "nonsense", *TINY), "Dask scheduler")
    assert_one_line_error(run_cli("cohort", "train", split_manifest, "--runs", out,
                                  "--split", "test", *TINY), "--split test is refused")
    no_dask = [sys.executable, "-c", "import sys; sys.modules['dask'] = None; "
               "sys.modules['dask.distributed'] = None; from medsingan.cli import main; main()",
               "cohort", "train", str(split_manifest), "--runs", str(out), "--scheduler",
               "local", *TINY]
    assert_one_line_error(subprocess.run(no_dask, capture_output=True, text=True, check=False),
                          "medsingan[dask]")
    assert not out.exists()
