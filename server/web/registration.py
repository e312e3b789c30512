"""Who may register a device: a limit per client address, and a hook point where an
app builder refuses registrations that don't come from their genuine app (Apple's App
Attest, Google's Play Integrity; see the README).

The hook is an async callable given the registration (platform, token, client address
and the request's headers); it returns to accept and raises ``RegistrationRefused`` to
refuse. ``create_app(settings, registration_check=...)`` takes one, or
``GEOPUSH_REGISTRATION_CHECK=package.module:function`` names one.
"""

from __future__ import annotations

import hashlib
import importlib
import ipaddress
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from server.settings import ConfigError, IPNetwork


@dataclass(frozen=True)
class Registration:
    platform: str
    token: str
    client_address: str
    headers: Mapping[str, str]


class RegistrationRefused(Exception):
    """Raised by a registration check: the device is not registered (403 by default)."""

    def __init__(self, detail: str, status: int = 403) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status


RegistrationCheck = Callable[[Registration], Awaitable[None]]


def load_check(spec: str) -> RegistrationCheck:
    """``"package.module:function"`` -> the function (a ConfigError if there is none)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"GEOPUSH_REGISTRATION_CHECK: {spec!r} is not 'module:function'")
    try:
        found = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"GEOPUSH_REGISTRATION_CHECK: can't load {spec!r}: {exc}") from None
    if not callable(found):
        raise ConfigError(f"GEOPUSH_REGISTRATION_CHECK: {spec!r} is not callable")
    check: RegistrationCheck = found
    return check


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
