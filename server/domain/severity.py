"""A manual alert's severity, and how loudly a push presents on the phone (pure).

One mapping for both platforms, from the incident's category, the push's kind (an
alert, or the update that replaces it when the incident ends) and, for an agency's
manual alert, its severity:

- iOS ``aps.interruption-level``: ``time-sensitive`` for the most severe categories
  (shooting, shots fired, hostage, explosion, CPR), ``active`` for other alerts,
  ``passive`` for updates; ``critical`` only for an agency's *extreme* manual alert
  and only when the operator holds Apple's critical-alerts entitlement
  (``GEOPUSH_APNS_CRITICAL_ALERTS=1``), else such an alert is ``time-sensitive``.
- iOS ``relevance-score`` (0..1, how the notification summary orders them): by severity.
- Android ``channel_id``: ``geopush_severe`` / ``geopush_alerts`` / ``geopush_updates``
  (the app creates these channels with high / default / low importance).
- Sound and priority: updates are silent and go at normal priority.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from server.domain.categories import MOST_SEVERE, RESPONDER_ONLY

Kind = Literal["alert", "update"]

EXTREME = "extreme"
SEVERE = "severe"
MODERATE = "moderate"
SEVERITIES = (EXTREME, SEVERE, MODERATE)

# The CAP 1.2 <severity> values.
CAP_SEVERITY = {EXTREME: "Extreme", SEVERE: "Severe", MODERATE: "Moderate"}

SEVERE_CATEGORIES: frozenset[str] = MOST_SEVERE | RESPONDER_ONLY
# Violence and fire: above property crime in the notification summary.
_SERIOUS: frozenset[str] = frozenset({
    "stabbing", "robbery", "arson", "residential_fire", "commercial_fire", "structure_fire",
})

CHANNEL_SEVERE: Final = "geopush_severe"
CHANNEL_ALERTS: Final = "geopush_alerts"
CHANNEL_UPDATES: Final = "geopush_updates"
# What the README tells app builders to create (Android NotificationManager importance).
ANDROID_CHANNELS: Final = {
    CHANNEL_SEVERE: "IMPORTANCE_HIGH",
    CHANNEL_ALERTS: "IMPORTANCE_DEFAULT",
    CHANNEL_UPDATES: "IMPORTANCE_LOW",
}


@dataclass(frozen=True)
class Presentation:
    interruption_level: Literal["passive", "active", "time-sensitive", "critical"]
    relevance_score: float
    channel_id: str
    sound: bool                 # play the default sound (critical: the critical sound)
    high_priority: bool         # APNs priority 10 / FCM HIGH; else 5 / NORMAL


def presentation(category: str, kind: Kind = "alert", *, manual_severity: str = "",
                 critical_alerts: bool = False) -> Presentation:
    """The platform fields of one push. ``manual_severity`` is set only for an agency's
    manual alert (extreme | severe | moderate)."""
    if kind == "update":
        return Presentation("passive", 0.1, CHANNEL_UPDATES, sound=False, high_priority=False)
    if manual_severity == EXTREME:
        level: Literal["critical", "time-sensitive"] = \
            "critical" if critical_alerts else "time-sensitive"
        return Presentation(level, 1.0, CHANNEL_SEVERE, sound=True, high_priority=True)
    if manual_severity == SEVERE or (not manual_severity and category in SEVERE_CATEGORIES):
        return Presentation("time-sensitive", 0.9, CHANNEL_SEVERE, sound=True,
                            high_priority=True)
    if manual_severity == MODERATE:
        return Presentation("active", 0.6, CHANNEL_ALERTS, sound=True, high_priority=True)
    score = 0.6 if category in _SERIOUS else 0.4
    return Presentation("active", score, CHANNEL_ALERTS, sound=True, high_priority=True)


def urgency(severity: str, *, critical_alerts: bool = False) -> str:
    """APNs ``interruption-level`` for a manual alert of this severity (``critical``
    only for an extreme one, and only with Apple's entitlement and the operator's
    consent: ``critical_alerts``)."""
    return presentation("", manual_severity=severity,
                        critical_alerts=critical_alerts).interruption_level
