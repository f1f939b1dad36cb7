"""A library's exception as the reason part of a one-line message."""

from __future__ import annotations

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
