"""Reading an uploaded GeoJSON FeatureCollection (pure)."""

from __future__ import annotations

import json
from typing import Any

from server.domain.errors import FieldError, ValidationFailed


def features(body: bytes) -> list[Any]:
    """The ``features`` of a FeatureCollection, or 422 naming what is wrong."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationFailed([FieldError("body", f"malformed JSON: {exc}")]) from None
    if not isinstance(doc, dict) or doc.get("type") != "FeatureCollection" \
            or not isinstance(doc.get("features"), list):
        raise ValidationFailed([FieldError("type", "must be a GeoJSON FeatureCollection")])
    return list(doc["features"])
