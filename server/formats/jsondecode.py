"""Decoding JSON request bodies into typed values, with every failure a 422.

msgspec reports malformed or mistyped input as DecodeError/ValidationError, but very
deep nesting as RecursionError and bad UTF-8 inside strings as UnicodeDecodeError;
all of them are the client's fault and must never become a 500.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

from server.domain.errors import FieldError, ValidationFailed
from server.domain.text import NO_NUL, SINGLE_LINE

T = TypeVar("T")


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


def decode(body: bytes, typ: type[T] | Any = Any, decoder: msgspec.json.Decoder[T] | None = None
           ) -> T:
    try:
        if decoder is not None:
            return decoder.decode(body)
        result: T = msgspec.json.decode(body, type=typ)
        return result
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ValidationFailed([field_error_from_msgspec(exc)]) from None
    except RecursionError:
        raise ValidationFailed([FieldError("body", "JSON is nested too deeply")]) from None
    except UnicodeDecodeError:
        raise ValidationFailed([FieldError("body", "JSON is not valid UTF-8")]) from None
