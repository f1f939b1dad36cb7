"""The ``medsingan`` command run inside the test process: the same ``run_app`` (one-line
errors, exit codes) as the console entry point, without a new interpreter per call."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest


def run_in_process(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                   *args: str | Path) -> tuple[int, str, str]:
    """``(exit code, stdout, stderr)`` of ``medsingan ARGS``."""
    from medsingan.cli import app, run_app

    monkeypatch.setattr(sys, "argv", ["medsingan", *map(str, args)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        run_app(app)
    captured = capsys.readouterr()
    code = stopped.value.code
    return (code if isinstance(code, int) else 0), captured.out, captured.err


def assert_one_line_error_in_process(result: tuple[int, str, str], *fragments: str) -> None:
    code, out, err = result
    assert code == 2, out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
