"""A disk that fills up mid-run, and an output folder that cannot be written, on real scans.

The disk is a real one: a small tmpfs mounted for the test (root with mount rights, as in
CI; elsewhere these tests skip), with a ballast file that leaves less room than the command
needs. The command must stop with one line and a non-zero exit, leave no temporary file,
leave its run directory and manifest valid, and finish once the ballast is removed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medsingan import cohort
from medsingan.cohort import train_one, train_tasks
from medsingan.manifest import ManifestRow, append_rows, check_manifest, read_manifest
from tests.conftest import dicom_file
from tests.test_fuzz import assert_one_line_error, run_medsingan

TINY = ("--max-size", "32", "--iters", "4", "--quiet")
PAGE = 4096
FULL = "No space left on device"


@contextlib.contextmanager
def mounted_tmpfs(folder: Path, size: int, *options: str) -> Iterator[Path]:
    """A tmpfs of ``size`` bytes mounted on ``folder`` for the block's duration."""
    folder.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join((f"size={size}",
                                                                      "mode=0755", *options)),
                              "medsingan-test", str(folder)], capture_output=True, text=True,
                             check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'no mount'}); "
                    "the disk-full tests need root with mount rights, as in CI")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """A ballast file that leaves ``leave`` bytes (whole pages) free on ``disk``."""
    status = os.statvfs(disk)
    free = status.f_bavail * status.f_frsize
    ballast = disk / "ballast"
    with open(ballast, "wb") as handle:
        handle.write(b"\0" * max(free - leave // PAGE * PAGE, 0))
    return ballast


def footprint(folder: Path) -> int:
    """Bytes the files under ``folder`` take on a tmpfs (whole pages)."""
    return sum(-(-p.stat().st_size // PAGE) * PAGE for p in folder.rglob("*") if p.is_file())


def leftovers(folder: Path) -> list[Path]:
    """Temporary files of interrupted atomic writes (``.NAME.XXXX.tmpSUFFIX``)."""
    return [p for p in folder.rglob(".*.tmp*")]


def same_weights(a: Path, b: Path) -> bool:
    first, second = load_file(a), load_file(b)
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k])
                                                 for k in first)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    """The tiny CT run trained on a disk with room: what an interrupted run must end as."""
    run_dir = tmp_path_factory.mktemp("reference") / "ct"
    code, _, err = run_medsingan("train", dicom_file("CT_small.dcm"), "--out", run_dir, *TINY)
    assert code == 0, err
    return run_dir


def test_train_on_a_full_disk_stops_in_one_line_and_resumes_once_space_is_freed(
        reference_run, tmp_path):
    need = footprint(reference_run)
    with mounted_tmpfs(tmp_path / "disk", 4 * need) as disk:
        ballast = fill(disk, need // 2)
        run_dir = disk / "ct"
        command = ("train", dicom_file("CT_small.dcm"), "--out", run_dir, *TINY)
        assert_one_line_error(run_medsingan(*command), FULL)
        assert not leftovers(disk)
        code, out, err = run_medsingan("info", run_dir)  # still a valid (partial) run
        assert code == 0 and "incomplete (resume with train --resume)" in out, err
        ballast.unlink()
        code, _, err = run_medsingan(*command, "--resume")
        assert code == 0, err
        assert not leftovers(disk)
        # the resumed run is the uninterrupted one, weight for weight
        assert same_weights(run_dir / "weights.safetensors",
                            reference_run / "weights.safetensors")


def test_augment_on_a_full_disk_stops_in_one_line_and_completes_each_sample_once(
        reference_run, tmp_path):
    with mounted_tmpfs(tmp_path / "disk", 2 << 20) as disk:
        ballast = fill(disk, 4 * PAGE)  # the settings, a sample or two and a manifest
        out, manifest = disk / "samples", disk / "manifests" / "ct.csv"
        command = ("augment", reference_run, "--n", "8", "--start-scale", "N-1", "--no-sifid",
                   "--quiet", "--out", out, "--manifest", manifest)
        assert_one_line_error(run_medsingan(*command), FULL)
        assert not leftovers(disk)
        if manifest.exists():  # what was listed is there
            assert check_manifest(manifest) == []
        ballast.unlink()
        code, _, err = run_medsingan(*command)
        assert code == 0, err
        assert not leftovers(disk) and check_manifest(manifest) == []
        rows = read_manifest(manifest)
        assert sorted(rows["sample_index"]) == list(range(8))  # each sample once
        assert len(list(out.glob("*.dcm"))) == 8


@contextlib.contextmanager
def thread_executor(executing) -> Iterator:
    """The cohort's executor factory, on a thread of this process: a worker process would
    import torch anew (tens of seconds here) and the full disk is the same."""
    pools: list[futures.ThreadPoolExecutor] = []

    def new_pool() -> futures.Executor:
        pools.append(futures.ThreadPoolExecutor(executing.workers))
        return pools[-1]

    try:
        yield new_pool
    finally:
        for pool in pools:
            pool.shutdown(wait=True)


def test_cohort_augment_on_a_full_disk_stops_in_one_line_and_completes_later(tmp_path,
                                                                            monkeypatch):
    monkeypatch.setattr(cohort, "open_executor", thread_executor)
    monkeypatch.setattr(cohort, "_threads", lambda executing: 1)
    scan = tmp_path / "data" / "CT_small.dcm"
    scan.parent.mkdir()
    shutil.copyfile(dicom_file("CT_small.dcm"), scan)
    real = tmp_path / "real.csv"
    append_rows(real, [ManifestRow(image=str(scan), label="normal", split="train",
                                   subject_id="s1", modality="ct", method="real")])
    with mounted_tmpfs(tmp_path / "disk", 4 << 20) as disk:
        runs = disk / "runs"
        for task in train_tasks(real, runs, overrides={"max_size": 32, "iters": 4}):
            assert train_one(task).status == "trained"
        ballast = fill(disk, 3 * PAGE)
        output = disk / "cohort.csv"
        command = ("cohort", "augment", real, "-o", output, "--runs", runs, "--per-scan", "6",
                   "--start-scale", "N-1", "--no-sifid", "--quiet")
        assert_one_line_error(run_medsingan(*command), FULL)
        assert not leftovers(disk) and not output.exists()
        ballast.unlink()
        code, out, err = run_medsingan(*command)
        assert code == 0, err
        assert not leftovers(disk) and check_manifest(output) == []
        merged = read_manifest(output)
        assert merged["synthetic"].sum() == 6 and (~merged["synthetic"]).sum() == 1


@contextlib.contextmanager
def read_only_folder(folder: Path) -> Iterator[Path]:
    """A folder nobody may write to: mode 0555, or (root ignores modes) a read-only tmpfs."""
    if os.geteuid() == 0:
        with mounted_tmpfs(folder, 1 << 20, "ro") as mounted:
            yield mounted
        return
    folder.mkdir()
    folder.chmod(0o555)
    try:
        yield folder
    finally:
        folder.chmod(0o755)


def test_a_read_only_output_folder_is_one_line_and_exit_2(reference_run, tmp_path):
    with read_only_folder(tmp_path / "locked") as locked:
        assert_one_line_error(run_medsingan("train", dicom_file("CT_small.dcm"), "--out",
                                            locked / "ct", *TINY), str(locked / "ct"))
        assert_one_line_error(run_medsingan("augment", reference_run, "--n", "2", "--no-sifid",
                                            "--quiet", "--out", locked / "samples",
                                            "--manifest", tmp_path / "m.csv"),
                              str(locked / "samples"))
        assert_one_line_error(run_medsingan("augment", reference_run, "--n", "2", "--no-sifid",
                                            "--quiet", "--out", tmp_path / "samples",
                                            "--manifest", locked / "m.csv"), "m.csv")
        assert list(locked.iterdir()) == []
