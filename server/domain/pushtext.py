"""What a push says: title and body per category, kind and locale (pure).

Only the generalized location ever appears; the exact address, the narrative and
anything about the caller never reach this module.

Languages: English, Spanish, Simplified Chinese, Vietnamese and Korean (the most
requested languages in US 911 service areas). Durations and "… ago" come from CLDR
through Babel, so plurals and word order are each language's own ("1 minute" /
"24 minutes", "hace 3 min", "3분 전"). A locale falls back by language ("es-MX" ->
es, "zh-TW" -> zh-Hans), then to English.
"""

from __future__ import annotations

import datetime as dt
from typing import Final

from babel.dates import format_timedelta

from server.domain.categories import LABELS_EN

LANGUAGES: Final = ("en", "es", "zh-Hans", "vi", "ko")
_BABEL_LOCALE = {"en": "en", "es": "es", "zh-Hans": "zh_Hans", "vi": "vi", "ko": "ko"}

LABELS: dict[str, dict[str, str]] = {
    "en": LABELS_EN,
    "es": {
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
    },
    "zh-Hans": {
        "burglary": "入室盗窃",
        "vehicle_break_in": "车辆被撬",
        "vehicle_theft": "车辆被盗",
        "robbery": "抢劫",
        "shots_fired": "枪声",
        "shooting": "枪击",
        "stabbing": "持刀伤人",
        "hostage": "劫持人质",
        "arson": "纵火",
        "residential_fire": "住宅火灾",
        "commercial_fire": "商铺火灾",
        "structure_fire": "建筑火灾",
        "explosion": "爆炸",
        "cardiac_arrest": "需要心肺复苏",
    },
    "vi": {
        "burglary": "Trộm đột nhập",
        "vehicle_break_in": "Phá xe lấy đồ",
        "vehicle_theft": "Trộm xe",
        "robbery": "Cướp",
        "shots_fired": "Có tiếng súng",
        "shooting": "Nổ súng",
        "stabbing": "Đâm người",
        "hostage": "Bắt giữ con tin",
        "arson": "Phóng hỏa",
        "residential_fire": "Cháy nhà",
        "commercial_fire": "Cháy cơ sở kinh doanh",
        "structure_fire": "Cháy tòa nhà",
        "explosion": "Vụ nổ",
        "cardiac_arrest": "Cần hồi sức tim phổi",
    },
    "ko": {
        "burglary": "주거 침입 절도",
        "vehicle_break_in": "차량 털이",
        "vehicle_theft": "차량 도난",
        "robbery": "강도",
        "shots_fired": "총성",
        "shooting": "총격",
        "stabbing": "흉기 사건",
        "hostage": "인질 사건",
        "arson": "방화",
        "residential_fire": "주택 화재",
        "commercial_fire": "상가 화재",
        "structure_fire": "건물 화재",
        "explosion": "폭발",
        "cardiac_arrest": "심폐소생술 필요",
    },
}

# Every text a push can carry besides the category label. ``{label}``, ``{duration}``
# are filled in; the update texts replace the alert on the phone when an incident ends.
TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "title": "{label} nearby",
        "now": "just now",
        "near": "nearby",
        "cleared.title": "{label} nearby — cleared",
        "cleared.body": "Cleared {duration} after it was reported",
        "cancelled.title": "{label} nearby — cancelled",
        "cancelled.body": "Cancelled {duration} after it was reported",
    },
    "es": {
        "title": "{label} cerca",
        "now": "ahora mismo",
        "near": "cerca de usted",
        "cleared.title": "{label} cerca — finalizado",
        "cleared.body": "Finalizado {duration} después del aviso",
        "cancelled.title": "{label} cerca — cancelado",
        "cancelled.body": "Cancelado {duration} después del aviso",
    },
    "zh-Hans": {
        "title": "附近：{label}",
        "now": "刚刚",
        "near": "您附近",
        "cleared.title": "附近：{label} — 已结束",
        "cleared.body": "报告后{duration}结束",
        "cancelled.title": "附近：{label} — 已取消",
        "cancelled.body": "报告后{duration}取消",
    },
    "vi": {
        "title": "{label} gần bạn",
        "now": "vừa xong",
        "near": "gần bạn",
        "cleared.title": "{label} gần bạn — đã kết thúc",
        "cleared.body": "Kết thúc {duration} sau khi được báo",
        "cancelled.title": "{label} gần bạn — đã hủy",
        "cancelled.body": "Đã hủy {duration} sau khi được báo",
    },
    "ko": {
        "title": "근처 {label}",
        "now": "방금",
        "near": "근처",
        "cleared.title": "근처 {label} — 상황 종료",
        "cleared.body": "신고 {duration} 후 종료",
        "cancelled.title": "근처 {label} — 취소됨",
        "cancelled.body": "신고 {duration} 후 취소",
    },
}

ENDED_STATUSES: Final = ("cleared", "cancelled")
LOCALES: tuple[str, ...] = LANGUAGES
"""The languages a push can be written in (any other locale falls back by language,
then to English)."""


def language(locale: str) -> str:
    """The supported language for a locale tag: by language, then English."""
    parts = locale.replace("_", "-").split("-")
    lang = parts[0].lower()
    if lang == "zh":
        # Only Simplified Chinese is written; readers of Traditional read it better
        # than English.
        return "zh-Hans"
    return lang if lang in TEXTS else "en"


def _label(category: str, lang: str) -> str:
    return LABELS[lang].get(category) or LABELS_EN.get(category) or category.replace("_", " ")


def relative_time(occurred_at: dt.datetime, now: dt.datetime, locale: str = "en") -> str:
    """"3 min. ago", "hace 3 min", "3分钟前"… (CLDR's short form); under a minute,
    the language's "just now"."""
    lang = language(locale)
    delta = now - occurred_at
    if delta < dt.timedelta(minutes=1):
        return TEXTS[lang]["now"]
    # Whole minutes, counted down like a clock (3 min 50 s is "3 min"); threshold 1:
    # 59 minutes stay minutes instead of rounding up to "1 hour".
    whole = dt.timedelta(minutes=delta // dt.timedelta(minutes=1))
    return format_timedelta(-whole, granularity="minute", threshold=1, add_direction=True,
                            format="short", locale=_BABEL_LOCALE[lang])


def duration(delta: dt.timedelta, locale: str = "en") -> str:
    """"24 minutes", "1 minuto", "2小时"… (CLDR's long form, plural by the language's
    rules); at least a minute."""
    lang = language(locale)
    delta = max(dt.timedelta(minutes=delta // dt.timedelta(minutes=1)), dt.timedelta(minutes=1))
    return format_timedelta(delta, granularity="minute", threshold=1, format="long",
                            locale=_BABEL_LOCALE[lang])


def title_and_body(
    category: str, public_location: str | None, occurred_at: dt.datetime,
    now: dt.datetime, locale: str = "en", *, title: str = "", body: str = "",
) -> tuple[str, str]:
    """The alert's text; an editor's ``title``/``body`` (from review) replace the template."""
    if title and body:
        return title, body
    lang = language(locale)
    t = TEXTS[lang]
    return (
        title or t["title"].format(label=_label(category, lang)),
        body or f"{relative_time(occurred_at, now, lang)} · {public_location or t['near']}",
    )


def update_text(category: str, status: str, occurred_at: dt.datetime,
                ended_at: dt.datetime, locale: str = "en") -> tuple[str, str]:
    """The update that replaces an alert when its incident is cleared or cancelled:
    ("Structure fire nearby — cleared", "Cleared 24 minutes after it was reported")."""
    if status not in ENDED_STATUSES:
        raise ValueError(f"no update text for status {status!r}")
    lang = language(locale)
    t = TEXTS[lang]
    return (t[f"{status}.title"].format(label=_label(category, lang)),
            t[f"{status}.body"].format(duration=duration(ended_at - occurred_at, lang)))
