"""Decoding JSON request bodies into typed values, with every failure a 422.

msgspec reports malformed or mistyped input as DecodeError/ValidationError, but very
deep nesting as RecursionError and bad UTF-8 inside strings as UnicodeDecodeError;
all of them are the client's fault and must never become a 500.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from server.web.problems import FieldError, ValidationFailed, field_error_from_msgspec

T = TypeVar("T")


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
