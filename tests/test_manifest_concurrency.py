"""Several processes appending to one manifest lose no row."""

from __future__ import annotations

import subprocess
import sys

from medsingan.manifest import check_manifest, read_manifest

WRITER = """
import sys
from medsingan.manifest import ManifestRow, append_rows
manifest, tag = sys.argv[1], sys.argv[2]
for k in range(100):
    append_rows(manifest, [ManifestRow(image=f"{tag}_{k:03d}.png", subject_id=tag)])
"""


def test_two_processes_appending_100_rows_each_leave_200_rows(tmp_path):
    manifest = tmp_path / "shared.csv"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(manifest), tag],
                                stderr=subprocess.PIPE, text=True) for tag in ("a", "b")]
    for writer in writers:
        _, errors = writer.communicate(timeout=300)
        assert writer.returncode == 0, errors
    frame = read_manifest(manifest)
    assert len(frame) == 200 and frame["image"].is_unique
    assert sorted(frame["image"]) == sorted(f"{t}_{k:03d}.png" for t in "ab" for k in range(100))
    assert [p.kind for p in check_manifest(manifest)] == ["missing_file"] * 200
