"""Parsing untrusted XML (CAP bodies, PIDF-LO inside EIDO) safely, with clear errors.

Everything goes through defusedxml with document type declarations, entity
declarations and external references all forbidden, so a "billion laughs" or an
XXE document is refused at its ``<!DOCTYPE`` before anything is expanded or fetched.
On top of that the input size, the element depth and the element count are bounded,
and checked while parsing (not after), so a hostile document is abandoned early.

Every failure is a ``ValidationFailed`` naming the field the XML came from
(``body`` for a whole request, ``locationComponent[0].locationByValue`` for XML
embedded in JSON, …). No other exception escapes ``parse_xml``.

The small helpers at the end read namespaced elements without caring about prefixes.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import TYPE_CHECKING

import defusedxml.ElementTree as DefusedET
from defusedxml import (
    DefusedXmlException,
    DTDForbidden,
    EntitiesForbidden,
    ExternalReferenceForbidden,
)

from server.domain.errors import FieldError, ValidationFailed

if TYPE_CHECKING:
    from xml.etree.ElementTree import Element

MAX_BYTES = 256 * 1024
MAX_DEPTH = 32
MAX_ELEMENTS = 10_000


def _fail(field: str, message: str) -> ValidationFailed:
    return ValidationFailed([FieldError(field, message)])


def parse_xml(
    data: bytes | str,
    *,
    field: str = "body",
    max_bytes: int = MAX_BYTES,
    max_depth: int = MAX_DEPTH,
    max_elements: int = MAX_ELEMENTS,
) -> Element:
    """The root element of ``data``, or ``ValidationFailed`` naming ``field``."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if not raw.strip():
        raise _fail(field, "is empty; an XML document is expected")
    if len(raw) > max_bytes:
        raise _fail(field, f"XML larger than {max_bytes} bytes")
    try:
        return _parse_bounded(raw, field, max_depth, max_elements)
    except DTDForbidden:
        raise _fail(field, "XML document type declarations (DTDs) are not allowed") from None
    except EntitiesForbidden:
        raise _fail(field, "XML entity declarations are not allowed") from None
    except ExternalReferenceForbidden:
        raise _fail(field, "XML external references are not allowed") from None
    except DefusedXmlException:
        raise _fail(field, "XML construct not allowed") from None
    except DefusedET.ParseError as exc:
        raise _fail(field, f"malformed XML: {exc}") from None
    except (ValueError, UnicodeError, LookupError) as exc:
        # expat reports unknown/invalid encodings and the like this way.
        raise _fail(field, f"malformed XML: {exc}") from None


def _parse_bounded(raw: bytes, field: str, max_depth: int, max_elements: int) -> Element:
    events = DefusedET.iterparse(
        io.BytesIO(raw),
        events=("start", "end"),
        forbid_dtd=True,
        forbid_entities=True,
        forbid_external=True,
    )
    root: Element | None = None
    depth = 0
    count = 0
    for event, elem in events:
        if event == "start":
            depth += 1
            count += 1
            if root is None:
                root = elem
            if depth > max_depth:
                raise _fail(field, f"XML nested deeper than {max_depth} elements")
            if count > max_elements:
                raise _fail(field, f"XML has more than {max_elements} elements")
        else:
            depth -= 1
    if root is None:  # pragma: no cover - expat reports "no element found" first
        raise _fail(field, "malformed XML: no element found")
    return root


# --- reading namespaced elements ---------------------------------------------------


def split_tag(tag: object) -> tuple[str, str]:
    """``"{ns}local"`` -> ``("ns", "local")``; comments/PIs (non-str tags) -> ``("", "")``."""
    if not isinstance(tag, str):
        return "", ""
    if tag.startswith("{"):
        ns, _, local = tag[1:].partition("}")
        return ns, local
    return "", tag


def children(elem: Element, ns: str, local: str) -> list[Element]:
    return [c for c in elem if split_tag(c.tag) == (ns, local)]


def child(elem: Element, ns: str, local: str) -> Element | None:
    for c in elem:
        if split_tag(c.tag) == (ns, local):
            return c
    return None


def descendants(elem: Element, namespaces: tuple[str, ...], local: str) -> Iterator[Element]:
    """Every element below (and including) ``elem`` called ``local`` in one of
    ``namespaces``, in document order."""
    for e in elem.iter():
        ns, name = split_tag(e.tag)
        if name == local and ns in namespaces:
            yield e


def text_of(elem: Element | None) -> str | None:
    """The element's stripped text (child elements' text excluded), None when blank."""
    if elem is None or elem.text is None:
        return None
    text = elem.text.strip()
    return text or None
