"""The domain's own errors: what a rule or a parser refuses, named by field.

Pure (no HTTP): the web edge maps them to ``application/problem+json``
(``server.web.problems``), the CLI to a message, as the domain never needs to know.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str


class DomainError(Exception):
    """Input a domain rule or parser refuses."""


class ValidationFailed(DomainError):
    """One or more fields are invalid; ``errors`` names each (the first is the
    ``detail`` unless one is given)."""

    def __init__(self, errors: Sequence[FieldError], detail: str | None = None) -> None:
        self.errors = list(errors)
        first = self.errors[0] if self.errors else None
        self.detail = detail or (f"{first.field}: {first.message}" if first else None)
        super().__init__(self.detail or "invalid input")
