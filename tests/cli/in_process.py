"""The ``medsingan`` command run inside the test process: the same ``run_app`` (one-line
errors, exit codes) as the console entry point, without a new interpreter per call."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import tempfile
import warnings
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


def _show_on_stderr(message, category, filename, lineno, file=None, line=None) -> None:
    """Python's own warning display (what ``PYTHONWARNINGS=default`` prints in a console)."""
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


@contextlib.contextmanager
def _native_output(stream_fd: int):
    """File descriptor ``stream_fd`` sent to a temporary file for the block: what native code
    (ITK, decoders, OpenMP) writes past Python's ``sys.stdout``/``sys.stderr``. Yields a
    function returning that output."""
    with tempfile.TemporaryFile() as sink:
        saved = os.dup(stream_fd)
        os.dup2(sink.fileno(), stream_fd)
        written: list[str] = []
        try:
            yield lambda: "".join(written)
        finally:
            os.dup2(saved, stream_fd)
            os.close(saved)
            sink.seek(0)
            written.append(sink.read().decode(errors="replace"))


def run_command(*args: str | Path, cwd: Path | None = None,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``medsingan ARGS`` in this process, seen as a console would see it: exit code, stdout
    and stderr with what Python prints and what native code writes to the file descriptors,
    warnings shown as ``PYTHONWARNINGS=default`` shows them. Working directory, environment
    and torch's thread count are restored afterwards. (A subprocess pays ~4-8 s of imports
    per call; :func:`tests.cli.test_inspect.run_console` runs one where the interpreter's start
    itself is under test.)"""
    import torch

    from medsingan.cli import app, run_app

    saved_argv, saved_cwd, saved_env = sys.argv, os.getcwd(), dict(os.environ)
    saved_threads = torch.get_num_threads()
    out, err = io.StringIO(), io.StringIO()
    code: int = 0
    try:
        os.environ.update(env or {})
        if cwd is not None:
            os.chdir(cwd)
        sys.argv = ["medsingan", *map(str, args)]
        sys.stdout.flush()
        sys.stderr.flush()
        with warnings.catch_warnings(), _native_output(1) as native_out, \
                _native_output(2) as native_err, contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(err):
            warnings.resetwarnings()
            warnings.simplefilter("default")
            warnings.showwarning = _show_on_stderr
            try:
                run_app(app)
            except SystemExit as stopped:
                code = (stopped.code if isinstance(stopped.code, int)
                        else 0 if stopped.code is None else 1)
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        torch.set_num_threads(saved_threads)
    return subprocess.CompletedProcess(["medsingan", *map(str, args)], code,
                                       out.getvalue() + native_out(),
                                       err.getvalue() + native_err())
