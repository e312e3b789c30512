"""The control API both fake gateways serve, in one place so that they cannot drift.

    GET    /_fake/deliveries[?token=T][&since=S]  what was delivered (to T; after
                                         unix time S, so a load test polls cheaply)
    DELETE /_fake/deliveries             forget the deliveries                  -> 204
    POST   /_fake/unregistered           {"tokens": [...], ...}  the gateway now calls
                                         them gone     -> {"unregistered": how many now}
    POST   /_fake/faults                 {"rate", "status" (default 503), "reason",
                                         "latency_ms", ...}; rate 0 clears
                                                            -> {"faults": now, or null}
    GET    /_fake/stats                  the fake's counters

A fake subclasses ``FakeControl`` and implements its hooks; it may add routes of its
own (the fake FCM's quota and revocation, the fake APNs' GOAWAY). A bad request is a
400 with ``{"error": ...}``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from aiohttp import web

DEFAULT_FAULT_STATUS = 503


class FakeControl:
    # ---- hooks ----

    def delivered(self, token: str | None, since: float | None = None
                  ) -> Iterable[dict[str, Any]]:
        """Deliveries (to ``token``, or all; arrived after ``since``) as JSON objects."""
        raise NotImplementedError

    def clear(self) -> None:
        raise NotImplementedError

    def unregister(self, tokens: list[str], body: dict[str, Any]) -> int:
        """Mark ``tokens`` gone; the number of tokens gone now."""
        raise NotImplementedError

    def faults_from(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """Apply the faults ``body`` asks for (ValueError/TypeError when it is wrong);
        the faults now in force, None when cleared."""
        raise NotImplementedError

    def control_stats(self) -> dict[str, Any]:
        raise NotImplementedError

    # ---- the API ----

    def add_control_routes(self, app: web.Application) -> None:
        app.router.add_get("/_fake/deliveries", self._get_deliveries)
        app.router.add_delete("/_fake/deliveries", self._delete_deliveries)
        app.router.add_post("/_fake/unregistered", self._post_unregistered)
        app.router.add_post("/_fake/faults", self._post_faults)
        app.router.add_get("/_fake/stats", self._get_stats)

    async def _get_deliveries(self, request: web.Request) -> web.Response:
        raw = request.query.get("since")
        try:
            since = float(raw) if raw else None
        except ValueError:
            return bad_request("since must be unix seconds")
        return web.json_response(list(self.delivered(request.query.get("token"), since)))

    async def _delete_deliveries(self, request: web.Request) -> web.Response:
        self.clear()
        return web.Response(status=204)

    async def _post_unregistered(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise bad_request("tokens must be a list of strings")
        return web.json_response({"unregistered": self.unregister(tokens, body)})

    async def _post_faults(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        try:
            return web.json_response({"faults": self.faults_from(body)})
        except (TypeError, ValueError) as exc:
            raise bad_request(str(exc)) from None

    async def _get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.control_stats())


async def json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise bad_request("body must be JSON") from None
    if not isinstance(body, dict):
        raise bad_request("body must be a JSON object")
    return body


def bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}),
                              content_type="application/json")
