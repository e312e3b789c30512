"""Errors as RFC 9457 ``application/problem+json``, in one place.

Handlers raise ``Problem`` (or a subclass); the domain and the parsers raise their own
``server.domain.errors.ValidationFailed``, which is a 422 here. One middleware turns
both, and everything else that escapes a handler, into a problem document. No
traceback and no request data ever go into a response.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

import msgspec
from aiohttp import web

# Re-exported: handlers raise the domain's 422 like any other problem.
from server.domain.errors import FieldError as FieldError
from server.domain.errors import ValidationFailed as ValidationFailed
from server.store.db import STORE_UNAVAILABLE

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://geopush.org/problems/"


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


def as_problem(error: Problem | ValidationFailed) -> Problem:
    """What the client is told: a problem as it is, the domain's refusal as a 422."""
    return error if isinstance(error, Problem) else invalid(error.errors, error.detail)


def invalid(errors: Sequence[FieldError], detail: str | None = None) -> Problem:
    """A 422 naming the fields (what ``ValidationFailed`` becomes at the edge)."""
    failed = ValidationFailed(errors, detail)
    return Problem(422, "Request body is invalid", failed.detail, slug="validation",
                   errors=failed.errors)


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
    except ValidationFailed as failed:
        return problem_response(as_problem(failed))
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
