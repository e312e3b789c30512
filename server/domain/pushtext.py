"""What a push says: title and body per category and locale (pure).

Only the generalized location ever appears; the exact address, the narrative and
anything about the caller never reach this module.
"""

from __future__ import annotations

import datetime as dt

from server.domain.categories import LABELS_EN

LABELS_ES: dict[str, str] = {
    "burglary": "Robo en vivienda",
    "vehicle_break_in": "Robo en vehículo",
    "vehicle_theft": "Robo de vehículo",
    "robbery": "Atraco",
    "shots_fired": "Disparos",
    "shooting": "Tiroteo",
    "stabbing": "Apuñalamiento",
    "hostage": "Toma de rehenes",
    "arson": "Incendio provocado",
    "residential_fire": "Incendio en vivienda",
    "commercial_fire": "Incendio en comercio",
    "structure_fire": "Incendio en edificio",
    "explosion": "Explosión",
    "cardiac_arrest": "Se necesita RCP",
}

_TEMPLATES = {
    "en": {"title": "{label} nearby", "now": "just now", "min": "{n} min ago",
           "hour": "{n} h ago", "near": "nearby"},
    "es": {"title": "{label} cerca", "now": "ahora mismo", "min": "hace {n} min",
           "hour": "hace {n} h", "near": "cerca de usted"},
}
_LABELS = {"en": LABELS_EN, "es": LABELS_ES}
LOCALES: tuple[str, ...] = tuple(_TEMPLATES)
"""The languages a push can be written in (any other locale reads English)."""


def language(locale: str) -> str:
    lang = locale.replace("_", "-").split("-")[0].lower()
    return lang if lang in _TEMPLATES else "en"


def relative_time(occurred_at: dt.datetime, now: dt.datetime, locale: str = "en") -> str:
    t = _TEMPLATES[language(locale)]
    minutes = int((now - occurred_at).total_seconds() // 60)
    if minutes < 1:
        return t["now"]
    if minutes < 60:
        return t["min"].format(n=minutes)
    return t["hour"].format(n=minutes // 60)


def title_and_body(
    category: str, public_location: str | None, occurred_at: dt.datetime,
    now: dt.datetime, locale: str = "en", *, title: str = "", body: str = "",
) -> tuple[str, str]:
    """The push text; an editor's ``title``/``body`` (from review) replace the template."""
    if title and body:
        return title, body
    lang = language(locale)
    t = _TEMPLATES[lang]
    label = _LABELS[lang].get(category) or LABELS_EN.get(category) or category.replace("_", " ")
    return (
        title or t["title"].format(label=label),
        body or f"{relative_time(occurred_at, now, lang)} · {public_location or t['near']}",
    )
