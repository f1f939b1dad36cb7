"""Where a run's source scan lives, as its ``config.json`` records it.

A run directory is shared more than the scans it came from, and hospital folders are often
named after patients (``/data/SMITH_JOHN_1961/CT/...``). So ``config.json`` stores the
source's path (``extra.source.source_path``, and ``series_folder`` for a DICOM series)
relative to the run directory, in POSIX form; in memory, once loaded, it is absolute again,
so the code that reads the source (``--keep-identifiers``, region runs) and the manifests
(which store paths relative to their own folder) see one real path. A path that has no
relative form (another drive on Windows) stays absolute, and so do the absolute paths of
runs written before: both still load.

A relative path follows the run and its source when both move together (a study folder
copied whole); when only the run moves, the source is not found and the commands that need
it say so (they check the recorded sha256 anyway).

>>> stored = with_relative_sources({"extra": {"source": {"source_path": "/data/a/ct.dcm"}}},
...                                "/data/runs/ct")
>>> stored["extra"]["source"]["source_path"]
'../../a/ct.dcm'
>>> with_absolute_sources(stored, "/data/runs/ct")["extra"]["source"]["source_path"]
'/data/a/ct.dcm'
"""

from __future__ import annotations

import copy
import os
from pathlib import PurePath
from typing import Any

# The keys of ``extra.source`` (ScanMetadata fields) that hold a path.
SOURCE_PATH_KEYS = ("source_path", "series_folder")


def _source(metadata: dict[str, Any]) -> dict[str, Any] | None:
    extra = metadata.get("extra")
    source = extra.get("source") if isinstance(extra, dict) else None
    return source if isinstance(source, dict) else None


def relative_path(path: str, folder: str | os.PathLike[str]) -> str:
    """``path`` relative to ``folder`` (both resolved, POSIX separators), or ``path`` itself
    when it has no relative form."""
    try:
        relative = os.path.relpath(os.path.realpath(path), os.path.realpath(folder))
    except ValueError:  # Windows: another drive
        return path
    return PurePath(relative).as_posix()


def with_relative_sources(metadata: dict[str, Any],
                          run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """A copy of a run's ``config.json`` content whose source paths are relative to
    ``run_dir`` (``metadata`` itself when it records no source)."""
    source = _source(metadata)
    if source is None:
        return metadata
    stored = copy.deepcopy(metadata)
    for key in SOURCE_PATH_KEYS:
        value = source.get(key)
        if isinstance(value, str) and os.path.isabs(value):
            stored["extra"]["source"][key] = relative_path(value, run_dir)
    return stored


def with_absolute_sources(metadata: dict[str, Any],
                          run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``metadata`` (changed in place) with relative source paths joined to ``run_dir``;
    absolute ones, as older runs stored them, are kept."""
    source = _source(metadata)
    for key in SOURCE_PATH_KEYS if source is not None else ():
        value = source.get(key)
        if isinstance(value, str) and value and not os.path.isabs(value):
            joined = os.path.join(os.path.realpath(run_dir), *PurePath(value).parts)
            source[key] = os.path.normpath(joined)
    return metadata


def absolute_sources(metadata: dict[str, Any]) -> list[str]:
    """The source paths a run's stored ``config.json`` content records absolutely."""
    source = _source(metadata) or {}
    return [source[key] for key in SOURCE_PATH_KEYS
            if isinstance(source.get(key), str) and os.path.isabs(source[key])]
