"""A library's exception as the reason part of a one-line message."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from collections.abc import Iterator

# A reason longer than this is cut: it is quoted inside a message that says what to do.
_LONGEST = 240


def single_line(text: str) -> str:
    """``text`` with its runs of whitespace (newlines included) collapsed to one space.

    >>> single_line("MONOCHROME2\\r\\n  RGB")
    'MONOCHROME2 RGB'
    """
    return " ".join(text.split())


def one_line(exc: BaseException) -> str:
    """``exc``'s message on one line (its lines joined with "; ", runs of whitespace
    collapsed), at most 240 characters; the exception's type when it has no message.

    >>> one_line(RuntimeError("Unable to decode:\\n  rle: too short\\n  jpeg: bad marker"))
    'Unable to decode:; rle: too short; jpeg: bad marker'
    """
    lines = [single_line(line) for line in str(exc).splitlines()]
    text = "; ".join(line for line in lines if line) or type(exc).__name__
    return text if len(text) <= _LONGEST else text[:_LONGEST - 3] + "..."


# File descriptor 2 is the process's: one redirect at a time (threads of a cohort's workers
# read scans concurrently; interleaved redirects would leave stderr on a deleted file).
_STDERR_LOCK = threading.Lock()


@contextlib.contextmanager
def process_stderr(lines: list[str]) -> Iterator[None]:
    """Collect into ``lines`` what C++ code prints on the process's stderr meanwhile
    (MetaIO and the NRRD reader print their complaints there, beside ITK's exception)."""
    with _STDERR_LOCK, _redirected_stderr(lines):
        yield


@contextlib.contextmanager
def _redirected_stderr(lines: list[str]) -> Iterator[None]:
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no stderr to borrow: nothing to collect
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read(1 << 16).decode("utf-8", "replace")
            lines.extend(" ".join(line.split()) for line in text.splitlines() if line.strip())
