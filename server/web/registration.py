"""Who may register a device: a limit per client address, and a hook point where an
app builder refuses registrations that don't come from their genuine app (Apple's App
Attest, Google's Play Integrity; see the README).

The hook is an async callable given the registration (platform, token, client address
and the request's headers); it returns to accept and raises ``RegistrationRefused`` to
refuse. ``create_app(settings, registration_check=...)`` takes one, or
``GEOPUSH_REGISTRATION_CHECK=package.module:function`` names one.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from server.settings import ConfigError


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
