"""Errors as RFC 9457 ``application/problem+json``, in one place.

Domain and handler code raise ``Problem`` (or a subclass); one middleware turns it,
and everything else that escapes a handler, into a problem document. No traceback
and no request data ever go into a response.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import msgspec
from aiohttp import web

from server.domain.text import NO_NUL, SINGLE_LINE
from server.store.db import STORE_UNAVAILABLE

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://geopush.org/problems/"


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str


class Problem(Exception):
    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        slug: str | None = None,
        errors: Sequence[FieldError] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.slug = slug
        self.errors = list(errors)
        self.headers = dict(headers or {})

    def body(self) -> dict[str, object]:
        doc: dict[str, object] = {
            "type": TYPE_BASE + self.slug if self.slug else "about:blank",
            "title": self.title,
            "status": self.status,
        }
        if self.detail:
            doc["detail"] = self.detail
        if self.errors:
            doc["errors"] = [{"field": e.field, "message": e.message} for e in self.errors]
        return doc


class ValidationFailed(Problem):
    def __init__(self, errors: Sequence[FieldError], detail: str | None = None) -> None:
        first = errors[0] if errors else None
        super().__init__(
            422,
            "Request body is invalid",
            detail or (f"{first.field}: {first.message}" if first else None),
            slug="validation",
            errors=errors,
        )


class Unauthorized(Problem):
    def __init__(self, detail: str = "Missing or invalid credentials") -> None:
        super().__init__(401, "Unauthorized", detail, slug="unauthorized",
                         headers={"WWW-Authenticate": "Bearer"})


class NotFound(Problem):
    def __init__(self, detail: str = "No such resource") -> None:
        super().__init__(404, "Not found", detail, slug="not-found")


def problem_response(problem: Problem) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(problem.body()),
        status=problem.status,
        content_type=PROBLEM_JSON,
        headers=problem.headers,
    )


_MSGSPEC_PATH = re.compile(
    r"^(?P<msg>.*?)(?: - at (?P<key>`key` in )?`\$(?P<path>[^`]*)`)?$", re.DOTALL)
_MISSING = re.compile(r"^Object missing required field `(?P<name>[^`]+)`$")


def _dotted(path: str) -> str:
    # "$.location.lat" -> "location.lat", "$.zones[0].name" -> "zones[0].name"
    return path.lstrip(".")


_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<name>[^`]*)`$")


def field_error_from_msgspec(exc: msgspec.ValidationError | msgspec.DecodeError) -> FieldError:
    """Turn msgspec's message ("Expected `float`, got `str` - at `$.location.lat`")
    into a field name and a message."""
    text = str(exc)
    if isinstance(exc, msgspec.DecodeError) and not isinstance(exc, msgspec.ValidationError):
        return FieldError("body", text.replace("JSON is malformed: ", "malformed JSON: "))
    m = _MSGSPEC_PATH.match(text)
    msg, path = (m.group("msg"), m.group("path") or "") if m else (text, "")
    if SINGLE_LINE in msg.encode().decode("unicode_escape"):
        msg = "must not contain NUL, CR or LF characters"
    elif NO_NUL in msg.encode().decode("unicode_escape"):
        msg = "must not contain NUL characters"
    if m and m.group("key"):
        msg = f"a key {msg}" if msg.startswith("must") else f"a key: {msg}"
    missing = _MISSING.match(msg)
    if missing:
        name = missing.group("name")
        return FieldError(_dotted(f"{path}.{name}") if path else name, "is required")
    unknown = _UNKNOWN.match(msg)
    if unknown:
        name = unknown.group("name")
        if not name:
            return FieldError(_dotted(path) or "body", "has a field with an empty name")
        return FieldError(_dotted(f"{path}.{name}") if path else name,
                          "is not a field of this request")
    return FieldError(_dotted(path) or "body", msg)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def refuse_nul(request: web.Request) -> None:
    """No URL geopush serves holds a NUL character, and PostgreSQL refuses one in text:
    a path or query with one is answered 400 here, before any handler passes it on."""
    if "\x00" in request.path or "\x00" in request.query_string \
            or any("\x00" in k or "\x00" in v for k, v in request.query.items()):
        raise Problem(400, "Bad request", "The URL holds a NUL character", slug="bad-request")


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        refuse_nul(request)
        return await handler(request)
    except Problem as problem:
        return problem_response(problem)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() in {"allow", "retry-after"}}
        return problem_response(Problem(exc.status, exc.reason, headers=headers))
    except STORE_UNAVAILABLE:
        log.warning("store unavailable for %s %s", request.method, request.path, exc_info=True)
        return problem_response(
            Problem(503, "Service unavailable", "The store is unreachable; retry shortly.",
                    slug="unavailable", headers={"Retry-After": "5"})
        )
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return problem_response(Problem(500, "Internal server error", slug="internal"))
