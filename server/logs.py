"""Logging set-up for every process (one place, so the format is uniform)."""

from __future__ import annotations

import logging


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # aiohttp's access log carries only method, path and status: no bodies, no headers.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
