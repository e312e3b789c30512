"""Text fields that end up in logs, tables and pushes: what characters they may hold.

NUL can't be stored in PostgreSQL text (a 500, not a 422, when it got that far), and CR
or LF in a one-line field forges log lines and header-like text downstream. Free text
meant to span lines (a dispatcher's narrative) may hold line breaks, never NUL.
"""

from __future__ import annotations

import re
from typing import Annotated

import msgspec

# For msgspec.Meta(pattern=...): one line, no NUL.
SINGLE_LINE = r"^[^\x00\r\n]*\Z"  # \Z: "$" would let a final LF through
Line = Annotated[str, msgspec.Meta(pattern=SINGLE_LINE)]
"""A one-line text field of a request body."""
# For free text meant to span lines (a push body): no NUL.
NO_NUL = r"^[^\x00]*\Z"
_NOT_SINGLE_LINE = re.compile(r"[\x00\r\n]")


def single_line_problem(value: str | None) -> str | None:
    """Why the value can't be a one-line text field, or None when it can."""
    if value is None or not _NOT_SINGLE_LINE.search(value):
        return None
    return "must not contain NUL, CR or LF characters"


def free_text_problem(value: str | None) -> str | None:
    """Why the value can't be multi-line free text, or None when it can."""
    if value is None or "\x00" not in value:
        return None
    return "must not contain NUL characters"
