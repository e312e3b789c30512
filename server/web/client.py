"""Who a request comes from: the client's address behind trusted proxies, and the
bucket a per-address limit counts against. Every per-address limit (device
registrations, console sign-ins, the public incident map) reads the address here, so
behind a load balancer (GEOPUSH_TRUSTED_PROXIES) none of them lumps the whole city
into one address, and a client can't pick its own by writing X-Forwarded-For."""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Sequence

from aiohttp import web

from server.settings import IPNetwork
from server.web.appkeys import SETTINGS


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def _trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address | None,
             proxies: Sequence[IPNetwork]) -> bool:
    return address is not None and any(address in net for net in proxies)


def client_address(peer: str | None, forwarded_for: str | None,
                   proxies: Sequence[IPNetwork]) -> str:
    """The client's address: the peer's, unless the peer is a trusted proxy; then the
    nearest X-Forwarded-For hop that is not itself a trusted proxy. Hops a client wrote
    itself (left of the first untrusted one) are never believed."""
    peer_address = _address(peer or "")
    if not _trusted(peer_address, proxies) or not forwarded_for:
        return str(peer_address) if peer_address else (peer or "unknown")
    hops = [h for h in (_address(part) for part in forwarded_for.split(",")) if h is not None]
    for hop in reversed(hops):
        if not _trusted(hop, proxies):
            return str(hop)
    return str(hops[0]) if hops else str(peer_address)


def limit_bucket(address: str) -> str:
    """What a registration limit counts against: the address, or its /64 for IPv6 (one
    subscriber's share), as a digest so Redis holds no client address."""
    parsed = _address(address)
    if isinstance(parsed, ipaddress.IPv6Address):
        mapped = parsed.ipv4_mapped
        address = str(mapped) if mapped else str(ipaddress.IPv6Network(f"{parsed}/64",
                                                                        strict=False))
    return hashlib.sha256(address.encode()).hexdigest()[:32]


def request_address(request: web.Request) -> str:
    """``client_address`` of a request, with the server's trusted proxies."""
    return client_address(request.remote, request.headers.get("X-Forwarded-For"),
                          request.app[SETTINGS].trusted_proxies)
