"""Reading and decoding request bodies with a hard size bound."""

from __future__ import annotations

from typing import TypeVar

import msgspec
from aiohttp import web

from server.domain.errors import FieldError, ValidationFailed
from server.formats.jsondecode import decode
from server.web.problems import Problem

T = TypeVar("T")


def too_large(limit: int) -> Problem:
    return Problem(413, "Payload too large", f"The body exceeds {limit} bytes",
                   slug="payload-too-large")


async def read_bounded(request: web.Request, limit: int) -> bytes:
    """The body, refusing anything over ``limit`` without reading it into memory.

    A declared Content-Length over the limit is refused before a byte is read; a
    chunked body is read until it passes the limit and no further.
    """
    if request.content_length is not None and request.content_length > limit:
        raise too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def decode_json(request: web.Request, typ: type[T], limit: int = 64 * 1024) -> T:
    body = await read_bounded(request, limit)
    if not body.strip():
        raise ValidationFailed([FieldError("body", "is empty; a JSON object is expected")])
    return decode(body, typ)


def json_response(data: object, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(data), status=status,
                        content_type="application/json")
