"""A manual alert's severity and how urgently a phone presents it (pure)."""

from __future__ import annotations

EXTREME = "extreme"
SEVERE = "severe"
MODERATE = "moderate"
SEVERITIES = (EXTREME, SEVERE, MODERATE)

# The CAP 1.2 <severity> values.
CAP_SEVERITY = {EXTREME: "Extreme", SEVERE: "Severe", MODERATE: "Moderate"}


def urgency(severity: str) -> str:
    """APNs ``interruption-level`` for a manual alert of this severity: the one place
    that maps severity to how a phone interrupts (``critical`` is deliberately never
    returned here: it needs Apple's entitlement and the operator's consent)."""
    return "time-sensitive" if severity in (EXTREME, SEVERE) else "active"
