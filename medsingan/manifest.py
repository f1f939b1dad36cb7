"""Manifests: one CSV row per image, the list a classifier pipeline reads unchanged.

Schema (the required columns, in this order; extra columns may follow them):

==================== ======= =============================================================
column               type    meaning
==================== ======= =============================================================
image                path    the image, relative to the manifest's folder (POSIX ``/``)
label                text    class label or finding (``pneumonia``, ``0``, ...)
split                text    ``train`` / ``val`` / ``test`` / ... ; empty = unassigned
synthetic            bool    ``true`` for generated images, ``false`` for real ones
source_image         path    the real image a synthetic one was generated from (relative)
subject_id           text    patient / subject identifier
modality             text    the modality preset (``xray``, ``ct``, ``mri``, ...)
method               text    one of :data:`METHODS`; ``real`` exactly when not synthetic
model                path    the run directory that produced the image (relative)
start_scale          int     pyramid scale generation started at (0 = finest)
seed                 int     the cohort's seed (+ extra ``sample_index``: this sample)
sifid                float   Single-Image FID to the source (lower = closer)
sifid_variant        text    the SIFID variant: paper (192 ch) or fid64 (64 ch)
diversity            float   the cohort's diversity score (same on every row of a cohort)
similarity_to_source float   SSIM to the source image (high = possible memorisation)
height               int     rows, in pixels
width                int     columns, in pixels
created_at           time    ISO 8601 UTC, e.g. ``2024-05-01T12:00:00Z``
==================== ======= =============================================================

Extra columns that medsingan writes on synthetic rows and :func:`check_manifest` checks when
a manifest has them: ``copy_score`` (fraction in [0, 1] of the sample's informative patches
that are near-verbatim copies of the source's, :mod:`medsingan.metrics.copy`),
``copy_region_px`` (whole number: the largest copied connected region, pixels) and ``engine``
(what drew the sample: ``singan``, ``patch``); an image+mask run's samples (``train --mask``)
have ``mask`` (the mask file beside the sample, a path like ``image``) and ``mask_area``
(fraction in [0, 1] of the sample's pixels in the mask).

Booleans are written ``true``/``false``; a missing value is an empty field. Split inheritance:
a synthetic row always carries the ``split`` and ``subject_id`` of its source, so that a
synthetic image of a test-set patient never reaches a training split; :func:`check_manifest`
reports every row that breaks this.

>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> manifest = folder / "cohort.csv"
>>> append_rows(manifest, [ManifestRow(image=str(folder / "scan.png"), split="test",
...                                    subject_id="P1", height=64, width=64)])
1
>>> table = read_manifest(manifest)
>>> table.image.tolist(), table.split.tolist(), table.synthetic.tolist(), table.height.tolist()
(['scan.png'], ['test'], [False], [64])
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import posixpath
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePath
from typing import Literal

import pandas as pd

from medsingan.errors import MedsinganError
from medsingan.io.atomic import atomic_path

__all__ = [
    "COLUMNS",
    "METHODS",
    "PROBLEM_KINDS",
    "ManifestError",
    "ManifestRow",
    "Problem",
    "append_rows",
    "check_manifest",
    "merge_manifests",
    "read_manifest",
    "relative_to_manifest",
    "resolve_image",
    "utc_timestamp",
]

COLUMNS: tuple[str, ...] = (
    "image", "label", "split", "synthetic", "source_image", "subject_id", "modality", "method",
    "model", "start_scale", "seed", "sifid", "sifid_variant", "diversity",
    "similarity_to_source", "height", "width", "created_at",
)
METHODS: tuple[str, ...] = ("random", "edit", "harmonize", "paint", "super_resolution", "real")
PROBLEM_KINDS: tuple[str, ...] = (
    "schema", "missing_file", "duplicate_row", "duplicate_image", "leak", "inheritance",
    "subject_in_several_splits",
)

_PATH_COLUMNS = ("image", "source_image")
# The columns that must agree when two manifests list the same image.
_IDENTITY_COLUMNS = ("split", "label", "subject_id", "synthetic", "method", "source_image")
# Columns holding paths relative to the manifest's folder, rewritten by merge.
_MERGED_PATH_COLUMNS = ("image", "source_image", "model", "mask", "source_volume")

Record = dict[str, str]
# How long an append waits for another process's (seconds): appends take milliseconds.
_LOCK_TIMEOUT_S = 120


class ManifestError(MedsinganError):
    """A manifest cannot be read, written or merged (bad header, conflicting rows, ...)."""


@dataclass(frozen=True)
class Problem:
    """One finding of :func:`check_manifest`.

    ``kind`` is one of :data:`PROBLEM_KINDS`; ``row`` is the 1-based data row (row 1 is the
    first line after the header), ``None`` for a problem of the whole file.
    """

    kind: str
    row: int | None
    message: str

    def __str__(self) -> str:
        where = "header" if self.row is None else f"row {self.row}"
        return f"{where}: {self.kind}: {self.message}"


def utc_timestamp(moment: datetime | None = None) -> str:
    """``moment`` (default: now) as ISO 8601 UTC to the second, e.g. ``2024-05-01T12:00:00Z``."""
    moment = datetime.now(timezone.utc) if moment is None else moment
    if moment.tzinfo is None:
        raise ManifestError(f"created_at {moment.isoformat()} has no time zone; give it in UTC")
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def relative_to_manifest(path: str | os.PathLike[str], manifest_path: str | os.PathLike[str]
                         ) -> str:
    """``path`` relative to the manifest's folder, with POSIX separators.

    A relative ``path`` is taken relative to the current directory, like any file argument.

    >>> relative_to_manifest("/data/run/samples/s_0001.dcm", "/data/manifests/run.csv")
    '../run/samples/s_0001.dcm'
    """
    folder = os.path.dirname(os.path.realpath(manifest_path))
    try:  # between resolved locations: a symlinked folder on one side only still works
        relative = os.path.relpath(os.path.realpath(path), folder)
    except ValueError as error:  # Windows: another drive has no relative path
        raise ManifestError(f"{path} cannot be written relative to {folder}: {error}") from None
    return PurePath(relative).as_posix()


def resolve_image(manifest_path: str | os.PathLike[str], relative: str) -> Path:
    """The file a manifest path names: ``relative`` joined to the manifest's folder."""
    return Path(os.path.dirname(os.path.abspath(manifest_path))) / relative


@dataclass
class ManifestRow:
    """One image of a manifest; the fields are the required columns, ``extra`` the others.

    ``image`` and ``source_image`` may be given absolute: :func:`append_rows` rewrites them
    relative to the manifest's folder. ``None`` is a missing value. ``created_at`` defaults
    to the moment the row is made.
    """

    image: str
    label: str = ""
    split: str = ""
    synthetic: bool = False
    source_image: str = ""
    subject_id: str = ""
    modality: str = ""
    method: str = "real"
    model: str = ""
    start_scale: int | None = None
    seed: int | None = None
    sifid: float | None = None
    sifid_variant: str = ""
    diversity: float | None = None
    similarity_to_source: float | None = None
    height: int | None = None
    width: int | None = None
    created_at: str = field(default_factory=utc_timestamp)
    extra: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not str(self.image):
            raise ManifestError("a manifest row needs an image path")
        if self.method not in METHODS:
            raise ManifestError(f"method {self.method!r} is not one of {', '.join(METHODS)}")
        if not isinstance(self.synthetic, bool):
            raise ManifestError(f"synthetic must be True or False, not {self.synthetic!r}")
        if self.synthetic == (self.method == "real"):
            raise ManifestError(f"{self.image}: method {self.method!r} contradicts "
                                f"synthetic={self.synthetic}; 'real' is for real images only")
        clashes = sorted(set(self.extra) & set(COLUMNS))
        if clashes:
            raise ManifestError(f"extra columns {', '.join(clashes)} clash with required ones")

    def to_record(self, manifest_path: str | os.PathLike[str]) -> Record:
        """The row as CSV fields, paths made relative to ``manifest_path``'s folder."""
        record = {column: _format_value(getattr(self, column)) for column in COLUMNS}
        for column in _PATH_COLUMNS:
            if os.path.isabs(record[column]):
                record[column] = relative_to_manifest(record[column], manifest_path)
        record.update({str(key): _format_value(value) for key, value in self.extra.items()})
        for column in _MERGED_PATH_COLUMNS:  # the model and extra path columns too
            if os.path.isabs(record.get(column, "")):
                record[column] = relative_to_manifest(record[column], manifest_path)
        return record


def _format_value(value: object) -> str:
    """CSV text of one value: ``true``/``false``, shortest round-trip floats, empty if missing."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) or type(value).__name__.startswith("float"):
        number = float(value)  # type: ignore[arg-type]
        return "" if math.isnan(number) else repr(number)
    if isinstance(value, PurePath):
        return value.as_posix()
    return str(value)


# --- value parsers: shared by read_manifest (converts) and check_manifest (reports) ----------

def _parse_bool(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise ValueError(f"must be true or false, not {text!r}")
    return text.lower() == "true"


_MAX_INT = 2**63 - 1


def _parse_int(text: str) -> int | None:
    if not text:
        return None
    try:  # digits exactly (a float would round seeds above 2**53); "12.0" as written by pandas
        value = int(text) if text.strip().lstrip("+-").isdecimal() else float(text)
    except (ValueError, OverflowError):
        raise ValueError(f"must be a whole number, not {text!r}") from None
    if isinstance(value, float) and not value.is_integer() or not 0 <= value <= _MAX_INT:
        raise ValueError(f"must be a whole number in 0..{_MAX_INT}, not {text!r}")
    return int(value)


def _parse_size(text: str) -> int | None:
    value = _parse_int(text)
    if value == 0:
        raise ValueError("must be a positive number of pixels, not 0")
    return value


def _parse_float(text: str) -> float | None:
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"must be a number, not {text!r}") from None
    if math.isnan(value):
        raise ValueError("must be a number or empty, not NaN")
    return value


def _parse_fraction(text: str) -> float | None:
    value = _parse_float(text)
    if value is not None and not 0.0 <= value <= 1.0:
        raise ValueError(f"must be a fraction in [0, 1], not {text!r}")
    return value


def _parse_method(text: str) -> str:
    if text not in METHODS:
        raise ValueError(f"must be one of {', '.join(METHODS)}, not {text!r}")
    return text


def _parse_timestamp(text: str) -> pd.Timestamp | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        raise ValueError(f"must be ISO 8601, e.g. 2024-05-01T12:00:00Z, not {text!r}") from None
    if moment.utcoffset() is None or moment.utcoffset().total_seconds() != 0:
        raise ValueError(f"must be in UTC (ending Z or +00:00), not {text!r}")
    return pd.Timestamp(moment)


def _parse_image(text: str) -> str:
    if not text:
        raise ValueError("is empty; every row names its image")
    return text


_PARSERS: dict[str, Callable[[str], object]] = {
    "image": _parse_image,
    "synthetic": _parse_bool,
    "method": _parse_method,
    "start_scale": _parse_int,
    "seed": _parse_int,
    "sifid": _parse_float,
    "diversity": _parse_float,
    "similarity_to_source": _parse_float,
    "height": _parse_size,
    "width": _parse_size,
    "created_at": _parse_timestamp,
}
# Extra columns medsingan writes, checked where a manifest has them.
_EXTRA_PARSERS: dict[str, Callable[[str], object]] = {
    "copy_score": _parse_fraction,
    "copy_region_px": _parse_int,
    "mask_area": _parse_fraction,
}
_DTYPES = {"start_scale": "Int64", "seed": "Int64", "height": "Int64", "width": "Int64",
           "sifid": "float64", "diversity": "float64", "similarity_to_source": "float64",
           "synthetic": "bool", "created_at": "datetime64[ns, UTC]"}


# --- reading and writing ----------------------------------------------------------------------

def _header_problem(header: Sequence[str]) -> str | None:
    """What is wrong with a header, in one line, or ``None`` when it fits the schema."""
    missing = [column for column in COLUMNS if column not in header]
    if missing:
        return (f"missing required column(s) {', '.join(missing)}; "
                f"the first columns must be: {','.join(COLUMNS)}")
    if tuple(header[: len(COLUMNS)]) != COLUMNS:
        position = next(i for i, column in enumerate(header) if column != COLUMNS[i])
        return (f"column {position + 1} is {header[position]!r}, expected "
                f"{COLUMNS[position]!r}; the first columns must be: {','.join(COLUMNS)}")
    repeated = sorted({column for column in header if header.count(column) > 1})
    if repeated:
        return f"column(s) {', '.join(repeated)} appear more than once"
    return None


def _read_table(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a CSV file, as the text written; an empty file has neither."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            table = list(csv.reader(handle))
    except FileNotFoundError:
        raise ManifestError(f"{path}: no such manifest") from None
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ManifestError(f"{path}: cannot read the manifest ({error})") from None
    return (table[0], table[1:]) if table else ([], [])


def _read_records(path: Path) -> tuple[list[str], list[Record]]:
    """Header and rows (column -> text) of a manifest whose header and row widths are valid."""
    header, rows = _read_table(path)
    if not header:
        return list(COLUMNS), []
    problem = _header_problem(header)
    if problem:
        raise ManifestError(f"{path}: {problem}")
    for number, row in enumerate(rows, start=1):
        if len(row) != len(header):
            raise ManifestError(f"{path}: row {number} has {len(row)} fields, "
                                f"the header has {len(header)}")
    return header, [dict(zip(header, row, strict=True)) for row in rows]


def _write_records(path: Path, header: Sequence[str], records: Iterable[Record]) -> None:
    """Write the whole CSV to a temporary file beside ``path``, then rename it over ``path``."""
    try:
        with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
            # RFC 4180 line ends: a field holding a lone "\r" is then quoted too
            writer = csv.writer(handle, lineterminator="\r\n")
            writer.writerow(header)
            writer.writerows([record.get(column, "") for column in header] for record in records)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        raise ManifestError(f"{path}: cannot write the manifest ({error.strerror})") from None


def _union_header(*headers: Sequence[str]) -> list[str]:
    """The required columns, then every extra column in order of first appearance."""
    columns = list(COLUMNS)
    for header in headers:
        columns += [column for column in header if column not in columns]
    return columns


def _normalise(relative: str) -> str:
    return posixpath.normpath(relative) if relative else ""


def check_appendable(manifest_path: str | os.PathLike[str]) -> None:
    """Raise :class:`ManifestError` unless rows can be appended to ``manifest_path``: an
    existing file must read as a manifest, a new one needs a folder it can be written in.
    Commands call this before they write their first output."""
    path = Path(manifest_path)
    if path.is_dir():
        raise ManifestError(f"the manifest {path} is a directory; name a .csv file")
    if path.exists():
        read_manifest(path)
        if not os.access(path, os.R_OK | os.W_OK):
            raise ManifestError(f"the manifest {path} is not readable and writable")
        if not os.access(path.parent, os.W_OK | os.X_OK):  # it is replaced, not edited
            raise ManifestError(f"cannot update the manifest {path}: its folder is not "
                                "writable")
        return
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ManifestError(f"cannot create the manifest {path}: {folder} is not a writable "
                            "folder")


def append_rows(manifest_path: str | os.PathLike[str], rows: Iterable[ManifestRow],
                on_existing: Literal["error", "replace", "skip"] = "error") -> int:
    """Append ``rows`` to the manifest (created if absent), atomically; return rows written.

    The existing file's header must fit the schema; extra columns are the union of the file's
    and the rows'. The whole new CSV is written to a temporary file in the same folder and
    renamed over the old one, so a crash leaves either the old or the new manifest, never half
    of one. A row whose image is already listed raises :class:`ManifestError`, or with
    ``on_existing="replace"`` takes the old row's place, with ``"skip"`` is left out (resuming
    an interrupted run).
    """
    path = Path(manifest_path)
    with _updating(path):
        return _append_rows(path, rows, on_existing)


@contextlib.contextmanager
def _updating(path: Path) -> Iterator[None]:
    """Hold the manifest's lock while it is read and rewritten, so that processes appending
    to one manifest (on one machine or on several sharing its folder) never lose each
    other's rows. The lock file is ``.<name>.lock`` beside the manifest; it stays there."""
    from filelock import FileLock, Timeout

    real = Path(os.path.realpath(path))
    lock = FileLock(str(real.with_name(f".{real.name}.lock")), timeout=_LOCK_TIMEOUT_S)
    try:
        real.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except Timeout:
        raise ManifestError(f"{path}: another process has held its lock for "
                            f"{_LOCK_TIMEOUT_S} s; if none is running, remove "
                            f"{lock.lock_file}") from None
    except OSError as error:
        raise ManifestError(f"{path}: cannot lock the manifest ({error.strerror or error})"
                            ) from None
    try:
        yield
    finally:
        lock.release()


def _append_rows(path: Path, rows: Iterable[ManifestRow],
                 on_existing: Literal["error", "replace", "skip"]) -> int:
    header, records = _read_records(path) if path.exists() else (list(COLUMNS), [])
    position = {_normalise(record["image"]): i for i, record in enumerate(records)}
    written = 0
    new_columns: list[str] = []
    for row in rows:
        record = row.to_record(path)
        new_columns += [column for column in record if column not in new_columns]
        key = _normalise(record["image"])
        if key not in position:
            position[key] = len(records)
            records.append(record)
        elif on_existing == "skip":
            continue
        elif on_existing == "replace":
            records[position[key]] = record
        else:
            raise ManifestError(f"{path}: {record['image']} is already listed; "
                                "pass on_existing='replace' or 'skip'")
        written += 1
    _write_records(path, _union_header(header, new_columns), records)
    return written


def remove_rows(manifest_path: str | os.PathLike[str], images: Iterable[str]) -> int:
    """Drop the rows of ``images`` (paths relative to the manifest), atomically; return how
    many went. Used when a scale sweep keeps only its best scale's outputs."""
    path = Path(manifest_path)
    wanted = {_normalise(str(image)) for image in images}
    with _updating(path):
        header, records = _read_records(path)
        kept = [record for record in records if _normalise(record["image"]) not in wanted]
        _write_records(path, header, kept)
    return len(records) - len(kept)


def set_column(manifest_path: str | os.PathLike[str], images: Iterable[str], column: str,
               value: object) -> int:
    """Set ``column`` to ``value`` in the rows of ``images`` (paths relative to the manifest),
    atomically; return how many rows changed. Used for cohort-level scores (diversity) known
    only once every sample is written."""
    path = Path(manifest_path)
    with _updating(path):
        return _set_column(path, images, column, value)


def _set_column(path: Path, images: Iterable[str], column: str, value: object) -> int:
    header, records = _read_records(path)
    if column not in header:
        raise ManifestError(f"{path}: no column {column!r}")
    wanted = {_normalise(str(image)) for image in images}
    text = _format_value(value)
    changed = 0
    for record in records:
        if _normalise(record["image"]) in wanted:
            record[column] = text
            changed += 1
    _write_records(path, header, records)
    return changed


def read_manifest(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The manifest as a DataFrame with typed columns.

    ``synthetic`` is bool, ``start_scale``/``seed``/``height``/``width`` nullable ``Int64``,
    scores float (NaN when missing), ``created_at`` a UTC timestamp, the other columns text
    (empty string when missing); extra columns are numbers where every value is one, else text.
    Paths stay relative: join them with :func:`resolve_image`. A header that does not fit the
    schema, or a value of the wrong type, raises :class:`ManifestError` with a one-line message
    (``medsingan manifest check`` lists every problem).
    """
    path = Path(path)
    header, records = _read_records(path)
    table = pd.DataFrame.from_records(records, columns=header)
    for column, parse in _PARSERS.items():
        values = []
        for number, text in enumerate(table[column], start=1):
            try:
                values.append(parse(text))
            except ValueError as error:
                raise ManifestError(f"{path}: row {number}: {column} {error}") from None
        table[column] = pd.Series(values, dtype=_DTYPES.get(column, "object"))
    for column in header[len(COLUMNS):]:
        with contextlib.suppress(ValueError, TypeError):  # a text column stays as written
            table[column] = pd.to_numeric(table[column].replace("", None))
    return table


def merge_manifests(inputs: Sequence[str | os.PathLike[str]],
                    output: str | os.PathLike[str], *, allow_leaks: bool = False) -> int:
    """Combine manifests into ``output`` (written atomically); return the number of rows.

    Paths (``image``, ``source_image``, ``model`` and an extra ``mask``) are rewritten relative
    to the output's folder, so every path still names the same file. Identical rows are kept
    once. Nothing is written, and :class:`ManifestError` says why, when an input has a value of
    the wrong type, when the same image is listed with a different ``split``, ``label``,
    ``subject_id``, ``synthetic``, ``method`` or ``source_image`` (listed twice with other
    differences, e.g. a re-scored sample, the first input wins), or, unless ``allow_leaks``,
    when the merged rows leak a source or subject across splits (see :func:`check_manifest`).
    ``output`` may be one of the inputs.
    """
    if not inputs:
        raise ManifestError("merge needs at least one manifest")
    output = Path(output)
    headers: list[list[str]] = []
    merged: dict[str, tuple[Record, Path]] = {}
    for source in map(Path, inputs):
        header, records = _read_records(source)
        headers.append(header)
        invalid = _value_problems(list(enumerate(records, start=1)))
        if invalid:
            raise ManifestError(f"{source}: {invalid[0]} ({len(invalid)} problem(s); see "
                                "medsingan manifest check)")
        for record in records:
            for column in _MERGED_PATH_COLUMNS:
                if record.get(column):
                    located = os.path.join(os.path.dirname(os.path.abspath(source)),
                                           record[column])
                    record[column] = relative_to_manifest(located, output)
            key = _normalise(record["image"])
            if key not in merged:
                merged[key] = (record, source)
                continue
            kept, kept_from = merged[key]
            for column in _IDENTITY_COLUMNS:
                if kept[column] != record[column]:
                    raise ManifestError(
                        f"{record['image']} has {column} {kept[column]!r} in {kept_from} "
                        f"but {record[column]!r} in {source}; fix one before merging")
    rows = [record for record, _ in merged.values()]
    leaks = [] if allow_leaks else [
        problem for problem in _leak_problems(list(enumerate(rows, start=1)), output.parent)
        if problem.kind == "leak"]
    if leaks:
        raise ManifestError(f"the merged manifest would leak across splits: "
                            f"{leaks[0].message} ({len(leaks)} leak(s)); nothing written")
    _write_records(output, _union_header(*headers), rows)
    return len(merged)


# --- checking -----------------------------------------------------------------------------------

def check_manifest(path: str | os.PathLike[str]) -> list[Problem]:
    """Every problem of a manifest, in row order; an empty list means it is fine.

    Reported (``Problem.kind``):

    - ``schema``: header not fitting :data:`COLUMNS`, a row of the wrong width, a value of the
      wrong type (method not in :data:`METHODS`, synthetic not true/false, non-numeric or
      non-positive height/width, bad score, seed or time, a ``copy_score`` outside [0, 1] or
      a ``copy_region_px`` that is no whole number), method ``real`` on a synthetic row
      (or the reverse), a synthetic row without ``source_image``;
    - ``missing_file``: ``image`` (or an extra ``mask``) does not exist relative to the
      manifest's folder;
    - ``duplicate_row``: a row identical to an earlier one;
    - ``duplicate_image``: an image listed again with different values;
    - ``leak``: a synthetic row in another split than its source image (listed as an image or
      as the source of other synthetic rows), or whose subject appears in another split;
    - ``inheritance``: a synthetic row whose subject_id differs from its source image's row;
    - ``subject_in_several_splits``: real images of one subject in several splits (once per
      subject).

    Empty splits count as unassigned: only a synthetic row's own source must match them.
    A manifest that cannot be read at all raises :class:`ManifestError`.
    """
    path = Path(path)
    header, rows = _read_table(path)
    if not header:
        return [Problem("schema", None, "the file is empty; it needs the header row")]
    problem = _header_problem(header)
    if problem:
        return [Problem("schema", None, problem)]
    problems: list[Problem] = []
    records: list[tuple[int, Record]] = []
    for number, row in enumerate(rows, start=1):
        if len(row) != len(header):
            problems.append(Problem("schema", number, f"{len(row)} fields, the header has "
                                                      f"{len(header)}"))
        else:
            records.append((number, dict(zip(header, row, strict=True))))
    problems += _value_problems(records)
    problems += _file_problems(path, records)
    problems += _leak_problems(records, path.parent)
    return sorted(problems, key=lambda p: (p.row or 0, PROBLEM_KINDS.index(p.kind)))


def _value_problems(records: list[tuple[int, Record]]) -> list[Problem]:
    problems = []
    for number, record in records:
        extra = [(column, parse) for column, parse in _EXTRA_PARSERS.items()
                 if column in record]
        for column, parse in [*_PARSERS.items(), *extra]:
            try:
                parse(record[column])
            except ValueError as error:
                problems.append(Problem("schema", number, f"{column} {error}"))
        synthetic = _is_synthetic(record)
        if record["synthetic"].lower() in ("true", "false") and synthetic == (
                record["method"] == "real"):
            problems.append(Problem("schema", number, f"method {record['method']!r} contradicts "
                                                      f"synthetic {record['synthetic']}"))
        if synthetic and not record["source_image"]:
            problems.append(Problem("schema", number, "synthetic row without source_image"))
    return problems


def _file_problems(path: Path, records: list[tuple[int, Record]]) -> list[Problem]:
    problems = []
    rows_seen: dict[tuple[str, ...], int] = {}
    images_seen: dict[str, int] = {}
    for number, record in records:
        image = record["image"]
        row_key = tuple(record.values())
        if row_key in rows_seen:
            problems.append(Problem("duplicate_row", number,
                                    f"same as row {rows_seen[row_key]}"))
            continue
        rows_seen[row_key] = number
        key = _normalise(image)
        if key in images_seen:
            problems.append(Problem("duplicate_image", number,
                                    f"{image} is already listed in row {images_seen[key]}"))
        images_seen.setdefault(key, number)
        if image and not resolve_image(path, image).is_file():
            problems.append(Problem("missing_file", number,
                                    f"{image} not found in {path.parent or '.'}"))
        mask = record.get("mask", "")  # an image+mask pair's mask (medsingan.masks)
        if mask and not resolve_image(path, mask).is_file():
            problems.append(Problem("missing_file", number,
                                    f"mask {mask} not found in {path.parent or '.'}"))
    return problems


def _file_key(folder: Path, text: str) -> str:
    """The file a manifest path names, as one string: joined to the manifest's folder, links
    and ``..`` resolved, so that relative, absolute and symlinked spellings of one file match."""
    return os.path.normcase(os.path.realpath(os.path.join(folder, text))) if text else ""


def _leak_problems(records: list[tuple[int, Record]], folder: Path) -> list[Problem]:
    by_image = {_file_key(folder, r["image"]): r for _, r in records}
    # Where each subject and each source image appear: split -> first row showing it. Real
    # rows are the authority; synthetic siblings are compared only when no real row exists.
    real_subjects: dict[str, dict[str, int]] = {}
    all_subjects: dict[str, dict[str, int]] = {}
    sibling_sources: dict[str, dict[str, int]] = {}
    for number, record in records:
        split, subject = record["split"], record["subject_id"].strip()
        if not split:
            continue
        synthetic = _is_synthetic(record)
        if subject:
            all_subjects.setdefault(subject, {}).setdefault(split, number)
            if not synthetic:
                real_subjects.setdefault(subject, {}).setdefault(split, number)
        if synthetic and record["source_image"]:
            source = _file_key(folder, record["source_image"])
            sibling_sources.setdefault(source, {}).setdefault(split, number)
    problems = []
    for number, record in records:
        if not _is_synthetic(record):
            continue
        split, subject = record["split"], record["subject_id"].strip()
        source, shown_source = _file_key(folder, record["source_image"]), record["source_image"]
        source_row = by_image.get(source)
        if source_row is not None:
            if source_row["split"] != split:
                problems.append(Problem("leak", number, f"synthetic image in split {split!r} "
                                        f"but its source {shown_source} is in "
                                        f"{source_row['split']!r}"))
            if source_row["subject_id"].strip() != subject:
                problems.append(Problem("inheritance", number, f"subject_id {subject!r} differs "
                                        f"from its source's {source_row['subject_id']!r}"))
        elif split and len(sibling_sources.get(source, {})) > 1:
            problems.append(Problem("leak", number, f"synthetic image in split {split!r} but "
                                    f"its source {shown_source} also has synthetic images in "
                                    f"{_where(sibling_sources[source], split)}"))
        subject_splits = real_subjects.get(subject) or all_subjects.get(subject, {})
        if split and subject and set(subject_splits) - {split}:
            problems.append(Problem("leak", number, f"synthetic image in split {split!r} but "
                                    f"subject {subject!r} is in "
                                    f"{_where(subject_splits, split)}"))
    for subject, splits in real_subjects.items():
        if len(splits) > 1:
            problems.append(Problem("subject_in_several_splits", max(splits.values()),
                                    f"real images of subject {subject!r} in "
                                    f"{_where(splits, None)}"))
    return problems


def _is_synthetic(record: Record) -> bool:
    return record["synthetic"].lower() == "true"


def _where(splits: dict[str, int], own: str | None) -> str:
    """``'test' (row 4), 'val' (row 9)``: the splits other than ``own``, each with a row."""
    return ", ".join(f"{split!r} (row {number})" for split, number in sorted(splits.items())
                     if split != own)
