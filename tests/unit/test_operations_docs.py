"""The shipped alerting rules and Grafana dashboard query metrics geopush really
exports (``promtool`` checks their syntax and the rules' behaviour in ``make test``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import REGISTRY

import server.metrics

DOCS = Path(__file__).resolve().parents[2] / "docs"
_NAME = re.compile(r"\bgeopush_[a-z_]+\b")
_SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def exported() -> set[str]:
    names = set()
    for collector in list(REGISTRY._collector_to_names):
        for family in collector.collect():
            names.update(sample.name for sample in family.samples)
            names.add(family.name)
    return {n for n in names if n.startswith("geopush_")}


def referenced(text: str) -> set[str]:
    # Stream names (geopush:push:apns) use colons, so they never match.
    return set(_NAME.findall(text))


def _base(name: str) -> str:
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def test_alert_rules_and_dashboard_use_exported_metrics() -> None:
    known = {_base(n) for n in exported()} | exported()
    dashboard = json.loads((DOCS / "grafana" / "geopush.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    alerts = (DOCS / "prometheus" / "alerts.yml").read_text()
    for where, text in (("dashboard", exprs), ("alerts.yml", alerts)):
        used = referenced(text)
        assert used, where
        unknown = {n for n in used if n not in known and _base(n) not in known}
        assert not unknown, f"{where} uses metrics geopush doesn't export: {sorted(unknown)}"


def test_the_delivery_histogram_the_issue_names_exists() -> None:
    assert server.metrics.DELIVERY_SECONDS._type == "histogram"
    assert "geopush_push_delivery_seconds" in exported()
