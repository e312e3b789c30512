"""`geopush cad validate` on the conformance fixtures, and the dry run's analysis (no I/O)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.cadvalidate import ACCEPTED, REFUSED, guess_format, validate_file
from server.cli import main
from server.domain.pushtext import LOCALES
from tests.cad_fixtures import FIXTURE_NOW, ROOT, SEATTLE_MAP, Fixture, fixtures

NOW = FIXTURE_NOW.isoformat()


def _validate(fx: Fixture) -> tuple[int, dict[str, Any]]:
    code, out = validate_file(fx.path, fmt=fx.fmt, call_types_file=SEATTLE_MAP, now=NOW)
    return code, json.loads(out)


def test_every_format_has_the_conformance_cases() -> None:
    accepted = {(f.fmt, f.name) for f in fixtures("accept")}
    # Native JSON has a point location and no test flag: circles, polygons and test
    # messages exist only in CAP (and EIDO has no test status either).
    for fmt, names in {"json": {"point", "update", "cancel", "all-clear"},
                       "cap": {"point", "circle", "polygon", "update", "cancel", "all-clear",
                               "test-status"},
                       "eido": {"point", "circle", "polygon", "update", "cancel",
                                "all-clear"}}.items():
        assert names <= {n for f, n in accepted if f == fmt}, fmt
    for fmt in ("json", "cap", "eido"):
        assert len(fixtures("refuse", fmt)) >= 5


@pytest.mark.parametrize("fx", fixtures("accept"), ids=str)
def test_accepted_fixture_gives_its_expected_outcome(fx: Fixture) -> None:
    code, result = _validate(fx)
    assert code == ACCEPTED, result
    for key, value in fx.expected.items():
        assert result[key] == value, (key, result)
    assert result["would_alert"] is None       # offline: no devices to count
    assert set(result["title"]) == set(result["body"]) == set(LOCALES)


@pytest.mark.parametrize("fx", fixtures("refuse"), ids=str)
def test_refused_fixture_names_its_expected_field(fx: Fixture) -> None:
    code, problem = _validate(fx)
    assert code == REFUSED
    assert problem["status"] == fx.expected["status"]
    assert problem["errors"][0]["field"] == fx.expected["field"]


@pytest.mark.parametrize("fx", fixtures("accept") + fixtures("refuse"), ids=str)
def test_the_format_is_guessed_from_the_file(fx: Fixture) -> None:
    assert guess_format(fx.path, fx.path.read_bytes()) == fx.fmt


def test_cli_exit_codes_and_output(capsys: pytest.CaptureFixture[str]) -> None:
    ok = ROOT / "cap/accept/point.xml"
    with pytest.raises(SystemExit) as exit_:
        main(["cad", "validate", str(ok), "--call-types", str(SEATTLE_MAP), "--now", NOW])
    assert exit_.value.code == 0
    assert json.loads(capsys.readouterr().out)["decision"] == "alert"
    bad = ROOT / "cap/refuse/ack.xml"
    with pytest.raises(SystemExit) as exit_:
        main(["cad", "validate", str(bad), "--format", "cap"])
    assert exit_.value.code == 1
    assert json.loads(capsys.readouterr().out)["errors"][0]["field"] == "msgType"


def test_without_a_map_every_call_type_is_unmapped() -> None:
    code, out = validate_file(ROOT / "json/accept/point.json", now=NOW)
    result = json.loads(out)
    assert (code, result["decision"], result["category"]) == (
        ACCEPTED, "suppressed:unmapped", "unmapped")
    assert "call_type_unmapped" in {w["code"] for w in result["warnings"]}


def test_fixed_files_are_judged_at_the_time_given() -> None:
    late = (FIXTURE_NOW + dt.timedelta(hours=3)).isoformat()
    code, out = validate_file(ROOT / "json/accept/point.json", call_types_file=SEATTLE_MAP,
                              now=late)
    result = json.loads(out)
    assert (code, result["decision"]) == (ACCEPTED, "suppressed:stale")
    assert "timestamp_old" in {w["code"] for w in result["warnings"]}


def test_warnings_name_what_was_ignored_or_changed(tmp_path: Path) -> None:
    doc = json.loads((ROOT / "json/accept/point.json").read_text())
    doc["caller"] = {"name": "Jane Roe", "phone": "+1 206 555 0147"}
    doc["ocurred_at"] = doc["occurred_at"]               # a misspelling: ignored
    doc["location"]["address"] = "Ravenna Park playground"  # no block can be made of it
    path = tmp_path / "incident.json"
    path.write_text(json.dumps(doc))
    _, out = validate_file(path, call_types_file=SEATTLE_MAP, now=NOW)
    result = json.loads(out)
    found = {(w["code"], w.get("field")) for w in result["warnings"]}
    assert ("ignored_field", "caller") in found
    assert ("ignored_field", "ocurred_at") in found
    assert ("address_withheld", "location.address") in found
    assert result["public_location"] is None
    # Named, never quoted.
    assert "Jane Roe" not in out and "555 0147" not in out and "playground" not in out

    _, circle = _validate(next(f for f in fixtures("accept", "cap") if f.name == "circle"))
    assert "geometry_simplified" in {w["code"] for w in circle["warnings"]}


def test_future_timestamps_are_warned_before_they_are_refused(tmp_path: Path) -> None:
    doc = json.loads((ROOT / "json/accept/point.json").read_text())
    path = tmp_path / "incident.json"
    path.write_text(json.dumps(doc))
    three_min_early = (dt.datetime.fromisoformat(doc["updated_at"])
                       - dt.timedelta(minutes=3)).isoformat()
    code, out = validate_file(path, call_types_file=SEATTLE_MAP, now=three_min_early)
    warnings = {(w["code"], w.get("field")) for w in json.loads(out)["warnings"]}
    assert code == ACCEPTED
    assert {("timestamp_in_future", "occurred_at"), ("timestamp_in_future", "updated_at")} \
        <= warnings


_words = st.text(alphabet=st.characters(whitelist_categories=("Lu", "Ll")), min_size=6,
                 max_size=20)


@settings(max_examples=60, deadline=None)
@given(name=_words, phone=st.from_regex(r"\+1 [2-9]\d\d 555 \d{4}", fullmatch=True),
       narrative=_words, number=st.integers(min_value=101, max_value=99999),
       unit=st.integers(min_value=1, max_value=999))
def test_the_analysis_never_repeats_private_data(
    tmp_path_factory: pytest.TempPathFactory, name: str, phone: str, narrative: str,
    number: int, unit: int,
) -> None:
    """Whatever the CAD sends about people, and the exact address, the validator's
    output (what a vendor's CI log keeps) never contains it."""
    doc = json.loads((ROOT / "json/accept/point.json").read_text())
    doc["caller"] = {"name": name, "phone": phone}
    doc["narrative"] = f"{narrative} reported by {name}"
    doc["location"]["address"] = f"{number} 24th Ave NE Apt {unit}"
    path = tmp_path_factory.mktemp("v") / "incident.json"
    path.write_text(json.dumps(doc))
    _, out = validate_file(path, call_types_file=SEATTLE_MAP, now=NOW)
    assert name not in out and narrative not in out and phone not in out
    assert f"{number} 24th" not in out and f"Apt {unit}" not in out
