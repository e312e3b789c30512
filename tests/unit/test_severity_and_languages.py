"""Severity on the phone, and the push texts in every language (pure)."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.domain import pushtext
from server.domain.categories import LABELS_EN, MOST_SEVERE, NEIGHBOUR_ALERTABLE, RESPONDER_ONLY
from server.domain.pushtext import LANGUAGES, duration, language, title_and_body, update_text
from server.domain.severity import ANDROID_CHANNELS, presentation

NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)
PUSHED = NEIGHBOUR_ALERTABLE | RESPONDER_ONLY


def test_every_category_and_every_update_text_exists_in_every_language() -> None:
    assert set(pushtext.LABELS) == set(pushtext.TEXTS) == set(LANGUAGES)
    for lang in LANGUAGES:
        assert set(pushtext.LABELS[lang]) >= PUSHED, lang
        assert set(pushtext.TEXTS[lang]) == set(pushtext.TEXTS["en"]), lang
        assert all(pushtext.LABELS[lang][c].strip() for c in PUSHED), lang
        for category in PUSHED:
            for status in ("cleared", "cancelled"):
                title, body = update_text(category, status, NOW - dt.timedelta(minutes=24),
                                          NOW, lang)
                assert pushtext.LABELS[lang][category] in title and "24" in body
    # No language falls back to English for a category label.
    for lang in LANGUAGES[1:]:
        assert not set(pushtext.LABELS[lang].values()) & set(LABELS_EN.values()), lang


@pytest.mark.parametrize(("locale", "one", "many", "ago"), [
    ("en-US", "Cleared 1 minute after it was reported",
     "Cleared 24 minutes after it was reported", "3 min. ago"),
    ("es-MX", "Finalizado 1 minuto después del aviso",
     "Finalizado 24 minutos después del aviso", "hace 3 min"),
    ("zh-Hans-CN", "报告后1分钟结束", "报告后24分钟结束", "3分钟前"),
    ("vi-VN", "Kết thúc 1 phút sau khi được báo", "Kết thúc 24 phút sau khi được báo",
     "3 phút trước"),
    ("ko-KR", "신고 1분 후 종료", "신고 24분 후 종료", "3분 전"),
])
def test_plurals_and_relative_times_per_language(locale: str, one: str, many: str,
                                                 ago: str) -> None:
    start = NOW - dt.timedelta(minutes=30)
    assert update_text("structure_fire", "cleared", start, start + dt.timedelta(seconds=70),
                       locale)[1] == one
    assert update_text("structure_fire", "cleared", start, start + dt.timedelta(minutes=24),
                       locale)[1] == many
    assert title_and_body("shooting", None, NOW - dt.timedelta(minutes=3, seconds=50), NOW,
                          locale)[1].startswith(ago)


def test_locales_fall_back_by_language_then_to_english() -> None:
    assert [language(x) for x in ("es-419", "zh-TW", "zh_Hans", "vi", "KO-kr", "fr-CA", "tl")] \
        == ["es", "zh-Hans", "zh-Hans", "vi", "ko", "en", "en"]
    assert title_and_body("structure_fire", None, NOW, NOW, "fr")[0] == "Structure fire nearby"
    assert update_text("burglary", "cancelled", NOW, NOW, "de")[0] == "Burglary nearby — cancelled"
    assert duration(dt.timedelta(seconds=5)) == "1 minute"


@given(st.sampled_from(sorted(PUSHED)), st.sampled_from(["", "moderate", "severe"]),
       st.booleans())
def test_only_an_extreme_manual_alert_is_ever_critical(category: str, severity: str,
                                                       entitled: bool) -> None:
    look = presentation(category, manual_severity=severity, critical_alerts=entitled)
    assert look.interruption_level != "critical"
    assert presentation(category, "update", manual_severity=severity,
                        critical_alerts=entitled).interruption_level == "passive"


def test_interruption_levels_channels_and_scores() -> None:
    for category in MOST_SEVERE | RESPONDER_ONLY:
        look = presentation(category)
        assert (look.interruption_level, look.channel_id) == ("time-sensitive", "geopush_severe")
    assert presentation("burglary").interruption_level == "active"
    assert presentation("burglary").channel_id == "geopush_alerts"
    update = presentation("shooting", "update")
    assert (update.interruption_level, update.channel_id, update.sound, update.high_priority) \
        == ("passive", "geopush_updates", False, False)
    assert presentation("burglary", manual_severity="extreme").interruption_level \
        == "time-sensitive"
    assert presentation("burglary", manual_severity="extreme",
                        critical_alerts=True).interruption_level == "critical"
    scores = [presentation(c).relevance_score for c in ("shooting", "structure_fire", "burglary")]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == 3
    assert update.relevance_score < min(scores)
    assert set(ANDROID_CHANNELS) == {"geopush_severe", "geopush_alerts", "geopush_updates"}
