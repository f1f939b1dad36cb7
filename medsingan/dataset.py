"""A labelled folder of real scans -> a real-image manifest, and splits by subject.

The real side of a cohort: ``manifest from-folder`` lists every scan of a folder tree with its
label (the parent folder's name, ImageFolder layout, or a labels CSV), its subject (a pseudonym
of the DICOM Patient ID, or a regular expression on the file name) and ``method=real``;
``manifest split`` assigns train/val/test by subject, so that no patient is on two sides.

A volume (a 3D NIfTI, a multi-frame DICOM) is a stack of slices: each slice taken
(``slices="middle"``, ``"all"`` or an index) is written as a one-slice NIfTI file with the
volume's geometry into ``slices/`` beside the manifest, so that every row is one 2D image
that medsingan and MONAI's ``LoadImage`` read alike.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from medsingan.errors import ConfigError, ScanReadError, warn_user
from medsingan.io import read_scan, scan_format
from medsingan.io.nifti import write_nifti
from medsingan.manifest import (
    ManifestRow,
    append_rows,
    merge_manifests,
    read_manifest,
    set_column,
)

SCAN_SUFFIXES = (".dcm", ".dicom", ".ima", ".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr",
                 ".png", ".tif", ".tiff", ".jpg", ".jpeg")
# Files of a DICOM export that hold no image.
_NOT_IMAGES = ("dicomdir",)
SLICES_FOLDER = "slices"


@dataclass(frozen=True)
class FolderOptions:
    """How ``manifest from-folder`` reads a folder (see :func:`manifest_from_folder`)."""

    labels: Path | None = None
    subject_regex: str | None = None
    slices: str = "middle"
    modality: str = ""


def _is_scan(path: Path) -> bool:
    """A scan by its suffix, or a DICOM file by its magic (exports name files by UID, e.g.
    ``1.2.840.113619.2.55.3``, or give them no suffix at all)."""
    name = path.name.lower()
    if name.startswith(".") or name in _NOT_IMAGES:
        return False
    if name.endswith(SCAN_SUFFIXES):
        return True
    with open(path, "rb") as handle:
        handle.seek(128)
        return handle.read(4) == b"DICM"


def pseudonym(patient_id: str) -> str:
    """A subject pseudonym from a Patient ID: the same ID gives the same pseudonym, and the
    manifest (and every synthetic DICOM, whose Patient ID it becomes) never holds the ID.

    >>> pseudonym("12345") == pseudonym("12345"), pseudonym("12345")[:4]
    (True, 'pid-')
    """
    return "pid-" + hashlib.sha256(patient_id.encode("utf-8")).hexdigest()[:12]


def _labels_table(path: Path) -> dict[str, str]:
    """``image -> label`` from a CSV with columns ``image`` and ``label`` (the image as a path
    relative to the folder, or a file name)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise ConfigError(f"--labels {path}: {exc.strerror or exc}") from None
    if not rows or not {"image", "label"} <= set(rows[0]):
        raise ConfigError(f"--labels {path} needs the columns image and label")
    return {row["image"].strip(): row["label"].strip() for row in rows}


def _subject(path: Path, regex: re.Pattern[str] | None) -> str:
    if regex is not None:
        match = regex.search(path.name)
        if match is None:
            raise ConfigError(f"--subject-regex {regex.pattern!r} does not match {path.name}")
        return match.group(1) if match.groups() else match.group(0)
    if scan_format(path) == "dicom":
        patient = str(pydicom.dcmread(path, stop_before_pixels=True)
                      .get("PatientID", "")).strip()
        if patient:
            return pseudonym(patient)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return f"src-{digest[:12]}"


def _slice_choice(text: str, depth: int, name: str) -> list[int]:
    if text == "all":
        return list(range(depth))
    if text == "middle":
        return [depth // 2]
    if not re.fullmatch(r"[0-9]+", text):
        raise ConfigError(f"--slices must be all, middle or a slice index, not {text!r}")
    index = int(text)
    if index >= depth:
        raise ConfigError(f"--slices {index}: {name} has {depth} slice(s) (0..{depth - 1})")
    return [index]


def _depth(path: Path) -> tuple[str, int]:
    """(``"frame"`` or ``"slice"``, count) of a file: 1 for a 2D image."""
    kind = scan_format(path)
    if kind == "dicom":
        frames = int(pydicom.dcmread(path, stop_before_pixels=True).get("NumberOfFrames", 1)
                     or 1)
        return "frame", frames
    if kind == "nifti":
        import nibabel as nib

        shape = (*nib.load(str(path)).shape, 1, 1)[:4]
        if shape[3] > 1:
            raise ScanReadError(f"{path.name} is 4D; list one volume of it")
        single = [axis for axis in range(3) if shape[axis] == 1]  # read_nifti's default axis
        return "slice", int(shape[single[0] if len(single) == 1 else 2])
    return "slice", 1


def manifest_from_folder(folder: Path, output: Path, options: FolderOptions) -> int:
    """Write the real-image manifest of every scan under ``folder``; returns the row count.

    Label: the file's entry in ``options.labels``, else its parent folder's name (empty for
    files directly in ``folder``). Subject: ``options.subject_regex``'s first group (or whole
    match) on the file name, else a pseudonym of the DICOM Patient ID, else the file's own
    ``src-<sha256>``. Split is left empty (``manifest split`` assigns it).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder")
    if output.exists():
        raise ConfigError(f"{output} already exists; remove it or choose another -o")
    regex = None
    if options.subject_regex is not None:
        try:
            regex = re.compile(options.subject_regex)
        except re.error as exc:
            raise ConfigError(f"--subject-regex is not a regular expression ({exc})") from None
    labels = _labels_table(options.labels) if options.labels else None
    files = sorted(p for p in folder.rglob("*") if p.is_file() and _is_scan(p)
                   and SLICES_FOLDER not in p.relative_to(folder).parts[:1])
    if not files:
        raise ConfigError(f"{folder} holds no scan files ({', '.join(SCAN_SUFFIXES)})")
    rows: list[ManifestRow] = []
    slices_dir = output.parent / SLICES_FOLDER
    written: list[Path] = []
    try:
        for path in files:
            relative = path.relative_to(folder).as_posix()
            if labels is not None:
                label = labels.get(relative, labels.get(path.name))
                if label is None:
                    raise ConfigError(f"--labels has no row for {relative}")
            else:  # the class folder: the first one below FOLDER (a series may sit deeper)
                parts = path.relative_to(folder).parts
                label = parts[0] if len(parts) > 1 else ""
            try:
                subject = _subject(path, regex)
                rows += _rows_of(path, relative, label, subject, options, slices_dir, written)
            except ConfigError:
                raise
            except Exception as exc:  # one unreadable file of an export: said, skipped
                warn_user([f"{relative} skipped: {' '.join(str(exc).split())[:200]}"])
        if not rows:
            raise ConfigError(f"no readable scan in {folder}")
        return append_rows(output, rows)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def _rows_of(path: Path, relative: str, label: str, subject: str, options: FolderOptions,
             slices_dir: Path, written: list[Path]) -> list[ManifestRow]:
    """The real rows of one file: itself, or the slices taken of a volume (each written as a
    2D NIfTI into ``slices_dir`` and added to ``written``)."""
    kind, depth = _depth(path)
    indices = _slice_choice(options.slices, depth, path.name) if depth > 1 else [None]
    rows = []
    for index in indices:
        option = {"frame": index} if kind == "frame" else {"slice_index": index}
        scan = read_scan(path, **option) if index is not None else read_scan(path)
        image = path
        extra: dict[str, object] = {}
        if index is not None:
            stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", relative)
            image = slices_dir / f"{stem}_{kind}{index:04d}.nii.gz"
            write_nifti(scan.image, scan.meta, image,
                        description="real slice extracted by medsingan")
            written.append(image)
            extra = {"source_volume": str(path.resolve()), kind: index}
        rows.append(ManifestRow(
            image=str(Path(image).resolve()), label=label, split="", synthetic=False,
            subject_id=subject, modality=options.modality, method="real",
            height=scan.shape[0], width=scan.shape[1], extra=extra))
    return rows


def split_by_subject(manifest: Path, *, test: float, val: float = 0.0, seed: int = 0,
                     output: Path | None = None) -> dict[str, int]:
    """Assign ``split`` (train/val/test) to every row of a real-image manifest by subject.

    Subjects are grouped by label (a subject's most frequent one) and each group is shuffled
    with ``seed`` and cut in the proportions asked for, so the splits are stratified by label
    where the counts allow; every subject is on one side only, and each label keeps at least
    one training subject. Returns the number of rows per split.
    """
    for name, value in (("--test", test), ("--val", val)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{name} must be a fraction in [0, 1), not {value}")
    if test + val >= 1.0:
        raise ConfigError(f"--test {test} + --val {val} leave nothing to train on")
    frame = read_manifest(manifest)
    if frame.empty:
        raise ConfigError(f"{manifest} has no rows")
    if frame["synthetic"].any():
        raise ConfigError(f"{manifest} has synthetic rows: split the real manifest before "
                          "augmenting (synthetic rows inherit their source's split)")
    if (frame["subject_id"].astype(str) == "").any():
        raise ConfigError(f"{manifest}: every row needs a subject_id to split by subject")
    label_of = (frame.groupby("subject_id")["label"]
                .agg(lambda labels: labels.value_counts().index[0]))
    by_label: dict[str, list[str]] = defaultdict(list)
    for subject, label in sorted(label_of.items()):
        by_label[str(label)].append(str(subject))
    rng = np.random.default_rng(seed)
    split_of: dict[str, str] = {}
    for label in sorted(by_label):
        subjects = list(by_label[label])
        rng.shuffle(subjects)
        count = len(subjects)
        n_test = min(_share(test, count), count - 1)
        n_val = min(_share(val, count), count - 1 - n_test)
        for k, subject in enumerate(subjects):
            split_of[subject] = ("test" if k < n_test else "val" if k < n_test + n_val
                                 else "train")
    target = Path(output or manifest)
    if target.resolve() != Path(manifest).resolve():
        if target.exists():
            raise ConfigError(f"{target} already exists; remove it or choose another -o")
        merge_manifests([manifest], target)
        frame = read_manifest(target)  # paths now relative to the new file
    for split in ("train", "val", "test"):
        images = frame.loc[frame["subject_id"].map(split_of) == split, "image"]
        set_column(target, images.astype(str), "split", split)
    counts = frame["subject_id"].map(split_of).value_counts()
    return {split: int(counts.get(split, 0)) for split in ("train", "val", "test")}


def _share(fraction: float, count: int) -> int:
    """Subjects of ``count`` for a split of ``fraction``: rounded, at least one when asked.

    >>> _share(0.25, 2), _share(0.2, 10), _share(0.0, 10)
    (1, 2, 0)
    """
    return max(1, int(round(fraction * count))) if fraction > 0 else 0
