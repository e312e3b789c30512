"""``geopush cad validate FILE``: the dry run's analysis without a server.

For a CAD vendor's CI: the same parser, normalization, policy and public text as the
webhook, under a call-type map from a file (``--call-types``) or from an agency in
the database (``--agency``). Devices are not counted (``would_alert`` is null): that
needs the live server's dry run.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path

import msgspec

from server.domain.agency_spec import validate_call_types
from server.formats.remarks import CAP, CONTENT_TYPE_OF_FORMAT, EIDO, NATIVE
from server.settings import database_url_from_env
from server.store.agencies import Agency, get_agency
from server.store.db import create_pool
from server.web.dryrun import offline_agency, validate
from server.web.ingest import parser_for
from server.web.problems import Problem, ValidationFailed, as_problem

# Exit codes: accepted, refused (as the webhook would refuse it).
ACCEPTED, REFUSED = 0, 1


def guess_format(path: Path, body: bytes) -> str:
    """.xml is CAP; JSON with EIDO's components or message id is EIDO; other JSON is
    native."""
    if path.suffix.lower() == ".xml" or body.lstrip().startswith(b"<"):
        return CAP
    try:
        doc = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return NATIVE
    if isinstance(doc, dict) and any(
            k.endswith("Component") or k == "eidoMessageIdentifier" for k in doc):
        return EIDO
    return NATIVE


def _parse_now(value: str | None) -> dt.datetime:
    if value is None:
        return dt.datetime.now(dt.UTC)
    try:
        now = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"--now {value!r} is not an RFC 3339 time") from None
    if now.tzinfo is None:
        raise ValueError("--now needs a UTC offset (e.g. 2026-11-28T04:01:00Z)")
    return now


async def _agency_from_db(agency_id: str) -> Agency:
    pool = await create_pool(database_url_from_env(), min_size=1, max_size=1)
    try:
        agency = await get_agency(pool, agency_id)
    finally:
        await pool.close()
    if agency is None:
        raise ValueError(f"no agency {agency_id!r} in the database")
    return agency


def _agency(agency_id: str | None, call_types_file: Path | None) -> Agency:
    if agency_id is not None:
        return asyncio.run(_agency_from_db(agency_id))
    if call_types_file is None:
        return offline_agency({})
    mapping = json.loads(call_types_file.read_text())
    if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
        raise ValueError(f"{call_types_file}: a JSON object of call type -> category expected")
    try:
        return offline_agency(validate_call_types(mapping))
    except ValidationFailed as exc:
        raise ValueError(f"{call_types_file}: " + "; ".join(
            f"{e.field}: {e.message}" for e in exc.errors)) from None


def validate_file(path: Path, *, fmt: str | None = None, agency_id: str | None = None,
                  call_types_file: Path | None = None, now: str | None = None,
                  ) -> tuple[int, str]:
    """(exit code, JSON to print): the analysis, or the webhook's problem document."""
    body = path.read_bytes()
    fmt = fmt or guess_format(path, body)
    agency = _agency(agency_id, call_types_file)
    when = _parse_now(now)
    try:
        result = validate(agency, fmt, parser_for(CONTENT_TYPE_OF_FORMAT[fmt]), body, when)
    except (Problem, ValidationFailed) as refused:
        return REFUSED, json.dumps(as_problem(refused).body(), indent=2, ensure_ascii=False)
    return ACCEPTED, json.dumps(msgspec.to_builtins(result), indent=2, ensure_ascii=False)
