"""The editor console (``/console/``) and the public map (``/map/``): static pages and
scripts served by geopush itself, Leaflet vendored from the npm registry
(scripts/vendor-leaflet.sh). No build step; the pages talk to the JSON API."""

from __future__ import annotations

import functools
import html
import json
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from server.settings import Settings
from server.web.appkeys import SETTINGS

STATIC = Path(__file__).resolve().parent.parent / "static"
routes = web.RouteTableDef()


def security_headers(settings: Settings) -> dict[str, str]:
    """Scripts and styles from geopush only; map tiles also from the configured host."""
    tiles = ""
    if settings.map_tiles_url:
        parts = urlsplit(settings.map_tiles_url.replace("{s}", "a"))
        tiles = " " + f"{parts.scheme}://{parts.netloc}".replace("://a.", "://*.")
    return {
        "Content-Security-Policy": (
            "default-src 'self'; script-src 'self'; style-src 'self'; "
            f"img-src 'self' data:{tiles}; connect-src 'self'; media-src 'self' data:; "
            "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }


@functools.cache
def _template(name: str) -> str:
    # Package files, read once per process.
    return (STATIC / name).read_text()


def _page(request: web.Request, name: str) -> web.Response:
    settings = request.app[SETTINGS]
    lat, lon, zoom = settings.map_center
    config = {"tilesUrl": settings.map_tiles_url,
              "tilesAttribution": settings.map_tiles_attribution,
              "center": [lat, lon], "zoom": zoom}
    text = _template(name).replace("{{config}}", html.escape(json.dumps(config), quote=True))
    return web.Response(text=text, content_type="text/html", charset="utf-8",
                        headers=security_headers(settings))


@routes.get("/console")
@routes.get("/map")
async def with_slash(request: web.Request) -> web.Response:
    raise web.HTTPPermanentRedirect(request.path + "/")


@routes.get("/console/")
async def console(request: web.Request) -> web.Response:
    return _page(request, "console.html")


@routes.get("/map/")
async def public_map(request: web.Request) -> web.Response:
    return _page(request, "map.html")


routes.static("/static/", STATIC, append_version=False)
