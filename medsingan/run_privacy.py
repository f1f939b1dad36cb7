"""What a run directory gives away about the patient behind it (``medsingan info``).

Every run is patient data: ``weights.safetensors`` holds the scan's image pyramid and a
generator that, fed its fixed noise z*, redraws the scan (README: "What a run directory
contains"). On top of that, ``config.json`` may hold identifiers: :func:`run_identifiers`
lists them, :func:`privacy_reminder` says it in one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medsingan.source_paths import absolute_sources

# DICOM attributes (tag, name) that identify a person, a place or a visit: the header a run
# stores is de-identified, so a value here means a run written before that, or edited.
_IDENTIFYING_TAGS = (
    ("00100010", "Patient's Name"), ("00100020", "Patient ID"),
    ("00100030", "Patient's Birth Date"), ("00080050", "Accession Number"),
    ("00080080", "Institution Name"), ("00080090", "Referring Physician's Name"),
    ("00080020", "Study Date"), ("00101000", "Other Patient IDs"),
)


def _dicom_identifiers(header: Any) -> list[str]:
    dataset = header.get("dataset") if isinstance(header, dict) else None
    if not isinstance(dataset, dict):
        return []
    return [name for tag, name in _IDENTIFYING_TAGS
            if isinstance(dataset.get(tag), dict) and any(
                value not in ("", None, {}) for value in dataset[tag].get("Value") or [])]


def run_identifiers(config: dict[str, Any]) -> list[str]:
    """What a run's stored ``config.json`` content holds that may identify the patient,
    beyond the image itself: absolute source paths (folder names), DICOM identifying
    attributes, a subject ID given by hand (not the hash pseudonym ``src-...``), and a
    source whose pixels carry burned-in text.

    >>> run_identifiers({"extra": {"source": {"source_path": "/data/SMITH/ct.dcm",
    ...                                       "sha256": "ab" * 32},
    ...                            "cohort": {"subject_id": "src-abababababab"}}})
    ['the absolute source path /data/SMITH/ct.dcm']
    """
    extra = config.get("extra") if isinstance(config.get("extra"), dict) else {}
    source = extra.get("source") if isinstance(extra.get("source"), dict) else {}
    found = [f"the absolute source path {path}" for path in absolute_sources(config)]
    names = _dicom_identifiers(extra.get("source_dicom_header"))
    names += [n for n in _dicom_identifiers(source.get("dicom_header")) if n not in names]
    if names:
        found.append(f"DICOM identifiers ({', '.join(names)})")
    subject = str((extra.get("cohort") or {}).get("subject_id") or "")
    if subject and subject != f"src-{str(source.get('sha256', ''))[:12]}":
        found.append(f"the subject ID '{subject}'")
    if any("Burned In Annotation YES" in str(w) for w in extra.get("warnings") or []):
        found.append("a source with text burned into its pixels (Burned In Annotation YES)")
    return found


def stored_config(run_dir: Path) -> dict[str, Any]:
    """``config.json`` as stored (paths as written, not resolved); {} when unreadable."""
    try:
        data = json.loads((Path(run_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def privacy_reminder(identifiers: list[str]) -> str | None:
    """One line for ``info`` when the run holds identifiers; ``None`` when it holds none."""
    if not identifiers:
        return None
    return (f"privacy     this run is patient data and its config.json holds "
            f"{'; '.join(identifiers)}: share it only as you would the scan (README: What a "
            "run directory contains)")
